"""`pathflip serve`: options checked before the model loads, and a real server on a loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from pathflip.cli import main


@pytest.mark.parametrize(("options", "fragment"), [
    (["--host", "0.0.0.0"], "give --token SECRET"),
    (["--host", "0.0.0.0", "--token", "short"], "at least 16 characters"),
    (["--port", "70000"], "--port: must be a port number from 1 to 65535"),
    (["--slides", "no/such/folder"], "--slides no/such/folder does not exist"),
    (["--bags", "no/such/bags"], "--bags no/such/bags does not exist"),
    (["--device", "gpu"], "--device: 'gpu' is not a torch device"),
    (["--labels", "tumour", "Tumour"], "--labels repeats ['Tumour', 'tumour']"),
    (["--host", "no-such-host.invalid", "--token", "x" * 16], "cannot listen on --host no-such-host.invalid"),
])  # fmt: skip
def test_bad_options_are_one_line_errors_before_any_work(options, fragment, lesion_model_dir, lesion_slides, capsys):
    arguments = ["serve", str(lesion_model_dir), "--slides", str(lesion_slides[0]), *options]
    try:
        code = main(arguments)
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    assert code == 2
    error = capsys.readouterr().err
    assert fragment in error and len(error.strip().splitlines()) == 1


def test_a_port_in_use_is_refused_before_the_model_loads(lesion_model_dir, lesion_slides, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", str(lesion_model_dir), "--slides", str(lesion_slides[0]), "--port", str(port)])
    assert code == 2
    assert f"cannot listen on --host 127.0.0.1 --port {port}" in capsys.readouterr().err


def test_serve_answers_on_loopback_until_stopped(lesion_model_dir, lesion_slides):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "pathflip.cli", "serve", str(lesion_model_dir), "--slides", str(lesion_slides[0]),
               "--port", str(port)]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    try:
        line = server.stdout.readline()
        assert f"open http://127.0.0.1:{port}/" in line, line + server.stderr.read()
        slides = _get_json(f"http://127.0.0.1:{port}/api/slides", deadline=time.monotonic() + 60)
        assert sorted(slide["slide_id"] for slide in slides["slides"]) == sorted(lesion_slides[1])
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    assert server.returncode == 0


def _get_json(url: str, deadline: float) -> dict:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)

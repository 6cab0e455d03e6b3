"""`pathflip serve`: the slide viewer."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import model_reference, nonempty, torch_device


def command_serve(args: argparse.Namespace) -> int:
    """A slide viewer: type a sentence and see where it is; zero-shot labels; search the cohort."""
    from ..viewer import build_viewer, serve
    from ..viewer.server import check_binding, check_port

    check_binding(args.host, args.token)  # before the model loads
    check_port(args.host, args.port)
    if args.labels:
        from modeling_pathflip.pipeline_options_pathflip import OPTION_CHECKS

        OPTION_CHECKS["candidate_labels"]("--labels", args.labels)  # the zero-shot panel's rules: no repeats
    for name, value in (("--slides", args.slides), ("--bags", args.bags)):
        if value is not None and not Path(value).exists():
            raise ValueError(f"{name} {value} does not exist; give a folder of slides or a cohort table"
                             f"{'' if name == '--slides' else ' / pathflip extract output or a dataset'}.")  # fmt: skip
    app, encodings = build_viewer(args.model, args.slides, bags=args.bags, patch_encoder=args.patch_encoder,
                                  labels=args.labels, host=args.host, token=args.token, device=args.device,
                                  trust_remote_code=args.trust_remote_code)  # fmt: skip
    try:
        serve(app, host=args.host, port=args.port, token=args.token)
    finally:
        encodings.close()
    return 0


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {text!r}")
    return value


def add_verbs(commands) -> None:
    """serve."""
    serve = commands.add_parser("serve", help=command_serve.__doc__)
    serve.add_argument("model", type=model_reference, help="a PathFLIP folder or Hub id")
    serve.add_argument("--slides", required=True, help="a folder of slides, or a cohort table (.csv/.tsv/.parquet)")
    serve.add_argument("--bags", help="pathflip extract's output folder or a feature-bag dataset (default: encode "
                                      "each slide on first use, as the model records)")  # fmt: skip
    serve.add_argument("--labels", nargs="+", type=nonempty, help="zero-shot classes to start with")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=port_number, default=8000)
    serve.add_argument("--token", help="a secret every request must carry; required off loopback")
    serve.add_argument("--patch-encoder", help="encoder for slides without a bag (default: the model's)")
    serve.add_argument("--device", type=torch_device, help="torch device for the model (cpu, cuda:0; default: cpu)")
    serve.add_argument("--trust-remote-code", action="store_true", help="run the model folder's own code")
    serve.set_defaults(run=command_serve)

"""The built wheel, installed where there is no clone: two import roots, and the CLI trains and runs the demo."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(command: list, cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)  # fmt: skip
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict, Path]:
    """A fresh venv holding only the wheel; its dependencies are read from this environment's site-packages (a
    path entry: the editable install's finder there stays inactive), so nothing is downloaded."""
    folder = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PIP_NO_INDEX": "1"}
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", folder / "dist",
                  ROOT], folder, env)  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (folder / "dist").glob("pathflip-*.whl")
    venv = folder / "venv"
    assert _run([sys.executable, "-m", "venv", venv], folder, env).returncode == 0
    python = venv / "bin" / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], folder, env)
    (Path(site.stdout.strip()) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = _run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel], folder, env)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = folder / "elsewhere"  # no clone here: nothing importable from the working directory
    elsewhere.mkdir()
    return venv, {**env, "PYTHONPATH": ""}, elsewhere


@pytest.mark.slow
def test_only_pathflip_and_modeling_pathflip_are_importable(installed):
    venv, env, elsewhere = installed
    python = venv / "bin" / "python"
    for generic in ("processing", "eval", "model_cards"):
        result = _run([python, "-c", f"import {generic}"], elsewhere, env)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, generic
    check = ("import pathflip, modeling_pathflip, pathflip.processing.inputs, pathflip.eval.modules as m; "
             "print(pathflip.__file__); print(sorted(p.name for p in m.MODULES_DIR.iterdir() if p.is_dir()))")
    result = _run([python, "-c", check], elsewhere, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(venv) in result.stdout.splitlines()[0], "pathflip comes from the wheel, not the clone"
    assert "grounding" in result.stdout.splitlines()[1], "the evaluate metric scripts are in the wheel"
    page = ("from importlib import resources; s = resources.files('pathflip.viewer') / 'static'; "
            "o = s / 'openseadragon'; print(sorted(p.name for p in s.iterdir() if p.is_file()), "
            "(o / 'openseadragon.min.js').is_file(), (o / 'LICENSE.txt').is_file(), "
            "(o / 'images' / 'home_rest.png').is_file())")  # fmt: skip
    result = _run([python, "-c", page], elsewhere, env)
    assert result.stdout.split() == ["['index.html',", "'viewer.css',", "'viewer.js']", "True", "True", "True"], (
        "the viewer's page and OpenSeadragon are in the wheel: " + result.stdout + result.stderr[-2000:])
    listing = "from pathflip.training.recipe import shipped_recipes; print(list(shipped_recipes()))"
    recipes = _run([python, "-c", listing], elsewhere, env)
    assert recipes.stdout.strip() == "['pathflip-small']", "the recipes are in the wheel: " + recipes.stderr[-2000:]


@pytest.mark.slow
def test_the_cli_runs_version_train_help_and_the_demo_outside_the_clone(installed):
    venv, env, elsewhere = installed
    cli = venv / "bin" / "pathflip"
    version = _run([cli, "--version"], elsewhere, env)
    assert version.returncode == 0 and version.stdout.startswith("pathflip "), version.stderr
    help_text = _run([cli, "train", "--help"], elsewhere, env)
    assert help_text.returncode == 0 and "--dataset_name_or_path" in help_text.stdout, help_text.stderr[-2000:]
    demo = _run([cli, "demo", "--num-slides", "12", "--max-steps", "3", "--llm-steps", "0", "-o", "demo-out"],
                elsewhere, env, timeout=1200)  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
    assert (elsewhere / "demo-out" / "model" / "model.safetensors").exists()
    assert (elsewhere / "demo-out" / "metrics.json").exists() and "Zero-shot balanced accuracy" in demo.stdout
    assert f"{cli} serve demo-out/model --slides demo-out/cohort/slides --bags demo-out/dataset" in demo.stdout

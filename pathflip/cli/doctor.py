"""`pathflip doctor`: what this installation can do, and what is missing."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import platform
import tempfile
from pathlib import Path

PACKAGES = (
    "pathflip",
    "torch",
    "transformers",
    "datasets",
    "accelerate",
    "huggingface_hub",
    "safetensors",
    "openslide-python",
    "openslide-bin",
    "tifffile",
    "h5py",
    "timm",
    "peft",
)


def run_checks() -> int:
    """Print one line per check; return 1 when a required piece is broken."""
    problems = 0
    print(f"python            {platform.python_version()} ({platform.machine()})")
    for package in PACKAGES:
        try:
            print(f"{package:<18}{metadata.version(package)}")
        except metadata.PackageNotFoundError:
            print(f"{package:<18}not installed" + ("" if package in ("timm", "peft") else "  <- required"))
            problems += package not in ("timm", "peft")
    try:
        import openslide

        print(f"OpenSlide         {openslide.__library_version__}")
    except Exception as error:  # the C library may fail to load
        print(f"OpenSlide         cannot load: {error}  <- pip install openslide-bin")
        problems += 1
    import torch

    device = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"device            {device} ({torch.get_num_threads()} threads)")
    from huggingface_hub import constants

    for name, folder in (("HF_HOME", constants.HF_HOME), ("HF_HUB_CACHE", constants.HF_HUB_CACHE)):
        problems += not _writable(name, Path(folder))
    print(f"offline           HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}")
    print("all good" if not problems else f"{problems} problem(s)")
    return 1 if problems else 0


def _writable(name: str, folder: Path) -> bool:
    """Whether ``folder`` (or, when it does not exist yet, the folder it would be made in) takes files; a check
    creates nothing."""
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    try:
        with tempfile.NamedTemporaryFile(dir=existing):
            pass
    except OSError as error:
        print(f"{name:<18}{folder} not writable ({error})  <- set {name} to a writable folder")
        return False
    print(f"{name:<18}{folder} (writable{'' if existing == folder else ', made on first use'})")
    return True


def command_doctor(args) -> int:
    """Report versions, OpenSlide, the device and writable cache folders."""
    return run_checks()


def add_verbs(commands) -> None:
    """doctor."""
    doctor = commands.add_parser("doctor", help=command_doctor.__doc__)
    doctor.set_defaults(run=command_doctor)

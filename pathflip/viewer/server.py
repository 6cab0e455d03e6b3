"""Build the viewer from a model, a slide folder (or cohort table) and optional bags, and run it with uvicorn."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from fastapi import FastAPI

from .app import create_app
from .bags import BagSource
from .encoding import SlideEncodings
from .library import SlideLibrary

LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """Refuse an address the server could not listen on (taken, or a host name that does not resolve) before the
    model loads: uvicorn would report it only afterwards, in its own log format."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as error:
        raise ValueError(f"cannot listen on --host {host} --port {port} ({error.strerror or error}); choose another "
                         "--port, or stop what listens there.") from None  # fmt: skip


def check_binding(host: str, token: str | None) -> None:
    """A server reachable from other machines must ask for a token."""
    if not is_loopback(host) and not token:
        raise ValueError(f"--host {host} lets other machines in: give --token SECRET (every request must carry it), "
                         "or keep the default --host 127.0.0.1.")  # fmt: skip
    if token is not None and len(token) < 16:
        raise ValueError(f"--token must be at least 16 characters (got {len(token)}); e.g. "
                         "python -c 'import secrets; print(secrets.token_urlsafe())'.")  # fmt: skip


def build_viewer(model, slides: str | Path, *, bags: str | Path | None = None, patch_encoder: str | None = None,
                 labels: list[str] | None = None, host: str = "127.0.0.1", token: str | None = None,
                 device: str | None = None, trust_remote_code: bool = False,
                 ) -> tuple[FastAPI, SlideEncodings]:  # fmt: skip
    """The app and its slide encodings.

    Args:
        model: a model folder, Hub id, or a loaded ``slide-grounding`` pipeline.
        slides: a folder of slides or a cohort table.
        bags: `pathflip extract`'s output or a feature-bag dataset (else slides are encoded on first use).
        patch_encoder: encoder for slides without a bag (default: the model's).
        labels: the zero-shot panel's starting classes (default: the cohort table's or the dataset's).
        host, token: where the server listens; off loopback a token is required.
        device: torch device of the model ("cpu", "cuda:0"; default: the pipeline's choice).
    """
    check_binding(host, token)
    library = SlideLibrary(slides)
    bag_source = BagSource(bags) if bags is not None else None
    pipe = model if hasattr(model, "bag_batch") else _grounding_pipeline(model, device, trust_remote_code)
    encodings = SlideEncodings(pipe, library, bag_source, patch_encoder=patch_encoder)
    allowed = LOOPBACK_NAMES + [host] if is_loopback(host) else None
    app = create_app(encodings, token=token, allowed_hosts=allowed, default_labels=labels)
    if bag_source is not None:
        encodings.index_all()  # slides with bags take a moment each: the search index fills right after start
    return app, encodings


def _grounding_pipeline(model: str, device: str | None, trust_remote_code: bool):
    from transformers import pipeline

    import modeling_pathflip  # noqa: F401  (registers the tasks, so no trust_remote_code is needed)

    return pipeline("slide-grounding", model=model, device=device, trust_remote_code=trust_remote_code)


def serve(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None) -> None:
    """Run the app until interrupted, printing the address to open."""
    import uvicorn

    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"PathFLIP viewer: open {address}  (Ctrl+C stops it)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")

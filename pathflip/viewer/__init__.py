"""`pathflip serve`: a slide viewer where a sentence becomes a heatmap layer over the slide.

OpenSlide's Deep Zoom generator serves the tiles, OpenSeadragon (vendored under ``static/``) shows them, and a
FastAPI app answers grounding, zero-shot and search requests from slide encodings computed once per slide.
"""

from .app import create_app
from .server import build_viewer, serve

__all__ = ["build_viewer", "create_app", "serve"]

"""Training recipes (``pathflip train --recipe pathflip-small``) and launcher configs, shipped as package data."""

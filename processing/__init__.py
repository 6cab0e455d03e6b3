"""Whole slide images -> feature-bag datasets: reading, tissue detection, tiling, patch encoders,
extraction runs, importers and the `pathflip` command line."""

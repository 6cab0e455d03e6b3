"""Whole slide images -> feature-bag datasets: reading, tissue detection, tiling, patch encoders, extraction
runs, importers, the bag schema, and the file loader through which the pipelines read slides and bags."""

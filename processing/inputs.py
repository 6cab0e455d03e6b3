"""The file loader of the pipelines: bags from files and slides, slide thumbnails, heatmap files.

The model code a Hub repository carries cannot import this package, so the pipelines look this loader up by
name (the ``pathflip.input_loaders`` entry point ``files``) or take it as ``input_loader=``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .extract import SLIDE_SUFFIXES, ExtractionOptions, encode_slide, read_bag_file
from .heatmap import overlay_png, slide_canvas, write_geojson


def load_bags(path: str | Path, *, encoder: str | None = None, mpp: float | None = None) -> list[dict[str, Any]]:
    """The bag(s) stored at ``path``.

    A `save_to_disk` folder gives all its rows; ``.h5`` a TRIDENT/CLAM bag; ``.safetensors`` a bag written
    by `pathflip extract`; ``.pt`` a ``torch.save``-d bag dict; a slide file (``.svs``, ``.tif``, ...) is
    tiled and encoded with ``encoder``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a bag, a dataset folder, an .h5 file or a slide.")
    if path.is_dir():
        import datasets

        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            raise ValueError(f"{path} holds several splits ({list(loaded)}); pass the split's folder or its rows.")
        return list(loaded.with_format("numpy"))
    suffix = path.suffix.lower()
    if suffix == ".h5":
        from .importers import read_h5_bag

        return [read_h5_bag(path, mpp=mpp)]
    if suffix == ".safetensors":
        return [read_bag_file(path)]
    if suffix == ".pt":
        return [_read_torch_bag_dict(path)]
    if suffix in SLIDE_SUFFIXES:
        if encoder is None:
            raise ValueError(f"{path} is a slide: pass patch_encoder= (the encoder the model was trained on).")
        from .encoders import load_encoder

        tiling, features = encode_slide(path, load_encoder(encoder), ExtractionOptions(mpp=mpp), torch.device("cpu"))
        return [{"slide_id": tiling.slide_id, "features": features, "coords": tiling.coords,
                 "patch_size_level0": tiling.patch_size_level0, "mpp": tiling.mpp, "encoder": encoder}]  # fmt: skip
    raise ValueError(
        f"{path}: unknown input type {suffix!r}; give a dataset folder, .h5, .pt, .safetensors or a slide."
    )


def _read_torch_bag_dict(path: Path) -> dict[str, Any]:
    """A bag saved with ``torch.save`` as a dict; a bare CLAM features tensor has no coordinates."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict):
        raise ValueError(
            f"{path} holds features without coordinates (a CLAM .pt): import it with its patches .h5, "
            "`pathflip import FOLDER --coords-dir PATCHES_DIR -o DATASET`, and pass the dataset."
        )
    return {"slide_id": path.stem, **loaded}


class FileLoader:
    """What the pipelines need of files: `load_bags`, `slide_canvas` and `write_grounding`."""

    def load_bags(self, source: str | Path, *, patch_encoder: str | None = None, mpp: float | None = None):
        """The bag(s) at ``source`` (see `load_bags`)."""
        return load_bags(source, encoder=patch_encoder, mpp=mpp)

    def slide_canvas(self, source: str | Path, *, mpp: float | None = None, longest: int = 1024):
        """``(thumbnail, level-0 (width, height))`` of a slide file, or None when ``source`` is not a slide."""
        return slide_canvas(source, mpp=mpp, longest=longest)

    def write_grounding(self, heatmap: np.ndarray, geojson: dict, *, output_dir: str | Path, stem: str,
                        thumbnail: np.ndarray | None) -> dict[str, str]:  # fmt: skip
        """``{stem}.png`` (the heatmap over ``thumbnail``, else white) and ``{stem}.geojson`` in ``output_dir``."""
        png = overlay_png(heatmap, Path(output_dir) / f"{stem}.png", thumbnail)
        geojson_file = write_geojson(geojson, Path(output_dir) / f"{stem}.geojson")
        return {"png_file": str(png), "geojson_file": str(geojson_file)}


FILE_LOADER = FileLoader()

"""Bags from files, for the pipelines: a dataset folder, a TRIDENT/CLAM .h5, an extracted bag or a slide."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .extract import SLIDE_SUFFIXES, ExtractionOptions, encode_slide, read_bag_file


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
        return [_read_pt_bag(path)]
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


def _read_pt_bag(path: Path) -> dict[str, Any]:
    """A bag saved with ``torch.save`` as a dict; a bare CLAM features tensor has no coordinates."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict):
        raise ValueError(
            f"{path} holds features without coordinates (a CLAM .pt): import it with its patches .h5, "
            "`pathflip import FOLDER --coords-dir PATCHES_DIR -o DATASET`, and pass the dataset."
        )
    return {"slide_id": path.stem, **loaded}

"""The file loader of the pipelines: bags from files and slides, slide thumbnails, heatmap files.

The model code a Hub repository carries cannot import this package, so the pipelines look this loader up by
name (the ``pathflip.input_loaders`` entry point ``files``) or take it as ``input_loader=``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import safe_name
from .extract import SLIDE_SUFFIXES, ExtractionOptions, encode_slide, read_bag_file
from .heatmap import overlay_png, slide_canvas, write_geojson
from .tiler import TilingOptions


def iter_bags(
    path: str | Path, *, encoder: str | None = None, mpp: float | None = None, patch_size_um: float | None = None,
    patch_size_px: int | None = None, device: torch.device | str | None = None,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The bag(s) stored at ``path``, one at a time.

    A `save_to_disk` folder gives its rows (read as they are needed); ``.h5`` a TRIDENT/CLAM bag; ``.safetensors`` a
    bag written by `pathflip extract`; ``.pt`` a ``torch.save``-d bag dict; a slide file (``.svs``, ``.tif``, ...)
    is tiled and encoded as the model was trained: ``encoder``, patches of ``patch_size_um`` µm and
    ``patch_size_px`` pixels (256 when not recorded), on ``device``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a bag, a dataset folder, an .h5 file or a slide.")
    if path.is_dir():
        import datasets

        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            raise ValueError(f"{path} holds several splits ({list(loaded)}); give one split's folder, e.g. "
                             f"{path / next(iter(loaded))}.")  # fmt: skip
        yield from loaded.with_format("numpy")
        return
    suffix = path.suffix.lower()
    if suffix == ".h5":
        from .importers import read_h5_bag

        yield read_h5_bag(path, mpp=mpp)
    elif suffix == ".safetensors":
        yield read_bag_file(path)
    elif suffix == ".pt":
        yield _read_torch_bag_dict(path)
    elif suffix in SLIDE_SUFFIXES:
        yield encode_slide_file(path, encoder=encoder, mpp=mpp, patch_size_um=patch_size_um,
                                patch_size_px=patch_size_px, device=device)  # fmt: skip
    else:
        raise ValueError(
            f"{path}: unknown input type {suffix!r}; give a dataset folder, .h5, .pt, .safetensors or a slide."
        )


def load_bags(path: str | Path, **options: Any) -> list[dict[str, Any]]:
    """Every bag stored at ``path`` (see `iter_bags`)."""
    return list(iter_bags(path, **options))


def slide_tiling(patch_size_um: float | None, patch_size_px: int | None) -> TilingOptions:
    """Patches as a model was trained on: ``patch_size_um`` µm per side in ``patch_size_px`` pixels (256 when only
    the side in µm is known; the 20x default when neither is)."""
    if patch_size_um is None:
        return TilingOptions()
    pixels = patch_size_px or TilingOptions().patch_size
    return TilingOptions(target_mpp=patch_size_um / pixels, patch_size=pixels)


def encode_slide_file(path: Path, *, encoder: str | None, mpp: float | None, patch_size_um: float | None,
                      patch_size_px: int | None, device: torch.device | str | None, slide_id: str | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      num_workers: int = 2) -> dict[str, Any]:  # fmt: skip
    """One slide tiled and encoded into a bag (``progress(done, total)`` after each batch of patches; patches read by
    ``num_workers`` worker processes, 0 reading in the calling thread)."""
    if encoder is None:
        raise ValueError(f"{path} is a slide, and the model records no patch encoder: pass patch_encoder= "
                         "(--patch-encoder), the encoder the model was trained on.")  # fmt: skip
    from .encoders import load_encoder

    options = ExtractionOptions(tiling=slide_tiling(patch_size_um, patch_size_px), mpp=mpp, num_workers=num_workers)
    tiling, features = encode_slide(path, load_encoder(encoder).to(device or "cpu"), options,
                                    torch.device(device or "cpu"), slide_id=slide_id, progress=progress)  # fmt: skip
    return {"slide_id": tiling.slide_id, "features": features, "coords": tiling.coords,
            "patch_size_level0": tiling.patch_size_level0, "mpp": tiling.mpp, "encoder": encoder}  # fmt: skip


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

    def load_bags(self, source: str | Path, *, patch_encoder: str | None = None, mpp: float | None = None,
                  patch_size_um: float | None = None, patch_size_px: int | None = None, device=None):  # fmt: skip
        """The bag(s) at ``source`` (see `iter_bags`)."""
        return load_bags(source, encoder=patch_encoder, mpp=mpp, patch_size_um=patch_size_um,
                         patch_size_px=patch_size_px, device=device)  # fmt: skip

    def slide_canvas(self, source: str | Path, *, mpp: float | None = None, longest: int = 1024):
        """``(thumbnail, level-0 (width, height))`` of a slide file, or None when ``source`` is not a slide."""
        return slide_canvas(source, mpp=mpp, longest=longest)

    def write_grounding(self, heatmap: np.ndarray, geojson: dict, *, output_dir: str | Path, stem: str,
                        thumbnail: np.ndarray | None) -> dict[str, str]:  # fmt: skip
        """``{stem}.png`` (the heatmap over ``thumbnail``, else white) and ``{stem}.geojson`` in ``output_dir``."""
        stem = safe_name(stem)  # built from a slide id and a sentence: keep it one file name inside output_dir
        png = overlay_png(heatmap, Path(output_dir) / f"{stem}.png", thumbnail)
        geojson_file = write_geojson(geojson, Path(output_dir) / f"{stem}.geojson")
        return {"png_file": str(png), "geojson_file": str(geojson_file)}


FILE_LOADER = FileLoader()

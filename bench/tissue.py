"""Tissue detection against ground truth: the od detector beside the earlier saturation threshold.

On generated slides with ground-truth labels (`pathflip.synthetic.tissue_slides`: every pattern, several seeds)
it tiles each slide as `pathflip extract` does (default options, 256-px patches at 0.5 µm/px) with both
detectors and measures, per tissue kind, the share of its area in the tissue mask and in kept patches (recall,
weighted by area over all slides), the share of glass called tissue, the quality-control warnings, and each
detector's time per slide. The same detection on thumbnails four times coarser (16 µm per pixel, as a 2048-px
thumbnail of a 3 cm slide gets) is measured on the mask. On `../shared/data` (when present) it counts patches.
Writes bench/results/tissue.json; `--figure PATH` also draws before/after overlays.
Run: `python bench/tissue.py [--seeds 0 1 2 3 4] [--figure docs/tissue_before_after.png]`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pathflip.processing.reader import SlideReader
from pathflip.processing.tiler import Tiling, TilingOptions, tile_slide
from pathflip.processing.tissue import detect_tissue, save_overlay
from pathflip.synthetic.tissue_slides import PATTERNS, detection_scores, kept_map, make_tissue_slide, write_tissue_slide

RESULTS = Path(__file__).parent / "results" / "tissue.json"
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
METHODS = ("saturation", "od")
COARSE = 4  # thumbnail reduction for the coarse-scale check


def tile(path: Path, method: str, mpp: float | None = None) -> tuple[Tiling, float]:
    """The slide's tiling with ``method``, and the detector's own time on its thumbnail (best of three, seconds)."""
    with SlideReader(path, mpp=mpp) as reader:
        tiling = tile_slide(reader, TilingOptions(tissue_method=method))
        thumbnail_mpp = reader.mpp * reader.dimensions[0] / tiling.thumbnail.shape[1]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        detect_tissue(tiling.thumbnail, thumbnail_mpp=thumbnail_mpp, method=method)
        times.append(time.perf_counter() - start)
    return tiling, min(times)


def summarise(scores: list[dict], measure: str) -> dict:
    """Area-weighted recall per kind over slides, and the lowest per-slide recall per kind."""
    found, total, lowest = {}, {}, {}
    for score in scores:
        for kind, area in score["area"].items():
            found[kind] = found.get(kind, 0.0) + score[measure][kind] * area
            total[kind] = total.get(kind, 0) + area
            lowest[kind] = min(lowest.get(kind, 1.0), score[measure][kind])
    return {kind: {"recall": round(found[kind] / total[kind], 4), "lowest_slide": round(lowest[kind], 4)}
            for kind in sorted(total)}  # fmt: skip


def generated(folder: Path, seeds: list[int]) -> tuple[dict, dict]:
    """Scores of both detectors on every pattern and seed, and the slides' tilings kept for the figure."""
    scores = {method: [] for method in METHODS} | {f"{method}_coarse": [] for method in METHODS}
    seconds, warned, tilings = {method: [] for method in METHODS}, {method: [] for method in METHODS}, {}
    for seed in seeds:
        for pattern in PATTERNS:
            slide = make_tissue_slide(pattern, seed)
            path, _ = write_tissue_slide(slide, folder)
            for method in METHODS:
                tiling, took = tile(path, method)
                kept = kept_map(tiling.coords, tiling.patch_size_level0, slide.labels.shape)
                scores[method].append(detection_scores(slide.labels, tiling.mask, kept))
                seconds[method].append(took)
                warned[method] += [slide.slide_id] if tiling.quality["warnings"] else []
                coarse = np.asarray(Image.fromarray(tiling.thumbnail).reduce(COARSE))
                mask = detect_tissue(coarse, thumbnail_mpp=4.0 * COARSE, method=method).mask
                scores[f"{method}_coarse"].append(detection_scores(slide.labels, mask, kept))
                tilings[(slide.slide_id, method)] = tiling
    result = {}
    for method in METHODS:
        glass, coarse_glass = ([score["glass_as_tissue"] for score in scores[key]]
                               for key in (method, f"{method}_coarse"))  # fmt: skip
        result[method] = {
            "patch_recall": summarise(scores[method], "patch_recall"),
            "mask_recall": summarise(scores[method], "mask_recall"),
            "glass_as_tissue": {"mean": round(float(np.mean(glass)), 4), "max": round(float(np.max(glass)), 4)},
            "slides_warned": warned[method],
            "detector_ms_per_slide": round(1000 * float(np.mean(seconds[method])), 1),
            "coarse_16um_mask_recall": summarise(scores[f"{method}_coarse"], "mask_recall"),
            "coarse_16um_glass_as_tissue": {"mean": round(float(np.mean(coarse_glass)), 4),
                                            "max": round(float(np.max(coarse_glass)), 4)},
        }  # fmt: skip
    return result, tilings


def real_slides() -> tuple[dict, dict]:
    """Patches and quality figures of both detectors on the real slides."""
    rows, tilings = {}, {}
    for name, mpp in (("cmu-1-small-region.svs", None), ("tcga-cr-7395-01a-01-ts1.svs", 0.5)):
        if not (SHARED / name).exists():
            continue
        for method in METHODS:
            tiling, took = tile(SHARED / name, method, mpp)
            quality = {key: value for key, value in tiling.quality.items() if key != "glass_rgb"}
            rows.setdefault(name, {})[method] = quality | {"detector_ms": round(1000 * took, 1)}
            tilings[(name, method)] = tiling
    return rows, tilings


def figure(path: Path, tilings: dict, slides: list[str]) -> None:
    """Overlays, saturation (before) left and od (after) right, one slide a row; ~400 px per panel."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for slide in slides:
            panels = []
            for method in METHODS:
                tiling = tilings[(slide, method)]
                png = save_overlay(tiling.thumbnail, tiling.mask, Path(folder) / f"{method}.png", kept=tiling.kept,
                                   non_glass=tiling.non_glass)  # fmt: skip
                image = Image.open(png).convert("RGB")
                image.thumbnail((400, 400))
                canvas = Image.new("RGB", (400, image.height + 22), "white")
                canvas.paste(image, (0, 22))
                label = f"{slide}: {method} ({'before' if method == 'saturation' else 'after'}), "
                ImageDraw.Draw(canvas).text((4, 5), label + f"{len(tiling.coords)} patches", fill="black")
                panels.append(canvas)
            row = Image.new("RGB", (810, max(panel.height for panel in panels)), "white")
            for index, panel in enumerate(panels):
                row.paste(panel, (index * 410, 0))
            rows.append(row)
    sheet = Image.new("RGB", (810, sum(row.height + 8 for row in rows)), "white")
    top = 0
    for row in rows:
        sheet.paste(row, (0, top))
        top += row.height + 8
    path.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours without dithering: a third of the file, and overlays have few colours anyway.
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--figure", type=Path, help="also draw before/after overlays into this PNG")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        synthetic, tilings = generated(Path(folder), args.seeds)
    real, real_tilings = real_slides()
    result = {
        "benchmark": "tissue detection vs ground truth: recall by area per kind, glass called tissue, warnings",
        "patterns": list(PATTERNS),
        "seeds": args.seeds,
        "generated": synthetic,
        "real_slides": real,
        "target": "od: patch and mask recall >= 0.95 for every kind; glass_as_tissue <= 0.02 on every slide",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.figure:
        shown = [f"mucinous-{args.seeds[0]}", f"haemorrhage-{args.seeds[0]}"]
        real_shown = [name for name in ("cmu-1-small-region.svs",) if (name, "od") in real_tilings]
        figure(args.figure, tilings | real_tilings, shown + real_shown)


if __name__ == "__main__":
    main()

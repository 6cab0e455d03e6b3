"""Slide-encoding cost against bag size: PathFLIP vs a ViT-style slide transformer vs ABMIL.

Each (method, N) runs in a fresh process that builds the model and the bag first, resets the peak
RSS counter, then encodes once under `torch.inference_mode`; the JSON records wall seconds and
peak RSS growth (Linux VmHWM after `clear_refs`). PathFLIP uses the paper configuration (D = 512).
The full-attention baseline stops at the first N that would need > 16 GB or > 5 minutes
(predicted from the previous N, or hit by the timeout). Run: `make bench` (or `python bench/encode.py`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

PATCH_DIM = 512
SIZES = (1_000, 10_000, 50_000, 100_000)
MEMORY_LIMIT_GB = 16.0
TIME_LIMIT_S = 300.0
RESULTS = Path(__file__).parent / "results" / "encode.json"


def generated_bag(num_patches: int, patch_size: int = 512) -> dict:
    """A compact square of tissue: row-major cells of a grid about sqrt(N) patches wide."""
    width = math.ceil(math.sqrt(num_patches))
    cells = torch.arange(num_patches)
    coords = torch.stack([cells % width, cells // width], dim=1) * patch_size
    generator = torch.Generator().manual_seed(num_patches)
    return {
        "features": torch.randn(num_patches, PATCH_DIM, generator=generator),
        "coords": coords,
        "patch_size_level0": patch_size,
        "slide_id": f"bench-{num_patches}",
    }


class SlideTransformer(nn.Module):
    """A TITAN-like ViT slide encoder: 6 layers, width 768, full self-attention over all N patch tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(PATCH_DIM, 768)
        layer = nn.TransformerEncoderLayer(768, 12, 3072, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(features)[None]).mean(dim=1)


class GatedABMIL(nn.Module):
    """Gated-attention MIL pooling (Ilse et al. 2018, as in CLAM)."""

    def __init__(self, hidden: int = 512, attention: int = 256) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(PATCH_DIM, hidden), nn.ReLU())
        self.attention_a = nn.Sequential(nn.Linear(hidden, attention), nn.Tanh())
        self.attention_b = nn.Sequential(nn.Linear(hidden, attention), nn.Sigmoid())
        self.score = nn.Linear(attention, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(features)
        weights = torch.softmax(self.score(self.attention_a(hidden) * self.attention_b(hidden)), dim=0)
        return (weights * hidden).sum(dim=0)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_worker(method: str, num_patches: int) -> dict:
    """Build, reset the peak-RSS counter, encode once; return seconds and peak RSS growth."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    bag = generated_bag(num_patches)
    if method == "pathflip":
        from modeling_pathflip import PathFLIPConfig, PathFLIPModel
        from modeling_pathflip.processing_pathflip import layout_bag, pad_layouts

        config = PathFLIPConfig()
        model = PathFLIPModel(config).eval()
        start = time.perf_counter()
        inputs = pad_layouts([layout_bag(bag, 0, config.patch_dim, config.region_grid_size)])
        processing_seconds = time.perf_counter() - start
        encode = lambda: model.get_slide_features(**inputs).slide_embeds  # noqa: E731
    else:
        model = (SlideTransformer() if method == "transformer" else GatedABMIL()).eval()
        processing_seconds = 0.0
        encode = lambda: model(bag["features"])  # noqa: E731
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _rss_kb("VmRSS")
    start = time.perf_counter()
    with torch.inference_mode():
        embedding = encode()
    seconds = time.perf_counter() - start
    assert torch.isfinite(embedding).all()
    return {
        "method": method,
        "num_patches": num_patches,
        "seconds": seconds,
        "processing_seconds": processing_seconds,
        "peak_rss_growth_gb": (_rss_kb("VmHWM") - before) / 2**20,
    }


def measure(method: str, num_patches: int, timeout: float) -> dict:
    """Run one measurement in a fresh process (so peaks and caches do not leak between runs)."""
    command = [sys.executable, __file__, "--worker", method, str(num_patches)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "num_patches": num_patches, "stopped": f"timed out after {timeout:.0f} s"}
    if result.returncode != 0:
        return {"method": method, "num_patches": num_patches, "stopped": result.stderr.strip()[-500:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def attention_memory_gb(num_patches: int, heads: int = 12) -> float:
    """fp32 attention scores of one layer when the N x N matrix is materialised."""
    return heads * num_patches**2 * 4 / 2**30


def run_method(method: str) -> list[dict]:
    """Measure every size; the full-attention baseline stops at the first size over its limits."""
    rows: list[dict] = []
    for num_patches in SIZES:
        if rows and "stopped" in rows[-1]:
            break
        if method == "transformer" and rows:
            predicted_s = rows[-1]["seconds"] * (num_patches / rows[-1]["num_patches"]) ** 2
            predicted_gb = attention_memory_gb(num_patches)
            if predicted_gb > MEMORY_LIMIT_GB or predicted_s > TIME_LIMIT_S:
                rows.append(
                    {
                        "method": method,
                        "num_patches": num_patches,
                        "stopped": (
                            f"not run: predicted {predicted_s:.0f} s (quadratic from N={rows[-1]['num_patches']}) and "
                            f"{predicted_gb:.1f} GB of attention scores per layer; limits {TIME_LIMIT_S:.0f} s, "
                            f"{MEMORY_LIMIT_GB:.0f} GB"
                        ),
                    }
                )
                break
        row = measure(method, num_patches, TIME_LIMIT_S)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def summarise(rows: list[dict]) -> dict:
    """Targets and ratios measured in this run."""
    by = {(row["method"], row["num_patches"]): row for row in rows if "seconds" in row}
    summary = {}
    pathflip_10k, pathflip_100k = by.get(("pathflip", 10_000)), by.get(("pathflip", 100_000))
    if pathflip_10k and pathflip_100k:
        summary["pathflip_time_ratio_100k_over_10k"] = pathflip_100k["seconds"] / pathflip_10k["seconds"]
        summary["pathflip_peak_rss_growth_gb_100k"] = pathflip_100k["peak_rss_growth_gb"]
        summary["target_time_ratio_max"] = 12
        summary["target_peak_rss_growth_gb_max"] = 3
    for baseline in ("transformer", "abmil"):
        for num_patches in SIZES:
            ours, theirs = by.get(("pathflip", num_patches)), by.get((baseline, num_patches))
            if ours and theirs:
                summary[f"pathflip_over_{baseline}_seconds_{num_patches}"] = ours["seconds"] / theirs["seconds"]
    return summary


def markdown_table(rows: list[dict]) -> str:
    """The README table."""
    lines = ["| method | N patches | seconds | peak RSS growth (GB) |", "|---|---:|---:|---:|"]
    for row in rows:
        if "seconds" in row:
            lines.append(
                f"| {row['method']} | {row['num_patches']:,} | {row['seconds']:.2f} | {row['peak_rss_growth_gb']:.2f} |"
            )
        else:
            lines.append(f"| {row['method']} | {row['num_patches']:,} | {row['stopped']} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--methods", nargs="+", default=["pathflip", "abmil", "transformer"])
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args.worker[0], int(args.worker[1]))))
        return
    rows = [row for method in args.methods for row in run_method(method)]
    result = {
        "benchmark": "slide encoding, inference mode, batch of one bag, D=512",
        "machine": {
            "cpu_count": os.cpu_count(),
            "threads": int(os.environ.get("BENCH_THREADS", "2")),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "rows": rows,
        "summary": summarise(rows),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown_table(rows))
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()

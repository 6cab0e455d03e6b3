"""Local `evaluate` metric modules (Hub metrics do not load offline), one folder per metric.

``evaluate.load(str(metric_path("grounding")))`` loads one from wherever the package is installed. Each script
imports its metric function from the installed `pathflip.eval.metrics`, because `evaluate` copies the script alone
into its modules cache (relative imports would break there).
"""

from __future__ import annotations

from pathlib import Path

MODULES_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("grounding", "slide_text_retrieval", "zero_shot_classification", "captioning", "vqa")


def metric_path(name: str) -> Path:
    """The folder of the local metric ``name`` (what `evaluate.load` takes)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRIC_NAMES)}")
    return MODULES_DIR / name

"""Local `evaluate` metric modules (Hub metrics do not load offline), one folder per metric.

``evaluate.load("eval/modules/grounding")`` works from the repository root; `load_metric` works from anywhere.
Each script imports its metric function from the installed `eval.metrics`, because `evaluate` copies the script
alone into its modules cache (relative imports would break there).
"""

from __future__ import annotations

from pathlib import Path

import evaluate

MODULES_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("grounding", "slide_text_retrieval", "zero_shot_classification", "captioning", "vqa")


def metric_path(name: str) -> Path:
    """The folder of the local metric ``name`` (what `evaluate.load` takes)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRIC_NAMES)}")
    return MODULES_DIR / name


def load_metric(name: str, **load_kwargs) -> evaluate.EvaluationModule:
    """``evaluate.load`` of a local metric by name (extra keyword arguments go to `evaluate.load`)."""
    return evaluate.load(str(metric_path(name)), **load_kwargs)

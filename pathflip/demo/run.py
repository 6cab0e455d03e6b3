"""`pathflip demo`: the whole job on a generated cohort, offline, in minutes on a CPU.

slides -> tissue -> patches -> features -> pretraining -> held-out evaluation -> heatmaps -> a Hub-ready
folder reloaded through `pipeline()` -> captioning and VQA with a small LLM. Every step resumes.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..eval.runner import write_report
from ..synthetic.cohort import cohort_family
from .alignment import build_dataset, evaluate, showcase, train, train_options, write_card
from .llm import run_llm_stage, showcase_generation
from .options import ABLATIONS, DemoOptions


def run_demo(options: DemoOptions) -> dict:
    """Every step; returns the held-out metrics (also in ``metrics.json``)."""
    if options.ablation not in (None, *ABLATIONS):
        raise ValueError(f"unknown ablation {options.ablation!r}; choose one of {sorted(ABLATIONS)}.")
    cohort_family(options.family)  # an unknown family: a one-line error naming the choices, before any work
    options.output.mkdir(parents=True, exist_ok=True)
    dataset = build_dataset(options)
    run_dir = options.output if options.ablation is None else options.output / f"ablation-{options.ablation}"
    patch_dim = len(dataset["train"][0]["features"][0])
    model_dir = train(options, run_dir, patch_dim, len(dataset["train"]))
    metrics = evaluate(model_dir, dataset, run_dir)
    minilm = "--freeze_text_model" in train_options(run_dir)
    write_card(model_dir, metrics, options, minilm)
    lines = showcase(model_dir, dataset, options) if options.ablation is None else []
    if options.ablation is None and options.llm_steps:
        generation_dir, generation_metrics = run_llm_stage(options, dataset, model_dir, options.llm_steps)
        write_card(generation_dir, generation_metrics, options, minilm)
        metrics.update(generation_metrics)
        write_report(metrics, run_dir)
        lines += showcase_generation(generation_dir, dataset)
    print("\n".join(["", *lines, "", f"held-out metrics (seed {options.seed}, {metrics['slides']} slides):"]))
    print((run_dir / "metrics.md").read_text())
    if options.ablation is None:
        print(f"Look at the slides and ask where a sentence is:\n  {serve_command(model_dir, options)}\n"
              "then open http://127.0.0.1:8000/ in a browser.")  # fmt: skip
    return metrics


def serve_command(model_dir: Path, options: DemoOptions) -> str:
    """The `pathflip serve` command for the demo's model, slides and bags (the dataset, with labels and captions)."""
    installed = Path(sys.executable).parent / "pathflip"
    program = _relative(installed) if installed.exists() else "pathflip"
    arguments = [program, "serve", _relative(model_dir), "--slides", _relative(options.output / "cohort" / "slides"),
                 "--bags", _relative(options.output / "dataset")]  # fmt: skip
    return shlex.join(arguments)


def _relative(path: Path) -> str:
    """``path`` relative to the working folder when it lies inside it (shorter to copy), else absolute."""
    path = Path(path).absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)

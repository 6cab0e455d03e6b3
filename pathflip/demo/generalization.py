"""Does the recipe hold on a cohort it was not tuned on? Both cohort families, several seeds, every ablation.

``python -m pathflip.demo.generalization --output generalization_runs`` (``make generalization``) runs the demo's
alignment part (cohort -> features -> `pathflip train --recipe pathflip-small` -> held-out `pathflip eval`) for each
family x seed x variant, then writes one JSON with every run's held-out metrics and their summary over seeds, and a
markdown table of it. Every run resumes: a finished run's ``metrics.json`` is read back, not recomputed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..files import write_text
from ..synthetic.cohort import FAMILIES
from .options import ABLATIONS, MIN_SLIDES, DemoOptions

FULL = "full"  # the recipe as it ships
HEADLINE = ("zero_shot_balanced_accuracy", "grounding_auroc", "pointing_game")


def run_study(
    output: Path, *, families: list[str], seeds: list[int], variants: list[str], num_slides: int = 150
) -> dict:
    """Every (family, seed, variant) run's held-out metrics and the summary over seeds (``study.json``)."""
    _check(families, seeds, variants, num_slides)
    if Path(output).is_file():
        raise ValueError(f"output {str(output)!r} is a file; give a folder for the runs")
    runs = []
    for family in families:
        for seed in seeds:
            for variant in variants:
                metrics = _run(output / f"{family}-seed{seed}", family, seed, variant, num_slides)
                runs.append({"family": family, "seed": seed, "variant": variant, "metrics": metrics})
    study = {"families": families, "seeds": seeds, "variants": variants, "num_slides": num_slides,
             "summary": summarise(runs), "runs": runs}  # fmt: skip
    write_text(output / "study.json", json.dumps(study, indent=2) + "\n")
    write_text(output / "study.md", study_table(study))
    return study


def _check(families: list[str], seeds: list[int], variants: list[str], num_slides: int) -> None:
    """One-line errors before any work."""
    for family in families:
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; choose from {list(FAMILIES)}")
    for variant in variants:
        if variant != FULL and variant not in ABLATIONS:
            raise ValueError(f"unknown variant {variant!r}; choose from {[FULL, *ABLATIONS]}")
    if not seeds or any(not isinstance(seed, int) or seed < 0 for seed in seeds):
        raise ValueError(f"seeds must be non-negative ints, got {seeds!r}")
    for name, values in (("families", families), ("seeds", seeds), ("variants", variants)):
        if len(set(values)) != len(values):
            raise ValueError(f"{name} repeats {sorted({v for v in values if values.count(v) > 1})}; give each once")
    if not isinstance(num_slides, int) or num_slides < MIN_SLIDES:
        raise ValueError(f"num_slides must be an int >= {MIN_SLIDES}, got {num_slides!r}")


def _run(folder: Path, family: str, seed: int, variant: str, num_slides: int) -> dict:
    """One run's held-out metrics: trained and evaluated unless its ``metrics.json`` already exists."""
    from .alignment import build_dataset, evaluate, train

    ablation = None if variant == FULL else variant
    run_dir = folder / (FULL if ablation is None else f"ablation-{ablation}")
    if (run_dir / "metrics.json").exists():
        return json.loads((run_dir / "metrics.json").read_text())
    options = DemoOptions(output=folder, seed=seed, num_slides=num_slides, ablation=ablation, family=family,
                          llm_steps=0, real_slides=None)  # fmt: skip
    dataset = build_dataset(options)
    model_dir = train(options, run_dir, len(dataset["train"][0]["features"][0]), len(dataset["train"]))
    return evaluate(model_dir, dataset, run_dir)


def summarise(runs: list[dict]) -> dict:
    """Per family and variant, each metric's mean, min, max and std over seeds (metrics every seed has)."""
    summary: dict = {}
    for family in dict.fromkeys(run["family"] for run in runs):
        for variant in dict.fromkeys(run["variant"] for run in runs):
            chosen = [run["metrics"] for run in runs if run["family"] == family and run["variant"] == variant]
            names = [name for name in chosen[0] if all(isinstance(m.get(name), int | float) for m in chosen)]
            summary.setdefault(family, {})[variant] = {
                name: _stats([float(m[name]) for m in chosen]) for name in names
            }
    return summary


def _stats(values: list[float]) -> dict:
    array = np.asarray(values)
    return {"mean": float(array.mean()), "min": float(array.min()), "max": float(array.max()),
            "std": float(array.std()), "n": len(values)}  # fmt: skip


def study_table(study: dict) -> str:
    """Markdown: per family, one row per variant, headline metrics then grounding AUROC per finding type
    (mean over seeds, the worst seed in brackets)."""
    lines = []
    for family, variants in study["summary"].items():
        types = sorted({name.split("/", 1)[1] for stats in variants.values() for name in stats
                        if name.startswith("grounding_auroc/")})  # fmt: skip
        columns = [*HEADLINE, *(f"grounding_auroc/{kind}" for kind in types)]
        seeds = len(study["seeds"])
        lines += [f"**{family}** ({seeds} seed{'s' if seeds > 1 else ''}, held-out slides; mean (worst seed))", "",
                  "| variant | " + " | ".join(_label(column) for column in columns) + " |",
                  "|---" * (len(columns) + 1) + "|"]  # fmt: skip
        for variant, stats in variants.items():
            cells = [f"{stats[c]['mean']:.3f} ({stats[c]['min']:.3f})" if c in stats else "-" for c in columns]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _label(column: str) -> str:
    return {"zero_shot_balanced_accuracy": "zero-shot BA", "grounding_auroc": "grounding AUROC",
            "pointing_game": "pointing"}.get(column, column.replace("grounding_auroc/", ""))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pathflip.demo.generalization", description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="generalization_runs", help="folder for every run")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=[FULL, *ABLATIONS], choices=[FULL, *ABLATIONS])
    parser.add_argument("--num-slides", type=int, default=150)
    parser.add_argument("--json", help="also copy the study's JSON here (e.g. docs/generalization.json)")
    args = parser.parse_args(argv)
    if args.json and Path(args.json).is_dir():
        parser.exit(2, f"{parser.prog}: error: --json {args.json!r} is a folder; give a file such as "
                       "docs/generalization.json\n")  # fmt: skip
    blocked = next((parent for parent in Path(args.json or ".").parents if parent.is_file()), None)
    if blocked is not None:
        parser.exit(2, f"{parser.prog}: error: --json {args.json!r} lies under the file {str(blocked)!r}; give a path "
                       "in a folder\n")  # fmt: skip
    try:
        study = run_study(Path(args.output), families=args.families, seeds=args.seeds, variants=args.variants,
                          num_slides=args.num_slides)  # fmt: skip
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    if args.json:
        write_text(Path(args.json), json.dumps(study, indent=2) + "\n")
    print(study_table(study))
    return 0


if __name__ == "__main__":
    sys.exit(main())

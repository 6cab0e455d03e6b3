"""Whole jobs: train (the same as train.py) and demo."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import nonnegative_int, output_folder, positive_float, positive_int, seed

COHORT_FAMILIES = ["lesions", "hierarchical"]
# pathflip.demo.options.ABLATIONS, spelled out for the same reason (a test keeps the two equal).
ABLATION_NAMES = [
    "no-region-loss", "no-tra", "paraphrases-ignored", "sigmoid-tra", "subcaption-contrast",
    "negatives-fixed-attention", "region-exclusion", "no-context-negatives-fixed-attention",
]
TRAIN_HELP = "pretrain or fine-tune with the HF Trainer (the same as train.py; `pathflip train --help` lists options)"


def command_train(arguments: list[str], prog: str = "pathflip train") -> int:
    """Run training with the command line after `train` (HfArgumentParser options, as train.py takes them)."""
    from ..training.run import main

    main(arguments, prog=prog)
    return 0


def command_demo(args: argparse.Namespace) -> int:
    """The whole job on a generated cohort: features, pretraining, evaluation, heatmaps, a Hub-ready folder,
    then captioning and VQA with a small LLM."""
    from ..demo import DemoOptions, run_demo

    options = DemoOptions(output=Path(args.output), seed=args.seed, num_slides=args.num_slides,
                          max_steps=args.max_steps, ablation=args.ablation, text_model=args.text_model,
                          learning_rate=args.learning_rate, llm_steps=args.llm_steps,
                          real_slides=Path(args.real_slides) if args.real_slides else None,
                          family=args.family)  # fmt: skip
    run_demo(options)
    return 0


def add_verbs(commands) -> None:
    """train and demo."""
    # `train` takes the Trainer's own options: `main` hands its arguments over before argparse sees them.
    commands.add_parser("train", help=TRAIN_HELP, add_help=False)
    demo = commands.add_parser("demo", help=command_demo.__doc__)
    demo.add_argument("--output", "-o", type=output_folder, default="demo_output",
                      help="folder for everything (default demo_output)")
    demo.add_argument("--seed", type=seed, default=0, help="cohort, split and training seed")
    demo.add_argument("--num-slides", type=positive_int, default=150)
    demo.add_argument("--max-steps", type=positive_int, default=200, help="training steps")
    demo.add_argument("--learning-rate", type=positive_float, default=5e-4)
    demo.add_argument("--llm-steps", type=nonnegative_int, default=300, help="steps of each LLM stage (0: skip it)")
    demo.add_argument("--ablation", choices=ABLATION_NAMES, help="train an ablated model instead")
    demo.add_argument(
        "--text-model",
        choices=["auto", "minilm", "scratch"],
        default="auto",
        help="text tower: all-MiniLM-L6-v2 (frozen), a small BERT from scratch, or minilm when installed",
    )
    # The names of pathflip.synthetic.cohort.FAMILIES, spelled out: importing it would slow every command's start.
    demo.add_argument(
        "--family",
        choices=COHORT_FAMILIES,
        default="lesions",
        help="cohort family: lesions (3 diagnoses) or hierarchical (4 by hierarchical rules, 7 tissues)",
    )
    demo.add_argument("--real-slides", default="../shared/data",
                      help="folder with cmu-1-small-region.svs, tiled and grounded as a real-slide check (if there)")
    demo.set_defaults(run=command_demo)


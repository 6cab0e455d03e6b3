"""Pretrain or fine-tune PathFLIP on a feature-bag dataset with the Hugging Face `Trainer`.

`pathflip train ...`, `python train.py ...`, `torchrun --nproc_per_node N train.py ...` and
`accelerate launch train.py ...` all run `main`. Both losses use the negatives of the global batch (all
processes).

    pathflip train --dataset_name_or_path bags/dataset --text_model_name_or_path path/to/bert \\
        --output_dir runs/pathflip --per_device_train_batch_size 8 --num_train_epochs 10 --do_train --do_eval

The LLM stages start from that model: `--stage caption` trains the projector to a frozen LLM on captions,
`--stage instruct` adds LoRA adapters (peft) and VQA records:

    pathflip train --stage caption --model_name_or_path runs/pathflip --llm_name_or_path path/to/causal-lm \\
        --dataset_name_or_path bags/dataset --output_dir runs/caption --do_train
    pathflip train --stage instruct --model_name_or_path runs/caption --dataset_name_or_path bags/instructions \\
        --output_dir runs/instruct --do_train
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments, set_seed

from .arguments import DataArguments, ModelArguments, check_run, check_training_arguments
from .data import check_batch_size, load_splits
from .recipe import load_recipe, recipe_arguments
from .stages import alignment_trainer, generation_trainer

logger = logging.getLogger(__name__)


TRAIN_ARGUMENT_TYPES = (ModelArguments, DataArguments, TrainingArguments)


class _OneLineParser(HfArgumentParser):
    """`HfArgumentParser` that reports a bad option in one line, naming the recipe when the value came from it."""

    recipe: dict | None = None

    def error(self, message: str):
        keys = self.recipe["training"] if self.recipe else {}
        origin = next((f" (set by --recipe {self.recipe['path']}: training.{key})" for key in keys
                       if any(f"--{key}{end}" in message for end in ":/ ")), "")  # fmt: skip
        print(f"error: {self.prog}: {message}{origin} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def parse_arguments(argv: list[str] | None = None, prog: str | None = None):
    """``(model_args, data_args, training_args)`` from a command line, or from one JSON file argument; a
    ``--recipe``'s training options come first, so the command line's win."""
    types = TRAIN_ARGUMENT_TYPES
    parser = _OneLineParser(types, prog=prog)
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) == 1 and arguments[0].endswith(".json"):
        try:
            return parser.parse_json_file(json_file=arguments[0])
        except ValueError as error:  # a JSON syntax error, or keys that are not options
            raise ValueError(f"{arguments[0]}: {error}") from None
    recipe = _recipe_option(arguments)
    if recipe is not None:
        parser.recipe = load_recipe(recipe)
        arguments = recipe_arguments(parser.recipe, types) + arguments
    return parser.parse_args_into_dataclasses(args=arguments)


def _recipe_option(arguments: list[str]) -> str | None:
    for index, argument in enumerate(arguments):
        if argument.startswith("--recipe="):
            return argument.split("=", 1)[1]
        if argument == "--recipe" and index + 1 < len(arguments):
            return arguments[index + 1]
    return None


def take_over_hub_push(training_args: TrainingArguments) -> dict | None:
    """The `--push_to_hub` settings, with the Trainer's own push turned off: ours checks the folder first."""
    if not training_args.push_to_hub:
        return None
    training_args.push_to_hub = False
    return {
        "repo_id": training_args.hub_model_id or Path(training_args.output_dir).name,
        "revision": training_args.hub_revision,
        "private": bool(training_args.hub_private_repo),
        "token": training_args.hub_token,
    }


def push_trained_model(hub: dict, model_args, data_args, output_dir: str, results: dict) -> None:
    """Check the saved folder and upload it, with a model card naming its Hub base models, dataset and the
    metrics of `--do_eval` (on `--eval_split`)."""
    from ..model_cards.hub import push_model

    def hub_ids(names):
        return [name for name in names if name and not Path(name).exists()] or None

    sources = [model_args.model_name_or_path, model_args.text_model_name_or_path, model_args.llm_name_or_path]
    card = {"base_models": hub_ids(sources), "datasets": hub_ids([data_args.dataset_name_or_path])}
    metrics = {key.removeprefix("eval_"): value for key, value in results.items() if key.startswith("eval_")}
    if metrics:
        card["dataset_name"] = f"{data_args.dataset_name_or_path} ({data_args.eval_split} split)"
    commit = push_model(output_dir, hub.pop("repo_id"), metrics=metrics or None, card_options=card, **hub)
    logger.info("pushed %s to %s (pin revision=%r)", output_dir, commit.commit_url, commit.oid)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """Train (``--do_train``), evaluate (``--do_eval``), save and optionally push; returns the metrics."""
    model_args, data_args, training_args = parse_arguments(argv, prog)
    check_training_arguments(training_args)
    check_run(model_args, data_args, training_args)
    training_args.remove_unused_columns = False  # the processor needs the raw columns
    training_args.dataloader_drop_last = True  # equal batch shapes on every process for the all-gather
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    set_seed(training_args.seed)

    splits = load_splits(data_args)
    train_set = splits[data_args.train_split]
    eval_set = splits[data_args.eval_split] if data_args.eval_split else None
    if training_args.do_train:
        check_batch_size(train_set, training_args)
    build_trainer = alignment_trainer if model_args.stage == "align" else generation_trainer
    hub = take_over_hub_push(training_args)
    trainer, save = build_trainer(model_args, data_args, training_args, train_set, eval_set)
    results = {}
    if training_args.do_train:
        outcome = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        save(trainer)
        results.update(outcome.metrics)
    if training_args.do_eval and eval_set is not None:
        results.update(trainer.evaluate())
    if trainer.is_world_process_zero():
        trainer.save_metrics("all", results)
        if hub is not None:
            push_trained_model(hub, model_args, data_args, training_args.output_dir, results)
    return results

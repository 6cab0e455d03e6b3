#!/usr/bin/env python
"""Pretrain or fine-tune PathFLIP on a feature-bag dataset with the Hugging Face `Trainer`.

Run it like any transformers example: `python train.py ...`, `torchrun --nproc_per_node N train.py ...`
or `accelerate launch train.py ...`. Both losses use the negatives of the global batch (all processes).

    python train.py --dataset_name_or_path bags/dataset --text_model_name_or_path path/to/bert \
        --output_dir runs/pathflip --per_device_train_batch_size 8 --num_train_epochs 10 --do_train --do_eval
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import transformers
from transformers import (
    AutoModel,
    AutoTokenizer,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from eval.metrics import classification_metrics, retrieval_metrics, zero_shot_probabilities
from eval.runner import class_prompt_embeddings
from modeling_pathflip import PathFLIPConfig, PathFLIPModel, PathFLIPProcessor
from modeling_pathflip.pipeline_pathflip import DEFAULT_TEMPLATES

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "A PathFLIP folder to fine-tune."})
    config_name: str | None = field(default=None, metadata={"help": "A PathFLIP config (folder or JSON)."})
    text_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A pretrained BERT-like folder: initialises the text tower and tokenizer."}
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer folder (default: text model)."})
    freeze_text_model: bool = field(default=False, metadata={"help": "Keep the text tower's weights fixed."})


@dataclass
class DataArguments:
    dataset_name_or_path: str = field(metadata={"help": "A save_to_disk folder or a `load_dataset` name."})
    train_split: str = field(default="train")
    eval_split: str | None = field(default=None, metadata={"help": "Split for evaluation (default: none)."})
    features_column: str = field(default="features", metadata={"help": "Column of the [N, D] patch features."})
    coords_column: str = field(default="coords", metadata={"help": "Column of the [N, 2] level-0 coordinates."})
    caption_column: str = field(default="caption")
    label_column: str = field(default="label")
    num_subcaptions: int | None = field(default=None, metadata={"help": "Subcaptions per slide (default: config)."})
    max_regions: int | None = field(default=24, metadata={"help": "Regions sampled per slide in training."})
    class_names: list[str] | None = field(default=None, metadata={"help": "Zero-shot class names, label order."})
    prompt_templates: list[str] = field(
        default_factory=lambda: list(DEFAULT_TEMPLATES),
        metadata={"help": "Zero-shot prompt ensemble; '{}' is replaced by the class name."},
    )


class EpochCollator:
    """Training collator: regions and subcaptions are drawn from (seed, epoch, slide id).

    Unlike the global RNG this survives a kill and `--resume_from_checkpoint` exactly: the batches a
    dataloader had prefetched before the checkpoint are redrawn identically after it.
    """

    def __init__(self, processor: PathFLIPProcessor):
        self.processor = processor
        self.epoch = 0

    def __call__(self, rows: list[dict]):
        return self.processor(rows, training=True, sampling_round=self.epoch)


class EpochCallback(TrainerCallback):
    """Tells the `EpochCollator` which epoch is starting (also when a run resumes mid-epoch)."""

    def __init__(self, collator: EpochCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch + 1e-6) if state.epoch else 0


class PathFLIPTrainer(Trainer):
    """A `Trainer` whose evaluation batches keep every region and draw subcaptions deterministically."""

    def __init__(self, *args, eval_data_collator=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator

    def get_eval_dataloader(self, eval_dataset=None):
        training_collator = self.data_collator
        self.data_collator = self.eval_data_collator or training_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = training_collator


def load_splits(args: DataArguments) -> datasets.DatasetDict:
    """The dataset folder (save_to_disk) or Hub/local builder name, as a DatasetDict."""
    path = Path(args.dataset_name_or_path)
    if path.exists():
        loaded = datasets.load_from_disk(str(path))
    else:
        loaded = datasets.load_dataset(args.dataset_name_or_path)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({args.train_split: loaded})
    renames = {args.features_column: "features", args.coords_column: "coords"}
    renames = {old: new for old, new in renames.items() if old != new}
    return loaded.rename_columns(renames) if renames else loaded


def check_dataset(dataset: datasets.Dataset, name: str, config: PathFLIPConfig, caption_column: str) -> None:
    """Stop before training on a dataset the model cannot use, naming the column or row and the fix."""
    missing = [column for column in ("features", "coords", "patch_size_level0") if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{name} split has no {missing} column(s) (columns: {dataset.column_names}); build it with "
            "`pathflip extract` / `pathflip import` or rename the columns (DESIGN §3)."
        )
    if caption_column not in dataset.column_names:
        raise ValueError(f"{name} split has no caption column {caption_column!r}; pass --caption_column.")
    dim = np.asarray(dataset[0]["features"]).shape[-1]
    if dim != config.patch_dim:
        raise ValueError(
            f"{name} split has {dim}-dim features but the model expects patch_dim={config.patch_dim}; "
            "use features of the model's patch encoder, or a config with the dataset's dimension."
        )
    for index, caption in enumerate(dataset[caption_column]):
        if caption is None or not str(caption).strip():
            slide = dataset[index]["slide_id"] if "slide_id" in dataset.column_names else f"row {index}"
            raise ValueError(
                f"{name} split, {slide} (row {index}): empty caption. Training needs a caption for every slide; "
                "fill it or drop the row (dataset.filter)."
            )


def build_model(model_args: ModelArguments, dataset: datasets.Dataset) -> tuple[PathFLIPModel, object]:
    """The model (fresh, from a PathFLIP folder, or with a pretrained text tower) and its tokenizer."""
    if model_args.model_name_or_path:
        model = AutoModel.from_pretrained(model_args.model_name_or_path)
        tokenizer_source = model_args.tokenizer_name or model_args.model_name_or_path
        return model, AutoTokenizer.from_pretrained(tokenizer_source)
    config = PathFLIPConfig.from_pretrained(model_args.config_name) if model_args.config_name else None
    if config is None:
        if model_args.text_model_name_or_path is None:
            raise ValueError("Give --config_name, --model_name_or_path or --text_model_name_or_path.")
        dim = np.asarray(dataset[0]["features"]).shape[-1]
        text_config = transformers.AutoConfig.from_pretrained(model_args.text_model_name_or_path).to_dict()
        config = PathFLIPConfig(patch_dim=dim, text_config=text_config)
    model = PathFLIPModel(config)
    if model_args.text_model_name_or_path:
        pretrained = AutoModel.from_pretrained(model_args.text_model_name_or_path)
        missing, _ = model.text_model.load_state_dict(pretrained.state_dict(), strict=False)
        logger.info("text tower initialised from %s (missing keys: %s)", model_args.text_model_name_or_path, missing)
    tokenizer_source = model_args.tokenizer_name or model_args.text_model_name_or_path
    if tokenizer_source is None:
        raise ValueError("Give --text_model_name_or_path or --tokenizer_name: the text tower needs a tokenizer.")
    return model, AutoTokenizer.from_pretrained(tokenizer_source)


def make_compute_metrics(model: PathFLIPModel, processor: PathFLIPProcessor, labels, data_args: DataArguments):
    """Retrieval Recall@k over the whole eval set, plus zero-shot metrics when labels and classes are given."""

    def compute_metrics(prediction) -> dict:
        slide_embeds, text_embeds = prediction.predictions[:2]
        metrics = retrieval_metrics(slide_embeds, text_embeds)
        if labels is not None and data_args.class_names:
            class_embeds = class_prompt_embeddings(model, processor, data_args.class_names, data_args.prompt_templates)
            probabilities = zero_shot_probabilities(slide_embeds, class_embeds)
            scores = classification_metrics(probabilities, np.asarray(labels)[: len(slide_embeds)])
            metrics.update({f"zero_shot_{key}": value for key, value in scores.items()})
        return metrics

    return compute_metrics


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=sys.argv[1])
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    training_args.remove_unused_columns = False  # the processor needs the raw columns
    training_args.dataloader_drop_last = True  # equal batch shapes on every process for the all-gather
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    set_seed(training_args.seed)

    splits = load_splits(data_args)
    train_set = splits[data_args.train_split]
    eval_set = splits[data_args.eval_split] if data_args.eval_split else None
    model, tokenizer = build_model(model_args, train_set)
    for name, split in (("train", train_set), ("eval", eval_set)):
        if split is not None:
            check_dataset(split, name, model.config, data_args.caption_column)
    if model_args.freeze_text_model:
        model.text_model.requires_grad_(False)
    processor = PathFLIPProcessor.from_model_config(
        tokenizer,
        model.config,
        max_regions_train=data_args.max_regions,
        num_subcaptions=data_args.num_subcaptions or model.config.num_subcaptions,
    )
    train_set, eval_set = (split.with_format("numpy") if split is not None else None for split in (train_set, eval_set))
    labels = (
        eval_set[data_args.label_column]
        if eval_set is not None and data_args.label_column in eval_set.column_names
        else None
    )

    collator = EpochCollator(processor)
    trainer = PathFLIPTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        callbacks=[EpochCallback(collator)],
        eval_data_collator=processor,
        processing_class=processor,
        compute_metrics=make_compute_metrics(model, processor, labels, data_args) if eval_set is not None else None,
    )
    results = {}
    if training_args.do_train:
        outcome = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()  # weights, config + code, and the processor
        results.update(outcome.metrics)
    if training_args.do_eval and eval_set is not None:
        results.update(trainer.evaluate())
    if trainer.is_world_process_zero():
        trainer.save_metrics("all", results)
    return results


if __name__ == "__main__":
    main()

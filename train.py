#!/usr/bin/env python
"""Pretrain or fine-tune PathFLIP on a feature-bag dataset with the Hugging Face `Trainer`.

Run it like any transformers example: `python train.py ...`, `torchrun --nproc_per_node N train.py ...`
or `accelerate launch train.py ...`. Both losses use the negatives of the global batch (all processes).

    python train.py --dataset_name_or_path bags/dataset --text_model_name_or_path path/to/bert \
        --output_dir runs/pathflip --per_device_train_batch_size 8 --num_train_epochs 10 --do_train --do_eval

The LLM stages (DESIGN §9) start from that model: `--stage caption` trains the projector to a frozen LLM on
captions, `--stage instruct` adds LoRA adapters (peft) and VQA records:

    python train.py --stage caption --model_name_or_path runs/pathflip --llm_name_or_path path/to/causal-lm \
        --dataset_name_or_path bags/dataset --output_dir runs/caption --do_train
    python train.py --stage instruct --model_name_or_path runs/caption --dataset_name_or_path bags/instructions \
        --output_dir runs/instruct --do_train
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import transformers
from transformers import (
    AutoConfig,
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
from modeling_pathflip import (
    PathFLIPConfig,
    PathFLIPForConditionalGeneration,
    PathFLIPGenerationConfig,
    PathFLIPGenerationProcessor,
    PathFLIPModel,
    PathFLIPProcessor,
    save_pretrained_with_pipelines,
)
from modeling_pathflip.generation_pipeline_pathflip import DEFAULT_INSTRUCTION
from modeling_pathflip.pipeline_pathflip import DEFAULT_TEMPLATES
from processing.instructions import VQA_COLUMNS, GenerationCollator, record_texts

logger = logging.getLogger(__name__)
STAGES = ("align", "caption", "instruct")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "A PathFLIP folder to fine-tune."})
    config_name: str | None = field(default=None, metadata={"help": "A PathFLIP config (folder or JSON)."})
    text_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A pretrained BERT-like folder: initialises the text tower and tokenizer."}
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer folder (default: text model)."})
    freeze_text_model: bool = field(default=False, metadata={"help": "Keep the text tower's weights fixed."})
    stage: str = field(
        default="align",
        metadata={
            "help": "align: PathFLIP pretraining. caption: LLM stage 1, the projector alone on captions (PathFLIP "
            "and the LLM frozen). instruct: stage 2, the projector and LoRA adapters on captions and VQA records.",
            "choices": STAGES,
        },
    )
    llm_name_or_path: str | None = field(
        default=None, metadata={"help": "caption stage from an alignment model: the causal LM (folder or Hub id)."}
    )
    max_visual_tokens: int = field(default=65, metadata={"help": "LLM stage: slide token + at most this - 1 regions."})
    lora_r: int = field(default=8, metadata={"help": "instruct stage: LoRA rank."})
    lora_alpha: int = field(default=16)
    lora_dropout: float = field(default=0.05)
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "LLM modules that get LoRA adapters (default: peft's choice for the LLM)."}
    )


@dataclass
class DataArguments:
    dataset_name_or_path: str = field(metadata={"help": "A save_to_disk folder or a `load_dataset` name."})
    train_split: str = field(default="train")
    eval_split: str | None = field(default=None, metadata={"help": "Split for evaluation (default: none)."})
    features_column: str = field(default="features", metadata={"help": "Column of the [N, D] patch features."})
    coords_column: str = field(default="coords", metadata={"help": "Column of the [N, 2] level-0 coordinates."})
    caption_column: str = field(default="caption")
    question_column: str = field(default="question", metadata={"help": "LLM stage: the VQA question column."})
    options_column: str = field(default="options", metadata={"help": "LLM stage: the VQA options (list of texts)."})
    answer_column: str = field(default="answer", metadata={"help": "LLM stage: the VQA answer (option letter)."})
    caption_prompt: str = field(default=DEFAULT_INSTRUCTION, metadata={"help": "LLM stage: instruction of captions."})
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
    renames = {
        args.features_column: "features", args.coords_column: "coords", args.caption_column: "caption",
        args.question_column: "question", args.options_column: "options", args.answer_column: "answer",
    }  # fmt: skip
    columns = set(next(iter(loaded.values())).column_names)
    renames = {old: new for old, new in renames.items() if old != new and old in columns}
    return loaded.rename_columns(renames) if renames else loaded


def check_dataset(dataset: datasets.Dataset, name: str, patch_dim: int, stage: str = "align") -> None:
    """Stop before training on a dataset the model cannot use, naming the column or row and the fix."""
    missing = [column for column in ("features", "coords", "patch_size_level0") if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{name} split has no {missing} column(s) (columns: {dataset.column_names}); build it with "
            "`pathflip extract` / `pathflip import` or rename the columns (DESIGN §3)."
        )
    text_columns = [column for column in ("slide_id", "caption", *VQA_COLUMNS) if column in dataset.column_names]
    if "caption" not in text_columns and (stage == "align" or "question" not in text_columns):
        raise ValueError(
            f"{name} split has no caption column (columns: {dataset.column_names}); pass --caption_column."
        )
    dim = np.asarray(dataset[0]["features"]).shape[-1]
    if dim != patch_dim:
        raise ValueError(
            f"{name} split has {dim}-dim features but the model expects patch_dim={patch_dim}; "
            "use features of the model's patch encoder, or a config with the dataset's dimension."
        )
    for index, row in enumerate(dataset.select_columns(text_columns)):
        row.setdefault("slide_id", f"row {index}")
        if stage != "align":
            record_texts(row)  # raises on a row that is neither a caption nor a valid VQA record
        elif row["caption"] is None or not str(row["caption"]).strip():
            raise ValueError(
                f"{name} split, {row['slide_id']} (row {index}): empty caption. Training needs a caption for every "
                "slide; fill it or drop the row (dataset.filter)."
            )


def record_input_contract(config: PathFLIPConfig, dataset: datasets.Dataset, name: str = "train") -> None:
    """Write the bags' patch encoder and patch side (µm) into ``config``: the model card's input contract, and
    what the pipelines use to encode slide files. Refuses mixed encoders and features of another encoder."""
    columns = dataset.column_names
    encoders = sorted({str(value) for value in dataset.unique("encoder") if value}) if "encoder" in columns else []
    if len(encoders) > 1:
        raise ValueError(
            f"{name} split mixes patch encoders {encoders}: a model reads one encoder's features. Keep one with "
            "dataset.filter(lambda row: row['encoder'] == ...)."
        )
    if encoders and config.patch_encoder not in (None, encoders[0]):
        raise ValueError(
            f"the model reads {config.patch_encoder!r} features but the {name} split holds {encoders[0]!r} features; "
            f"extract the slides again with `pathflip extract --encoder {config.patch_encoder}`."
        )
    if encoders:
        config.patch_encoder = encoders[0]
    if "mpp" in columns:
        table = dataset.select_columns(["patch_size_level0", "mpp"])
        sides = [size * mpp for size, mpp in zip(table["patch_size_level0"], table["mpp"], strict=True) if mpp]
        if sides:
            config.patch_size_um = round(float(np.median(sides)), 3)


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


def save_served_model(trainer: Trainer) -> None:
    """Save weights, config, code, processor and every task of the model, so that ``pipeline(task, model=folder)``
    works (and the folder can be pushed as is); LoRA adapters are merged into the LLM first."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(getattr(model, "language_model", None), "merge_and_unload"):
        model.language_model = model.language_model.merge_and_unload()
    if trainer.is_world_process_zero():
        save_pretrained_with_pipelines(model, trainer.processing_class, trainer.args.output_dir)


def alignment_trainer(model_args, data_args, training_args, train_set, eval_set) -> tuple[Trainer, Callable]:
    """The PathFLIP pretraining `Trainer` and how to save its result."""
    model, tokenizer = build_model(model_args, train_set)
    for name, split in (("train", train_set), ("eval", eval_set)):
        if split is not None:
            check_dataset(split, name, model.config.patch_dim)
    record_input_contract(model.config, train_set)
    if model_args.freeze_text_model:
        model.text_model.requires_grad_(False)
    processor = PathFLIPProcessor.from_model_config(
        tokenizer,
        model.config,
        max_regions_train=data_args.max_regions,
        num_subcaptions=data_args.num_subcaptions or model.config.num_subcaptions,
    )
    labels = None
    if eval_set is not None and data_args.label_column in eval_set.column_names:
        labels = eval_set[data_args.label_column]
    collator = EpochCollator(processor)
    trainer = PathFLIPTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set.with_format("numpy"),
        eval_dataset=eval_set.with_format("numpy") if eval_set is not None else None,
        data_collator=collator,
        callbacks=[EpochCallback(collator)],
        eval_data_collator=processor,
        processing_class=processor,
        compute_metrics=make_compute_metrics(model, processor, labels, data_args) if eval_set is not None else None,
    )
    return trainer, save_served_model


# ---- LLM stages (DESIGN §9) --------------------------------------------------------------------


def build_generation_model(model_args) -> tuple[PathFLIPForConditionalGeneration, PathFLIPGenerationProcessor]:
    """A saved LLM-stage model, or an alignment model joined to ``--llm_name_or_path``; with its processor."""
    source = model_args.model_name_or_path
    if source is None:
        raise ValueError(
            f"--stage {model_args.stage} starts from a trained model: pass --model_name_or_path (an alignment model "
            "from --stage align, with --llm_name_or_path, or a model saved by a previous LLM stage)."
        )
    if AutoConfig.from_pretrained(source).model_type == PathFLIPGenerationConfig.model_type:
        model = PathFLIPForConditionalGeneration.from_pretrained(source)
        return model, PathFLIPGenerationProcessor.from_pretrained(source)
    if model_args.llm_name_or_path is None:
        raise ValueError(f"{source} is an alignment model: pass --llm_name_or_path, the causal LM to attach.")
    model = PathFLIPForConditionalGeneration.from_alignment(
        source, model_args.llm_name_or_path, max_visual_tokens=model_args.max_visual_tokens
    )
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.llm_name_or_path)
    max_length = getattr(model.config.llm_config, "max_position_embeddings", None) or 1024
    processor = PathFLIPGenerationProcessor.from_model_config(tokenizer, model.config, max_length=min(max_length, 4096))
    return model, processor


def add_lora(model: PathFLIPForConditionalGeneration, model_args) -> None:
    """Wrap the LLM with trainable LoRA adapters (peft); its own weights stay frozen."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ImportError("--stage instruct trains LoRA adapters with peft: pip install 'pathflip[llm]'") from error
    lora = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    model.language_model = get_peft_model(model.language_model, lora)


def generation_trainer(model_args, data_args, training_args, train_set, eval_set) -> tuple[Trainer, Callable]:
    """The `Trainer` of an LLM stage and how to save its result."""
    model, processor = build_generation_model(model_args)
    for name, split in (("train", train_set), ("eval", eval_set)):
        if split is not None:
            check_dataset(split, name, model.config.pathflip_config.patch_dim, model_args.stage)
    record_input_contract(model.config.pathflip_config, train_set)
    model.freeze_for_stage(model_args.stage)
    if model_args.stage == "instruct":
        add_lora(model, model_args)
    collator = GenerationCollator(processor, data_args.caption_prompt)
    trainer = PathFLIPTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set.with_format("numpy"),
        eval_dataset=eval_set.with_format("numpy") if eval_set is not None else None,
        data_collator=collator,
        callbacks=[EpochCallback(collator)],
        eval_data_collator=GenerationCollator(processor, data_args.caption_prompt),
        processing_class=processor,
    )
    return trainer, save_served_model


# ---- publishing --------------------------------------------------------------------------------


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
    from model_cards.hub import push_model

    def hub_ids(names):
        return [name for name in names if name and not Path(name).exists()] or None

    sources = [model_args.model_name_or_path, model_args.text_model_name_or_path, model_args.llm_name_or_path]
    card = {"base_models": hub_ids(sources), "datasets": hub_ids([data_args.dataset_name_or_path])}
    metrics = {key.removeprefix("eval_"): value for key, value in results.items() if key.startswith("eval_")}
    if metrics:
        card["dataset_name"] = f"{data_args.dataset_name_or_path} ({data_args.eval_split} split)"
    commit = push_model(output_dir, hub.pop("repo_id"), metrics=metrics or None, card_options=card, **hub)
    logger.info("pushed %s to %s (pin revision=%r)", output_dir, commit.commit_url, commit.oid)


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


if __name__ == "__main__":
    main()

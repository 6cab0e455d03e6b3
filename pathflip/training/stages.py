"""The training stages: PathFLIP alignment, then the LLM's caption and instruct stages, each a `Trainer`."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import datasets
import numpy as np
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, Trainer

from modeling_pathflip import (
    PathFLIP2Config,
    PathFLIP2Model,
    PathFLIP2Processor,
    PathFLIPConfig,
    PathFLIPForConditionalGeneration,
    PathFLIPGenerationConfig,
    PathFLIPGenerationProcessor,
    PathFLIPModel,
    PathFLIPProcessor,
    save_pretrained_with_pipelines,
)

from ..eval.metrics import retrieval_metrics
from ..eval.runner import zero_shot_labels, zero_shot_metrics
from .arguments import DataArguments, ModelArguments
from .collator import EpochCallback, PathFLIPCollator
from .data import check_dataset, first_row, record_input_contract
from .qformer_init import initialise_qformer_from_bert
from .recipe import load_recipe, recipe_config
from .trainer import PathFLIPTrainer

logger = logging.getLogger(__name__)
# What `save_pretrained` writes beside a config's own keys (a model folder's config.json), and the dtype's older name.
SAVED_CONFIG_KEYS = {"auto_map", "custom_pipelines", "torch_dtype"}
# model type -> (config, model, processor) classes of the alignment stage
ALIGNMENT_MODELS = {"pathflip": (PathFLIPConfig, PathFLIPModel, PathFLIPProcessor),
                    "pathflip2": (PathFLIP2Config, PathFLIP2Model, PathFLIP2Processor)}  # fmt: skip


def build_model(model_args: ModelArguments, dataset: datasets.Dataset):
    """The model (fresh from a config of either model type, from a saved folder, or PathFLIP with a pretrained
    text tower) and its tokenizer."""
    if model_args.model_name_or_path:
        model = AutoModel.from_pretrained(model_args.model_name_or_path)
        tokenizer_source = model_args.tokenizer_name or model_args.model_name_or_path
        return model, AutoTokenizer.from_pretrained(tokenizer_source)
    if model_args.config_name and model_args.recipe:
        raise ValueError("give --config_name or --recipe, not both: each sets the model.")
    if model_args.config_name:
        config = _alignment_config(model_args.config_name)
    elif model_args.text_model_name_or_path is None:
        raise ValueError("Give --config_name, --model_name_or_path or --text_model_name_or_path (with or without "
                         "--recipe).")  # fmt: skip
    else:
        dim = np.asarray(first_row(dataset)["features"]).shape[-1]
        text_config = AutoConfig.from_pretrained(model_args.text_model_name_or_path).to_dict()
        config = (recipe_config(load_recipe(model_args.recipe), patch_dim=dim, text_config=text_config)
                  if model_args.recipe else PathFLIPConfig(patch_dim=dim, text_config=text_config))  # fmt: skip
    model = ALIGNMENT_MODELS[config.model_type][1](config)
    if model_args.qformer_init_from:
        if config.model_type != "pathflip":
            raise ValueError(f"--qformer_init_from initialises PathFLIP's Q-Former; a {config.model_type} has none.")
        copied = initialise_qformer_from_bert(model, AutoModel.from_pretrained(model_args.qformer_init_from))
        logger.info("Q-Former initialised from %s (%d tensors)", model_args.qformer_init_from, len(copied))
    if model_args.text_model_name_or_path:
        pretrained = AutoModel.from_pretrained(model_args.text_model_name_or_path)
        missing, _ = model.text_model.load_state_dict(pretrained.state_dict(), strict=False)
        logger.info("text tower initialised from %s (missing keys: %s)", model_args.text_model_name_or_path, missing)
    tokenizer_source = model_args.tokenizer_name or model_args.text_model_name_or_path
    if tokenizer_source is None:
        raise ValueError("Give --text_model_name_or_path or --tokenizer_name: the text tower needs a tokenizer.")
    return model, AutoTokenizer.from_pretrained(tokenizer_source)


def _alignment_config(name: str) -> PretrainedConfig:
    """A PathFLIP or PathFLIP2 config from a folder or JSON file (a JSON without ``model_type`` is PathFLIP's)."""
    values, _ = PretrainedConfig.get_config_dict(name)
    model_type = values.get("model_type", "pathflip")
    if model_type not in ALIGNMENT_MODELS:
        raise ValueError(f"--config_name {name} is a {model_type!r} config; the align stage trains "
                         f"{sorted(ALIGNMENT_MODELS)}.")  # fmt: skip
    config_class = ALIGNMENT_MODELS[model_type][0]
    # A `PretrainedConfig` keeps any key it is given, so a misspelt option would train with its default.
    defaults = config_class()
    options = {*vars(defaults), *defaults.to_dict(), *inspect.signature(config_class.__init__).parameters,
               *SAVED_CONFIG_KEYS}  # fmt: skip
    unknown = sorted(set(values) - options)
    if unknown:
        raise ValueError(f"--config_name {name}: key(s) {unknown} are not {config_class.__name__} options; fix their "
                         f"spelling or remove them (see {config_class.__name__}'s documentation).")  # fmt: skip
    return config_class.from_pretrained(name)


def make_compute_metrics(model, processor, labels: tuple | None, data_args: DataArguments):
    """Retrieval Recall@k over the eval set, plus zero-shot metrics (as `pathflip eval` computes them) when the
    eval split has labels (``labels``: class indices and class names, from `zero_shot_labels`)."""

    def compute_metrics(prediction) -> dict:
        slide_embeds, text_embeds = prediction.predictions[:2]
        metrics = retrieval_metrics(slide_embeds, text_embeds)
        if labels is not None:
            metrics.update(zero_shot_metrics(model, processor, slide_embeds, labels[0], labels[1],
                                             data_args.prompt_templates))  # fmt: skip
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


def _checked(splits: dict, patch_dim: int, stage: str) -> None:
    for name, split in splits.items():
        if split is not None:
            check_dataset(split, name, patch_dim, stage)


def alignment_trainer(model_args, data_args, training_args, train_set, eval_set) -> tuple[Trainer, Callable]:
    """The PathFLIP pretraining `Trainer` and how to save its result."""
    model, tokenizer = build_model(model_args, train_set)
    _checked({"train": train_set, "eval": eval_set}, model.config.patch_dim, "align")
    record_input_contract(model.config, train_set)
    if model_args.freeze_text_model:
        model.text_model.requires_grad_(False)
    num_subcaptions = data_args.num_subcaptions or model.config.num_subcaptions
    processor_class = ALIGNMENT_MODELS[model.config.model_type][2]
    processor = processor_class.from_model_config(
        tokenizer, model.config, num_subcaptions=num_subcaptions,
        max_sentences_per_subcaption=data_args.max_sentences_per_subcaption,
    )  # fmt: skip
    labels = None if eval_set is None else zero_shot_labels(eval_set, data_args.label_column, data_args.class_names)
    compute_metrics = make_compute_metrics(model, processor, labels, data_args) if eval_set is not None else None
    max_patches = data_args.max_patches or getattr(model.config, "max_patches", None)
    collators = [PathFLIPCollator(processor, max_regions=data_args.max_regions, max_patches=max_patches,
                                  training=training) for training in (True, False)]  # fmt: skip
    return _trainer(model, training_args, train_set, eval_set, collators, compute_metrics), save_served_model


def _trainer(model, training_args, train_set, eval_set, collators, compute_metrics=None) -> PathFLIPTrainer:
    """A `PathFLIPTrainer` over numpy-formatted splits with the (training, evaluation) collators."""
    training, evaluation = collators
    return PathFLIPTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set.with_format("numpy"),
        eval_dataset=eval_set.with_format("numpy") if eval_set is not None else None,
        data_collator=training,
        callbacks=[EpochCallback(training)],
        eval_data_collator=evaluation,
        processing_class=training.processor,
        compute_metrics=compute_metrics,
    )


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
    _checked({"train": train_set, "eval": eval_set}, model.config.pathflip_config.patch_dim, model_args.stage)
    record_input_contract(model.config.pathflip_config, train_set)
    model.freeze_for_stage(model_args.stage)
    if model_args.stage == "instruct":
        add_lora(model, model_args)
    collators = [PathFLIPCollator(processor, training=training, caption_prompt=data_args.caption_prompt)
                 for training in (True, False)]  # fmt: skip
    return _trainer(model, training_args, train_set, eval_set, collators), save_served_model

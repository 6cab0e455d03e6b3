"""The command-line arguments of `pathflip train` / train.py (parsed by `HfArgumentParser`)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from modeling_pathflip.generation_pipeline_pathflip import DEFAULT_INSTRUCTION

from ..eval.spec import ZERO_SHOT_TEMPLATES
from ..files import names_a_local_path

STAGES = ("align", "caption", "instruct")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "A PathFLIP folder to fine-tune."})
    config_name: str | None = field(default=None, metadata={"help": "A PathFLIP config (folder or JSON)."})
    recipe: str | None = field(
        default=None,
        metadata={"help": "A recipe (JSON with a model config and training options, e.g. configs/pathflip-small.json, "
                  "or a shipped recipe's name): options given on the command line win."},
    )  # fmt: skip
    text_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A pretrained BERT-like folder: initialises the text tower and tokenizer."}
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer folder (default: text model)."})
    freeze_text_model: bool = field(default=False, metadata={"help": "Keep the text tower's weights fixed."})
    qformer_init_from: str | None = field(
        default=None,
        metadata={"help": "A BERT-like folder or Hub id whose layers initialise a new model's Q-Former (BLIP-2's "
                  "mapping; cross-attention stays new). Default: random, as the paper's released code."},
    )  # fmt: skip
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
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an --output_dir that already holds a run or other files (they are replaced "
                  "as the new run writes)."},
    )  # fmt: skip


@dataclass
class DataArguments:
    dataset_name_or_path: str = field(
        metadata={"help": "A save_to_disk folder, parquet files (a folder of <split>-*.parquet or one file), or a Hub "
                  "dataset id."}  # fmt: skip
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset (for datasets larger than memory)."})
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
    max_sentences_per_subcaption: int = field(
        default=3,
        metadata={"help": "A subcaption joins 1 to this many of a caption's sentences (1: one finding each, so a "
                  "sentence every caption has, such as the background's, is never fused with a lesion's)."},
    )  # fmt: skip
    max_regions: int | None = field(default=24, metadata={"help": "Regions sampled per slide in training."})
    max_patches: int | None = field(
        default=None, metadata={"help": "PathFLIP2: patches sampled per slide in training (default: the config's)."}
    )
    class_names: list[str] | None = field(
        default=None,
        metadata={"help": "Zero-shot class names in label order (default: the label column's ClassLabel names)."},
    )
    prompt_templates: list[str] = field(
        default_factory=lambda: list(ZERO_SHOT_TEMPLATES),
        metadata={"help": "Zero-shot prompt ensemble; '{}' is replaced by the class name (default: pathflip eval's)."},
    )

    def __post_init__(self) -> None:
        for name in ("max_sentences_per_subcaption", "num_subcaptions", "max_regions", "max_patches"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"--{name} must be a positive integer, got {value!r}.")


def check_training_arguments(args: TrainingArguments) -> None:
    """Refuse what the `Trainer` accepts and then trains badly with (a negative learning rate, no steps), or fails on
    only once the model is built (an output folder that is a file)."""
    if Path(args.output_dir).is_file():
        raise ValueError(f"--output_dir {args.output_dir!r} is a file; give a folder for the run.")
    for name in ("learning_rate", "weight_decay", "max_grad_norm"):  # a learning rate of 0 runs without updates
        value = getattr(args, name)
        if value is not None and not 0 <= value < math.inf:
            raise ValueError(f"--{name} must be a number >= 0, got {value!r}.")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a whole number >= 1, got {getattr(args, name)!r}.")
    if args.max_steps <= 0 and not 0 < args.num_train_epochs < math.inf:
        raise ValueError(f"--num_train_epochs must be a positive number (or give --max_steps), got "
                         f"{args.num_train_epochs!r}.")  # fmt: skip


# What each stage starts from, by the model type in --model_name_or_path's config.json.
STAGE_SOURCES = {"align": ("pathflip", "pathflip2"), "caption": ("pathflip", "pathflip_generation"),
                 "instruct": ("pathflip", "pathflip_generation")}  # fmt: skip


def _check_sources(model_args: ModelArguments, data_args: DataArguments) -> None:
    """Every folder option that names a local path exists, and --model_name_or_path fits --stage."""
    for option, value in (("dataset_name_or_path", data_args.dataset_name_or_path),
                          *((name, getattr(model_args, name)) for name in SOURCE_OPTIONS)):  # fmt: skip
        if value and names_a_local_path(value) and not Path(value).expanduser().exists():
            raise ValueError(f"--{option} {value} does not exist; check the path (or give a Hub id such as org/name).")
    config = Path(model_args.model_name_or_path or "").expanduser() / "config.json"
    if model_args.model_name_or_path and config.is_file():
        model_type = json.loads(config.read_text()).get("model_type")
        if model_type not in STAGE_SOURCES[model_args.stage]:
            raise ValueError(f"--model_name_or_path {model_args.model_name_or_path} is a {model_type!r} model; "
                             f"--stage {model_args.stage} starts from a "
                             f"{' or '.join(map(repr, STAGE_SOURCES[model_args.stage]))} model.")  # fmt: skip


SOURCE_OPTIONS = ("model_name_or_path", "config_name", "recipe", "text_model_name_or_path", "tokenizer_name",
                  "qformer_init_from", "llm_name_or_path")  # fmt: skip


def check_run(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> None:
    """Refuse a run with nothing to do, and a training run whose --output_dir would replace what is already there:
    the dataset or the model it starts from (always), an earlier run or other files (unless resumed or
    ``--overwrite_output_dir``)."""
    if not (args.do_train or args.do_eval):
        raise ValueError("nothing to do: give --do_train, --do_eval (with --eval_split) or both.")
    if args.do_eval and not data_args.eval_split:
        raise ValueError("--do_eval needs --eval_split, the split to evaluate on (e.g. test).")
    _check_sources(model_args, data_args)
    if not args.do_train:
        return
    output = Path(args.output_dir).expanduser().resolve()
    for option, source in (("dataset_name_or_path", data_args.dataset_name_or_path),
                           ("model_name_or_path", model_args.model_name_or_path)):  # fmt: skip
        if source and Path(source).expanduser().exists():
            found = Path(source).expanduser().resolve()
            if output == found or found in output.parents:
                raise ValueError(f"--output_dir {args.output_dir} would write into --{option} {source}; give the "
                                 "run a folder of its own.")  # fmt: skip
    # Only the first process looks: under torchrun another may already have started writing the run.
    first = os.environ.get("RANK", "0") == "0"
    held = sorted(path.name for path in output.iterdir()) if first and output.is_dir() else []
    if held and not (args.resume_from_checkpoint or model_args.overwrite_output_dir):
        kind = "checkpoints of an earlier run" if any(name.startswith("checkpoint-") for name in held) else "files"
        raise ValueError(f"--output_dir {args.output_dir} already holds {kind} ({', '.join(held[:4])}"
                         f"{', ...' if len(held) > 4 else ''}); add --resume_from_checkpoint to go on from the last "
                         "checkpoint, --overwrite_output_dir to replace it, or choose a new folder.")  # fmt: skip

"""The demo's LLM stage: captioning and VQA about the generated slides with a small LLM.

No pretrained LLM can be downloaded here, so a small LLaMA-style model is first trained as a plain language
model on the training slides' texts (its tokenizer fitted on them with `tokenizers`); then `pathflip train` runs
`--stage caption` (projector only, LLM frozen) and `--stage instruct` (projector + LoRA) from the alignment model.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..eval.generation import evaluate_generation
from ..processing.bags import save_dataset
from ..synthetic.cohort import load_cohort
from ..synthetic.questions import cohort_questions
from ..training.records import record_texts, with_questions
from ..training.run import main as train_main
from .offline_tokenizers import train_causal_lm_tokenizer
from .options import DemoOptions, step

LLM_CONFIG = {"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 256, "max_position_embeddings": 512}  # fmt: skip
MAX_VISUAL_TOKENS = 65
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_instructions(options: DemoOptions, dataset):
    """Caption and VQA records (diagnosis, necrosis, lymphocytes, fat) of every slide, train/test as the cohort."""
    import datasets

    folder = options.output / "instructions"
    if (folder / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(folder))
    rows = {row["slide_id"]: row for row in load_cohort(options.output / "cohort")}
    splits = {
        name: with_questions(split, lambda row: cohort_questions(rows[row["slide_id"]], options.seed))
        for name, split in dataset.items()
    }
    instructions = datasets.DatasetDict(splits)
    save_dataset(instructions, folder)
    return instructions


def train_language_model(options: DemoOptions, instructions, steps: int) -> Path:
    """A small causal LM trained on the training records' prompts and answers (no slides): the stand-in for a
    pretrained LLM. Skipped when saved."""
    folder = options.output / "llm"
    if (folder / "model.safetensors").exists():
        return folder
    import datasets
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    step(f"LLM 1/3: a small causal LM trained on the training texts ({steps} steps)")
    train = instructions["train"].select_columns(["slide_id", "caption", "question", "options", "answer"])
    texts = [f"{prompt}\n{target}" for prompt, target in map(record_texts, train)]
    tokenizer = train_causal_lm_tokenizer(texts, vocab_size=1000)
    config = AutoConfig.for_model(**LLM_CONFIG, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(options.seed)
    model = AutoModelForCausalLM.from_config(config)
    corpus = datasets.Dataset.from_dict({"text": [text + tokenizer.eos_token for text in texts]})
    corpus = corpus.map(lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"])
    arguments = TrainingArguments(
        output_dir=str(options.output / "llm-checkpoints"), max_steps=steps, learning_rate=2e-3,
        per_device_train_batch_size=16, warmup_steps=20, weight_decay=0.01, logging_steps=50, save_strategy="no",
        report_to="none", seed=options.seed, use_cpu=True,
    )  # fmt: skip
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    Trainer(model=model, args=arguments, train_dataset=corpus, data_collator=collator).train()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_stage(options: DemoOptions, stage: str, source: Path, dataset_dir: Path, train_rows: int, steps: int,
              extra: list[str]) -> Path:  # fmt: skip
    """One LLM stage through `pathflip train`'s code (batches of 16 records, or all ``train_rows`` when fewer);
    skipped when its folder is saved."""
    output = options.output / f"llm-{stage}"
    if (output / "model.safetensors").exists():
        return output
    arguments = [
        "--stage", stage, "--model_name_or_path", str(source),
        "--dataset_name_or_path", str(dataset_dir), "--train_split", "train", "--output_dir", str(output),
        "--do_train", "--max_steps", str(steps), "--per_device_train_batch_size",
        str(min(16, train_rows)), "--learning_rate", "2e-3",
        "--warmup_steps", "10", "--logging_steps", "25", "--save_strategy", "no", "--seed", str(options.seed),
        "--report_to", "none", "--disable_tqdm", "false", "--overwrite_output_dir", *extra,
    ]  # fmt: skip  (no checkpoints: a stage killed before its model was saved starts again in its own folder)
    (options.output / f"llm-{stage}-command.json").write_text(json.dumps(["pathflip", "train", *arguments]))
    train_main(arguments)
    return output


def run_llm_stage(options: DemoOptions, dataset, alignment_model: Path, steps: int = 150) -> tuple[Path, dict]:
    """Language model, caption stage, instruct stage, then caption and VQA metrics on held-out slides."""
    instructions = build_instructions(options, dataset)
    llm = train_language_model(options, instructions, 2 * steps)
    step(f"LLM 2/3: pathflip train --stage caption ({steps} steps), then --stage instruct ({steps} steps, LoRA)")
    caption = run_stage(options, "caption", alignment_model, options.output / "dataset", len(dataset["train"]), steps,
                        ["--llm_name_or_path", str(llm), "--max_visual_tokens", str(MAX_VISUAL_TOKENS)])  # fmt: skip
    lora = ["--lora_r", "16", "--lora_alpha", "32", "--lora_target_modules", *LORA_MODULES]
    instruct = run_stage(options, "instruct", caption, options.output / "instructions", len(instructions["train"]),
                         steps, lora)  # fmt: skip
    step("LLM 3/3: captions and multiple-choice answers for held-out slides")
    return instruct, evaluate_generation(instruct, instructions["test"])


def showcase_generation(model_dir: Path, dataset) -> list[str]:
    """Generated captions and an answer for two held-out slides, through `pipeline("slide-text-generation")`."""
    from transformers import pipeline

    generator = pipeline("slide-text-generation", model=str(model_dir))
    lines, diagnoses = [], dataset["test"].features["label"].names  # the cohort family's
    for row in list(dataset["test"].with_format("numpy"))[:2]:
        caption = generator(row, prompt="Describe the slide.")["generated_text"]
        answer = generator(row, question="What is the diagnosis?", options=list(diagnoses), max_new_tokens=16)
        lines += [
            f"{row['slide_id']} (true: {diagnoses[int(row['label'])]}) caption: {caption!r}",
            f"{row['slide_id']} diagnosis question -> {answer['generated_text']!r} (letter {answer['answer']})",
        ]
    return lines

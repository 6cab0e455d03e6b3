"""Offline LLM decomposition of captions into subcaptions, written once as a column.

Any local causal LM runs through a transformers ``text-generation`` pipeline; each caption becomes
one finding per line. Captions the model returns nothing usable for keep the rule-based sentence
split, and the count of those fallbacks is reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import datasets

from modeling_pathflip import split_sentences

PROMPT = (
    "Split the pathology report below into short, self-contained findings, one per line. Each finding "
    "describes one observation and, when the report says so, where it is.\n\nReport: {caption}\n\nFindings:\n"
)
_MARKER = re.compile(r"^\s*(?:[-*\u2022]|\d{1,2}[.)])\s*")


@dataclass
class DecompositionReport:
    rows: int = 0
    fallbacks: int = 0


def parse_findings(text: str, *, min_words: int = 2) -> list[str]:
    """Findings from generated text: one per line, list markers dropped, short or repeated lines skipped."""
    findings: list[str] = []
    for line in text.splitlines():
        finding = _MARKER.sub("", line).strip()
        if len(finding.split()) >= min_words and finding not in findings:
            findings.append(finding)
    return findings


def decompose_dataset(
    dataset: datasets.Dataset,
    model: str,
    *,
    caption_column: str = "caption",
    max_new_tokens: int = 200,
    batch_size: int = 8,
) -> tuple[datasets.Dataset, DecompositionReport]:
    """Add (or replace) a ``subcaptions`` column decomposed by the causal LM at ``model`` (path or Hub id); a row
    without a caption gets none."""
    if caption_column not in dataset.column_names:
        raise ValueError(f"the dataset has no {caption_column!r} column (has {dataset.column_names}).")
    captions = [(caption or "").strip() for caption in dataset[caption_column]]
    written = [index for index, caption in enumerate(captions) if caption]
    if not written:
        raise ValueError(f"no row of the dataset has a caption in {caption_column!r}; add captions (pathflip extract "
                         "--table with a caption column) before decomposing them.")  # fmt: skip
    generator = _causal_lm_pipeline(model)
    prompts = [PROMPT.format(caption=captions[index]) for index in written]
    outputs = generator(
        prompts, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False, batch_size=batch_size
    )
    report = DecompositionReport(rows=len(written))
    subcaptions: list[list[str]] = [[] for _ in captions]
    for index, output in zip(written, outputs, strict=True):
        findings = parse_findings(output[0]["generated_text"])
        if not findings:
            report.fallbacks += 1
            findings = split_sentences(captions[index])
        subcaptions[index] = findings
    if "subcaptions" in dataset.column_names:
        dataset = dataset.remove_columns("subcaptions")
    return dataset.add_column("subcaptions", subcaptions), report


def _causal_lm_pipeline(model: str):
    """A text-generation pipeline of ``model``, refused with a one-line reason when it is not a causal LM."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig, pipeline

    config = AutoConfig.from_pretrained(model)
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ValueError(f"--model {model} is a {config.model_type!r} model, not a causal language model; give a "
                         "text-generation model (e.g. a Qwen or LLaMA folder).")  # fmt: skip
    generator = pipeline("text-generation", model=model)
    if generator.tokenizer.pad_token is None:
        generator.tokenizer.pad_token = generator.tokenizer.eos_token
    return generator

"""PathFLIPGenerationProcessor: feature bags + prompts (+ targets) -> batches for the LLM stage.

The prompt holds one ``<image>`` placeholder where the model splices the slide and region tokens; a prompt
without it gets it prepended (``"<image>\\n" + prompt``), a prompt with two is refused. When the LLM tokenizer
has a chat template the prompt becomes the user turn and the target the assistant's reply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import BatchFeature, ProcessorMixin

from .processing_pathflip import BAG_INPUT_NAMES, RegionLayout, bag_rng, layout_bags, pad_layouts, sample_regions

IGNORE_INDEX = -100


class PathFLIPGenerationProcessor(ProcessorMixin):
    r"""Builds [`PathFLIPForConditionalGeneration`] batches. A slide with more regions than fit keeps a choice
    drawn from (seed, slide id); a training collator draws per epoch instead and passes laid-out bags in.

    Args:
        tokenizer: the LLM's tokenizer (the image placeholder is added to it when missing).
        patch_dim, region_grid_size: bag geometry of the PathFLIP model.
        max_visual_tokens: 1 slide token + at most ``max_visual_tokens - 1`` regions per slide.
        image_token: the placeholder string.
        max_length: longest spliced sequence (prompt + visual tokens + target) in tokens.
        seed: seed of the region choice when a slide has more regions than fit.
    """

    tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        tokenizer=None,
        patch_dim: int = 512,
        region_grid_size: int = 16,
        max_visual_tokens: int = 65,
        image_token: str = "<image>",
        max_length: int = 1024,
        seed: int = 0,
        **kwargs: Any,
    ):
        self.patch_dim = patch_dim
        self.region_grid_size = region_grid_size
        self.max_visual_tokens = max_visual_tokens
        self.image_token = image_token
        self.max_length = max_length
        self.seed = seed
        if tokenizer is not None and image_token not in tokenizer.get_vocab():
            tokenizer.add_tokens([image_token], special_tokens=True)
        super().__init__(tokenizer, **kwargs)

    @classmethod
    def from_model_config(cls, tokenizer, config, **kwargs: Any) -> PathFLIPGenerationProcessor:
        """A processor matching a [`PathFLIPGenerationConfig`]; also records the placeholder's id in ``config``."""
        geometry = {
            "patch_dim": config.pathflip_config.patch_dim,
            "region_grid_size": config.pathflip_config.region_grid_size,
            "max_visual_tokens": config.max_visual_tokens,
            "image_token": config.image_token,
        }
        processor = cls(tokenizer, **{**geometry, **kwargs})
        config.image_token_id = processor.image_token_id
        return processor

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    @property
    def model_input_names(self) -> list[str]:
        return BAG_INPUT_NAMES + ["input_ids", "attention_mask", "labels"]

    def format_prompt(self, prompt: str) -> str:
        """The prompt with exactly one image placeholder, in the tokenizer's chat template when it has one."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"Empty prompt {prompt!r}: give an instruction or question, e.g. 'Describe the slide.'")
        count = prompt.count(self.image_token)
        if count > 1:
            raise ValueError(
                f"The prompt has {count} {self.image_token!r} placeholders; one slide goes in one place. "
                f"Keep a single {self.image_token!r}: {prompt[:80]!r}"
            )
        if count == 0:
            prompt = f"{self.image_token}\n{prompt}"
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt + "\n"

    def __call__(
        self,
        bags: Mapping[str, Any] | Sequence[Mapping[str, Any] | RegionLayout],
        prompts: str | Sequence[str],
        targets: str | Sequence[str] | None = None,
    ) -> BatchFeature:
        """Bag tensors, ``input_ids``/``attention_mask`` (prompt, then target) and, with targets, ``labels``."""
        bags = [bags] if isinstance(bags, Mapping) else list(bags)
        prompts = _per_bag(prompts, len(bags), "prompts")
        targets = None if targets is None else _per_bag(targets, len(bags), "targets")
        layouts = [sample_regions(layout, self.max_visual_tokens - 1, bag_rng(self.seed, "eval", layout.name))
                   for layout in self.layout(bags)]  # fmt: skip
        batch = pad_layouts(layouts)
        rows = [
            self._token_row(layout.name, prompt, None if targets is None else targets[i], 1 + len(layout.region_cells))
            for i, (layout, prompt) in enumerate(zip(layouts, prompts, strict=True))
        ]
        batch.update(self._pad(rows, with_labels=targets is not None))
        return BatchFeature(batch)

    def layout(self, bags: Sequence[Mapping[str, Any] | RegionLayout]) -> list[RegionLayout]:
        """Validate each bag and group its patches into regions (laid-out bags pass through)."""
        return layout_bags(bags, self.patch_dim, self.region_grid_size)

    def _token_row(self, name: str, prompt: str, target: str | None, num_visual: int) -> tuple[list, list]:
        """Token ids of prompt + target and their labels (-100 on the prompt); checks the length."""
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        prompt_ids = self.tokenizer(self.format_prompt(prompt), add_special_tokens=not templated)["input_ids"]
        spliced_length = len(prompt_ids) - 1 + num_visual
        if spliced_length >= self.max_length:
            raise ValueError(
                f"{name}: the prompt is {len(prompt_ids)} tokens + {num_visual} visual tokens = {spliced_length}, "
                f"over max_length={self.max_length}. Shorten the prompt, or raise max_length / lower max_visual_tokens."
            )
        if target is None:
            return prompt_ids, [IGNORE_INDEX] * len(prompt_ids)
        if not isinstance(target, str) or not target.strip():
            raise ValueError(f"{name}: empty target text; give every training example a caption or an answer.")
        target_ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        if self.tokenizer.eos_token_id is not None:
            target_ids = target_ids + [self.tokenizer.eos_token_id]
        target_ids = target_ids[: self.max_length - spliced_length]
        return prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + target_ids

    def _pad(self, rows: list[tuple[list, list]], with_labels: bool) -> dict[str, torch.Tensor]:
        """Right-pad token rows (the model re-pads after splicing, so the side does not matter here)."""
        length = max(len(ids) for ids, _ in rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for row, (ids, row_labels) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            labels[row, : len(ids)] = torch.tensor(row_labels)
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if with_labels:
            out["labels"] = labels
        return out

    def batch_decode(self, token_ids, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(token_ids, **{"skip_special_tokens": True, **kwargs})


def _per_bag(texts: str | Sequence[str], num_bags: int, what: str) -> list[str]:
    texts = [texts] * num_bags if isinstance(texts, str) else list(texts)
    if len(texts) != num_bags:
        raise ValueError(f"Got {len(texts)} {what} for {num_bags} bags; give one per bag (or one string for all).")
    return texts

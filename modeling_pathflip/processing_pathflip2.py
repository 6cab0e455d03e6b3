"""PathFLIP2Processor: feature bags + text -> batches for [`PathFLIP2Model`].

PathFLIP2 reads patches without regions: a bag needs ``features [N, D]`` and ``coords [N, 2]`` (for heatmaps;
the model ignores them), not ``patch_size_level0``. Texts are captions and K concept texts per slide, as for
PathFLIP; the processor draws nothing at random (a training collator samples patches with `sample_patches`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import ProcessorMixin

from .processing_pathflip import TEXT_INPUT_NAMES, PathFLIPProcessor, validate_bag

PATCH_BAG_INPUT_NAMES = ["patch_features", "patch_attention_mask"]


@dataclass
class PatchLayout:
    """One validated bag of patches."""

    name: str
    features: torch.Tensor  # [N, D] float
    coords: torch.Tensor  # [N, 2] long, level-0


def layout_patch_bags(bags: Sequence[Mapping[str, Any] | PatchLayout], patch_dim: int) -> list[PatchLayout]:
    """Validate each bag (laid-out bags pass through)."""
    layouts = []
    for position, bag in enumerate(bags):
        if not isinstance(bag, PatchLayout):
            name, features, coords, _ = validate_bag(bag, position, patch_dim, require_patch_size=False)
            bag = PatchLayout(name, features, coords)
        layouts.append(bag)
    return layouts


def sample_patches(layout: PatchLayout, max_patches: int | None, rng: random.Random) -> PatchLayout:
    """At most ``max_patches`` of the bag's patches, drawn with ``rng`` (kept in bag order)."""
    count = layout.features.shape[0]
    if not max_patches or count <= max_patches:
        return layout
    keep = torch.tensor(sorted(rng.sample(range(count), max_patches)))
    return PatchLayout(layout.name, layout.features[keep], layout.coords[keep])


def pad_patch_layouts(layouts: list[PatchLayout], return_coords: bool = False) -> dict[str, torch.Tensor]:
    """Pad bags of patches into ``patch_features [B, N, D]`` and ``patch_attention_mask [B, N]``."""
    num_patches = max(layout.features.shape[0] for layout in layouts)
    features = torch.zeros(len(layouts), num_patches, layouts[0].features.shape[1])
    mask = torch.zeros(len(layouts), num_patches, dtype=torch.long)
    coords = torch.zeros(len(layouts), num_patches, 2, dtype=torch.long)
    for row, layout in enumerate(layouts):
        count = layout.features.shape[0]
        features[row, :count], mask[row, :count], coords[row, :count] = layout.features, 1, layout.coords
    out = {"patch_features": features, "patch_attention_mask": mask}
    if return_coords:
        out["patch_coords"] = coords
    return out


class PathFLIP2Processor(PathFLIPProcessor):
    r"""Turns feature bags and captions into [`PathFLIP2Model`] batches.

    Args:
        tokenizer: the text tower's tokenizer (Bio_ClinicalBERT's for the released weights).
        patch_dim: expected feature dimension D (the model's ``patch_dim``).
        num_subcaptions: K concept texts per slide.
        max_sentences_per_subcaption: sentences joined into one concept text when a caption is decomposed.
        caption_max_length, subcaption_max_length: token limits (the text tower's 512 by default).
        seed: seed of the concept texts drawn when none are given.
    """

    tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        tokenizer=None,
        patch_dim: int = 512,
        num_subcaptions: int = 8,
        max_sentences_per_subcaption: int = 3,
        caption_max_length: int = 512,
        subcaption_max_length: int = 512,
        seed: int = 0,
        **kwargs: Any,
    ):
        self.patch_dim = patch_dim
        self.num_subcaptions = num_subcaptions
        self.max_sentences_per_subcaption = max_sentences_per_subcaption
        self.caption_max_length = caption_max_length
        self.subcaption_max_length = subcaption_max_length
        self.seed = seed
        ProcessorMixin.__init__(self, tokenizer, **kwargs)

    @classmethod
    def from_model_config(cls, tokenizer, config, **kwargs: Any) -> PathFLIP2Processor:
        """A processor whose feature dimension, K and token limits match a [`PathFLIP2Config`]."""
        limit = min(config.text_max_length, getattr(config.text_config, "max_position_embeddings", None) or 10**6)
        geometry = {"patch_dim": config.patch_dim, "num_subcaptions": config.num_subcaptions,
                    "caption_max_length": limit, "subcaption_max_length": limit}
        return cls(tokenizer, **{**geometry, **kwargs})  # fmt: skip

    @property
    def model_input_names(self) -> list[str]:
        return PATCH_BAG_INPUT_NAMES + TEXT_INPUT_NAMES

    @property
    def bag_input_names(self) -> list[str]:
        return PATCH_BAG_INPUT_NAMES

    def layout(self, bags: Sequence[Mapping[str, Any] | PatchLayout]) -> list[PatchLayout]:
        """Validate each bag (laid-out bags pass through)."""
        return layout_patch_bags(bags, self.patch_dim)

    @staticmethod
    def _pad(layouts: list, return_coords: bool) -> dict[str, torch.Tensor]:
        return pad_patch_layouts(layouts, return_coords)

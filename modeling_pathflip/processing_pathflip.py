"""PathFLIPProcessor: feature bags + text -> model-ready batches; also the training collator.

A bag is a mapping with ``features [N, D]``, ``coords [N, 2]`` (level-0 top-left corners) and
``patch_size_level0`` (optionally ``slide_id``, ``caption``, ``subcaptions``): a dict, a `datasets`
row, numpy arrays or tensors. The processor validates bags (DESIGN §3), groups patches into regions
of ``region_grid_size x region_grid_size`` grid cells, optionally samples regions for training,
pads, and tokenises captions and sampled subcaptions (DESIGN §8).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import BatchFeature, ProcessorMixin

from .subcaptions_pathflip import sample_subcaptions

BAG_INPUT_NAMES = [
    "patch_features", "patch_attention_mask", "region_patch_index", "region_attention_mask", "region_positions",
]  # fmt: skip
TEXT_INPUT_NAMES = ["input_ids", "attention_mask", "subcaption_input_ids", "subcaption_attention_mask"]


@dataclass
class RegionLayout:
    """One validated bag with its patches grouped into regions."""

    name: str
    features: torch.Tensor  # [N, D] float
    coords: torch.Tensor  # [N, 2] long, level-0
    region_patch_index: torch.Tensor  # [L, P] rows of each region (-1 = pad)
    region_cells: torch.Tensor  # [L, 2] (row, column) of each region in region units
    region_positions: torch.Tensor  # [L, 2] (row, column) scaled to [0, 1] over the slide's tissue extent


def bag_name(bag: Mapping[str, Any], position: int) -> str:
    """A name for error messages: the slide id when the bag has one."""
    slide_id = bag.get("slide_id") if isinstance(bag, Mapping) else None
    return f"slide {slide_id!r}" if slide_id not in (None, "") else f"bag #{position}"


def validate_bag(bag: Mapping[str, Any], position: int, patch_dim: int) -> tuple[str, torch.Tensor, torch.Tensor, int]:
    """Check a bag against the data contract; return ``(name, features, coords, patch_size_level0)``."""
    name = bag_name(bag, position)
    if not isinstance(bag, Mapping):
        raise ValueError(f"{name}: expected a mapping with features, coords and patch_size_level0, got {type(bag)}.")
    for key in ("features", "coords"):
        if bag.get(key) is None:
            raise ValueError(f"{name}: missing '{key}'. A bag needs features [N, D] and coords [N, 2].")
    patch_size = bag.get("patch_size_level0")
    if patch_size is None or int(patch_size) <= 0:
        raise ValueError(
            f"{name}: missing or invalid patch_size_level0 ({patch_size!r}). Set it to the patch side in "
            "level-0 pixels (e.g. 512 for 256-px patches at 20x read from a 40x slide); it is never guessed."
        )
    features = torch.as_tensor(bag["features"])
    coords = torch.as_tensor(bag["coords"])
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"{name}: empty bag or features of shape {tuple(features.shape)}; expected [N>0, D].")
    if features.shape[1] != patch_dim:
        raise ValueError(
            f"{name}: feature dim {features.shape[1]} != the model's patch_dim {patch_dim}. Extract features "
            "with the patch encoder the model was trained on (see its config / model card)."
        )
    if coords.dim() != 2 or coords.shape[1] != 2 or coords.shape[0] != features.shape[0]:
        raise ValueError(
            f"{name}: coords of shape {tuple(coords.shape)} do not match {features.shape[0]} feature rows; "
            "expected one (x, y) per patch row."
        )
    features = features.float()
    if not torch.isfinite(features).all():
        bad = int((~torch.isfinite(features)).any(dim=1).nonzero()[0])
        raise ValueError(f"{name}: NaN or Inf in features (first at row {bad}). Re-extract this slide's features.")
    return name, features, coords.long(), int(patch_size)


def group_into_regions(name: str, coords: torch.Tensor, patch_size: int, region_grid_size: int) -> tuple:
    """Group patches into square regions of ``region_grid_size`` grid cells.

    Returns ``(region_patch_index [L, P], region_cells [L, 2])``. Regions are ordered row-major and
    patches inside a region by grid cell, so the layout does not depend on the order of the rows.
    """
    offset = coords[0] % patch_size
    off_grid = ((coords - offset) % patch_size).any(dim=1)
    if off_grid.any():
        row = int(off_grid.nonzero()[0])
        raise ValueError(
            f"{name}: coords row {row} {coords[row].tolist()} is not on the patch grid of step "
            f"patch_size_level0={patch_size} (the first patch is at {coords[0].tolist()}). Coords must be "
            "level-0 top-left corners of non-overlapping patches; check patch_size_level0 or re-tile."
        )
    grid = torch.div(coords - offset, patch_size, rounding_mode="floor")
    cells, cell_of_patch = torch.unique(grid.flip(1), dim=0, return_inverse=True)
    if cells.shape[0] != coords.shape[0]:
        raise ValueError(f"{name}: duplicate coords (two patches on one grid cell); remove the duplicates.")
    region_of_cell = torch.div(cells, region_grid_size, rounding_mode="floor")
    region_cells, region_of_cell = torch.unique(region_of_cell, dim=0, return_inverse=True)
    region_of_patch = region_of_cell[cell_of_patch]
    order = torch.argsort(region_of_patch * coords.shape[0] + cell_of_patch)
    counts = torch.bincount(region_of_patch, minlength=region_cells.shape[0])
    starts = torch.cumsum(counts, 0) - counts
    sorted_regions = region_of_patch[order]
    slots = torch.arange(order.shape[0]) - starts[sorted_regions]
    index = torch.full((region_cells.shape[0], int(counts.max())), -1, dtype=torch.long)
    index[sorted_regions, slots] = order
    return index, region_cells


def keep_regions(layout: RegionLayout, keep: torch.Tensor) -> RegionLayout:
    """Restrict a layout to the regions ``keep`` (sorted), dropping the other regions' patches."""
    index = layout.region_patch_index[keep]
    rows = index[index >= 0]
    new_row = torch.full((layout.features.shape[0],), -1, dtype=torch.long)
    new_row[rows] = torch.arange(rows.shape[0])
    remapped = torch.where(index >= 0, new_row[index.clamp(min=0)], index)
    width = int((remapped >= 0).sum(1).max())
    return RegionLayout(
        layout.name,
        layout.features[rows],
        layout.coords[rows],
        remapped[:, :width],
        layout.region_cells[keep],
        layout.region_positions[keep],
    )


def layout_bag(
    bag: Mapping[str, Any],
    position: int,
    patch_dim: int,
    region_grid_size: int,
    max_regions: int | None = None,
    rng: random.Random | None = None,
) -> RegionLayout:
    """Validate a bag and group it into regions; keep ``max_regions`` regions drawn with ``rng`` when given."""
    name, features, coords, patch_size = validate_bag(bag, position, patch_dim)
    index, cells = group_into_regions(name, coords, patch_size, region_grid_size)
    layout = RegionLayout(name, features, coords, index, cells, relative_positions(cells))
    if max_regions and cells.shape[0] > max_regions:
        keep = sorted((rng or random).sample(range(cells.shape[0]), max_regions))
        layout = keep_regions(layout, torch.tensor(keep))
    return layout


def relative_positions(cells: torch.Tensor) -> torch.Tensor:
    """Region cells scaled to [0, 1] per axis over the extent of all the slide's regions ("upper left" of the
    section is near (0, 0) whatever the slide's size and margins)."""
    cells = cells.float()
    low = cells.min(dim=0).values
    return (cells - low) / (cells.max(dim=0).values - low).clamp(min=1)


def pad_layouts(layouts: list[RegionLayout], return_coords: bool = False) -> dict[str, torch.Tensor]:
    """Pad laid-out bags into the model's bag tensors (+ ``patch_coords`` when asked)."""
    batch = len(layouts)
    num_patches = max(layout.features.shape[0] for layout in layouts)
    num_regions = max(layout.region_patch_index.shape[0] for layout in layouts)
    region_width = max(layout.region_patch_index.shape[1] for layout in layouts)
    features = torch.zeros(batch, num_patches, layouts[0].features.shape[1])
    patch_mask = torch.zeros(batch, num_patches, dtype=torch.long)
    region_index = torch.full((batch, num_regions, region_width), -1, dtype=torch.long)
    region_mask = torch.zeros(batch, num_regions, dtype=torch.long)
    region_positions = torch.zeros(batch, num_regions, 2)
    coords = torch.zeros(batch, num_patches, 2, dtype=torch.long)
    for i, layout in enumerate(layouts):
        n, (regions, width) = layout.features.shape[0], layout.region_patch_index.shape
        features[i, :n] = layout.features
        patch_mask[i, :n] = 1
        coords[i, :n] = layout.coords
        region_index[i, :regions, :width] = layout.region_patch_index
        region_mask[i, :regions] = 1
        region_positions[i, :regions] = layout.region_positions
    out = {
        "patch_features": features,
        "patch_attention_mask": patch_mask,
        "region_patch_index": region_index,
        "region_attention_mask": region_mask,
        "region_positions": region_positions,
    }
    if return_coords:
        out["patch_coords"] = coords
    return out


class PathFLIPProcessor(ProcessorMixin):
    r"""Turns feature bags and captions into PathFLIP batches.

    Calling it on a list of bags (e.g. `datasets` rows) returns a [`BatchFeature`] for
    [`PathFLIPModel`]; with ``training=True`` it samples regions and subcaptions at random, so
    ``functools.partial(processor, training=True)`` is a `Trainer` data collator.

    Args:
        tokenizer: the text tower's tokenizer.
        patch_dim: expected feature dimension D (must equal the model's ``patch_dim``).
        region_grid_size: region side in patches (the model's ``region_grid_size``).
        num_subcaptions: K subcaptions per slide.
        max_sentences_per_subcaption: sentences joined into one subcaption (1..this).
        max_regions_train: regions sampled per slide when ``training=True`` (None: all).
        caption_max_length, subcaption_max_length: token limits.
        seed: seed of the deterministic sampling used when ``training=False``.
    """

    tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        tokenizer=None,
        patch_dim: int = 512,
        region_grid_size: int = 16,
        num_subcaptions: int = 8,
        max_sentences_per_subcaption: int = 3,
        max_regions_train: int | None = None,
        caption_max_length: int = 384,
        subcaption_max_length: int = 128,
        seed: int = 0,
        **kwargs: Any,
    ):
        self.patch_dim = patch_dim
        self.region_grid_size = region_grid_size
        self.num_subcaptions = num_subcaptions
        self.max_sentences_per_subcaption = max_sentences_per_subcaption
        self.max_regions_train = max_regions_train
        self.caption_max_length = caption_max_length
        self.subcaption_max_length = subcaption_max_length
        self.seed = seed
        super().__init__(tokenizer, **kwargs)

    @classmethod
    def from_model_config(cls, tokenizer, config, **kwargs: Any) -> PathFLIPProcessor:
        """A processor whose bag geometry and K match a [`PathFLIPConfig`]."""
        geometry = {
            "patch_dim": config.patch_dim,
            "region_grid_size": config.region_grid_size,
            "num_subcaptions": config.num_subcaptions,
        }
        return cls(tokenizer, **{**geometry, **kwargs})

    @property
    def model_input_names(self) -> list[str]:
        return BAG_INPUT_NAMES + TEXT_INPUT_NAMES

    def __call__(
        self,
        bags: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        text: str | Sequence[str] | None = None,
        *,
        training: bool = False,
        sampling_round: int | None = None,
        return_loss: bool | None = None,
        return_coords: bool = False,
        **kwargs: Any,
    ) -> BatchFeature:
        """Build a batch.

        Args:
            bags: one bag or a list of bags. Without bags, ``text`` is just tokenised (e.g. prompts).
            text: captions, one per bag (default: each bag's ``caption``).
            training: sample ``max_regions_train`` regions and fresh subcaptions; otherwise every region
                is kept and subcaptions are drawn deterministically from ``seed`` and the slide id.
            sampling_round: with ``training``, draw from ``seed``, this round (e.g. the epoch) and the
                slide id instead of Python's global RNG, so a resumed run redraws exactly the same
                samples whatever was prefetched before it stopped.
            return_loss: ask for the losses (default: when captions are present); then every bag
                needs a non-empty caption, and subcaptions are added.
            return_coords: also return ``patch_coords [B, N, 2]`` aligned with ``patch_features``.
        """
        if kwargs:
            raise TypeError(f"PathFLIPProcessor got unexpected options {sorted(kwargs)}.")
        if bags is None:
            if text is None:
                raise ValueError("Give bags, text or both.")
            return BatchFeature(self._tokenize(text, self.caption_max_length))
        bags = [bags] if isinstance(bags, Mapping) else list(bags)
        if not bags:
            raise ValueError("Got an empty list of bags.")
        max_regions = self.max_regions_train if training else None
        rngs = [self._rng(bag_name(bag, position), training, sampling_round) for position, bag in enumerate(bags)]
        layouts = [
            layout_bag(bag, position, self.patch_dim, self.region_grid_size, max_regions, rng)
            for position, (bag, rng) in enumerate(zip(bags, rngs, strict=True))
        ]
        batch = pad_layouts(layouts, return_coords)
        captions = self._captions(bags, text)
        if return_loss is None:
            return_loss = any(caption not in (None, "") for caption in captions)
        if return_loss:
            batch.update(self._loss_text(bags, layouts, captions, rngs))
            batch["return_loss"] = True
        return BatchFeature(batch)

    # ---- text -------------------------------------------------------------------------------

    def _tokenize(self, text: str | Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            list(text) if not isinstance(text, str) else text,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    @staticmethod
    def _captions(bags: list, text: str | Sequence[str] | None) -> list:
        if text is None:
            return [bag.get("caption") for bag in bags]
        captions = [text] if isinstance(text, str) else list(text)
        if len(captions) != len(bags):
            raise ValueError(f"Got {len(captions)} captions for {len(bags)} bags; give one caption per bag.")
        return captions

    def _rng(self, name: str, training: bool, sampling_round: int | None):
        """The random source of one bag: global in plain training, else seeded by the bag's name."""
        if training and sampling_round is None:
            return random
        return random.Random(f"{self.seed}:{sampling_round if training else 'eval'}:{name}")

    def _loss_text(self, bags: list, layouts: list[RegionLayout], captions: list, rngs: list) -> dict:
        subcaptions = []
        for bag, layout, caption, rng in zip(bags, layouts, captions, rngs, strict=True):
            if caption is None or not str(caption).strip():
                raise ValueError(
                    f"{layout.name}: empty caption, but a loss was requested. Give the slide a caption, drop it "
                    "from the training set, or call with return_loss=False for embeddings only."
                )
            subcaptions.extend(
                sample_subcaptions(
                    str(caption),
                    self.num_subcaptions,
                    rng,
                    max_sentences=self.max_sentences_per_subcaption,
                    precomputed=bag.get("subcaptions"),
                )
            )
        text = self._tokenize([str(caption) for caption in captions], self.caption_max_length)
        sub = self._tokenize(subcaptions, self.subcaption_max_length)
        shape = (len(bags), self.num_subcaptions, -1)
        return {
            **text,
            "subcaption_input_ids": sub["input_ids"].reshape(shape),
            "subcaption_attention_mask": sub["attention_mask"].reshape(shape),
        }

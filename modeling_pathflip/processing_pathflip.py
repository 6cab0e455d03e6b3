"""PathFLIPProcessor: feature bags + text -> model-ready batches.

A bag is a mapping with ``features [N, D]``, ``coords [N, 2]`` (level-0 top-left corners) and
``patch_size_level0`` (optionally ``slide_id``, ``caption``, ``subcaptions``): a dict, a `datasets`
row, numpy arrays or tensors. The processor validates bags, groups patches into regions of
``region_grid_size x region_grid_size`` grid cells, pads, and tokenises captions and subcaptions. It draws
nothing at random: a training collator samples regions (`sample_regions`) and subcaptions per epoch and
passes them in; without them every region is kept and subcaptions are drawn from (seed, slide id).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import BatchFeature, ProcessorMixin
from transformers.utils import logging

from .subcaptions_pathflip import sample_subcaptions

logger = logging.get_logger(__name__)
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


# No slide is wider than this many level-0 pixels; a larger patch side is a unit mistake, and it would overflow the
# int64 arithmetic of the region layout.
MAX_LEVEL0_SIDE = 2**31 - 1


def _whole_positive(value: Any) -> bool:
    """Whether ``value`` is a whole number from 1 to `MAX_LEVEL0_SIDE` (an int, or a float / numpy scalar without a
    fraction)."""
    if isinstance(value, (str, bytes, bool)):  # "256" is a string read from somewhere, not a patch side
        return False
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return 1 <= number <= MAX_LEVEL0_SIDE and number.is_integer()


def validate_bag(
    bag: Mapping[str, Any], position: int, patch_dim: int, require_patch_size: bool = True
) -> tuple[str, torch.Tensor, torch.Tensor, int | None]:
    """Check a bag against the data contract; return ``(name, features, coords, patch_size_level0)``."""
    name = bag_name(bag, position)
    if not isinstance(bag, Mapping):
        raise ValueError(f"{name}: expected a mapping with features, coords and patch_size_level0, got {type(bag)}.")
    for key in ("features", "coords"):
        if bag.get(key) is None:
            raise ValueError(f"{name}: missing '{key}'. A bag needs features [N, D] and coords [N, 2].")
    patch_size = bag.get("patch_size_level0")
    if (patch_size is not None or require_patch_size) and not _whole_positive(patch_size):
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
    if coords.is_floating_point() and not torch.isfinite(coords).all():
        bad = int((~torch.isfinite(coords)).any(dim=1).nonzero()[0])
        raise ValueError(f"{name}: NaN or Inf in coords (first at row {bad}); every patch needs its level-0 (x, y).")
    features = features.float()
    if not torch.isfinite(features).all():
        bad = int((~torch.isfinite(features)).any(dim=1).nonzero()[0])
        raise ValueError(f"{name}: NaN or Inf in features (first at row {bad}). Re-extract this slide's features.")
    return name, features, coords.long(), None if patch_size is None else int(patch_size)


def group_into_regions(name: str, coords: torch.Tensor, patch_size: int, region_grid_size: int) -> tuple:
    """Group patches into square region windows of ``region_grid_size x patch_size_level0`` level-0 pixels.

    A patch belongs to the window that contains its top-left corner. Windows are laid from the first patch's
    offset on the patch grid, so patches need not share one grid: per-piece grids (CLAM anchors each tissue
    piece's grid at the piece) and overlapping patches (TRIDENT's ``--overlap``) are placed too. Returns
    ``(region_patch_index [L, P], region_cells [L, 2])``; regions are ordered row-major and patches inside a
    region by position (y, then x), so the layout does not depend on the order of the rows.
    """
    offset = coords[0] % patch_size
    positions, position_of_patch = torch.unique((coords - offset).flip(1), dim=0, return_inverse=True)
    if positions.shape[0] != coords.shape[0]:
        raise ValueError(f"{name}: duplicate coords (two patches at the same level-0 position); remove the duplicates.")
    region_of_position = torch.div(positions, patch_size * region_grid_size, rounding_mode="floor")
    region_cells, region_of_position = torch.unique(region_of_position, dim=0, return_inverse=True)
    region_of_patch = region_of_position[position_of_patch]
    order = torch.argsort(region_of_patch * coords.shape[0] + position_of_patch)
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


def layout_bag(bag: Mapping[str, Any], position: int, patch_dim: int, region_grid_size: int) -> RegionLayout:
    """Validate a bag and group its patches into regions."""
    name, features, coords, patch_size = validate_bag(bag, position, patch_dim)
    index, cells = group_into_regions(name, coords, patch_size, region_grid_size)
    return RegionLayout(name, features, coords, index, cells, relative_positions(cells))


def layout_bags(bags: Sequence[Mapping[str, Any] | RegionLayout], patch_dim: int, region_grid_size: int) -> list:
    """`layout_bag` of each bag; bags already laid out (`RegionLayout`) pass through."""
    return [bag if isinstance(bag, RegionLayout) else layout_bag(bag, position, patch_dim, region_grid_size)
            for position, bag in enumerate(bags)]  # fmt: skip


def sample_regions(layout: RegionLayout, max_regions: int | None, rng: random.Random) -> RegionLayout:
    """At most ``max_regions`` of the layout's regions, drawn with ``rng`` (kept in slide order)."""
    count = layout.region_cells.shape[0]
    if not max_regions or count <= max_regions:
        return layout
    return keep_regions(layout, torch.tensor(sorted(rng.sample(range(count), max_regions))))


def bag_rng(seed: int, sampling_round: int | str, name: str) -> random.Random:
    """The random source of one bag in one round (an epoch, or "eval"): the same draws whatever the batch, the
    process or the order, so a resumed run redraws exactly what it drew before."""
    return random.Random(f"{seed}:{sampling_round}:{name}")


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


def _longer_than(tokenizer, text: str, max_length: int) -> bool:
    """Whether ``text`` has more tokens than ``max_length`` (special tokens included)."""
    return len(tokenizer(text, truncation=False)["input_ids"]) > max_length


class PathFLIPProcessor(ProcessorMixin):
    r"""Turns feature bags and captions into PathFLIP batches.

    Calling it on a list of bags (e.g. `datasets` rows) returns a [`BatchFeature`] for [`PathFLIPModel`].
    Training samples regions and subcaptions per epoch in its collator and passes the laid-out bags
    (`layout`, then `sample_regions`) and the subcaptions in.

    Args:
        tokenizer: the text tower's tokenizer.
        patch_dim: expected feature dimension D (must equal the model's ``patch_dim``).
        region_grid_size: region side in patches (the model's ``region_grid_size``).
        num_subcaptions: K subcaptions per slide.
        max_sentences_per_subcaption: sentences joined into one subcaption (1..this).
        caption_max_length, subcaption_max_length: token limits.
        seed: seed of the subcaptions drawn when none are given (the same for a slide every time).
    """

    tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        tokenizer=None,
        patch_dim: int = 512,
        region_grid_size: int = 16,
        num_subcaptions: int = 8,
        max_sentences_per_subcaption: int = 3,
        caption_max_length: int = 384,
        subcaption_max_length: int = 128,
        seed: int = 0,
        **kwargs: Any,
    ):
        self.patch_dim = patch_dim
        self.region_grid_size = region_grid_size
        self.num_subcaptions = num_subcaptions
        self.max_sentences_per_subcaption = max_sentences_per_subcaption
        self.caption_max_length = caption_max_length
        self.subcaption_max_length = subcaption_max_length
        self.seed = seed
        for name in ("patch_dim", "region_grid_size", "num_subcaptions", "max_sentences_per_subcaption",
                     "caption_max_length", "subcaption_max_length"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PathFLIPProcessor {name} must be a whole number >= 1, got {value!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"PathFLIPProcessor seed must be a whole number, got {seed!r}.")
        kwargs.pop("max_regions_train", None)  # written by the first release; region sampling is the collator's
        super().__init__(tokenizer, **kwargs)

    @classmethod
    def from_model_config(cls, tokenizer, config, **kwargs: Any) -> PathFLIPProcessor:
        """A processor whose bag geometry and K match a [`PathFLIPConfig`]."""
        geometry = {
            "patch_dim": config.patch_dim,
            "region_grid_size": config.region_grid_size,
            "num_subcaptions": config.num_subcaptions,
        }
        limit = getattr(config.text_config, "max_position_embeddings", None)
        if limit:  # the text tower cannot read past its position table
            geometry["caption_max_length"] = min(kwargs.pop("caption_max_length", 384), limit)
            geometry["subcaption_max_length"] = min(kwargs.pop("subcaption_max_length", 128), limit)
        return cls(tokenizer, **{**geometry, **kwargs})

    @property
    def model_input_names(self) -> list[str]:
        return self.bag_input_names + TEXT_INPUT_NAMES

    @property
    def bag_input_names(self) -> list[str]:
        """The batch entries that describe the bags (what `get_slide_features` takes)."""
        return BAG_INPUT_NAMES

    @staticmethod
    def _pad(layouts: list, return_coords: bool) -> dict[str, torch.Tensor]:
        return pad_layouts(layouts, return_coords)

    def layout(self, bags: Sequence[Mapping[str, Any] | RegionLayout]) -> list[RegionLayout]:
        """Validate each bag and group its patches into regions (laid-out bags pass through)."""
        return layout_bags(bags, self.patch_dim, self.region_grid_size)

    def draw_subcaptions(self, caption: str, rng: random.Random, precomputed=None) -> list[str]:
        """K subcaptions of one slide's caption (from ``precomputed`` ones when the dataset has them)."""
        return sample_subcaptions(caption, self.num_subcaptions, rng, max_sentences=self.max_sentences_per_subcaption,
                                  precomputed=precomputed)  # fmt: skip

    def __call__(
        self,
        bags: Mapping[str, Any] | Sequence[Mapping[str, Any] | RegionLayout] | None = None,
        text: str | Sequence[str] | None = None,
        *,
        subcaptions: Sequence[Sequence[str]] | None = None,
        return_loss: bool | None = None,
        return_coords: bool = False,
        **kwargs: Any,
    ) -> BatchFeature:
        """Build a batch.

        Args:
            bags: one bag or a list of bags, or `RegionLayout`s from `layout`. Without bags, ``text`` is just
                tokenised (e.g. prompts).
            text: captions, one per bag (default: each bag's ``caption``; needed for laid-out bags).
            subcaptions: K subcaptions per bag; by default they are drawn from ``seed`` and the slide id.
            return_loss: ask for the losses (default: when captions are present); then every bag
                needs a non-empty caption, and subcaptions are added.
            return_coords: also return ``patch_coords [B, N, 2]`` aligned with ``patch_features``.
        """
        if kwargs:
            raise TypeError(f"PathFLIPProcessor got unexpected options {sorted(kwargs)}.")
        if return_loss is not None and not isinstance(return_loss, bool):
            raise ValueError(f"return_loss must be True, False or None, got {return_loss!r}.")
        if text is not None and (not isinstance(text, str) and (not isinstance(text, Sequence) or not text)):
            raise ValueError(f"text must be a text or a non-empty list of texts, got {text!r}.")
        per_bag = [subcaptions] if isinstance(subcaptions, str) else (subcaptions or [])
        if any(isinstance(own, str) or not all(isinstance(item, str) for item in own) for own in per_bag):
            raise ValueError(f"subcaptions must be a list of texts per bag, e.g. [['Fat.', 'Tumour.']], got "
                             f"{subcaptions!r}.")  # fmt: skip
        if bags is None:
            if text is None:
                raise ValueError("Give bags, text or both.")
            encoded = self._tokenize(text, self.caption_max_length)
            self._warn_if_cut([text] if isinstance(text, str) else list(text), encoded["attention_mask"])
            return BatchFeature(encoded)
        bags = [bags] if isinstance(bags, Mapping) else list(bags)
        if not bags:
            raise ValueError("Got an empty list of bags.")
        layouts = self.layout(bags)
        batch = self._pad(layouts, return_coords)
        captions = self._captions(bags, text)
        if return_loss is None:
            return_loss = any(caption not in (None, "") for caption in captions)
        if return_loss:
            batch.update(self._loss_text(bags, layouts, captions, subcaptions))
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

    def _warn_if_cut(self, texts: list[str], attention_mask: torch.Tensor) -> None:
        """Say when a text (a label, a sentence, a query) was cut to the text tower's limit: two texts that differ only
        after the cut would read the same."""
        for text, used in zip(texts, attention_mask.sum(-1).tolist(), strict=True):
            if used == self.caption_max_length and _longer_than(self.tokenizer, text, self.caption_max_length):
                logger.warning("text %r... cut at %d tokens, the text tower's limit.", text[:60], used)

    @staticmethod
    def _captions(bags: list, text: str | Sequence[str] | None) -> list:
        if text is None:
            return [bag.get("caption") if isinstance(bag, Mapping) else None for bag in bags]
        captions = [text] if isinstance(text, str) else list(text)
        if len(captions) != len(bags):
            raise ValueError(f"Got {len(captions)} captions for {len(bags)} bags; give one caption per bag.")
        return captions

    def _loss_text(self, bags: list, layouts: list[RegionLayout], captions: list, subcaptions) -> dict:
        if subcaptions is not None and len(subcaptions) != len(bags):
            raise ValueError(f"Got subcaptions for {len(subcaptions)} bags, but {len(bags)} bags.")
        drawn = []
        for position, (bag, layout, caption) in enumerate(zip(bags, layouts, captions, strict=True)):
            if caption is None or not str(caption).strip():
                raise ValueError(
                    f"{layout.name}: empty caption, but a loss was requested. Give the slide a caption, drop it "
                    "from the training set, or call with return_loss=False for embeddings only."
                )
            if subcaptions is None:
                precomputed = bag.get("subcaptions") if isinstance(bag, Mapping) else None
                chosen = self.draw_subcaptions(str(caption), bag_rng(self.seed, "eval", layout.name), precomputed)
            else:
                chosen = list(subcaptions[position])
            if len(chosen) != self.num_subcaptions:
                raise ValueError(f"{layout.name}: {len(chosen)} subcaptions, but the model takes "
                                 f"num_subcaptions={self.num_subcaptions}.")  # fmt: skip
            drawn.extend(chosen)
        text = self._tokenize([str(caption) for caption in captions], self.caption_max_length)
        for layout, caption, ids in zip(layouts, captions, text["attention_mask"], strict=True):
            if int(ids.sum()) == self.caption_max_length and _longer_than(self.tokenizer, str(caption),
                                                                          self.caption_max_length):  # fmt: skip
                logger.warning("%s: caption cut at %d tokens, the text tower's limit.", layout.name,
                               self.caption_max_length)  # fmt: skip
        sub = self._tokenize(drawn, self.subcaption_max_length)
        shape = (len(bags), self.num_subcaptions, -1)
        return {
            **text,
            "subcaption_input_ids": sub["input_ids"].reshape(shape),
            "subcaption_attention_mask": sub["attention_mask"].reshape(shape),
        }

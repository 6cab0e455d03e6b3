"""Bags whose patches are not on one grid: CLAM's per-piece grids and TRIDENT's overlapping patches. Each patch
goes to the region window that contains its top-left corner; every pipeline serves such bags."""

from __future__ import annotations

import pytest
import torch
from transformers import pipeline

from modeling_pathflip import save_pretrained_with_pipelines
from modeling_pathflip.pipeline_pathflip import TASKS

PATCH = 512


def multi_piece_bag(seed: int = 0) -> dict:
    """Two tissue pieces, each on its own grid (CLAM anchors a piece's grid at the piece's bounding box)."""
    generator = torch.Generator().manual_seed(seed)
    first = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(3), indexing="xy"), -1).reshape(-1, 2) * PATCH
    second = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(3), indexing="xy"), -1).reshape(-1, 2) * PATCH
    coords = torch.cat([first + torch.tensor([100, 40]), second + torch.tensor([5000, 3333])])
    return {"slide_id": "clam-pieces", "features": torch.randn(len(coords), 16, generator=generator),
            "coords": coords.int(), "patch_size_level0": PATCH, "caption": "Tumour on the left. Fat."}  # fmt: skip


def overlapping_bag(seed: int = 1) -> dict:
    """Patches every half patch (TRIDENT --overlap = half the patch size)."""
    generator = torch.Generator().manual_seed(seed)
    steps = torch.arange(0, 10 * PATCH, PATCH // 2)
    coords = torch.stack(torch.meshgrid(steps, steps[:8], indexing="xy"), -1).reshape(-1, 2)
    return {"slide_id": "overlap", "features": torch.randn(len(coords), 16, generator=generator),
            "coords": coords.int(), "patch_size_level0": PATCH, "caption": "Dense stroma. Necrosis."}  # fmt: skip


@pytest.mark.parametrize("make", [multi_piece_bag, overlapping_bag])
def test_each_patch_lies_in_the_window_of_its_top_left_corner(processor, make):
    bag = make()
    batch = processor([bag], return_coords=True, return_loss=False)
    coords, index = batch["patch_coords"][0], batch["region_patch_index"][0]
    window = PATCH * processor.region_grid_size
    origin = torch.as_tensor(bag["coords"][0]) % PATCH
    seen = []
    for region in range(int(batch["region_attention_mask"][0].sum())):
        rows = index[region][index[region] >= 0]
        windows = torch.div(coords[rows] - origin, window, rounding_mode="floor")
        assert (windows == windows[0]).all(), "a region mixes two windows"
        seen += rows.tolist()
    assert sorted(seen) == list(range(len(bag["coords"]))), "every patch placed once"


def test_every_pipeline_and_the_loss_serve_off_grid_bags(model, processor, tmp_path):
    bags = [multi_piece_bag(), overlapping_bag()]
    loss = model(**processor(bags)).loss
    assert torch.isfinite(loss)
    save_pretrained_with_pipelines(model, processor, tmp_path)
    options = {"zero-shot-slide-classification": {"candidate_labels": ["tumour", "fat"]},
               "slide-text-retrieval": {"candidate_texts": ["tumour", "fat"]},
               "slide-grounding": {"sentences": ["tumour"]}, "slide-feature-extraction": {}}  # fmt: skip
    for task in TASKS:
        for bag in bags:
            result = pipeline(task, model=str(tmp_path))(bag, **options[task])
            if task == "slide-grounding":
                assert result[0]["patch_scores"].shape == (len(bag["coords"]),)
                assert torch.isfinite(result[0]["heatmap"]).any()
            assert result

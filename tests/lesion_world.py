"""A generated world where grounding can be learned in seconds: bags of rendered H&E patches, one lesion each.

Each bag is an 8 x 8 grid of 128-px rendered patches (16 regions of 2 x 2 patches, the tiny config's
``region_grid_size``): fibrous stroma everywhere except one region of a distinct tissue, which one sentence of
the caption names. Patches are encoded with the real `stain-texture` encoder. `train_lesion_model` trains a tiny
PathFLIP on such bags; `write_lesion_slide` writes a slide file with the same layout, for the viewer's tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from modeling_pathflip import PathFLIPModel, PathFLIPProcessor
from pathflip.processing.encoders import StainTextureEncoder
from pathflip.synthetic.textures import render_texture, write_pyramid
from pathflip.training.collator import PathFLIPCollator

LESIONS = {"tumour": "dense tumour cells", "necrosis": "focal necrosis", "lymphocytes": "lymphocytes",
           "fat": "fat"}  # fmt: skip
GRID, REGION, PATCH_PX, PATCH_LEVEL0 = 8, 2, 128, 256
SLIDE_MPP = 0.5


def patch_pool(count: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """``count`` encoded patches per tissue, rendered with a random stain strength each."""
    pool = {}
    for tissue, patches in rendered_pool(count, rng).items():
        pool[tissue] = encode_patches(patches)
    return pool


def rendered_pool(count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``count`` rendered ``PATCH_PX`` patches per tissue (uint8 ``[count, H, W, 3]``)."""
    return {tissue: np.stack([render_texture(tissue, PATCH_PX, PATCH_PX, rng, stain_scale=rng.uniform(0.8, 1.2))
                              for _ in range(count)]) for tissue in ("stroma", *LESIONS)}  # fmt: skip


def encode_patches(patches: np.ndarray) -> torch.Tensor:
    encoder = StainTextureEncoder()
    return encoder(encoder.preprocess(torch.from_numpy(patches).permute(0, 3, 1, 2)))


def lesion_layout(index: int, rng: np.random.Generator) -> tuple[str, tuple[int, int], np.ndarray, np.ndarray]:
    """The lesion tissue, its region cell (column, row), the grid cells (x, y) and which cells are lesion."""
    tissue = list(LESIONS)[index % len(LESIONS)]
    region = (int(rng.integers(GRID // REGION)), int(rng.integers(GRID // REGION)))
    cells = np.stack(np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="xy"), -1).reshape(-1, 2)
    return tissue, region, cells, ((cells // REGION) == region).all(axis=1)


def lesion_bag(index: int, pool: dict[str, torch.Tensor], rng: np.random.Generator) -> tuple[dict, tuple[int, int]]:
    """A bag with one lesion region; returns the bag and the lesion's region cell (column, row)."""
    tissue, region, cells, in_lesion = lesion_layout(index, rng)
    features = pool["stroma"][rng.integers(len(pool["stroma"]), size=len(cells))]
    features[in_lesion] = pool[tissue][rng.integers(len(pool[tissue]), size=int(in_lesion.sum()))]
    sentence = f"{LESIONS[tissue]}."
    bag = {
        "slide_id": f"{tissue}-{index}",
        "features": features,
        "coords": torch.from_numpy(cells * PATCH_LEVEL0).int(),
        "patch_size_level0": PATCH_LEVEL0,
        "caption": f"fibrous stroma. {sentence}",
        "subcaptions": [sentence],
    }
    return bag, region


def train_lesion_model(tokenizer, config_factory, *, steps: int = 240, seed: int = 0):
    """A tiny PathFLIP trained on 64 lesion bags; its config records the patch geometry of `write_lesion_slide`."""
    rng = np.random.default_rng(seed)
    pool = patch_pool(40, rng)
    train = [lesion_bag(index, pool, rng)[0] for index in range(64)]
    torch.manual_seed(seed)
    config = config_factory(
        patch_dim=StainTextureEncoder.dim, region_grid_size=REGION, num_subcaptions=1, region_chunk_size=64,
        patch_encoder="stain-texture", patch_size_um=PATCH_LEVEL0 * SLIDE_MPP, patch_size_px=PATCH_PX,
    )  # fmt: skip
    model, processor = PathFLIPModel(config), PathFLIPProcessor.from_model_config(tokenizer, config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    model.train()
    collator = PathFLIPCollator(processor)
    for step in range(steps):
        order = np.random.default_rng(step).permutation(len(train))[:16]
        collator.epoch = step  # a new draw of subcaptions every step
        loss = model(**collator([train[i] for i in order])).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval(), processor


def write_lesion_slide(path: Path, index: int, seed: int, *, margin_cells: int = 2) -> dict:
    """A slide file of one lesion bag's layout on glass: each grid cell is a rendered patch shown at 2x (level-0
    cells of ``PATCH_LEVEL0`` pixels), ``margin_cells`` cells of glass around (a whole region, so region windows
    line up). Returns the lesion's tissue, sentence and level-0 box (x, y, width, height)."""
    rng = np.random.default_rng(seed)
    tissue, region, cells, in_lesion = lesion_layout(index, rng)
    renders = rendered_pool(12, rng)
    side = (GRID + 2 * margin_cells) * PATCH_LEVEL0
    image = render_texture("background", side, side, rng)
    scale = PATCH_LEVEL0 // PATCH_PX
    for (column, row), lesion in zip(cells, in_lesion, strict=True):
        patches = renders[tissue if lesion else "stroma"]
        patch = patches[rng.integers(len(patches))].repeat(scale, axis=0).repeat(scale, axis=1)
        top, left = (row + margin_cells) * PATCH_LEVEL0, (column + margin_cells) * PATCH_LEVEL0
        image[top : top + PATCH_LEVEL0, left : left + PATCH_LEVEL0] = patch
    write_pyramid(path, image.astype(np.uint8), mpp=SLIDE_MPP, levels=3)
    origin = [(value + margin_cells) * PATCH_LEVEL0 for value in (region[0] * REGION, region[1] * REGION)]
    box = (origin[0], origin[1], REGION * PATCH_LEVEL0, REGION * PATCH_LEVEL0)
    return {"tissue": tissue, "sentence": f"{LESIONS[tissue]}.", "box": box}

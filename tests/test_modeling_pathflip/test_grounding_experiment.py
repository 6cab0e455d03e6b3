"""Grounding is learned without region labels: a tiny model trained on generated bags (see `lesion_world`) finds
the region a sentence describes on held-out bags, rendered afresh with new layouts.
"""

from __future__ import annotations

import numpy as np
from lesion_world import PATCH_LEVEL0, REGION, lesion_bag, patch_pool, train_lesion_model
from transformers import pipeline


def _top_region(result: dict) -> tuple[int, int]:
    """The region cell holding the most grounding mass (patch scores summed per region)."""
    cells = result["coords"].numpy() // (PATCH_LEVEL0 * REGION)
    keys, inverse = np.unique(cells, axis=0, return_inverse=True)
    totals = np.bincount(inverse.reshape(-1), weights=result["patch_scores"].numpy())
    return tuple(int(value) for value in keys[totals.argmax()])


def test_trained_grounding_finds_the_described_region_on_held_out_slides(tokenizer, config_factory):
    model, processor = train_lesion_model(tokenizer, config_factory)
    rng = np.random.default_rng(100)  # held-out patches and layouts: a stream the training never drew from
    test_pool = patch_pool(20, rng)
    held_out = [lesion_bag(index, test_pool, rng) for index in range(32)]

    grounder = pipeline("slide-grounding", model=model, processor=processor)
    hits = []
    for bag, region in held_out:
        (result,) = grounder(bag, sentences=bag["subcaptions"][0])
        hits.append(_top_region(result) == region)
    rate = float(np.mean(hits))
    # Measured: 0.78, 1.00 and 1.00 for seeds 0, 1 and 2 (held-out streams 100, 101, 102; chance: 1/16).
    assert rate >= 0.75, f"the described region is the top region on only {rate:.0%} of held-out slides"

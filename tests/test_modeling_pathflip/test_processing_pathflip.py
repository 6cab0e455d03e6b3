import json
import random

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from modeling_pathflip import PathFLIPProcessor
from modeling_pathflip.processing_pathflip import sample_regions


def test_regions_are_real_4096px_windows(processor, bag_factory):
    bag = bag_factory(0, 60)
    batch = processor([bag], return_coords=True)
    index, coords = batch["region_patch_index"][0], batch["patch_coords"][0]
    region_side = bag["patch_size_level0"] * processor.region_grid_size
    seen = []
    for region in range(int(batch["region_attention_mask"][0].sum())):
        rows = index[region][index[region] >= 0]
        windows = torch.div(coords[rows], region_side, rounding_mode="floor")
        assert (windows == windows[0]).all(), "a region mixes patches from two windows"
        assert len(rows) <= processor.region_grid_size**2
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(60))


def test_batch_shapes_masks_and_text(processor, bag_factory):
    batch = processor([bag_factory(0, 20), bag_factory(1, 45)])
    assert batch["patch_features"].shape == (2, 45, 16)
    assert batch["patch_attention_mask"].sum(1).tolist() == [20, 45]
    assert batch["subcaption_input_ids"].shape[:2] == (2, processor.num_subcaptions)
    assert batch["input_ids"].shape[0] == 2 and batch["return_loss"] is True
    assert (batch["region_patch_index"][0][batch["region_attention_mask"][0] == 0] == -1).all()


def test_numpy_float16_rows_from_datasets_are_accepted(processor, bag_factory):
    bag = bag_factory(0, 10)
    row = {**bag, "features": bag["features"].numpy().astype(np.float16), "coords": bag["coords"].numpy()}
    batch = processor([row], return_loss=False)
    assert batch["patch_features"].dtype == torch.float32
    assert "input_ids" not in batch


def test_text_only_call_tokenises_prompts(processor):
    batch = processor(text=["tumour", "fat and stroma"])
    assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].shape[0] == 2


def test_processor_draws_nothing_at_random(processor, bag_factory):
    bags = [bag_factory(0, 80), bag_factory(2, 80)]
    random.seed(0)
    first = processor(bags)
    random.seed(1)
    second = processor(bags)
    assert torch.equal(first["subcaption_input_ids"], second["subcaption_input_ids"])
    assert first["region_attention_mask"].sum() > 4, "every region is kept"


def test_given_subcaptions_and_laid_out_bags_are_used_as_given(processor, bag_factory):
    bags = [bag_factory(0, 80), bag_factory(1, 40)]
    layouts = [sample_regions(layout, 2, random.Random(3)) for layout in processor.layout(bags)]
    subcaptions = [["tumour .", "fat .", "stroma ."], ["necrosis .", "fat .", "tumour ."]]
    batch = processor(layouts, text=[bag["caption"] for bag in bags], subcaptions=subcaptions)
    assert batch["region_attention_mask"].sum(1).tolist() == [2, 2]
    width = batch["subcaption_input_ids"].shape[-1]
    expected = processor.tokenizer(subcaptions[1], padding="max_length", max_length=width, return_tensors="pt")
    expected = expected["input_ids"]
    assert torch.equal(batch["subcaption_input_ids"][1], expected)
    with pytest.raises(ValueError, match="2 subcaptions, but the model takes num_subcaptions=3"):
        processor(layouts, text=[bag["caption"] for bag in bags], subcaptions=[["a", "b"], ["c", "d"]])


def test_save_and_load_round_trip(tmp_path, tokenizer, config, bag_factory):
    processor = PathFLIPProcessor.from_model_config(tokenizer, config, seed=7)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, PathFLIPProcessor)
    assert (loaded.seed, loaded.patch_dim) == (7, 16)
    bags = [bag_factory(0, 30), bag_factory(1, 12)]
    expected, got = processor(bags), loaded(bags)
    assert set(expected) == set(got)
    for key, value in expected.items():
        assert torch.equal(value, got[key]) if torch.is_tensor(value) else value == got[key]
    # A folder saved by the first release records max_regions_train, which the collator owns now.
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    (tmp_path / "processor_config.json").write_text(json.dumps({**saved, "max_regions_train": 24}))
    assert torch.equal(AutoProcessor.from_pretrained(tmp_path)(bags)["input_ids"], expected["input_ids"])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: {"features": torch.randn(10, 8)}, r"slide 'slide-0': feature dim 8 != .*patch encoder"),
        (lambda b: {"patch_size_level0": None}, r"slide 'slide-0': missing .*patch_size_level0.*never guessed"),
        # found by the argument fuzzer: a patch side wider than any slide overflowed the region layout
        (lambda b: {"patch_size_level0": 4.611686018427388e18}, r"slide 'slide-0': missing or invalid patch_size"),
        (lambda b: {"features": b["features"].index_fill(0, torch.tensor([3]), float("nan"))}, r"NaN or Inf.*row 3"),
        (lambda b: {"features": b["features"].index_fill(0, torch.tensor([4]), float("inf"))}, r"NaN or Inf.*row 4"),
        (lambda b: {"features": torch.zeros(0, 16), "coords": torch.zeros(0, 2)}, r"slide 'slide-0': empty bag"),
        (lambda b: {"coords": b["coords"][:7]}, r"slide 'slide-0': coords of shape \(7, 2\) do not match 10"),
        (lambda b: {"caption": " "}, r"slide 'slide-0': empty caption, but a loss was requested"),
        (lambda b: {"coords": torch.cat([b["coords"][:1], b["coords"][:9]])}, r"duplicate coords"),
    ],
)
def test_bad_bags_raise_a_clear_error(processor, bag_factory, change, message):
    bag = bag_factory(0, 10)
    bag.update(change(bag))
    with pytest.raises(ValueError, match=message):
        processor([bag_factory(1, 10), bag], return_loss=True)


def test_region_positions_span_the_slide_from_0_to_1():
    from modeling_pathflip.processing_pathflip import relative_positions

    cells = torch.tensor([[0, 0], [0, 2], [3, 1]])  # (row, column) in region units
    # rows 0..3 -> 0, 0, 1; columns 0..2 -> 0, 1, 0.5
    assert relative_positions(cells).tolist() == [[0.0, 0.0], [0.0, 1.0], [1.0, 0.5]]
    assert relative_positions(torch.tensor([[5, 7]])).tolist() == [[0.0, 0.0]], "one region: no division by 0"
    assert relative_positions(torch.tensor([[4, 2], [6, 2]])).tolist() == [[0.0, 0.0], [1.0, 0.0]]


def test_region_positions_survive_region_sampling_and_padding(processor, bag_factory):
    bag = bag_factory(0, 60)
    full = processor([bag], return_loss=False)
    layouts = processor.layout([bag, bag_factory(1, 5)])
    layouts[0] = sample_regions(layouts[0], 2, random.Random(0))
    batch = processor(layouts, return_loss=False)
    kept = batch["region_positions"][0][batch["region_attention_mask"][0].bool()]
    everything = full["region_positions"][0].tolist()
    assert len(kept) == 2 and all(position in everything for position in kept.tolist())  # same scale as unsampled
    assert (batch["region_positions"][1][~batch["region_attention_mask"][1].bool()] == 0).all()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"region_grid_size": 0}, r"region_grid_size must be a whole number >= 1, got 0"),
        ({"num_subcaptions": 0}, r"num_subcaptions must be a whole number >= 1, got 0"),
        ({"max_sentences_per_subcaption": 0}, r"max_sentences_per_subcaption must be a whole number >= 1"),
        ({"patch_dim": "96"}, r"patch_dim must be a whole number >= 1, got '96'"),
        ({"seed": 1.5}, r"seed must be a whole number, got 1.5"),
    ],
)
def test_bad_processor_options_are_named_when_it_is_made(tokenizer, options, message):
    from modeling_pathflip import PathFLIPProcessor

    with pytest.raises(ValueError, match=message):
        PathFLIPProcessor(tokenizer, **options)


@pytest.mark.parametrize(
    "call, message",
    [
        ({"text": []}, r"text must be a text or a non-empty list of texts, got \[\]"),
        ({"return_loss": "no"}, r"return_loss must be True, False or None, got 'no'"),
        ({"subcaptions": ["Fat. Tumour."]}, r"subcaptions must be a list of texts per bag"),
    ],
)
def test_bad_call_arguments_are_named(processor, bag_factory, call, message):
    with pytest.raises(ValueError, match=message):
        processor(bag_factory(0, 10), **call)


def test_a_text_cut_to_the_text_towers_limit_is_said(processor):
    from transformers.testing_utils import CaptureLogger

    from modeling_pathflip import processing_pathflip

    long_text = "Fibrous stroma with " + " ".join(["scattered lymphocytes"] * 400) + " and necrosis."
    with CaptureLogger(processing_pathflip.logger) as captured:
        processor(text=["Fat.", long_text])
    assert "cut at" in captured.out and "Fibrous stroma with" in captured.out and "'Fat.'" not in captured.out

"""The training collator: per-epoch draws that a resumed run repeats, and the processor's path for evaluation."""

import pytest
import torch

from pathflip.training.collator import PathFLIPCollator


def _equal(first, second) -> bool:
    return set(first) == set(second) and all(
        torch.equal(value, second[key]) if torch.is_tensor(value) else value == second[key]
        for key, value in first.items()
    )


def test_training_draws_regions_and_subcaptions_per_epoch(processor, bag_factory):
    bags = [bag_factory(0, 80), bag_factory(2, 80)]
    collator = PathFLIPCollator(processor, max_regions=2)
    batch = collator(bags)
    assert batch["region_attention_mask"].sum(1).tolist() == [2, 2]
    kept, index = batch["patch_attention_mask"].sum(1), batch["region_patch_index"]
    for i in range(2):  # the kept regions' patches, renumbered from 0
        assert sorted(index[i][index[i] >= 0].tolist()) == list(range(int(kept[i])))
    assert _equal(batch, collator(bags)), "the same epoch draws the same again (a resumed run)"
    draws = set()
    for epoch in range(4):
        collator.epoch = epoch
        draws.add(tuple(collator(bags)["subcaption_input_ids"].flatten().tolist()))
    assert len(draws) > 1, "other epochs draw other subcaptions"


def test_a_slide_draws_the_same_whatever_its_batch(processor, bag_factory):
    collator = PathFLIPCollator(processor, max_regions=2)
    alone = collator([bag_factory(2, 80)])
    together = collator([bag_factory(0, 80), bag_factory(2, 80)])
    width = alone["subcaption_input_ids"].shape[-1]
    assert torch.equal(together["subcaption_input_ids"][1][:, :width], alone["subcaption_input_ids"][0])
    assert torch.equal(together["region_positions"][1][:2], alone["region_positions"][0])


def test_evaluation_uses_the_processors_deterministic_path(processor, bag_factory):
    bags = [bag_factory(0, 80), bag_factory(1, 30)]
    collator = PathFLIPCollator(processor, max_regions=2, training=False)
    assert _equal(collator(bags), processor(bags)), "every region, subcaptions from (seed, slide id)"


def test_llm_stage_records_become_prompts_targets_and_capped_regions(generation_model, bag_factory):
    _, processor = generation_model
    rows = [{**bag_factory(0, 80), "question": None}, {**bag_factory(1, 60), "question": "Is there fat?",
            "options": ["yes", "no"], "answer": "B"}]  # fmt: skip
    collator = PathFLIPCollator(processor)
    batch = collator(rows)
    assert (batch["region_attention_mask"].sum(1) <= processor.max_visual_tokens - 1).all()
    targets = [processor.tokenizer.decode([t for t in row if t != -100], skip_special_tokens=True).strip()
               for row in batch["labels"]]  # fmt: skip
    assert targets[0] == rows[0]["caption"] and targets[1] == "no (B)"
    assert _equal(batch, collator(rows))


@pytest.mark.parametrize(
    "processor_given, options, message",
    [
        (True, {"max_regions": 0}, r"max_regions must be None \(all\) or a whole number >= 1, got 0"),
        (True, {"max_regions": "24"}, r"max_regions must be None .* got '24'"),
        (True, {"max_patches": -1}, r"max_patches must be None .* got -1"),
        (False, {}, r"needs the model's processor, got NoneType"),
    ],
)
def test_bad_collator_options_are_named(processor, processor_given, options, message):
    with pytest.raises(ValueError, match=message):
        PathFLIPCollator(processor if processor_given else None, **options)

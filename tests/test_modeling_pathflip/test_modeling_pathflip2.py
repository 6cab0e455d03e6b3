"""PathFLIP2 (the architecture of the authors' released weights) at toy sizes: masking, losses, grounding, saving."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoProcessor, pipeline

from modeling_pathflip import PathFLIP2Config, PathFLIP2Model, PathFLIP2Processor, save_pretrained_with_pipelines
from modeling_pathflip.loss_pathflip2 import soft_topk_pooling


@pytest.fixture
def pathflip2(pathflip2_config_factory, tokenizer):
    config = pathflip2_config_factory()
    torch.manual_seed(0)
    return PathFLIP2Model(config).eval(), PathFLIP2Processor.from_model_config(tokenizer, config)


def test_padding_never_changes_a_slide(pathflip2, bag_factory):
    model, processor = pathflip2
    bags = [bag_factory(0, 12), bag_factory(1, 40)]
    batch = processor(bags, return_loss=False)
    alone = processor([bags[0]], return_loss=False)
    with torch.no_grad():
        together = model.get_slide_features(batch["patch_features"], batch["patch_attention_mask"])
        single = model.get_slide_features(alone["patch_features"], alone["patch_attention_mask"])
    torch.testing.assert_close(together.slide_embeds[0], single.slide_embeds[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(together.patch_embeds[0, :12], single.patch_embeds[0], atol=1e-5, rtol=0)


def test_losses_reach_every_parameter_and_fall(pathflip2_config_factory, tokenizer, bag_factory):
    config = pathflip2_config_factory()
    torch.manual_seed(0)
    model, processor = PathFLIP2Model(config).train(), PathFLIP2Processor.from_model_config(tokenizer, config)
    batch = processor([bag_factory(i, 20 + i) for i in range(4)])
    output = model(**batch)
    assert output.loss.item() == pytest.approx((output.loss_global + output.loss_local).item())
    output.loss.backward()
    assert [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()] == []
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_soft_topk_keeps_the_most_similar_patches_of_real_rows_only():
    patches = torch.randn(1, 10, 8)
    mask = torch.tensor([[1] * 7 + [0] * 3])
    texts = patches[:, [2]] + 0.01  # a text close to patch 2
    pooled, weights, selection = soft_topk_pooling(patches, mask, texts, temperature=0.5, top_k=3)
    assert torch.allclose(weights.sum(-1), torch.ones(1, 1)) and (weights[0, 0, 7:] == 0).all()
    assert int(weights[0, 0].argmax()) == 2 and (selection[0, 0] > 0).sum() == 3
    assert torch.allclose(selection.sum(-1), torch.ones(1, 1))
    torch.testing.assert_close(pooled[0, 0], selection[0, 0] @ patches[0])


def test_grounding_scores_are_the_soft_topk_weights_of_the_local_heads(pathflip2, bag_factory):
    model, processor = pathflip2
    bag = bag_factory(2, 30)
    text = processor(text=["dense tumour cells", "fat"])
    batch = processor([bag], return_loss=False)
    with torch.no_grad():
        grounding = model.get_grounding(batch["patch_features"], batch["patch_attention_mask"], **text)
        patches = model.get_slide_features(batch["patch_features"]).patch_embeds[0]
        local = model.get_text_features(**text, projection="local")
    cosine = torch.nn.functional.normalize(local, dim=-1) @ torch.nn.functional.normalize(patches, dim=-1).T
    torch.testing.assert_close(grounding.patch_scores[0], (cosine / 0.5).softmax(-1), atol=1e-6, rtol=0)


def test_grounding_from_kept_slide_features_equals_a_full_grounding(pathflip2, bag_factory):
    model, processor = pathflip2
    batch = processor([bag_factory(4, 30)], return_loss=False)
    text = processor(text=["dense tumour cells", "fat"])
    with torch.no_grad():
        kept = model.get_slide_features(batch["patch_features"], batch["patch_attention_mask"])
        full = model.get_grounding(batch["patch_features"], batch["patch_attention_mask"], **text)
        cached = model.get_grounding(batch["patch_features"] * 0, batch["patch_attention_mask"], **text,
                                     slide_features=kept)  # fmt: skip
    torch.testing.assert_close(cached.patch_scores, full.patch_scores)


def test_unmasked_mean_pooling_depends_on_the_batch_padding_as_released(pathflip2_config_factory, tokenizer):
    """The released model averages over padding too (text_pooling='mean_unmasked'); our own default does not."""
    torch.manual_seed(0)
    exact = PathFLIP2Model(pathflip2_config_factory(text_pooling="mean_unmasked")).eval()
    masked = PathFLIP2Model(pathflip2_config_factory(text_pooling="mean")).eval()
    masked.load_state_dict(exact.state_dict())
    processor = PathFLIP2Processor.from_model_config(tokenizer, exact.config)
    short, padded = processor(text=["tumour"]), processor(text=["tumour", "dense fibrous stroma with fat and cells"])
    with torch.no_grad():
        assert not torch.allclose(exact.get_text_features(**short)[0], exact.get_text_features(**padded)[0])
        torch.testing.assert_close(masked.get_text_features(**short)[0], masked.get_text_features(**padded)[0],
                                   atol=1e-5, rtol=0)  # fmt: skip


def test_saved_folder_serves_every_task_and_round_trips(pathflip2, bag_factory, tmp_path):
    model, processor = pathflip2
    save_pretrained_with_pipelines(model, processor, tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is PathFLIP2Model and type(AutoProcessor.from_pretrained(tmp_path)) is PathFLIP2Processor
    bag = bag_factory(0, 25)
    features = pipeline("slide-feature-extraction", model=str(tmp_path))(bag)
    assert features["patch_embeddings"].shape == (25, 32) and "region_embeddings" not in features
    with torch.no_grad():
        torch.testing.assert_close(features["slide_embedding"], model.get_slide_features(
            torch.as_tensor(bag["features"])[None].float()).slide_embeds[0])  # fmt: skip
    (grounded,) = pipeline("slide-grounding", model=str(tmp_path))(bag, sentences=["tumour"])
    assert grounded["heatmap"].shape[0] > 0 and "region_scores" not in grounded
    without_geometry = {key: value for key, value in bag.items() if key != "patch_size_level0"}
    assert len(pipeline("zero-shot-slide-classification", model=str(tmp_path))(
        without_geometry, candidate_labels=["tumour", "fat"])) == 2  # fmt: skip
    with pytest.raises(ValueError, match="a heatmap needs the patch side, patch_size_level0"):
        pipeline("slide-grounding", model=str(tmp_path))(without_geometry, sentences=["tumour"])


@pytest.mark.parametrize(
    "overrides, message",
    [({"embed_dim": 30}, "divisible by num_heads"), ({"text_pooling": "max"}, "text_pooling must be one of"),
     ({"soft_topk": 0}, "soft_topk must be a positive integer"), ({"rms_norm_eps": -1.0}, "rms_norm_eps must be > 0"),
     ({"use_global_loss": False, "use_local_loss": False}, "At least one of use_global_loss")],
)  # fmt: skip
def test_bad_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        PathFLIP2Config(**overrides)

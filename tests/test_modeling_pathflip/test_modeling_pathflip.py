import copy

import pytest
import torch
from transformers import AutoModel

from modeling_pathflip import BAG_INPUT_NAMES, PathFLIPModel, PathFLIPOutput
from modeling_pathflip.modeling_pathflip import PathFLIPTextRegionAttention
from pathflip.training.collator import PathFLIPCollator

TISSUES = "tumour stroma necrosis fat lymphocytes nuclei carcinoma cells".split()
PLACES = "left right upper lower".split()
OUTPUT_KEYS = (
    "loss",
    "loss_slide",
    "loss_region",
    "logits_per_slide",
    "slide_embeds",
    "text_embeds",
    "region_embeds",
    "subcaption_embeds",
)


def test_forward_returns_typed_output_with_both_losses(model, processor, bag_factory):
    batch = processor([bag_factory(i, 20 + 7 * i) for i in range(3)])
    output = model(**batch)
    assert isinstance(output, PathFLIPOutput)
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    torch.testing.assert_close(output.loss, output.loss_slide + output.loss_region)
    assert output.logits_per_slide.shape == (3, 3)
    torch.testing.assert_close(output.logits_per_text, output.logits_per_slide.T)
    assert output.region_embeds.shape[:2] == batch["region_attention_mask"].shape
    assert output.subcaption_embeds.shape == (3, processor.num_subcaptions, model.config.embed_dim)


def test_embeddings_only_without_captions(model, processor, bag_factory, bag_inputs):
    batch = processor([bag_factory(0, 15)], return_loss=False)
    output = model(**batch)
    assert output.loss is None and output.text_embeds is None
    features = model.get_slide_features(**bag_inputs(batch))
    torch.testing.assert_close(features.slide_embeds, output.slide_embeds)


def test_loss_without_subcaptions_names_the_fix(model, processor, bag_factory):
    batch = processor([bag_factory(0, 15), bag_factory(1, 9)])
    del batch["subcaption_input_ids"], batch["subcaption_attention_mask"]
    with pytest.raises(ValueError, match="subcaption_input_ids"):
        model(**batch)


def test_save_and_load_give_identical_outputs(tmp_path, model, processor, bag_factory):
    batch = processor([bag_factory(i, 18 + 5 * i) for i in range(3)])
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, PathFLIPModel) and not loaded.training
    with torch.no_grad():
        expected, got = model(**batch), loaded(**batch)
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


def test_construction_on_the_meta_device(config):
    with torch.device("meta"):
        model = PathFLIPModel(config)
    assert all(parameter.is_meta for parameter in model.parameters())


def test_region_chunk_size_does_not_change_results(config_factory, processor, bag_factory, bag_inputs):
    batch = processor([bag_factory(i, 70) for i in range(2)])
    torch.manual_seed(0)
    one_at_a_time = PathFLIPModel(config_factory(region_chunk_size=1)).eval()
    all_at_once = PathFLIPModel(config_factory(region_chunk_size=1000)).eval()
    all_at_once.load_state_dict(one_at_a_time.state_dict())
    with torch.no_grad():
        a = one_at_a_time.get_slide_features(**bag_inputs(batch))
        b = all_at_once.get_slide_features(**bag_inputs(batch))
    torch.testing.assert_close(a.region_embeds, b.region_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.slide_embeds, b.slide_embeds, atol=1e-5, rtol=0)


# ---- invariances -----------------------------------------------------------------------------


def _pad(batch, extra_patches, extra_regions, extra_width):
    """The same bags with more padded patch rows, padded regions and wider region slots (garbage values)."""
    padded = dict(batch)
    b, n, d = batch["patch_features"].shape
    padded["patch_features"] = torch.cat([batch["patch_features"], torch.randn(b, extra_patches, d) * 50], 1)
    padded["patch_attention_mask"] = torch.cat([batch["patch_attention_mask"], torch.zeros(b, extra_patches).long()], 1)
    index = batch["region_patch_index"]
    index = torch.cat([index, torch.full((b, index.shape[1], extra_width), -1)], 2)
    index = torch.cat([index, torch.full((b, extra_regions, index.shape[2]), -1)], 1)
    padded["region_patch_index"] = index
    padded["region_attention_mask"] = torch.cat(
        [batch["region_attention_mask"], torch.zeros(b, extra_regions).long()], 1
    )
    return padded


def test_padding_and_empty_regions_do_not_change_any_output(model, processor, bag_factory):
    batch = processor([bag_factory(0, 30), bag_factory(1, 41)])
    padded = _pad(batch, extra_patches=13, extra_regions=4, extra_width=5)
    with torch.no_grad():
        expected, got = model(**batch), model(**padded)
    regions = batch["region_attention_mask"].shape[1]
    for key in ("loss", "loss_slide", "loss_region", "logits_per_slide", "slide_embeds", "text_embeds"):
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0)
    torch.testing.assert_close(got.region_embeds[:, :regions], expected.region_embeds, atol=1e-5, rtol=0)
    assert (got.region_embeds[:, regions:] == 0).all()


def test_shuffling_patch_rows_does_not_change_the_slide_embedding(model, processor, bag_factory, bag_inputs):
    bag = bag_factory(0, 50)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    shuffled = {**bag, "features": bag["features"][order], "coords": bag["coords"][order]}
    with torch.no_grad():
        a = model.get_slide_features(**bag_inputs(processor([bag], return_loss=False)))
        b = model.get_slide_features(**bag_inputs(processor([shuffled], return_loss=False)))
    torch.testing.assert_close(a.slide_embeds, b.slide_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.region_embeds, b.region_embeds, atol=1e-5, rtol=0)


def test_a_bag_alone_and_inside_a_batch_give_the_same_embeddings(model, processor, bag_factory, bag_inputs):
    bags = [bag_factory(0, 12), bag_factory(1, 60), bag_factory(2, 33)]
    with torch.no_grad():
        together = model.get_slide_features(**bag_inputs(processor(bags, return_loss=False)))
        for i, bag in enumerate(bags):
            alone = model.get_slide_features(**bag_inputs(processor([bag], return_loss=False)))
            regions = alone.region_embeds.shape[1]
            torch.testing.assert_close(together.slide_embeds[i], alone.slide_embeds[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(together.region_embeds[i, :regions], alone.region_embeds[0], atol=1e-5, rtol=0)


# ---- training ----------------------------------------------------------------------------------


def test_one_step_reaches_every_trainable_parameter(config, processor, bag_factory):
    torch.manual_seed(0)
    model = PathFLIPModel(config).train()
    model(**processor([bag_factory(i, 25 + i) for i in range(4)])).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize(
    "overrides",
    [{}, {"region_negatives": "one_per_slide"}, {"tra_gate": "sigmoid", "region_duplicate_threshold": 0.8}],
)
def test_sixty_steps_on_eight_bags_drive_the_loss_down(config_factory, processor, bag_factory, overrides):
    torch.manual_seed(0)
    model = PathFLIPModel(config_factory(**overrides)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    bags = [bag_factory(i, 20 + 3 * i) for i in range(8)]
    for i, bag in enumerate(bags):  # eight different findings, one sentence each
        bag["caption"] = (
            f"{TISSUES[i].capitalize()} in the {PLACES[i % 4]} region. There are {i % 5 + 1} large "
            f"{TISSUES[(i + 3) % 8]} areas. The {TISSUES[(i + 5) % 8]} is dense."
        )
    losses, collator = [], PathFLIPCollator(processor)  # fresh subcaptions every step, as in training
    for step in range(60):
        collator.epoch = step
        loss = model(**collator(bags)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], f"loss went from {losses[0]:.3f} to {losses[-1]:.3f}"


@pytest.mark.parametrize(
    "overrides", [{"use_region_loss": False}, {"use_slide_loss": False}, {"use_text_region_attention": False}]
)
def test_ablation_switches(config_factory, processor, bag_factory, overrides):
    model = PathFLIPModel(config_factory(**overrides)).eval()
    output = model(**processor([bag_factory(i, 20) for i in range(3)]))
    assert torch.isfinite(output.loss)
    assert (output.loss_slide is None) == (not model.config.use_slide_loss)
    assert (output.loss_region is None) == (not model.config.use_region_loss)


def test_without_context_a_region_token_depends_on_its_own_patches_only(
    config_factory, processor, bag_factory, bag_inputs
):
    model = PathFLIPModel(config_factory(context_layers=0)).eval()
    assert model.context_encoder is None
    bag = bag_factory(0, 40)
    layout = processor([bag], return_loss=False)
    first_region = layout["region_patch_index"][0, 0]
    others = torch.ones(40, dtype=torch.bool)
    others[first_region[first_region >= 0]] = False
    changed = {**bag, "features": torch.where(others[:, None], bag["features"] + 1.0, bag["features"])}
    with torch.no_grad():
        before = model.get_slide_features(**bag_inputs(layout))
        after = model.get_slide_features(**bag_inputs(processor([changed], return_loss=False)))
        output = model(**processor([bag_factory(i, 20) for i in range(3)]))
    torch.testing.assert_close(after.region_embeds[0, 0], before.region_embeds[0, 0])
    assert not torch.allclose(after.region_embeds[0, 1], before.region_embeds[0, 1])
    assert torch.isfinite(output.loss)


def test_mean_pooling_ablation_gives_uniform_region_weights(config_factory, processor, bag_factory, bag_inputs):
    model = PathFLIPModel(config_factory(use_text_region_attention=False)).eval()
    batch = processor([bag_factory(0, 40)], return_loss=False)
    with torch.no_grad():
        grounding = model.get_grounding(**bag_inputs(batch), **processor(text=["tumour", "fat"]))
    regions = int(batch["region_attention_mask"].sum())
    torch.testing.assert_close(grounding.region_scores[0, :, :regions], torch.full((2, regions), 1 / regions))


# ---- grounding ----------------------------------------------------------------------------------


def test_grounding_scores_are_region_weight_times_relative_patch_weight(model, processor, bag_factory, bag_inputs):
    bags = [bag_factory(0, 45), bag_factory(1, 30)]
    batch = processor(bags, return_loss=False)
    texts = processor(text=["dense tumour nuclei", "fat", "fibrous stroma in the left region"])
    with torch.no_grad():
        grounding = model.get_grounding(**bag_inputs(batch), **texts)
        direct = _direct_grounding(model, batch, texts)
    assert grounding.patch_scores.shape == (2, 3, 45)
    assert torch.isfinite(grounding.patch_scores).all()
    for i, bag in enumerate(bags):
        n = bag["features"].shape[0]
        torch.testing.assert_close(grounding.patch_scores[i, :, :n], direct[i], atol=1e-6, rtol=1e-5)
        assert (grounding.patch_scores[i, :, n:] == 0).all()
        # Relative patch weights average 1 within each region, so a region's patch scores sum to its TRA weight
        # times its patch count: a text's scores sum to the TRA-weighted mean region size.
        real = batch["region_attention_mask"][i].bool()
        sizes = (batch["region_patch_index"][i][real] >= 0).sum(-1).float()
        torch.testing.assert_close(grounding.patch_scores[i].sum(-1), grounding.region_scores[i][:, real] @ sizes)


def test_grounding_from_kept_slide_features_equals_a_full_grounding(model, processor, bag_factory, bag_inputs):
    batch = bag_inputs(processor([bag_factory(3, 50)], return_loss=False))
    texts = processor(text=["dense tumour nuclei", "fat"])
    with torch.no_grad():
        kept = model.get_slide_features(**batch, output_region_patch_weights=True)
        full = model.get_grounding(**batch, **texts)
        blank = {**batch, "patch_features": batch["patch_features"] * 0}  # not encoded again: blank is unseen
        cached = model.get_grounding(**blank, **texts, slide_features=kept)
    torch.testing.assert_close(cached.patch_scores, full.patch_scores)
    torch.testing.assert_close(cached.region_scores, full.region_scores)


def _direct_grounding(model, batch, texts):
    """Recompute patch scores bag by bag from the raw attention tensors of the TRA and the Q-Former."""
    results = []
    text_embeds = model.get_text_features(**texts)
    for i in range(batch["patch_features"].shape[0]):
        slide = model.get_slide_features(**{name: batch[name][i : i + 1] for name in BAG_INPUT_NAMES})
        real = batch["region_attention_mask"][i].bool()
        tra = model.text_region_attention
        _, alpha = tra.attention(
            tra.query(text_embeds[None]),
            tra.key(slide.region_embeds[:, real]),
            tra.value(slide.region_embeds[:, real]),
            need_weights=True,
        )
        projected = model.patch_projector(batch["patch_features"][i])
        scores = torch.zeros(text_embeds.shape[0], int(batch["patch_attention_mask"][i].sum()))
        for region, rows in enumerate(batch["region_patch_index"][i][real]):
            rows = rows[rows >= 0]
            out = model.qformer(
                query_embeds=model.query_tokens, encoder_hidden_states=projected[rows][None], output_attentions=True
            )
            patch_weight = out.cross_attentions[-1][0].mean(dim=(0, 1))
            scores[:, rows] = alpha[0, :, region, None] * patch_weight[None] * len(rows)
        results.append(scores)
    return results


def test_gradient_checkpointing_runs(config, processor, bag_factory):
    model = PathFLIPModel(copy.deepcopy(config)).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model(**processor([bag_factory(i, 20) for i in range(2)])).loss.backward()
    assert model.query_tokens.grad is not None


def test_grounding_without_eager_attention_says_how_to_fix_it(model, processor, bag_factory, bag_inputs):
    batch = processor([bag_factory(0, 20)], return_loss=False)
    model.qformer.set_attn_implementation("sdpa")
    with pytest.raises(RuntimeError, match="set_attn_implementation\\('eager'\\)"):
        model.get_grounding(**bag_inputs(batch), **processor(text=["tumour"]))
    model.qformer.set_attn_implementation("eager")
    assert model.get_grounding(**bag_inputs(batch), **processor(text=["tumour"])).patch_scores.shape == (1, 1, 20)


def test_region_positions_reach_the_region_tokens_without_breaking_batching(
    config_factory, processor, bag_factory, bag_inputs
):
    torch.manual_seed(0)
    model = PathFLIPModel(config_factory(use_region_positions=True)).eval()
    bags = [bag_factory(0, 45), bag_factory(1, 30)]
    inputs = bag_inputs(processor(bags, return_loss=False))
    with torch.no_grad():
        together = model.get_slide_features(**inputs)
        for i, bag in enumerate(bags):
            alone = model.get_slide_features(**bag_inputs(processor([bag], return_loss=False)))
            regions = int(inputs["region_attention_mask"][i].sum())
            torch.testing.assert_close(together.slide_embeds[i], alone.slide_embeds[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(
                together.region_embeds[i, :regions], alone.region_embeds[0, :regions], atol=1e-5, rtol=1e-4
            )
        moved = model.get_slide_features(**{**inputs, "region_positions": inputs["region_positions"].flip(-1)})
    assert not torch.allclose(together.region_embeds, moved.region_embeds, atol=1e-4)
    with pytest.raises(ValueError, match="pass region_positions"):
        model.get_slide_features(**{**inputs, "region_positions": None})


def test_sigmoid_gated_text_region_attention_weighs_each_region_on_its_own():
    torch.manual_seed(0)
    attention = PathFLIPTextRegionAttention(8, 2, gate="sigmoid")
    texts, regions = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 1, 0]])
    conditioned, gates = attention(texts, regions, mask)
    # By hand, from the multi-head attention's own projections: per head sigmoid(q.k / sqrt(d) - log L).
    inner = attention.attention
    w_q, w_k, w_v = inner.in_proj_weight.chunk(3)
    b_q, b_k, b_v = inner.in_proj_bias.chunk(3)
    q = (attention.query(texts) @ w_q.T + b_q).unflatten(-1, (2, 4)).transpose(1, 2)
    k = (attention.key(regions) @ w_k.T + b_k).unflatten(-1, (2, 4)).transpose(1, 2)
    v = (attention.value(regions) @ w_v.T + b_v).unflatten(-1, (2, 4)).transpose(1, 2)
    count = mask.sum(-1).float()
    per_head = torch.sigmoid(q @ k.transpose(-1, -2) / 2 - count.log()[:, None, None, None]) * mask[:, None, None]
    torch.testing.assert_close(gates, per_head.mean(1))
    torch.testing.assert_close(conditioned, inner.out_proj((per_head @ v).transpose(1, 2).flatten(-2)))
    assert (gates[1, :, [2, 4]] == 0).all()
    assert not torch.allclose(gates.sum(-1), torch.ones(2, 3))  # not a distribution over regions
    # The same parameters as the softmax attention: a softmax model's weights load into a sigmoid one.
    softmax = PathFLIPTextRegionAttention(8, 2)
    assert softmax.state_dict().keys() == attention.state_dict().keys()
    softmax.load_state_dict(attention.state_dict())
    _, weights = softmax(texts, regions, mask)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))


def test_tra_gate_is_validated_and_grounds_with_the_gates(config_factory, processor, bag_factory, bag_inputs):
    with pytest.raises(ValueError, match="tra_gate must be one of .*'relu'"):
        config_factory(tra_gate="relu")
    model = PathFLIPModel(config_factory(tra_gate="sigmoid")).eval()
    batch = processor([bag_factory(0, 40)], return_loss=False)
    with torch.no_grad():
        grounding = model.get_grounding(**bag_inputs(batch), **processor(text=["tumour", "fat"]))
        slide = model.get_slide_features(**bag_inputs(batch))
        texts = model.get_text_features(**processor(text=["tumour", "fat"]))
        _, gates = model.text_region_attention(texts[None], slide.region_embeds, slide.region_attention_mask)
    torch.testing.assert_close(grounding.region_scores, gates)

"""Both losses over a global batch split across two gloo processes equal the single-process losses."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modeling_pathflip import BAG_INPUT_NAMES
from modeling_pathflip.loss_pathflip import (
    region_exclusion_loss,
    region_subcaption_sigmoid_loss,
    slide_caption_contrastive_loss,
    subcaption_contrast_loss,
    subcaption_discriminability,
    text_keys,
)
from modeling_pathflip.modeling_pathflip import PathFLIPTextRegionAttention

BATCH, REGIONS, SUBCAPTIONS, DIM = 6, 5, 3, 8


def _inputs():
    generator = torch.Generator().manual_seed(0)
    slides = torch.randn(BATCH, DIM, generator=generator)
    captions = torch.randn(BATCH, DIM, generator=generator)
    regions = torch.randn(BATCH, REGIONS, DIM, generator=generator)
    region_mask = (torch.rand(BATCH, REGIONS, generator=generator) > 0.3).long()
    region_mask[:, 0] = 1
    subcaptions = torch.randn(BATCH, SUBCAPTIONS, DIM, generator=generator)
    keys = torch.arange(BATCH * SUBCAPTIONS).reshape(BATCH, SUBCAPTIONS)
    keys[4, 1] = keys[0, 2]  # the same sentence written for slides 0 and 4 (on different processes)
    return slides, captions, regions, region_mask, subcaptions, keys


def _losses(rows: slice):
    """Total loss and gradients of (module parameters, embeddings) for the rows of the global batch."""
    torch.manual_seed(0)
    attention = PathFLIPTextRegionAttention(DIM, 2)
    scale, bias = torch.tensor(2.3, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    tensors = [tensor[rows].clone().requires_grad_(tensor.is_floating_point()) for tensor in _inputs()]
    slides, captions, regions, region_mask, subcaptions, keys = tensors
    loss = slide_caption_contrastive_loss(slides, captions, torch.tensor(14.0), 0.1)
    loss = loss + region_subcaption_sigmoid_loss(
        regions, region_mask, subcaptions, attention, scale, bias, negatives="all", subcaption_keys=keys
    )
    loss.backward()
    parameter_grads = [p.grad for p in attention.parameters()] + [scale.grad, bias.grad]
    embedding_grads = [t.grad for t in (slides, captions, regions, subcaptions)]
    return loss.detach(), parameter_grads, embedding_grads


def _worker(rank: int, world_size: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        per_rank = BATCH // world_size
        loss, parameter_grads, embedding_grads = _losses(slice(rank * per_rank, (rank + 1) * per_rank))
        # What DDP does: average parameter gradients over processes.
        for grad in parameter_grads:
            dist.all_reduce(grad)
            grad /= world_size
        results[rank] = (loss, parameter_grads, embedding_grads)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_match_one_process(free_port):
    expected_loss, expected_parameter_grads, expected_embedding_grads = _losses(slice(0, BATCH))
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(2, free_port, results), nprocs=2, join=True)
    losses = [results[rank][0] for rank in range(2)]
    torch.testing.assert_close(sum(losses) / 2, expected_loss, atol=1e-5, rtol=0)
    for got, expected in zip(results[0][1], expected_parameter_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # Embedding gradients of each shard (from every process's loss) match the single-process ones / 2.
    for rank in range(2):
        rows = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
        for got, expected in zip(results[rank][2], expected_embedding_grads, strict=True):
            torch.testing.assert_close(got / 2, expected[rows], atol=1e-4, rtol=0)


def test_identical_subcaptions_of_other_slides_are_positives():
    torch.manual_seed(0)
    attention = PathFLIPTextRegionAttention(DIM, 2)
    regions, mask = torch.randn(2, REGIONS, DIM), torch.ones(2, REGIONS, dtype=torch.long)
    subcaptions = torch.randn(2, 1, DIM)
    scale, bias = torch.tensor(2.3), torch.tensor(-1.0)
    candidates = subcaptions.reshape(1, 2, DIM).expand(2, -1, -1)
    conditioned, _ = attention(candidates, regions, mask)
    logits = scale.exp() * torch.nn.functional.cosine_similarity(conditioned, candidates, dim=-1) + bias
    same_text = torch.tensor([[7], [7]])
    expected_same = -torch.nn.functional.logsigmoid(logits).mean()  # every pair positive
    expected_distinct = -torch.nn.functional.logsigmoid(logits * (2 * torch.eye(2) - 1)).mean()
    for keys, expected in ((same_text, expected_same), (torch.tensor([[7], [8]]), expected_distinct), (None,
                           expected_distinct)):  # fmt: skip
        loss = region_subcaption_sigmoid_loss(regions, mask, subcaptions, attention, scale, bias, subcaption_keys=keys)
        torch.testing.assert_close(loss, expected)


def test_text_keys_ignore_padding_and_tell_texts_apart():
    ids = torch.tensor([[2, 20, 21, 3, 0, 0], [2, 20, 21, 3, 0, 0], [2, 21, 20, 3, 0, 0]])
    mask = (ids != 0).long()
    left_padded = torch.tensor([[0, 0, 2, 20, 21, 3]])
    keys = text_keys(ids, mask)
    assert keys[0] == keys[1] != keys[2]
    assert text_keys(left_padded, (left_padded != 0).long())[0] == keys[0]


def _per_pair_losses(regions, mask, subcaptions, attention, scale, bias):
    """Hand-computed ``[B, G K]`` per-(slide, candidate) losses of the "all" mode, every subcaption distinct."""
    batch, num_sub, dim = subcaptions.shape
    candidates = subcaptions.reshape(1, batch * num_sub, dim).expand(batch, -1, -1)
    conditioned, _ = attention(candidates, regions, mask)
    logits = scale.exp() * torch.nn.functional.cosine_similarity(conditioned, candidates, dim=-1) + bias
    own = torch.arange(batch * num_sub)[None, :] // num_sub == torch.arange(batch)[:, None]
    return -torch.nn.functional.logsigmoid(torch.where(own, 1.0, -1.0) * logits)


def test_authors_reduction_divides_each_slides_sum_by_k_plus_b_minus_one():
    torch.manual_seed(0)
    attention = PathFLIPTextRegionAttention(DIM, 2)
    regions, mask = torch.randn(2, REGIONS, DIM), torch.ones(2, REGIONS, dtype=torch.long)
    subcaptions = torch.randn(2, 2, DIM)  # B = 2 slides, K = 2 subcaptions each: 4 candidates per slide
    scale, bias = torch.tensor(2.3), torch.tensor(-1.0)
    pairs = _per_pair_losses(regions, mask, subcaptions, attention, scale, bias)
    expected = (pairs[0].sum() / 3 + pairs[1].sum() / 3) / 2  # K + B - 1 = 3
    arguments = (regions, mask, subcaptions, attention, scale, bias)
    authors = region_subcaption_sigmoid_loss(*arguments, reduction="authors")
    mean = region_subcaption_sigmoid_loss(*arguments)
    torch.testing.assert_close(authors, expected)
    torch.testing.assert_close(mean, pairs.mean())
    torch.testing.assert_close(authors / mean, torch.tensor(4 / 3))  # B K / (K + B - 1)


def test_authors_reduction_equals_the_mean_with_one_negative_per_slide():
    torch.manual_seed(0)
    attention = PathFLIPTextRegionAttention(DIM, 2)
    regions, region_mask, subcaptions = _inputs()[2:5]
    scale, bias = torch.tensor(2.3), torch.tensor(-1.0)
    losses = {}
    for reduction in ("mean", "authors"):
        torch.manual_seed(1)  # the same random negative of each slide
        losses[reduction] = region_subcaption_sigmoid_loss(
            regions, region_mask, subcaptions, attention, scale, bias, negatives="one_per_slide", reduction=reduction
        )
    torch.testing.assert_close(losses["authors"], losses["mean"])


def test_region_loss_reduction_is_validated_and_reaches_the_model(config_factory, tokenizer, bag_factory):
    from modeling_pathflip import PathFLIPModel, PathFLIPProcessor

    with pytest.raises(ValueError, match="region_loss_reduction must be one of .*'sum'"):
        config_factory(region_loss_reduction="sum")
    with pytest.raises(ValueError, match="Unknown region loss reduction 'sum'"):
        region_subcaption_sigmoid_loss(*_inputs()[2:5], None, torch.tensor(0.0), torch.tensor(0.0), reduction="sum")
    torch.manual_seed(0)
    mean_model = PathFLIPModel(config_factory()).eval()
    authors_model = PathFLIPModel(config_factory(region_loss_reduction="authors")).eval()
    authors_model.load_state_dict(mean_model.state_dict())
    processor = PathFLIPProcessor.from_model_config(tokenizer, mean_model.config)
    batch = processor([bag_factory(i, 20 + i) for i in range(4)])
    with torch.no_grad():
        mean, authors = mean_model(**batch).loss_region, authors_model(**batch).loss_region
    torch.testing.assert_close(authors, mean * 2)  # B = 4, K = 3: B K / (K + B - 1) = 2


def test_paraphrases_of_own_subcaptions_are_left_out_or_made_positive():
    torch.manual_seed(0)
    attention = PathFLIPTextRegionAttention(DIM, 2)
    regions, mask = torch.randn(2, REGIONS, DIM), torch.ones(2, REGIONS, dtype=torch.long)
    subcaptions = torch.randn(2, 2, DIM)  # candidates 0, 1 are slide 0's; 2, 3 slide 1's
    scale, bias = torch.tensor(2.3), torch.tensor(-1.0)
    # Text vectors: slide 0's first subcaption and slide 1's second say the same thing in other words.
    basis = torch.eye(4)
    paraphrase = torch.nn.functional.normalize(basis[0] + 0.1 * basis[3], dim=0)
    vectors = torch.stack([basis[0], basis[1], basis[2], paraphrase])
    vectors = vectors.reshape(2, 2, 4)  # cosine 0.995 between those two, 0 between any others
    pairs = _per_pair_losses(regions, mask, subcaptions, attention, scale, bias)
    paraphrase = torch.zeros(2, 4, dtype=torch.bool)
    paraphrase[0, 3] = paraphrase[1, 0] = True  # each slide's negative that paraphrases one of its own
    arguments = (regions, mask, subcaptions, attention, scale, bias)
    options = {"subcaption_similarity": vectors, "duplicate_threshold": 0.9}
    ignored = region_subcaption_sigmoid_loss(*arguments, **options)
    torch.testing.assert_close(ignored, pairs[~paraphrase].mean())
    positive = region_subcaption_sigmoid_loss(*arguments, **options, duplicates="positive")
    candidates = subcaptions.reshape(1, 4, DIM).expand(2, -1, -1)
    conditioned, _ = attention(candidates, regions, mask)
    logits = scale.exp() * torch.nn.functional.cosine_similarity(conditioned, candidates, dim=-1) + bias
    own = torch.arange(4)[None, :] // 2 == torch.arange(2)[:, None]
    expected = -torch.nn.functional.logsigmoid(torch.where(own | paraphrase, 1.0, -1.0) * logits).mean()
    torch.testing.assert_close(positive, expected)
    loose = region_subcaption_sigmoid_loss(*arguments, subcaption_similarity=vectors, duplicate_threshold=1.0)
    torch.testing.assert_close(loose, pairs.mean())  # nothing reaches cosine 1 but the slide's own texts
    with pytest.raises(ValueError, match="needs subcaption_similarity"):
        region_subcaption_sigmoid_loss(*arguments, duplicate_threshold=0.9)
    with pytest.raises(ValueError, match="Unknown duplicates mode 'drop'"):
        region_subcaption_sigmoid_loss(*arguments, **options, duplicates="drop")


def test_paraphrase_threshold_reaches_the_models_region_loss(config_factory, tokenizer, bag_factory):
    from modeling_pathflip import PathFLIPModel, PathFLIPProcessor

    for bad in (1.5, -1.0, "0.8", True):
        with pytest.raises(ValueError, match="region_duplicate_threshold must be None or a cosine in"):
            config_factory(region_duplicate_threshold=bad)
    with pytest.raises(ValueError, match="region_duplicates must be one of .*'drop'"):
        config_factory(region_duplicates="drop")
    torch.manual_seed(0)
    plain = PathFLIPModel(config_factory()).eval()
    lenient = PathFLIPModel(config_factory(region_duplicate_threshold=-0.999)).eval()
    lenient.load_state_dict(plain.state_dict())
    processor = PathFLIPProcessor.from_model_config(tokenizer, plain.config)
    batch = processor([bag_factory(i, 20 + i) for i in range(4)])
    with torch.no_grad():
        every_pair, positives_only = plain(**batch).loss_region, lenient(**batch).loss_region
    assert not torch.isclose(every_pair, positives_only)
    # With every other slide's text a "paraphrase", only each slide's own subcaptions remain: their mean loss.
    with torch.no_grad():
        slide = plain.get_slide_features(
            batch["patch_features"], batch["patch_attention_mask"], batch["region_patch_index"],
            batch["region_attention_mask"],
        )  # fmt: skip
        texts = plain.get_text_features(batch["subcaption_input_ids"], batch["subcaption_attention_mask"])
        conditioned, _ = plain.get_text_conditioned_region_features(texts, slide.region_embeds,
                                                                    slide.region_attention_mask)  # fmt: skip
        cosine = torch.nn.functional.cosine_similarity(conditioned, texts, dim=-1)
        logits = plain.region_logit_scale.exp() * cosine + plain.region_logit_bias
    torch.testing.assert_close(positives_only, -torch.nn.functional.logsigmoid(logits).mean())


def test_subcaption_contrast_is_a_cross_entropy_over_the_slides_own_texts():
    generator = torch.Generator().manual_seed(0)
    conditioned, texts = torch.randn(2, 3, DIM, generator=generator), torch.randn(2, 3, DIM, generator=generator)
    keys = torch.tensor([[1, 2, 3], [4, 5, 4]])  # slide 1 drew the same text twice
    scale = torch.tensor(10.0)
    cosine = torch.nn.functional.cosine_similarity(conditioned[:, :, None], texts[:, None], dim=-1)  # [B, K, K]
    expected = []
    for slide in range(2):
        for k in range(3):
            allowed = [j for j in range(3) if j == k or keys[slide, j] != keys[slide, k]]
            logits = scale * cosine[slide, k, allowed]
            expected.append(-torch.log_softmax(logits, dim=0)[allowed.index(k)])
    loss = subcaption_contrast_loss(conditioned, texts, keys, scale)
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    # Matching each text best (large scale) drives it to zero; the other slides' texts play no part.
    aligned = subcaption_contrast_loss(texts, texts, torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor(1e3))
    assert aligned < 1e-3


def test_subcaption_contrast_weight_is_validated_and_adds_to_the_region_loss(config_factory, tokenizer, bag_factory):
    from modeling_pathflip import PathFLIPModel, PathFLIPProcessor

    for bad in (-1.0, float("inf"), "1", True):
        with pytest.raises(ValueError, match="subcaption_contrast_weight must be a finite number >= 0"):
            config_factory(subcaption_contrast_weight=bad)
    torch.manual_seed(0)
    plain = PathFLIPModel(config_factory()).eval()
    contrasted = PathFLIPModel(config_factory(subcaption_contrast_weight=0.5)).eval()
    contrasted.load_state_dict(plain.state_dict())
    processor = PathFLIPProcessor.from_model_config(tokenizer, plain.config)
    batch = processor([bag_factory(i, 20 + i) for i in range(4)])
    with torch.no_grad():
        region, total = plain(**batch).loss_region, contrasted(**batch).loss_region
        slide = plain.get_slide_features(**{k: batch[k] for k in BAG_INPUT_NAMES})
        texts = plain.get_text_features(batch["subcaption_input_ids"], batch["subcaption_attention_mask"])
        conditioned, _ = plain.get_text_conditioned_region_features(texts, slide.region_embeds,
                                                                    slide.region_attention_mask)  # fmt: skip
        keys = text_keys(batch["subcaption_input_ids"], batch["subcaption_attention_mask"])
        contrast = subcaption_contrast_loss(conditioned, texts, keys, plain.region_logit_scale.exp())
    torch.testing.assert_close(total, region + 0.5 * contrast)


def test_with_negatives_not_steering_attention_only_positives_move_the_attention_weights():
    torch.manual_seed(0)
    attention = PathFLIPTextRegionAttention(DIM, 2)
    regions, mask = torch.randn(2, REGIONS, DIM), torch.ones(2, REGIONS, dtype=torch.long)
    mask[1, -2:] = 0
    subcaptions = torch.randn(2, 1, DIM)
    scale, bias = torch.tensor(2.3), torch.tensor(-1.0)

    def loss(steer: bool) -> torch.Tensor:
        return region_subcaption_sigmoid_loss(regions, mask, subcaptions, attention, scale, bias,
                                              negatives_steer_attention=steer)  # fmt: skip

    def positives_only() -> torch.Tensor:  # each slide with its own subcaption, over the 4 pairs of the mean
        conditioned, _ = attention(subcaptions, regions, mask)
        cosine = torch.nn.functional.cosine_similarity(conditioned, subcaptions, dim=-1)
        return -torch.nn.functional.logsigmoid(scale.exp() * cosine + bias).sum() / 4

    def grads(value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attention.zero_grad()
        value.backward()
        return attention.query.weight.grad.clone(), attention.value.weight.grad.clone()

    torch.testing.assert_close(loss(False), loss(True))  # the same loss; only its gradients differ
    (fixed_query, fixed_value), (steer_query, _) = grads(loss(False)), grads(loss(True))
    positive_query, positive_value = grads(positives_only())
    # The query projection only shapes the weights over regions: it learns from the positive pairs alone.
    torch.testing.assert_close(fixed_query, positive_query)
    assert not torch.allclose(steer_query, positive_query)
    # Negatives still move the values (the region embeddings' side).
    assert not torch.allclose(fixed_value, positive_value)


def test_text_region_attention_without_weight_gradients_computes_the_same_outputs():
    torch.manual_seed(0)
    for gate in ("softmax", "sigmoid"):
        attention = PathFLIPTextRegionAttention(DIM, 2, gate=gate).eval()
        texts, regions = torch.randn(2, 3, DIM), torch.randn(2, REGIONS, DIM)
        mask = torch.ones(2, REGIONS, dtype=torch.long)
        mask[0, -2:] = 0
        expected = attention(texts, regions, mask)
        for grad in (torch.ones(2, 3, dtype=torch.bool), torch.tensor([[True, False, True], [False, False, True]])):
            for got, want in zip(attention(texts, regions, mask, grad), expected, strict=True):
                torch.testing.assert_close(got, want)
        assert expected[1][0, :, -2:].abs().max() == 0  # padded regions get no weight either way


def test_region_negatives_steer_attention_is_validated_and_reaches_the_model(config_factory, tokenizer, bag_factory):
    from modeling_pathflip import PathFLIPModel, PathFLIPProcessor

    for bad in ("no", 0, None):
        with pytest.raises(ValueError, match="region_negatives_steer_attention must be True or False"):
            config_factory(region_negatives_steer_attention=bad)
    torch.manual_seed(0)
    steering = PathFLIPModel(config_factory()).train()
    fixed = PathFLIPModel(config_factory(region_negatives_steer_attention=False)).train()
    fixed.load_state_dict(steering.state_dict())
    processor = PathFLIPProcessor.from_model_config(tokenizer, steering.config)
    batch = processor([bag_factory(i, 20 + i) for i in range(4)])
    grads = []
    for model in (steering, fixed):
        torch.manual_seed(1)
        output = model(**batch)
        output.loss_region.backward()
        grads.append((output.loss_region.detach(), model.text_region_attention.query.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    assert not torch.allclose(grads[0][1], grads[1][1])


def test_discriminability_is_the_share_of_other_slides_a_subcaption_scores_lower_on():
    keys = torch.tensor([[1, 2], [3, 1]])  # slide 1 also wrote text 1: never compared with it
    # scores[slide, column]: columns are the subcaptions slide-major (slide 0: 1, 2; slide 1: 3, 1)
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.8], [0.2, 0.3, 0.6, 0.7]])
    share = subcaption_discriminability(scores, keys)
    # text 2 scores 0.1 on its slide and 0.3 on slide 1; text 3: 0.6 against 0.5; text 1 has no other slide.
    torch.testing.assert_close(share, torch.tensor([[0.5, 0.0], [1.0, 0.5]]))


def test_exclusion_pushes_subcaptions_off_regions_better_placed_ones_claim():
    weights = torch.tensor([[[0.8, 0.1, 0.1], [0.5, 0.25, 0.25], [0.0, 0.5, 0.5]]], requires_grad=True)
    keys = torch.tensor([[1, 2, 3]])
    discriminability = torch.tensor([[1.0, 0.5, 0.75]])  # placement 1, 0 and 0.5
    loss = region_exclusion_loss(weights, discriminability, keys)
    maps = weights.detach()[0]
    claims = maps / maps.amax(dim=-1, keepdim=True)  # [1, .125, .125], [1, .5, .5], [0, 1, 1]
    # sentence 1 is pushed by 0 (by 1.0) and 2 (by 0.5); sentence 2 by 0 (by 0.5); sentence 0 by nobody.
    pressure = torch.stack([torch.zeros(3), claims[0] + 0.5 * claims[2], 0.5 * claims[0]])
    torch.testing.assert_close(loss, (maps * pressure).sum() / 3)
    loss.backward()
    assert weights.grad[0, 0].abs().sum() == 0  # the best placed sentence is not pushed
    assert weights.grad[0, 1, 0] > weights.grad[0, 1, 1]  # the region sentence 0 claims costs most
    # Nothing to exclude where every text is the same, or every sentence is placed alike.
    assert region_exclusion_loss(weights.detach(), discriminability, torch.tensor([[4, 4, 4]])) == 0
    assert region_exclusion_loss(weights.detach(), torch.full((1, 3), 0.8), keys) == 0


def test_region_exclusion_weight_is_validated_and_adds_to_the_region_loss(config_factory, tokenizer, bag_factory):
    from modeling_pathflip import PathFLIPModel, PathFLIPProcessor

    for bad in (-0.5, float("inf"), "1", False):
        with pytest.raises(ValueError, match="region_exclusion_weight must be a finite number >= 0"):
            config_factory(region_exclusion_weight=bad)
    torch.manual_seed(0)
    plain = PathFLIPModel(config_factory()).eval()
    excluding = PathFLIPModel(config_factory(region_exclusion_weight=3.0)).eval()
    excluding.load_state_dict(plain.state_dict())
    processor = PathFLIPProcessor.from_model_config(tokenizer, plain.config)
    batch = processor([bag_factory(i, 20 + i) for i in range(4)])
    with torch.no_grad():
        region, total = plain(**batch).loss_region, excluding(**batch).loss_region
        slide = plain.get_slide_features(**{k: batch[k] for k in BAG_INPUT_NAMES})
        texts = plain.get_text_features(batch["subcaption_input_ids"], batch["subcaption_attention_mask"])
        flat = texts.flatten(0, 1)
        conditioned, _ = plain.get_text_conditioned_region_features(flat, slide.region_embeds,
                                                                    slide.region_attention_mask)  # fmt: skip
        keys = text_keys(batch["subcaption_input_ids"], batch["subcaption_attention_mask"])
        scores = torch.nn.functional.cosine_similarity(conditioned, flat[None], dim=-1)
        share = subcaption_discriminability(scores, keys)
        _, weights = plain.get_text_conditioned_region_features(texts, slide.region_embeds, slide.region_attention_mask)
        exclusion = region_exclusion_loss(weights, share, keys)
    torch.testing.assert_close(total, region + 3.0 * exclusion)

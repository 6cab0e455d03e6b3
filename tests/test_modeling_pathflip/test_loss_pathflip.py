"""Both losses over a global batch split across two gloo processes equal the single-process losses."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modeling_pathflip.loss_pathflip import region_subcaption_sigmoid_loss, slide_caption_contrastive_loss, text_keys
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

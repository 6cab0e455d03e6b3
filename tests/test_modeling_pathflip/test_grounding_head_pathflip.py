"""The grounding head's readout and losses, against direct computations; its config's validation."""

import pytest
import torch
from torch.nn import functional as F

from modeling_pathflip.grounding_head_pathflip import partial_label_loss, pooled_presence, presence_loss


def test_a_query_competes_with_the_vocabulary_but_not_with_its_paraphrases():
    from modeling_pathflip.grounding_head_pathflip import PathFLIPGroundingHead

    torch.manual_seed(0)
    head = PathFLIPGroundingHead(8, 4, members=2, hidden_size=16, embed_dim=4, vocabulary_size=2,
                                 paraphrase_threshold=0.99, presence_sharpness=3.0,
                                 presence_pooling="mixed")  # fmt: skip
    head.vocabulary.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    patches = torch.randn(1, 6, 8)
    query = torch.tensor([[2.0, 0, 0, 0]])  # a paraphrase of the first entry: only the second competes
    scores = head.scores(patches, torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))[0]
    torch.testing.assert_close(head.log_odds(patches, query)[0, 0], scores[:, 0] - scores[:, 1])


def test_partial_label_loss_is_minus_log_of_the_mass_on_the_candidates():
    scores = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]])
    candidates = torch.tensor([[True, False, True], [False, True, False]])
    probabilities = scores.softmax(-1)
    expected = -(torch.log(probabilities[0, 0] + probabilities[0, 2]) + torch.log(probabilities[1, 1])) / 2
    torch.testing.assert_close(partial_label_loss(scores, candidates), expected)


def _lme(values: torch.Tensor, sharpness: float) -> torch.Tensor:
    return torch.logsumexp(sharpness * values, 0) / sharpness - torch.log(torch.tensor(float(len(values)))) / sharpness


SCORES = torch.tensor([[1.0, -2.0], [3.0, 0.0], [-1.0, 4.0]])  # 3 patches x 2 sentences; patches 0, 1 on slide 0
PATCH_SLIDE = torch.tensor([0, 0, 1])


@pytest.mark.parametrize("mix", [0, 1, 2])
def test_pooled_presence_is_a_soft_maximum_a_mean_or_a_soft_minimum_plus_a_bias(mix):
    logits = torch.full((2, 3), -torch.inf)
    logits[:, mix] = 0.0
    pooling = torch.cat([logits, torch.tensor([[-1.0], [2.0]])], dim=1)
    pooled = pooled_presence(SCORES, PATCH_SLIDE, 2, pooling, 3.0)
    pool = [lambda v: _lme(v, 3.0), lambda v: v.mean(0), lambda v: -_lme(-v, 3.0)][mix]
    expected = torch.stack([pool(SCORES[:2]), SCORES[2]]) + torch.tensor([-1.0, 2.0])
    torch.testing.assert_close(pooled, expected)


def test_pooled_presence_mixes_the_three_by_the_softmax_of_its_logits():
    pooling = torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    pooled = pooled_presence(SCORES[:2], torch.tensor([0, 0]), 1, pooling, 2.0)
    weights = pooling[:, :3].softmax(-1)
    pools = torch.stack([_lme(SCORES[:2], 2.0), SCORES[:2].mean(0), -_lme(-SCORES[:2], 2.0)], dim=1)  # [S, 3]
    torch.testing.assert_close(pooled[0], (weights * pools).sum(1) + pooling[:, 3])
    scores = SCORES[:2].clone().requires_grad_(True)
    pooled_presence(scores, torch.tensor([0, 0]), 1, pooling, 2.0).sum().backward()
    assert (scores.grad != 0).all(), "every patch of a slide gets a gradient, not only the best one"


def test_presence_loss_leaves_out_the_pairs_that_are_not_known():
    pooled = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    mentions = torch.tensor([[True, False], [False, True]])
    known = torch.tensor([[True, False], [True, True]])
    every = F.binary_cross_entropy_with_logits(pooled, mentions.float(), reduction="none")
    torch.testing.assert_close(presence_loss(pooled, mentions, known), every[known].mean())
    torch.testing.assert_close(presence_loss(pooled, mentions), every.mean())


def _head(pooling: str = "mixed"):
    from modeling_pathflip.grounding_head_pathflip import PathFLIPGroundingHead

    torch.manual_seed(0)
    head = PathFLIPGroundingHead(8, 4, members=2, hidden_size=16, embed_dim=4, vocabulary_size=2,
                                 paraphrase_threshold=0.99, presence_sharpness=3.0,
                                 presence_pooling=pooling)  # fmt: skip
    for tower in head.pooling_towers:  # a pooling that depends on the text
        torch.nn.init.normal_(tower[2].weight)
    return head


def test_presence_logits_average_the_members_and_ignore_padding():
    head, texts = _head(), torch.randn(3, 4)
    patches = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    logits = head.presence_logits(patches, mask, texts)
    for slide, count in enumerate((5, 2)):
        real = patches[slide, :count]
        first = torch.zeros(count, dtype=torch.long)
        expected = torch.stack([pooled_presence(head.member_scores(k, real, texts), first, 1,
                                                head.member_pooling(k, texts), 3.0)[0] for k in range(2)]).mean(0)
        torch.testing.assert_close(logits[slide], expected)
    alone = head.presence_logits(patches[1:, :2], torch.ones(1, 2), texts)
    torch.testing.assert_close(alone[0], logits[1])


@pytest.mark.parametrize("pooling, kept", [("max", 0), ("mean", 1)])
def test_a_fixed_pooling_keeps_only_its_own_term_and_the_texts_bias(pooling, kept):
    head, texts = _head(pooling), torch.randn(3, 4)
    mix = head.member_pooling(0, texts)
    others = [term for term in range(3) if term != kept]
    assert torch.equal(mix[:, others], torch.full((3, 2), -torch.inf))
    assert torch.equal(mix[:, kept], torch.zeros(3)) and mix[:, 3].std() > 0


def test_mean_pooling_pools_every_text_by_its_patches_mean_plus_its_bias():
    head, texts = _head("mean"), torch.randn(3, 4)
    scores = torch.randn(6, 3)
    slides = torch.tensor([0, 0, 0, 1, 1, 1])
    pooled = pooled_presence(scores, slides, 2, head.member_pooling(0, texts), 3.0)
    bias = head.member_pooling(0, texts)[:, 3]
    torch.testing.assert_close(pooled, torch.stack([scores[:3].mean(0), scores[3:].mean(0)]) + bias)


def test_with_attention_adds_the_standardised_log_attention_at_the_heads_spread_on_real_patches():
    head = _head()
    log_odds = torch.tensor([[[1.0, 2.2, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])  # one slide, 2 texts, 3 real patches
    attention = torch.tensor([[[0.1, 0.2, 0.8, 0.0], [0.5, 0.3, 0.2, 0.0]]])
    mask = torch.tensor([[1, 1, 1, 0]])
    combined = head.with_attention(log_odds, attention, mask, 0.5)
    for text in range(2):
        real_log_odds, log_attention = log_odds[0, text, :3], attention[0, text, :3].log()
        spread = real_log_odds.std(correction=0)
        standardised = (log_attention - log_attention.mean()) / log_attention.std(correction=0)
        torch.testing.assert_close(combined[0, text, :3], real_log_odds + 0.5 * spread * standardised)
    assert combined[0, :, 3].eq(0).all()
    assert combined[0, 0].argmax() == 2  # the attention settles the head's near-tie toward its own peak
    assert combined[0, 1].eq(0).all()  # on the head's scale: where the head sees nothing, neither does the sum
    torch.testing.assert_close(head.with_attention(log_odds, attention, mask, 0.0), log_odds * mask[:, None])


@pytest.mark.parametrize(
    "head, message",
    [
        ("yes", "must be None or a dict"),
        ({"members": 0}, "members"),
        ({"paraphrase_threshold": 2}, "paraphrase_threshold"),
        ({"presence_sharpness": 0}, "presence_sharpness"),
        ({"presence_pooling": "min"}, "presence_pooling"),
        ({"attention_weight": -0.5}, "attention_weight"),
        ({"attention_weight": True}, "attention_weight"),
        ({"layers": 2}, "unknown keys"),
    ],
)
def test_config_refuses_a_grounding_head_shape_that_cannot_be_built(config_factory, head, message):
    with pytest.raises(ValueError, match=message):
        config_factory(grounding_head=head)


def test_a_config_without_vocabulary_builds_no_head(config_factory):
    from modeling_pathflip import PathFLIPModel

    assert PathFLIPModel(config_factory(grounding_head={"members": 2})).grounding_head is None
    assert PathFLIPModel(config_factory(grounding_head={"vocabulary_size": 3})).grounding_head is not None

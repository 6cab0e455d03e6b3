"""The grounding head's readout and losses, against direct computations; its config's validation."""

import pytest
import torch
from torch.nn import functional as F

from modeling_pathflip.grounding_head_pathflip import partial_label_loss, presence_loss


def test_a_query_competes_with_the_vocabulary_but_not_with_its_paraphrases():
    from modeling_pathflip.grounding_head_pathflip import PathFLIPGroundingHead

    torch.manual_seed(0)
    head = PathFLIPGroundingHead(8, 4, members=2, hidden_size=16, embed_dim=4, vocabulary_size=2,
                                 paraphrase_threshold=0.99)  # fmt: skip
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


def test_presence_loss_pools_each_slides_patches_by_log_mean_exp():
    scores = torch.tensor([[1.0, -2.0], [3.0, 0.0], [-1.0, 4.0]])  # 3 patches x 2 sentences
    patch_slide = torch.tensor([0, 0, 1])
    mentions = torch.tensor([[True, False], [False, True]])
    sharpness, bias = 3.0, torch.tensor(-1.0)
    first = torch.logsumexp(sharpness * scores[:2], 0) / sharpness - torch.log(torch.tensor(2.0)) / sharpness
    pooled = torch.stack([first, scores[2]])
    expected = F.binary_cross_entropy_with_logits(pooled + bias, mentions.float())
    torch.testing.assert_close(presence_loss(scores, patch_slide, mentions, bias, sharpness), expected)
    scores.requires_grad_(True)
    presence_loss(scores, patch_slide, mentions, bias, sharpness).backward()
    assert (scores.grad[:2] != 0).all(), "every patch of a slide gets a gradient, not only the best one"


def test_presence_loss_leaves_out_the_pairs_that_are_not_known():
    scores = torch.tensor([[1.0, -2.0], [3.0, 0.0], [-1.0, 4.0]])
    patch_slide = torch.tensor([0, 0, 1])
    mentions = torch.tensor([[True, False], [False, True]])
    known = torch.tensor([[True, False], [True, True]])
    bias = torch.tensor(-1.0)
    every = F.binary_cross_entropy_with_logits(
        torch.stack([torch.logsumexp(3 * scores[:2], 0) / 3 - torch.log(torch.tensor(2.0)) / 3, scores[2]]) + bias,
        mentions.float(), reduction="none")  # fmt: skip
    expected = every[known].mean()
    torch.testing.assert_close(presence_loss(scores, patch_slide, mentions, bias, 3.0, known), expected)


@pytest.mark.parametrize(
    "head, message",
    [
        ("yes", "must be None or a dict"),
        ({"members": 0}, "members"),
        ({"paraphrase_threshold": 2}, "paraphrase_threshold"),
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

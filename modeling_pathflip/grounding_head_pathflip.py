"""A patch-sentence grounding head, fitted after alignment training, and the two losses that fit it.

The Text-Region Attention learns where a sentence is from contrast between slides, so it places a finding that
other slides lack but not one that every slide has (background stroma: every slide is a positive). This head
reads every patch as belonging to one of its slide's caption sentences:

- partial-label term: each patch's softmax over a bank of sentences from many slides must put its mass on the
  sentences of its own slide (or their near-paraphrases), so a sentence every slide has takes what the slide's
  other sentences do not explain;
- presence term: a sentence's best patches on a slide (a soft maximum) must score high where the slide mentions
  it and low elsewhere (multiple-instance learning over patches), which ties lesion sentences to the patches only their
  slides have.

Scores are cosines of a patch MLP on the standardised frozen patch features and a text MLP on the model's text
embeddings (standardised over the training vocabulary: a frozen tower gives unrelated sentences similar embeddings),
averaged over a few independently initialised members. A query is read alone: its log-odds per
patch against the training vocabulary, leaving out the vocabulary's near-paraphrases of the query.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _mlp(in_features: int, hidden_size: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, hidden_size), nn.GELU(), nn.Linear(hidden_size, out_features))


class PathFLIPGroundingHead(nn.Module):
    """Patch-sentence scores of ``members`` small two-tower classifiers and the training vocabulary they read
    queries against (``vocabulary_size`` normalised text embeddings, a buffer saved with the model)."""

    def __init__(self, patch_dim: int, text_dim: int, *, members: int, hidden_size: int, embed_dim: int,
                 vocabulary_size: int, paraphrase_threshold: float):  # fmt: skip
        super().__init__()
        self.patch_towers = nn.ModuleList(_mlp(patch_dim, hidden_size, embed_dim) for _ in range(members))
        self.text_towers = nn.ModuleList(_mlp(text_dim, hidden_size, embed_dim) for _ in range(members))
        self.log_scales = nn.Parameter(torch.full((members,), math.log(10.0)))
        self.presence_bias = nn.Parameter(torch.full((members,), -5.0))
        self.register_buffer("feature_mean", torch.zeros(patch_dim))
        self.register_buffer("feature_std", torch.ones(patch_dim))
        self.register_buffer("text_mean", torch.zeros(text_dim))
        self.register_buffer("text_std", torch.ones(text_dim))
        self.register_buffer("vocabulary", torch.zeros(vocabulary_size, text_dim))
        self.paraphrase_threshold = paraphrase_threshold

    def member_scores(self, member: int, patch_features: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Scaled cosines ``[..., N, T]`` of member ``member`` between patches ``[..., N, D]`` and texts ``[T, E]``."""
        patches = (patch_features.to(self.feature_mean.dtype) - self.feature_mean) / self.feature_std
        patches = F.normalize(self.patch_towers[member](patches), dim=-1)
        texts = (F.normalize(text_embeds.to(patches.dtype), dim=-1) - self.text_mean) / self.text_std
        texts = F.normalize(self.text_towers[member](texts), dim=-1)
        return self.log_scales[member].exp() * patches @ texts.T

    def scores(self, patch_features: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """The members' mean score ``[..., N, T]``."""
        members = range(len(self.patch_towers))
        return torch.stack([self.member_scores(k, patch_features, text_embeds) for k in members]).mean(0)

    def log_odds(self, patch_features: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """``[B, T, N]``: for each text alone, the log-odds of each patch's being what it describes against the
        vocabulary less the text's near-paraphrases (cosine of the text embeddings >= the threshold). Log-odds,
        not probabilities: a probability saturates at 1 in float32 for every patch the text clearly describes,
        which would tie them."""
        queries = F.normalize(text_embeds.float(), dim=-1)
        vocabulary = F.normalize(self.vocabulary.float(), dim=-1)
        query_scores = self.scores(patch_features, queries)  # [B, N, T]
        vocabulary_scores = self.scores(patch_features, vocabulary)  # [B, N, V]
        distinct = (queries @ vocabulary.T) < self.paraphrase_threshold  # [T, V]
        log_odds = []
        for text, keep in enumerate(distinct):  # one text at a time: [B, N, V] stays the largest tensor
            competing = vocabulary_scores[..., keep].logsumexp(-1) if keep.any() else 0.0
            log_odds.append(query_scores[..., text] - competing)
        return torch.stack(log_odds, dim=1)


def partial_label_loss(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Mean over patches of -log of the softmax mass on each patch's candidate sentences.

    ``scores`` ``[N, S]`` (patches of several slides against a bank of S sentences); ``candidates`` ``[N, S]``
    True for the sentences of the patch's own slide and their near-paraphrases (at least one per row).
    """
    log_probabilities = scores.log_softmax(-1)
    return -log_probabilities.masked_fill(~candidates, float("-inf")).logsumexp(-1).mean()


def presence_loss(scores: torch.Tensor, patch_slide: torch.Tensor, mentions: torch.Tensor, bias: torch.Tensor,
                  sharpness: float, known: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Binary cross-entropy of each (slide, sentence) pair's pooled patch score + ``bias`` against whether the
    slide mentions the sentence. ``patch_slide`` ``[N]`` is each patch's slide index into ``mentions`` ``[B, S]``;
    ``known`` ``[B, S]``, if given, is False for pairs left out (neither mentioned nor surely absent).

    Pooling is a log-mean-exp with inverse temperature ``sharpness``: the best patch alone (a max) gives every
    other patch of a lesion no gradient, so a lesion whose first best patch was wrong is never found.
    """
    index = patch_slide[:, None].expand_as(scores)
    peak = scores.new_full(mentions.shape, float("-inf")).scatter_reduce(0, index, scores.detach(), reduce="amax")
    weights = (sharpness * (scores - peak[patch_slide])).exp()
    summed = scores.new_zeros(mentions.shape).index_add(0, patch_slide, weights)
    counts = torch.bincount(patch_slide, minlength=mentions.shape[0]).to(scores.dtype)[:, None]
    pooled = peak + (summed / counts).log() / sharpness
    losses = F.binary_cross_entropy_with_logits(pooled + bias, mentions.float(), reduction="none")
    if known is None:
        return losses.mean()
    return (losses * known).sum() / known.sum().clamp_min(1)

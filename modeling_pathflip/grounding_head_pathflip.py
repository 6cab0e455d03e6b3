"""A patch-sentence grounding head, fitted after alignment training, and the two losses that fit it.

The Text-Region Attention learns where a sentence is from contrast between slides, so it places a finding that
other slides lack but not one that every slide has (background stroma: every slide is a positive). This head
reads every patch as belonging to one of its slide's caption sentences:

- partial-label term: each patch's softmax over a bank of sentences from many slides must put its mass on the
  sentences of its own slide (or their near-paraphrases), so a sentence every slide has takes what the slide's
  other sentences do not explain;
- presence term: a sentence's patch scores pooled over a slide must be high where the slide mentions it and low
  elsewhere (multiple-instance learning over patches), which ties lesion sentences to the patches only their slides
  have. How a sentence pools is read from its text: a mix of a soft maximum (a finding anywhere: "a pool of mucin"), the
  mean (an extent: a lymphoid sheet against small aggregates) and a soft minimum (an absence: "benign"), plus a bias.
  The pooled log-odds are also a slide-level readout: the zero-shot pipeline scores class prompts with them.

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

POOLING_HIDDEN_SIZE = 64
PRESENCE_POOLINGS = ("mixed", "max", "mean")
# The (soft maximum, mean, soft minimum) mix logits of the poolings that do not read it from the text.
_FIXED_MIXES = {"max": (0.0, -math.inf, -math.inf), "mean": (-math.inf, 0.0, -math.inf)}


def _mlp(in_features: int, hidden_size: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, hidden_size), nn.GELU(), nn.Linear(hidden_size, out_features))


class PathFLIPGroundingHead(nn.Module):
    """Patch-sentence scores of ``members`` small two-tower classifiers and the training vocabulary they read
    queries against (``vocabulary_size`` normalised text embeddings, a buffer saved with the model)."""

    def __init__(self, patch_dim: int, text_dim: int, *, members: int, hidden_size: int, embed_dim: int,
                 vocabulary_size: int, paraphrase_threshold: float, presence_sharpness: float,
                 presence_pooling: str):  # fmt: skip
        super().__init__()
        self.patch_towers = nn.ModuleList(_mlp(patch_dim, hidden_size, embed_dim) for _ in range(members))
        self.text_towers = nn.ModuleList(_mlp(text_dim, hidden_size, embed_dim) for _ in range(members))
        self.log_scales = nn.Parameter(torch.full((members,), math.log(10.0)))
        # Per text: logits of the pooling's mix (soft maximum, mean, soft minimum) and its bias.
        self.pooling_towers = nn.ModuleList(_mlp(text_dim, POOLING_HIDDEN_SIZE, 4) for _ in range(members))
        self.register_buffer("feature_mean", torch.zeros(patch_dim))
        self.register_buffer("feature_std", torch.ones(patch_dim))
        self.register_buffer("text_mean", torch.zeros(text_dim))
        self.register_buffer("text_std", torch.ones(text_dim))
        self.register_buffer("vocabulary", torch.zeros(vocabulary_size, text_dim))
        self.paraphrase_threshold = paraphrase_threshold
        self.presence_sharpness = presence_sharpness
        self.presence_pooling = presence_pooling
        self.reset_pooling()

    def reset_pooling(self) -> None:
        """Start every text at a soft maximum with a low bias: most sentences name a finding most slides lack."""
        for tower in self.pooling_towers:
            nn.init.zeros_(tower[2].weight)
            with torch.no_grad():
                tower[2].bias.copy_(torch.tensor([2.0, 0.0, 0.0, -5.0]))

    def _standardised(self, text_embeds: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return (F.normalize(text_embeds.to(dtype), dim=-1) - self.text_mean) / self.text_std

    def member_scores(self, member: int, patch_features: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Scaled cosines ``[..., N, T]`` of member ``member`` between patches ``[..., N, D]`` and texts ``[T, E]``."""
        patches = (patch_features.to(self.feature_mean.dtype) - self.feature_mean) / self.feature_std
        patches = F.normalize(self.patch_towers[member](patches), dim=-1)
        texts = F.normalize(self.text_towers[member](self._standardised(text_embeds, patches.dtype)), dim=-1)
        return self.log_scales[member].exp() * patches @ texts.T

    def scores(self, patch_features: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """The members' mean score ``[..., N, T]``."""
        members = range(len(self.patch_towers))
        return torch.stack([self.member_scores(k, patch_features, text_embeds) for k in members]).mean(0)

    def member_pooling(self, member: int, text_embeds: torch.Tensor) -> torch.Tensor:
        """``[T, 4]``: how member ``member`` pools each text's patch scores (see `pooled_presence`)."""
        pooling = self.pooling_towers[member](self._standardised(text_embeds, self.text_mean.dtype))
        if self.presence_pooling in _FIXED_MIXES:
            mix = pooling.new_tensor(_FIXED_MIXES[self.presence_pooling]).expand(len(pooling), 3)
            pooling = torch.cat([mix, pooling[:, 3:]], dim=-1)
        return pooling

    def presence_logits(self, patch_features: torch.Tensor, patch_attention_mask: torch.Tensor,
                        text_embeds: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """``[B, T]``: the log-odds that each slide's caption mentions each text (members' mean), from the patches
        of ``patch_features`` ``[B, N, D]`` that ``patch_attention_mask`` ``[B, N]`` marks real."""
        real = patch_attention_mask.bool()
        patches = patch_features[real]
        patch_slide = torch.arange(len(real), device=real.device)[:, None].expand_as(real)[real]
        members = []
        for member in range(len(self.patch_towers)):
            scores = self.member_scores(member, patches, text_embeds)
            members.append(pooled_presence(scores, patch_slide, len(real), self.member_pooling(member, text_embeds),
                                           self.presence_sharpness))  # fmt: skip
        return torch.stack(members).mean(0)

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

    @staticmethod
    def with_attention(log_odds: torch.Tensor, attention_scores: torch.Tensor, patch_attention_mask: torch.Tensor,
                       attention_weight: float) -> torch.Tensor:  # fmt: skip
        """``[B, T, N]``: the head's log-odds plus ``attention_weight`` times their spread times the standardised log
        of the model's attention scores (`PathFLIPModel.get_grounding` without the head), per slide and text over
        the real patches (0 on padding). The head says which tissue a sentence describes; the attention, which
        patches of it the model itself picks out: the sum keeps the first ranking and sharpens its peak. Scaled by
        the head's own spread so that the result stays on the head's scale whatever the slide."""
        real = patch_attention_mask[:, None].to(log_odds.dtype).expand_as(log_odds)
        count = real.sum(-1, keepdim=True).clamp_min(1)

        def centred_and_spread(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            centred = (values - (values * real).sum(-1, keepdim=True) / count) * real
            return centred, (centred.square().sum(-1, keepdim=True) / count).sqrt()

        log_attention = attention_scores.to(log_odds.dtype).clamp_min(torch.finfo(log_odds.dtype).tiny).log()
        centred, spread = centred_and_spread(log_attention)
        standardised = centred / spread.clamp_min(torch.finfo(log_odds.dtype).eps)
        return (log_odds + attention_weight * centred_and_spread(log_odds)[1] * standardised) * real


def check_grounding_head_wanted(model, use_grounding_head: bool | None) -> None:
    """Refuse ``use_grounding_head=True`` for a model without a fitted grounding head."""
    if use_grounding_head and getattr(model, "grounding_head", None) is None:
        raise ValueError("use_grounding_head=True needs a model with a fitted grounding head; fit one with "
                         "`pathflip fit-grounding`, or leave use_grounding_head unset.")  # fmt: skip


def pooled_presence(scores: torch.Tensor, patch_slide: torch.Tensor, num_slides: int, pooling: torch.Tensor,
                    sharpness: float) -> torch.Tensor:  # fmt: skip
    """``[num_slides, S]`` pooled log-odds of patch scores ``[N, S]`` (``patch_slide`` ``[N]``: each patch's slide).

    ``pooling`` ``[S, 4]`` holds, per sentence, the logits of a softmax mix of three poolings and a bias: log-mean-exp
    at inverse temperature ``sharpness`` (a soft maximum; a hard max would give every other patch of a lesion no
    gradient, so a lesion whose first best patch was wrong is never found), the mean, and minus the log-mean-exp of
    minus the scores (a soft minimum)."""
    counts = torch.bincount(patch_slide, minlength=num_slides).to(scores.dtype)[:, None]

    def soft_maximum(values: torch.Tensor) -> torch.Tensor:
        index = patch_slide[:, None].expand_as(values)
        peak = values.new_full((num_slides, values.shape[1]), -torch.inf)
        peak = peak.scatter_reduce(0, index, values.detach(), reduce="amax")
        weights = (sharpness * (values - peak[patch_slide])).exp()
        summed = values.new_zeros(peak.shape).index_add(0, patch_slide, weights)
        return peak + (summed / counts).log() / sharpness

    mean = scores.new_zeros((num_slides, scores.shape[1])).index_add(0, patch_slide, scores) / counts
    mix = pooling[:, :3].softmax(-1)
    return mix[:, 0] * soft_maximum(scores) + mix[:, 1] * mean - mix[:, 2] * soft_maximum(-scores) + pooling[:, 3]


def partial_label_loss(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Mean over patches of -log of the softmax mass on each patch's candidate sentences.

    ``scores`` ``[N, S]`` (patches of several slides against a bank of S sentences); ``candidates`` ``[N, S]``
    True for the sentences of the patch's own slide and their near-paraphrases (at least one per row).
    """
    log_probabilities = scores.log_softmax(-1)
    return -log_probabilities.masked_fill(~candidates, float("-inf")).logsumexp(-1).mean()


def presence_loss(pooled: torch.Tensor, mentions: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of each (slide, sentence) pair's pooled log-odds ``[B, S]`` (`pooled_presence`) against
    whether the slide mentions the sentence; ``known`` ``[B, S]``, if given, is False for pairs left out (neither
    mentioned nor surely absent)."""
    losses = F.binary_cross_entropy_with_logits(pooled, mentions.to(pooled.dtype), reduction="none")
    if known is None:
        return losses.mean()
    return (losses * known).sum() / known.sum().clamp_min(1)

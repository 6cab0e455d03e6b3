"""The Text-Region Attention of PathFLIP: sentences (queries) attend over a slide's region embeddings, its
mean-pooling ablation, and the per-patch scores the attention gives a sentence."""

from __future__ import annotations

import math

import torch
from torch import nn


class PathFLIPTextRegionAttention(nn.Module):
    """Text-Region Attention: texts (queries) attend over a slide's regions (keys and values).

    ``gate="softmax"`` is multi-head attention as in the paper. ``gate="sigmoid"`` uses the same parameters but
    weighs each region by ``sigmoid(logit - log L)`` (L: the slide's real regions) without normalising over
    regions, so a sentence about tissue that fills much of the slide is not forced onto a few regions.
    """

    def __init__(self, embed_dim: int, num_heads: int, gate: str = "softmax"):
        super().__init__()
        self.query = nn.Linear(embed_dim, embed_dim)
        self.key = nn.Linear(embed_dim, embed_dim)
        self.value = nn.Linear(embed_dim, embed_dim)
        self.attention = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.gate = gate

    def forward(
        self,
        text_embeds: torch.Tensor,
        region_embeds: torch.Tensor,
        region_attention_mask: torch.Tensor,
        attention_grad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return text-conditioned region embeddings ``[B, C, E]`` and head-averaged weights ``[B, C, L]``.

        ``attention_grad`` ``[B, C]`` (bool): where False, the weights over regions are used but get no gradient,
        so that text's loss can move the region and text embeddings but not where the text looks.
        """
        queries, keys, values = self.query(text_embeds), self.key(region_embeds), self.value(region_embeds)
        if self.gate == "softmax" and attention_grad is None:
            conditioned, weights = self.attention(
                queries, keys, values, key_padding_mask=~region_attention_mask.bool(), need_weights=True,
                average_attn_weights=True,
            )  # fmt: skip
            return conditioned, weights
        return self._explicit_attention(queries, keys, values, region_attention_mask.bool(), attention_grad)

    def _explicit_attention(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        real: torch.Tensor,
        attention_grad: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention with the `nn.MultiheadAttention` projections (so weights load either way), for the
        sigmoid gate and for weights without gradient."""
        attention, heads = self.attention, self.attention.num_heads
        q, k, v = (
            nn.functional.linear(x, w, b).unflatten(-1, (heads, -1)).transpose(1, 2)
            for x, w, b in zip(
                (queries, keys, values), attention.in_proj_weight.chunk(3), attention.in_proj_bias.chunk(3), strict=True
            )
        )  # [B, H, C or L, d]
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, H, C, L]
        if self.gate == "sigmoid":
            count = real.sum(-1).clamp(min=1).to(logits.dtype)
            gates = torch.sigmoid(logits - count.log()[:, None, None, None]) * real[:, None, None, :]
        else:
            gates = logits.masked_fill(~real[:, None, None, :], float("-inf")).softmax(dim=-1)
        if attention_grad is not None:
            gates = torch.where(attention_grad.bool()[:, None, :, None], gates, gates.detach())
        conditioned = (gates @ v).transpose(1, 2).flatten(-2)
        return attention.out_proj(conditioned), gates.mean(dim=1)


def mean_region_pooling(
    text_embeds: torch.Tensor, region_embeds: torch.Tensor, region_attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ablation of the Text-Region Attention: every text gets the mean of the slide's regions."""
    mask = region_attention_mask.to(region_embeds.dtype)
    weights = mask / mask.sum(-1, keepdim=True).clamp(min=1)
    pooled = torch.einsum("bl,ble->be", weights, region_embeds)
    num_texts = text_embeds.shape[1]
    return pooled[:, None].expand(-1, num_texts, -1), weights[:, None].expand(-1, num_texts, -1)


def patch_attention_scores(region_scores: torch.Tensor, region_patch_weights: torch.Tensor,
                           region_patch_index: torch.Tensor, num_patches: int) -> torch.Tensor:  # fmt: skip
    """``[B, T, N]``: each patch row's TRA weight of its region for each text ``region_scores`` ``[B, T, L]`` x its
    Region Q-Former weight ``region_patch_weights`` ``[B, L, P]`` relative to a uniform weight over the region's
    patches (weight x patch count); ``region_patch_index`` ``[B, L, P]`` maps slots to rows (-1: empty)."""
    batch, num_regions, max_patches = region_patch_index.shape
    real_slots = (region_patch_index >= 0).to(region_scores.dtype)
    # Raw weights sum to 1 within each region, so a patch of a sparsely filled region (a tissue edge) would
    # outscore one of a full region for the same attention; relative to uniform they compare across regions.
    relative_weights = region_patch_weights * real_slots.sum(-1, keepdim=True)
    per_slot = region_scores[..., None] * relative_weights[:, None] * real_slots[:, None]  # [B, T, L, P]
    rows = region_patch_index.clamp(min=0).reshape(batch, 1, num_regions * max_patches)
    rows = rows.expand(-1, region_scores.shape[1], -1)
    patch_scores = per_slot.new_zeros(batch, region_scores.shape[1], num_patches)
    return patch_scores.scatter_add(2, rows, per_slot.reshape(*rows.shape))

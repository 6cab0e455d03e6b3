"""PathFLIP2's two losses: a SigLIP slide-caption loss and a soft top-k patch-concept loss, both over the
global batch (each process scores its local rows against the gathered columns, gradients kept for every shard).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .loss_pathflip import distributed_world, gather_with_grad


def _pair_labels(rows: int, columns: int, offset: int, device: torch.device) -> torch.Tensor:
    """+1 at (i, offset + i), -1 elsewhere: a local row's own pair among the global columns."""
    labels = -torch.ones(rows, columns, device=device)
    labels[torch.arange(rows, device=device), offset + torch.arange(rows, device=device)] = 1.0
    return labels


def _sigmoid_pair_loss(
    rows: torch.Tensor, columns: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, reduction: str
) -> torch.Tensor:
    """-log sigmoid(label x (scale cos + bias)) of local unit ``rows`` against the gathered unit ``columns``."""
    rank, _ = distributed_world()
    logits = scale * rows @ gather_with_grad(columns).T + bias
    labels = _pair_labels(rows.shape[0], logits.shape[1], rank * rows.shape[0], rows.device)
    losses = -F.logsigmoid(labels * logits)
    return losses.sum() / rows.shape[0] if reduction == "sum_per_row" else losses.mean()


def siglip_loss(slide_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor):
    """SigLIP between slides and their captions: the sum over all pairs divided by the local batch size, both
    directions averaged (the released code sums without dividing and does not run; SigLIP divides by B)."""
    slides, texts = F.normalize(slide_embeds, dim=-1), F.normalize(text_embeds, dim=-1)
    return 0.5 * (_sigmoid_pair_loss(slides, texts, scale, bias, "sum_per_row")
                  + _sigmoid_pair_loss(texts, slides, scale, bias, "sum_per_row"))  # fmt: skip


def soft_topk_pooling(
    patch_embeds: torch.Tensor,
    patch_attention_mask: torch.Tensor,
    text_embeds: torch.Tensor,
    temperature: float,
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each text's weighted mean of its slide's most similar patches.

    Args:
        patch_embeds: ``[B, N, E]`` local patch features; patch_attention_mask ``[B, N]`` 1 for real patches.
        text_embeds: ``[B, K, E]`` texts of each slide.
    Returns:
        ``(pooled [B, K, E], weights [B, K, N], selection [B, K, N])``: ``weights`` is the softmax over the slide's
        patches of cosine / ``temperature``; ``selection`` keeps the ``top_k`` largest weights, renormalised to
        sum to 1, and ``pooled`` is the selection-weighted sum of the (unnormalised) patch features.
    """
    cosine = torch.einsum("bke,bne->bkn", F.normalize(text_embeds, dim=-1), F.normalize(patch_embeds, dim=-1))
    padding = ~patch_attention_mask.bool()[:, None, :]
    weights = (cosine / temperature).masked_fill(padding, float("-inf")).softmax(dim=-1)
    top = weights.topk(min(top_k, weights.shape[-1]), dim=-1)
    selection = torch.zeros_like(weights).scatter(-1, top.indices, top.values)
    selection = selection / selection.sum(-1, keepdim=True).clamp(min=1e-8)
    return torch.einsum("bkn,bne->bke", selection, patch_embeds), weights, selection


def soft_topk_loss(pooled: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor):
    """Sigmoid loss between every pooled vector and every concept text of the global batch: the only positive of
    a pooled vector is the text it was pooled for; the mean over pairs, both directions averaged."""
    pooled = F.normalize(pooled.flatten(0, 1), dim=-1)
    texts = F.normalize(text_embeds.flatten(0, 1), dim=-1)
    return 0.5 * (_sigmoid_pair_loss(pooled, texts, scale, bias, "mean")
                  + _sigmoid_pair_loss(texts, pooled, scale, bias, "mean"))  # fmt: skip

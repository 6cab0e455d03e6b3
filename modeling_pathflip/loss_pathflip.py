"""The two PathFLIP losses, with negatives gathered across processes.

Both follow open_clip's "local loss with gathered features": each process scores its local rows
against the global batch and keeps gradients for every shard through an autograd-aware all-gather,
so the mean over processes equals the single-process loss of the whole global batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

TextRegionAttentionFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (texts, regions, mask[, attention_grad])


def distributed_world() -> tuple[int, int]:
    """Return ``(rank, world_size)``; ``(0, 1)`` when `torch.distributed` is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all processes along dim 0, keeping gradients for every shard."""
    _, world_size = distributed_world()
    if world_size == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (any dtype, no gradient) from all processes along dim 0."""
    _, world_size = distributed_world()
    if world_size == 1:
        return tensor
    shards = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(shards, tensor.contiguous())
    return torch.cat(shards, dim=0)


def text_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One int64 key per tokenised text (a polynomial hash of its real tokens); equal texts get equal keys
    whatever their padding."""
    positions = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    powers = torch.full((input_ids.shape[-1],), 1_000_003, dtype=torch.int64, device=input_ids.device).cumprod(0)
    return (input_ids.long() * attention_mask.long() * powers[positions]).sum(dim=-1)  # int64 wraps around


def slide_caption_contrastive_loss(
    slide_embeds: torch.Tensor,
    caption_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Symmetric InfoNCE between slides and their captions over the global batch.

    Args:
        slide_embeds: ``[B, E]`` local slide embeddings (any norm).
        caption_embeds: ``[B, E]`` local caption embeddings, row-aligned with the slides.
        logit_scale: exponentiated inverse temperature (a scalar tensor).
        label_smoothing: label smoothing of both cross-entropies.
    """
    rank, _ = distributed_world()
    slides = F.normalize(slide_embeds, dim=-1)
    captions = F.normalize(caption_embeds, dim=-1)
    all_slides = gather_with_grad(slides)
    all_captions = gather_with_grad(captions)
    targets = torch.arange(slides.shape[0], device=slides.device) + rank * slides.shape[0]
    slide_to_text = logit_scale * slides @ all_captions.T
    text_to_slide = logit_scale * captions @ all_slides.T
    return 0.5 * (
        F.cross_entropy(slide_to_text, targets, label_smoothing=label_smoothing)
        + F.cross_entropy(text_to_slide, targets, label_smoothing=label_smoothing)
    )


def region_subcaption_sigmoid_loss(
    region_embeds: torch.Tensor,
    region_attention_mask: torch.Tensor,
    subcaption_embeds: torch.Tensor,
    text_region_attention: TextRegionAttentionFn,
    log_scale: torch.Tensor,
    bias: torch.Tensor,
    negatives: str = "all",
    subcaption_keys: torch.Tensor | None = None,
    reduction: str = "mean",
    subcaption_similarity: torch.Tensor | None = None,
    duplicate_threshold: float | None = None,
    duplicates: str = "ignore",
    negatives_steer_attention: bool = True,
) -> torch.Tensor:
    """FLAIR-style sigmoid loss between text-conditioned region embeddings and subcaptions.

    For slide i, each candidate subcaption c attends over the slide's regions (u_ic = TRA(t_c, r_i)) and
    is scored with ``exp(log_scale) * cos(u_ic, t_c) + bias``; the slide's own K subcaptions are
    positives, subcaptions of the other slides of the global batch negatives, except that another
    slide's subcaption identical to one of slide i's own (same ``subcaption_keys``) is a positive:
    "focal necrosis." is true of every slide it was written for, and calling it a negative would
    teach the model to ignore the very region it names.

    Args:
        region_embeds: ``[B, L, E]`` local region embeddings.
        region_attention_mask: ``[B, L]`` 1 for real regions.
        subcaption_embeds: ``[B, K, E]`` local subcaption embeddings.
        text_region_attention: ``(text [B, C, E], regions, mask) -> (u [B, C, E], weights)``.
        log_scale: learnable log scale s.
        bias: learnable bias b.
        negatives: ``"all"`` subcaptions of every other slide, or ``"one_per_slide"`` (one random
            subcaption of each other slide, as in the authors' v1 code).
        subcaption_keys: ``[B, K]`` int64 text identities (`text_keys`); None: only own ones are positive.
        reduction: ``"mean"`` over all (slide, candidate) pairs, or ``"authors"`` (v1): per local slide, the sum
            over its candidates divided by ``K + G - 1`` (G: global batch size; the v1 candidate set, K own
            subcaptions plus one per other slide), then the mean over local slides. Equal for ``"one_per_slide"``;
            with ``"all"`` (``G x K`` candidates per slide) ``"authors"`` is ``G K / (K + G - 1)`` times ``"mean"``.
        subcaption_similarity: ``[B, K, H]`` unit-norm text vectors, without gradient, that say which texts are
            paraphrases: another slide's subcaption within ``duplicate_threshold`` cosine of one of slide i's own
            is not a negative for slide i but is left out (``duplicates="ignore"``) or a positive (``"positive"``).
            "The background is dense collagenous stroma." describes most slides of a cohort in other words too.
        negatives_steer_attention: False: a negative pair's loss reaches the region and text embeddings but not
            the attention weights over regions, so only a slide's own subcaptions teach where a text looks. A
            sentence every slide has ("dense collagenous stroma") is a negative for the other slides, and it could
            otherwise lower those scores by looking at their lesions instead of their stroma.
    """
    _check_region_loss_options(duplicate_threshold, subcaption_similarity, duplicates, reduction)
    rank, _ = distributed_world()
    batch, num_sub, dim = subcaption_embeds.shape
    all_subcaptions = gather_with_grad(subcaption_embeds)  # [G, K, E]
    global_batch = all_subcaptions.shape[0]
    own_slide = torch.arange(batch, device=region_embeds.device) + rank * batch  # global index of local slides
    index, weights = _candidate_index(negatives, own_slide, global_batch, num_sub)
    candidates = all_subcaptions.reshape(global_batch * num_sub, dim)[index]  # [B, C, E]
    labels = _same_text_labels(index, own_slide, subcaption_keys, global_batch, num_sub)
    if duplicate_threshold is not None:
        vectors = gather_no_grad(subcaption_similarity).flatten(0, 1)[index]  # [B, C, H]
        nearest = (vectors @ subcaption_similarity.transpose(1, 2)).amax(dim=-1)
        labels, weights = _paraphrases(labels, weights, nearest >= duplicate_threshold, duplicates)

    if negatives_steer_attention:
        conditioned, _ = text_region_attention(candidates, region_embeds, region_attention_mask)
    else:
        conditioned, _ = text_region_attention(candidates, region_embeds, region_attention_mask, labels > 0)
    cosine = F.cosine_similarity(conditioned, candidates, dim=-1)
    logits = log_scale.exp() * cosine + bias
    losses = -F.logsigmoid(labels * logits)
    if reduction == "authors":
        return ((losses * weights).sum(dim=1) / (num_sub + global_batch - 1)).mean()
    return (losses * weights).sum() / weights.sum()


def _check_region_loss_options(duplicate_threshold: float | None, subcaption_similarity: torch.Tensor | None,
                               duplicates: str, reduction: str) -> None:  # fmt: skip
    if duplicate_threshold is not None and subcaption_similarity is None:
        raise ValueError("duplicate_threshold needs subcaption_similarity (the unit-norm text vectors).")
    if duplicates not in ("ignore", "positive"):
        raise ValueError(f"Unknown duplicates mode {duplicates!r}; use 'ignore' or 'positive'.")
    if reduction not in ("mean", "authors"):
        raise ValueError(f"Unknown region loss reduction {reduction!r}; use 'mean' or 'authors'.")


def _same_text_labels(index: torch.Tensor, own_slide: torch.Tensor, subcaption_keys: torch.Tensor | None,
                      global_batch: int, num_sub: int) -> torch.Tensor:  # fmt: skip
    """``[B, C]``: +1 where the candidate ``index`` points at a text that slide i wrote itself (same key), else -1.
    Without keys every subcaption is distinct, so only a slide's own candidates are positive."""
    if subcaption_keys is None:
        all_keys = torch.arange(global_batch * num_sub, device=index.device).reshape(global_batch, -1)
        subcaption_keys = all_keys[own_slide]
    else:
        all_keys = gather_no_grad(subcaption_keys)  # [G, K]
    same = (all_keys.reshape(-1)[index][..., None] == subcaption_keys[:, None, :]).any(dim=-1)
    return torch.where(same, 1.0, -1.0)


def _candidate_index(
    negatives: str, own_slide: torch.Tensor, global_batch: int, num_sub: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each local slide's candidates as flat indices into the global ``[G * K]`` subcaptions, ``[B, C]``, and their
    weights in the mean (0: neither positive nor negative)."""
    batch, device = own_slide.shape[0], own_slide.device
    if negatives == "all":
        index = torch.arange(global_batch * num_sub, device=device).expand(batch, -1)
        return index, torch.ones(index.shape, device=device)
    if negatives == "one_per_slide":
        pick = torch.randint(num_sub, (global_batch,), device=device)
        own = own_slide[:, None] * num_sub + torch.arange(num_sub, device=device)  # [B, K]
        picked = torch.arange(global_batch, device=device) * num_sub + pick  # [G]
        index = torch.cat([own, picked[None].expand(batch, -1)], dim=1)
        # A slide's own pick is neither a positive nor a negative: leave it out of the mean.
        not_self = torch.arange(global_batch, device=device)[None, :] != own_slide[:, None]
        return index, torch.cat([torch.ones(batch, num_sub, device=device), not_self.float()], dim=1)
    raise ValueError(f"Unknown region_negatives {negatives!r}; use 'all' or 'one_per_slide'.")


def _paraphrases(
    labels: torch.Tensor, weights: torch.Tensor, paraphrase: torch.Tensor, duplicates: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Negatives that paraphrase one of the slide's own subcaptions: left out (weight 0) or made positive."""
    false_negative = paraphrase & (labels < 0)
    if duplicates == "positive":
        return torch.where(false_negative, 1.0, labels), weights
    return labels, weights.masked_fill(false_negative, 0.0)


def subcaption_contrast_loss(
    conditioned: torch.Tensor,
    subcaption_embeds: torch.Tensor,
    subcaption_keys: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Within-slide contrast: each subcaption's text-conditioned region embedding must match that subcaption
    better than the slide's other subcaptions (cross-entropy over the slide's K texts).

    The sigmoid region loss contrasts a subcaption only with other slides, so a finding every slide has
    ("dense collagenous stroma") gets no signal about where it is and attends wherever the salient lesions
    are. Here it must differ from the slide's lesion sentences, so it has to attend elsewhere. Another of
    the slide's subcaptions with the same text (same key) is left out rather than made a negative.

    Args:
        conditioned: ``[B, K, E]`` u_k = TRA(t_k, regions of the same slide).
        subcaption_embeds: ``[B, K, E]`` t_k.
        subcaption_keys: ``[B, K]`` text identities (`text_keys`).
        scale: the inverse temperature (a scalar tensor).
    """
    num_sub = subcaption_embeds.shape[1]
    logits = scale * F.normalize(conditioned, dim=-1) @ F.normalize(subcaption_embeds, dim=-1).transpose(1, 2)
    same_text = subcaption_keys[:, :, None] == subcaption_keys[:, None, :]
    self_pair = torch.eye(num_sub, dtype=torch.bool, device=logits.device)[None]
    logits = logits.masked_fill(same_text & ~self_pair, float("-inf"))
    targets = torch.arange(num_sub, device=logits.device).expand(logits.shape[0], -1)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def subcaption_discriminability(scores: torch.Tensor, subcaption_keys: torch.Tensor) -> torch.Tensor:
    """How well the region loss places each subcaption: the share of other slides (without that text) on which it
    scores below its own slide, ``[B, K]`` in [0, 1] (0.5 when no other slide can be compared).

    Args:
        scores: ``[B, B * K]`` score of every local subcaption (flattened slide-major) on every local slide.
        subcaption_keys: ``[B, K]`` text identities (`text_keys`).
    """
    batch, num_sub = subcaption_keys.shape
    columns = torch.arange(batch * num_sub, device=scores.device)
    own = scores[columns // num_sub, columns]  # [C]
    has_text = (subcaption_keys[:, :, None] == subcaption_keys.reshape(1, 1, -1)).any(dim=1)  # [B, C]
    comparable = (~has_text).float()
    below = ((scores < own[None]).float() * comparable).sum(0)
    count = comparable.sum(0)
    share = torch.where(count > 0, below / count.clamp(min=1), torch.full_like(count, 0.5))
    return share.reshape(batch, num_sub)


def region_exclusion_loss(
    region_weights: torch.Tensor, discriminability: torch.Tensor, subcaption_keys: torch.Tensor
) -> torch.Tensor:
    """Attention mass that subcaptions put on regions claimed by better placed ones of the same slide.

    A sentence the cross-slide region loss cannot place (one every slide has, such as the background stroma) is
    pushed off the regions that the slide's well placed sentences (its lesions) attend to; the claims themselves
    get no gradient. Placement ``a = clamp(2 d - 1, 0, 1)`` from the discriminability ``d``; sentence k is pushed
    off sentence j's claim (its weights scaled to peak at 1) by ``max(a_j - a_k, 0)``, so lesion sentences, placed
    about alike, barely push each other, and the background is pushed by all of them.

    Args:
        region_weights: ``[B, K, L]`` each subcaption's Text-Region Attention weights over its slide's regions.
        discriminability: ``[B, K]`` from `subcaption_discriminability` (no gradient).
        subcaption_keys: ``[B, K]`` text identities; pairs with the same text are left out.
    """
    placed = (2 * discriminability - 1).clamp(0, 1)
    claims = region_weights.detach()
    claims = claims / claims.amax(dim=-1, keepdim=True).clamp(min=1e-6)  # each claim peaks at 1
    push = (placed[:, None, :] - placed[:, :, None]).clamp(min=0)  # [B, K (pushed), K (claiming)]
    push = push * (subcaption_keys[:, :, None] != subcaption_keys[:, None, :]).to(push.dtype)
    pressure = push @ claims  # [B, K, L]
    return (region_weights * pressure).sum(dim=-1).mean()

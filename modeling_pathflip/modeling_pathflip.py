"""PathFLIP: fine-grained language-image pretraining for whole slide images.

A bag of frozen patch features is projected, grouped into 4096-px regions (the processor builds the
region index from coordinates), and read by one Q-Former twice: over all patches (slide token) and
over the patches of each region (region tokens). A small transformer contextualises
[slide; regions]. Captions align with the slide embedding (InfoNCE); subcaptions attend over the
regions through the Text-Region Attention and align with the resulting text-conditioned region
embeddings (sigmoid loss). Attention weights of that step, composed with the Q-Former's
region->patch attention, ground any sentence in the slide.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, Blip2QFormerModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .attention_pathflip import PathFLIPTextRegionAttention, mean_region_pooling, patch_attention_scores
from .configuration_pathflip import PathFLIPConfig
from .grounding_head_pathflip import PathFLIPGroundingHead, check_grounding_head_wanted
from .loss_pathflip import (
    region_exclusion_loss,
    region_subcaption_sigmoid_loss,
    slide_caption_contrastive_loss,
    subcaption_contrast_loss,
    subcaption_discriminability,
    text_keys,
)


@dataclass
class PathFLIPSlideOutput(ModelOutput):
    """Slide and region embeddings of a batch of bags.

    Args:
        slide_embeds: ``[B, E]`` slide embedding v (context token 0).
        region_embeds: ``[B, L, E]`` region embeddings r_l (zero for padded regions).
        region_attention_mask: ``[B, L]`` 1 for real regions.
        region_patch_weights: ``[B, L, P]`` Region Q-Former attention over each region's patches (last
            cross-attention layer, mean over heads and queries); only when requested.
    """

    slide_embeds: torch.FloatTensor | None = None
    region_embeds: torch.FloatTensor | None = None
    region_attention_mask: torch.LongTensor | None = None
    region_patch_weights: torch.FloatTensor | None = None


@dataclass
class PathFLIPGroundingOutput(ModelOutput):
    """Text grounding of a batch of bags.

    Args:
        patch_scores: ``[B, T, N]`` score of each patch row for each text (0 on padding).
        region_scores: ``[B, T, L]`` Text-Region Attention weights of each text over the regions.
        region_patch_weights: ``[B, L, P]`` weights of each region's patches.
    """

    patch_scores: torch.FloatTensor | None = None
    region_scores: torch.FloatTensor | None = None
    region_patch_weights: torch.FloatTensor | None = None


@dataclass
class PathFLIPOutput(ModelOutput):
    """Output of [`PathFLIPModel.forward`].

    Args:
        loss: weighted sum of the enabled losses (when a loss was requested).
        loss_slide: slide-caption InfoNCE.
        loss_region: region-subcaption sigmoid loss.
        logits_per_slide: ``[B, B]`` scaled cosine similarity of slides (rows) to captions.
        logits_per_text: ``[B, B]`` its transpose.
        slide_embeds, text_embeds: ``[B, E]`` slide and caption embeddings.
        region_embeds: ``[B, L, E]``; region_attention_mask: ``[B, L]``.
        subcaption_embeds: ``[B, K, E]`` subcaption embeddings.
    """

    loss: torch.FloatTensor | None = None
    loss_slide: torch.FloatTensor | None = None
    loss_region: torch.FloatTensor | None = None
    logits_per_slide: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    slide_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    region_embeds: torch.FloatTensor | None = None
    region_attention_mask: torch.LongTensor | None = None
    subcaption_embeds: torch.FloatTensor | None = None


POSITION_FREQUENCIES = 4


def fourier_positions(positions: torch.Tensor) -> torch.Tensor:
    """sin/cos of pi * k * p for k = 1..POSITION_FREQUENCIES: ``[..., 2]`` in [0, 1] -> ``[..., 4 * F]``."""
    frequencies = torch.arange(1, POSITION_FREQUENCIES + 1, device=positions.device, dtype=positions.dtype)
    angles = torch.pi * positions[..., None] * frequencies  # [..., 2, F]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


class PathFLIPPreTrainedModel(PreTrainedModel):
    config_class = PathFLIPConfig
    base_model_prefix = "pathflip"
    main_input_name = "patch_features"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Blip2QFormerLayer", "TransformerEncoderLayer"]
    # Contrastive losses are means over the batch: never rescale them by a token count.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, PathFLIPModel):
            config = self.config
            init.normal_(module.query_tokens, mean=0.0, std=config.initializer_range)
            init.constant_(module.logit_scale, config.logit_scale_init_value)
            init.constant_(module.region_logit_scale, config.region_logit_scale_init_value)
            init.constant_(module.region_logit_bias, config.region_logit_bias_init_value)


class PathFLIPModel(PathFLIPPreTrainedModel):
    """PathFLIP alignment model: slide/region encoder, text tower, Text-Region Attention and losses."""

    def __init__(self, config: PathFLIPConfig):
        super().__init__(config)
        qformer_config = config.qformer_config
        self.patch_projector = nn.Sequential(
            nn.Linear(config.patch_dim, config.patch_projection_dim), nn.LayerNorm(config.patch_projection_dim)
        )
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, qformer_config.hidden_size))
        # Eager attention: grounding needs the cross-attention weights, and with few queries the
        # eager weights cost O(N) memory like the keys themselves.
        self.qformer = Blip2QFormerModel._from_config(qformer_config, attn_implementation="eager")
        self.visual_projection = nn.Linear(qformer_config.hidden_size, config.embed_dim, bias=False)
        self.context_encoder = None
        if config.context_layers:
            context_layer = nn.TransformerEncoderLayer(
                config.embed_dim,
                config.context_heads,
                config.context_intermediate_size,
                config.context_dropout,
                batch_first=True,
            )
            self.context_encoder = nn.TransformerEncoder(
                context_layer, config.context_layers, enable_nested_tensor=False
            )
        self.text_model = text_model_without_pooler(config.text_config)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.embed_dim, bias=False)
        self.text_region_attention = PathFLIPTextRegionAttention(config.embed_dim, config.tra_heads, config.tra_gate)
        self.region_position_embedding = None
        if config.use_region_positions:
            self.region_position_embedding = nn.Linear(4 * POSITION_FREQUENCIES, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(0.0))
        self.region_logit_scale = nn.Parameter(torch.tensor(0.0))
        self.region_logit_bias = nn.Parameter(torch.tensor(0.0))
        self.grounding_head = None
        if config.grounding_head is not None and config.grounding_head.get("vocabulary_size"):
            shape = {name: value for name, value in config.grounding_head.items() if name != "attention_weight"}
            self.grounding_head = PathFLIPGroundingHead(config.patch_dim, config.embed_dim, **shape)
        self.post_init()

    # ---- slide side -------------------------------------------------------------------------

    def _read_patches(
        self, patches: torch.Tensor, patch_mask: torch.Tensor, output_attentions: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the shared Q-Former over projected patches: one token ``[n, E]`` (+ patch weights ``[n, P]``)."""
        queries = self.query_tokens.expand(patches.shape[0], -1, -1)
        outputs = self.qformer(
            query_embeds=queries,
            encoder_hidden_states=patches,
            encoder_attention_mask=patch_mask,
            output_attentions=output_attentions,
        )
        token = self.visual_projection(outputs.last_hidden_state.mean(dim=1))
        if not output_attentions:
            return token, None
        if not outputs.cross_attentions:
            raise RuntimeError(
                "Grounding needs the Q-Former's cross-attention weights, which only eager attention returns; "
                f"this Q-Former uses {self.qformer.config._attn_implementation!r}. Load the model without "
                "attn_implementation, or call model.qformer.set_attn_implementation('eager')."
            )
        return token, outputs.cross_attentions[-1].mean(dim=(1, 2))

    def _read_regions(
        self,
        projected: torch.Tensor,
        region_patch_index: torch.Tensor,
        region_attention_mask: torch.Tensor,
        output_attentions: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Region Q-Former over real regions only, ``region_chunk_size`` regions per call."""
        batch, num_regions, max_patches = region_patch_index.shape
        flat_index = region_patch_index.reshape(batch * num_regions, max_patches)
        bag_of_region = torch.arange(batch, device=projected.device).repeat_interleave(num_regions)
        real_regions = region_attention_mask.reshape(-1).nonzero().squeeze(1)
        tokens, weights = [], []
        for chunk in real_regions.split(self.config.region_chunk_size):
            index = flat_index[chunk]
            patch_mask = index >= 0
            patches = projected[bag_of_region[chunk, None], index.clamp(min=0)]
            token, patch_weights = self._read_patches(patches, patch_mask.long(), output_attentions)
            tokens.append(token)
            weights.append(patch_weights)
        region_tokens = projected.new_zeros(batch * num_regions, self.config.embed_dim)
        if tokens:
            region_tokens = region_tokens.index_copy(0, real_regions, torch.cat(tokens))
        region_tokens = region_tokens.reshape(batch, num_regions, -1)
        if not output_attentions:
            return region_tokens, None
        region_weights = projected.new_zeros(batch * num_regions, max_patches)
        if weights:
            region_weights = region_weights.index_copy(0, real_regions, torch.cat(weights))
        return region_tokens, region_weights.reshape(batch, num_regions, max_patches)

    def get_slide_features(
        self,
        patch_features: torch.Tensor,
        patch_attention_mask: torch.Tensor,
        region_patch_index: torch.Tensor,
        region_attention_mask: torch.Tensor,
        region_positions: torch.Tensor | None = None,
        output_region_patch_weights: bool = False,
    ) -> PathFLIPSlideOutput:
        """Encode bags into slide and region embeddings.

        Args:
            patch_features: ``[B, N, D]`` padded patch features.
            patch_attention_mask: ``[B, N]`` 1 for real patches.
            region_patch_index: ``[B, L, P]`` row of each region's patches in ``patch_features`` (-1 = pad).
            region_attention_mask: ``[B, L]`` 1 for real regions.
            region_positions: ``[B, L, 2]`` region (row, column) scaled to [0, 1] over the slide; used when
                ``config.use_region_positions`` (the processor always returns it).
            output_region_patch_weights: also return the Region Q-Former patch weights (for grounding).
        """
        dtype = self.patch_projector[0].weight.dtype
        projected = self.patch_projector(patch_features.to(dtype))
        slide_token, _ = self._read_patches(projected, patch_attention_mask.long(), output_attentions=False)
        region_tokens, region_weights = self._read_regions(
            projected, region_patch_index, region_attention_mask, output_region_patch_weights
        )
        if self.region_position_embedding is not None:
            if region_positions is None:
                raise ValueError(
                    "This model embeds region positions (config.use_region_positions): pass region_positions, "
                    "as PathFLIPProcessor returns it."
                )
            where = self.region_position_embedding(fourier_positions(region_positions.to(region_tokens.dtype)))
            region_tokens = region_tokens + where * region_attention_mask[..., None].to(where.dtype)
        tokens = torch.cat([slide_token[:, None], region_tokens], dim=1)
        contextual = tokens
        if self.context_encoder is not None:
            padding = torch.cat([torch.zeros_like(region_attention_mask[:, :1]), 1 - region_attention_mask.long()], 1)
            contextual = self.context_encoder(tokens, src_key_padding_mask=padding.bool())
        region_embeds = contextual[:, 1:] * region_attention_mask[..., None].to(contextual.dtype)
        return PathFLIPSlideOutput(
            slide_embeds=contextual[:, 0],
            region_embeds=region_embeds,
            region_attention_mask=region_attention_mask,
            region_patch_weights=region_weights,
        )

    # ---- text side --------------------------------------------------------------------------

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Embed texts: ``input_ids`` ``[..., S]`` -> ``[..., E]`` (e.g. ``[B, K, S]`` subcaptions -> ``[B, K, E]``)."""
        return self.text_projection(self._pooled_text(input_ids, attention_mask))

    def _pooled_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The text tower's pooled output before projection, ``[..., S]`` -> ``[..., H]``."""
        leading = input_ids.shape[:-1]
        input_ids = input_ids.reshape(-1, input_ids.shape[-1])
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.reshape(input_ids.shape)
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.config.text_pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask[..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return pooled.reshape(*leading, -1)

    def zero_shot_logit_scale(self) -> torch.Tensor:
        """The scale of a zero-shot softmax over classes: the slide loss's learned inverse temperature."""
        return self.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def get_text_conditioned_region_features(
        self,
        text_embeds: torch.Tensor,
        region_embeds: torch.Tensor,
        region_attention_mask: torch.Tensor,
        attention_grad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Text-conditioned region embeddings ``u`` ``[B, C, E]`` and weights over regions ``[B, C, L]``.

        ``text_embeds`` is ``[B, C, E]`` or ``[C, E]`` (the same texts for every slide). ``attention_grad``
        ``[B, C]``: see [`PathFLIPTextRegionAttention`].
        """
        if text_embeds.dim() == 2:
            text_embeds = text_embeds[None].expand(region_embeds.shape[0], -1, -1)
        if self.config.use_text_region_attention:
            return self.text_region_attention(text_embeds, region_embeds, region_attention_mask, attention_grad)
        return mean_region_pooling(text_embeds, region_embeds, region_attention_mask)

    def get_grounding(
        self,
        patch_features: torch.Tensor,
        patch_attention_mask: torch.Tensor,
        region_patch_index: torch.Tensor,
        region_attention_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        region_positions: torch.Tensor | None = None,
        slide_features: PathFLIPSlideOutput | None = None,
        use_grounding_head: bool | None = None,
    ) -> PathFLIPGroundingOutput:
        """Score every patch of every bag for each text ``[T, S]``, aligned with the rows of ``patch_features`` (0 on
        padding): the attention's scores (`patch_attention_scores`), or with a fitted grounding head (`pathflip
        fit-grounding`) and ``use_grounding_head`` not False, the head's log-odds plus the attention's evidence
        (`PathFLIPGroundingHead.with_attention`). ``slide_features``: ``get_slide_features(...,
        output_region_patch_weights=True)`` of the same bags, kept by a caller that grounds many texts in one slide.
        """
        check_grounding_head_wanted(self, use_grounding_head)
        head = self.grounding_head if use_grounding_head is not False else None
        text_embeds = self.get_text_features(input_ids, attention_mask)
        if head is not None:
            log_odds = head.log_odds(patch_features, text_embeds) * patch_attention_mask[:, None]
            if (weight := self.config.grounding_head["attention_weight"]) == 0:  # no attention pass to discard
                return PathFLIPGroundingOutput(patch_scores=log_odds)
        attention = self._attention_grounding(text_embeds, patch_features, patch_attention_mask, region_patch_index,
                                              region_attention_mask, region_positions, slide_features)  # fmt: skip
        if head is None:
            return attention
        attention.patch_scores = head.with_attention(log_odds, attention.patch_scores, patch_attention_mask, weight)
        return attention

    def _attention_grounding(self, text_embeds, patch_features, patch_attention_mask, region_patch_index,
                             region_attention_mask, region_positions, slide_features):  # fmt: skip
        """`get_grounding`'s attention scores (`patch_attention_scores`) of texts ``text_embeds`` ``[T, E]``."""
        slide = slide_features
        if slide is None or slide.region_patch_weights is None:
            slide = self.get_slide_features(
                patch_features, patch_attention_mask, region_patch_index, region_attention_mask, region_positions, True
            )
        _, region_scores = self.get_text_conditioned_region_features(
            text_embeds, slide.region_embeds, region_attention_mask
        )
        patch_scores = patch_attention_scores(region_scores, slide.region_patch_weights, region_patch_index,
                                              patch_features.shape[1])  # fmt: skip
        return PathFLIPGroundingOutput(
            patch_scores=patch_scores, region_scores=region_scores, region_patch_weights=slide.region_patch_weights
        )

    # ---- training -----------------------------------------------------------------------------

    def forward(
        self,
        patch_features: torch.Tensor,
        patch_attention_mask: torch.Tensor,
        region_patch_index: torch.Tensor,
        region_attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        subcaption_input_ids: torch.Tensor | None = None,
        subcaption_attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        region_positions: torch.Tensor | None = None,
    ) -> PathFLIPOutput:
        """Embed bags and captions; with ``return_loss`` (default: when captions are given) add the losses.

        Inputs are what [`PathFLIPProcessor`] returns: see [`get_slide_features`] for the bag tensors,
        ``input_ids`` ``[B, S]`` are the captions and ``subcaption_input_ids`` ``[B, K, S]`` the subcaptions.
        """
        return_loss = input_ids is not None if return_loss is None else return_loss
        slide = self.get_slide_features(
            patch_features, patch_attention_mask, region_patch_index, region_attention_mask, region_positions
        )
        text_embeds = self.get_text_features(input_ids, attention_mask) if input_ids is not None else None
        subcaption_embeds = subcaption_similarity = None
        if subcaption_input_ids is not None:
            pooled = self._pooled_text(subcaption_input_ids, subcaption_attention_mask)
            subcaption_embeds = self.text_projection(pooled)
            if self.config.region_duplicate_threshold is not None:
                subcaption_similarity = nn.functional.normalize(pooled.detach(), dim=-1)

        logits_per_slide = logits_per_text = None
        logit_scale = self.zero_shot_logit_scale()
        if text_embeds is not None:
            slides = nn.functional.normalize(slide.slide_embeds, dim=-1)
            texts = nn.functional.normalize(text_embeds, dim=-1)
            logits_per_slide = logit_scale * slides @ texts.T
            logits_per_text = logits_per_slide.T

        loss = loss_slide = loss_region = None
        if return_loss:
            keys = None
            if subcaption_input_ids is not None:
                mask = subcaption_attention_mask
                keys = text_keys(subcaption_input_ids, torch.ones_like(subcaption_input_ids) if mask is None else mask)
            loss, loss_slide, loss_region = self._losses(
                slide, text_embeds, subcaption_embeds, logit_scale, keys, subcaption_similarity
            )
        return PathFLIPOutput(
            loss=loss,
            loss_slide=loss_slide,
            loss_region=loss_region,
            logits_per_slide=logits_per_slide,
            logits_per_text=logits_per_text,
            slide_embeds=slide.slide_embeds,
            text_embeds=text_embeds,
            region_embeds=slide.region_embeds,
            region_attention_mask=region_attention_mask,
            subcaption_embeds=subcaption_embeds,
        )

    def _losses(
        self,
        slide: PathFLIPSlideOutput,
        text_embeds: torch.Tensor | None,
        subcaption_embeds: torch.Tensor | None,
        logit_scale: torch.Tensor,
        subcaption_keys: torch.Tensor | None,
        subcaption_similarity: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Weighted total, slide and region losses (each None when switched off)."""
        config = self.config
        loss, loss_slide, loss_region = 0.0, None, None
        if config.use_slide_loss:
            if text_embeds is None:
                raise ValueError(
                    "return_loss=True needs captions (input_ids): give every bag a caption, or call "
                    "get_slide_features for embeddings only."
                )
            loss_slide = slide_caption_contrastive_loss(
                slide.slide_embeds, text_embeds, logit_scale, config.label_smoothing
            )
            loss = loss + config.slide_loss_weight * loss_slide
        if config.use_region_loss:
            if subcaption_embeds is None:
                raise ValueError(
                    "return_loss=True needs subcaption_input_ids for the region loss: build the batch with "
                    "PathFLIPProcessor (it decomposes captions), or set use_region_loss=False."
                )
            loss_region = region_subcaption_sigmoid_loss(
                slide.region_embeds,
                slide.region_attention_mask,
                subcaption_embeds,
                self.get_text_conditioned_region_features,
                self.region_logit_scale,
                self.region_logit_bias,
                config.region_negatives,
                subcaption_keys,
                reduction=config.region_loss_reduction,
                subcaption_similarity=subcaption_similarity,
                duplicate_threshold=config.region_duplicate_threshold,
                duplicates=config.region_duplicates,
                negatives_steer_attention=config.region_negatives_steer_attention,
            )
            if config.subcaption_contrast_weight > 0 or config.region_exclusion_weight > 0:
                # each subcaption over its own slide's regions, for the within-slide terms
                conditioned, weights = self.get_text_conditioned_region_features(
                    subcaption_embeds, slide.region_embeds, slide.region_attention_mask
                )
            if config.subcaption_contrast_weight > 0:
                contrast = subcaption_contrast_loss(
                    conditioned, subcaption_embeds, subcaption_keys, self.region_logit_scale.exp()
                )
                loss_region = loss_region + config.subcaption_contrast_weight * contrast
            if config.region_exclusion_weight > 0:
                discriminability = self._discriminability(slide, subcaption_embeds, subcaption_keys)
                exclusion = region_exclusion_loss(weights, discriminability, subcaption_keys)
                loss_region = loss_region + config.region_exclusion_weight * exclusion
            loss = loss + config.region_loss_weight * loss_region
        return loss, loss_slide, loss_region

    @torch.no_grad()
    def _discriminability(
        self, slide: PathFLIPSlideOutput, subcaption_embeds: torch.Tensor, subcaption_keys: torch.Tensor
    ) -> torch.Tensor:
        """`subcaption_discriminability` over the local batch: each subcaption scored on every local slide."""
        texts = subcaption_embeds.flatten(0, 1)
        regions, mask = slide.region_embeds, slide.region_attention_mask
        conditioned, _ = self.get_text_conditioned_region_features(texts, regions, mask)
        scores = nn.functional.cosine_similarity(conditioned, texts[None], dim=-1)  # [B, B * K]
        return subcaption_discriminability(scores, subcaption_keys)


def text_model_without_pooler(text_config) -> PreTrainedModel:
    """Build the text tower; BERT-like models drop their unused pooler (we pool ourselves)."""
    try:
        return AutoModel.from_config(text_config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(text_config)

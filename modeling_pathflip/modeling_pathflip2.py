"""PathFLIP2: the architecture of the PathFLIP authors' released weights (github.com/cyclexfy/PathFLIP2).

Patch features are projected (Linear + RMSNorm) and read by a latent slide encoder: 1 global + 128 latent tokens
cross-attend to the patches and then to each other; a patch decoder lets every patch attend back to the tokens,
and its output is added to the projected patches once more. Token 0 gives the global slide embedding, the decoded
patches the local per-patch features. A BERT-like text tower (mean pooling) gives a global caption embedding and
local concept embeddings. A SigLIP loss aligns slides and captions; a soft top-k loss pools, for every concept,
the patches most similar to it, whose softmax weights are the released grounding map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_pathflip2 import PathFLIP2Config
from .loss_pathflip2 import siglip_loss, soft_topk_loss, soft_topk_pooling
from .modeling_pathflip import text_model_without_pooler


@dataclass
class PathFLIP2SlideOutput(ModelOutput):
    """Slide embedding and per-patch features of a batch of bags.

    Args:
        slide_embeds: ``[B, E]`` global slide embedding (token 0, global projection head).
        patch_embeds: ``[B, N, E]`` local per-patch features (local projection head).
        patch_attention_mask: ``[B, N]`` 1 for real patches.
        global_attention: ``[B, N]`` the global token's cross-attention over the patches (head-averaged); only
            when requested.
    """

    slide_embeds: torch.FloatTensor | None = None
    patch_embeds: torch.FloatTensor | None = None
    patch_attention_mask: torch.LongTensor | None = None
    global_attention: torch.FloatTensor | None = None


@dataclass
class PathFLIP2GroundingOutput(ModelOutput):
    """Text grounding of a batch of bags.

    Args:
        patch_scores: ``[B, T, N]`` softmax over each slide's patches of cosine(text, patch) / temperature (the
            released grounding map; 0 on padding).
        selection_weights: ``[B, T, N]`` the soft top-k selection: the ``soft_topk`` largest weights, renormalised.
    """

    patch_scores: torch.FloatTensor | None = None
    selection_weights: torch.FloatTensor | None = None


@dataclass
class PathFLIP2Output(ModelOutput):
    """Output of [`PathFLIP2Model.forward`].

    Args:
        loss: sum of the enabled losses (when a loss was requested); loss_global: SigLIP slide-caption loss;
            loss_local: soft top-k patch-concept loss.
        logits_per_slide: ``[B, B]`` SigLIP logits (scale x cosine + bias) of slides (rows) against captions.
        logits_per_text: ``[B, B]`` its transpose.
        slide_embeds, text_embeds: ``[B, E]``; patch_embeds: ``[B, N, E]``; patch_attention_mask: ``[B, N]``;
        subcaption_embeds: ``[B, K, E]`` concept texts (local projection).
    """

    loss: torch.FloatTensor | None = None
    loss_global: torch.FloatTensor | None = None
    loss_local: torch.FloatTensor | None = None
    logits_per_slide: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    slide_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    patch_embeds: torch.FloatTensor | None = None
    patch_attention_mask: torch.LongTensor | None = None
    subcaption_embeds: torch.FloatTensor | None = None


def _projection(config: PathFLIP2Config, in_features: int) -> nn.Sequential:
    """Linear + RMSNorm + dropout: every projection of the released model."""
    return nn.Sequential(
        nn.Linear(in_features, config.embed_dim),
        nn.RMSNorm(config.embed_dim, eps=config.rms_norm_eps),
        nn.Dropout(config.projection_dropout),
    )


class PathFLIP2AttentionBlock(nn.Module):
    """Pre-norm attention then feed-forward: ``x + MHA(norm_q(x), norm_kv(y))``, then ``+ FFN(norm2(...))``.

    A self-attention block normalises once (``norm_q``) for queries, keys and values.
    """

    def __init__(self, config: PathFLIP2Config, self_attention: bool):
        super().__init__()
        dim, hidden, dropout = config.embed_dim, config.ffn_ratio * config.embed_dim, config.attention_dropout
        self.mha = nn.MultiheadAttention(dim, config.num_heads, dropout=dropout, batch_first=True)
        self.norm_q = nn.RMSNorm(dim, eps=config.rms_norm_eps)
        self.norm_kv = None if self_attention else nn.RMSNorm(dim, eps=config.rms_norm_eps)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))  # fmt: skip
        self.norm2 = nn.RMSNorm(dim, eps=config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` attends to ``y`` (itself for a self-attention block); returns the new ``x`` and the weights."""
        query = self.norm_q(x)
        context = query if self.norm_kv is None else self.norm_kv(y)
        attended, weights = self.mha(query, context, context, key_padding_mask=key_padding_mask,
                                     need_weights=need_weights)  # fmt: skip
        x = x + attended
        return x + self.ffn(self.norm2(x)), weights


class PathFLIP2SlideEncoder(nn.Module):
    """Latent tokens read the patches (cross, then self attention); then the patches read the tokens."""

    def __init__(self, config: PathFLIP2Config):
        super().__init__()
        self.visual_tokens = nn.Parameter(torch.zeros(1, 1 + config.num_latent_tokens, config.embed_dim))
        self.encoder_layers = nn.ModuleList(
            nn.ModuleDict({"cross": PathFLIP2AttentionBlock(config, False),
                           "self": PathFLIP2AttentionBlock(config, True)})  # fmt: skip
            for _ in range(config.num_encoder_layers)
        )
        self.patch_decoder = PathFLIP2AttentionBlock(config, False)

    def forward(
        self, patches: torch.Tensor, patch_attention_mask: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(tokens [B, T, E], patch features [B, N, E], global token's first cross-attention [B, N] or None)``."""
        padding = ~patch_attention_mask.bool()
        tokens = self.visual_tokens.expand(patches.shape[0], -1, -1)
        global_attention = None
        for number, layer in enumerate(self.encoder_layers):
            wanted = need_weights and number == 0
            tokens, weights = layer["cross"](tokens, patches, key_padding_mask=padding, need_weights=wanted)
            global_attention = weights[:, 0] if wanted else global_attention
            tokens, _ = layer["self"](tokens)
        decoded, _ = self.patch_decoder(patches, tokens)
        # The released model adds the projected patches once more after the decoder's own residual.
        return tokens, decoded + patches, global_attention


class PathFLIP2PreTrainedModel(PreTrainedModel):
    config_class = PathFLIP2Config
    base_model_prefix = "pathflip2"
    main_input_name = "patch_features"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["PathFLIP2AttentionBlock"]
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, PathFLIP2SlideEncoder):
            init.normal_(module.visual_tokens, mean=0.0, std=1.0)  # the released model's std-1 tokens
        if isinstance(module, PathFLIP2Model):
            config = self.config
            init.constant_(module.global_logit_scale, config.global_logit_scale_init_value)
            init.constant_(module.global_logit_bias, config.global_logit_bias_init_value)
            init.constant_(module.local_logit_scale, config.local_logit_scale_init_value)
            init.constant_(module.local_logit_bias, config.local_logit_bias_init_value)


class PathFLIP2Model(PathFLIP2PreTrainedModel):
    """PathFLIP2 alignment model: latent slide encoder, text tower with global and local heads, two losses."""

    def __init__(self, config: PathFLIP2Config):
        super().__init__(config)
        self.image_proj = _projection(config, config.patch_dim)
        self.slide_encoder = PathFLIP2SlideEncoder(config)
        self.image_projection_global = _projection(config, config.embed_dim)
        self.image_projection_local = _projection(config, config.embed_dim)
        self.text_model = text_model_without_pooler(config.text_config)
        self.text_projection_global = _projection(config, config.text_config.hidden_size)
        self.text_projection_local = _projection(config, config.text_config.hidden_size)
        self.global_logit_scale = nn.Parameter(torch.tensor(0.0))
        self.global_logit_bias = nn.Parameter(torch.tensor(0.0))
        self.local_logit_scale = nn.Parameter(torch.tensor(0.0))
        self.local_logit_bias = nn.Parameter(torch.tensor(0.0))
        self.post_init()

    def get_slide_features(
        self,
        patch_features: torch.Tensor,
        patch_attention_mask: torch.Tensor | None = None,
        return_attentions: bool = False,
    ) -> PathFLIP2SlideOutput:
        """Embed bags: ``patch_features [B, N, D]`` (``patch_attention_mask [B, N]``) -> slide and patch features."""
        if patch_attention_mask is None:
            patch_attention_mask = patch_features.new_ones(patch_features.shape[:2], dtype=torch.long)
        patches = self.image_proj(patch_features)
        tokens, decoded, global_attention = self.slide_encoder(patches, patch_attention_mask, return_attentions)
        return PathFLIP2SlideOutput(
            slide_embeds=self.image_projection_global(tokens[:, 0]),
            patch_embeds=self.image_projection_local(decoded),
            patch_attention_mask=patch_attention_mask,
            global_attention=global_attention,
        )

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, projection: str = "global"
    ) -> torch.Tensor:
        """Embed texts ``[..., S]`` -> ``[..., E]`` with the ``"global"`` (captions, class prompts) or ``"local"``
        (concepts, grounding sentences) head."""
        if projection not in ("global", "local"):
            raise ValueError(f"projection must be 'global' or 'local', got {projection!r}.")
        leading = input_ids.shape[:-1]
        input_ids = input_ids.reshape(-1, input_ids.shape[-1])
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.reshape(
            input_ids.shape)  # fmt: skip
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.config.text_pooling == "cls":
            pooled = hidden[:, 0]
        elif self.config.text_pooling == "mean_unmasked":  # the released model: padding positions count too
            pooled = hidden.mean(dim=1)
        else:
            mask = attention_mask[..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        head = self.text_projection_global if projection == "global" else self.text_projection_local
        return head(pooled).reshape(*leading, -1)

    def zero_shot_logit_scale(self) -> torch.Tensor:
        """The scale of a zero-shot softmax over classes: the SigLIP scale (used linearly, as in training)."""
        return self.global_logit_scale

    def get_grounding(
        self,
        patch_features: torch.Tensor,
        patch_attention_mask: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        slide_features: PathFLIP2SlideOutput | None = None,
    ) -> PathFLIP2GroundingOutput:
        """Score every patch of every bag for each text ``[T, S]``: the soft top-k weights of the texts' local
        embeddings over the slide's local patch features (aligned with the rows of ``patch_features``).
        ``slide_features``: ``get_slide_features`` of the same bags, kept by a caller grounding many texts."""
        slide = slide_features if slide_features is not None else self.get_slide_features(
            patch_features, patch_attention_mask)  # fmt: skip
        texts = self.get_text_features(input_ids, attention_mask, projection="local")
        texts = texts[None].expand(slide.patch_embeds.shape[0], -1, -1)
        _, weights, selection = soft_topk_pooling(slide.patch_embeds, slide.patch_attention_mask, texts,
                                                  self.config.soft_topk_temperature, self.config.soft_topk)  # fmt: skip
        return PathFLIP2GroundingOutput(patch_scores=weights, selection_weights=selection)

    def forward(
        self,
        patch_features: torch.Tensor,
        patch_attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        subcaption_input_ids: torch.Tensor | None = None,
        subcaption_attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
    ) -> PathFLIP2Output:
        """Embed bags and captions (``input_ids [B, S]``) and concepts (``subcaption_input_ids [B, K, S]``); with
        ``return_loss`` (default: when captions are given) add the losses."""
        return_loss = input_ids is not None if return_loss is None else return_loss
        slide = self.get_slide_features(patch_features, patch_attention_mask)
        text_embeds = self.get_text_features(input_ids, attention_mask) if input_ids is not None else None
        subcaption_embeds = None
        if subcaption_input_ids is not None:
            subcaption_embeds = self.get_text_features(subcaption_input_ids, subcaption_attention_mask, "local")
        logits_per_slide = logits_per_text = None
        if text_embeds is not None:
            normalize = nn.functional.normalize
            cosine = normalize(slide.slide_embeds, dim=-1) @ normalize(text_embeds, dim=-1).T
            logits_per_slide = self.global_logit_scale * cosine + self.global_logit_bias
            logits_per_text = logits_per_slide.T
        loss = loss_global = loss_local = None
        if return_loss:
            loss, loss_global, loss_local = self._losses(slide, text_embeds, subcaption_embeds)
        return PathFLIP2Output(
            loss=loss, loss_global=loss_global, loss_local=loss_local, logits_per_slide=logits_per_slide,
            logits_per_text=logits_per_text, slide_embeds=slide.slide_embeds, text_embeds=text_embeds,
            patch_embeds=slide.patch_embeds, patch_attention_mask=slide.patch_attention_mask,
            subcaption_embeds=subcaption_embeds,
        )  # fmt: skip

    def _losses(self, slide: PathFLIP2SlideOutput, text_embeds, subcaption_embeds) -> tuple:
        """Total, global and local losses (each None when switched off)."""
        config, loss, loss_global, loss_local = self.config, 0.0, None, None
        if config.use_global_loss:
            if text_embeds is None:
                raise ValueError("return_loss=True needs captions (input_ids); give every bag a caption.")
            loss_global = siglip_loss(slide.slide_embeds, text_embeds, self.global_logit_scale, self.global_logit_bias)
            loss = loss + loss_global
        if config.use_local_loss:
            if subcaption_embeds is None:
                raise ValueError(
                    "return_loss=True needs subcaption_input_ids (concept texts) for the local loss: build the batch "
                    "with PathFLIP2Processor, or set use_local_loss=False."
                )
            pooled, _, _ = soft_topk_pooling(slide.patch_embeds, slide.patch_attention_mask, subcaption_embeds,
                                             config.soft_topk_temperature, config.soft_topk)  # fmt: skip
            loss_local = soft_topk_loss(pooled, subcaption_embeds, self.local_logit_scale, self.local_logit_bias)
            loss = loss + loss_local
        return loss, loss_global, loss_local

"""Configuration of PathFLIP2, the architecture of the PathFLIP authors' released weights.

The authors' second repository (github.com/cyclexfy/PathFLIP2) trains a different model than the paper's region
Q-Former: a latent slide encoder over patches, a global slide embedding and per-patch local features, a
Bio_ClinicalBERT text tower, a SigLIP slide-caption loss and a soft top-k patch-concept loss. The defaults below
are their released run's.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

from .configuration_pathflip import _build_sub_config, _ServedPipelinesConfig

PATHFLIP2_TEXT_POOLING_MODES = ("mean_unmasked", "mean", "cls")
# Bio_ClinicalBERT's shape: BERT-base, cased vocabulary.
BIO_CLINICAL_BERT_CONFIG = {"model_type": "bert", "vocab_size": 28996, "hidden_size": 768, "num_hidden_layers": 12,
                            "num_attention_heads": 12, "intermediate_size": 3072}  # fmt: skip


class PathFLIP2Config(_ServedPipelinesConfig):
    r"""Configuration of [`PathFLIP2Model`]; the defaults are the authors' released run.

    Args:
        text_config (`dict` or `PretrainedConfig`, *optional*): the text tower (default: Bio_ClinicalBERT's shape).
        patch_dim (`int`): dimension of the frozen patch features (512: CONCH v1).
        embed_dim (`int`): width of the slide encoder and of the joint embeddings.
        num_heads (`int`): heads of every attention block.
        num_latent_tokens (`int`): latent tokens of the slide encoder besides the global token (128).
        num_encoder_layers (`int`): cross- then self-attention layers over the latent tokens (1).
        ffn_ratio (`int`): hidden width of the feed-forward blocks in multiples of ``embed_dim``.
        attention_dropout (`float`): dropout of the attention weights and feed-forward outputs (0.2).
        projection_dropout (`float`): dropout after the patch projector and the four projection heads (0.1).
        rms_norm_eps (`float`, *optional*): eps of every RMSNorm; None is `torch.nn.RMSNorm`'s default (the
            machine epsilon of the input's dtype), what the released model was built with.
        text_pooling (`str`): "mean_unmasked" averages the text tower's outputs over every position, padding
            included, as the released model does (a text's embedding then depends on the padding of its batch);
            "mean" averages over real tokens only; "cls" takes the first token.
        text_max_length (`int`): longest text in tokens.
        num_subcaptions (`int`): K, concept texts per slide in the fine-grained loss (8).
        soft_topk_temperature (`float`): temperature of the softmax of text-patch cosines (0.5).
        soft_topk (`int`): patches kept per text by the soft top-k pooling (128).
        global_logit_scale_init_value, global_logit_bias_init_value (`float`): the SigLIP slide-caption loss's
            scale and bias (10, -10), used linearly: logit = scale x cosine + bias.
        local_logit_scale_init_value, local_logit_bias_init_value (`float`): the same for the fine-grained loss.
        use_global_loss, use_local_loss (`bool`): switches of the two losses.
        max_patches (`int`): patches per slide sampled in training (4096).
        patch_encoder (`str`, *optional*): the patch encoder whose features the model reads (e.g. "conch_v1").
        patch_size_um (`float`, *optional*): side of one patch in µm (128: 256 px at 0.5 µm/px, i.e. 20x).
        patch_size_px (`int`, *optional*): side of one patch in pixels (256 for the released model).
    """

    model_type = "pathflip2"
    sub_configs = {"text_config": AutoConfig}
    # Trainer evaluation concatenates the other outputs over batches: keep only slide and text embeddings.
    keys_to_ignore_at_inference = [
        "logits_per_slide", "logits_per_text", "patch_embeds", "patch_attention_mask", "subcaption_embeds",
        "loss_global", "loss_local",
    ]  # fmt: skip

    def __init__(
        self,
        text_config: dict | PretrainedConfig | None = None,
        patch_dim: int = 512,
        embed_dim: int = 512,
        num_heads: int = 8,
        num_latent_tokens: int = 128,
        num_encoder_layers: int = 1,
        ffn_ratio: int = 4,
        attention_dropout: float = 0.2,
        projection_dropout: float = 0.1,
        rms_norm_eps: float | None = None,
        text_pooling: str = "mean",
        text_max_length: int = 512,
        num_subcaptions: int = 8,
        soft_topk_temperature: float = 0.5,
        soft_topk: int = 128,
        global_logit_scale_init_value: float = 10.0,
        global_logit_bias_init_value: float = -10.0,
        local_logit_scale_init_value: float = 10.0,
        local_logit_bias_init_value: float = -10.0,
        use_global_loss: bool = True,
        use_local_loss: bool = True,
        max_patches: int = 4096,
        patch_encoder: str | None = None,
        patch_size_um: float | None = None,
        patch_size_px: int | None = None,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ):
        self.text_config = _build_sub_config(text_config, "bert", **({} if text_config else BIO_CLINICAL_BERT_CONFIG))
        self.patch_dim = patch_dim
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_latent_tokens = num_latent_tokens
        self.num_encoder_layers = num_encoder_layers
        self.ffn_ratio = ffn_ratio
        self.attention_dropout = attention_dropout
        self.projection_dropout = projection_dropout
        self.rms_norm_eps = rms_norm_eps
        self.text_pooling = text_pooling
        self.text_max_length = text_max_length
        self.num_subcaptions = num_subcaptions
        self.soft_topk_temperature = soft_topk_temperature
        self.soft_topk = soft_topk
        self.global_logit_scale_init_value = global_logit_scale_init_value
        self.global_logit_bias_init_value = global_logit_bias_init_value
        self.local_logit_scale_init_value = local_logit_scale_init_value
        self.local_logit_bias_init_value = local_logit_bias_init_value
        self.use_global_loss = use_global_loss
        self.use_local_loss = use_local_loss
        self.max_patches = max_patches
        self.patch_encoder = patch_encoder
        self.patch_size_um = patch_size_um
        self.patch_size_px = patch_size_px
        self.initializer_range = initializer_range
        self._validate()
        super().__init__(**kwargs)

    def _validate(self) -> None:
        """Raise `ValueError` on values that cannot build a working model."""
        for name in ("patch_dim", "embed_dim", "num_heads", "num_latent_tokens", "num_encoder_layers", "ffn_ratio",
                     "text_max_length", "num_subcaptions", "soft_topk", "max_patches"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PathFLIP2Config.{name} must be a positive integer, got {value!r}.")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads}).")
        if self.text_pooling not in PATHFLIP2_TEXT_POOLING_MODES:
            raise ValueError(
                f"text_pooling must be one of {PATHFLIP2_TEXT_POOLING_MODES}, got {self.text_pooling!r}."
            )
        for name in ("attention_dropout", "projection_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}.")
        if not self.soft_topk_temperature > 0:
            raise ValueError(f"soft_topk_temperature must be > 0, got {self.soft_topk_temperature!r}.")
        if self.rms_norm_eps is not None and not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps must be > 0 or None, got {self.rms_norm_eps!r}.")
        if not (self.use_global_loss or self.use_local_loss):
            raise ValueError("At least one of use_global_loss and use_local_loss must be True.")

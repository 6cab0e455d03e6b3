"""Configuration of PathFLIP, a composite config in the style of BLIP-2 and CLIP."""

from __future__ import annotations

import math
from typing import Any

from transformers import AutoConfig, Blip2QFormerConfig, PretrainedConfig

from .grounding_head_pathflip import PRESENCE_POOLINGS

TEXT_POOLING_MODES = ("cls", "mean")
REGION_NEGATIVE_MODES = ("all", "one_per_slide")
REGION_LOSS_REDUCTIONS = ("mean", "authors")
REGION_DUPLICATE_MODES = ("ignore", "positive")
TRA_GATES = ("softmax", "sigmoid")
# The grounding head's shape; `vocabulary_size` is added when a head is fitted (pathflip fit-grounding).
GROUNDING_HEAD_DEFAULTS = {"members": 5, "hidden_size": 256, "embed_dim": 64, "paraphrase_threshold": 0.8,
                           "presence_sharpness": 3.0, "presence_pooling": "mixed", "attention_weight": 0.5}  # fmt: skip

PAPER_QFORMER_CONFIG = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "cross_attention_frequency": 2,
}


def _build_sub_config(value: Any, default_model_type: str, **defaults: Any) -> PretrainedConfig:
    """Turn a dict, a config object or ``None`` into a config (``AutoConfig`` dispatch on ``model_type``)."""
    if isinstance(value, PretrainedConfig):
        return value
    values = {**defaults, **(value or {})}
    model_type = values.pop("model_type", default_model_type)
    return AutoConfig.for_model(model_type, **values)


class _ServedPipelinesConfig(PretrainedConfig):
    """A config whose ``custom_pipelines`` step aside while this package serves the same tasks."""

    @property
    def custom_pipelines(self) -> dict:
        """The tasks a saved folder serves as remote code; empty while the installed package serves them.

        `pipeline()` refuses any task listed here without ``trust_remote_code=True``, even when this
        package already registered it. Hiding the list whenever every task is registered with a class of
        the same name lets ``pipeline(task, model=folder)`` work with the package installed, while the
        saved config keeps the list for ``trust_remote_code=True`` users without it.
        """
        tasks = self.__dict__.get("_custom_pipelines") or {}
        return {} if tasks and _served_by_registry(tasks) else tasks

    @custom_pipelines.setter
    def custom_pipelines(self, tasks: dict) -> None:
        self.__dict__["_custom_pipelines"] = tasks

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        tasks = output.pop("_custom_pipelines", None)
        if tasks:
            output["custom_pipelines"] = tasks
        return output


class PathFLIPConfig(_ServedPipelinesConfig):
    r"""Configuration of [`PathFLIPModel`]; the defaults reproduce the paper.

    Args:
        qformer_config (`dict` or `Blip2QFormerConfig`, *optional*):
            The Q-Former shared by the slide and region paths. Its `encoder_hidden_size` must equal
            `patch_projection_dim` (it is filled in when missing).
        text_config (`dict` or `PretrainedConfig`, *optional*):
            Any `AutoConfig` of a BERT-like encoder (default: BERT-base shape, random weights).
        patch_dim (`int`): dimension D of the frozen patch-encoder features (512 for CONCH).
        patch_projection_dim (`int`): width of the patch projector (Q-Former cross-attention input).
        num_query_tokens (`int`): learnable query tokens of the Q-Former.
        region_grid_size (`int`): a region is `region_grid_size x region_grid_size` patches (16 -> 4096 px
            at 256-px patches).
        region_chunk_size (`int`): regions encoded per Q-Former call; bounds memory for any slide size.
        context_layers, context_heads, context_intermediate_size, context_dropout:
            the transformer over [slide; regions] tokens. ``context_layers=0`` leaves it out: the slide token is the
            Q-Former's and each region token depends on its own patches only.
        embed_dim (`int`): joint slide/region/text embedding width.
        text_pooling (`str`): "cls" or "mean" pooling of the text tower.
        num_subcaptions (`int`): K, subcaptions per slide in the region loss.
        tra_heads (`int`): heads of the Text-Region Attention.
        tra_gate (`str`): how the Text-Region Attention weighs regions. "softmax" (the paper): weights over a
            slide's regions sum to 1. "sigmoid": each region gets its own weight sigmoid(logit - log L) (L real
            regions), so a sentence about tissue that fills the slide can weigh every region that shows it fully.
        use_text_region_attention (`bool`): ablation; `False` replaces TRA by mean pooling of regions.
        use_region_positions (`bool`): add an embedding of each region's place in the slide (Fourier features of
            its row and column scaled to [0, 1]) to the region tokens, so that place words ("upper left") can be
            matched. Not in the paper, hence off by default.
        use_slide_loss, use_region_loss (`bool`): ablation switches for the two losses.
        slide_loss_weight, region_loss_weight (`float`): weights of the two losses.
        logit_scale_init_value (`float`): initial log inverse temperature of the slide loss (ln 1/0.07).
        logit_scale_max (`float`): clamp of the exponentiated slide logit scale.
        label_smoothing (`float`): label smoothing of the slide InfoNCE (paper: 0.1).
        region_logit_scale_init_value (`float`): initial log scale s of the region sigmoid loss (ln 10).
        region_logit_bias_init_value (`float`): initial bias b of the region sigmoid loss.
        region_negatives (`str`): "all" subcaptions of other slides, or "one_per_slide" (v1).
        region_duplicate_threshold (`float`, *optional*): a subcaption of another slide whose text-tower similarity
            (cosine of the pooled text embeddings before projection, computed without gradient) to one of slide i's
            own subcaptions reaches this value is a paraphrase of a finding slide i also has: it is treated as
            ``region_duplicates`` says instead of as a negative. None: only identical texts are shared.
        region_duplicates (`str`): "ignore" (left out of slide i's region loss) or "positive".
        subcaption_contrast_weight (`float`): weight of a within-slide contrast added to the region loss: each
            subcaption's text-conditioned region embedding must match it better than the slide's other subcaptions
            (inverse temperature: the region loss's scale). 0 (the paper): off. It gives sentences about tissue
            every slide has (background stroma) a signal about where they are.
        region_exclusion_weight (`float`): weight of a term added to the region loss that pushes a subcaption the
            cross-slide loss cannot place (one every slide has, such as the background) off the regions its slide's
            well placed subcaptions attend to. 0 (the paper): off.
        region_negatives_steer_attention (`bool`): True (the paper): a negative pair's region loss also moves the
            Text-Region Attention weights. False: only a slide's own subcaptions teach where a text looks;
            negatives still move the region and text embeddings.
        region_loss_reduction (`str`): how the region loss averages its per-(slide, candidate) losses. "mean": over
            all pairs. "authors" (the authors' v1): per slide, the sum over its candidates divided by K + B - 1 (their
            candidate set: the slide's K subcaptions plus one per other slide of the global batch of B slides), then
            the mean over the local slides. With "one_per_slide" both give the same loss; with "all" a slide has
            B x K candidates, still divided by K + B - 1, so "authors" is B K / (K + B - 1) times "mean".
        initializer_range (`float`): std of the normal initialisation.
        patch_encoder (`str`, *optional*): name of the patch encoder whose features the model reads (the
            dataset's `encoder` column, recorded by `train.py`); pipelines use it to encode slide files.
        patch_size_um (`float`, *optional*): side of one patch in µm (`patch_size_level0 x mpp` of the training
            bags, recorded by `train.py`), for the model card's input contract.
        patch_size_px (`int`, *optional*): the patch side in pixels the training bags were encoded at (recorded by
            `pathflip train` from extracted bags); with ``patch_size_um`` the pipelines tile slide files the same way.
        grounding_head (`dict`, *optional*): the shape of a fitted patch-sentence grounding head (`members`,
            `hidden_size`, `embed_dim`, `paraphrase_threshold`, `vocabulary_size`, `presence_sharpness`,
            `presence_pooling`, `attention_weight`), set by `pathflip fit-grounding`; when present, `get_grounding`
            reads sentences with it (and with the attention weights as much as `attention_weight` says: 0 leaves them
            out), and zero-shot classification scores class prompts with its pooled presence log-odds instead of the
            slide embedding.
    """

    model_type = "pathflip"
    sub_configs = {"qformer_config": Blip2QFormerConfig, "text_config": AutoConfig}
    # Trainer evaluation concatenates the other outputs over batches: keep only slide and text embeddings
    # (per-batch logits and ragged region tensors cannot be concatenated).
    keys_to_ignore_at_inference = [
        "logits_per_slide", "logits_per_text", "region_embeds", "region_attention_mask", "subcaption_embeds",
        "loss_slide", "loss_region",
    ]  # fmt: skip

    def __init__(
        self,
        qformer_config: dict | PretrainedConfig | None = None,
        text_config: dict | PretrainedConfig | None = None,
        patch_dim: int = 512,
        patch_projection_dim: int = 256,
        num_query_tokens: int = 8,
        region_grid_size: int = 16,
        region_chunk_size: int = 64,
        context_layers: int = 2,
        context_heads: int = 8,
        context_intermediate_size: int = 1024,
        context_dropout: float = 0.1,
        embed_dim: int = 256,
        text_pooling: str = "cls",
        num_subcaptions: int = 8,
        tra_heads: int = 8,
        tra_gate: str = "softmax",
        use_text_region_attention: bool = True,
        use_region_positions: bool = False,
        use_slide_loss: bool = True,
        use_region_loss: bool = True,
        slide_loss_weight: float = 1.0,
        region_loss_weight: float = 1.0,
        logit_scale_init_value: float = math.log(1 / 0.07),
        logit_scale_max: float = 100.0,
        label_smoothing: float = 0.1,
        region_logit_scale_init_value: float = math.log(10.0),
        region_logit_bias_init_value: float = -10.0,
        region_negatives: str = "all",
        region_loss_reduction: str = "mean",
        region_duplicate_threshold: float | None = None,
        region_duplicates: str = "ignore",
        subcaption_contrast_weight: float = 0.0,
        region_negatives_steer_attention: bool = True,
        region_exclusion_weight: float = 0.0,
        initializer_range: float = 0.02,
        patch_encoder: str | None = None,
        patch_size_um: float | None = None,
        patch_size_px: int | None = None,
        grounding_head: dict | None = None,
        **kwargs: Any,
    ):
        qformer_defaults = {**PAPER_QFORMER_CONFIG, "encoder_hidden_size": patch_projection_dim}
        if isinstance(qformer_config, dict):
            qformer_config = Blip2QFormerConfig(**{**qformer_defaults, **qformer_config})
        self.qformer_config = qformer_config or Blip2QFormerConfig(**qformer_defaults)
        self.text_config = _build_sub_config(text_config, "bert")

        self.patch_dim = patch_dim
        self.patch_projection_dim = patch_projection_dim
        self.num_query_tokens = num_query_tokens
        self.region_grid_size = region_grid_size
        self.region_chunk_size = region_chunk_size
        self.context_layers = context_layers
        self.context_heads = context_heads
        self.context_intermediate_size = context_intermediate_size
        self.context_dropout = context_dropout
        self.embed_dim = embed_dim
        self.text_pooling = text_pooling
        self.num_subcaptions = num_subcaptions
        self.tra_heads = tra_heads
        self.tra_gate = tra_gate
        self.use_text_region_attention = use_text_region_attention
        self.use_region_positions = use_region_positions
        self.use_slide_loss = use_slide_loss
        self.use_region_loss = use_region_loss
        self.slide_loss_weight = slide_loss_weight
        self.region_loss_weight = region_loss_weight
        self.logit_scale_init_value = logit_scale_init_value
        self.logit_scale_max = logit_scale_max
        self.label_smoothing = label_smoothing
        self.region_logit_scale_init_value = region_logit_scale_init_value
        self.region_logit_bias_init_value = region_logit_bias_init_value
        self.region_negatives = region_negatives
        self.region_loss_reduction = region_loss_reduction
        self.region_duplicate_threshold = region_duplicate_threshold
        self.region_duplicates = region_duplicates
        self.subcaption_contrast_weight = subcaption_contrast_weight
        self.region_negatives_steer_attention = region_negatives_steer_attention
        self.region_exclusion_weight = region_exclusion_weight
        self.initializer_range = initializer_range
        self.patch_encoder = patch_encoder
        self.patch_size_um = patch_size_um
        self.patch_size_px = patch_size_px
        if grounding_head is not None and not isinstance(grounding_head, dict):
            raise ValueError(f"grounding_head must be None or a dict of its shape, got {grounding_head!r}.")
        self.grounding_head = None if grounding_head is None else {**GROUNDING_HEAD_DEFAULTS, **grounding_head}
        self._validate()
        super().__init__(**kwargs)

    def _validate(self) -> None:
        """Raise `ValueError` on values that cannot build a working model."""
        _validate_values(self)
        if self.qformer_config.encoder_hidden_size != self.patch_projection_dim:
            raise ValueError(
                f"qformer_config.encoder_hidden_size ({self.qformer_config.encoder_hidden_size}) must equal "
                f"patch_projection_dim ({self.patch_projection_dim}): the Q-Former cross-attends to projected "
                "patches. Leave encoder_hidden_size out of qformer_config to have it filled in."
            )
        for name in ("context_heads", "tra_heads"):
            if self.embed_dim % getattr(self, name):
                raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by {name} ({getattr(self, name)}).")
        threshold = self.region_duplicate_threshold
        if threshold is not None and not (_is_number(threshold) and -1.0 < threshold <= 1.0):
            raise ValueError(f"region_duplicate_threshold must be None or a cosine in (-1, 1], got {threshold!r}.")
        if not (self.use_slide_loss or self.use_region_loss):
            raise ValueError("At least one of use_slide_loss and use_region_loss must be True.")
        if self.grounding_head is not None:
            _validate_grounding_head(self.grounding_head)


POSITIVE_INTEGERS = (
    "patch_dim", "patch_projection_dim", "num_query_tokens", "region_grid_size", "region_chunk_size", "context_heads",
    "context_intermediate_size", "embed_dim", "num_subcaptions", "tra_heads",
)  # fmt: skip
FLAGS = ("use_text_region_attention", "use_region_positions", "use_slide_loss", "use_region_loss",
         "region_negatives_steer_attention")  # fmt: skip
NONNEGATIVE_NUMBERS = ("slide_loss_weight", "region_loss_weight", "subcaption_contrast_weight",
                       "region_exclusion_weight", "initializer_range")  # fmt: skip
FINITE_NUMBERS = ("logit_scale_init_value", "region_logit_scale_init_value", "region_logit_bias_init_value")
FRACTIONS = ("label_smoothing", "context_dropout")  # in [0, 1)
CHOICES = {"text_pooling": TEXT_POOLING_MODES, "region_negatives": REGION_NEGATIVE_MODES,
           "region_loss_reduction": REGION_LOSS_REDUCTIONS, "tra_gate": TRA_GATES,
           "region_duplicates": REGION_DUPLICATE_MODES}  # fmt: skip


def _is_number(value: Any) -> bool:
    """A finite int or float (a bool is not a number here: ``True`` for a size is a mistake)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _validate_values(config: PathFLIPConfig) -> None:
    """Each option's type and range, named in the error (a string "false" for a flag would read as True)."""

    def refuse(name: str, expected: str) -> None:
        raise ValueError(f"PathFLIPConfig.{name} must be {expected}, got {getattr(config, name)!r}.")

    for name in POSITIVE_INTEGERS:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            refuse(name, "a positive integer")
    layers = config.context_layers
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
        refuse("context_layers", "an integer >= 0 (0: no context)")
    for name in (name for name in FLAGS if not isinstance(getattr(config, name), bool)):
        refuse(name, "True or False")
    for name in (name for name in NONNEGATIVE_NUMBERS if not (_is_number(getattr(config, name)) and
                                                             getattr(config, name) >= 0)):  # fmt: skip
        refuse(name, "a finite number >= 0")
    for name in (name for name in FINITE_NUMBERS if not _is_number(getattr(config, name))):
        refuse(name, "a finite number")
    for name in (name for name in FRACTIONS if not (_is_number(getattr(config, name)) and
                                                   0 <= getattr(config, name) < 1)):  # fmt: skip
        refuse(name, "a number in [0, 1)")
    if not (_is_number(config.logit_scale_max) and config.logit_scale_max > 0):
        refuse("logit_scale_max", "a finite number > 0")
    for name, choices in CHOICES.items():
        if getattr(config, name) not in choices:
            refuse(name, f"one of {choices}")
    for name in ("patch_size_um", "patch_size_px"):
        value = getattr(config, name)
        if value is not None and not (_is_number(value) and value > 0):
            refuse(name, "None or a number > 0")
    encoder = config.patch_encoder
    if encoder is not None and not (isinstance(encoder, str) and encoder.strip()):
        refuse("patch_encoder", "None or the name of the patch encoder (e.g. 'stain-texture')")


def _validate_grounding_head(head: dict) -> None:
    """Raise `ValueError` on a grounding head shape that cannot be built."""
    unknown = set(head) - {*GROUNDING_HEAD_DEFAULTS, "vocabulary_size"}
    if unknown:
        raise ValueError(f"grounding_head has unknown keys {sorted(unknown)}; it takes "
                         f"{sorted([*GROUNDING_HEAD_DEFAULTS, 'vocabulary_size'])}.")  # fmt: skip
    for name in ("members", "hidden_size", "embed_dim", "vocabulary_size"):
        value = head.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"grounding_head[{name!r}] must be a positive integer, got {value!r}.")
    threshold = head["paraphrase_threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not -1.0 < threshold <= 1.0:
        raise ValueError(f"grounding_head['paraphrase_threshold'] must be a cosine in (-1, 1], got {threshold!r}.")
    sharpness = head["presence_sharpness"]
    if isinstance(sharpness, bool) or not isinstance(sharpness, int | float) or not 0 < sharpness < float("inf"):
        raise ValueError(f"grounding_head['presence_sharpness'] must be a number > 0, got {sharpness!r}.")
    weight = head["attention_weight"]
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < float("inf"):
        raise ValueError(f"grounding_head['attention_weight'] must be a number >= 0, got {weight!r}.")
    if head["presence_pooling"] not in PRESENCE_POOLINGS:
        raise ValueError(f"grounding_head['presence_pooling'] must be one of {list(PRESENCE_POOLINGS)}, got "
                         f"{head['presence_pooling']!r}.")  # fmt: skip


class PathFLIPGenerationConfig(_ServedPipelinesConfig):
    r"""Configuration of [`PathFLIPForConditionalGeneration`]: PathFLIP + projector + a causal LLM.

    Args:
        pathflip_config (`dict` or [`PathFLIPConfig`], *optional*): the slide/text alignment model.
        llm_config (`dict` or `PretrainedConfig`, *optional*): any causal LM's `AutoConfig` (default: LLaMA).
        max_visual_tokens (`int`): visual tokens per slide: the slide token and up to ``max_visual_tokens - 1``
            region tokens.
        image_token (`str`): the prompt placeholder where the visual tokens are spliced in.
        image_token_id (`int`, *optional*): its id in the LLM tokenizer (set by [`PathFLIPGenerationProcessor`]);
            it may lie outside the LLM's vocabulary, because the placeholder itself is never embedded.
        projector_hidden_act (`str`): activation of the two-layer projector to the LLM width.
    """

    model_type = "pathflip_generation"
    sub_configs = {"pathflip_config": PathFLIPConfig, "llm_config": AutoConfig}

    def __init__(
        self,
        pathflip_config: dict | PathFLIPConfig | None = None,
        llm_config: dict | PretrainedConfig | None = None,
        max_visual_tokens: int = 65,
        image_token: str = "<image>",
        image_token_id: int | None = None,
        projector_hidden_act: str = "gelu",
        **kwargs: Any,
    ):
        if isinstance(pathflip_config, dict):
            pathflip_config = PathFLIPConfig(**pathflip_config)
        self.pathflip_config = pathflip_config or PathFLIPConfig()
        self.llm_config = _build_sub_config(llm_config, "llama")
        if not isinstance(max_visual_tokens, int) or max_visual_tokens < 1:
            raise ValueError(
                f"max_visual_tokens must be a positive integer (1 slide token + regions), got {max_visual_tokens!r}."
            )
        if not image_token:
            raise ValueError("image_token must be a non-empty string such as '<image>'.")
        self.max_visual_tokens = max_visual_tokens
        self.image_token = image_token
        self.image_token_id = image_token_id
        self.projector_hidden_act = projector_hidden_act
        super().__init__(**kwargs)

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> PretrainedConfig:
        """The LLM's config: what generation utilities need (PathFLIP's own text tower is an encoder side part)."""
        return self.llm_config


def _served_by_registry(tasks: dict) -> bool:
    """Whether every task is registered in this process with the class its ``impl`` names."""
    from transformers.pipelines import PIPELINE_REGISTRY

    registered = PIPELINE_REGISTRY.supported_tasks
    return all(
        name in registered and registered[name]["impl"].__name__ == task["impl"].rsplit(".", 1)[-1]
        for name, task in tasks.items()
    )

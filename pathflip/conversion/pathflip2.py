"""`pathflip convert`: the PathFLIP authors' released checkpoint (github.com/cyclexfy/PathFLIP2) -> a PathFLIP2
model folder that `from_pretrained`, every pipeline and `pathflip push` take.

The authors save their Lightning module's state dict: keys start with ``model.`` (DeepSpeed conversions may add
``_forward_module.`` or ``module.``), the text tower is a peft-LoRA-wrapped BERT (``base_layer`` + ``lora_A`` /
``lora_B``), and the run's hyper-parameters are in Lightning's ``hparams.yaml``. The LoRA adapters are merged into
the BERT weights (W + alpha / r x B A); frozen BERT weights the checkpoint lacks come from ``--text-model``.
"""

from __future__ import annotations

import argparse
import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from modeling_pathflip import PathFLIP2Config, PathFLIP2Model, PathFLIP2Processor, save_pretrained_with_pipelines

from ..files import atomic_path
from ..model_cards import write_model_card

logger = logging.getLogger(__name__)
PREFIXES = ("_forward_module.", "module.", "model.")
TEXT_PREFIX = "text_encoder.base_model.model."  # peft's wrapping of their BERT
UNUSED_PREFIXES = ("text_model.pooler.",)  # BERT's pooler: the model pools itself
SOURCE = "github.com/cyclexfy/PathFLIP2 (commit 9226d0c); weights linked there as huggingface.co/jshhhh/PathFLIP"


class ConversionError(ValueError):
    """A checkpoint that does not fit the released architecture; the message lists every key at fault."""


def load_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors``, ``.bin`` / ``.pt`` (a state dict, e.g. zero_to_fp32's output) or Lightning
    ``.ckpt`` (its ``state_dict``) file. Pickled files are read with ``weights_only=True``; ``allow_pickle`` reads
    any pickle, which runs code from the file: only for a file whose source you trust."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as error:
            raise ConversionError(f"{path} is not a readable safetensors file ({error}).") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        reason = next((line for line in lines if "Unsupported" in line or "load key" in line), lines[-1])[:200]
        if "Unsupported global" not in str(error):  # garbage or another format, not objects: --allow-pickle won't help
            raise ConversionError(f"{path} is not a PyTorch checkpoint ({reason}); give the released file.") from None
        raise ConversionError(
            f"{path} holds Python objects besides tensors ({reason}); loading them would run code from the file. "
            "Pass --allow-pickle only if you trust where the file comes from, or save its state dict as safetensors."
        ) from error
    except (RuntimeError, EOFError, ValueError) as error:  # a torn zip archive, an empty file
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint ({error}).") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # a Lightning checkpoint
    if not isinstance(loaded, dict):
        raise ConversionError(f"{path} holds a {type(loaded).__name__}, not a state dict (a dict of tensors).")
    others = sorted(key for key, value in loaded.items() if not isinstance(value, torch.Tensor))
    if others:
        raise ConversionError(f"{path}: entries that are not tensors: {others[:10]}.")
    return loaded


def read_hparams(path: str | Path) -> dict[str, Any]:
    """Lightning's ``hparams.yaml`` as a plain dict (Python-object tags are read as plain values)."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    def _plain(loader, suffix, node):
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        return loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else loader.construct_scalar(node)

    _Loader.add_multi_constructor("tag:yaml.org,2002:python/", _plain)
    try:
        values = yaml.load(Path(path).read_text(), Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        reason = str(error).strip().splitlines()[0]
        raise ConversionError(f"--hparams {path} is not a YAML file ({reason}); give the run's hparams.yaml.") from None
    if not isinstance(values, dict):
        raise ConversionError(f"{path} is not a mapping of hyper-parameters.")
    return values


def _hparam(hparams: dict[str, Any], key: str, default: Any, kind: type) -> Any:
    try:
        return kind(hparams.get(key, default))
    except (TypeError, ValueError):
        raise ConversionError(f"hparams {key}: {hparams.get(key)!r} is not a{'n' if kind is int else ''} "
                              f"{kind.__name__}; fix the hparams file.") from None  # fmt: skip


def config_from_hparams(hparams: dict[str, Any], text_config) -> PathFLIP2Config:
    """The PathFLIP2 config of a released run: its hyper-parameters, the text tower's config, and the unmasked
    mean pooling of the released model."""
    if str(hparams.get("contrast_loss", "siglip")) != "siglip" or not hparams.get("use_soft_topk", True):
        raise ConversionError(
            "only the released variant converts: contrast_loss 'siglip' with use_soft_topk (the FLAIR-head and "
            f"InfoNCE variants have other weights); hparams say contrast_loss={hparams.get('contrast_loss')!r}, "
            f"use_soft_topk={hparams.get('use_soft_topk')!r}."
        )
    pooling = {"mean": "mean_unmasked", "cls_token": "cls"}.get(str(hparams.get("text_pooling_type", "mean")))
    if pooling is None:
        raise ConversionError(f"text_pooling_type {hparams.get('text_pooling_type')!r} is not 'mean' or 'cls_token'.")
    return PathFLIP2Config(
        text_config=text_config.to_dict(), patch_dim=_hparam(hparams, "image_embed_dim", 512, int),
        embed_dim=_hparam(hparams, "embed_dim", 512, int), num_heads=_hparam(hparams, "num_heads", 8, int),
        text_pooling=pooling, text_max_length=min(_hparam(hparams, "max_text_length", 512, int),
                                                  text_config.max_position_embeddings),
        num_subcaptions=_hparam(hparams, "num_text_samples", 8, int), soft_topk=_hparam(hparams, "top_k", 128, int),
        soft_topk_temperature=_hparam(hparams, "topk_temperature", 0.5, float),
        global_logit_scale_init_value=_hparam(hparams, "init_logit_scale", 10.0, float),
        global_logit_bias_init_value=_hparam(hparams, "init_logit_bias", -10.0, float),
        local_logit_scale_init_value=_hparam(hparams, "init_logit_scale", 10.0, float),
        local_logit_bias_init_value=_hparam(hparams, "init_logit_bias", -10.0, float),
        max_patches=_hparam(hparams, "num_patch_samples", 4096, int), patch_encoder="conch_v1", patch_size_um=128.0,
        patch_size_px=256,
    )  # fmt: skip


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the wrappers' prefixes (``_forward_module.``, ``module.``, ``model.``, in that order)."""
    stripped = {}
    for key, value in state.items():
        for prefix in PREFIXES:
            key = key.removeprefix(prefix)
        stripped[key] = value
    return stripped


def merge_lora(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """Fold every ``base_layer`` + ``lora_A`` / ``lora_B`` triple into one weight: W + scaling x B A."""
    merged, used = {}, set()
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        if ".base_layer." not in key:
            merged[key] = value
            continue
        module, parameter = key.split(".base_layer.")
        target = f"{module}.{parameter}"
        if parameter == "weight":
            down, up = f"{module}.lora_A.default.weight", f"{module}.lora_B.default.weight"
            if down not in state or up not in state:
                raise ConversionError(f"{key} has no LoRA pair: expected {down} and {up}.")
            value = value.float() + scaling * (state[up].float() @ state[down].float())
            used.update((down, up))
        merged[target] = value
    strays = sorted(key for key in state if (".lora_A." in key or ".lora_B." in key) and key not in used)
    if strays:
        raise ConversionError(f"LoRA weights without a base layer: {strays[:10]}.")
    return merged


def to_model_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Their attribute paths -> ours: the text tower is ``text_model``; everything else keeps its name."""
    return {("text_model." + key.removeprefix(TEXT_PREFIX)) if key.startswith(TEXT_PREFIX) else key: value
            for key, value in state.items()}  # fmt: skip


def convert_state_dict(
    raw: dict[str, torch.Tensor], model: PathFLIP2Model, hparams: dict[str, Any],
    text_weights: Callable[[], dict[str, torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """The checkpoint's tensors as ``model``'s state dict; refuses (listing them) keys it cannot place and
    expected keys that are missing. ``text_weights()`` (called only when needed) gives the text tower's pretrained
    weights, which fill what the checkpoint lacks (frozen weights are often not saved)."""
    state = strip_prefixes(raw)
    if any(".lora_A." in key for key in state):
        state = merge_lora(state, _hparam(hparams, "lora_alpha", 64, float) / _hparam(hparams, "lora_rank", 16, float))
    state = {key: value for key, value in to_model_keys(state).items() if not key.startswith(UNUSED_PREFIXES)}
    expected = model.state_dict()
    lacking = [key for key in expected if key not in state and key.startswith("text_model.")]
    if lacking and text_weights is not None:
        pretrained = text_weights()
        state.update({key: pretrained[key] for key in lacking if key in pretrained})
        logger.info("%d text-tower weights taken from the text model (not in the checkpoint)", len(lacking))
    problems = [f"unexpected key {key!r} (no such weight in the released architecture)"
                for key in sorted(set(state) - set(expected))]  # fmt: skip
    problems += [f"missing key {key!r}" for key in sorted(set(expected) - set(state))]
    problems += [f"{key!r} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}"
                 for key, value in expected.items() if key in state and state[key].shape != value.shape]  # fmt: skip
    if problems:
        shown = "\n  - ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ConversionError(f"the checkpoint does not fit the released PathFLIP2 architecture:\n  - {shown}{more}")
    return {key: value.to(expected[key].dtype) for key, value in state.items()}


def convert_checkpoint(
    checkpoint: str | Path, hparams_file: str | Path, text_model: str, output: str | Path, *,
    allow_pickle: bool = False,
) -> Path:  # fmt: skip
    """Write a PathFLIP2 model folder (safetensors, config, code, processor and tokenizer, every pipeline, a model
    card stating where the weights come from) converted from the authors' checkpoint."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    for what, path in (("checkpoint", checkpoint), ("--hparams", hparams_file)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{what} {path} does not exist; give the released file's path.")
    hparams = read_hparams(hparams_file)
    config = config_from_hparams(hparams, AutoConfig.from_pretrained(text_model))  # before the large checkpoint
    raw = load_checkpoint(checkpoint, allow_pickle=allow_pickle)
    model = PathFLIP2Model(config)

    def text_weights() -> dict[str, torch.Tensor]:
        return {f"text_model.{key}": value for key, value in AutoModel.from_pretrained(text_model).state_dict().items()}

    model.load_state_dict(convert_state_dict(raw, model, hparams, text_weights), strict=True)
    model.eval()
    processor = PathFLIP2Processor.from_model_config(AutoTokenizer.from_pretrained(text_model), config)
    output = Path(output)
    with atomic_path(output) as staging:
        save_pretrained_with_pipelines(model, processor, staging)
        write_model_card(staging, repo_id=output.name, base_models=None if Path(text_model).exists() else [text_model],
                         intended_use=INTENDED_USE, provenance=provenance(checkpoint, text_model))  # fmt: skip
    return output


INTENDED_USE = (
    "Research on slide-level vision-language models. Not for diagnosis. Check the licence of the released weights "
    "(and of CONCH, whose features the model reads) before any use; the conversion itself adds no rights."
)


def provenance(checkpoint: str | Path, text_model: str) -> str:
    """The model card's provenance section: where the weights come from and what to re-check."""
    return "\n".join([
        f"- Weights: the PathFLIP authors' released alignment model ({SOURCE}), converted from "
        f"`{Path(checkpoint).name}` by `pathflip convert`; LoRA adapters merged into the text tower; text-tower "
        f"weights missing from the checkpoint taken from `{text_model}`.",
        "- Architecture: the authors' second repository (a latent slide encoder and soft top-k patch pooling), not "
        "the paper's region Q-Former.",
        "- Input: CONCH v1 patch features (512-d) of 256-px patches at 20x (0.5 µm/px); other features are "
        "meaningless to it.",
        "- Text pooling averages over padding positions as the released model does (`text_pooling: mean_unmasked`).",
        "- Licence: not stated with the weights here; check the authors' repository and Hub page before use.",
        "- Results: none are claimed by this card; re-measure them (e.g. `pathflip benchmark pathflip2-zero-shot`).",
    ])  # fmt: skip

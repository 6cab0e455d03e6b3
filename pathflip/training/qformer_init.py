"""Initialise the Q-Former from a pretrained BERT, as BLIP-2 and the authors' v1 do (a training-time step)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

EMBEDDINGS_LAYER_NORM = "embeddings.LayerNorm."


def _bert_weights(bert: Mapping[str, torch.Tensor] | nn.Module) -> dict[str, torch.Tensor]:
    """The BERT encoder's tensors with names relative to the encoder (``bert.``/``roberta.`` prefixes removed,
    old ``gamma``/``beta`` LayerNorm names renamed)."""
    state = bert.state_dict() if isinstance(bert, nn.Module) else dict(bert)
    renamed = {}
    for key, value in state.items():
        if key.endswith("LayerNorm.gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith("LayerNorm.beta"):
            key = key[: -len("beta")] + "bias"
        renamed[key] = value
    anchors = [key for key in renamed if key.endswith(EMBEDDINGS_LAYER_NORM + "weight")]
    if not anchors:
        raise ValueError(
            f"The BERT weights have no '{EMBEDDINGS_LAYER_NORM}weight' key (first keys: {list(renamed)[:5]}): pass a "
            "BERT-like model (BertModel, BertForMaskedLM, RoBERTa...) or its state dict."
        )
    prefix = min(anchors, key=len)[: -len(EMBEDDINGS_LAYER_NORM + "weight")]
    return {key[len(prefix) :]: value for key, value in renamed.items() if key.startswith(prefix)}


def _qformer_to_bert_keys(num_layers: int, has_text_ffn: bool) -> dict[str, str]:
    """BLIP-2's mapping, Q-Former key -> BERT key; cross-attention has no BERT counterpart and is left out."""
    mapping = {f"layernorm.{p}": f"{EMBEDDINGS_LAYER_NORM}{p}" for p in ("weight", "bias")}
    for index in range(num_layers):
        layer = f"encoder.layer.{index}."  # same layer index on both sides
        pairs = [(f"attention.attention.{name}", f"attention.self.{name}") for name in ("query", "key", "value")]
        pairs += [("attention.output.dense", "attention.output.dense"),
                  ("attention.output.LayerNorm", "attention.output.LayerNorm"),
                  # LAVIS copies the text FFN into the query FFN too: the queries start from BERT's FFN.
                  ("intermediate_query.dense", "intermediate.dense"),
                  ("output_query.dense", "output.dense"),
                  ("output_query.LayerNorm", "output.LayerNorm")]  # fmt: skip
        if has_text_ffn:
            pairs += [("intermediate.dense", "intermediate.dense"), ("output.dense", "output.dense"),
                      ("output.LayerNorm", "output.LayerNorm")]  # fmt: skip
        for qformer_name, bert_name in pairs:
            for p in ("weight", "bias"):
                mapping[f"{layer}{qformer_name}.{p}"] = f"{layer}{bert_name}.{p}"
    return mapping


def initialise_qformer_from_bert(
    model: nn.Module,
    bert_state_dict_or_model: Mapping[str, torch.Tensor] | nn.Module,
    *,
    num_attention_heads: int | None = None,
) -> list[str]:
    """Copy a BERT-like encoder's weights into ``model.qformer`` (a `Blip2QFormerModel`) with BLIP-2's mapping.

    The BERT embeddings' LayerNorm goes to the Q-Former's ``layernorm``; BERT layer i's self-attention (query, key,
    value, output dense + LayerNorm), intermediate and output go to Q-Former layer i's self-attention, its query FFN
    (``intermediate_query``/``output_query``, as LAVIS does) and its text FFN when it has one. Cross-attention keeps
    its fresh initialisation. A Q-Former with fewer layers than BERT takes BERT's first layers.

    Args:
        model: a model with a ``qformer`` attribute (`PathFLIPModel`).
        bert_state_dict_or_model: a BERT-like model (its ``config`` gives the head count) or its state dict (any
            ``bert.``-style prefix is removed).
        num_attention_heads: BERT's head count; required with a state dict, which does not record it.

    Returns:
        The Q-Former keys (relative to ``model.qformer``) that were copied.

    Raises:
        ValueError: when BERT's hidden size, intermediate size, head count or layer count does not fit the Q-Former.
    """
    qformer = getattr(model, "qformer", None)
    if qformer is None or not hasattr(qformer, "encoder"):
        raise ValueError(
            f"{type(model).__name__} has no Blip2QFormerModel `qformer`: pass a PathFLIPModel (for an LLM-stage "
            "model, its `.pathflip`)."
        )
    weights = _bert_weights(bert_state_dict_or_model)
    if num_attention_heads is None:
        num_attention_heads = getattr(getattr(bert_state_dict_or_model, "config", None), "num_attention_heads", None)
    if num_attention_heads is None:
        raise ValueError(
            "The BERT head count is unknown (a state dict does not record it): pass num_attention_heads=, e.g. the "
            "`num_attention_heads` of the BERT's config.json."
        )
    bert_layers = 0
    while f"encoder.layer.{bert_layers}.attention.self.query.weight" in weights:
        bert_layers += 1
    config = qformer.config
    bert_sizes = {
        "hidden_size": weights[EMBEDDINGS_LAYER_NORM + "weight"].shape[0],
        "intermediate_size": weights["encoder.layer.0.intermediate.dense.weight"].shape[0] if bert_layers else 0,
        "num_attention_heads": num_attention_heads,
    }
    mismatched = [
        f"{name} {size} (Q-Former: {getattr(config, name)})"
        for name, size in bert_sizes.items()
        if size != getattr(config, name)
    ]
    if bert_layers < config.num_hidden_layers:
        mismatched.append(f"{bert_layers} layers (Q-Former: {config.num_hidden_layers}; it may have fewer, not more)")
    if mismatched:
        raise ValueError(
            f"This BERT does not fit the Q-Former: BERT has {', '.join(mismatched)}. Pick a BERT of the Q-Former's "
            "shape, or set qformer_config to the BERT's sizes."
        )

    mapping = _qformer_to_bert_keys(config.num_hidden_layers, getattr(config, "use_qformer_text_input", False))
    targets = qformer.state_dict(keep_vars=True)
    for qformer_key, bert_key in mapping.items():
        if bert_key not in weights:
            raise ValueError(f"The BERT weights lack {bert_key!r} (for the Q-Former's {qformer_key!r}).")
        if weights[bert_key].shape != targets[qformer_key].shape:
            raise ValueError(
                f"BERT's {bert_key!r} has shape {tuple(weights[bert_key].shape)}, the Q-Former's {qformer_key!r} "
                f"{tuple(targets[qformer_key].shape)}."
            )
    with torch.no_grad():
        for qformer_key, bert_key in mapping.items():
            targets[qformer_key].copy_(weights[bert_key])
    return list(mapping)

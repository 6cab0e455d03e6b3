"""The authors' released layout, generated from a description of their class (not from our converter)."""

from __future__ import annotations

from pathlib import Path

import torch

# Their run's hyper-parameters (scripts/train_align.sh over src/tools/process_args_align.py), as hparams.yaml has.
RELEASED_HPARAMS = {
    "image_embed_dim": 512, "embed_dim": 512, "num_heads": 8, "text_embed_dim": 768,
    "text_encoder": "emilyalsentzer/Bio_ClinicalBERT", "text_pooling_type": "mean", "contrast_loss": "siglip",
    "use_soft_topk": True, "top_k": 128, "topk_temperature": 0.5, "text_encoder_use_lora": True, "lora_rank": 16,
    "lora_alpha": 64, "lora_dropout": 0.1, "num_text_samples": 8, "num_patch_samples": 4096,
    "max_text_length": 512, "init_logit_scale": 10.0, "init_logit_bias": -10.0, "use_fine_gained_loss": True,
    "lora_target_modules": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
}  # fmt: skip
BIO_CLINICAL_BERT = {"vocab_size": 28996, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                     "intermediate_size": 3072}  # fmt: skip
KEYS_FILE = Path(__file__).resolve().parents[2].parent / "shared" / "notes" / "pathflip2_release_keys.txt"


def _attention_block(prefix: str, dim: int, self_attention: bool) -> dict[str, tuple]:
    shapes = {f"{prefix}.mha.in_proj_weight": (3 * dim, dim), f"{prefix}.mha.in_proj_bias": (3 * dim,),
              f"{prefix}.mha.out_proj.weight": (dim, dim), f"{prefix}.mha.out_proj.bias": (dim,),
              f"{prefix}.norm_q.weight": (dim,)}  # fmt: skip
    if not self_attention:
        shapes[f"{prefix}.norm_kv.weight"] = (dim,)
    shapes.update({f"{prefix}.ffn.0.weight": (4 * dim, dim), f"{prefix}.ffn.0.bias": (4 * dim,),
                   f"{prefix}.ffn.3.weight": (dim, 4 * dim), f"{prefix}.ffn.3.bias": (dim,),
                   f"{prefix}.norm2.weight": (dim,)})  # fmt: skip
    return shapes


def _projection(prefix: str, out_dim: int, in_dim: int) -> dict[str, tuple]:
    return {f"{prefix}.0.weight": (out_dim, in_dim), f"{prefix}.0.bias": (out_dim,), f"{prefix}.1.weight": (out_dim,)}


def released_shapes(patch_dim: int, dim: int, text: dict, rank: int, targets: list[str]) -> dict[str, tuple]:
    """Key -> shape of the authors' `pathflip` class (Lightning prefix included) for these sizes."""
    from transformers import BertConfig, BertModel

    shapes = {"global_logit_scale": (), "global_logit_bias": (), "local_logit_scale": (), "local_logit_bias": ()}
    shapes.update(_projection("image_proj", dim, patch_dim))
    shapes["slide_encoder.visual_tokens"] = (1, 129, dim)
    shapes.update(_attention_block("slide_encoder.encoder_layers.0.cross", dim, False))
    shapes.update(_attention_block("slide_encoder.encoder_layers.0.self", dim, True))
    shapes.update(_attention_block("slide_encoder.patch_decoder", dim, False))
    shapes.update(_projection("image_projection_global", dim, dim))
    shapes.update(_projection("image_projection_local", dim, dim))
    with torch.device("meta"):
        bert = BertModel(BertConfig(**text))
    for name, tensor in bert.state_dict().items():
        module, _, parameter = name.rpartition(".")
        if any(module.endswith(target) for target in targets) and "LayerNorm" not in module:
            shapes[f"text_encoder.base_model.model.{module}.base_layer.{parameter}"] = tuple(tensor.shape)
            if parameter == "weight":
                out_features, in_features = tensor.shape
                shapes[f"text_encoder.base_model.model.{module}.lora_A.default.weight"] = (rank, in_features)
                shapes[f"text_encoder.base_model.model.{module}.lora_B.default.weight"] = (out_features, rank)
        else:
            shapes[f"text_encoder.base_model.model.{name}"] = tuple(tensor.shape)
    shapes.update(_projection("text_projection_global", dim, text["hidden_size"]))
    shapes.update(_projection("text_projection_local", dim, text["hidden_size"]))
    return {f"model.{key}": shape for key, shape in shapes.items()}


def random_state(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of those shapes (RMSNorm weights near 1, scales and biases as trained ones may be)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        tensor = torch.randn(shape, generator=generator) * (0.05 if len(shape) > 1 else 0.02)
        if key.endswith(("norm_q.weight", "norm_kv.weight", "norm2.weight", ".1.weight", "LayerNorm.weight")):
            tensor = 1.0 + tensor
        state[key] = tensor
    state["model.slide_encoder.visual_tokens"] = torch.randn(shapes["model.slide_encoder.visual_tokens"],
                                                            generator=generator)  # fmt: skip
    state["model.global_logit_scale"], state["model.global_logit_bias"] = torch.tensor(11.5), torch.tensor(-9.0)
    state["model.local_logit_scale"], state["model.local_logit_bias"] = torch.tensor(9.0), torch.tensor(-10.5)
    return state


TINY_TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
             "max_position_embeddings": 64}  # fmt: skip
TINY = {"image_embed_dim": 16, "embed_dim": 32, "num_heads": 4, "lora_rank": 4, "lora_alpha": 16}

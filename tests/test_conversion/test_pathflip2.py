"""`pathflip convert`: the authors' released layout -> a PathFLIP2 folder, checked against an independent
computation written here from the raw tensors (LoRA merged here, BERT from transformers, the rest by hand)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModel, AutoProcessor, BertConfig, BertModel, pipeline

import modeling_pathflip  # noqa: F401
from pathflip.conversion.pathflip2 import ConversionError, convert_checkpoint
from tests.test_conversion.released_layout import BIO_CLINICAL_BERT, KEYS_FILE, RELEASED_HPARAMS, released_shapes

BERT = "model.text_encoder.base_model.model."
EPS = torch.finfo(torch.float32).eps  # nn.RMSNorm(eps=None) on float32 inputs


def rms(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def attention(query, context, raw, prefix, heads):
    """Multi-head attention from a packed in_proj, by hand."""
    dim = query.shape[-1]
    w, b = raw[f"{prefix}.mha.in_proj_weight"], raw[f"{prefix}.mha.in_proj_bias"]
    q, k, v = (F.linear(x, w[i * dim:(i + 1) * dim], b[i * dim:(i + 1) * dim])
               for i, x in enumerate((query, context, context)))  # fmt: skip
    split = lambda t: t.reshape(t.shape[0], heads, dim // heads).transpose(0, 1)  # noqa: E731
    weights = (split(q) @ split(k).transpose(1, 2) / math.sqrt(dim // heads)).softmax(-1)
    out = (weights @ split(v)).transpose(0, 1).reshape(query.shape[0], dim)
    return F.linear(out, raw[f"{prefix}.mha.out_proj.weight"], raw[f"{prefix}.mha.out_proj.bias"])


def block(x, y, raw, prefix, heads):
    query = rms(x, raw[f"{prefix}.norm_q.weight"])
    context = query if y is None else rms(y, raw[f"{prefix}.norm_kv.weight"])
    x = x + attention(query, context, raw, prefix, heads)
    normed = rms(x, raw[f"{prefix}.norm2.weight"])
    hidden = F.gelu(F.linear(normed, raw[f"{prefix}.ffn.0.weight"], raw[f"{prefix}.ffn.0.bias"]))
    return x + F.linear(hidden, raw[f"{prefix}.ffn.3.weight"], raw[f"{prefix}.ffn.3.bias"])


def projection(x, raw, prefix):
    return rms(F.linear(x, raw[f"{prefix}.0.weight"], raw[f"{prefix}.0.bias"]), raw[f"{prefix}.1.weight"])


def reference_slide(features, raw, heads):
    """(global slide embedding [E], local patch features [N, E]) of one bag, straight from the raw tensors."""
    raw = {key.removeprefix("model."): value for key, value in raw.items()}
    patches = projection(features, raw, "image_proj")
    tokens = raw["slide_encoder.visual_tokens"][0]
    tokens = block(tokens, patches, raw, "slide_encoder.encoder_layers.0.cross", heads)
    tokens = block(tokens, None, raw, "slide_encoder.encoder_layers.0.self", heads)
    decoded = block(patches, tokens, raw, "slide_encoder.patch_decoder", heads) + patches
    return projection(tokens[0], raw, "image_projection_global"), projection(decoded, raw, "image_projection_local")


def reference_bert(raw, text, hparams):
    """transformers' BERT with the LoRA adapters merged here: W + alpha / r x B A."""
    prefix, scaling = "model.text_encoder.base_model.model.", hparams["lora_alpha"] / hparams["lora_rank"]
    weights = {}
    for key, value in raw.items():
        if not key.startswith(prefix) or ".lora_" in key:
            continue
        name = key.removeprefix(prefix)
        if ".base_layer." in name:
            module, parameter = name.split(".base_layer.")
            if parameter == "weight":
                value = value + scaling * raw[f"{prefix}{module}.lora_B.default.weight"] @ raw[
                    f"{prefix}{module}.lora_A.default.weight"]  # fmt: skip
            name = f"{module}.{parameter}"
        weights[name] = value
    bert = BertModel(BertConfig(**text)).eval()
    bert.load_state_dict(weights, strict=True)
    return bert


def reference_texts(raw, bert, tokens, head):
    """Mean over every position (padding included) of BERT's output, then the projection head."""
    with torch.no_grad():
        hidden = bert(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
    raw = {key.removeprefix("model."): value for key, value in raw.items()}
    return projection(hidden.mean(dim=1), raw, head)


def _write(state, folder, fmt):
    path = folder / {"bin": "pytorch_model.bin", "ckpt": "last.ckpt", "safetensors": "model.safetensors"}[fmt]
    if fmt == "bin":
        torch.save(state, path)
    elif fmt == "ckpt":
        torch.save({"state_dict": state, "epoch": 49, "global_step": 12000, "pytorch-lightning_version": "2.4.0",
                    "hyper_parameters": {"embed_dim": 512, "contrast_loss": "siglip"}}, path)  # fmt: skip
    else:
        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return path


@pytest.fixture(scope="module", params=["bin", "ckpt", "safetensors"])
def converted(request, tiny_release, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"converted-{request.param}")
    checkpoint = _write(tiny_release["state"], folder, request.param)
    output = convert_checkpoint(checkpoint, tiny_release["folder"] / "hparams.yaml",
                                str(tiny_release["folder"] / "text-model"), folder / "model")  # fmt: skip
    return output


def test_converted_model_matches_the_raw_tensors(converted, tiny_release, bag_factory):
    raw, hparams = tiny_release["state"], tiny_release["hparams"]
    model, processor = AutoModel.from_pretrained(converted).eval(), AutoProcessor.from_pretrained(converted)
    assert type(model).__name__ == "PathFLIP2Model" and model.config.text_pooling == "mean_unmasked"
    bag = bag_factory(3, 40)
    with torch.no_grad():
        slide = model.get_slide_features(torch.as_tensor(bag["features"])[None].float())
    features = torch.as_tensor(bag["features"]).float()
    expected_slide, expected_patches = reference_slide(features, raw, hparams["num_heads"])
    torch.testing.assert_close(slide.slide_embeds[0], expected_slide, atol=1e-5, rtol=0)
    torch.testing.assert_close(slide.patch_embeds[0], expected_patches, atol=1e-5, rtol=0)

    bert = reference_bert(raw, tiny_release["text"], hparams)
    prompts = ["tumour", "normal fibrous stroma with fat", "necrosis"]
    tokens = processor(text=prompts)
    with torch.no_grad():
        ours = model.get_text_features(**tokens)
    expected_texts = reference_texts(raw, bert, tokens, "text_projection_global")
    torch.testing.assert_close(ours, expected_texts, atol=1e-5, rtol=0)

    # zero-shot: softmax over classes of the SigLIP scale (linear) x cosine
    classify = pipeline("zero-shot-slide-classification", model=str(converted))
    ranked = classify(bag, candidate_labels=prompts, hypothesis_template="{}")
    scale = raw["model.global_logit_scale"]
    expected = (scale * F.normalize(expected_slide, dim=-1) @ F.normalize(expected_texts, dim=-1).T).softmax(-1)
    expected = dict(zip(prompts, expected.tolist(), strict=True))
    assert {item["label"]: item["score"] for item in ranked} == pytest.approx(expected, abs=1e-5)

    # grounding: softmax over the patches of cosine(local text, local patch) / 0.5
    sentence = ["dense tumour cells"]
    (result,) = pipeline("slide-grounding", model=str(converted))(bag, sentences=sentence)
    local = reference_texts(raw, bert, processor(text=sentence), "text_projection_local")
    cosine = F.normalize(local, dim=-1) @ F.normalize(expected_patches, dim=-1).T
    torch.testing.assert_close(result["patch_scores"], (cosine[0] / 0.5).softmax(-1), atol=1e-5, rtol=0)


def test_every_pipeline_runs_without_the_package_and_push_accepts_the_folder(converted):
    from pathflip.model_cards.hub import check_model_folder, missing_parts

    assert missing_parts(converted) == []
    served = check_model_folder(converted)  # every task as remote code, in a process without the package
    assert set(served) == {"zero-shot-slide-classification", "slide-text-retrieval", "slide-feature-extraction",
                           "slide-grounding"}  # fmt: skip
    card = (converted / "README.md").read_text()
    assert "github.com/cyclexfy/PathFLIP2" in card and "CONCH v1" in card and "re-measure" in card
    assert json.loads((converted / "config.json").read_text())["auto_map"]["AutoModel"].startswith("modeling_pathflip2")


def test_missing_text_weights_come_from_the_text_model(tiny_release, tmp_path, bag_factory):
    """Frozen BERT weights are often not saved: the converter takes them from --text-model."""
    state = {key: value for key, value in tiny_release["state"].items()
             if "embeddings" not in key and "LayerNorm" not in key}  # fmt: skip
    checkpoint = _write(state, tmp_path, "bin")
    output = convert_checkpoint(checkpoint, tiny_release["folder"] / "hparams.yaml",
                                str(tiny_release["folder"] / "text-model"), tmp_path / "model")  # fmt: skip
    text_model = BertModel.from_pretrained(tiny_release["folder"] / "text-model")
    converted = AutoModel.from_pretrained(output)
    torch.testing.assert_close(converted.text_model.embeddings.word_embeddings.weight,
                               text_model.embeddings.word_embeddings.weight)  # fmt: skip


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update({"model.image_proj.0.bias_renamed": s.pop("model.image_proj.0.bias")}),
         r"unexpected key 'image_proj.0.bias_renamed'[\s\S]*missing key 'image_proj.0.bias'"),
        (lambda s: s.pop("model.slide_encoder.patch_decoder.norm_kv.weight"),
         r"missing key 'slide_encoder.patch_decoder.norm_kv.weight'"),
        (lambda s: s.update({"model.image_proj.0.weight": torch.zeros(3, 3)}),
         r"'image_proj.0.weight' has shape \(3, 3\), expected \(32, 16\)"),
        (lambda s: s.pop(f"{BERT}encoder.layer.0.attention.self.query.lora_B.default.weight"),
         r"encoder.layer.0.attention.self.query.base_layer.weight has no LoRA pair"),
    ],
)
def test_a_key_renamed_or_missing_is_named(tiny_release, tmp_path, change, message):
    state = dict(tiny_release["state"])
    change(state)
    checkpoint = _write(state, tmp_path, "bin")
    with pytest.raises(ConversionError, match=message):
        convert_checkpoint(checkpoint, tiny_release["folder"] / "hparams.yaml",
                           str(tiny_release["folder"] / "text-model"), tmp_path / "model")  # fmt: skip
    assert not (tmp_path / "model").exists(), "nothing written"


def test_a_pickle_with_objects_is_refused_unless_allowed(tiny_release, tmp_path):
    from fractions import Fraction  # any class outside torch's allow-list stands for arbitrary pickled objects

    torch.save({"state_dict": tiny_release["state"], "callbacks": Fraction(1, 3)}, tmp_path / "last.ckpt")
    folder = tiny_release["folder"]
    arguments = (tmp_path / "last.ckpt", folder / "hparams.yaml", str(folder / "text-model"))
    with pytest.raises(ConversionError, match="Python objects besides tensors.*--allow-pickle"):
        convert_checkpoint(*arguments, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    assert (convert_checkpoint(*arguments, tmp_path / "allowed", allow_pickle=True) / "model.safetensors").exists()


@pytest.mark.parametrize(
    "checkpoint, hparams, message",
    [
        (b"\x80\x04garbage" * 50, None, r"garbage.bin is not a PyTorch checkpoint \(Unsupported operand .*\)"),
        (b"", None, r"garbage.bin is not a readable PyTorch checkpoint"),
        (None, "embed_dim: [1", r"--hparams .* is not a YAML file \(while parsing"),
        (None, "embed_dim: abc\n", r"hparams embed_dim: 'abc' is not an int; fix the hparams file"),
    ],
)  # fmt: skip
def test_files_that_are_not_what_they_claim_are_named(tiny_release, tmp_path, checkpoint, hparams, message):
    folder = tiny_release["folder"]
    ckpt, yaml_file = tmp_path / "garbage.bin", folder / "hparams.yaml"
    if checkpoint is None:
        torch.save(tiny_release["state"], ckpt)
    else:
        ckpt.write_bytes(checkpoint)
    if hparams is not None:
        yaml_file = tmp_path / "hparams.yaml"
        yaml_file.write_text(hparams)
    with pytest.raises(ConversionError, match=message):
        convert_checkpoint(ckpt, yaml_file, str(folder / "text-model"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_layout_here_is_the_released_one():
    """The layout these tests generate equals the key list of the authors' class with the released hparams."""
    if not KEYS_FILE.is_file():
        pytest.skip(f"{KEYS_FILE} is absent (../shared/notes)")
    listed = {}
    for line in KEYS_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape, _ = line.split("\t")
            listed[key] = tuple(int(size) for size in shape.strip("()").split(",") if size.strip())
    generated = released_shapes(512, 512, BIO_CLINICAL_BERT, RELEASED_HPARAMS["lora_rank"],
                                RELEASED_HPARAMS["lora_target_modules"])  # fmt: skip
    assert generated == listed
    assert sum(math.prod(shape) for shape in listed.values()) == 122_063_620


def test_the_convert_verb(tiny_release, tmp_path, capsys):
    from pathflip.cli import main

    checkpoint = _write(tiny_release["state"], tmp_path, "safetensors")
    folder = tiny_release["folder"]
    arguments = ["convert", str(checkpoint), "--hparams", str(folder / "hparams.yaml"), "--text-model",
                 str(folder / "text-model")]  # fmt: skip
    assert main([*arguments, "-o", str(tmp_path / "model")]) == 0
    assert (tmp_path / "model" / "model.safetensors").exists() and "converted" in capsys.readouterr().out
    broken = dict(tiny_release["state"])
    broken.pop("model.image_proj.0.bias")
    _write(broken, tmp_path, "safetensors")
    assert main([*arguments, "-o", str(tmp_path / "broken")]) == 2
    error = capsys.readouterr().err
    assert "missing key 'image_proj.0.bias'" in error and "Traceback" not in error
    assert not (tmp_path / "broken").exists()


@pytest.mark.slow
def test_a_full_size_release_converts_and_matches(tmp_path, tokenizer, bag_factory):
    """The released sizes (512-d CONCH features, Bio_ClinicalBERT's shape, 122M values) end to end."""
    import yaml

    from tests.test_conversion.released_layout import random_state

    text = {**BIO_CLINICAL_BERT, "vocab_size": len(tokenizer)}  # the test tokenizer's vocabulary, the real depth
    shapes = released_shapes(512, 512, text, 16, RELEASED_HPARAMS["lora_target_modules"])
    raw = random_state(shapes, seed=3)
    save_file(raw, str(tmp_path / "model.safetensors"))
    (tmp_path / "hparams.yaml").write_text(yaml.safe_dump(RELEASED_HPARAMS))
    BertModel(BertConfig(**text)).save_pretrained(tmp_path / "text")
    tokenizer.save_pretrained(tmp_path / "text")
    output = convert_checkpoint(tmp_path / "model.safetensors", tmp_path / "hparams.yaml", str(tmp_path / "text"),
                                tmp_path / "converted")  # fmt: skip
    model = AutoModel.from_pretrained(output).eval()
    features = torch.randn(300, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        slide = model.get_slide_features(features[None]).slide_embeds[0]
        tokens = AutoProcessor.from_pretrained(output)(text=["tumour", "fibrous stroma with fat"])
        texts = model.get_text_features(**tokens)
    torch.testing.assert_close(slide, reference_slide(features, raw, 8)[0], atol=1e-5, rtol=0)
    expected = reference_texts(raw, reference_bert(raw, text, RELEASED_HPARAMS), tokens, "text_projection_global")
    torch.testing.assert_close(texts, expected, atol=1e-5, rtol=0)


def test_pathflip_push_accepts_the_converted_folder(tiny_release, tmp_path, minihub, hub_user, bag_factory):
    import subprocess
    import sys
    from pathlib import Path

    folder = tiny_release["folder"]
    output = convert_checkpoint(_write(tiny_release["state"], tmp_path, "ckpt"), folder / "hparams.yaml",
                                str(folder / "text-model"), tmp_path / "model")  # fmt: skip
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-m", "pathflip.cli", "push", str(output), "lab/pathflip2-converted"],
                            env={**minihub[0], "PYTHONPATH": str(root)}, cwd=root, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    bag = bag_factory(1, 30)
    loaded = hub_user("lab/pathflip2-converted", bag)  # by repo id, without the package: remote code
    assert all(module.startswith("transformers_modules") for module in loaded["classes"]), loaded["classes"]
    local = pipeline("slide-feature-extraction", model=str(output))(bag)
    torch.testing.assert_close(loaded["outputs"]["slide-feature-extraction"]["slide_embedding"],
                               local["slide_embedding"])  # fmt: skip

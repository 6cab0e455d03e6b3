"""Patch encoders: the weight-free stain-texture default, HF backbones and the timm wrapper."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch

from pathflip.processing.encoders import HFBackboneEncoder, StainTextureEncoder, TimmEncoder, load_encoder
from pathflip.synthetic.textures import render_texture

KINDS = ("tumour", "stroma", "necrosis", "lymphocytes", "fat")
PER_KIND = 10
STAIN_SCALES = np.linspace(0.75, 1.25, PER_KIND)


def _as_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def texture_set():
    """256 px patches, PER_KIND per tissue kind, each with its own seed and stain scale."""
    images, labels, scales = [], [], []
    for label, kind in enumerate(KINDS):
        for index, scale in enumerate(STAIN_SCALES):
            rng = np.random.default_rng([label, index])
            images.append(render_texture(kind, 256, 256, rng, stain_scale=float(scale)))
            labels.append(label)
            scales.append(scale)
    return _as_batch(images), np.array(labels), np.array(scales)


@pytest.fixture(scope="module")
def stain_features(texture_set):
    encoder = StainTextureEncoder()
    with torch.inference_mode():
        return encoder(encoder.preprocess(texture_set[0])).numpy()


def nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray, train: np.ndarray) -> float:
    """Held-out accuracy of a nearest-centroid classifier on features z-scored with training statistics."""
    mean, std = features[train].mean(0), features[train].std(0) + 1e-6
    z = (features - mean) / std
    centroids = np.stack([z[train & (labels == label)].mean(0) for label in range(len(KINDS))])
    predicted = ((z[~train, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((predicted == labels[~train]).mean())


def test_stain_texture_shape_and_determinism(texture_set, stain_features):
    patches = texture_set[0][:6]
    encoder = load_encoder("stain-texture")
    assert isinstance(encoder, StainTextureEncoder) and encoder.dim == 96
    with torch.inference_mode():
        features = encoder(encoder.preprocess(patches))
        again = StainTextureEncoder()(StainTextureEncoder().preprocess(patches))
        alone = encoder(encoder.preprocess(patches[2:3]))
    assert features.shape == (6, 96) and features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert torch.equal(features, again)
    # A patch's features must not depend on the rest of its batch.
    torch.testing.assert_close(alone[0], features[2], rtol=1e-4, atol=1e-4)
    # The frozen affine keeps H&E features near unit scale.
    assert np.isfinite(stain_features).all() and np.abs(stain_features).mean() < 2


def test_stain_texture_separates_tissue_types(texture_set, stain_features, record_property):
    patches, labels, scales = texture_set
    mean_rgb = patches.float().mean((2, 3)).numpy()
    interleaved = np.arange(len(labels)) % 2 == 0  # train on every other seed / stain scale
    stain_shift = scales <= 1.0  # train on pale slides, test on dark ones
    results = {}
    for split_name, train in (("interleaved", interleaved), ("stain-shift", stain_shift)):
        results[split_name] = {
            "stain-texture": nearest_centroid_accuracy(stain_features, labels, train),
            "texture-only": nearest_centroid_accuracy(stain_features[:, 32:], labels, train),
            "mean-rgb": nearest_centroid_accuracy(mean_rgb, labels, train),
        }
    record_property("nearest_centroid_accuracy", json.dumps(results))
    print(results)
    for split in results.values():
        assert split["stain-texture"] >= 0.9, results
        assert split["texture-only"] >= 0.9, results  # texture statistics carry the signal on their own
        assert split["stain-texture"] >= split["mean-rgb"], results
    assert results["stain-shift"]["stain-texture"] > results["stain-shift"]["mean-rgb"], results


def test_stain_texture_rejects_bad_patches():
    encoder = StainTextureEncoder()
    with pytest.raises(ValueError, match="uint8"):
        encoder.preprocess(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        encoder.preprocess(torch.zeros(2, 4, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="64"):
        encoder.preprocess(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_stain_texture_describe_is_json():
    description = json.loads(json.dumps(StainTextureEncoder().describe()))
    assert description["name"] == "stain-texture" and description["dim"] == 96
    assert description["weights"] is None


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("tiny-vit")
    config = ViTConfig(
        image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def test_hf_backbone_encodes_a_batch(tiny_vit):
    patches = torch.randint(0, 256, (3, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    encoder = load_encoder(str(tiny_vit))
    assert isinstance(encoder, HFBackboneEncoder) and encoder.dim == 32
    pixels = encoder.preprocess(patches)
    assert pixels.shape == (3, 3, 64, 64) and pixels.dtype == torch.float32
    with torch.inference_mode():
        cls = encoder(pixels)
        tokens = encoder.model(pixel_values=pixels).last_hidden_state
        mean = load_encoder(str(tiny_vit), pooling="mean")(pixels)
    assert cls.shape == (3, 32) and cls.dtype == torch.float32
    torch.testing.assert_close(cls, tokens[:, 0])
    torch.testing.assert_close(mean, tokens[:, 1:].mean(1))
    assert not torch.allclose(cls, mean)
    description = json.loads(json.dumps(encoder.describe()))
    assert description["dim"] == 32 and description["pooling"] == "cls" and description["model_type"] == "vit"


def test_hf_backbone_errors_name_the_source(tmp_path):
    missing = tmp_path / "no-such-encoder"
    with pytest.raises(FileNotFoundError, match="no-such-encoder"):
        load_encoder(str(missing))
    with pytest.raises(OSError, match="nobody/no-such-encoder"):
        load_encoder("nobody/no-such-encoder")  # offline (tests/conftest.py): the Hub cannot be reached
    with pytest.raises(ValueError, match="pooling"):
        HFBackboneEncoder(str(tmp_path), pooling="max")


def test_timm_without_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail even where timm is installed
    with pytest.raises(ImportError, match="pip install timm"):
        load_encoder("timm:x")


def test_timm_encoder_resizes_and_normalises(monkeypatch):
    """Against a stand-in for timm's create_model / resolve_data_config API (timm itself is not installed)."""
    calls = {}

    def create_model(name, **kwargs):
        calls.update(name=name, **kwargs)
        model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 8))
        model.num_features = 8
        return model

    def resolve_data_config(args, model):
        return {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5, 0.4, 0.3), "std": (0.2,) * 3}

    timm = types.ModuleType("timm")
    timm.create_model = create_model
    timm.data = types.ModuleType("timm.data")
    timm.data.resolve_data_config = resolve_data_config
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.data", timm.data)

    encoder = load_encoder("timm:hf-hub:owner/model", init_values=1e-5)
    assert isinstance(encoder, TimmEncoder) and encoder.dim == 8 and encoder.name == "timm:hf-hub:owner/model"
    assert calls == {"name": "hf-hub:owner/model", "pretrained": True, "num_classes": 0, "init_values": 1e-5}
    grey = torch.full((2, 3, 256, 256), 102, dtype=torch.uint8)  # 0.4 of full scale everywhere
    pixels = encoder.preprocess(grey)
    assert pixels.shape == (2, 3, 224, 224)
    torch.testing.assert_close(pixels.mean((0, 2, 3)), torch.tensor([-0.5, 0.0, 0.5]), atol=1e-4, rtol=0)
    with torch.inference_mode():
        assert encoder(pixels).shape == (2, 8)
    assert json.loads(json.dumps(encoder.describe()))["input_size"] == [224, 224]

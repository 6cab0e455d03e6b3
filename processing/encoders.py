"""Patch encoders behind one small interface: uint8 RGB patches in, one feature vector per patch out.

``load_encoder("stain-texture")`` is the weight-free offline default; ``load_encoder("timm:<name>")`` wraps a
timm model (e.g. ``timm:hf-hub:MahmoodLab/UNI``); any other name is a Hugging Face folder or Hub id of a
ViT-style backbone (e.g. ``owkin/phikon``). ``preprocess`` runs in DataLoader workers (CPU, no model);
``__call__`` runs on the encoder's device inside the caller's ``torch.inference_mode``.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


class PatchEncoder(ABC):
    """Turns uint8 RGB patches [B, 3, H, W] into float32 features [B, dim]."""

    name: str
    dim: int
    device: torch.device = torch.device("cpu")

    @abstractmethod
    def preprocess(self, patches: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] RGB -> the float tensor ``__call__`` takes (CPU only, safe in DataLoader workers)."""

    @abstractmethod
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed pixels -> float32 features [B, dim]."""

    @abstractmethod
    def to(self, device: torch.device | str) -> PatchEncoder:
        """Move the encoder to ``device``; returns self."""

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description for run manifests: a rerun must produce the same one."""
        return {"name": self.name, "dim": self.dim, "class": type(self).__name__}


def _check_patches(patches: torch.Tensor, *, min_size: int = 1) -> None:
    if not isinstance(patches, torch.Tensor) or patches.dtype != torch.uint8 or patches.ndim != 4:
        found = f"{patches.dtype} {tuple(patches.shape)}" if isinstance(patches, torch.Tensor) else type(patches)
        raise ValueError(f"patches must be a uint8 tensor [B, 3, H, W] (RGB), got {found}")
    if patches.shape[1] != 3 or min(patches.shape[2:]) < min_size:
        raise ValueError(f"patches must be [B, 3, H, W] RGB with H, W >= {min_size}, got {tuple(patches.shape)}")


# ----------------------------------------------------------------------------------------------------------------
# Stain-texture: H&E colour deconvolution + a Gaussian-derivative filter bank. No weights, deterministic.

# Ruifrok & Johnston (2001) optical densities of haematoxylin and eosin (RGB); the third stain is the residual.
_RUIFROK = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]], dtype=torch.float64)
_LEVELS = 4  # filter-bank scales: sigma = 1, 2, 4, 8 pixels (sigma 1 on a 2x-mean pyramid)
# The Gaussian jet: smoothed image and derivatives as (x order, y order).
_JET_ORDERS = {"L": (0, 0), "Lx": (1, 0), "Ly": (0, 1), "Lxx": (2, 0), "Lyy": (0, 2), "Lxy": (1, 1)}


def _stain_unmixing() -> torch.Tensor:
    """[3, 3] matrix taking RGB optical density to (haematoxylin, eosin, residual) concentrations."""
    stains = F.normalize(_RUIFROK, dim=1)
    residual = F.normalize(torch.linalg.cross(stains[0], stains[1]), dim=0)
    return torch.linalg.inv(torch.cat([stains, residual[None]])).float()


def _gaussian_jet_kernels(sigma: float = 1.0, radius: int = 3) -> torch.Tensor:
    """[6, 2 * radius + 1, 2 * radius + 1] Gaussian derivative kernels, in _JET_ORDERS order."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    # conv2d correlates (no kernel flip), so +x g / sigma^2 yields the derivative itself.
    by_order = [g, x / sigma**2 * g, (x**2 - sigma**2) / sigma**4 * g]
    kernels = [torch.outer(by_order[y_order], by_order[x_order]) for x_order, y_order in _JET_ORDERS.values()]
    return torch.stack(kernels).float()


class StainTextureEncoder(PatchEncoder):
    """Weight-free H&E descriptor, ``dim`` = 96 = 32 stain statistics + 64 texture statistics.

    ``preprocess`` unmixes RGB into haematoxylin/eosin/residual optical density (Ruifrok & Johnston).
    Stain statistics (32): for H and E the mean, std and 5/25/50/75/95/99 % quantiles; residual mean and
    std; fractions of H above 0.3/0.6/1.0 and E above 0.1/0.2/0.35; tissue fraction, mean and std of total
    optical density; the H share of stain; the H-E correlation; mean optical density of R, G and B.
    Texture statistics (64): for H and E at sigma = 1, 2, 4, 8 px (Gaussian jet on a 2x pyramid): mean
    |LoG|, LoG std, mean blob response (-LoG)+, blob coverage, blob-peak density, mean gradient magnitude,
    energy-weighted structure-tensor coherence (orientedness: fibres), std of the smoothed stain.
    A fixed affine (frozen constants) puts every feature near zero mean and unit scale on H&E tissue.
    Filter scales are in pixels of the patch as read, so use one magnification for a whole dataset.
    """

    name = "stain-texture"
    dim = 96
    version = 1

    def __init__(self, *, device: torch.device | str | None = None):
        self._unmixing = _stain_unmixing()
        self._jet = _gaussian_jet_kernels()
        self.to(device or "cpu")

    def preprocess(self, patches: torch.Tensor) -> torch.Tensor:
        """uint8 RGB [B, 3, H, W] (H, W >= 64) -> float32 [B, 6, H, W]: H, E, residual, OD of R, G, B."""
        _check_patches(patches, min_size=8 * 2 ** (_LEVELS - 1))
        density = -torch.log10((patches.float() + 1) / 256)
        stains = torch.einsum("bchw,cs->bshw", density, self._unmixing)
        return torch.cat([stains, density], dim=1)

    def to(self, device: torch.device | str) -> StainTextureEncoder:
        self.device = torch.device(device)
        self._jet = self._jet.to(self.device)
        return self

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "version": self.version, "weights": None, "scales_px": [1, 2, 4, 8]}

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        # Autocast would run the filter bank in bf16 on GPUs: features must not depend on the device.
        with torch.autocast(self.device.type, enabled=False):
            pixels = pixels.to(self.device, torch.float32)
            features = torch.cat([_stain_statistics(pixels), self._texture_statistics(pixels[:, :2])], dim=1)
        return (features - _OFFSET.to(features.device)) / _SCALE.to(features.device)

    def _texture_statistics(self, stains: torch.Tensor) -> torch.Tensor:
        """[B, 64]: 8 statistics x 4 scales x (H, E), ordered statistic-major."""
        per_level = []
        for level in range(_LEVELS):
            if level:
                stains = F.avg_pool2d(stains, 2)
            per_level.append(_jet_statistics(_gaussian_jet(stains, self._jet)))
        return torch.stack(per_level, dim=2).flatten(1)  # [B, statistic, level, channel]


def _gaussian_jet(images: torch.Tensor, kernels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gaussian-smoothed image and its derivatives up to order 2 ([B, C, H, W] each), in one grouped conv."""
    channels, count, size = images.shape[1], *kernels.shape[:2]
    padded = F.pad(images, [size // 2] * 4, mode="replicate")
    # channels_last makes oneDNN's depthwise convolution several times faster on CPU.
    padded = padded.contiguous(memory_format=torch.channels_last)
    jet = F.conv2d(padded, kernels.repeat(channels, 1, 1)[:, None], groups=channels).contiguous()
    return dict(zip(_JET_ORDERS, jet.unflatten(1, (channels, count)).unbind(2), strict=True))


def _local_maxima(values: torch.Tensor) -> torch.Tensor:
    """True where a pixel equals the maximum of its 3x3 neighbourhood (shifted maxima: faster than max_pool2d)."""
    padded = F.pad(values, (1, 1, 1, 1), mode="replicate")
    rows = torch.maximum(torch.maximum(padded[..., :-2], padded[..., 1:-1]), padded[..., 2:])
    return values == torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def _jet_statistics(jet: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, 8, C] texture statistics of one scale."""
    blob = -(jet["Lxx"] + jet["Lyy"])  # positive on blobs denser than their surround (nuclei, granules)
    strong = blob > 0.05
    peaks = strong & _local_maxima(blob)
    # Structure tensor over 4x4 windows; summed anisotropy over summed energy weights textured areas.
    tensor = [F.avg_pool2d(jet[a] * jet[b], 4) for a, b in (("Lx", "Lx"), ("Ly", "Ly"), ("Lx", "Ly"))]
    anisotropy = torch.sqrt((tensor[0] - tensor[1]) ** 2 + 4 * tensor[2] ** 2)
    coherence = anisotropy.sum((2, 3)) / ((tensor[0] + tensor[1]).sum((2, 3)) + 1e-6)
    statistics = [
        blob.abs().mean((2, 3)),
        blob.std((2, 3)),
        blob.clamp(min=0).mean((2, 3)),
        strong.float().mean((2, 3)),
        peaks.float().mean((2, 3)),
        torch.hypot(jet["Lx"], jet["Ly"]).mean((2, 3)),
        coherence,
        jet["L"].std((2, 3)),
    ]
    return torch.stack(statistics, dim=1)


def _stain_statistics(pixels: torch.Tensor) -> torch.Tensor:
    """[B, 32] colour-deconvolution statistics (see StainTextureEncoder)."""
    haematoxylin, eosin, residual, rgb = pixels[:, 0], pixels[:, 1], pixels[:, 2], pixels[:, 3:]
    # Quantiles from every 4th pixel in each direction: the same distribution at a fraction of the sort cost.
    sampled = pixels[:, :2, ::4, ::4].flatten(2).sort(dim=2).values
    positions = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95, 0.99], device=pixels.device) * (sampled.shape[2] - 1)
    quantiles = sampled[:, :, positions.round().long()]  # [B, 2, 6]
    stain_pair = pixels[:, :2].flatten(2)
    total = rgb.sum(1)
    share = haematoxylin.mean((1, 2)) / (haematoxylin.mean((1, 2)) + eosin.mean((1, 2))).clamp(min=1e-3)
    centred = stain_pair - stain_pair.mean(2, keepdim=True)
    correlation = (centred[:, 0] * centred[:, 1]).mean(1) / (centred.std(2).prod(1) + 1e-6)
    columns = [
        torch.cat([stain_pair.mean(2, keepdim=True), stain_pair.std(2, keepdim=True), quantiles], 2).flatten(1),
        torch.stack([residual.mean((1, 2)), residual.std((1, 2))], 1),
        torch.stack([(haematoxylin > t).float().mean((1, 2)) for t in (0.3, 0.6, 1.0)], 1),
        torch.stack([(eosin > t).float().mean((1, 2)) for t in (0.1, 0.2, 0.35)], 1),
        torch.stack([(total > 0.3).float().mean((1, 2)), total.mean((1, 2)), total.std((1, 2))], 1),
        torch.stack([share, correlation], 1),
        rgb.mean((2, 3)),
    ]
    return torch.cat(columns, dim=1)


def _floats(text: str) -> torch.Tensor:
    return torch.tensor([float(value) for value in text.split()])


# Frozen standardisation: mean and std of each raw feature over 256 px patches of the six synthetic tissue
# kinds (stain scale 0.75-1.25) and of OpenSlide's CMU-1-Small-Region H&E slide, to 3 significant digits.
# Changing them changes every bag's features, so they are part of the encoder's version.
_OFFSET = _floats(
    """
    0.286 0.223 0.0912 0.13 0.188 0.42 0.656 0.992 0.08 0.0558 0.022 0.0474 0.0675 0.104 0.173 0.254 0.091
    0.0496 0.27 0.127 0.0849 0.347 0.109 0.0157 0.564 0.611 0.426 0.828 0.346 0.162 0.272 0.177 0.0443 0.0119
    0.06 0.0135 0.062 0.0123 0.0495 0.0106 0.0695 0.0198 0.0849 0.0195 0.0844 0.0173 0.0658 0.0145 0.0233
    0.00625 0.0311 0.00708 0.0322 0.00648 0.0259 0.00561 0.112 0.029 0.136 0.0349 0.136 0.024 0.138 0.0144
    0.0136 0.00638 0.0189 0.00867 0.0247 0.00829 0.0296 0.00526 0.0535 0.0138 0.0651 0.0142 0.0593 0.0126 0.0469
    0.0106 0.727 0.686 0.676 0.662 0.639 0.646 0.589 0.602 0.191 0.0437 0.158 0.036 0.116 0.0282 0.0807 0.0215
    """
)
_SCALE = _floats(
    """
    0.25 0.208 0.0721 0.0987 0.149 0.443 0.62 0.735 0.0702 0.0484 0.0432 0.0508 0.0655 0.0915 0.141 0.204 0.066
    0.0331 0.263 0.174 0.133 0.324 0.15 0.029 0.441 0.509 0.372 0.15 0.635 0.147 0.228 0.138 0.0477 0.0109
    0.0728 0.0119 0.0734 0.00975 0.054 0.00803 0.0639 0.0191 0.0853 0.0162 0.0867 0.0133 0.0656 0.0111 0.0248
    0.00568 0.0373 0.00618 0.0377 0.0051 0.028 0.00427 0.111 0.041 0.132 0.0524 0.145 0.0383 0.149 0.0294 0.0111
    0.0084 0.0138 0.0111 0.0244 0.011 0.0301 0.00865 0.0585 0.0122 0.0782 0.0117 0.0645 0.00954 0.049 0.00828
    0.167 0.168 0.153 0.125 0.155 0.13 0.139 0.124 0.179 0.0349 0.148 0.0295 0.11 0.0251 0.0803 0.0213
    """
)


# ----------------------------------------------------------------------------------------------------------------
# Pretrained backbones.


class HFBackboneEncoder(PatchEncoder):
    """A ViT-style Hugging Face image backbone (``AutoModel`` + ``AutoImageProcessor``), e.g. ``owkin/phikon``.

    ``pooling``: "cls" (the first token of ``last_hidden_state``), "mean" (mean of the patch tokens, after
    the CLS and any register tokens) or "pooler" (``pooler_output``).
    """

    def __init__(self, path_or_id: str, *, pooling: str = "cls", device: torch.device | str | None = None):
        from transformers import AutoImageProcessor, AutoModel

        if pooling not in ("cls", "mean", "pooler"):
            raise ValueError(f"pooling must be 'cls', 'mean' or 'pooler', got {pooling!r}")
        source = _checked_source(path_or_id)
        try:
            self.processor = AutoImageProcessor.from_pretrained(source)
            self.model = AutoModel.from_pretrained(source).eval()
        except (OSError, ValueError) as error:
            raise OSError(
                f"could not load the patch encoder {path_or_id!r} ({error}); pass a folder holding config.json, "
                "the weights and preprocessor_config.json, or a Hub id you can reach (mind HF_HUB_OFFLINE and gated "
                "models: `hf auth login`)"
            ) from error
        config = self.model.config
        self.name, self.pooling = path_or_id, pooling
        self.dim = int(config.hidden_size)
        # Tokens before the patch tokens: [CLS] plus register tokens (DINOv2-with-registers style models).
        self._prefix_tokens = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        self.to(device or "cpu")

    def preprocess(self, patches: torch.Tensor) -> torch.Tensor:
        _check_patches(patches)
        images = list(patches)
        return self.processor(images=images, return_tensors="pt", input_data_format="channels_first")["pixel_values"]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        outputs = self.model(pixel_values=pixels.to(self.device, self.model.dtype))
        if self.pooling == "pooler":
            if getattr(outputs, "pooler_output", None) is None:
                raise ValueError(f"{self.name!r} has no pooler_output; use pooling='cls' or 'mean'")
            return outputs.pooler_output.float()
        tokens = outputs.last_hidden_state
        pooled = tokens[:, 0] if self.pooling == "cls" else tokens[:, self._prefix_tokens :].mean(1)
        return pooled.float()

    def to(self, device: torch.device | str) -> HFBackboneEncoder:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        revision = getattr(config, "_commit_hash", None)
        return {
            **super().describe(),
            "pooling": self.pooling,
            "weights": self.name,
            "revision": revision,
            "model_type": config.model_type,
        }


def _checked_source(path_or_id: str) -> str:
    """Fail early, naming it, when a path-like encoder name is not an existing folder."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return str(path)
    # Hub ids are "name" or "owner/name"; anything else that is not a folder is a mistyped path.
    looks_like_path = path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") > 1
    if looks_like_path or path.exists():
        raise FileNotFoundError(
            f"patch encoder folder {path_or_id!r} does not exist (or is not a folder); pass a folder saved with "
            "save_pretrained, a Hub id such as 'owkin/phikon', 'timm:<model>' or 'stain-texture'"
        )
    return path_or_id


class TimmEncoder(PatchEncoder):
    """A timm model (``timm:<name>``, e.g. ``timm:hf-hub:MahmoodLab/UNI``) with its pretrained weights.

    ``model_options`` go to ``timm.create_model`` (e.g. ``init_values=1e-5, dynamic_img_size=True`` for UNI).
    Patches are resized to the model's input size (no crop: a patch is already the field of view) and
    normalised with the model's mean and std.
    """

    def __init__(self, model_name: str, *, device: torch.device | str | None = None, **model_options: Any):
        try:
            timm = importlib.import_module("timm")
            timm_data = importlib.import_module("timm.data")
        except ImportError as error:
            raise ImportError(f"the encoder 'timm:{model_name}' needs timm: pip install timm") from error
        self.model = timm.create_model(model_name, pretrained=True, num_classes=0, **model_options).eval()
        config = timm_data.resolve_data_config({}, model=self.model)
        self.name, self.dim = f"timm:{model_name}", int(self.model.num_features)
        self.input_size = tuple(config["input_size"][1:])
        self.interpolation = "bicubic" if config.get("interpolation") == "bicubic" else "bilinear"
        self.mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(config["std"]).view(1, 3, 1, 1)
        self.model_options = model_options
        self.to(device or "cpu")

    def preprocess(self, patches: torch.Tensor) -> torch.Tensor:
        _check_patches(patches)
        pixels = patches.float() / 255
        if tuple(pixels.shape[2:]) != self.input_size:
            pixels = F.interpolate(pixels, size=self.input_size, mode=self.interpolation, antialias=True)
            pixels = pixels.clamp(0, 1)
        return (pixels - self.mean) / self.std

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels.to(self.device)).float()

    def to(self, device: torch.device | str) -> TimmEncoder:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def describe(self) -> dict[str, Any]:
        options = {key: repr(value) for key, value in self.model_options.items()}
        return {**super().describe(), "weights": self.name, "input_size": list(self.input_size), "options": options}


def load_encoder(name: str, **options: Any) -> PatchEncoder:
    """``"stain-texture"`` -> StainTextureEncoder; ``"timm:<name>"`` -> TimmEncoder; else HFBackboneEncoder."""
    if name == StainTextureEncoder.name:
        return StainTextureEncoder(**options)
    if name.startswith("timm:"):
        return TimmEncoder(name.removeprefix("timm:"), **options)
    return HFBackboneEncoder(name, **options)

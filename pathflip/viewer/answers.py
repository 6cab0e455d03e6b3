"""What the viewer answers about prepared slides: grounding layers, zero-shot probabilities and cohort search.

Each answer encodes only its texts; the slide side comes from `SlideEncodings`. The computations are the ones the
pipelines use (`get_grounding`, `zero_shot_logits`, the evaluation's prompts), so the page shows what
``pipeline()`` and ``pathflip eval`` compute.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch
from PIL import Image

from modeling_pathflip.heatmap_pathflip import heatmap_raster, patch_grid, top_patches_geojson
from modeling_pathflip.pipeline_options_pathflip import check_option
from modeling_pathflip.pipeline_pathflip import zero_shot_logits
from modeling_pathflip.subcaptions_pathflip import split_sentences

from ..eval.spec import ZERO_SHOT_TEMPLATES
from .encoding import PreparedSlide, SlideEncodings

# One colour per sentence, in order (Okabe-Ito: distinguishable with colour-blindness and over H&E).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
MAX_SENTENCES = len(PALETTE)
MAX_TOP_PATCHES = 200
MAX_LABELS = 64  # each label is 3 prompts through the text tower while the model is held


def sentences_of(text: Any) -> list[str]:
    """The sentences of a request: a text (a sentence or a pasted report) or a list of them, each split as captions
    are; a sentence given twice is one layer."""
    items = [text] if isinstance(text, str) else text
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise ValueError(f"text must be a sentence, a report or a list of them, got {text!r}.")
    sentences = list(dict.fromkeys(sentence for item in items for sentence in split_sentences(item)))
    if not sentences:
        raise ValueError("text has no sentence to ground; type a sentence such as 'A focus of necrosis.'")
    if len(sentences) > MAX_SENTENCES:
        raise ValueError(f"text has {len(sentences)} sentences; ground at most {MAX_SENTENCES} at once.")
    return check_option("sentences", sentences)


def _top_k(value: Any) -> int:
    top_k = check_option("top_k", 10 if value is None else value)  # null is "not given", as in the pipelines
    if top_k > MAX_TOP_PATCHES:
        raise ValueError(f"top_k must be at most {MAX_TOP_PATCHES}, got {top_k}.")
    return top_k


def _texts(encodings: SlideEncodings, texts: list[str]) -> dict[str, torch.Tensor]:
    tokens = encodings.pipe.processor(text=texts)
    return {name: tensor.to(encodings.pipe.device) for name, tensor in dict(tokens).items()}


def patch_scores(encodings: SlideEncodings, prepared: PreparedSlide, sentences: list[str]) -> torch.Tensor:
    """``[T, N]`` grounding score of each patch (rows of ``prepared.coords``) for each sentence."""
    texts = _texts(encodings, sentences)
    with encodings.model_lock, torch.inference_mode():
        grounding = encodings.model.get_grounding(**prepared.inputs, **texts, slide_features=prepared.slide_features)
    return grounding.patch_scores[0, :, : len(prepared.coords)].float().cpu()


def grounding_layers(encodings: SlideEncodings, key: str, text: Any, top_k: Any = 10) -> list[dict[str, Any]]:
    """One layer per sentence: a PNG on the patch grid (its level-0 ``bounds``), a colour and the top patches."""
    sentences, top_k = sentences_of(text), _top_k(top_k)
    prepared = encodings.get(key)
    scores = patch_scores(encodings, prepared, sentences)
    layers = []
    for number, (sentence, sentence_scores) in enumerate(zip(sentences, scores, strict=True)):
        grid, origin = patch_grid(sentence_scores, prepared.coords, prepared.patch_size_level0)
        size = prepared.patch_size_level0
        collection = top_patches_geojson(sentence_scores, prepared.coords, size, top_k=top_k, name=sentence)
        layers.append({
            "sentence": sentence,
            "colour": PALETTE[number],
            "image": "data:image/png;base64," + base64.b64encode(_layer_png(grid, PALETTE[number])).decode(),
            "bounds": {"x": origin[0], "y": origin[1], "width": grid.shape[1] * size, "height": grid.shape[0] * size},
            "top_patches": [_patch(feature, size) for feature in collection["features"]],
        })  # fmt: skip
    return layers


def _patch(feature: dict, size: int) -> dict[str, Any]:
    (x, y), properties = feature["geometry"]["coordinates"][0][0], feature["properties"]
    return {"x": x, "y": y, "size": size, "score": properties["score"], "rank": properties["rank"]}


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def _layer_png(grid: torch.Tensor, colour: str) -> bytes:
    """The patch grid as an RGBA PNG: the sentence's colour, opaque where the score is high, clear off tissue."""
    values = np.nan_to_num(grid.numpy(), nan=0.0)
    rgba = np.zeros((*values.shape, 4), np.uint8)
    rgba[..., :3] = _rgb(colour)
    rgba[..., 3] = np.round(255 * values**2).astype(np.uint8)  # squared: the page shows where, not a wash
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def layers_geojson(encodings: SlideEncodings, key: str, text: Any, top_k: Any = 10) -> dict[str, Any]:
    """The top patches of every sentence as one QuPath FeatureCollection, each classified by its sentence."""
    sentences, top_k = sentences_of(text), _top_k(top_k)
    prepared = encodings.get(key)
    features = []
    for number, (sentence, scores) in enumerate(zip(sentences, patch_scores(encodings, prepared, sentences),
                                                    strict=True)):  # fmt: skip
        collection = top_patches_geojson(scores, prepared.coords, prepared.patch_size_level0, top_k=top_k,
                                         name=sentence)  # fmt: skip
        for feature in collection["features"]:
            feature["properties"]["classification"] = {"name": sentence, "color": list(_rgb(PALETTE[number]))}
            features.append(feature)
    return {"type": "FeatureCollection", "features": features}


def layers_png(encodings: SlideEncodings, key: str, text: Any, *, opacity: float = 0.6, longest: int = 2048) -> bytes:
    """The slide thumbnail with every sentence's heatmap blended over it in the sentence's colour."""
    if isinstance(opacity, bool) or not isinstance(opacity, (int, float)) or not 0 <= opacity <= 1:
        raise ValueError(f"opacity must be a number from 0 to 1, got {opacity!r}.")
    sentences = sentences_of(text)
    prepared = encodings.get(key)
    thumbnail = np.asarray(encodings.library.thumbnail_image(key, longest), np.float32)
    size, dimensions = (thumbnail.shape[1], thumbnail.shape[0]), encodings.library.dimensions(key)
    for number, scores in enumerate(patch_scores(encodings, prepared, sentences)):
        raster = heatmap_raster(scores, prepared.coords, prepared.patch_size_level0, dimensions, size).numpy()
        weight = opacity * np.nan_to_num(raster, nan=0.0)[..., None] ** 2
        thumbnail = (1 - weight) * thumbnail + weight * np.asarray(_rgb(PALETTE[number]), np.float32)
    buffer = io.BytesIO()
    Image.fromarray(thumbnail.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def zero_shot(encodings: SlideEncodings, key: str, labels: Any) -> list[dict[str, Any]]:
    """``[{label, score}]`` sorted: the slide against the labels, with the evaluation's prompt ensemble."""
    if labels is None:
        raise ValueError("labels are missing; give two or more class names, e.g. ['tumour', 'normal tissue'].")
    labels = check_option("candidate_labels", labels)
    if len(labels) > MAX_LABELS:
        raise ValueError(f"labels has {len(labels)} classes; give at most {MAX_LABELS}.")
    prepared = encodings.get(key)
    prompts = [template.format(label) for label in labels for template in ZERO_SHOT_TEMPLATES]
    texts = _texts(encodings, prompts)
    with encodings.model_lock, torch.inference_mode():
        logits = zero_shot_logits(encodings.model, encodings.model.get_text_features(**texts), len(ZERO_SHOT_TEMPLATES),
                                  slide_embeds=prepared.slide_features.slide_embeds, bag=prepared.inputs)  # fmt: skip
    scores = logits[0].float().softmax(-1).tolist()
    return sorted(({"label": label, "score": score} for label, score in zip(labels, scores, strict=True)),
                  key=lambda item: -item["score"])  # fmt: skip


def search(encodings: SlideEncodings, text: Any, top_k: Any = 10) -> dict[str, Any]:
    """The indexed slides ranked by cosine similarity to ``text``; says how many slides are not indexed yet."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty search text, got {text!r}.")
    top_k = check_option("top_k", 10 if top_k is None else top_k)
    keys = list(encodings.embeddings)
    total = len(encodings.library.slides)
    if not keys:
        return {"results": [], "indexed": 0, "total": total}
    with encodings.model_lock, torch.inference_mode():
        query = encodings.model.get_text_features(**_texts(encodings, [text]))[0].float().cpu()
    slides = torch.stack([encodings.embeddings[key] for key in keys])
    similarity = slides @ torch.nn.functional.normalize(query, dim=-1)
    order = similarity.argsort(descending=True)[:top_k].tolist()
    results = [{"key": keys[i], "slide_id": encodings.library.get(keys[i]).slide_id, "score": float(similarity[i])}
               for i in order]  # fmt: skip
    return {"results": results, "indexed": len(keys), "total": total}

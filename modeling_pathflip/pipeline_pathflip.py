"""PathFLIP tasks as `transformers.pipeline()`s.

Every task takes a bag (a dict or `datasets` row with features, coords and patch_size_level0) or a
path (dataset folder, TRIDENT/CLAM .h5, extracted .safetensors bag, or a slide file); a list of inputs gives a
list of results. Paths, slide thumbnails and heatmap files go through an *input loader*: an object with
``load_bags(source, *, patch_encoder, mpp, patch_size_um, patch_size_px, device)``,
``slide_canvas(source, *, mpp, longest)`` and
``write_grounding(heatmap, geojson, *, output_dir, stem, thumbnail)``. Pass one as
``pipeline(..., input_loader=obj)``, or the name of one registered with `register_input_loader` or installed as a
``pathflip.input_loaders`` entry point; the default, ``"files"``, is the `pathflip` package's.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from transformers import Pipeline

from .grounding_head_pathflip import check_grounding_head_wanted
from .heatmap_pathflip import heatmap_raster, top_patches_geojson
from .pipeline_options_pathflip import check_option, check_templates

DEFAULT_TEMPLATES = ("{}.", "an H&E image of {}.", "a whole slide image showing {}.")
INPUT_LOADER_GROUP = "pathflip.input_loaders"
DEFAULT_INPUT_LOADER = "files"
_INPUT_LOADERS: dict[str, Any] = {}
INPUT_LOADER_METHODS = ("load_bags", "slide_canvas", "write_grounding")


def register_input_loader(name: str, loader: Any) -> None:
    """Make ``loader`` the input loader that ``input_loader=name`` (or, for ``"files"``, the default) selects."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"an input loader's name must be a non-empty text, got {name!r}.")
    missing = [method for method in INPUT_LOADER_METHODS if not callable(getattr(loader, method, None))]
    if missing:
        raise ValueError(f"input loader {name!r} ({type(loader).__name__}) lacks {missing}; it needs "
                         f"{list(INPUT_LOADER_METHODS)} (see this module's docstring).")  # fmt: skip
    _INPUT_LOADERS[name] = loader


def find_input_loader(name: str = DEFAULT_INPUT_LOADER) -> Any:
    """The input loader registered as ``name``, else the installed ``pathflip.input_loaders`` entry point."""
    if name in _INPUT_LOADERS:
        return _INPUT_LOADERS[name]
    from importlib.metadata import entry_points

    for entry in entry_points(group=INPUT_LOADER_GROUP, name=name):
        try:
            _INPUT_LOADERS[name] = entry.load()
        except ImportError:  # e.g. a Hub user whose environment hides the package
            break
        return _INPUT_LOADERS[name]
    if name != DEFAULT_INPUT_LOADER:
        raise ValueError(f"no input loader named {name!r}; registered: {sorted(_INPUT_LOADERS)} (register_input_loader "
                         "adds one).")  # fmt: skip
    raise ImportError(
        f"no input loader named {name!r}: reading files and slides needs the pathflip package (pip install pathflip), "
        "or pass the bag as a dict with features, coords and patch_size_level0."
    )


def prompt_ensemble_embeddings(prompt_embeds: torch.Tensor, num_templates: int) -> torch.Tensor:
    """Unit class embeddings ``[C, E]``: the mean of each class's normalised prompt embeddings ``[C * T, E]`` (class
    major: all templates of class 0, then class 1, ...)."""
    texts = torch.nn.functional.normalize(prompt_embeds, dim=-1)
    return torch.nn.functional.normalize(texts.reshape(-1, num_templates, texts.shape[-1]).mean(dim=1), dim=-1)


def reads_patches_for_zero_shot(model, use_grounding_head: bool | None = None) -> bool:
    """Whether `zero_shot_logits` scores ``model``'s class prompts from a bag's patches (a fitted grounding head,
    unless ``use_grounding_head=False``) rather than from the slide embedding."""
    return getattr(model, "grounding_head", None) is not None and use_grounding_head is not False


def zero_shot_logits(model, prompt_embeds: torch.Tensor, num_templates: int, *,
                     slide_embeds: torch.Tensor | None = None, bag: Mapping[str, torch.Tensor] | None = None,
                     use_grounding_head: bool | None = None) -> torch.Tensor:  # fmt: skip
    """``[B, C]`` zero-shot logits of slides against class prompts ``prompt_embeds`` ``[C * T, E]`` (class major).

    A model with a fitted grounding head reads the processor's ``bag`` tensors: each prompt's pooled presence
    log-odds over the patches, averaged over the templates (the head pools an extent, an absence or a single finding
    as each text needs; the slide embedding keeps neither small findings nor extents well). Otherwise
    ``slide_embeds`` against the prompt ensemble's class embeddings, at the model's own zero-shot scale.
    ``use_grounding_head=False`` keeps the slide embedding for a model with a head.
    """
    check_grounding_head_wanted(model, use_grounding_head)
    if reads_patches_for_zero_shot(model, use_grounding_head):
        if bag is None:
            raise ValueError("a model with a grounding head scores zero-shot prompts from the bag; pass bag=, or "
                             "use_grounding_head=False for the slide embedding.")  # fmt: skip
        logits = model.grounding_head.presence_logits(bag["patch_features"], bag["patch_attention_mask"], prompt_embeds)
        return logits.reshape(len(logits), -1, num_templates).mean(dim=-1)
    if slide_embeds is None:
        raise ValueError("zero_shot_logits needs the slides' embeddings; pass slide_embeds=.")
    classes = prompt_ensemble_embeddings(prompt_embeds, num_templates).to(slide_embeds.dtype)
    return model.zero_shot_logit_scale() * torch.nn.functional.normalize(slide_embeds, dim=-1) @ classes.T


class _SlidePipeline(Pipeline):
    """Shared parts: processor only, one slide per forward, bags read through the input loader."""

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    preprocess_options: tuple[str, ...] = ("patch_encoder", "mpp")
    postprocess_options: tuple[str, ...] = ()

    model_types: tuple[str, ...] = ("pathflip", "pathflip2")  # what the task's model must be

    def __init__(self, *args, input_loader: Any = DEFAULT_INPUT_LOADER, **kwargs):
        self._input_loader = input_loader
        super().__init__(*args, **kwargs)
        model_type = getattr(self.model.config, "model_type", None)
        if model_type not in self.model_types:
            other = ("a slide-text-generation model (pathflip train --stage caption / instruct)"
                     if "pathflip_generation" in self.model_types else "an alignment model")  # fmt: skip
            raise ValueError(f"{type(self).__name__} runs on {other}; this one is a {model_type!r} model. Use the "
                             "tasks its folder's config.json lists under custom_pipelines.")  # fmt: skip

    @property
    def input_loader(self) -> Any:
        """The object that reads paths and writes heatmap files (looked up on first use when given by name)."""
        if isinstance(self._input_loader, str):
            self._input_loader = find_input_loader(self._input_loader)
        return self._input_loader

    def load_bags(self, inputs: Any, patch_encoder: str | None = None, mpp: float | None = None) -> list:
        """Bags from a bag mapping, or from a path through the input loader; a slide file is tiled and encoded as
        the model's config records (patch encoder, patch side in µm and pixels), on the pipeline's device."""
        if isinstance(inputs, Mapping):
            return [inputs]
        if not isinstance(inputs, (str, os.PathLike)):
            raise ValueError(f"a slide input must be a bag (a dict or dataset row with features, coords and "
                             f"patch_size_level0) or a path, got {type(inputs).__name__} {inputs!r:.80}.")  # fmt: skip
        config = getattr(self.model.config, "pathflip_config", self.model.config)
        return list(self.input_loader.load_bags(
            inputs, patch_encoder=patch_encoder or config.patch_encoder, mpp=mpp, device=self.device,
            patch_size_um=config.patch_size_um, patch_size_px=getattr(config, "patch_size_px", None)))  # fmt: skip

    def _sanitize_parameters(self, **kwargs):
        unknown = set(kwargs) - set(self.preprocess_options) - set(self.postprocess_options)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown option(s) {sorted(unknown)}; it takes "
                f"{sorted(self.preprocess_options + self.postprocess_options)}."
            )
        checked = {key: check_option(key, value) for key, value in kwargs.items()}
        pre = {key: checked[key] for key in self.preprocess_options if key in checked}
        post = {key: checked[key] for key in self.postprocess_options if key in checked}
        return pre, {}, post

    def __call__(self, inputs, **kwargs):
        if isinstance(inputs, (list, tuple)):
            return [super(_SlidePipeline, self).__call__(item, **kwargs) for item in inputs]
        return super().__call__(inputs, **kwargs)

    def bag_batch(self, inputs, patch_encoder=None, mpp=None) -> dict[str, Any]:
        """One slide as model inputs: ``{"bag": processor tensors, "coords", "patch_size_level0", "slide_id"}``."""
        bags = self.load_bags(inputs, patch_encoder, mpp)
        if len(bags) != 1:
            raise ValueError(f"{inputs!r} holds {len(bags)} bags; pass them as a list of rows, one per slide.")
        batch = self.processor(bags, return_loss=False, return_coords=True)
        patch_size = bags[0].get("patch_size_level0")
        return {
            "bag": {name: batch[name] for name in self.processor.bag_input_names},
            "coords": batch["patch_coords"][0],
            "patch_size_level0": None if patch_size is None else int(patch_size),
            "slide_id": str(bags[0].get("slide_id") or _anonymous_slide_id(batch["patch_coords"][0])),
        }


def _anonymous_slide_id(coords: torch.Tensor) -> str:
    """A name for a bag given without a slide_id, the same for the same patch grid (files of two such bags in one
    output folder must not replace each other)."""
    return f"slide-{_digest(coords.cpu().numpy().tobytes())}"


class SlideFeatureExtractionPipeline(_SlidePipeline):
    """bag -> ``{"slide_embedding": [E], "region_embeddings": [L, E]}`` (PathFLIP) or
    ``{"slide_embedding": [E], "patch_embeddings": [N, E]}`` (PathFLIP2, whose fine-grained units are patches)."""

    def preprocess(self, inputs, patch_encoder=None, mpp=None):
        return self.bag_batch(inputs, patch_encoder, mpp)

    def _forward(self, model_inputs):
        features = self.model.get_slide_features(**model_inputs["bag"])
        outputs = {"slide_embedding": features.slide_embeds[0]}
        if getattr(features, "region_embeds", None) is not None:
            outputs["region_embeddings"] = features.region_embeds[0][features.region_attention_mask[0].bool()]
        if getattr(features, "patch_embeds", None) is not None:
            outputs["patch_embeddings"] = features.patch_embeds[0][features.patch_attention_mask[0].bool()]
        return outputs

    def postprocess(self, model_outputs):
        return {key: value.float().cpu() for key, value in model_outputs.items()}


class ZeroShotSlideClassificationPipeline(_SlidePipeline):
    """bag + ``candidate_labels`` -> ``[{"label", "score"}]`` sorted, with a prompt ensemble. A model with a fitted
    grounding head scores the prompts with it (see `zero_shot_logits`); ``use_grounding_head=False`` reads the slide
    embedding instead."""

    preprocess_options = ("candidate_labels", "hypothesis_template", "patch_encoder", "mpp", "use_grounding_head")
    postprocess_options = ("top_k",)

    def preprocess(self, inputs, candidate_labels=None, hypothesis_template=DEFAULT_TEMPLATES, patch_encoder=None,
                   mpp=None, use_grounding_head=None):  # fmt: skip
        if not candidate_labels:
            raise ValueError("candidate_labels must name at least one class, e.g. ['tumour', 'normal tissue'].")
        check_grounding_head_wanted(self.model, use_grounding_head)
        templates = check_templates("hypothesis_template", hypothesis_template)
        prompts = [template.format(label) for label in candidate_labels for template in templates]
        batch = self.bag_batch(inputs, patch_encoder, mpp)
        batch["text"] = dict(self.processor(text=prompts))
        batch["num_templates"] = len(templates)
        batch["candidate_labels"] = list(candidate_labels)
        batch["use_grounding_head"] = use_grounding_head
        return batch

    def _forward(self, model_inputs):
        bag, use_head = model_inputs["bag"], model_inputs["use_grounding_head"]
        from_patches = reads_patches_for_zero_shot(self.model, use_head)
        slide = None if from_patches else self.model.get_slide_features(**bag).slide_embeds
        prompts = self.model.get_text_features(**model_inputs["text"])
        logits = zero_shot_logits(self.model, prompts, model_inputs["num_templates"], slide_embeds=slide, bag=bag,
                                  use_grounding_head=use_head)  # fmt: skip
        return {"logits": logits[0], "candidate_labels": model_inputs["candidate_labels"]}

    def postprocess(self, model_outputs, top_k=None):
        scores = model_outputs["logits"].float().softmax(dim=-1).tolist()
        ranked = sorted(zip(scores, model_outputs["candidate_labels"], strict=True), key=lambda pair: -pair[0])
        return [{"score": score, "label": label} for score, label in ranked[:top_k]]


class SlideGroundingPipeline(_SlidePipeline):
    """bag + sentences -> per sentence: patch scores (aligned with the bag's coords), region scores, a heatmap
    raster at thumbnail scale and a GeoJSON FeatureCollection of the top patches (level-0 pixels, QuPath).

    With ``output_dir`` each sentence also gets ``{slide_id}_{its first words}-{digest}.png`` (the heatmap over the
    slide thumbnail when the input or ``slide=`` is a slide file, else over the patch grid) and ``.geojson``.
    """

    preprocess_options = ("sentences", "slide", "heatmap_size", "patch_encoder", "mpp")
    postprocess_options = ("top_k", "output_dir")

    def preprocess(self, inputs, sentences=None, slide=None, heatmap_size=1024, patch_encoder=None, mpp=None):
        if sentences is None:
            raise ValueError("sentences must be one or more texts to ground in the slide, e.g. 'A focus of necrosis.'")
        batch = self.bag_batch(inputs, patch_encoder, mpp)
        if batch["patch_size_level0"] is None:
            raise ValueError(
                f"slide {batch['slide_id']!r}: a heatmap needs the patch side, patch_size_level0 (level-0 pixels); "
                "add it to the bag (TRIDENT writes it in coords.attrs)."
            )
        batch["text"] = dict(self.processor(text=sentences))
        batch["sentences"] = sentences
        batch["canvas"] = self._canvas(slide if slide is not None else inputs, batch, heatmap_size, mpp,
                                       slide is not None)  # fmt: skip
        return batch

    def _forward(self, model_inputs):
        grounding = self.model.get_grounding(**model_inputs["bag"], **model_inputs["text"])
        count = int(model_inputs["bag"]["patch_attention_mask"][0].sum())
        outputs = {
            "patch_scores": grounding.patch_scores[0, :, :count],
            **{key: model_inputs[key] for key in ("sentences", "canvas", "slide_id", "patch_size_level0")},
            "coords": model_inputs["coords"][:count],
        }
        if getattr(grounding, "region_scores", None) is not None:  # PathFLIP: the texts' weights over regions
            real = model_inputs["bag"]["region_attention_mask"][0].bool()
            outputs["region_scores"] = grounding.region_scores[0][:, real]
        return outputs

    def postprocess(self, model_outputs, top_k=20, output_dir=None):
        canvas, coords, size = (
            model_outputs["canvas"],
            model_outputs["coords"].cpu(),
            model_outputs["patch_size_level0"],
        )
        results = []
        for number, (sentence, patch_scores) in enumerate(zip(model_outputs["sentences"],
                                                              model_outputs["patch_scores"], strict=True)):  # fmt: skip
            scores = patch_scores.float().cpu()
            result = {
                "sentence": sentence,
                "patch_scores": scores,
                "coords": coords,
                "heatmap": heatmap_raster(scores, coords, size, canvas["dimensions"], canvas["size"]),
                "geojson": top_patches_geojson(scores, coords, size, top_k=top_k, name=sentence),
            }
            if "region_scores" in model_outputs:
                result["region_scores"] = model_outputs["region_scores"][number].float().cpu()
            if output_dir is not None:
                stem = f"{model_outputs['slide_id']}_" + _file_stem(sentence)
                result.update(self.input_loader.write_grounding(result["heatmap"].numpy(), result["geojson"],
                                                                output_dir=output_dir, stem=stem,
                                                                thumbnail=canvas["thumbnail"]))  # fmt: skip
            results.append(result)
        return results

    def _canvas(self, source, batch, heatmap_size: int, mpp: float | None, required: bool) -> dict[str, Any]:
        """Level-0 extent, heatmap size and thumbnail: from the slide when ``source`` is a slide file, else the
        extent of the patch grid (no thumbnail)."""
        if not isinstance(heatmap_size, int) or heatmap_size < 1:
            raise ValueError(f"heatmap_size must be a positive number of pixels, got {heatmap_size!r}.")
        if isinstance(source, (str, os.PathLike)) and not os.path.isdir(source):
            found = self.input_loader.slide_canvas(source, mpp=mpp, longest=heatmap_size)
            if found is not None:
                thumbnail, dimensions = found
                reach = batch["coords"].max(dim=0).values + (batch["patch_size_level0"] or 0)
                if int(reach[0]) > dimensions[0] or int(reach[1]) > dimensions[1]:
                    raise ValueError(f"slide={source!r} is {dimensions[0]}x{dimensions[1]} level-0 px, but the bag's "
                                     f"patches reach ({int(reach[0])}, {int(reach[1])}): it is not this bag's slide.")
                size = (thumbnail.shape[1], thumbnail.shape[0])
                return {"thumbnail": thumbnail, "dimensions": dimensions, "size": size}
        if required:
            raise ValueError(f"slide={source!r} is not a slide file (.svs, .tif, .ndpi, ...); it is the background.")
        coords, patch_size = batch["coords"], batch["patch_size_level0"]
        extent = (int(coords[:, 0].max()) + patch_size, int(coords[:, 1].max()) + patch_size)
        scale = heatmap_size / max(extent)
        size = (max(1, round(extent[0] * scale)), max(1, round(extent[1] * scale)))
        return {"thumbnail": None, "dimensions": extent, "size": size}


def _file_stem(sentence: str) -> str:
    """A file-name part for a sentence: its first lower-case words joined by dashes, then a digest of the whole
    sentence, so that sentences differing only after the cut, in case or in punctuation get files of their own."""
    words = re.sub(r"[^a-z0-9]+", "-", sentence.lower()).strip("-")[:48].strip("-") or "sentence"
    return f"{words}-{_digest(sentence.encode())}"


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:8]


class SlideTextRetrievalPipeline(_SlidePipeline):
    """Text -> top-k slides of an ``index``, or slide -> top-k of ``candidate_texts`` (cosine similarity).

    Build the index once with `build_index(dataset)`: the dataset gains a unit-length ``slide_embedding``
    column (and drops the bags), so it can be saved, pushed and searched without re-encoding. When faiss is
    installed, `build_index` also attaches a `datasets` FAISS inner-product index, which text queries use;
    otherwise (or for a reloaded dataset) the search is exact.
    """

    preprocess_options = ("candidate_texts", "index", "patch_encoder", "mpp")
    postprocess_options = ("top_k",)

    def build_index(self, dataset, *, use_faiss: bool | None = None):
        """A copy of a feature-bag `datasets.Dataset` with a ``slide_embedding`` column instead of the bags.

        ``use_faiss``: attach a FAISS index (default: when faiss is installed).
        """

        columns = getattr(dataset, "column_names", None)
        if not isinstance(columns, list) or not hasattr(dataset, "map"):
            raise ValueError(f"build_index takes one split of a feature-bag dataset (a datasets.Dataset, e.g. "
                             f"dataset['test']), got {type(dataset).__name__}.")  # fmt: skip
        missing = sorted({"features", "coords"} - set(columns))
        if missing or not len(dataset):
            raise ValueError(f"build_index needs feature bags: the dataset has {len(dataset)} rows and lacks "
                             f"{missing or 'nothing'}.")  # fmt: skip

        def embed(row):
            bag = {name: tensor.to(self.device) for name, tensor in self.bag_batch(row)["bag"].items()}
            with torch.no_grad():
                slide = self.model.get_slide_features(**bag).slide_embeds[0].float()
            return {"slide_embedding": torch.nn.functional.normalize(slide, dim=-1).cpu().tolist()}

        drop = [column for column in ("features", "coords") if column in dataset.column_names]
        index = dataset.with_format("numpy").map(embed, remove_columns=drop, writer_batch_size=64).with_format(None)
        faiss = _faiss() if use_faiss is not False else None
        if use_faiss and faiss is None:
            raise ImportError("use_faiss=True needs faiss: pip install faiss-cpu (or pathflip[faiss]).")
        if faiss is not None:
            index.add_faiss_index(column="slide_embedding", metric_type=faiss.METRIC_INNER_PRODUCT)
        return index

    def preprocess(self, inputs, candidate_texts=None, index=None, patch_encoder=None, mpp=None):
        if candidate_texts is not None and index is not None:
            raise ValueError("give candidate_texts= (rank texts for a slide) or index= (rank slides for a text), "
                             "not both.")  # fmt: skip
        if candidate_texts is not None:
            if not candidate_texts:
                raise ValueError("candidate_texts must hold at least one text.")
            batch = self.bag_batch(inputs, patch_encoder, mpp)
            batch["text"] = dict(self.processor(text=list(candidate_texts)))
            batch["names"] = list(candidate_texts)
            return batch
        if index is None:
            raise ValueError("give candidate_texts= to rank texts for a slide, or index= to rank slides for a text.")
        self._check_index(index)
        if not isinstance(inputs, str) or not inputs.strip():
            raise ValueError(f"a text query must be a non-empty string, got {inputs!r}.")
        return {"text": dict(self.processor(text=[inputs])), "index": index}

    def _check_index(self, index) -> None:
        columns = getattr(index, "column_names", None)
        if not isinstance(columns, list) or "slide_embedding" not in columns:
            raise ValueError(f"index must be a datasets.Dataset with a slide_embedding column, made by "
                             f"pipe.build_index(dataset) (saved ones load with datasets.load_from_disk); got "
                             f"{type(index).__name__}{' without that column' if isinstance(columns, list) else ''}.")
        if not len(index):
            raise ValueError("index has no rows; build it from a dataset with slides in it.")
        width, made = len(index[0]["slide_embedding"]), self.model.config.embed_dim
        if width != made:
            raise ValueError(f"index holds {width}-wide slide embeddings, but this model makes {made}-wide ones; "
                             "build the index with this model.")  # fmt: skip

    def _forward(self, model_inputs):
        texts = torch.nn.functional.normalize(self.model.get_text_features(**model_inputs["text"]), dim=-1)
        if "index" in model_inputs:
            return {"query": texts[0], "index": model_inputs["index"]}
        slide = self.model.get_slide_features(**model_inputs["bag"]).slide_embeds
        scores = (torch.nn.functional.normalize(slide, dim=-1) @ texts.T)[0]
        return {"scores": scores, "names": model_inputs["names"]}

    def postprocess(self, model_outputs, top_k=5):
        if "index" not in model_outputs:
            order = model_outputs["scores"].float().argsort(descending=True)[:top_k].tolist()
            return [{"text": model_outputs["names"][i], "score": float(model_outputs["scores"][i])} for i in order]
        index, query = model_outputs["index"], model_outputs["query"].float().cpu()
        names = index["slide_id"] if "slide_id" in index.column_names else list(range(len(index)))
        if index.is_index_initialized("slide_embedding"):
            scores, rows = index.search("slide_embedding", query.numpy(), k=min(top_k, len(index)))
            return [
                {"slide_id": names[int(row)], "score": float(score)} for score, row in zip(scores, rows, strict=True)
            ]
        slides = torch.nn.functional.normalize(torch.tensor(index["slide_embedding"], dtype=torch.float32), dim=-1)
        scores = slides @ query
        return [
            {"slide_id": names[i], "score": float(scores[i])} for i in scores.argsort(descending=True)[:top_k].tolist()
        ]


def _faiss():
    """The faiss module, or None when it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


TASKS = {
    "slide-feature-extraction": SlideFeatureExtractionPipeline,
    "zero-shot-slide-classification": ZeroShotSlideClassificationPipeline,
    "slide-grounding": SlideGroundingPipeline,
    "slide-text-retrieval": SlideTextRetrievalPipeline,
}

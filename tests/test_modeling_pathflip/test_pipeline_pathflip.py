"""The task pipelines against direct model calls, for every input type, and saved as one folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from modeling_pathflip import BAG_INPUT_NAMES, PathFLIPModel, PathFLIPProcessor, save_pretrained_with_pipelines
from modeling_pathflip.pipeline_pathflip import DEFAULT_TEMPLATES, TASKS


@pytest.fixture
def pipe(model, processor):
    return lambda task: pipeline(task, model=model, processor=processor)


def _direct_slide(model, processor, bag):
    batch = processor([bag], return_loss=False)
    with torch.no_grad():
        return model.get_slide_features(**{name: batch[name] for name in BAG_INPUT_NAMES}), batch


def test_feature_extraction_matches_get_slide_features(pipe, model, processor, bag_factory):
    bag = bag_factory(0, 40)
    out = pipe("slide-feature-extraction")(bag)
    direct, batch = _direct_slide(model, processor, bag)
    regions = int(batch["region_attention_mask"].sum())
    torch.testing.assert_close(out["slide_embedding"], direct.slide_embeds[0])
    torch.testing.assert_close(out["region_embeddings"], direct.region_embeds[0, :regions])


def test_zero_shot_matches_a_hand_computed_prompt_ensemble(pipe, model, processor, bag_factory):
    bag, labels = bag_factory(1, 30), ["tumour", "fat", "stroma"]
    result = pipe("zero-shot-slide-classification")(bag, candidate_labels=labels)
    assert [entry["score"] for entry in result] == sorted((entry["score"] for entry in result), reverse=True)
    direct, _ = _direct_slide(model, processor, bag)
    with torch.no_grad():
        classes = []
        for label in labels:
            texts = processor(text=[template.format(label) for template in DEFAULT_TEMPLATES])
            classes.append(torch.nn.functional.normalize(model.get_text_features(**texts), dim=-1).mean(0))
        logits = (
            model.logit_scale.exp()
            * torch.nn.functional.normalize(direct.slide_embeds, dim=-1)
            @ (torch.nn.functional.normalize(torch.stack(classes), dim=-1).T)
        )
    expected = dict(zip(labels, logits[0].softmax(-1).tolist(), strict=True))
    assert {entry["label"]: pytest.approx(expected[entry["label"]], abs=1e-5) for entry in result} == {
        label: pytest.approx(score, abs=1e-5) for label, score in expected.items()
    }
    assert len(pipe("zero-shot-slide-classification")(bag, candidate_labels=labels, top_k=1)) == 1


def test_grounding_matches_get_grounding_and_aligns_with_coords(pipe, model, processor, bag_factory):
    bag = bag_factory(2, 35)
    result = pipe("slide-grounding")(bag, sentences=["dense tumour nuclei", "fat"])
    batch = processor([bag], return_loss=False)
    with torch.no_grad():
        direct = model.get_grounding(
            **{n: batch[n] for n in BAG_INPUT_NAMES}, **processor(text=["dense tumour nuclei", "fat"])
        )
    for index, entry in enumerate(result):
        torch.testing.assert_close(entry["patch_scores"], direct.patch_scores[0, index])
        assert torch.equal(entry["coords"], bag["coords"].long()), "scores are in the bag's row order"


def test_grounding_heatmap_geojson_and_files_over_the_patch_grid(tmp_path, pipe, bag_factory):
    bag = bag_factory(5, 30)
    extent = bag["coords"].max(dim=0).values + bag["patch_size_level0"]
    (entry,) = pipe("slide-grounding")(bag, sentences="fat", heatmap_size=200, top_k=4, output_dir=str(tmp_path))
    height, width = entry["heatmap"].shape
    assert max(height, width) == 200 and width / height == pytest.approx(float(extent[0] / extent[1]), rel=0.02)
    painted = entry["heatmap"][~entry["heatmap"].isnan()]
    assert painted.min() == 0 and painted.max() == 1
    features = entry["geojson"]["features"]
    best = entry["patch_scores"].topk(4).indices
    assert [feature["properties"]["score"] for feature in features] == pytest.approx(entry["patch_scores"][best])
    for feature, index in zip(features, best.tolist(), strict=True):
        ring = feature["geometry"]["coordinates"][0]
        assert feature["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 5
        assert ring[0] == bag["coords"][index].tolist()
        assert ring[2] == (bag["coords"][index] + bag["patch_size_level0"]).tolist()
    assert Image.open(entry["png_file"]).size == (width, height)
    assert json.loads(open(entry["geojson_file"]).read()) == entry["geojson"]
    with pytest.raises(ValueError, match="not a slide file"):
        pipe("slide-grounding")(bag, sentences="fat", slide=str(tmp_path))


def test_every_input_type_gives_the_same_embedding(tmp_path, pipe, bag_factory):
    from pathflip.processing.bags import write_bags

    bag = bag_factory(3, 25)
    extractor = pipe("slide-feature-extraction")
    expected = extractor(bag)["slide_embedding"]
    row = {
        **bag,
        "features": bag["features"].numpy().astype(np.float16).astype(np.float32),
        "coords": bag["coords"].numpy(),
    }
    with h5py.File(tmp_path / "bag.h5", "w") as handle:
        handle.create_dataset("features", data=row["features"])
        handle.create_dataset("coords", data=row["coords"]).attrs["patch_size_level0"] = bag["patch_size_level0"]
    write_bags([row], tmp_path / "one.arrow", 16).save_to_disk(str(tmp_path / "dataset"))
    exact = extractor(row)["slide_embedding"]
    saved = {key: torch.as_tensor(row[key]) for key in ("features", "coords")}
    torch.save({**saved, "patch_size_level0": bag["patch_size_level0"]}, tmp_path / "bag.pt")
    torch.save(torch.as_tensor(row["features"]), tmp_path / "clam.pt")
    with pytest.raises(ValueError, match="coords-dir"):
        extractor(str(tmp_path / "clam.pt"))
    for source in (tmp_path / "bag.h5", tmp_path / "dataset", tmp_path / "bag.pt"):
        torch.testing.assert_close(extractor(str(source))["slide_embedding"], exact, atol=1e-6, rtol=0)
    torch.testing.assert_close(exact, expected, atol=1e-2, rtol=0)  # float16 storage
    batched = extractor([bag, bag_factory(4, 10)])
    assert len(batched) == 2 and torch.equal(batched[0]["slide_embedding"], expected)


def test_a_slide_file_is_tiled_and_encoded(tmp_path, config_factory, tokenizer):
    from pathflip.synthetic.textures import render_texture, write_pyramid

    rng = np.random.default_rng(0)
    image = render_texture("background", 1024, 1024, rng)
    image[256:768, 256:768] = render_texture("tumour", 512, 512, rng)
    slide = write_pyramid(tmp_path / "slide.tiff", image, mpp=0.5, levels=2)
    config = config_factory(patch_dim=96)
    classify = pipeline("zero-shot-slide-classification", model=PathFLIPModel(config).eval(),
                        processor=PathFLIPProcessor.from_model_config(tokenizer, config))  # fmt: skip
    result = classify(str(slide), candidate_labels=["tumour", "fat"], patch_encoder="stain-texture")
    assert {entry["label"] for entry in result} == {"tumour", "fat"}


@pytest.mark.parametrize(
    "task, options, error, message",
    [
        ("zero-shot-slide-classification", {"candidate_labels": []}, ValueError, "must be a text or a non-empty list"),
        (
            "zero-shot-slide-classification",
            {"candidate_labels": ["a", "b"], "hypothesis_template": "no slot"},
            ValueError,
            "'{}'",
        ),
        (
            "zero-shot-slide-classification",
            {"candidate_labels": ["a", "b"], "use_grounding_head": True},
            ValueError,
            "needs a model with a fitted grounding head",
        ),
        ("slide-grounding", {"sentences": []}, ValueError, "non-empty"),
        ("slide-feature-extraction", {"colour": "red"}, TypeError, "unknown option"),
    ],
)
def test_bad_options_raise_clear_errors(pipe, bag_factory, task, options, error, message):
    with pytest.raises(error, match=message):
        pipe(task)(bag_factory(0, 10), **options)


def test_bag_of_another_encoder_and_missing_file(pipe, bag_factory):
    bag = {**bag_factory(0, 10), "features": torch.randn(10, 96)}
    with pytest.raises(ValueError, match="feature dim 96 != the model's patch_dim 16"):
        pipe("slide-feature-extraction")(bag)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pipe("slide-feature-extraction")("/nonexistent/slide.h5")


LOADER = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_pathflip"] = None
    sys.modules["processing"] = None
    import torch
    from transformers import pipeline
    folder, bag_file = sys.argv[1:]
    bag = torch.load(bag_file)
    for task in ("zero-shot-slide-classification", "slide-feature-extraction", "slide-grounding"):
        pipe = pipeline(task, model=folder, trust_remote_code=True)
        options = {"candidate_labels": ["tumour", "fat"]} if task.startswith("zero") else {}
        options = {"sentences": ["fat"]} if task == "slide-grounding" else options
        print(task, type(pipe(bag, **options)).__name__)
    """
)


def test_saved_folder_serves_every_task_with_and_without_the_package(tmp_path, model, processor, bag_factory):
    folder = tmp_path / "model"
    save_pretrained_with_pipelines(model, processor, folder)
    config = json.loads((folder / "config.json").read_text())
    assert set(config["custom_pipelines"]) == set(TASKS)
    assert (folder / "pipeline_pathflip.py").exists() and (folder / "processor_config.json").exists()
    bag = bag_factory(0, 20)
    for task in TASKS:  # the installed package serves the tasks: no trust_remote_code needed
        served = pipeline(task, model=str(folder))
        assert type(served) is TASKS[task]
    served.model.save_pretrained(tmp_path / "resaved")  # a loaded config writes the list back unchanged
    assert (
        json.loads((tmp_path / "resaved" / "config.json").read_text())["custom_pipelines"] == config["custom_pipelines"]
    )
    torch.save(bag, tmp_path / "bag.pt")
    (tmp_path / "load.py").write_text(LOADER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(folder), str(tmp_path / "bag.pt")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["zero-shot-slide-classification", "list", "slide-feature-extraction", "dict",
                                     "slide-grounding", "list"]  # fmt: skip


def test_retrieval_ranks_slides_for_a_text_and_texts_for_a_slide(tmp_path, pipe, model, processor, bag_factory):
    from pathflip.processing.bags import write_bags

    bags = [bag_factory(i, 15 + 3 * i) for i in range(4)]
    dataset = write_bags(bags, tmp_path / "bags.arrow", 16)
    retriever = pipe("slide-text-retrieval")
    index = retriever.build_index(dataset, use_faiss=False)
    assert "slide_embedding" in index.column_names and "features" not in index.column_names
    assert not index.is_index_initialized("slide_embedding")
    with torch.no_grad():
        slides = torch.cat([_direct_slide(model, processor, bag)[0].slide_embeds for bag in bags])
        query = model.get_text_features(**processor(text=["dense tumour nuclei"]))
    expected = torch.nn.functional.cosine_similarity(query, slides)
    hits = retriever("dense tumour nuclei", index=index, top_k=3)
    assert [hit["slide_id"] for hit in hits] == [f"slide-{i}" for i in expected.argsort(descending=True)[:3].tolist()]
    assert hits[0]["score"] == pytest.approx(expected.max().item(), abs=1e-5)
    texts = ["fat", "tumour", "fibrous stroma"]
    ranked = retriever(bags[0], candidate_texts=texts, top_k=2)
    with torch.no_grad():
        scores = torch.nn.functional.cosine_similarity(slides[:1], model.get_text_features(**processor(text=texts)))
    assert [hit["text"] for hit in ranked] == [texts[i] for i in scores.argsort(descending=True)[:2].tolist()]
    with pytest.raises(ValueError, match="candidate_texts= .* or index="):
        retriever(bags[0])
    refused = [(lambda: retriever("fat", index=str(tmp_path)), r"index must be a datasets.Dataset .* got str"),
               (lambda: retriever("fat", index=index.select([])), r"index has no rows"),
               (lambda: retriever(bags[0], candidate_texts=texts, index=index), r"not both"),
               (lambda: retriever.build_index([bags[0]]), r"build_index takes one split .* got list"),
               (lambda: retriever.build_index(index), r"lacks \['coords', 'features'\]")]  # fmt: skip
    narrow = index.map(lambda row: {"slide_embedding": row["slide_embedding"][:3]})
    refused.append((lambda: retriever("fat", index=narrow), r"holds 3-wide slide embeddings, but this model makes"))
    for call, message in refused:
        with pytest.raises(ValueError, match=message):
            call()
    pytest.importorskip("faiss")
    faiss_index = retriever.build_index(dataset)  # faiss installed: an inner-product FAISS index is attached
    assert faiss_index.is_index_initialized("slide_embedding")
    faiss_hits = retriever("dense tumour nuclei", index=faiss_index, top_k=3)
    assert [hit["slide_id"] for hit in faiss_hits] == [hit["slide_id"] for hit in hits]
    assert [hit["score"] for hit in faiss_hits] == pytest.approx([hit["score"] for hit in hits], abs=1e-5)


def test_an_input_loader_is_checked_when_registered_and_an_unknown_name_lists_the_known():
    from modeling_pathflip.pipeline_pathflip import find_input_loader, register_input_loader

    with pytest.raises(ValueError, match=r"input loader 'mine' \(object\) lacks \['load_bags', 'slide_canvas'"):
        register_input_loader("mine", object())
    with pytest.raises(ValueError, match=r"an input loader's name must be a non-empty text, got 5"):
        register_input_loader(5, object())
    with pytest.raises(ValueError, match=r"no input loader named 'nosuch'; registered: \["):
        find_input_loader("nosuch")

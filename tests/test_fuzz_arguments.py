"""Fuzzing the processor and the pipelines' argument handling: any input either works or ends in a `ValueError` /
`TypeError` with a message (bounded: a few hundred examples in seconds)."""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import pipeline

from modeling_pathflip import PathFLIPModel, PathFLIPProcessor, save_pretrained_with_pipelines

# Derandomized: CI sees the same examples every run, so a failure is a change in the code, not a new draw. Set
# PATHFLIP_FUZZ_EXPLORE=1 to draw new examples (that is how a too-large patch_size_level0 was found).
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                    derandomize=not os.environ.get("PATHFLIP_FUZZ_EXPLORE"))  # fmt: skip
texts = st.text(max_size=12)
anything = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), texts,
                     st.lists(texts, max_size=4), st.lists(st.integers(), max_size=3))  # fmt: skip


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, config_factory, tokenizer):
    folder = tmp_path_factory.mktemp("fuzz-model")
    config = config_factory()
    torch.manual_seed(0)
    save_pretrained_with_pipelines(PathFLIPModel(config).eval(), PathFLIPProcessor.from_model_config(tokenizer, config),
                                   folder)  # fmt: skip
    return pipeline("zero-shot-slide-classification", model=str(folder))


def _refused_with_a_message(call) -> object:
    try:
        return call()
    except (ValueError, TypeError) as error:
        assert str(error).strip(), f"{type(error).__name__} without a message"
        return None


@SETTINGS
@given(labels=anything, top_k=anything, template=st.one_of(st.none(), texts, st.lists(texts, max_size=3)),
       mpp=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))  # fmt: skip
def test_zero_shot_options(classifier, bag_factory, labels, top_k, template, mpp):
    options = {"candidate_labels": labels, "top_k": top_k, "mpp": mpp}
    if template is not None:
        options["hypothesis_template"] = template
    result = _refused_with_a_message(lambda: classifier(bag_factory(0, 12), **options))
    if result is not None:
        assert [item["score"] for item in result] == sorted((item["score"] for item in result), reverse=True)
        assert all(math.isfinite(item["score"]) for item in result)
        assert len(result) == min(len([labels] if isinstance(labels, str) else labels), top_k or 10**6)


@SETTINGS
@given(rows=st.integers(0, 6), dim=st.sampled_from([0, 3, 16]), coord_rows=st.integers(0, 6),
       patch_size=st.one_of(st.none(), st.integers(-2, 600), st.floats(allow_nan=True)),
       value=st.floats(allow_nan=True, allow_infinity=True), caption=st.one_of(st.none(), texts))  # fmt: skip
def test_processor_bags(processor, rows, dim, coord_rows, patch_size, value, caption):
    coords = torch.arange(coord_rows * 2).reshape(-1, 2) * 512
    bag = {"features": torch.full((rows, dim), value, dtype=torch.float64), "coords": coords,
           "patch_size_level0": patch_size, "caption": caption}  # fmt: skip
    batch = _refused_with_a_message(lambda: processor([bag]))
    if batch is not None:
        assert torch.isfinite(batch["patch_features"]).all()
        assert batch["patch_attention_mask"].sum() == rows

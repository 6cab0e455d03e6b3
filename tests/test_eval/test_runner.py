"""`pathflip eval`'s runner against direct computations, and the markdown table."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from transformers import pipeline

from modeling_pathflip import BAG_INPUT_NAMES
from pathflip.eval.metrics import retrieval_metrics
from pathflip.eval.runner import evaluate_model, markdown_table, write_report


@pytest.fixture
def labelled_dataset(tmp_path, bag_factory):
    from pathflip.processing.bags import write_bags

    bags = [bag_factory(i, 10 + i) for i in range(4)]
    dataset = write_bags(bags, tmp_path / "bags.arrow", 16)
    dataset = dataset.add_column("label", [0, 1, 0, 1]).cast_column(
        "label", datasets.ClassLabel(names=["fat", "tumour"])
    )
    targets = [[[bool(j % 3 == 0) for j in range(len(bag["features"]))]] for bag in bags]
    dataset = dataset.add_column("grounding_sentences", [["tumour"]] * 4)
    return dataset.add_column("grounding_targets", targets), bags


def test_metrics_match_direct_model_calls(model, processor, labelled_dataset):
    dataset, bags = labelled_dataset
    extractor = pipeline("slide-feature-extraction", model=model, processor=processor)
    metrics = evaluate_model(extractor, dataset)
    with torch.no_grad():
        batch = processor(bags, return_loss=False)
        slides = model.get_slide_features(**{name: batch[name] for name in BAG_INPUT_NAMES}).slide_embeds
        captions = model.get_text_features(**processor(text=[bag["caption"] for bag in bags]))
    expected = retrieval_metrics(slides.numpy(), captions.numpy())
    assert {key: metrics[key] for key in expected} == pytest.approx(expected)
    assert metrics["slides"] == 4 and metrics["grounding_queries"] == 4
    # zero-shot and grounding, computed here from the model's own calls
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from pathflip.eval.spec import ZERO_SHOT_TEMPLATES

    with torch.no_grad():
        prompts = model.get_text_features(**processor(text=[t.format(c) for c in ("fat", "tumour")
                                                            for t in ZERO_SHOT_TEMPLATES]))  # fmt: skip
    classes = torch.nn.functional.normalize(prompts, dim=-1).reshape(2, len(ZERO_SHOT_TEMPLATES), -1).mean(1)
    predictions = (torch.nn.functional.normalize(slides, dim=-1) @ classes.T).argmax(1).numpy()
    expected_accuracy = balanced_accuracy_score(dataset["label"], predictions)
    assert metrics["zero_shot_balanced_accuracy"] == pytest.approx(expected_accuracy)
    with torch.no_grad():
        grounding = model.get_grounding(**{name: batch[name] for name in BAG_INPUT_NAMES}, **processor(text=["tumour"]))
    aurocs = [roc_auc_score(dataset["grounding_targets"][i][0], grounding.patch_scores[i, 0, : len(bag["features"])])
              for i, bag in enumerate(bags)]  # fmt: skip
    assert metrics["grounding_auroc"] == pytest.approx(float(np.mean(aurocs)), abs=1e-6)


def test_grounding_types_give_per_type_figures_that_match_the_pooled_ones(model, processor, labelled_dataset):
    dataset, _ = labelled_dataset
    extractor = pipeline("slide-feature-extraction", model=model, processor=processor)
    pooled = evaluate_model(extractor, dataset)
    typed = evaluate_model(extractor, dataset.add_column("grounding_types", [["tumour"]] * 2 + [["stroma"]] * 2))
    aurocs = []
    for kind, rows in (("tumour", [0, 1]), ("stroma", [2, 3])):
        alone = evaluate_model(extractor, dataset.select(rows))
        assert typed[f"grounding_auroc/{kind}"] == pytest.approx(alone["grounding_auroc"])
        assert typed[f"grounding_queries/{kind}"] == 2
        aurocs.append(alone["grounding_auroc"])
    assert typed["grounding_auroc"] == pytest.approx(pooled["grounding_auroc"]) == pytest.approx(np.mean(aurocs))
    wrong = dataset.add_column("grounding_types", [["tumour", "extra"]] * 4)
    with pytest.raises(ValueError, match="1 grounding sentences but 2 grounding_types"):
        evaluate_model(extractor, wrong)


def test_missing_bag_columns_are_named(model, processor, labelled_dataset):
    extractor = pipeline("slide-feature-extraction", model=model, processor=processor)
    with pytest.raises(ValueError, match=r"lacks the feature-bag column\(s\) \[.coords.\]"):
        evaluate_model(extractor, labelled_dataset[0].remove_columns("coords"))


def test_label_columns_that_hold_no_diagnoses_are_refused():
    import datasets

    from pathflip.eval.runner import zero_shot_labels

    captions = datasets.Dataset.from_dict({"caption": [f"Slide {number} shows fat." for number in range(12)]})
    with pytest.raises(ValueError, match=r"column 'caption' has a different value in each of its 12 rows"):
        zero_shot_labels(captions, "caption")
    with pytest.raises(ValueError, match=r"class names \['a', 'b'\] were given, but the dataset has no 'label'"):
        zero_shot_labels(captions, "label", ["a", "b"])
    small = datasets.Dataset.from_dict({"label": ["benign", "tumour", "fat"]})  # a small test split: still scored
    assert zero_shot_labels(small, "label")[1] == ["benign", "fat", "tumour"]


def test_report_and_table(tmp_path):
    runs = {"full": {"grounding_auroc": 0.8312, "pointing_game": 0.5}, "no-region-loss": {"grounding_auroc": 0.5}}
    table = markdown_table(runs)
    assert "| Grounding AUROC | 0.831 | 0.500 |" in table and "| Pointing game | 0.500 | - |" in table
    typed = markdown_table({"full": {"grounding_auroc": 0.8, "grounding_auroc/stroma": 0.4, "pointing_game": 0.5,
                                     "grounding_auroc/fat": 0.9}})  # fmt: skip
    rows = [line.split(" | ")[0] for line in typed.splitlines()[2:]]
    assert rows == ["| Grounding AUROC", "| Grounding AUROC: fat", "| Grounding AUROC: stroma", "| Pointing game"]
    path = write_report(runs["full"], tmp_path)
    assert json.loads(path.read_text()) == runs["full"] and (tmp_path / "metrics.md").exists()
    assert np.isfinite(json.loads(path.read_text())["grounding_auroc"])


def test_eval_command_writes_json_and_markdown(tmp_path, model, processor, labelled_dataset, capsys):
    from modeling_pathflip import save_pretrained_with_pipelines
    from pathflip.cli import main

    save_pretrained_with_pipelines(model, processor, tmp_path / "model")
    datasets.DatasetDict({"test": labelled_dataset[0]}).save_to_disk(str(tmp_path / "data"))
    assert main(["eval", str(tmp_path / "model"), str(tmp_path / "data"), "-o", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics == pytest.approx(evaluate_model(str(tmp_path / "model"), labelled_dataset[0]), nan_ok=True)
    assert "Grounding AUROC" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "model"), str(tmp_path / "data"), "--split", "val", "-o", "x"]) == 2

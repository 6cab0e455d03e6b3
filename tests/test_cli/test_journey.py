"""A lab's own cohort with no Python written: a cohort table -> extract -> train -> eval -> classify / heatmap."""

from __future__ import annotations

import json

import datasets
import pytest

from pathflip.cli import main

DIAGNOSES = ("carcinoma", "benign")


@pytest.mark.slow
def test_from_slides_and_a_table_to_a_trained_evaluated_model(tmp_path, slide_factory, tokenizer, config_factory,
                                                              capsys):  # fmt: skip
    # What the lab has: slides (one without mpp in its metadata, one missing) and a table of reports.
    lines = ["slide,slide_id,mpp,caption,label,split"]
    for index in range(8):
        slide = slide_factory(f"journey-{index}", seed=40 + index, size=(1024, 1536),
                              **({"layout": "aperio", "mpp": None} if index == 0 else {}))  # fmt: skip
        diagnosis = DIAGNOSES[index % 2]
        caption = "Nests of tumour cells. Dense stroma." if diagnosis == "carcinoma" else "Fibrous stroma. Fat."
        lines.append(f"{slide},case-{index},{'0.5' if index == 0 else ''},{caption},{diagnosis},"
                     f"{'test' if index >= 6 else 'train'}")  # fmt: skip
    lines.append(f"{tmp_path / 'lost.svs'},case-lost,,Fat.,benign,train")
    (tmp_path / "cohort.csv").write_text("\n".join(lines) + "\n")
    # The model's size and the text tower's tokenizer (a small config; a real run passes a BERT folder).
    config_factory(patch_dim=96, region_grid_size=2).save_pretrained(tmp_path / "config")
    tokenizer.save_pretrained(tmp_path / "config")

    assert main(["extract", "--table", str(tmp_path / "cohort.csv"), "-o", str(tmp_path / "bags"),
                 "--num-workers", "0", "--target-mpp", "1.0", "--patch-size", "128"]) == 1  # fmt: skip
    assert "FAILED case-lost" in capsys.readouterr().out
    dataset = datasets.load_from_disk(str(tmp_path / "bags" / "dataset"))
    assert len(dataset["train"]) == 6 and len(dataset["test"]) == 2
    assert dataset["train"].features["label"].names == ["benign", "carcinoma"]

    assert main(["train", "--dataset_name_or_path", str(tmp_path / "bags" / "dataset"), "--eval_split", "test",
                 "--config_name", str(tmp_path / "config"), "--tokenizer_name", str(tmp_path / "config"),
                 "--output_dir", str(tmp_path / "model"), "--do_train", "--do_eval", "--max_steps", "3",
                 "--per_device_train_batch_size", "2", "--report_to", "none", "--use_cpu",
                 "--dataloader_num_workers", "0"]) == 0  # fmt: skip
    results = json.loads((tmp_path / "model" / "all_results.json").read_text())
    assert "eval_zero_shot_balanced_accuracy" in results, "class names from the table's labels"

    assert main(["eval", str(tmp_path / "model"), str(tmp_path / "bags" / "dataset"), "--split", "test",
                 "-o", str(tmp_path / "eval")]) == 0  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["slides"] == 2 and "zero_shot_balanced_accuracy" in metrics
    assert metrics["zero_shot_balanced_accuracy"] == pytest.approx(results["eval_zero_shot_balanced_accuracy"])

    slide = str(slide_factory("journey-1", seed=41, size=(1024, 1536)))
    capsys.readouterr()
    assert main(["classify", str(tmp_path / "model"), slide, "--labels", *DIAGNOSES]) == 0  # no --patch-encoder
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert record["slide_id"] == "journey-1" and {p["label"] for p in record["predictions"]} == set(DIAGNOSES)
    assert main(["heatmap", str(tmp_path / "model"), slide, "-s", "Nests of tumour cells.", "-o",
                 str(tmp_path / "maps")]) == 0  # fmt: skip
    assert len(list((tmp_path / "maps").glob("*.png"))) == 1 and len(list((tmp_path / "maps").glob("*.geojson"))) == 1

"""The `pathflip` command line: tile, import and doctor (extract is covered in test_extract.py)."""

import json

import datasets
import h5py
import numpy as np
import pytest

from pathflip.cli import main


def test_doctor_reports_openslide_and_succeeds(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "OpenSlide" in out and "torch" in out and "all good" in out


def test_doctor_checks_a_cache_folder_without_making_it(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "not-yet" / "hf"))
    assert main(["doctor"]) == 0
    assert "made on first use" in capsys.readouterr().out and not (tmp_path / "not-yet").exists()


def test_tile_writes_coords_and_overlays(tmp_path, slide_factory, capsys):
    slide = slide_factory("cli-tile")
    assert main(["tile", str(slide), "-o", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "coords" / "cli-tile.json").read_text())
    coords = np.asarray(record["coords"])
    assert record["patch_size_level0"] == 256 and len(coords) > 0 and (coords % 256 == 0).all()
    assert (tmp_path / "tissue" / "cli-tile.png").exists()
    assert "cli-tile:" in capsys.readouterr().out


def test_tile_says_what_its_tissue_detector_left_out(tmp_path, capsys):
    """Mucin lakes: the saturation threshold leaves them out and tile warns; the default od detector keeps them."""
    from pathflip.synthetic.tissue_slides import make_tissue_slide, write_tissue_slide

    slide, _ = write_tissue_slide(make_tissue_slide("mucinous", 0, side=2048), tmp_path / "slides")
    assert main(["tile", str(slide), "-o", str(tmp_path / "before"), "--tissue-method", "saturation"]) == 0
    captured = capsys.readouterr()
    assert "WARNING mucinous-0: patches hold" in captured.err and "check tissue/mucinous-0.png" in captured.err
    assert main(["tile", str(slide), "-o", str(tmp_path / "after")]) == 0
    captured, runs = capsys.readouterr(), ("before", "after")
    assert "WARNING" not in captured.err and "mucinous-0:" in captured.out and "differs from glass" in captured.out
    before, after = (json.loads((tmp_path / run / "coords" / "mucinous-0.json").read_text()) for run in runs)
    assert before["tissue"]["tissue_method"] == "saturation" and after["tissue"]["tissue_method"] == "od"
    assert len(after["coords"]) == after["tissue"]["patches"] > len(before["coords"])
    assert after["tissue"]["warnings"] == [] and before["tissue"]["warnings"]


def test_tile_names_a_link_that_leads_nowhere(tmp_path, capsys):
    (tmp_path / "gone.svs").symlink_to(tmp_path / "moved-away.svs")
    assert main(["tile", str(tmp_path / "gone.svs"), "-o", str(tmp_path / "out")]) == 1
    assert "gone.svs is a link that leads nowhere (or in a loop)" in capsys.readouterr().err


def test_tile_reports_a_slide_without_tissue_as_extract_does(tmp_path, slide_factory, capsys):
    blank = slide_factory("cli-blank", tissue=False)
    assert main(["tile", str(blank), "-o", str(tmp_path)]) == 1
    assert "FAILED slide 'cli-blank': no tissue found" in capsys.readouterr().err
    assert (tmp_path / "tissue" / "cli-blank.png").exists(), "the overlay shows what the detector saw"


def test_tile_reports_a_slide_without_mpp_and_exits_nonzero(tmp_path, slide_factory, capsys):
    slide = slide_factory("cli-no-mpp", layout="aperio", mpp=None)
    assert main(["tile", str(slide), "-o", str(tmp_path)]) == 1
    assert "cli-no-mpp" in capsys.readouterr().err
    assert main(["tile", str(slide), "-o", str(tmp_path), "--mpp", "0.5"]) == 0


def test_import_h5_folder(tmp_path, capsys):
    folder = tmp_path / "h5"
    folder.mkdir()
    features = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    coords = np.arange(12).reshape(6, 2).astype(np.int64) * 512
    with h5py.File(folder / "slide-x.h5", "w") as handle:
        handle.create_dataset("features", data=features)
        handle.create_dataset("coords", data=coords).attrs["patch_size_level0"] = 512
    assert main(["import", str(folder), "-o", str(tmp_path / "dataset"), "--mpp", "0.5"]) == 0
    row = datasets.load_from_disk(str(tmp_path / "dataset")).with_format("numpy")[0]
    assert row["slide_id"] == "slide-x" and np.array_equal(row["features"], features)
    assert row["mpp"] == 0.5 and "1 slides" in capsys.readouterr().out


def test_bad_input_gets_an_error_line_not_a_traceback(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["import", str(empty), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_ctrl_c_ends_in_one_line_that_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    from pathflip.cli import data

    def interrupted(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "command_tile", interrupted)
    assert main(["tile", str(tmp_path / "s.svs"), "-o", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err == ("interrupted: finished work is kept; run the same command again to go on.\n")


@pytest.fixture
def saved_model(tmp_path, model, processor):
    from modeling_pathflip import save_pretrained_with_pipelines

    save_pretrained_with_pipelines(model, processor, tmp_path / "model")
    return str(tmp_path / "model")


@pytest.fixture
def bag_dataset(tmp_path, bag_factory):
    from pathflip.processing.bags import save_dataset, write_bags

    bags = [bag_factory(i, 12 + 4 * i) for i in range(3)]
    save_dataset(write_bags(bags, tmp_path / "bags.arrow", 16), tmp_path / "dataset")
    return bags, str(tmp_path / "dataset")


def _json_lines(text):
    return [json.loads(line) for line in text.strip().splitlines()]


def test_classify_prints_the_pipeline_ranking_for_every_slide(tmp_path, saved_model, bag_dataset, capsys):
    from transformers import pipeline

    bags, dataset = bag_dataset
    arguments = ["classify", saved_model, dataset, "--labels", "tumour", "fat", "--template", "{}.", "-o"]
    assert main([*arguments, str(tmp_path / "out.jsonl")]) == 0
    records = _json_lines(capsys.readouterr().out)
    assert records == _json_lines((tmp_path / "out.jsonl").read_text())
    classify = pipeline("zero-shot-slide-classification", model=saved_model)
    for record, row in zip(records, datasets.load_from_disk(dataset).with_format("numpy"), strict=True):
        expected = classify(row, candidate_labels=["tumour", "fat"], hypothesis_template="{}.")
        assert record["slide_id"] == row["slide_id"]
        assert [p["label"] for p in record["predictions"]] == [p["label"] for p in expected]
        assert [p["score"] for p in record["predictions"]] == pytest.approx([p["score"] for p in expected])


def test_retrieve_by_text_over_a_saved_index_and_by_slide(tmp_path, saved_model, bag_dataset, capsys):
    bags, dataset = bag_dataset
    index = str(tmp_path / "index")
    assert main(["retrieve", saved_model, "--index", dataset, "--query", "tumour", "--save-index", index]) == 0
    first = _json_lines(capsys.readouterr().out)
    assert datasets.load_from_disk(index).column_names.count("slide_embedding") == 1
    assert main(["retrieve", saved_model, "--index", index, "--query", "tumour"]) == 0
    assert _json_lines(capsys.readouterr().out) == first
    assert sorted(match["slide_id"] for match in first[0]["matches"]) == sorted(bag["slide_id"] for bag in bags)
    assert main(["retrieve", saved_model, "--slide", dataset, "--text", "fat", "--text", "tumour", "--top-k", "1"]) == 0
    records = _json_lines(capsys.readouterr().out)
    assert len(records) == 3 and all(len(record["matches"]) == 1 for record in records)
    assert main(["retrieve", saved_model, "--slide", dataset]) == 2, "no --text: a clear error, exit 2"
    assert "--text" in capsys.readouterr().err


def test_verbs_work_in_a_fresh_process_without_trust_remote_code(saved_model, bag_dataset):
    import os
    import subprocess
    import sys

    _, dataset = bag_dataset
    command = [sys.executable, "-m", "pathflip.cli", "classify", saved_model, dataset, "--labels", "fat", "tumour"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(_json_lines(result.stdout)) == 3


def test_a_dataset_without_splits_is_read_by_its_split_column(tmp_path, bag_factory):
    from argparse import Namespace

    from pathflip.cli.models import _dataset_split
    from pathflip.processing.bags import write_bags

    bags = [{**bag_factory(i, 12), "split": split} for i, split in enumerate(["train", "test", "test"])]
    write_bags(bags, tmp_path / "bags.arrow", 16, extra={"split": datasets.Value("string")}).save_to_disk(
        str(tmp_path / "mixed"))  # fmt: skip
    assert _dataset_split(Namespace(dataset=str(tmp_path / "mixed"), split="test"))["split"] == ["test", "test"]
    with pytest.raises(ValueError, match=r"--split 'valid': no row of .* has it in its 'split' column .*\['test', "):
        _dataset_split(Namespace(dataset=str(tmp_path / "mixed"), split="valid"))
    datasets.load_from_disk(str(tmp_path / "mixed")).select([]).save_to_disk(str(tmp_path / "none"))
    with pytest.raises(ValueError, match=r"none \(or one of its splits\) has no rows"):
        _dataset_split(Namespace(dataset=str(tmp_path / "none"), split="test"))

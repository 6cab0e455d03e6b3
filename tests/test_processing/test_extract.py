import json
import os
import signal
import subprocess
import sys
import time

import datasets
import numpy as np
import pytest

from pathflip.processing.encoders import load_encoder
from pathflip.processing.extract import ExtractionOptions, build_dataset, run_extraction
from pathflip.processing.tiler import TilingOptions
from pathflip.synthetic.tissue_slides import make_tissue_slide, write_tissue_slide

OPTIONS = ExtractionOptions(batch_size=16, num_workers=0)


def _cli(*args, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pathflip.cli", *map(str, args)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def _rows(folder):
    dataset = datasets.load_from_disk(str(folder / "dataset")).with_format("numpy")
    return {row["slide_id"]: row for row in dataset}


def test_bad_slides_are_reported_by_name_while_the_others_finish(tmp_path, slide_factory):
    good = [slide_factory(f"good-{i}", seed=i) for i in range(2)]
    blank = slide_factory("blank", tissue=False)
    corrupt = tmp_path / "corrupt.tiff"
    corrupt.write_bytes(good[0].read_bytes()[:4000])
    text = tmp_path / "notes.svs"
    text.write_text("hello")
    missing = tmp_path / "missing.svs"
    process = _cli("extract", *good, blank, corrupt, text, missing, "-o", tmp_path / "out", "--num-workers", "0")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    assert "2 extracted, 0 already done, 4 failed" in stdout
    for name, reason in [
        ("blank", "no tissue"),
        ("corrupt", "corrupt"),
        ("notes", "not a slide"),
        ("missing", "does not exist"),
    ]:
        assert any(name in line and reason in line for line in stdout.splitlines()), (name, stdout)
    assert sorted(_rows(tmp_path / "out")) == ["good-0", "good-1"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["failed"]) == {"blank", "corrupt", "notes", "missing"}
    assert (tmp_path / "out" / "tissue" / "good-0.png").exists()


def test_dataset_follows_the_bag_contract(tmp_path, slide_factory):
    encoder = load_encoder("stain-texture")
    report = run_extraction([slide_factory("contract")], tmp_path, encoder, OPTIONS)
    assert report.done == ["contract"]
    row = _rows(tmp_path)["contract"]
    assert row["features"].shape == (len(row["coords"]), encoder.dim)
    assert row["patch_size_level0"] == 256 and row["mpp"] == pytest.approx(0.5)
    assert row["encoder"] == "stain-texture"
    assert (row["coords"] % 256 == 0).all()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["encoder"]["name"] == "stain-texture" and manifest["versions"]["torch"]
    again = run_extraction([slide_factory("contract")], tmp_path, encoder, OPTIONS)
    assert again.already_done == ["contract"] and not again.done
    build_dataset(tmp_path, parquet=True)
    shards = sorted(str(path) for path in (tmp_path / "dataset_parquet").glob("*.parquet"))
    from_parquet = datasets.load_dataset("parquet", data_files=shards, split="train").with_format("numpy")[0]
    assert np.array_equal(from_parquet["features"], row["features"])


def test_resuming_refuses_only_options_that_change_features_and_names_them(tmp_path, slide_factory):
    encoder = load_encoder("stain-texture")
    run_extraction([slide_factory("settings")], tmp_path, encoder, OPTIONS)
    other = ExtractionOptions(tiling=TilingOptions(patch_size=128), batch_size=16, num_workers=0)
    with pytest.raises(ValueError, match="made with --patch-size 256, this run asks for --patch-size 128"):
        run_extraction([slide_factory("settings")], tmp_path, encoder, other)
    other = ExtractionOptions(tiling=OPTIONS.tiling, mpp=0.25, batch_size=16, num_workers=0)
    with pytest.raises(ValueError, match="made with --mpp None, this run asks for --mpp 0.25"):
        run_extraction([slide_factory("settings")], tmp_path, encoder, other)
    other = ExtractionOptions(tiling=TilingOptions(tissue_method="saturation"), batch_size=16, num_workers=0)
    with pytest.raises(ValueError, match="made with --tissue-method od, this run asks for --tissue-method saturation"):
        run_extraction([slide_factory("settings")], tmp_path, encoder, other)
    other = ExtractionOptions(tiling=TilingOptions(tissue_threshold=0.05), batch_size=16, num_workers=0)
    with pytest.raises(ValueError, match="with --tissue-threshold None, this run asks for --tissue-threshold 0.05"):
        run_extraction([slide_factory("settings")], tmp_path, encoder, other)
    # batch size, workers and parquet do not change features: the run resumes
    workers = ExtractionOptions(tiling=OPTIONS.tiling, batch_size=7, num_workers=1, parquet=True)
    assert run_extraction([slide_factory("settings")], tmp_path, encoder, workers).already_done == ["settings"]


def test_a_folder_from_before_the_tissue_options_resumes_only_with_the_saturation_detector(tmp_path, slide_factory):
    """Its manifest has no tissue_method: its bags were made by the saturation threshold, the only one there was."""
    encoder = load_encoder("stain-texture")
    run_extraction([slide_factory("settings")], tmp_path, encoder, OPTIONS)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for name in ("tissue_method", "tissue_threshold"):
        del manifest["options"]["tiling"][name]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="made with --tissue-method saturation, .* Resume with --tissue-method satu"):
        run_extraction([slide_factory("settings")], tmp_path, encoder, OPTIONS)
    before = ExtractionOptions(tiling=TilingOptions(tissue_method="saturation"), batch_size=16, num_workers=0)
    assert run_extraction([slide_factory("settings")], tmp_path, encoder, before).already_done == ["settings"]


def test_report_gives_each_slide_its_tissue_figures_and_warns_when_tissue_is_left_out(tmp_path):
    """Stroma beside a dominant haemorrhage under the saturation threshold: few patches, a warning in the summary
    and report.json; the od detector keeps it and says nothing."""
    path, _ = write_tissue_slide(make_tissue_slide("haemorrhage", 0, side=1536), tmp_path / "slides")
    encoder = load_encoder("stain-texture")
    before = ExtractionOptions(tiling=TilingOptions(tissue_method="saturation"), batch_size=16, num_workers=0)
    report = run_extraction([path], tmp_path / "before", encoder, before)
    assert report.done == ["haemorrhage-0"] and "tissue may have been left out" in report.warnings["haemorrhage-0"][0]
    summary = report.summary()
    assert "WARNING haemorrhage-0: patches hold" in summary and "check tissue/haemorrhage-0.png" in summary
    saved = json.loads((tmp_path / "before" / "report.json").read_text())
    assert saved["warnings"] == report.warnings and saved["tissue"]["haemorrhage-0"]["tissue_method"] == "saturation"
    after = run_extraction([path], tmp_path / "after", encoder, OPTIONS)
    figures, figures_before = after.tissue["haemorrhage-0"], report.tissue["haemorrhage-0"]
    assert not after.warnings and figures["non_glass_kept"] >= 0.85 and figures["tissue_method"] == "od"
    assert figures_before["patches"] == len(_rows(tmp_path / "before")["haemorrhage-0"]["coords"])
    assert figures["patches"] > 2 * figures_before["patches"]
    assert {"tissue_fraction", "non_glass_fraction", "kept_fraction", "glass_rgb", "grid_patches"} <= set(figures)
    manifest = json.loads((tmp_path / "after" / "manifest.json").read_text())
    assert manifest["options"]["tiling"]["tissue_method"] == "od"


def test_a_run_killed_midway_resumes_with_each_slide_exactly_once(tmp_path, slide_factory):
    slides = [slide_factory(f"kill-{i}", seed=10 + i, size=(3072, 4096)) for i in range(5)]
    clean = tmp_path / "clean"
    run_extraction(slides, clean, load_encoder("stain-texture"), OPTIONS)
    killed = tmp_path / "killed"
    process = _cli("extract", *slides, "-o", killed, "--num-workers", "0", "--batch-size", "16")
    deadline = time.time() + 240
    while time.time() < deadline and len(list((killed / "bags").glob("*.safetensors"))) < 2:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before = len(list((killed / "bags").glob("*.safetensors")))
    assert 2 <= finished_before < 5, "the kill should land mid-way"
    rerun = _cli("extract", *slides, "-o", killed, "--num-workers", "0", "--batch-size", "16")
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert f"{5 - finished_before} extracted, {finished_before} already done, 0 failed" in stdout
    assert not list((killed / "bags").glob("*.partial"))
    resumed, expected = _rows(killed), _rows(clean)
    assert sorted(resumed) == sorted(expected) == [f"kill-{i}" for i in range(5)]
    for slide_id, row in expected.items():
        assert np.array_equal(resumed[slide_id]["coords"], row["coords"])
        assert np.array_equal(resumed[slide_id]["features"], row["features"])


def test_worker_processes_read_the_same_patches(tmp_path, slide_factory):
    slide = slide_factory("workers")
    encoder = load_encoder("stain-texture")
    run_extraction([slide], tmp_path / "serial", encoder, OPTIONS)
    parallel = ExtractionOptions(batch_size=16, num_workers=2)
    run_extraction([slide], tmp_path / "parallel", encoder, parallel)
    a, b = _rows(tmp_path / "serial")["workers"], _rows(tmp_path / "parallel")["workers"]
    assert np.array_equal(a["features"], b["features"])


def test_real_slide_without_mpp_fails_clearly_and_extracts_with_the_override(tmp_path, tcga_slide):
    process = _cli("extract", tcga_slide, "-o", tmp_path / "no-mpp", "--num-workers", "0")
    stdout, _ = process.communicate(timeout=300)
    assert process.returncode == 1
    assert "tcga-cr-7395-01a-01-ts1" in stdout and "--mpp" in stdout
    process = _cli("extract", tcga_slide, "-o", tmp_path / "mpp", "--num-workers", "0", "--mpp", "0.5")
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    row = _rows(tmp_path / "mpp")["tcga-cr-7395-01a-01-ts1"]
    assert len(row["coords"]) > 50 and row["mpp"] == pytest.approx(0.5)


def test_torchrun_splits_slides_across_processes_and_merges_them(tmp_path, slide_factory):
    slides = [slide_factory(f"split-{i}", seed=20 + i) for i in range(3)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*torchrun, "-m", "pathflip.cli", "extract", *map(str, slides), "-o", str(tmp_path), "--num-workers", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("3 extracted, 0 already done, 0 failed") == 1, "one summary, from the main process"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["processes"] == 2 and sorted(report["done"]) == [f"split-{i}" for i in range(3)]
    assert sorted(_rows(tmp_path)) == [f"split-{i}" for i in range(3)]


def test_a_slide_named_twice_is_read_once(tmp_path):
    from pathflip.processing.extract import find_slides

    (tmp_path / "a.svs").write_bytes(b"")
    (tmp_path / "b.svs").write_bytes(b"")
    assert find_slides([tmp_path / "a.svs", str(tmp_path / "a.svs"), tmp_path]) == [tmp_path / "a.svs",
                                                                                     tmp_path / "b.svs"]  # fmt: skip


def test_a_reader_workers_error_is_one_line():
    from pathflip.processing.extract import _one_line

    wrapped = RuntimeError("Caught OpenSlideError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 1\nopenslide.lowlevel.OpenSlideError: Not a JPEG file\n")
    assert _one_line(wrapped) == "openslide.lowlevel.OpenSlideError: Not a JPEG file"
    assert _one_line(ValueError("bad\nmore")) == "ValueError: bad"

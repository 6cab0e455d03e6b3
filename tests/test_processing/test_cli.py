"""The `pathflip` command line: tile, import and doctor (extract is covered in test_extract.py)."""

import json

import datasets
import h5py
import numpy as np

from processing.cli import main


def test_doctor_reports_openslide_and_succeeds(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "OpenSlide" in out and "torch" in out and "all good" in out


def test_tile_writes_coords_and_overlays(tmp_path, slide_factory, capsys):
    slide = slide_factory("cli-tile")
    assert main(["tile", str(slide), "-o", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "coords" / "cli-tile.json").read_text())
    coords = np.asarray(record["coords"])
    assert record["patch_size_level0"] == 256 and len(coords) > 0 and (coords % 256 == 0).all()
    assert (tmp_path / "tissue" / "cli-tile.png").exists()
    assert "cli-tile:" in capsys.readouterr().out


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

"""The cohort table: reading and checking it, and extraction / import driven by it."""

from __future__ import annotations

import datasets
import h5py
import numpy as np
import pytest

from pathflip.cli import main
from pathflip.processing.cohort_table import read_cohort_table
from pathflip.processing.extract import read_bag_file


def _table(tmp_path, text: str, name: str = "cohort.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_rows_ids_mpp_labels_splits_and_extra_columns(tmp_path):
    table = read_cohort_table(_table(tmp_path, "slide,mpp,label,caption,site\nslides/a.svs,0.25,tumour,Tumour.,lung\n"
                                               "b.tif,,normal,,\n"), class_order=["tumour", "normal"])  # fmt: skip
    first, second = table.rows
    assert first.slide == (tmp_path / "slides" / "a.svs").resolve() and first.slide_id == "a"
    assert (first.mpp, second.mpp, second.caption, first.split) == (0.25, None, None, "train")
    assert table.class_names == ["tumour", "normal"] and table.metadata(second)["label"] == 1
    assert table.metadata(first)["site"] == "lung" and "site" in table.features()
    assert read_cohort_table(tmp_path / "cohort.csv").class_names == ["normal", "tumour"], "default: sorted"


@pytest.mark.parametrize(
    "text, options, message",
    [
        ("path,label\na.svs,x\n", {}, r"no 'slide' column \(it has \['path', 'label'\]\)"),
        ("slide,mpp\na.svs,-1\n", {}, r"line 2 \(slide 'a'\): mpp '-1' is not a positive number"),
        ("slide,mpp\na.svs,abc\n", {}, r"line 2 \(slide 'a'\): mpp 'abc' is not a positive number"),
        ("slide,slide_id\na.svs,s1\nb.svs,s1\n", {}, r"slide_id \['s1'\] appear more than once"),
        ("slide\n\n", {}, r"has no rows"),
        ("slide,label\na.svs,x\nb.svs,y\n", {"class_order": ["x"]}, r"must name .*missing \['y'\]"),
        ("slide,label\na.svs,x\n", {"class_order": ["x", "z"]}, r"names \['z'\], which no row"),
        ("slide,split\na.svs,hold-out\n", {}, r"line 2 \(slide 'a'\): split 'hold-out' is not a split name"),
        ("slide,split\na.svs,../../elsewhere\n", {}, r"split '../../elsewhere' is not a split name"),
        ("slide,split\na.svs,Train\nb.svs,train\n", {}, r"split names \['Train', 'train'\] differ only in case"),
        ("slide,slide_id\na.svs,s1\na.svs,s2\n", {}, r"slide \['.*a.svs'\] appear more than once"),
        ("slide,coords\na.svs,0\n", {}, r"column\(s\) \['coords'\] would replace what every bag holds"),
        ("slide,caption\na.svs,Tumour, grade 2.\n", {}, r"cannot be parsed .*quote any value that holds the separator"),
        ("slide,caption,label\na.svs,Tumour, grade 2.,x\n", {}, r"cannot be parsed"),
        ("", {}, r"is empty; give a header line"),
    ],
)  # fmt: skip
def test_bad_tables_name_the_row_and_the_fix(tmp_path, text, options, message):
    with pytest.raises(ValueError, match=message):
        read_cohort_table(_table(tmp_path, text), **options)


def test_a_spreadsheet_table_with_a_byte_order_mark_or_latin_1(tmp_path):
    (tmp_path / "cohort.csv").write_bytes("\ufeffslide,caption\na.svs,\"Tumour, grade 2.\"\n".encode())
    assert read_cohort_table(tmp_path / "cohort.csv").rows[0].caption == "Tumour, grade 2."
    (tmp_path / "cohort.csv").write_bytes("slide,caption\na.svs,Ulcération.\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"cohort.csv is not UTF-8 text .*save it as UTF-8"):
        read_cohort_table(tmp_path / "cohort.csv")
    with pytest.raises(ValueError, match=r"is a folder; give the table file"):
        read_cohort_table(tmp_path)


def test_extract_with_a_table_builds_splits_labels_and_per_slide_mpp(tmp_path, slide_factory, capsys):
    no_mpp = slide_factory("table-no-mpp", layout="aperio", mpp=None)
    plain = slide_factory("table-plain", seed=3)
    table = _table(tmp_path, "slide,slide_id,mpp,label,caption,split\n"
                             f"{no_mpp},case-1,0.5,invasive carcinoma,Tumour nests.,train\n"
                             f"{plain},case-2,,benign,Fibrous stroma.,test\n"
                             f"{tmp_path / 'gone.svs'},case-3,,benign,Fat.,test\n")  # fmt: skip
    arguments = ["extract", "--table", str(table), "-o", str(tmp_path / "out"), "--num-workers", "0",
                 "--class-order", "benign", "invasive carcinoma"]  # fmt: skip
    assert main(arguments) == 1, "a missing slide is listed and the exit code says so"
    captured = capsys.readouterr()
    assert "FAILED case-3" in captured.out and "2 extracted" in captured.out
    dataset = datasets.load_from_disk(str(tmp_path / "out" / "dataset"))
    assert sorted(dataset) == ["test", "train"] and dataset["train"]["slide_id"] == ["case-1"]
    assert dataset["train"].features["label"].names == ["benign", "invasive carcinoma"]
    assert dataset["train"]["label"] == [1] and dataset["test"]["caption"] == ["Fibrous stroma."]
    assert dataset["train"]["mpp"] == [pytest.approx(0.5)], "the table's mpp for a slide without one"
    # an edited caption rewrites that slide's shard only; the bags are not extracted again
    shard = tmp_path / "out" / "dataset" / "test" / "case-2.arrow"
    before = (tmp_path / "out" / "dataset" / "train" / "case-1.arrow").stat().st_mtime_ns
    table.write_text(table.read_text().replace("Fibrous stroma.", "Dense fibrous stroma."))
    assert main(arguments) == 1
    assert "2 already done" in capsys.readouterr().out
    assert datasets.load_from_disk(str(tmp_path / "out" / "dataset"))["test"]["caption"] == ["Dense fibrous stroma."]
    assert shard.exists() and (tmp_path / "out" / "dataset" / "train" / "case-1.arrow").stat().st_mtime_ns == before


def test_a_torn_or_empty_bag_is_extracted_again(tmp_path, slide_factory, capsys):
    slides = [slide_factory("torn-a"), slide_factory("torn-b", seed=5)]
    arguments = ["extract", *map(str, slides), "-o", str(tmp_path), "--num-workers", "0"]
    assert main(arguments) == 0
    good = (tmp_path / "bags" / "torn-b.safetensors").read_bytes()
    expected = read_bag_file(tmp_path / "bags" / "torn-b.safetensors")
    (tmp_path / "bags" / "torn-a.safetensors").write_bytes(b"")
    (tmp_path / "bags" / "torn-b.safetensors").write_bytes(good[: len(good) // 2])
    capsys.readouterr()
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "2 extracted, 0 already done" in out and "extracted again torn-a" in out and "torn or empty" in out
    again = read_bag_file(tmp_path / "bags" / "torn-b.safetensors")
    assert np.array_equal(again["features"], expected["features"]) and again["mpp"] == expected["mpp"]
    assert len(datasets.load_from_disk(str(tmp_path / "dataset"))) == 2


def test_extract_keeps_what_it_did_not_write_and_notices_a_changed_slide(tmp_path, slide_factory, capsys):
    first, second = slide_factory("kept-a"), slide_factory("kept-b", seed=4)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "report.json").write_text("{}")
    arguments = ["extract", "--num-workers", "0", "-o"]
    assert main([*arguments, str(tmp_path / "mine"), str(first)]) == 2
    assert "already holds files but no extraction" in capsys.readouterr().err
    assert (tmp_path / "mine" / "report.json").read_text() == "{}"
    # a run that extracted nothing does not tie the folder to its options
    assert main([*arguments, str(tmp_path / "out"), str(tmp_path / "absent.svs"), "--target-mpp", "1"]) == 1
    table = _table(tmp_path, f"slide,slide_id,split\n{first},case-1,train\n")
    assert main([*arguments, str(tmp_path / "out"), "--table", str(table)]) == 0
    # the table now names another file for the same slide id: its bag is made again
    table.write_text(f"slide,slide_id,split\n{second},case-1,train\n")
    capsys.readouterr()
    assert main([*arguments, str(tmp_path / "out"), "--table", str(table)]) == 0
    out = capsys.readouterr().out
    assert "1 extracted" in out and "was made from kept-a.tiff" in out and "now kept-b.tiff" in out
    # without the table the labelled dataset would be replaced by a plain one
    assert main([*arguments, str(tmp_path / "out"), str(second)]) == 2
    assert "built from the cohort table" in capsys.readouterr().err
    assert sorted(datasets.load_from_disk(str(tmp_path / "out" / "dataset"))) == ["train"]


def test_import_with_a_table(tmp_path):
    folder = tmp_path / "h5"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for slide_id in ("s1", "s2", "stray"):
        with h5py.File(folder / f"{slide_id}.h5", "w") as handle:
            handle.create_dataset("features", data=rng.normal(size=(6, 8)).astype(np.float32))
            coords = handle.create_dataset("coords", data=np.arange(12).reshape(6, 2) * 256)
            coords.attrs["patch_size_level0"] = 256
    table = _table(tmp_path, "slide,mpp,label,caption,split\ns1.svs,0.25,b,One.,train\ns2.svs,,a,Two.,test\n"
                             "s3.svs,,a,Three.,test\n")  # fmt: skip
    assert main(["import", str(folder), "--table", str(table), "-o", str(tmp_path / "dataset")]) == 1, "s3 missing"
    dataset = datasets.load_from_disk(str(tmp_path / "dataset"))
    assert dataset["train"]["slide_id"] == ["s1"] and dataset["test"]["slide_id"] == ["s2"], "stray.h5 not in table"
    assert dataset["train"]["mpp"] == [pytest.approx(0.25)] and dataset["test"]["mpp"] == [None]
    assert dataset["train"].features["label"].names == ["a", "b"] and dataset["train"]["label"] == [1]
    (tmp_path / "captions.csv").write_text("slide_id,caption\ns1,Other.\n")
    assert main(["import", str(folder), "--table", str(table), "--captions", str(tmp_path / "captions.csv"),
                 "-o", str(tmp_path / "again")]) == 2, "two sources of captions"  # fmt: skip
    assert not (tmp_path / "again").exists()

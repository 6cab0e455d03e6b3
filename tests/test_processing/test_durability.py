"""Faults at the OS boundary: a full disk or a read-only output ends with a summary and exit code 1, leaves no
partial file, and a later run finishes the job."""

from __future__ import annotations

import errno

import datasets

import pathflip.processing.extract as extract
from pathflip.cli import main


def test_a_full_disk_ends_with_a_summary_and_no_partial_files(tmp_path, slide_factory, monkeypatch, capsys):
    slides = [slide_factory("full-a", seed=1), slide_factory("full-b", seed=2)]
    arguments = ["extract", *map(str, slides), "-o", str(tmp_path), "--num-workers", "0"]
    real_save = extract.save_file

    def disk_full(tensors, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"half a bag")  # what the disk took before it filled up
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(extract, "save_file", disk_full)
    assert main(arguments) == 1
    out = capsys.readouterr().out
    assert "0 extracted, 0 already done, 2 failed" in out and out.count("No space left on device") == 2
    assert not [path for path in tmp_path.rglob("*") if path.is_file() and path.suffix in (".partial", ".safetensors")]
    monkeypatch.setattr(extract, "save_file", real_save)  # space freed
    assert main(arguments) == 0
    assert "2 extracted, 0 already done, 0 failed" in capsys.readouterr().out
    assert len(datasets.load_from_disk(str(tmp_path / "dataset"))) == 2


def test_a_full_disk_while_updating_the_dataset_keeps_the_bags(tmp_path, slide_factory, monkeypatch, capsys):
    slide = slide_factory("full-dataset", seed=3)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "dataset"))

    monkeypatch.setattr(extract, "update_bag_dataset", disk_full)
    assert main(["extract", str(slide), "-o", str(tmp_path), "--num-workers", "0"]) == 1
    out = capsys.readouterr().out
    assert "1 extracted" in out and "FAILED (dataset): the dataset was not updated" in out
    assert (tmp_path / "bags" / "full-dataset.safetensors").exists(), "the finished bag is kept"


def test_a_read_only_output_is_one_line_and_exit_1(tmp_path, slide_factory, monkeypatch, capsys):
    def read_only(path, text):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(extract, "write_text", read_only)
    assert main(["extract", str(slide_factory("read-only", seed=4)), "-o", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "manifest.json is on a read-only filesystem" in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "bags").exists()

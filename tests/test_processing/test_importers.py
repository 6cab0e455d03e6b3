"""TRIDENT / CLAM bags -> feature-bag dataset -> TRIDENT bags, on small synthetic files."""

from __future__ import annotations

import json
import os

import datasets
import h5py
import numpy as np
import pytest
import torch

from pathflip.processing.importers import import_h5_folder, import_pt_folder

# conftest sets this too; repeated here because these tests build datasets and must never reach the Hub.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

DIM = 8


def make_arrays(num_patches: int, *, seed: int, dim: int = DIM, patch_size: int = 512):
    """Random float32 features and distinct grid coords (int64, as TRIDENT and CLAM store them)."""
    generator = np.random.default_rng(seed)
    cells = generator.permutation(100)[:num_patches]
    coords = np.stack([cells % 10, cells // 10], axis=1).astype(np.int64) * patch_size
    return generator.standard_normal((num_patches, dim)).astype(np.float32), coords


def write_trident(path, features, coords, **extra_attrs):
    """A TRIDENT features file: geometry in coords.attrs, encoder name in features.attrs."""
    attrs = {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40, "target_magnification": 20}
    attrs["name"] = path.stem
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=features).attrs["encoder"] = "uni_v1"
        handle.create_dataset("coords", data=coords).attrs.update(attrs | extra_attrs)


def write_clam(path, features, coords, *, batch_axis=False, patch_size=256, patch_level=1, downsample=(2.0, 2.0)):
    """A CLAM file: patch size at ``patch_level`` plus that level's per-axis downsample."""
    with h5py.File(path, "w") as handle:
        if features is not None:
            handle.create_dataset("features", data=features[None] if batch_axis else features)
        dataset = handle.create_dataset("coords", data=coords)
        dataset.attrs.update({"patch_size": patch_size, "patch_level": patch_level, "downsample": downsample})


@pytest.fixture
def trident_folder(tmp_path):
    """Three TRIDENT bags written out of name order, with their arrays by slide_id."""
    folder = tmp_path / "features_uni_v1"
    folder.mkdir()
    arrays = {}
    for seed, slide_id in enumerate(["slide-c", "slide-a", "slide-b"]):
        arrays[slide_id] = make_arrays(5 + seed, seed=seed)
        write_trident(folder / f"{slide_id}.h5", *arrays[slide_id])
    return folder, arrays


def test_import_trident_schema_and_values(trident_folder):
    folder, arrays = trident_folder
    dataset = import_h5_folder(folder)
    assert dataset["slide_id"][:] == ["slide-a", "slide-b", "slide-c"]
    assert dataset.features["features"].shape == (None, DIM)
    assert dataset.features["features"].dtype == "float32"
    assert dataset.features["coords"].dtype == "int32"
    rows = dataset.with_format("numpy")
    for index, slide_id in enumerate(dataset["slide_id"]):
        features, coords = arrays[slide_id]
        assert np.array_equal(rows[index]["features"], features)
        assert np.array_equal(rows[index]["coords"], coords)
    assert set(dataset["patch_size_level0"]) == {512}
    assert dataset["encoder"][:] == ["uni_v1"] * 3
    assert dataset["mpp"][:] == [None] * 3  # never guessed
    assert dataset["caption"][:] == [None] * 3


def test_import_clam_attrs_and_batch_axis(tmp_path):
    features, coords = make_arrays(6, seed=1)
    write_clam(tmp_path / "clam.h5", features, coords, batch_axis=True)
    dataset = import_h5_folder(tmp_path, encoder="conch")
    assert dataset[0]["patch_size_level0"] == 512  # 256 at level 1 x downsample 2
    assert dataset[0]["encoder"] == "conch"
    assert np.array_equal(dataset.with_format("numpy")[0]["features"], features)


def test_patch_size_override_and_missing_patch_size(tmp_path):
    features, coords = make_arrays(4, seed=2)
    with h5py.File(tmp_path / "bare.h5", "w") as handle:  # CLAM feature files carry no geometry
        handle.create_dataset("features", data=features)
        handle.create_dataset("coords", data=coords).attrs["patch_size"] = 256
    with pytest.raises(ValueError, match=r"bare\.h5.*patch_size_level0="):
        import_h5_folder(tmp_path)
    assert import_h5_folder(tmp_path, patch_size_level0=1024)[0]["patch_size_level0"] == 1024


def test_mpp_from_attrs_wins_over_option(tmp_path):
    write_trident(tmp_path / "with-mpp.h5", *make_arrays(3, seed=3), mpp=0.25)
    write_trident(tmp_path / "without-mpp.h5", *make_arrays(3, seed=4))
    dataset = import_h5_folder(tmp_path, mpp=0.5)
    assert dict(zip(dataset["slide_id"], dataset["mpp"], strict=True)) == {"with-mpp": 0.25, "without-mpp": 0.5}


@pytest.mark.parametrize("source", ["mapping", "csv", "csv-from-a-spreadsheet", "json", "jsonl"])
def test_captions(trident_folder, tmp_path, source):
    folder, _ = trident_folder
    captions = {"slide-a": "Invasive carcinoma.", "slide-c": "Benign fat."}
    if source.startswith("csv"):
        path = tmp_path / "captions.csv"
        mark = "\ufeff" if source == "csv-from-a-spreadsheet" else ""  # the byte-order mark Excel writes
        path.write_text(mark + "slide_id,caption\n" + "".join(f'{k},"{v}"\n' for k, v in captions.items()))
        captions = path
    elif source == "json":
        path = tmp_path / "captions.json"
        path.write_text(json.dumps([{"slide_id": k, "caption": v} for k, v in captions.items()]))
        captions = path
    elif source == "jsonl":
        path = tmp_path / "captions.jsonl"
        path.write_text("".join(json.dumps({"slide_id": k, "caption": v}) + "\n" for k, v in captions.items()))
        captions = path
    dataset = import_h5_folder(folder, captions=captions)
    assert dataset["caption"][:] == ["Invasive carcinoma.", None, "Benign fat."]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("c.json", "{'slide-a': 'x'}", r"c.json is not valid JSON \(Expecting property name .* at line 1\); fix"),
        ("c.csv", "slide,text\nslide-a,x\n", r"c.csv: every record needs .*has \['slide', 'text'\]"),
        ("c.json", "3", r"c.json: every record needs 'slide_id' and 'caption' columns \(the first has \[\]\)"),
    ],
)  # fmt: skip
def test_bad_captions_files_are_named(trident_folder, tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        import_h5_folder(trident_folder[0], captions=tmp_path / name)


def test_output_folder_is_loadable_and_clean(trident_folder, tmp_path):
    folder, arrays = trident_folder
    output = tmp_path / "out" / "bags"
    dataset = import_h5_folder(folder, output=output, dtype="float16")
    assert sorted(os.listdir(output.parent)) == ["bags"]  # no scratch Arrow file or .partial folder left
    loaded = datasets.load_from_disk(str(output))
    assert loaded.features["features"].dtype == "float16"
    assert loaded["slide_id"][:] == dataset["slide_id"][:] == ["slide-a", "slide-b", "slide-c"]
    expected = arrays["slide-b"][0].astype(np.float16)
    assert np.array_equal(loaded.with_format("numpy")[1]["features"], expected)


def test_import_pt_folder_with_clam_and_trident_coords(tmp_path):
    pt_dir, coords_dir = tmp_path / "pt_files", tmp_path / "patches"
    pt_dir.mkdir()
    coords_dir.mkdir()
    clam_features, clam_coords = make_arrays(5, seed=5)
    trident_features, trident_coords = make_arrays(6, seed=6)
    torch.save(torch.from_numpy(clam_features), pt_dir / "clam.pt")
    torch.save(torch.from_numpy(trident_features), pt_dir / "trident.pt")
    write_clam(coords_dir / "clam.h5", None, clam_coords, patch_size=512, patch_level=0, downsample=(1.0, 1.0))
    with h5py.File(coords_dir / "trident_patches.h5", "w") as handle:
        handle.create_dataset("coords", data=trident_coords).attrs["patch_size_level0"] = 1024
    dataset = import_pt_folder(pt_dir, coords_dir=coords_dir, mpp=0.25)
    rows = dataset.with_format("numpy")
    assert dataset["slide_id"][:] == ["clam", "trident"]
    assert dataset["patch_size_level0"][:] == [512, 1024]
    assert dataset["mpp"][:] == [0.25, 0.25]
    assert np.array_equal(rows[0]["features"], clam_features)
    assert np.array_equal(rows[1]["coords"], trident_coords)

    torch.save(torch.from_numpy(clam_features), pt_dir / "orphan.pt")
    with pytest.raises(ValueError, match="orphan"):
        import_pt_folder(pt_dir, coords_dir=coords_dir)


def write_bad(path, case):
    """One broken file per error case; the others in its folder are fine."""
    features, coords = make_arrays(4, seed=7)
    if case == "not-hdf5":
        path.write_text("this is not an HDF5 file")
        return
    with h5py.File(path, "w") as handle:
        if case != "no-features":
            bad = {"nan": np.nan, "inf": np.inf}.get(case)
            if bad is not None:
                features[1, 2] = bad
            if case == "dim":
                features = np.zeros((4, DIM + 1), np.float32)
            handle.create_dataset("features", data=features)
        if case != "no-coords":
            handle.create_dataset("coords", data=coords[:3] if case == "length" else coords)
            handle["coords"].attrs["patch_size_level0"] = 512


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not-hdf5", "not a readable HDF5"),
        ("no-features", "no 'features' dataset"),
        ("no-coords", "no 'coords' dataset"),
        ("length", "4 feature rows but 3 coords"),
        ("nan", "NaN or Inf"),
        ("inf", "NaN or Inf"),
        ("dim", "9-dimensional features"),
    ],
)
def test_errors_name_the_file(trident_folder, case, message):
    folder, _ = trident_folder
    write_bad(folder / "zz-broken.h5", case)
    with pytest.raises(ValueError, match=message) as error:
        import_h5_folder(folder)
    assert "zz-broken.h5" in str(error.value)


def test_empty_folder(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path.name}.*no .h5 files"):
        import_h5_folder(tmp_path)


def test_failed_import_leaves_no_output(trident_folder, tmp_path):
    folder, _ = trident_folder
    write_bad(folder / "zz-broken.h5", "nan")
    with pytest.raises(ValueError):
        import_h5_folder(folder, output=tmp_path / "out" / "bags")
    assert os.listdir(tmp_path / "out") == []


def test_empty_bags_are_skipped(trident_folder, caplog):
    folder, _ = trident_folder
    write_trident(folder / "no-tissue.h5", np.zeros((0, DIM), np.float32), np.zeros((0, 2), np.int64))
    assert import_h5_folder(folder)["slide_id"][:] == ["slide-a", "slide-b", "slide-c"]
    assert "no-tissue.h5" in caplog.text


@pytest.mark.parametrize(
    "coords, patch_size, message",
    [
        (np.stack([np.arange(40) % 8, np.arange(40) // 8], 1) * 1024, 512, r"lie 1024 level-0 px apart but "
         r"patch_size_level0 is 512; it is probably 1024"),
        (np.array([[0, 0], [512, 0], [-512, 0]]), 512, r"negative coords \(first \[-512, 0\]\)"),
        (np.array([[0, 0], [512, 0], [0, 0]]), 512, r"duplicate coords"),
        (np.array([[0, 0], [2**33, 0], [512, 0]]), 512, r"coords beyond 2147483647 level-0 pixels"),
    ],
)  # fmt: skip
def test_coordinates_that_cannot_be_patch_positions_are_refused(tmp_path, coords, patch_size, message):
    features = np.zeros((len(coords), DIM), np.float32)
    write_trident(tmp_path / "bad.h5", features, coords, patch_size_level0=patch_size)
    with pytest.raises(ValueError, match=message):
        import_h5_folder(tmp_path)


def test_trident_pt_features_saved_as_numpy_import_and_objects_are_refused(tmp_path):
    import torch

    features, coords = make_arrays(6, seed=7)
    (tmp_path / "pt").mkdir()
    (tmp_path / "patches").mkdir()
    torch.save(features, tmp_path / "pt" / "slide-n.pt")  # TRIDENT keeps numpy arrays
    write_trident(tmp_path / "patches" / "slide-n.h5", features, coords, patch_size_level0=512)
    dataset = import_pt_folder(tmp_path / "pt", coords_dir=tmp_path / "patches")
    assert np.allclose(np.asarray(dataset.with_format("numpy")[0]["features"]), features)
    from fractions import Fraction

    torch.save({"features": Fraction(1, 3)}, tmp_path / "pt" / "slide-n.pt")
    with pytest.raises(ValueError, match=r"cannot be read safely .*fractions.Fraction.*import the .h5 feature files"):
        import_pt_folder(tmp_path / "pt", coords_dir=tmp_path / "patches")


@pytest.mark.parametrize(
    "attrs, message",
    [
        ({"mpp": "unknown"}, r"odd.h5: mpp 'unknown' is not a number of µm per level-0 pixel; give it with --mpp"),
        ({"patch_size_level0": float("nan")}, r"odd.h5: coords.attrs hold a patch size that is not a number .*"
                                              r"--patch-size-level0"),
    ],
)  # fmt: skip
def test_attributes_that_are_not_numbers_name_the_file(tmp_path, attrs, message):
    write_trident(tmp_path / "odd.h5", *make_arrays(5, seed=0), **attrs)
    with pytest.raises(ValueError, match=message):
        import_h5_folder(tmp_path)

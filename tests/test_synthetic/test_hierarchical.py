"""The "hierarchical" cohort family: rows and files, the diagnosis rule recomputed from the masks, balance, rare
findings, lesion sizes around a region window, graded background, the od detector keeping every tissue, and
refusing a folder of the other family."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from pathflip.demo.options import DEMO_TILING
from pathflip.processing.extract import ExtractionOptions, tile_file
from pathflip.synthetic import hierarchical
from pathflip.synthetic.cohort import (
    FAMILIES,
    check_generator,
    generate_cohort,
    load_cohort,
    load_mask,
    patch_targets,
    row_tissue_types,
)
from pathflip.synthetic.hierarchical import (
    DIAGNOSES,
    SHEET_AREA_MM2,
    TISSUE_TYPES,
    diagnosis_of,
    plan_slide,
    tissue_areas,
)

NUM_SLIDES = 8  # two runs of the 4 labels, one run of the rare findings
WINDOW_UM = 256  # a region window of the demo: 2 x 2 patches of 128 um
PATCH_LEVEL0 = 256  # a demo patch (128 px at 1 um/px) in level-0 px


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hierarchical")
    rows = generate_cohort(folder, num_slides=NUM_SLIDES, seed=0, progress=False, family="hierarchical")
    return folder, rows


def _grid_coords(row: dict) -> np.ndarray:
    """Every patch of the demo's grid on the slide, as level-0 (x, y)."""
    last_y, last_x = row["height"] - PATCH_LEVEL0, row["width"] - PATCH_LEVEL0
    ys, xs = np.mgrid[0 : last_y + 1 : PATCH_LEVEL0, 0 : last_x + 1 : PATCH_LEVEL0]
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def test_rows_files_and_generator_record(cohort):
    folder, rows = cohort
    assert load_cohort(folder) == rows
    assert json.loads((folder / "generator.json").read_text())["family"] == "hierarchical"
    for row in rows:
        assert row["family"] == "hierarchical" and row_tissue_types(row) == TISSUE_TYPES
        assert row["diagnosis"] == DIAGNOSES[row["label"]] and row["split"] in ("train", "test")
        assert 2560 <= row["width"] <= 3584 and 2560 <= row["height"] <= 3584
        mask = load_mask(folder, row)
        assert mask.shape == (row["height"] // 16, row["width"] // 16) and mask.max() < len(TISSUE_TYPES)
        assert (folder / row["slide"]).is_file()
        assert all(set(finding) == {"sentence", "tissue", "graded"} for finding in row["findings"])
        assert all(set(lesion) == {"tissue", "x", "y", "diameter_um"} for lesion in row["lesions"])
    labels = [row["label"] for row in rows]
    for start in range(0, NUM_SLIDES, 4):  # every run of 4 slides holds each label once
        assert sorted(labels[start : start + 4]) == [0, 1, 2, 3]


def test_every_label_follows_from_its_mask(cohort):
    folder, rows = cohort
    for row in rows:
        areas = tissue_areas(load_mask(folder, row), mask_downsample=row["mask_downsample"], mpp=row["mpp"])
        assert diagnosis_of(areas) == row["label"], (row["slide_id"], areas)
        assert "stroma" in areas
        if row["label"] == 0:  # benign: lymphoid aggregates at most, below the sheet threshold
            assert areas.get("lymphocytes", 0) < SHEET_AREA_MM2 and not {"tumour", "mucin"} & set(areas)
    # Each rule is reached, and the order decides: a higher rule wins over what a lower one looks for.
    assert diagnosis_of({"mucin": 0.1, "tumour": 2.0, "lymphocytes": 3.0}) == 3
    assert diagnosis_of({"tumour": 0.01, "lymphocytes": 3.0}) == 2
    assert diagnosis_of({"lymphocytes": SHEET_AREA_MM2, "necrosis": 1.0}) == 1
    assert diagnosis_of({"lymphocytes": 0.59, "fat": 2.0, "haemorrhage": 0.3, "stroma": 5.0}) == 0


def test_rare_findings_once_in_every_run_of_eight(cohort):
    folder, rows = cohort
    present = [set(tissue_areas(load_mask(folder, row))) for row in rows]
    assert sum("necrosis" in kinds for kinds in present) == 1
    assert sum("haemorrhage" in kinds for kinds in present) == 1


def test_lesions_smaller_and_larger_than_a_region_window(cohort):
    folder, rows = cohort
    diameters = [lesion["diameter_um"] for row in rows for lesion in row["lesions"]]
    assert min(diameters) < WINDOW_UM < 2 * WINDOW_UM < max(diameters), diameters
    extents = []  # the masks agree: pieces of lesion tissue smaller than a window, and several windows across
    for row in rows:
        mask = load_mask(folder, row)
        for kind in ("tumour", "lymphocytes", "mucin", "necrosis", "haemorrhage"):
            pieces = ndimage.find_objects(ndimage.label(mask == TISSUE_TYPES.index(kind))[0])
            extents += [max(p[0].stop - p[0].start, p[1].stop - p[1].start) * 16 * row["mpp"] for p in pieces]
    assert min(extents) < WINDOW_UM and max(extents) > 3 * WINDOW_UM
    for row in rows:  # a lesion below a window is centred on a patch of the demo's grid, which it mostly fills
        mask = load_mask(folder, row)
        for lesion in (lesion for lesion in row["lesions"] if lesion["diameter_um"] < WINDOW_UM):
            corner = np.array([[lesion["x"] // PATCH_LEVEL0, lesion["y"] // PATCH_LEVEL0]]) * PATCH_LEVEL0
            assert patch_targets(mask, corner, PATCH_LEVEL0, lesion["tissue"], tissue_types=TISSUE_TYPES)[0], lesion


def test_background_findings_are_graded_and_have_targets(cohort):
    folder, rows = cohort
    fat_rows = 0
    for row in rows:
        mask, tissues = load_mask(folder, row), [finding["tissue"] for finding in row["findings"]]
        assert tissues.count("stroma") == 1 and all(finding["graded"] for finding in row["findings"])
        assert sorted(tissues) == sorted(set(tissue_areas(mask))), "one finding per tissue present"
        fat_rows += "fat" in tissues
        for finding in row["findings"]:
            assert finding["sentence"] in row["caption"]
            targets = patch_targets(mask, _grid_coords(row), PATCH_LEVEL0, finding["tissue"], tissue_types=TISSUE_TYPES)
            assert targets.any(), (row["slide_id"], finding)
    assert fat_rows >= 2
    with pytest.raises(ValueError, match="mucin"):
        patch_targets(load_mask(folder, rows[0]), _grid_coords(rows[0]), PATCH_LEVEL0, "mucin")  # the lesions types


def test_the_od_detector_keeps_every_tissue(cohort):
    """>= 90 % of each tissue's mask area lies in patches the demo's tiling keeps: glass is brighter than fat."""
    folder, rows = cohort
    chosen, seen = [], set()
    for row in rows:  # few slides that hold every tissue between them
        kinds = set(tissue_areas(load_mask(folder, row)))
        if kinds - seen:
            chosen.append(row)
            seen |= kinds
    assert seen == set(TISSUE_TYPES) - {"background"} and len(chosen) <= 4
    for row in chosen:
        tiling = tile_file(folder / row["slide"], ExtractionOptions(tiling=DEMO_TILING))
        mask, step = load_mask(folder, row), tiling.patch_size_level0 // row["mask_downsample"]
        kept = np.zeros(mask.shape, bool)
        for x, y in tiling.coords // row["mask_downsample"]:
            kept[y : y + step, x : x + step] = True
        for value in set(np.unique(mask).tolist()) - {TISSUE_TYPES.index("background")}:
            assert kept[mask == value].mean() >= 0.9, (row["slide_id"], TISSUE_TYPES[value], kept[mask == value].mean())


def test_same_seed_same_slides_and_other_seed_other_cohort(cohort, tmp_path):
    folder, rows = cohort
    again = generate_cohort(tmp_path, num_slides=4, seed=0, progress=False, num_workers=1, family="hierarchical")
    assert [{**row, "split": ""} for row in again] == [{**row, "split": ""} for row in rows[:4]]
    for row in again:
        for key in ("slide", "mask"):
            assert (tmp_path / row[key]).read_bytes() == (folder / row[key]).read_bytes()
    assert [plan_slide(1, index).caption for index in range(4)] != [row["caption"] for row in rows[:4]]


def test_a_folder_of_the_other_family_is_refused(cohort, tmp_path):
    folder, _ = cohort
    with pytest.raises(ValueError, match="family"):
        generate_cohort(folder, num_slides=NUM_SLIDES, seed=0, progress=False)  # lesions into a hierarchical folder
    old = tmp_path / "lesions-before-families"  # a lesions folder as written before families: no family key
    old.mkdir()
    (old / "generator.json").write_text(json.dumps({"generator": "pathflip.synthetic.cohort", "version": 1,
                                                    "seed": 0}) + "\n")  # fmt: skip
    assert "family" not in check_generator(old, seed=0)
    with pytest.raises(ValueError, match="hierarchical"):
        generate_cohort(old, num_slides=4, seed=0, progress=False, family="hierarchical")
    with pytest.raises(ValueError, match=r"unknown cohort family 'bone'; choose one of lesions, hierarchical"):
        generate_cohort(tmp_path / "new", num_slides=4, family="bone")
    assert list(FAMILIES) == ["lesions", "hierarchical"] and FAMILIES["hierarchical"] is hierarchical.FAMILY

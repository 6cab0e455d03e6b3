"""The synthetic ground-truth cohort: files, determinism, resume, labels/captions/masks vs pixels, patch targets."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import pathflip.synthetic.cohort as cohort_module
from pathflip.processing.encoders import StainTextureEncoder
from pathflip.processing.reader import SlideReader
from pathflip.synthetic.cohort import (
    DIAGNOSES,
    MASK_DOWNSAMPLE,
    generate_cohort,
    load_cohort,
    load_mask,
    patch_targets,
)
from pathflip.synthetic.textures import TISSUE_TYPES, render_texture

NUM_SLIDES = 9
LESIONS = ("tumour", "necrosis", "lymphocytes", "fat")
KEYS = {
    "slide_id",
    "split",
    "label",
    "diagnosis",
    "caption",
    "findings",
    "slide",
    "mask",
    "mask_downsample",
    "mpp",
    "width",
    "height",
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    rows = generate_cohort(folder, num_slides=NUM_SLIDES, seed=0, progress=False, num_workers=1)
    return folder, rows


def _files(folder) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
    }


def _present(mask: np.ndarray) -> set[str]:
    return {TISSUE_TYPES[value] for value in np.unique(mask)} - {"background"}


def test_rows_files_and_split(cohort):
    folder, rows = cohort
    assert load_cohort(folder) == rows
    assert [row["slide_id"] for row in rows] == [f"slide-{index:04d}" for index in range(NUM_SLIDES)]
    for row in rows:
        assert set(row) == KEYS
        assert (folder / row["slide"]).is_file() and (folder / row["mask"]).is_file()
        assert row["mpp"] == 0.5 and row["mask_downsample"] == MASK_DOWNSAMPLE
        assert 2048 <= row["width"] <= 3072 and 2048 <= row["height"] <= 3072
        mask = load_mask(folder, row)
        assert mask.dtype == np.uint8 and mask.shape == (row["height"] // 16, row["width"] // 16)
        assert mask.max() < len(TISSUE_TYPES)
    assert len({(row["width"], row["height"]) for row in rows}) > NUM_SLIDES // 2  # sizes vary
    labels = np.array([row["label"] for row in rows])
    assert np.bincount(labels).tolist() == [NUM_SLIDES // 3] * 3  # balanced
    for label in range(3):  # stratified: round(0.3 * 3) = 1 test slide per class
        splits = [row["split"] for row in rows if row["label"] == label]
        assert sorted(splits) == ["test", "train", "train"]
    assert not list(folder.rglob("*.tmp"))


def test_labels_findings_and_captions_follow_the_masks(cohort):
    folder, rows = cohort
    phrasings = set()
    for row in rows:
        present = _present(load_mask(folder, row))
        expected = (1 if "necrosis" in present else 0) if "tumour" in present else 2
        assert "stroma" in present and expected == row["label"], (row["slide_id"], present)
        if row["label"] == 2:
            assert "lymphocytes" in present and not present & {"tumour", "necrosis"}
        assert row["diagnosis"] == DIAGNOSES[row["label"]]
        caption = row["caption"]
        assert row["diagnosis"] in caption and caption.rstrip(".").endswith(row["diagnosis"])
        assert all(name not in caption for name in DIAGNOSES if name != row["diagnosis"])
        tissues = [finding["tissue"] for finding in row["findings"]]
        # One sentence per tissue kind present (stroma included), each in the caption, in order.
        assert sorted(tissues) == sorted(present)
        sentences = [finding["sentence"] for finding in row["findings"]]
        assert caption.startswith(" ".join(sentences))
        phrasings.update(sentence.split(" in the ")[0] for sentence in sentences)
    assert len(phrasings) >= 7  # not one fixed template
    assert any(" in the " in row["caption"] for row in rows)


def test_openslide_reads_the_slides(cohort):
    folder, rows = cohort
    for row in rows[:4]:
        with SlideReader(folder / row["slide"]) as reader:
            assert reader.dimensions == (row["width"], row["height"])
            assert reader.mpp == pytest.approx(0.5)
            assert reader.level_count == 3 and reader.vendor == "generic-tiff"


def _encode(encoder: StainTextureEncoder, patches: list[np.ndarray]) -> np.ndarray:
    batch = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        return encoder(encoder.preprocess(batch)).numpy()


def test_masks_match_the_pixels(cohort):
    """Patches lying wholly in one tissue of the mask look like that tissue to the stain-texture encoder."""
    folder, rows = cohort
    kinds = ("stroma", *LESIONS)
    encoder = StainTextureEncoder()
    references = [
        render_texture(kind, 256, 256, np.random.default_rng([99, k, i]), stain_scale=float(scale))
        for k, kind in enumerate(kinds)
        for i, scale in enumerate(np.linspace(0.75, 1.25, 5))
    ]
    centroids = _encode(encoder, references).reshape(len(kinds), 5, -1).mean(1)
    patches, truth, glass = [], [], []
    for row in rows:
        mask = load_mask(folder, row)
        rows_, cols = np.mgrid[0 : row["height"] - 255 : 256, 0 : row["width"] - 255 : 256]
        coords = np.stack([cols.ravel(), rows_.ravel()], axis=1)
        with SlideReader(folder / row["slide"]) as reader:
            for k, kind in enumerate((*kinds, "background")):
                for x, y in coords[patch_targets(mask, coords, 256, kind, min_fraction=1.0)][:2]:
                    patch = reader.read_patch(int(x), int(y), 256, 256)
                    if kind == "background":
                        glass.append(patch.mean())
                    else:
                        patches.append(patch)
                        truth.append(k)
    features = _encode(encoder, patches)
    predicted = ((features[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    truth = np.array(truth)
    # Small lesions (fat and necrosis ones often are) may fill no grid patch in this few slides.
    assert {0, 1, 3} <= set(truth), "stroma, tumour and lymphocytes should each fill whole patches"
    for k in set(truth):
        assert (predicted[truth == k] == k).mean() >= 0.8, (kinds[k], predicted[truth == k])
    assert min(glass) > 200  # glass is bright


def test_same_seed_same_cohort_other_seed_other_cohort(cohort, tmp_path):
    folder, rows = cohort
    first = generate_cohort(tmp_path / "first", num_slides=3, seed=0, progress=False, num_workers=1)
    second = generate_cohort(tmp_path / "second", num_slides=3, seed=0, progress=False, num_workers=2)
    assert first == second
    assert _files(tmp_path / "first") == _files(tmp_path / "second")  # jsonl, masks and slide bytes
    # Slide files depend on (seed, index) only: the larger cohort holds the very same first slides.
    assert [{**row, "split": ""} for row in first] == [{**row, "split": ""} for row in rows[:3]]
    for row in first:
        for key in ("slide", "mask"):
            assert (tmp_path / "first" / row[key]).read_bytes() == (folder / row[key]).read_bytes()
    other = generate_cohort(tmp_path / "other", num_slides=3, seed=1, progress=False)
    assert [row["caption"] for row in other] != [row["caption"] for row in rows[:3]]
    with SlideReader(tmp_path / "other" / other[0]["slide"]) as one, SlideReader(folder / rows[0]["slide"]) as two:
        size = (min(one.dimensions[0], two.dimensions[0]), min(one.dimensions[1], two.dimensions[1]))
        assert not np.array_equal(one.read_region((0, 0), 0, size), two.read_region((0, 0), 0, size))


def test_resume_restores_only_what_is_missing(cohort, tmp_path):
    folder, rows = cohort
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)  # copy2 keeps modification times
    before = {path: path.stat().st_mtime_ns for path in copy.rglob("*") if path.is_file()}
    (copy / "slides/slide-0004.tif").unlink()
    (copy / "cohort.jsonl").unlink()
    assert generate_cohort(copy, num_slides=NUM_SLIDES, seed=0, progress=False) == rows
    assert _files(copy) == _files(folder)
    for path, mtime in before.items():
        if path.name not in ("slide-0004.tif", "cohort.jsonl"):
            assert path.stat().st_mtime_ns == mtime, path
    with pytest.raises(ValueError, match="seed"):
        generate_cohort(copy, num_slides=NUM_SLIDES, seed=5, progress=False)


def test_patch_targets_on_a_hand_made_mask():
    stroma, tumour = TISSUE_TYPES.index("stroma"), TISSUE_TYPES.index("tumour")
    mask = np.full((8, 12), stroma, np.uint8)  # 16 level-0 px per mask pixel: 192 x 128 level-0 px
    mask[0:4, 0:4] = tumour  # the top-left 64 x 64 level-0 px
    mask[4:6, 4:8] = tumour  # half of the 64 x 64 patch at (64, 64)
    coords = np.array([[0, 0], [64, 64], [64, 0], [128, 64], [32, 0], [160, 96], [500, 500]])
    assert patch_targets(mask, coords, 64, "tumour").tolist() == [True, True, False, False, True, False, False]
    assert patch_targets(mask, coords, 64, "tumour", min_fraction=0.75).tolist() == [
        True,
        False,
        False,
        False,
        False,
        False,
        False,
    ]
    # A patch past the mask's edge counts only the mask pixels it covers.
    assert patch_targets(mask, coords, 64, "stroma").tolist() == [False, True, True, True, True, True, False]
    assert patch_targets(mask, np.zeros((0, 2), int), 64, "tumour").shape == (0,)
    with pytest.raises(ValueError, match="tissue"):
        patch_targets(mask, coords, 64, "bone")
    with pytest.raises(ValueError, match="coords"):
        patch_targets(mask, coords[:, 0], 64, "tumour")


def test_arguments_are_checked(tmp_path):
    for bad in ({"num_slides": 2}, {"test_fraction": 1.0}, {"test_fraction": -0.1}, {"seed": -1}, {"num_workers": 0}):
        with pytest.raises(ValueError):
            generate_cohort(tmp_path, **{"num_slides": 3, **bad}, progress=False)
    with pytest.raises(FileNotFoundError, match="generate_cohort"):
        load_cohort(tmp_path / "nothing-here")


def test_mean_colour_does_not_give_the_diagnosis_away(cohort, record_property):
    """A classifier of mean tissue RGB stays near chance (1/3 balanced accuracy) over 30 slides.

    Slides are rendered in memory (as generate_cohort renders them, minus the ~0.4 s JPEG pyramid each) to keep
    the test fast; the first ones are checked against the written files.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folder, rows = cohort
    colours, labels = [], []
    for index in range(30):
        plan = cohort_module._plan_slide(0, index)
        image = cohort_module._slide_image(plan, 0, index)
        if index < 2:  # the same slide as written, up to JPEG: PSNR ~35 dB (a 1-px shift gives ~22 dB)
            top, left = plan.height // 2 - 512, plan.width // 2 - 512
            with SlideReader(folder / rows[index]["slide"]) as reader:
                written = reader.read_region((left, top), 0, (1024, 1024)).astype(float)
            error = ((written - image[top : top + 1024, left : left + 1024]) ** 2).mean()
            assert 10 * np.log10(255**2 / error) > 30
        tissue = np.repeat(np.repeat(plan.mask != TISSUE_TYPES.index("background"), 4, 0), 4, 1)
        colours.append(image[2::4, 2::4][tissue].mean(0))
        labels.append(plan.label)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    folds = StratifiedKFold(4, shuffle=True, random_state=0)
    accuracy = cross_val_score(classifier, np.array(colours), labels, cv=folds, scoring="balanced_accuracy").mean()
    record_property("mean_colour_balanced_accuracy", float(accuracy))
    assert accuracy < 0.6, accuracy

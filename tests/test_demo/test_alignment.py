"""The demo's ground truth for either cohort family (hand-made masks, no slides) and the --family option."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pathflip.cli import build_parser
from pathflip.cli.jobs import COHORT_FAMILIES
from pathflip.demo import DemoOptions, run_demo
from pathflip.demo.alignment import _attach_ground_truth, build_dataset
from pathflip.synthetic import hierarchical
from pathflip.synthetic.cohort import DIAGNOSES, FAMILIES
from pathflip.synthetic.textures import TISSUE_TYPES

PATCH = 64  # level-0 px; the 8 x 8 masks below are 128 x 128 level-0 px (16 per mask pixel): 2 x 2 patches
COORDS = [[0, 0], [64, 0], [0, 64], [64, 64]]


def _row(cohort, slide_id: str, mask: np.ndarray, findings: list[dict], **extra) -> dict:
    Image.fromarray(mask).save(cohort / f"{slide_id}.png")
    return {"slide_id": slide_id, "split": "train", "label": 0, "caption": " ".join(f["sentence"] for f in findings),
            "findings": findings, "slide": f"{slide_id}.tif", "mask": f"{slide_id}.png", "mask_downsample": 16,
            **extra}  # fmt: skip


def test_graded_findings_and_the_rows_tissue_types(tmp_path):
    import datasets

    lesions_mask = np.full((8, 8), TISSUE_TYPES.index("stroma"), np.uint8)
    lesions_mask[:4, :4] = TISSUE_TYPES.index("tumour")
    lesions = _row(tmp_path, "lesions", lesions_mask, [{"sentence": "Stroma.", "tissue": "stroma"},
                                                       {"sentence": "Tumour.", "tissue": "tumour"}])  # fmt: skip
    kinds = hierarchical.TISSUE_TYPES
    mask = np.full((8, 8), kinds.index("stroma"), np.uint8)
    mask[:4, 4:], mask[4:, :] = kinds.index("mucin"), kinds.index("fat")  # mucin: "background" in TISSUE_TYPES
    findings = [{"sentence": "Stroma.", "tissue": "stroma", "graded": True},
                {"sentence": "Fat below.", "tissue": "fat", "graded": True},
                {"sentence": "Mucin.", "tissue": "mucin", "graded": True},
                {"sentence": "Not graded.", "tissue": "stroma", "graded": False}]  # fmt: skip
    other = _row(tmp_path, "hierarchical", mask, findings, tissue_types=list(kinds))
    bags = datasets.Dataset.from_dict({"slide_id": ["lesions", "hierarchical"], "coords": [COORDS, COORDS],
                                       "patch_size_level0": [PATCH, PATCH]})  # fmt: skip
    dataset = _attach_ground_truth(bags, [lesions, other], tmp_path, hierarchical.DIAGNOSES)["train"]
    assert dataset.features["label"].names == list(hierarchical.DIAGNOSES)
    first, second = dataset[0], dataset[1]
    assert first["grounding_types"] == ["tumour"], "family lesions: the stroma background is not graded, as before"
    assert first["grounding_targets"] == [[True, False, False, False]]
    assert second["grounding_types"] == ["stroma", "fat", "mucin"]
    assert second["grounding_targets"] == [[True, False, False, False], [False, False, True, True],
                                           [False, True, False, False]]  # fmt: skip


def test_the_family_option(tmp_path):
    assert COHORT_FAMILIES == list(FAMILIES)
    assert build_parser().parse_args(["demo"]).family == "lesions"
    assert build_parser().parse_args(["demo", "--family", "hierarchical"]).family == "hierarchical"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--family", "bone"])
    with pytest.raises(ValueError, match=r"^unknown cohort family 'bone'; choose one of lesions, hierarchical$"):
        run_demo(DemoOptions(output=tmp_path / "out", family="bone"))
    assert not (tmp_path / "out").exists(), "refused before any work"
    assert DemoOptions().family == "lesions" and FAMILIES["lesions"].diagnoses == DIAGNOSES


def test_a_finished_dataset_of_another_family_is_not_reused(tmp_path):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "dataset_dict.json").write_text("{}")
    (tmp_path / "cohort").mkdir()
    (tmp_path / "cohort" / "generator.json").write_text(json.dumps({"generator": "pathflip.synthetic.cohort",
                                                                     "version": 1, "seed": 0}))  # fmt: skip
    with pytest.raises(ValueError, match="hierarchical"):
        build_dataset(DemoOptions(output=tmp_path, family="hierarchical"))

"""The "hierarchical" family's captions: a bank of its own, large enough, with locations and varied order."""

from __future__ import annotations

import numpy as np

import pathflip.synthetic.cohort as lesions_family
from pathflip.synthetic.hierarchical_text import DIAGNOSIS_SENTENCES, PHRASES, describe

LESION_KINDS = ("tumour", "mucin", "necrosis", "haemorrhage", "aggregate", "sheet")


def _core(sentence: str) -> str:
    """A lesion sentence without its location."""
    core = sentence.split(", ", 1)[1] if sentence.startswith("In the ") else sentence.split(" in the ")[0]
    core = core.rstrip(".")
    return core[0].upper() + core[1:]


def test_the_bank_is_large_and_its_own():
    assert set(PHRASES) == {"stroma", "fat", *LESION_KINDS}
    for kind, phrasings in PHRASES.items():
        assert len(phrasings) >= 6, kind
        assert len({tuple(p) for p in phrasings}) == len(phrasings), kind
        if kind in LESION_KINDS:
            assert all(len(p) == 2 and p[0] != p[1] for p in phrasings), kind  # singular | plural
    assert len(DIAGNOSIS_SENTENCES) >= 4
    ours = {text for phrasings in PHRASES.values() for phrasing in phrasings for text in phrasing}
    theirs = {text for phrasings in lesions_family._PHRASES.values() for phrasing in phrasings for text in phrasing}
    assert not ours & theirs and not set(DIAGNOSIS_SENTENCES) & set(lesions_family._DIAGNOSIS_SENTENCES)


def test_captions_say_where_sometimes_and_vary_their_order():
    lesions = {"tumour": ["upper left", "central"], "sheet": ["lower"], "haemorrhage": ["right"]}
    captions = []
    for seed in range(60):
        caption, findings = describe("invasive carcinoma", lesions, "lower half", np.random.default_rng(seed))
        assert [f["tissue"] for f in findings if f["tissue"] in ("stroma", "fat")] == ["stroma", "fat"]
        assert sorted(f["tissue"] for f in findings) == ["fat", "haemorrhage", "lymphocytes", "stroma", "tumour"]
        assert all(f["graded"] and f["sentence"] in caption for f in findings)
        assert "lower half" in next(f["sentence"] for f in findings if f["tissue"] == "fat")
        captions.append((caption, findings))
    sentences = [f["sentence"] for _, findings in captions for f in findings if f["tissue"] == "tumour"]
    assert any("upper left and central" in s for s in sentences) and any(" the " not in s for s in sentences)
    assert any(s.startswith("In the ") for s in sentences), "a location before the finding, too"
    assert all(_core(s) in {plural for _, plural in PHRASES["tumour"]} for s in sentences), "two tumour lesions"
    openings = tuple(sentence.split("{")[0] for sentence in DIAGNOSIS_SENTENCES)
    diagnosis_first = [caption.startswith(openings) for caption, _ in captions]
    assert any(diagnosis_first) and not all(diagnosis_first)
    first_tissue = {findings[0]["tissue"] for _, findings in captions}
    assert "stroma" in first_tissue and first_tissue - {"stroma"}, "background sentences lead or follow"
    sheets = [f["sentence"] for _, findings in captions for f in findings if f["tissue"] == "lymphocytes"]
    assert all(_core(s) in {singular for singular, _ in PHRASES["sheet"]} for s in sheets), "one sheet, described so"

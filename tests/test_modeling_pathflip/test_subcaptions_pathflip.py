import random

import pytest

from modeling_pathflip import sample_subcaptions, split_sentences


def test_splitter_keeps_decimals_abbreviations_and_list_items():
    caption = (
        "Tumour of 1.5 cm in the upper lobe, i.e. a large mass. Margins are clear (approx. 2.0 mm)! "
        "Grade 2?\n- Lymph nodes: 0/12 involved.\n2. Necrosis e.g. in the centre.</s>Fat is seen"
    )
    assert split_sentences(caption) == [
        "Tumour of 1.5 cm in the upper lobe, i.e. a large mass.",
        "Margins are clear (approx. 2.0 mm)!",
        "Grade 2?",
        "Lymph nodes: 0/12 involved.",
        "Necrosis e.g. in the centre.",
        "Fat is seen",
    ]


def test_splitter_drops_empty_pieces():
    assert split_sentences(" .  \n\n ") == []


def test_sampling_joins_one_to_three_sentences_and_is_seeded():
    caption = "A one. B two. C three. D four. E five."
    first = sample_subcaptions(caption, 8, random.Random(3))
    assert first == sample_subcaptions(caption, 8, random.Random(3))
    assert len(first) == 8
    sentences = set(split_sentences(caption))
    for subcaption in first:
        parts = [part + "." for part in subcaption.rstrip(".").split(". ")]
        assert 1 <= len(parts) <= 3 and set(parts) <= sentences
    assert len(set(first)) > 1


def test_precomputed_subcaptions_take_precedence():
    pool = ["tumour in the left region", "fat"]
    drawn = sample_subcaptions("ignored caption.", 4, random.Random(0), precomputed=pool)
    assert drawn[:2] == pool and set(drawn) <= set(pool)
    assert sorted(sample_subcaptions("x.", 2, random.Random(0), precomputed=pool + ["c"])) != []


def test_empty_caption_cannot_be_decomposed():
    with pytest.raises(ValueError, match="empty caption"):
        sample_subcaptions("  ", 2, random.Random(0))

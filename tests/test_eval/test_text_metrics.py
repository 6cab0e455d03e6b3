"""Captioning and VQA metrics (`pathflip.eval.text_metrics`) and their `evaluate` modules, against hand-computed
values."""

import math

import pytest

pytest.importorskip("nltk")
pytest.importorskip("rouge_score")

from modeling_pathflip.options_pathflip import tokenize  # noqa: E402
from pathflip.eval.text_metrics import (  # noqa: E402
    caption_metrics,
    majority_baseline_accuracy,
    meteor_score,
    vqa_accuracy,
)

OPTIONS = ["invasive carcinoma", "carcinoma with necrosis", "reactive lymphoid hyperplasia", "carcinoma"]


def test_caption_metrics_by_hand():
    predictions = ["The tumour is invasive", "necrosis"]
    references = [["the tumour is benign"], ["extensive necrosis"]]
    # Unigrams: item 1 matches the/tumour/is of 4, item 2 necrosis of 1 -> p1 = 4/5. Bigrams: "the tumour",
    # "tumour is" of 3 (the one-word item 2 has no bigram at all) -> p2 = 2/3. Trigrams: "the tumour is" of 2
    # -> p3 = 1/2. 4-grams: 0 of 1 -> the smoothing counts 0.1 -> p4 = 0.1. Lengths: hypotheses 4 + 1 = 5,
    # references 4 + 2 = 6 -> brevity penalty exp(1 - 6/5) = exp(-0.2).
    bp = math.exp(-0.2)
    # ROUGE-L: LCS "the tumour is" = 3 -> P = R = 3/4, F = 3/4; "necrosis": LCS 1, P = 1, R = 1/2 -> F = 2/3.
    # METEOR item 1: 3 matches in 1 chunk, P = R = 3/4 -> Fmean 3/4, penalty 0.5 * (1/3)^3 = 1/54.
    # Item 2: 1 match, 1 chunk, P = 1, R = 1/2 -> Fmean = 0.5 / (0.9 + 0.05), penalty 0.5 * 1^3 = 0.5.
    meteor_1 = 0.75 * (1 - 1 / 54)
    meteor_2 = 0.5 / 0.95 * 0.5
    assert caption_metrics(predictions, references) == {
        "bleu_1": pytest.approx(bp * 0.8),
        "bleu_2": pytest.approx(bp * (0.8 * 2 / 3) ** (1 / 2)),
        "bleu_3": pytest.approx(bp * (0.8 * 2 / 3 * 0.5) ** (1 / 3)),
        "bleu_4": pytest.approx(bp * (0.8 * 2 / 3 * 0.5 * 0.1) ** (1 / 4)),
        "rouge_l": pytest.approx((0.75 + 2 / 3) / 2),
        "meteor": pytest.approx((meteor_1 + meteor_2) / 2),
    }
    # A bare string is one reference.
    assert caption_metrics(predictions, ["the tumour is benign", "extensive necrosis"]) == caption_metrics(
        predictions, references
    )


def test_identical_captions():
    # 6 tokens (the comma is one), one chunk: BLEU and ROUGE-L 1, METEOR 1 - 0.5 * (1/6)^3.
    metrics = caption_metrics(["Invasive ductal carcinoma, grade 2"], [["invasive ductal carcinoma , grade 2"]])
    assert metrics == {
        "bleu_1": pytest.approx(1.0),
        "bleu_2": pytest.approx(1.0),
        "bleu_3": pytest.approx(1.0),
        "bleu_4": pytest.approx(1.0),
        "rouge_l": pytest.approx(1.0),
        "meteor": pytest.approx(1 - 0.5 / 6**3),
    }


def test_bleu_agrees_with_nltk_corpus_bleu_when_every_caption_has_four_words():
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    from pathflip.eval.text_metrics import corpus_bleu_scores

    hypotheses = [tokenize(text) for text in ("the tumour is invasive here", "extensive necrosis of the tumour bed")]
    references = [
        [tokenize("the tumour is benign"), tokenize("an invasive tumour is seen here")],
        [tokenize("necrosis of the tumour bed is extensive")],
    ]
    weights = [(1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25)]
    expected = corpus_bleu(references, hypotheses, weights=weights, smoothing_function=SmoothingFunction().method1)
    assert corpus_bleu_scores(references, hypotheses) == pytest.approx(expected)
    # nltk differs on shorter captions: its modified precision counts at least one n-gram per hypothesis, so the
    # one-word "necrosis" of test_caption_metrics_by_hand would add an unmatched bigram, trigram and 4-gram there.


def test_meteor_stems_and_reordering():
    # hyp [tumours, invading, the, stroma], ref [the, stroma, is, invaded, by, tumour]. Exact: the->0, stroma->1.
    # Porter stems: tumours/tumour -> "tumour", invading/invaded -> "invad": h0->5, h1->3. In hyp order the ref
    # indices are 5, 3, 0, 1 -> chunks {5}, {3}, {0, 1} = 3 of 4 matches. P = 4/4, R = 4/6.
    precision, recall = 1.0, 4 / 6
    fmean = precision * recall / (0.9 * precision + 0.1 * recall)
    expected = fmean * (1 - 0.5 * (3 / 4) ** 3)
    assert meteor_score("tumours invading the stroma", ["the stroma is invaded by tumour"]) == pytest.approx(expected)
    assert expected == pytest.approx(0.5442, abs=1e-4)


def test_meteor_alignment_prefers_fewest_chunks():
    # "the cells the nuclei" vs "the nuclei the cells": aligning each run ("the cells", "the nuclei") as a block
    # gives 4 matches in 2 chunks -> 1 - 0.5 * (2/4)^3 = 0.9375; pairing the first "the" with the first "the"
    # instead would give 4 chunks (0.5).
    assert meteor_score("the cells the nuclei", ["the nuclei the cells"]) == pytest.approx(0.9375)


def test_meteor_matches_nltk_without_synonyms():
    from nltk.stem import PorterStemmer
    from nltk.translate.meteor_score import single_meteor_score

    class NoSynonyms:
        """Stands in for the WordNet corpus (not downloadable here): no synonyms at all."""

        def synsets(self, word):
            return []

    pairs = [
        ("tumours invading the stroma", "the stroma is invaded by tumour"),
        ("the tumour is invasive", "the tumour is benign"),
        ("benign breast tissue with fibrosis", "fibrosis in benign breast tissue"),
        ("necrosis", "extensive necrosis"),
    ]
    for hypothesis, reference in pairs:
        nltk_value = single_meteor_score(
            tokenize(reference), tokenize(hypothesis), stemmer=PorterStemmer(), wordnet=NoSynonyms()
        )
        assert meteor_score(hypothesis, [reference]) == pytest.approx(nltk_value), hypothesis


def test_multiple_references_take_the_best_and_empty_prediction_scores_zero():
    # Best reference "benign tissue": ROUGE-L 1, METEOR 1 - 0.5 * (1/2)^3 = 0.9375.
    metrics = caption_metrics(["benign tissue"], [["normal tissue", "benign tissue"]])
    assert metrics["rouge_l"] == pytest.approx(1.0)
    assert metrics["meteor"] == pytest.approx(0.9375)
    assert metrics["bleu_1"] == pytest.approx(1.0)
    # Empty first prediction: ROUGE-L and METEOR 0 for it. BLEU: p1 = 2/2, p2 = 1/1; hypothesis length 0 + 2 against
    # reference length 1 + 2 (closest to 0 is "normal" of length 1) -> BLEU-1 = exp(1 - 3/2).
    metrics = caption_metrics(["", "the tumour"], [["normal"], ["the tumour"]])
    assert metrics["rouge_l"] == pytest.approx(0.5)
    assert metrics["meteor"] == pytest.approx((1 - 0.5 / 8) / 2)
    assert metrics["bleu_1"] == pytest.approx(math.exp(-0.5))
    assert set(caption_metrics(["", " "], ["normal", "tumour"]).values()) == {0.0}


def test_caption_metrics_errors():
    with pytest.raises(ValueError, match="predictions is empty"):
        caption_metrics([], [])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        caption_metrics(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="item 1 has no reference caption"):
        caption_metrics(["a", "b"], [["a"], []])


def test_vqa_accuracy_and_majority_baseline():
    predictions = ["B", "The answer is a tumour", "carcinoma with necrosis", "(A)"]
    answers = ["B", "A", "b", "C"]
    # Parsed B, None, B, A -> right, wrong (unparsed), right, wrong: accuracy 2/4, parsed 3/4.
    assert vqa_accuracy(predictions, answers, [OPTIONS] * 4) == {"vqa_accuracy": 0.5, "vqa_parsed_rate": 0.75}
    # B occurs twice of 4 ("b" counts as B).
    assert majority_baseline_accuracy(answers) == 0.5
    assert majority_baseline_accuracy(["C", "C", "A"]) == pytest.approx(2 / 3)


def test_vqa_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 answers"):
        vqa_accuracy(["A", "B"], ["A"], [OPTIONS, OPTIONS])
    with pytest.raises(ValueError, match="2 predictions but 1 option lists"):
        vqa_accuracy(["A", "B"], ["A", "B"], [OPTIONS])
    with pytest.raises(ValueError, match="predictions is empty"):
        vqa_accuracy([], [], [])
    with pytest.raises(ValueError, match="answers is empty"):
        majority_baseline_accuracy([])


def test_captioning_module_agrees_with_function(offline_evaluate):
    import evaluate

    from pathflip.eval.modules import metric_path

    metric = evaluate.load(str(metric_path("captioning")))
    predictions = ["The tumour is invasive", "necrosis", ""]
    references = [["the tumour is benign", "an invasive tumour"], ["extensive necrosis"], ["normal tissue"]]
    metric.add_batch(predictions=predictions[:2], references=references[:2])
    metric.add(prediction=predictions[2], reference=references[2])
    assert metric.compute() == pytest.approx(caption_metrics(predictions, references))
    # Single reference strings are accepted too.
    single = metric.compute(predictions=["benign tissue"], references=["benign tissue"])
    assert single == pytest.approx(caption_metrics(["benign tissue"], ["benign tissue"]))


def test_vqa_module_agrees_with_function(offline_evaluate):
    import evaluate

    from pathflip.eval.modules import metric_path

    metric = evaluate.load(str(metric_path("vqa")))
    predictions = ["B", "The answer is a tumour", "carcinoma with necrosis", "(A)"]
    answers = ["B", "A", "B", "C"]
    options = [OPTIONS, OPTIONS, OPTIONS, ["normal", "benign", "tumour"]]
    result = metric.compute(predictions=predictions, references=answers, options=options)
    assert result == {**vqa_accuracy(predictions, answers, options), "majority_baseline_accuracy": 0.5}
    assert result["vqa_accuracy"] == 0.5

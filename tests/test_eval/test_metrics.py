import numpy as np
import pytest

from pathflip.eval.metrics import (
    classification_metrics,
    grounding_auroc,
    grounding_metrics,
    pointing_game,
    recall_at_k,
    retrieval_metrics,
    zero_shot_probabilities,
)


def test_recall_at_k_counts_the_rank_of_the_true_pair():
    similarity = np.array([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.3, 0.2, 0.1]])
    # true pair ranks: row 0 -> 0, row 1 -> 1 (0.8 beats 0.5), row 2 -> 2
    assert recall_at_k(similarity, (1, 2, 3)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}


def test_retrieval_metrics_are_perfect_for_identical_embeddings_and_directional():
    embeds = np.eye(4) + 0.01
    metrics = retrieval_metrics(embeds, embeds, ks=(1,))
    assert metrics == {"retrieval_slide_to_text_r1": 1.0, "retrieval_text_to_slide_r1": 1.0}
    texts = np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    asymmetric = retrieval_metrics(np.eye(4), texts, ks=(1,))
    assert asymmetric["retrieval_text_to_slide_r1"] == 0.75


def test_zero_shot_and_classification_metrics():
    slides = np.array([[1.0, 0.1], [0.9, 0.2], [0.1, 1.0], [0.2, 0.8]])
    classes = np.array([[1.0, 0.0], [0.0, 1.0]])
    probabilities = zero_shot_probabilities(slides, classes)
    assert probabilities.shape == (4, 2) and np.allclose(probabilities.sum(1), 1)
    metrics = classification_metrics(probabilities, np.array([0, 0, 1, 1]))
    assert metrics == {"balanced_accuracy": 1.0, "weighted_f1": 1.0, "auroc": 1.0}
    assert "auroc" not in classification_metrics(probabilities, np.array([0, 0, 0, 0]))


# Grounding: one query = (slide, sentence); scores per patch, targets = patch lies in the described lesion.
# Query A: positives score {0.9, 0.3}, negatives {0.1, 0.8}; positive > negative pairs: 0.9>0.1, 0.9>0.8, 0.3>0.1,
# but 0.3<0.8 -> AUROC 3/4. Top patch 0.9 is a lesion patch -> pointing hit.
QUERY_A = (np.array([0.9, 0.1, 0.8, 0.3]), np.array([1, 0, 0, 1]))
# Query B: positive 0.2 vs negatives {0.7, 0.5, 0.1}: wins only against 0.1 -> AUROC 1/3; top patch 0.7 is not a lesion.
QUERY_B = (np.array([0.7, 0.2, 0.5, 0.1]), np.array([False, True, False, False]))
# Query C: every patch in the lesion -> no AUROC, but the pointing game counts it (always a hit).
QUERY_C = (np.array([0.4, 0.6]), np.array([True, True]))
# Query D: no lesion patch -> skipped by both.
QUERY_D = (np.array([0.3, 0.9, 0.5]), np.array([0, 0, 0]))


def _split(*queries):
    return [q[0] for q in queries], [q[1] for q in queries]


def test_grounding_auroc_matches_hand_counted_pairs():
    assert grounding_auroc(*_split(QUERY_A)) == pytest.approx(0.75)
    assert grounding_auroc(*_split(QUERY_B)) == pytest.approx(1 / 3)
    # Mean over queries, not pooled over patches; C (all positive) and D (all negative) are skipped.
    assert grounding_auroc(*_split(QUERY_A, QUERY_C, QUERY_B, QUERY_D)) == pytest.approx((0.75 + 1 / 3) / 2)
    # Ties count half: positive 0.5 vs negatives {0.5, 0.2} -> (0.5 + 1) / 2.
    assert grounding_auroc([np.array([0.5, 0.5, 0.2])], [np.array([1, 0, 0])]) == pytest.approx(0.75)


def test_grounding_auroc_is_nan_without_mixed_queries():
    assert np.isnan(grounding_auroc(*_split(QUERY_C, QUERY_D)))
    assert np.isnan(grounding_auroc([], []))


def test_pointing_game_by_hand():
    assert pointing_game(*_split(QUERY_A)) == 1.0
    assert pointing_game(*_split(QUERY_B)) == 0.0
    # A hit, B miss, C hit, D not counted (no lesion patch) -> 2/3.
    assert pointing_game(*_split(QUERY_A, QUERY_B, QUERY_C, QUERY_D)) == pytest.approx(2 / 3)
    # Top patch chosen by score, not position: the last patch (0.95) is the lesion.
    assert pointing_game([np.array([0.2, 0.1, 0.95])], [np.array([0, 0, 1])]) == 1.0
    assert np.isnan(pointing_game(*_split(QUERY_D)))


def test_grounding_metrics_combines_both_and_counts_auroc_queries():
    metrics = grounding_metrics(*_split(QUERY_A, QUERY_B, QUERY_C, QUERY_D))
    assert metrics == {
        "grounding_auroc": pytest.approx((0.75 + 1 / 3) / 2),
        "pointing_game": pytest.approx(2 / 3),
        "grounding_queries": 2,
    }


def test_grounding_metrics_by_finding_type_are_the_metrics_of_each_type_alone():
    metrics = grounding_metrics(*_split(QUERY_A, QUERY_B, QUERY_C, QUERY_D), ["stroma", "necrosis", "stroma",
                                                                             "necrosis"])  # fmt: skip
    assert metrics["grounding_auroc"] == pytest.approx((0.75 + 1 / 3) / 2)
    assert metrics["grounding_auroc/stroma"] == pytest.approx(0.75)  # C has no mixed targets: A alone
    assert metrics["grounding_auroc/necrosis"] == pytest.approx(1 / 3)  # D neither: B alone
    assert metrics["pointing_game/stroma"] == 1.0 and metrics["pointing_game/necrosis"] == 0.0
    assert (metrics["grounding_queries/stroma"], metrics["grounding_queries/necrosis"]) == (1, 1)
    with pytest.raises(ValueError, match="3 grounding types for 4 queries"):
        grounding_metrics(*_split(QUERY_A, QUERY_B, QUERY_C, QUERY_D), ["a", "b", "c"])


@pytest.mark.parametrize("function", [grounding_auroc, pointing_game, grounding_metrics])
def test_grounding_rejects_length_mismatch_and_nan_naming_the_query(function):
    scores, targets = _split(QUERY_A, QUERY_B, QUERY_A)
    with pytest.raises(ValueError, match="query 2: 3 patch scores but 4 patch targets"):
        function([*scores[:2], scores[2][:3]], targets)
    with pytest.raises(ValueError, match="query 1: patch scores contain NaN"):
        function([scores[0], np.array([0.7, np.nan, 0.5, 0.1]), scores[2]], targets)
    with pytest.raises(ValueError, match="3 score arrays but 2 target arrays"):
        function(scores, targets[:2])

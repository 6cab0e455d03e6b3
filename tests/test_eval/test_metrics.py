import numpy as np
import pytest

from eval.metrics import classification_metrics, recall_at_k, retrieval_metrics, zero_shot_probabilities


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

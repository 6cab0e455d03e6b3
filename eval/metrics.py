"""Metric functions on numpy arrays, shared by `train.py`'s evaluation and the evaluation harness."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score


def normalise(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def recall_at_k(similarity: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Recall@k of a square query x candidate similarity matrix whose diagonal holds the true pairs."""
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"recall_at_k needs a square similarity matrix, got {similarity.shape}")
    true_scores = np.diag(similarity)[:, None]
    # Rank of the true candidate = how many candidates score strictly higher (ties favour the truth).
    ranks = (similarity > true_scores).sum(axis=1)
    return {k: float((ranks < k).mean()) for k in ks}


def retrieval_metrics(slide_embeds: np.ndarray, text_embeds: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Slide->text and text->slide Recall@k for row-aligned slide and caption embeddings."""
    similarity = normalise(slide_embeds) @ normalise(text_embeds).T
    metrics = {}
    for direction, matrix in (("slide_to_text", similarity), ("text_to_slide", similarity.T)):
        for k, value in recall_at_k(matrix, ks).items():
            metrics[f"retrieval_{direction}_r{k}"] = value
    return metrics


def zero_shot_probabilities(slide_embeds: np.ndarray, class_embeds: np.ndarray, scale: float = 100.0) -> np.ndarray:
    """Softmax over classes of scaled cosine similarities, ``[num_slides, num_classes]``."""
    logits = scale * normalise(slide_embeds) @ normalise(class_embeds).T
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """Balanced accuracy, weighted F1 and macro one-vs-rest AUROC (when every class occurs)."""
    labels = np.asarray(labels)
    predictions = probabilities.argmax(axis=1)
    metrics = {
        "balanced_accuracy": float(balanced_accuracy_score(labels, predictions)),
        "weighted_f1": float(f1_score(labels, predictions, average="weighted", zero_division=0)),
    }
    present = np.unique(labels)
    if len(present) == probabilities.shape[1] and len(present) > 1:
        if probabilities.shape[1] == 2:
            metrics["auroc"] = float(roc_auc_score(labels, probabilities[:, 1]))
        else:
            metrics["auroc"] = float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"))
    return metrics

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


def _grounding_queries(
    scores: Sequence[np.ndarray], targets: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validated ``(scores, targets)`` float/bool pairs, one per query; errors name the query index."""
    if len(scores) != len(targets):
        raise ValueError(f"got {len(scores)} score arrays but {len(targets)} target arrays")
    queries = []
    for index, (query_scores, query_targets) in enumerate(zip(scores, targets, strict=True)):
        query_scores = np.asarray(query_scores, dtype=np.float64).reshape(-1)
        query_targets = np.asarray(query_targets).reshape(-1).astype(bool)
        if query_scores.shape != query_targets.shape:
            raise ValueError(f"query {index}: {query_scores.size} patch scores but {query_targets.size} patch targets")
        if np.isnan(query_scores).any():
            raise ValueError(f"query {index}: patch scores contain NaN")
        queries.append((query_scores, query_targets))
    return queries


def _mixed(query_targets: np.ndarray) -> bool:
    """Whether a query has both lesion and non-lesion patches (so a ROC AUC is defined)."""
    return 0 < query_targets.sum() < query_targets.size


def grounding_auroc(scores: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> float:
    """Mean per-query patch ROC AUC; queries whose targets are all True or all False are skipped (NaN if none)."""
    queries = _grounding_queries(scores, targets)
    aurocs = [
        roc_auc_score(query_targets, query_scores) for query_scores, query_targets in queries if _mixed(query_targets)
    ]
    return float(np.mean(aurocs)) if aurocs else float("nan")


def pointing_game(scores: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> float:
    """Fraction of queries with a True target whose top-scoring patch is True (ties: first patch; NaN if none)."""
    queries = _grounding_queries(scores, targets)
    hits = [
        bool(query_targets[np.argmax(query_scores)]) for query_scores, query_targets in queries if query_targets.any()
    ]
    return float(np.mean(hits)) if hits else float("nan")


def grounding_metrics(
    scores: Sequence[np.ndarray], targets: Sequence[np.ndarray], types: Sequence[str] | None = None
) -> dict:
    """Grounding AUROC, pointing game and ``grounding_queries``, the number of queries the AUROC averages over.

    With ``types`` (one finding type per query, e.g. ``necrosis``, ``stroma``) the same three figures follow for
    each type, keyed ``grounding_auroc/<type>``, ``pointing_game/<type>`` and ``grounding_queries/<type>``.
    """
    used = sum(_mixed(query_targets) for _, query_targets in _grounding_queries(scores, targets))
    metrics = {
        "grounding_auroc": grounding_auroc(scores, targets),
        "pointing_game": pointing_game(scores, targets),
        "grounding_queries": int(used),
    }
    if types is None:
        return metrics
    if len(types) != len(scores):
        raise ValueError(f"got {len(types)} grounding types for {len(scores)} queries; give one type per sentence")
    for kind in sorted(set(types)):
        chosen = [index for index, query_type in enumerate(types) if query_type == kind]
        for key, value in grounding_metrics([scores[i] for i in chosen], [targets[i] for i in chosen]).items():
            metrics[f"{key}/{kind}"] = value
    return metrics

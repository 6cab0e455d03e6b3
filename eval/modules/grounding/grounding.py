"""`evaluate` metric: patch-level grounding of sentences in slides (per-query AUROC and pointing game)."""

import datasets
import evaluate
import numpy as np

from pathflip.eval.metrics import grounding_metrics

_DESCRIPTION = """
Sentence grounding in whole slide images. One query is a (slide, sentence) pair: `scores` holds a float per patch
(how strongly the model links the patch to the sentence), `targets` a bool per patch (True when the patch lies in the
lesion the sentence describes). Returns the mean per-query patch ROC AUC over queries that have both lesion and
non-lesion patches, the pointing game (fraction of queries with a lesion patch whose top-scoring patch is a lesion
patch; ties go to the first patch) and `grounding_queries`, the number of queries the AUROC averages over.
Scores are stored as float32, so scores closer than float32 precision tie.
"""

_KWARGS_DESCRIPTION = """
Args:
    scores (`list` of `list` of `float`): per query, one score per patch (queries may differ in length).
    targets (`list` of `list` of `bool` or `int`): per query, one lesion flag per patch (0/1 ints are accepted).
Returns:
    grounding_auroc (`float`, NaN when no query is usable), pointing_game (`float`), grounding_queries (`int`).
Examples:
    >>> metric = evaluate.load("eval/modules/grounding")
    >>> metric.compute(scores=[[0.9, 0.1, 0.8, 0.3]], targets=[[1, 0, 0, 1]])
    {'grounding_auroc': 0.75, 'pointing_game': 1.0, 'grounding_queries': 1}
"""


def _as_bool_lists(targets):
    """Per-query lesion flags as plain bool lists (accepts bools, 0/1 ints, numpy arrays)."""
    return None if targets is None else [np.asarray(query).reshape(-1).astype(bool).tolist() for query in targets]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Grounding(evaluate.Metric):
    """Mean per-query patch AUROC and pointing game of sentence-to-patch scores."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "scores": datasets.Sequence(datasets.Value("float32")),
                    "targets": datasets.Sequence(datasets.Value("bool")),
                }
            ),
        )

    # Arrow refuses ints in a bool column, so targets are cast before they are stored (`compute` goes via add_batch).
    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of queries: ``add_batch(scores=[...], targets=[...])``."""
        if "targets" in kwargs:
            kwargs["targets"] = _as_bool_lists(kwargs["targets"])
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one query: ``add(scores=[...], targets=[...])``."""
        if kwargs.get("targets") is not None:
            kwargs["targets"] = np.asarray(kwargs["targets"]).reshape(-1).astype(bool).tolist()
        return super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, scores, targets) -> dict:
        return grounding_metrics([np.asarray(query, dtype=np.float64) for query in scores], targets)

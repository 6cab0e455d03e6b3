"""`evaluate` metric: zero-shot slide classification from per-slide class probabilities."""

import datasets
import evaluate
import numpy as np

from pathflip.eval.metrics import classification_metrics

_DESCRIPTION = """
Zero-shot slide classification. Each prediction is one slide's probability vector over the classes (for example
`pathflip.eval.metrics.zero_shot_probabilities` of slide and class-prompt embeddings); each reference is the
slide's integer label. Returns balanced accuracy and weighted F1 of the argmax, and macro one-vs-rest AUROC when
every class occurs among the references (binary: AUROC of the class-1 probability).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): class probabilities per slide, shape `[num_slides, num_classes]`.
    references (`list` of `int`): true class index per slide.
Returns:
    balanced_accuracy (`float`), weighted_f1 (`float`), auroc (`float`, only when every class occurs).
Examples:
    >>> metric = evaluate.load("eval/modules/zero_shot_classification")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 1])
    {'balanced_accuracy': 1.0, 'weighted_f1': 1.0, 'auroc': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ZeroShotClassification(evaluate.Metric):
    """Balanced accuracy, weighted F1 and AUROC of per-slide class probabilities."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references) -> dict:
        return classification_metrics(np.asarray(predictions, dtype=np.float64), np.asarray(references))

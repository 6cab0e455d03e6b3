"""`evaluate` metric: multiple-choice visual question answering about slides (accuracy of parsed option letters)."""

import datasets
import evaluate

from pathflip.eval.text_metrics import majority_baseline_accuracy, vqa_accuracy

_DESCRIPTION = """
Multiple-choice visual question answering about whole slide images. Each prediction is one generated answer, each
reference the true option letter ("A", "B", ...), and `options` the question's option texts in letter order.
Answers are parsed with `pathflip.eval.text_metrics.parse_option_letter` (a written letter such as "B", "(C)" or
"Answer: B", else the one option text the answer contains). Returns the accuracy (an unparsed answer counts as
wrong), the fraction of answers that parsed and, for scale, the accuracy of always answering the most frequent
true letter.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one generated answer per question.
    references (`list` of `str`): the true option letter per question.
    options (`list` of `list` of `str`): per question, its option texts (option A first).
Returns:
    vqa_accuracy (`float`), vqa_parsed_rate (`float`), majority_baseline_accuracy (`float`).
Examples:
    >>> metric = evaluate.load("eval/modules/vqa")
    >>> metric.compute(predictions=["(B)", "necrosis"], references=["B", "A"], options=[["x", "y"], ["necrosis", "z"]])
    {'vqa_accuracy': 1.0, 'vqa_parsed_rate': 1.0, 'majority_baseline_accuracy': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Vqa(evaluate.Metric):
    """Accuracy and parse rate of generated multiple-choice answers, with the majority-letter baseline."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "options": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references, options) -> dict:
        metrics = vqa_accuracy(predictions, references, options)
        metrics["majority_baseline_accuracy"] = majority_baseline_accuracy(references)
        return metrics

"""`evaluate` metric: slide captioning (corpus BLEU-1..4, ROUGE-L and METEOR without synonyms)."""

import datasets
import evaluate

from pathflip.eval.text_metrics import caption_metrics

_DESCRIPTION = """
Captioning of whole slide images. Each prediction is one generated caption, each reference the list of reference
captions of that slide (a bare string is accepted as a single reference). Text is lowercased and split into words
and punctuation. Returns corpus-level BLEU-1..4 (cumulative uniform n-gram weights, as in the COCO caption
evaluation, smoothed), the mean ROUGE-L F-measure and the mean METEOR, both taking the best reference
per prediction. METEOR matches exact words then Porter stems, without the WordNet synonym stage, so it finds no
more matches than nltk's METEOR (a lower bound, up to the alignment). An empty prediction scores 0. An n-gram order
without a single match in the corpus gets the smoothed precision 0.1 / (its n-gram count, at least 1), not 0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one generated caption per slide.
    references (`list` of `list` of `str`, or `list` of `str`): the reference caption(s) of each slide.
Returns:
    bleu_1, bleu_2, bleu_3, bleu_4, rouge_l, meteor (`float`, each in [0, 1]).
Examples:
    >>> metric = evaluate.load("eval/modules/captioning")
    >>> metric.compute(predictions=["ductal carcinoma in situ"], references=[["ductal carcinoma in situ"]])
    {'bleu_1': 1.0, 'bleu_2': 1.0, 'bleu_3': 1.0, 'bleu_4': 1.0, 'rouge_l': 1.0, 'meteor': 0.9921875}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Captioning(evaluate.Metric):
    """Corpus BLEU-1..4, mean ROUGE-L and mean METEOR of generated captions against reference captions."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
        )

    def _compute(self, predictions, references) -> dict:
        return caption_metrics(predictions, references)

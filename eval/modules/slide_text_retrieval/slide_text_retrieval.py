"""`evaluate` metric: slide <-> caption retrieval Recall@k from row-aligned embeddings."""

import datasets
import evaluate
import numpy as np

from pathflip.eval.metrics import retrieval_metrics

_DESCRIPTION = """
Cross-modal retrieval between slides and their captions. Row i of `slide_embeds` and row i of `text_embeds` are a
true pair; every other row is a distractor. Embeddings are L2-normalised and compared by cosine similarity. Returns
slide->text and text->slide Recall@k (a tie with the true pair counts in the pair's favour).
"""

_KWARGS_DESCRIPTION = """
Args:
    slide_embeds (`list` of `list` of `float`): one embedding per slide, `[num_pairs, dim]`.
    text_embeds (`list` of `list` of `float`): the caption embedding of the same slide, `[num_pairs, dim]`.
    ks (`Sequence[int]`, optional, keyword of `compute`): cut-offs, default `(1, 5, 10)`.
Returns:
    `retrieval_slide_to_text_r{k}` and `retrieval_text_to_slide_r{k}` (`float`) for each k.
Examples:
    >>> metric = evaluate.load("eval/modules/slide_text_retrieval")
    >>> metric.compute(slide_embeds=[[1.0, 0.0], [0.0, 1.0]], text_embeds=[[1.0, 0.1], [0.1, 1.0]], ks=(1,))
    {'retrieval_slide_to_text_r1': 1.0, 'retrieval_text_to_slide_r1': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SlideTextRetrieval(evaluate.Metric):
    """Slide->text and text->slide Recall@k of row-aligned embeddings."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "slide_embeds": datasets.Sequence(datasets.Value("float32")),
                    "text_embeds": datasets.Sequence(datasets.Value("float32")),
                }
            ),
        )

    def _compute(self, slide_embeds, text_embeds, ks=(1, 5, 10)) -> dict:
        slides = np.asarray(slide_embeds, dtype=np.float64)
        texts = np.asarray(text_embeds, dtype=np.float64)
        return retrieval_metrics(slides, texts, ks=tuple(ks))

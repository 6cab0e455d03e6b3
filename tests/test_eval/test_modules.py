"""The local `evaluate` metric modules, loaded offline through `evaluate.load(folder)`, against hand-computed values."""

from pathlib import Path

import numpy as np
import pytest

evaluate = pytest.importorskip("evaluate")

MODULES = Path(__file__).resolve().parents[2] / "eval" / "modules"


pytestmark = pytest.mark.usefixtures("offline_evaluate")  # tests/test_eval/conftest.py


def test_zero_shot_classification_module(offline_evaluate):
    metric = evaluate.load(str(MODULES / "zero_shot_classification"))
    # argmax predictions 0, 1 | 1, 0 for labels 0, 0 | 1, 1: recall 1/2 per class, precision 1/2 per class.
    metric.add_batch(predictions=[[0.8, 0.2], [0.4, 0.6]], references=[0, 0])
    metric.add_batch(predictions=[[0.3, 0.7], [0.6, 0.4]], references=[1, 1])
    # AUROC of P(class 1): positives {0.7, 0.4} vs negatives {0.2, 0.6}: 0.7>0.2, 0.7>0.6, 0.4>0.2, 0.4<0.6 -> 3/4.
    assert metric.compute() == {
        "balanced_accuracy": pytest.approx(0.5),
        "weighted_f1": pytest.approx(0.5),
        "auroc": pytest.approx(0.75),
    }
    # Class 2 never occurs -> no AUROC; both argmaxes right.
    result = metric.compute(predictions=[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], references=[0, 1])
    assert result == {"balanced_accuracy": 1.0, "weighted_f1": 1.0}
    assert (offline_evaluate / "modules" / "evaluate_modules" / "metrics" / "zero_shot_classification").is_dir()


def test_slide_text_retrieval_module(offline_evaluate):
    metric = evaluate.load(str(MODULES / "slide_text_retrieval"))
    # Cosine matrix slide x text = [[1, 1, 0], [0, 0, 0], [0, 0, 1]]. Slide->text: every true pair is top or tied
    # with the top (ties favour the truth) -> R@1 = 1. Text 1 -> slides [1, 0, 0]: slide 0 beats the true slide 1.
    metric.add_batch(slide_embeds=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], text_embeds=[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    metric.add_batch(slide_embeds=[[0.0, 0.0, 2.0]], text_embeds=[[0.0, 0.0, 1.0]])
    assert metric.compute(ks=(1, 2)) == {
        "retrieval_slide_to_text_r1": 1.0,
        "retrieval_slide_to_text_r2": 1.0,
        "retrieval_text_to_slide_r1": pytest.approx(2 / 3),
        "retrieval_text_to_slide_r2": 1.0,
    }


def test_grounding_module_accepts_bool_and_int_targets(offline_evaluate):
    metric = evaluate.load(str(MODULES / "grounding"))
    # Query A: AUROC 3/4 (see test_metrics), top patch 0.9 is a lesion -> hit. Query B: positive 0.2 beats only 0.1
    # of {0.7, 0.5, 0.1} -> AUROC 1/3, top patch 0.7 is not a lesion -> miss.
    metric.add_batch(
        scores=[[0.9, 0.1, 0.8, 0.3], [0.7, 0.2, 0.5, 0.1]],
        targets=[[1, 0, 0, 1], np.array([False, True, False, False])],
    )
    metric.add(scores=np.array([0.4, 0.6], dtype=np.float32), targets=[True, True])  # all lesion: hit, no AUROC
    result = metric.compute(scores=[[0.3, 0.9, 0.5]], targets=[np.zeros(3, dtype=np.int8)])  # no lesion: skipped
    assert result == {
        "grounding_auroc": pytest.approx((0.75 + 1 / 3) / 2),
        "pointing_game": pytest.approx(2 / 3),
        "grounding_queries": 2,
    }


def test_grounding_module_reports_the_bad_query(offline_evaluate):
    metric = evaluate.load(str(MODULES / "grounding"))
    with pytest.raises(ValueError, match="query 1: patch scores contain NaN"):
        metric.compute(scores=[[0.9, 0.1], [float("nan"), 0.2]], targets=[[1, 0], [0, 1]])
    # The failed compute above leaves the instance usable (it resets its cache file before `_compute`).
    with pytest.raises(ValueError, match="query 0: 2 patch scores but 3 patch targets"):
        metric.compute(scores=[[0.9, 0.1]], targets=[[1, 0, 0]])


def test_metric_path_and_direct_class(offline_evaluate, tmp_path, monkeypatch):
    from pathflip.eval.modules import METRIC_NAMES, metric_path
    from pathflip.eval.modules.grounding.grounding import Grounding

    monkeypatch.chdir(tmp_path)  # the folder comes from the installed package, not the cwd
    assert set(METRIC_NAMES) == {path.name for path in MODULES.iterdir() if (path / f"{path.name}.py").is_file()}
    metric = evaluate.load(str(metric_path("grounding")))
    assert metric.compute(scores=[[0.9, 0.1, 0.8, 0.3]], targets=[[1, 0, 0, 1]])["grounding_auroc"] == 0.75
    direct = Grounding().compute(scores=[[0.2, 0.1, 0.95]], targets=[[0, 0, 1]])
    assert direct == {"grounding_auroc": 1.0, "pointing_game": 1.0, "grounding_queries": 1}
    with pytest.raises(ValueError, match="unknown metric 'bleu'; known metrics: grounding, slide_text_retrieval"):
        metric_path("bleu")

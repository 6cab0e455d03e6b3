"""`pathflip benchmark pathflip2-zero-shot` on generated .h5 features for real slide ids of the authors' split lists,
scored with a model converted from a random state dict in the released layout."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score
from transformers import AutoModel, AutoProcessor

from pathflip.cli import main
from pathflip.eval.benchmarks import PATHFLIP2_ZERO_SHOT, split_list
from tests.test_conversion.released_layout import RELEASED_HPARAMS, TINY, TINY_TEXT, random_state, released_shapes


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tokenizer):
    import yaml
    from transformers import BertConfig, BertModel

    from pathflip.conversion.pathflip2 import convert_checkpoint

    folder = tmp_path_factory.mktemp("benchmark-model")
    hparams, text = {**RELEASED_HPARAMS, **TINY}, {**TINY_TEXT, "vocab_size": len(tokenizer)}
    (folder / "hparams.yaml").write_text(yaml.safe_dump(hparams))
    BertModel(BertConfig(**text)).save_pretrained(folder / "text")
    tokenizer.save_pretrained(folder / "text")
    shapes = released_shapes(16, 32, text, hparams["lora_rank"], hparams["lora_target_modules"])
    torch.save(random_state(shapes, seed=5), folder / "pytorch_model.bin")
    return convert_checkpoint(folder / "pytorch_model.bin", folder / "hparams.yaml", str(folder / "text"),
                              folder / "model")  # fmt: skip


def _write_features(folder, slides, rng):
    """TRIDENT-style .h5 files: features, coords and coords.attrs['patch_size_level0']."""
    for slide_id, label_index in slides:
        count = int(rng.integers(20, 60))
        with h5py.File(folder / f"{slide_id}.h5", "w") as handle:
            features = rng.normal(size=(count, 16)) + 0.8 * label_index
            handle.create_dataset("features", data=features.astype(np.float32))
            coords = handle.create_dataset("coords", data=(rng.permutation(400)[:count, None] * [1, 0] * 512))
            coords.attrs["patch_size_level0"] = 512


def test_the_benchmark_scores_as_the_authors_script_does(converted, tmp_path):
    rng = np.random.default_rng(0)
    chosen = {}
    for dataset in ("Camelyon16", "TCGA_RCC"):
        classes = list(PATHFLIP2_ZERO_SHOT[dataset])
        rows = split_list(dataset, "test")
        chosen[dataset] = [(slide_id, classes.index(label)) for label in classes
                           for slide_id in [s for s, lab in rows if lab == label][:4]]  # fmt: skip
        (tmp_path / "features").mkdir(exist_ok=True)
        _write_features(tmp_path / "features", chosen[dataset], rng)
    assert main(["benchmark", "pathflip2-zero-shot", str(converted), "--features", str(tmp_path / "features"),
                 "--datasets", "Camelyon16", "TCGA_RCC", "-o", str(tmp_path / "out")]) == 0  # fmt: skip
    results = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    table = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| PathFLIP (published) | 0.6434 | 0.6805 | 0.5106 |" in table
    assert "| CONCH (published) | 0.4032 | 0.7818 | 0.3755 |" in table

    model, processor = AutoModel.from_pretrained(converted).eval(), AutoProcessor.from_pretrained(converted)
    for dataset, slides in chosen.items():
        listed = len(split_list(dataset, "test"))
        assert results[dataset]["slides_listed"] == listed
        counts = results[dataset]["slides_found"], results[dataset]["slides_missing"]
        assert counts == (len(slides), listed - len(slides))
        with torch.no_grad():
            prompts = processor(text=list(PATHFLIP2_ZERO_SHOT[dataset].values()))  # one padded batch, as theirs
            texts = torch.nn.functional.normalize(model.get_text_features(**prompts), dim=-1)
            embeds = []
            for slide_id, _ in slides:
                with h5py.File(tmp_path / "features" / f"{slide_id}.h5") as handle:
                    features = torch.from_numpy(handle["features"][()])[None]
                embeds.append(model.get_slide_features(features).slide_embeds[0])
        probabilities = (torch.nn.functional.normalize(torch.stack(embeds), dim=-1) @ texts.T).softmax(-1).numpy()
        labels, predictions = np.array([label for _, label in slides]), probabilities.argmax(1)
        binary = probabilities.shape[1] == 2
        expected = {
            "acc": (predictions == labels).mean(),
            "auc": roc_auc_score(labels, probabilities[:, 1]) if binary else roc_auc_score(labels, probabilities,
                                                                                           multi_class="ovr"),
            "f1": f1_score(labels, predictions) if binary else f1_score(labels, predictions, average="weighted"),
        }  # fmt: skip
        for key, value in expected.items():
            assert results[dataset][key] == pytest.approx(value, abs=1e-6), (dataset, key)


def test_no_slide_found_at_all_and_bad_options_are_refused(converted, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["benchmark", "pathflip2-zero-shot", str(converted), "--features", str(tmp_path / "empty"),
                 "--datasets", "Camelyon16", "-o", str(tmp_path / "out")]) == 2  # fmt: skip
    assert "holds none of the benchmark's slides" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["benchmark", "pathflip2-zero-shot", str(converted), "--features", str(tmp_path / "empty"),
                 "--datasets", "Camelyon17", "-o", str(tmp_path / "out")]) == 2  # fmt: skip
    assert "not in the benchmark" in capsys.readouterr().err

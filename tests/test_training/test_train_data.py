"""What `pathflip train` accepts and refuses before any step: splits, columns, batch size, labels, and the dataset
formats (save_to_disk, parquet, streaming). Evaluation scores every row."""

from __future__ import annotations

import json

import datasets
import pytest

from pathflip.cli import main
from pathflip.processing.bags import write_bags, write_parquet

TISSUES = "tumour stroma necrosis fat".split()
NAMES = ["benign", "carcinoma"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer, config_factory, bag_factory):
    """A tiny config + tokenizer, and a dataset: 10 train rows, 45 test rows, a ClassLabel and a text label."""
    folder = tmp_path_factory.mktemp("train-data")
    config_factory().save_pretrained(folder / "config")
    tokenizer.save_pretrained(folder / "config")
    splits = {}
    for split, indices in (("train", range(10)), ("test", range(100, 145))):
        bags = []
        for i in indices:
            bag = bag_factory(i, 12 + i % 7)
            bag["caption"] = f"{TISSUES[i % 4].capitalize()} in the left region. There are {i % 4 + 1} large areas."
            bags.append(bag)
        dataset = write_bags(bags, folder / f"{split}.arrow", 16)
        dataset = dataset.add_column("diagnosis", [NAMES[i % 2] for i in indices])
        splits[split] = dataset.add_column("label", [i % 2 for i in indices]).cast_column(
            "label", datasets.ClassLabel(names=NAMES))  # fmt: skip
    datasets.DatasetDict(splits).save_to_disk(str(folder / "dataset"))
    return folder


def _train(workspace, output, *extra: str) -> int:
    return main(["train", "--dataset_name_or_path", str(workspace / "dataset"), "--config_name",
                 str(workspace / "config"), "--tokenizer_name", str(workspace / "config"), "--output_dir", str(output),
                 "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--max_steps", "2",
                 "--report_to", "none", "--use_cpu", "--dataloader_num_workers", "0", "--max_regions", "3", *extra])


def test_evaluation_scores_every_row_with_the_datasets_class_names(workspace, tmp_path):
    assert _train(workspace, tmp_path / "run", "--do_train", "--do_eval", "--eval_split", "test") == 0
    metrics = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert "eval_zero_shot_balanced_accuracy" in metrics, "class names came from the ClassLabel"
    from pathflip.eval.runner import evaluate_model

    test_split = datasets.load_from_disk(str(workspace / "dataset"))["test"]
    afterwards = evaluate_model(tmp_path / "run", test_split)
    assert afterwards["slides"] == 45
    # 45 rows at batch 8: the same figures as pathflip eval only when every row was scored (the last batch has 5)
    assert metrics["eval_retrieval_slide_to_text_r5"] == pytest.approx(afterwards["retrieval_slide_to_text_r5"])
    assert metrics["eval_zero_shot_auroc"] == pytest.approx(afterwards["zero_shot_auroc"], abs=1e-6)


def test_text_labels_score_like_the_class_labels(workspace, tmp_path):
    assert _train(workspace, tmp_path / "run", "--do_eval", "--eval_split", "test", "--label_column", "diagnosis",
                  "--max_steps", "0") == 0  # fmt: skip
    assert "eval_zero_shot_balanced_accuracy" in json.loads((tmp_path / "run" / "all_results.json").read_text())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--do_train", "--per_device_train_batch_size", "16"],
         r"train split has 10 rows, fewer than one global batch .* = 16\), so no step would train: lower "
         r"--per_device_train_batch_size to 10 or fewer"),
        (["--do_train", "--eval_split", "valid"], r"--eval_split 'valid' is not a split of .*\['train', 'test'\]"),
        (["--do_train", "--train_split", "training"], r"--train_split 'training' is not a split"),
        (["--do_train", "--caption_column", "report"], r"--caption_column 'report' is not a column of .*\(columns: "),
        (["--do_train", "--caption_column", "slide_id"],
         r"--caption_column 'slide_id' is the dataset's own 'slide_id' column; give the column that holds"),
        (["--do_eval", "--eval_split", "test", "--class_names", "carcinoma", "benign"],
         r"class names \['carcinoma', 'benign'\] disagree with the label order of the dataset's 'label' column "
         r"\['benign', 'carcinoma'\]"),
        (["--do_eval", "--eval_split", "test", "--label_column", "diagnosis", "--class_names", "benign", "tumour"],
         r"labels \['carcinoma'\] of column 'diagnosis' are not among the class names \['benign', 'tumour'\]"),
    ],
)  # fmt: skip
def test_refused_before_any_step_naming_the_fix(workspace, tmp_path, capsys, extra, message):
    import re

    assert _train(workspace, tmp_path / "run", *extra) == 2
    error = capsys.readouterr().err
    assert re.search(message, error), error
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_caption_column_option_takes_the_place_of_the_caption_column(workspace):
    from pathflip.training.arguments import DataArguments
    from pathflip.training.data import load_splits

    splits = load_splits(DataArguments(dataset_name_or_path=str(workspace / "dataset"), caption_column="diagnosis"))
    expected = datasets.load_from_disk(str(workspace / "dataset"))["train"]["diagnosis"]
    assert splits["train"]["caption"] == expected and "diagnosis" not in splits["train"].column_names


def test_a_misspelt_config_key_is_refused_not_left_at_its_default(workspace, tmp_path, capsys):
    config = json.loads((workspace / "config" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "embed_dimm": 32}))
    code = main(["train", "--dataset_name_or_path", str(workspace / "dataset"), "--config_name",
                 str(tmp_path / "config.json"), "--tokenizer_name", str(workspace / "config"), "--output_dir",
                 str(tmp_path / "run"), "--do_train", "--max_steps", "1", "--report_to", "none",
                 "--use_cpu"])  # fmt: skip
    assert code == 2
    assert "key(s) ['embed_dimm'] are not PathFLIPConfig options" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("streaming", [False, True])
def test_parquet_and_streamed_datasets_train(workspace, tmp_path, streaming):
    write_parquet(datasets.load_from_disk(str(workspace / "dataset")), tmp_path / "parquet")
    arguments = ["--do_train", "--max_steps", "2"] + (["--streaming"] if streaming else [])
    code = main(["train", "--dataset_name_or_path", str(tmp_path / "parquet"), "--config_name",
                 str(workspace / "config"), "--tokenizer_name", str(workspace / "config"), "--output_dir",
                 str(tmp_path / "run"), "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu",
                 "--dataloader_num_workers", "0", "--max_regions", "3", *arguments])  # fmt: skip
    assert code == 0 and (tmp_path / "run" / "model.safetensors").exists()
    assert json.loads((tmp_path / "run" / "all_results.json").read_text())["train_loss"] > 0
    if not streaming:  # pathflip eval reads the parquet shards too
        assert main(["eval", str(tmp_path / "run"), str(tmp_path / "parquet"), "--split", "test", "-o",
                     str(tmp_path / "eval")]) == 0  # fmt: skip
        assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["slides"] == 45


def test_off_grid_bags_train(workspace, tmp_path):
    """CLAM's per-piece grids and TRIDENT's overlapping patches train like any bag."""
    from tests.test_modeling_pathflip.test_off_grid_bags import multi_piece_bag, overlapping_bag

    bags = [multi_piece_bag(seed) if seed % 2 else overlapping_bag(seed) for seed in range(6)]
    for number, bag in enumerate(bags):
        bag["slide_id"] = f"off-grid-{number}"
    write_bags(bags, tmp_path / "bags.arrow", 16).save_to_disk(str(tmp_path / "off-grid"))
    code = main(["train", "--dataset_name_or_path", str(tmp_path / "off-grid"), "--config_name",
                 str(workspace / "config"), "--tokenizer_name", str(workspace / "config"), "--output_dir",
                 str(tmp_path / "run"), "--do_train", "--max_steps", "2", "--per_device_train_batch_size", "3",
                 "--report_to", "none", "--use_cpu", "--dataloader_num_workers", "0"])  # fmt: skip
    assert code == 0 and (tmp_path / "run" / "model.safetensors").exists()


def test_qformer_init_from_a_bert(workspace, tmp_path):
    """--qformer_init_from copies a BERT's layers into a new model's Q-Former (BLIP-2's initialisation)."""
    import torch
    from transformers import AutoModel, BertConfig, BertModel

    torch.manual_seed(3)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         vocab_size=50)).save_pretrained(tmp_path / "bert")  # fmt: skip
    assert _train(workspace, tmp_path / "run", "--qformer_init_from", str(tmp_path / "bert"), "--learning_rate", "0",
                  "--do_train") == 0  # fmt: skip
    bert, model = BertModel.from_pretrained(tmp_path / "bert"), AutoModel.from_pretrained(tmp_path / "run")
    torch.testing.assert_close(model.qformer.encoder.layer[1].attention.attention.key.weight,
                               bert.encoder.layer[1].attention.self.key.weight)  # fmt: skip

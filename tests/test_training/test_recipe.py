"""`pathflip train --recipe`: a model config and training options from one file, on any cohort."""

from __future__ import annotations

import json

import pytest

from pathflip.cli import main
from pathflip.processing.bags import write_bags
from pathflip.training.recipe import load_recipe, shipped_recipes
from pathflip.training.run import parse_arguments

SHIPPED = "pathflip-small"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, tokenizer, config_factory, bag_factory):
    """A tiny BERT text model folder and an 8-slide dataset."""
    import datasets
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("recipe")
    BertModel(BertConfig(**config_factory().text_config.to_dict())).save_pretrained(folder / "text")
    tokenizer.save_pretrained(folder / "text")
    bags = [bag_factory(i, 12 + i % 5) for i in range(8)]
    datasets.DatasetDict({"train": write_bags(bags, folder / "train.arrow", 16)}).save_to_disk(str(folder / "data"))
    return folder


def test_the_recipes_training_options_come_first_and_the_command_line_wins(cohort):
    for recipe in (SHIPPED, "configs/pathflip-small.json"):
        model_args, data_args, training_args = parse_arguments(
            ["--recipe", recipe, "--dataset_name_or_path", "x", "--output_dir", str(cohort / "o"), "--max_steps", "3"])
        assert model_args.recipe == recipe
        assert training_args.max_steps == 3  # given: wins over the recipe's 200
        assert (training_args.warmup_steps, training_args.weight_decay) == (10, 0.01)  # the recipe's
        assert (training_args.per_device_train_batch_size, data_args.max_regions) == (16, 64)
    _, _, training_args = parse_arguments([f"--recipe={SHIPPED}", "--dataset_name_or_path", "x", "--output_dir",
                                           str(cohort / "o")])  # fmt: skip
    assert training_args.max_steps == 200


def test_train_with_a_recipe_builds_the_recipes_model_for_the_cohort(cohort, tmp_path):
    output = tmp_path / "run"
    code = main(["train", "--recipe", SHIPPED, "--dataset_name_or_path", str(cohort / "data"),
                 "--text_model_name_or_path", str(cohort / "text"), "--output_dir", str(output), "--do_train",
                 "--max_steps", "2", "--per_device_train_batch_size", "4", "--use_cpu", "--report_to", "none",
                 "--dataloader_num_workers", "0"])  # fmt: skip
    assert code == 0
    saved = json.loads((output / "config.json").read_text())
    recipe = load_recipe(SHIPPED)["model"]
    for key in ("embed_dim", "tra_heads", "region_grid_size", "context_layers", "num_subcaptions", "text_pooling"):
        assert saved[key] == recipe[key], key
    assert saved["qformer_config"]["hidden_size"] == recipe["qformer_config"]["hidden_size"]
    assert saved["patch_dim"] == 16, "from the dataset's features"
    assert saved["text_config"]["hidden_size"] == 32, "from --text_model_name_or_path"


@pytest.mark.parametrize(("content", "fragment"), [
    ({"model": {}, "training": {}, "extra": 1}, "unknown section(s) ['extra']"),
    ({"model": {"tra_head": 8}, "training": {}}, "model key(s) ['tra_head'] are not PathFLIPConfig options"),
    ({"model": {"patch_dim": 512}, "training": {}}, "model.patch_dim comes from the dataset"),
    ({"model": {}, "training": {"max_step": 3}}, "training.max_step is not a `pathflip train` option"),
    ({"model": {}, "training": {"output_dir": "x"}}, "training.output_dir belongs on the command line"),
    ({"model": {}}, "needs a 'model' and a 'training' object"),
])  # fmt: skip
def test_a_bad_recipe_is_a_one_line_error_naming_the_key(content, fragment, tmp_path, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(content))
    code = main(["train", "--recipe", str(recipe), "--dataset_name_or_path", "x", "--output_dir", str(tmp_path),
                 "--text_model_name_or_path", "x"])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2 and fragment in error and len(error.strip().splitlines()) == 1, error


def test_unknown_names_invalid_json_and_two_model_sources_are_refused(tmp_path, cohort, capsys):
    assert main(["train", "--recipe", "no-such-recipe", "--dataset_name_or_path", "x", "--output_dir", "o"]) == 2
    assert f"one of ['{SHIPPED}']" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main(["train", "--recipe", str(broken), "--dataset_name_or_path", "x", "--output_dir", "o"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    code = main(["train", "--recipe", SHIPPED, "--config_name", str(cohort / "text"), "--dataset_name_or_path",
                 str(cohort / "data"), "--tokenizer_name", str(cohort / "text"), "--output_dir", str(tmp_path / "r"),
                 "--do_train", "--max_steps", "1", "--per_device_train_batch_size", "4", "--use_cpu",
                 "--report_to", "none"])  # fmt: skip
    assert code == 2 and "not both" in capsys.readouterr().err


def test_only_recipes_are_listed_as_shipped_recipes():
    assert list(shipped_recipes()) == [SHIPPED]  # configs/deepspeed_zero2.json is a launcher config

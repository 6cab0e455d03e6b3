"""A catalogue of bad inputs across the command line, the pipelines and file names built from data: each ends in
one line that names the item, the value and the fix, with the exit code it should have; none ends in a traceback,
none is silently accepted, nothing is written outside the output folder."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import pipeline

from modeling_pathflip import save_pretrained_with_pipelines
from pathflip.cli import main


def run(argv, capsys) -> tuple[int, str]:
    """Exit code and stderr of `pathflip ARGV` (argparse errors exit through SystemExit)."""
    try:
        code = main([str(part) for part in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, config_factory, tokenizer):
    from modeling_pathflip import PathFLIPModel, PathFLIPProcessor

    folder = tmp_path_factory.mktemp("bad-inputs-model")
    config = config_factory()
    config.patch_encoder = "stain-texture"
    torch.manual_seed(0)
    save_pretrained_with_pipelines(PathFLIPModel(config).eval(), PathFLIPProcessor.from_model_config(tokenizer, config),
                                   folder)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def bag_file(tmp_path_factory, bag_factory):
    path = tmp_path_factory.mktemp("bags") / "bag.pt"
    torch.save({key: value for key, value in bag_factory(0, 20).items()}, path)
    return path


# ---- the command line: options checked before any work ------------------------------------------------------

TRAIN = ["train", "--dataset_name_or_path", "d", "--output_dir", "run"]

OPTION_CASES = [
    (["extract", "s.svs", "-o", "out", "--min-tissue", "2"], r"--min-tissue: must be a fraction between 0 and 1, got '2'"),
    (["extract", "s.svs", "-o", "out", "--min-tissue", "-1"], r"--min-tissue: must be a fraction between 0 and 1"),
    (["extract", "s.svs", "-o", "out", "--mpp", "nan"], r"--mpp: must be a number, got 'nan'"),
    (["extract", "s.svs", "-o", "out", "--mpp", "0"], r"--mpp: must be a positive number, got '0'"),
    (["extract", "s.svs", "-o", "out", "--mpp", "inf"], r"--mpp: must be a positive number, got 'inf'"),
    (["extract", "s.svs", "-o", "out", "--patch-size", "0"], r"--patch-size: must be a whole number >= 1, got '0'"),
    (["extract", "s.svs", "-o", "out", "--patch-size", "1.5"], r"--patch-size: must be a whole number, got '1.5'"),
    (["extract", "s.svs", "-o", "out", "--target-mpp", "-0.5"], r"--target-mpp: must be a positive number"),
    (["extract", "s.svs", "-o", "out", "--batch-size", "0"], r"--batch-size: must be a whole number >= 1"),
    (["extract", "s.svs", "-o", "out", "--num-workers", "-1"], r"--num-workers: must be a whole number >= 0"),
    (["extract", "s.svs", "-o", "out", "--class-order", " "], r"--class-order: must not be empty"),
    (["tile", "s.svs", "-o", "out", "--min-tissue", "1.01"], r"--min-tissue: must be a fraction between 0 and 1"),
    (["tile", "s.svs", "-o", "out", "--tissue-method", "otsu"], r"--tissue-method: invalid choice: 'otsu'"),
    (["extract", "s.svs", "-o", "out", "--tissue-threshold", "0"], r"--tissue-threshold: must be a positive number"),
    (["extract", "s.svs", "-o", "out", "--tissue-method", "saturation", "--tissue-threshold", "1.5"],
     r"--tissue-threshold 1.5 is not a saturation between 0 and 1 \(for --tissue-method saturation\)"),
    (["tile", "s.svs", "-o", "out", "--tissue-threshold", "2"], r"--tissue-threshold 2.0 is not an optical density"),
    (["import", "folder", "-o", "out", "--patch-size-level0", "-512"], r"--patch-size-level0: must be a whole number >= 1"),
    (["import", "folder", "-o", "out", "--mpp", "abc"], r"--mpp: must be a number, got 'abc'"),
    # "." stands for an input that exists (the test runs in an empty folder): inputs are checked before options
    (["classify", "m", ".", "--labels", "a", "--top-k", "0"], r"--top-k: must be a whole number >= 1, got '0'"),
    (["classify", "m", ".", "--labels", "a", "--top-k", "-2"], r"--top-k: must be a whole number >= 1"),
    (["classify", "m", ".", "--labels", "a", "--top-k", "1.5"], r"--top-k: must be a whole number, got '1.5'"),
    (["classify", "m", ".", "--labels", ""], r"--labels: must not be empty"),
    (["heatmap", "m", ".", "-s", "x", "-o", "out", "--top-k", "0"], r"--top-k: must be a whole number >= 1"),
    (["retrieve", "m", "--top-k", "zero"], r"--top-k: must be a whole number, got 'zero'"),
    (["demo", "--num-slides", "0"], r"--num-slides: must be a whole number >= 1"),
    (["demo", "--num-slides", "3", "--llm-steps", "0"], r"--num-slides must be at least 8 \(a held-out slide of every"),
    (["demo", "--learning-rate=-1e-3"], r"--learning-rate: must be a positive number"),
    (["demo", "--seed", "-3"], r"--seed: must be a whole number from 0 to 4294967295, got .-3."),
    (["demo", "--ablation", "no-loss"], r"--ablation: invalid choice: 'no-loss'"),
    (["benchmark", "camelyon", "m", "--features", "f", "-o", "o"], r"argument name: invalid choice: 'camelyon'"),
    (["benchmark", "pathflip2-zero-shot", "m", "--features", "f", "-o", "o", "--split", "val"],
     r"--split: invalid choice: 'val'"),
    (["check", "d", "--patch-dim", "0"], r"--patch-dim: must be a whole number >= 1"),
    (["decompose", "d", "--model", "m", "-o", "o", "--max-new-tokens", "0"], r"--max-new-tokens: must be a whole"),
    (["frobnicate"], r"invalid choice: 'frobnicate'"),
    ([*TRAIN, "--learning_rate", "-1"], r"--learning_rate must be a number >= 0, got -1.0"),
    ([*TRAIN, "--learning_rate", "nan"], r"--learning_rate must be a number >= 0, got nan"),
    ([*TRAIN, "--weight_decay", "-0.1"], r"--weight_decay must be a number >= 0, got -0.1"),
    ([*TRAIN, "--per_device_train_batch_size", "0"],
     r"--per_device_train_batch_size must be a whole number >= 1, got 0"),
    ([*TRAIN, "--gradient_accumulation_steps", "0"], r"--gradient_accumulation_steps must be a whole number >= 1"),
    ([*TRAIN, "--num_train_epochs", "0"],
     r"--num_train_epochs must be a positive number \(or give --max_steps\), got 0"),
    (["fit-grounding", "m", "d", "-o", "o", "--seed", str(2**40)], r"--seed: must be a whole number from 0 to 4294967295"),
    (TRAIN, r"nothing to do: give --do_train, --do_eval \(with --eval_split\) or both"),
    ([*TRAIN, "--do_eval"], r"--do_eval needs --eval_split, the split to evaluate on"),
    ([*TRAIN, "--max_steps", "two"], r"pathflip train: argument --max_steps/--max-steps: invalid int value: 'two'"),
    ([*TRAIN, "--stage", "bogus"], r"argument --stage: invalid choice: 'bogus'"),
]  # fmt: skip


@pytest.mark.parametrize("argv, message", OPTION_CASES)
def test_bad_options_get_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, error = run(argv, capsys)
    assert code == 2 and re.search(message, error), error
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error
    assert not list(tmp_path.iterdir()), "nothing written"


# ---- the command line: inputs that cannot be used ---------------------------------------------------------------

def _input_cases(tmp, model_dir, bag_file):
    def recipe(name, model, training=None):
        (tmp / f"{name}.json").write_text(json.dumps({"model": model, "training": training or {}}))
        return tmp / f"{name}.json"

    RUN = ["--dataset_name_or_path", tmp / "empty", "--output_dir", tmp / "run", "--do_train"]  # noqa: N806
    (tmp / "empty").mkdir(exist_ok=True)
    (tmp / "not-a-model").mkdir(exist_ok=True)
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": [1]})}).save_to_disk(str(tmp / "with-splits"))
    (tmp / "a-bert").mkdir(exist_ok=True)
    (tmp / "a-bert" / "config.json").write_text('{"model_type": "bert"}')
    (tmp / "no-weights").mkdir(exist_ok=True)
    (tmp / "no-weights" / "config.json").write_text((model_dir / "config.json").read_text())
    (tmp / "table.csv").write_text("slide,label\n")
    (tmp / "kept").mkdir(exist_ok=True)
    (tmp / "kept" / "notes.txt").write_text("a user's own file")
    return [
        (["extract", tmp / "empty", "-o", tmp / "out"], 2, r"folder .*empty holds no slide file"),
        (["extract", "-o", tmp / "out"], 2, r"give the slides \(files or folders\) or --table cohort.csv"),
        (["extract", tmp / "s.svs", "--table", tmp / "table.csv", "-o", tmp / "out"], 2, r"one of the two"),
        (["extract", "--table", tmp / "absent.csv", "-o", tmp / "out"], 2, r"cohort table .*absent.csv does not exist"),
        (["extract", "--table", tmp / "table.csv", "-o", tmp / "out"], 2, r"cohort table .*table.csv has no rows"),
        (["extract", tmp / "s.svs", "-o", tmp / "out", "--class-order", "a"], 2, r"--class-order orders the labels of "
                                                                                  r"a cohort table: give --table too"),
        (["import", tmp / "empty", "-o", tmp / "out"], 2, r"holds no .h5 files"),
        (["import", tmp / "absent", "-o", tmp / "out"], 2, r"absent is not a folder"),
        (["classify", tmp / "absent-model", bag_file, "--labels", "a"], 2, r"absent-model"),
        (["classify", tmp / "not-a-model", bag_file, "--labels", "a"], 2, r"not-a-model"),
        (["classify", model_dir, tmp / "absent.h5", "--labels", "a"], 2, r"absent.h5. does not exist"),
        (["classify", model_dir, tmp / "table.csv", "--labels", "a", "b"], 2, r"unknown input type '.csv'"),
        (["classify", model_dir, bag_file, "--labels", "a"], 2, r"--labels needs two or more classes"),
        (["classify", model_dir, tmp / "with-splits", "--labels", "a", "b"], 2,
         r"with-splits holds several splits \(\['train'\]\); give one split's folder, e.g. .*with-splits/train"),
        (["classify", model_dir, bag_file, "--labels", "a", "a"], 2, r"--labels repeats \['a'\]"),
        (["classify", model_dir, bag_file, "--labels", "a", "b", "--template", "no placeholder"], 2,
         r"hypothesis_template needs one '\{\}'"),
        (["retrieve", model_dir], 2, r"give --index DATASET with --query TEXT"),
        (["retrieve", model_dir, "--slide", bag_file], 2, r"--slide ranks candidate texts: give them with --text"),
        (["heatmap", model_dir, bag_file, "-s", "", "-o", tmp / "maps"], 2, r"sentences has empty text"),
        (["heatmap", model_dir, bag_file, "-s", "tumour", "-o", tmp / "maps", "--slide", bag_file], 2,
         r"slide=.* is not a slide file"),
        (["eval", model_dir, tmp / "empty", "-o", tmp / "eval"], 2, r"empty"),
        (["check", tmp / "empty"], 2, r"empty"),
        (["push", model_dir, "bad repo id"], 2, r"repo id 'bad repo id' is not a valid Hub id"),
        (["push", tmp / "not-a-model", "lab/x"], 2, r"config.json: not a saved model folder"),
        (["convert", tmp / "absent.bin", "--hparams", tmp / "h.yaml", "--text-model", model_dir, "-o", tmp / "c"], 2,
         r"absent.bin"),
        (["benchmark", "pathflip2-zero-shot", model_dir, "--features", tmp / "absent", "-o", tmp / "b"], 2,
         r"--features .*absent is not a folder"),
        (["benchmark", "pathflip2-zero-shot", model_dir, "--features", tmp / "empty", "-o", tmp / "b",
          "--datasets", "Camelyon17"], 2, r"--datasets \['Camelyon17'\] are not in the benchmark"),
        (["benchmark", "pathflip2-zero-shot", model_dir, "--features", tmp / "empty", "-o", tmp / "b"], 2,
         r"--features .*empty holds none of the benchmark's slides: name each file <slide_id>.h5"),
        (["train", "--dataset_name_or_path", tmp / "empty", "--output_dir", tmp / "run", "--do_train"], 2,
         r"neither a dataset folder \(save_to_disk\) nor parquet files"),
        (["train", "--dataset_name_or_path", tmp / "empty", "--output_dir", tmp / "kept", "--do_train"], 2,
         r"--output_dir .*kept already holds files \(notes.txt\); add --resume_from_checkpoint .* --overwrite_output_dir"),
        (["train", "--dataset_name_or_path", tmp / "empty", "--output_dir", tmp / "empty" / "run", "--do_train"], 2,
         r"would write into --dataset_name_or_path .*empty; give the run a folder of its own"),
        (["train", *RUN, "--stage", "caption", "--model_name_or_path", model_dir, "--llm_name_or_path", "./no-llm"], 2,
         r"--llm_name_or_path ./no-llm does not exist; check the path"),
        (["train", *RUN, "--model_name_or_path", tmp / "a-bert"], 2,
         r"--model_name_or_path .*a-bert is a 'bert' model; --stage align starts from a 'pathflip' or 'pathflip2'"),
        (["train", "--recipe", recipe("q", {"qformer_config": {"num_hidden_layer": 2}}), *RUN], 2,
         r"model.qformer_config key\(s\) \['num_hidden_layer'\] are not Blip2QFormerConfig options"),
        (["train", "--recipe", recipe("flag", {"use_slide_loss": "false"}), *RUN], 2,
         r"--recipe .*flag.json: model: PathFLIPConfig.use_slide_loss must be True or False, got 'false'"),
        (["train", "--recipe", recipe("text", {"text_config": {}}), *RUN], 2,
         r"model.text_config comes from --text_model_name_or_path; remove it"),
        (["train", "--recipe", recipe("steps", {}, {"max_steps": "two"}), *RUN], 2,
         r"invalid int value: 'two' \(set by --recipe .*steps.json: training.max_steps\)"),
        (["train", "--recipe", recipe("null", {}, {"max_steps": None}), *RUN], 2,
         r"training.max_steps is null; give it a value or leave it out"),
        (["train", "--dataset_name_or_path", tmp / "empty", "--output_dir", tmp / "table.csv"], 2,
         r"--output_dir '.*table.csv' is a file; give a folder for the run"),
        (["fit-grounding", model_dir, tmp / "absent-data", "-o", tmp / "out"], 2,
         r"dataset '.*absent-data' does not exist; give a folder written by pathflip extract / import"),
        (["eval", model_dir, tmp / "absent-data", "-o", tmp / "eval"], 2, r"dataset '.*absent-data' does not exist"),
        (["fit-grounding", model_dir, tmp / "empty", "-o", model_dir], 2,
         r"--output '.*' would replace the input '.*'; write to a new folder"),
        (["fit-grounding", model_dir, tmp / "empty", "-o", tmp], 2, r"would replace the input '.*empty'"),
        (["fit-grounding", model_dir, tmp / "empty", "-o", tmp / "table.csv"], 2, r"is a file; give a folder"),
        (["fit-grounding", model_dir, tmp / "empty", "-o", tmp / "kept"], 2,
         r"--output '.*kept' already holds files, which writing there would delete; .* pass --overwrite"),
        (["convert", tmp / "absent.bin", "--hparams", tmp / "h.yaml", "--text-model", model_dir, "-o", tmp / "kept"],
         2, r"already holds files"),
        (["import", tmp / "empty", "-o", tmp / "kept"], 2, r"already holds files"),
        (["eval", model_dir, tmp / "empty", "-o", tmp / "table.csv"], 2, r"--output/-o: '.*table.csv' is a file; give a"),
        (["heatmap", model_dir, bag_file, "-s", "x", "-o", tmp / "table.csv"], 2, r"--output/-o: .* is a file"),
        (["decompose", tmp / "empty", "--model", "m", "-o", tmp / "empty"], 2, r"would replace the input"),
        (["retrieve", model_dir, "--index", tmp / "empty", "--query", "x", "--save-index", tmp / "kept"], 2,
         r"--save-index '.*kept' already holds files"),
        (["classify", tmp / "not-a-model", bag_file, "--labels", "a", "b"], 2, r"has no config.json: not a saved model"),
        (["eval", tmp / "a-bert", bag_file, "-o", tmp / "eval"], 2, r"holds a 'bert' model, not a PathFLIP model"),
        (["heatmap", tmp / "no-weights", bag_file, "-s", "x", "-o", tmp / "maps"], 2, r"has no model.safetensors"),
        (["classify", model_dir, bag_file, tmp / "absent.h5", "--labels", "a", "b"], 2,
         r"'.*absent.h5' does not exist; give a bag"),
        (["classify", model_dir, bag_file, "--labels", "a", "b", "-o", tmp / "kept"], 2, r"'.*kept' is a folder"),
        (["classify", model_dir, bag_file, "--labels", "a", "b", "-o", tmp / "table.csv"], 2,
         r"--output .*table.csv already exists; pass --overwrite to replace it"),
        (["classify", model_dir, bag_file, "--labels", "a", "b", "-o", bag_file, "--overwrite"], 2,
         r"--output .*bag.pt is the input .*; write the results to a new file"),
        (["classify", model_dir, bag_file, "--labels", "a", "b", "--patch-encoder", "uni"], 2,
         r"--patch-encoder says how to encode a slide file, but no input is one"),
        (["retrieve", model_dir, "--slide", bag_file, "--text", "a", "--query", "b"], 2,
         r"give one of the two searches"),
        (["retrieve", model_dir, "--index", tmp / "empty", "--query", "x", "--query", "x"], 2, r"--query repeats \['x'\]"),
    ]  # fmt: skip


def test_unusable_inputs_name_the_item_and_the_fix(tmp_path, model_dir, bag_file, capsys):
    cases = _input_cases(tmp_path, model_dir, bag_file)
    for argv, expected, message in cases:
        code, error = run(argv, capsys)
        assert code == expected and re.search(message, error), (argv, code, error)
        assert "Traceback" not in error, argv
    for written in ("out", "maps", "eval", "c", "b", "run"):
        assert not (tmp_path / written).exists() or not any((tmp_path / written).rglob("*.partial")), written
    assert (tmp_path / "kept" / "notes.txt").read_text() == "a user's own file"
    assert (model_dir / "config.json").is_file()
    assert len(cases) >= 39


# ---- the pipelines' arguments ------------------------------------------------------------------------------------

PIPELINE_CASES = [
    ("zero-shot-slide-classification", {"candidate_labels": ["tumour", "tumour"]}, r"candidate_labels repeats"),
    ("zero-shot-slide-classification", {"candidate_labels": ["tumour", " "]}, r"candidate_labels has empty text"),
    ("zero-shot-slide-classification", {"candidate_labels": []}, r"candidate_labels must be a text or a non-empty list"),
    ("zero-shot-slide-classification", {"candidate_labels": [1, 2]}, r"candidate_labels must be a text"),
    ("zero-shot-slide-classification", {"candidate_labels": ["tumour", "fat"], "top_k": 0}, r"top_k must be a positive whole"),
    ("zero-shot-slide-classification", {"candidate_labels": ["tumour", "fat"], "top_k": -1}, r"top_k must be a positive"),
    ("zero-shot-slide-classification", {"candidate_labels": ["tumour", "fat"], "top_k": 1.5}, r"top_k must be a positive"),
    ("zero-shot-slide-classification", {"candidate_labels": ["tumour", "fat"], "top_k": True}, r"top_k must be a positive"),
    ("zero-shot-slide-classification", {"candidate_labels": ["a", "b"], "hypothesis_template": "no slot"},
     r"hypothesis_template needs one '\{\}'"),
    ("zero-shot-slide-classification", {"candidate_labels": ["a", "b"], "hypothesis_template": "{} and {}"},
     r"needs one '\{\}' where the label goes and no other braces, got '\{\} and \{\}'"),
    ("zero-shot-slide-classification", {"candidate_labels": ["a", "b"], "hypothesis_template": "{x} {}"}, r"no other braces"),
    ("zero-shot-slide-classification", {"candidate_labels": ["Tumour", "tumour "]},
     r"candidate_labels repeats \['Tumour', 'tumour '\] \(case and spaces aside\)"),
    ("slide-grounding", {"sentences": "a", "heatmap_size": 10**6}, r"heatmap_size is the heatmap's longest side .* at most"),
    ("zero-shot-slide-classification", {"candidate_labels": ["a", "b"], "mpp": float("nan")}, r"mpp must be a positive"),
    ("zero-shot-slide-classification", {"candidate_labels": ["a", "b"], "mpp": -0.5}, r"mpp must be a positive"),
    ("zero-shot-slide-classification", {"candidate_labels": ["a", "b"], "colour": "red"}, r"unknown option\(s\) \['colour'\]"),
    ("slide-grounding", {"sentences": ""}, r"sentences has empty text"),
    ("slide-grounding", {"sentences": ["a", "a"]}, r"sentences repeats \['a'\]"),
    ("slide-grounding", {"sentences": "a", "heatmap_size": 0}, r"heatmap_size must be a positive whole"),
    ("slide-grounding", {"sentences": "a", "top_k": 0}, r"top_k must be a positive"),
    ("slide-grounding", {}, r"sentences must be one or more texts"),
    ("slide-grounding", {"sentences": "a", "output_dir": __file__}, r"output_dir '.*test_bad_inputs.py' is a file"),
    ("slide-text-retrieval", {"candidate_texts": []}, r"candidate_texts must be a text or a non-empty list"),
    ("slide-text-retrieval", {}, r"give candidate_texts= to rank texts for a slide, or index="),
    ("slide-feature-extraction", {"patch_encoder": " "}, r"patch_encoder must be a non-empty name"),
]  # fmt: skip


@pytest.mark.parametrize("task, options, message", PIPELINE_CASES)
def test_bad_pipeline_arguments_are_refused(model_dir, bag_factory, task, options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        pipeline(task, model=str(model_dir))(bag_factory(0, 20), **options)


def test_one_string_is_one_label_and_one_label_is_not_a_choice(model_dir, bag_factory):
    with pytest.raises(ValueError, match=r"candidate_labels needs two or more classes to choose between, got \['tumour'\]"):
        pipeline("zero-shot-slide-classification", model=str(model_dir))(bag_factory(0, 20), candidate_labels="tumour")


BAD_BAGS = [
    (lambda b: {**b, "features": b["features"][:, :8]}, r"feature dim 8 != the model's patch_dim 16"),
    (lambda b: {**b, "features": b["features"].index_fill(0, torch.tensor([2]), float("nan"))}, r"NaN or Inf"),
    (lambda b: {**b, "coords": b["coords"][:5]}, r"coords of shape \(5, 2\) do not match 20"),
    (lambda b: {**b, "patch_size_level0": 0}, r"missing or invalid patch_size_level0 \(0\)"),
    (lambda b: {**b, "coords": torch.cat([b["coords"][:1], b["coords"][:19]])}, r"duplicate coords"),
    (lambda b: {key: value for key, value in b.items() if key != "coords"}, r"missing 'coords'"),
    (lambda b: {**b, "coords": b["coords"].float().index_fill(0, torch.tensor([3]), float("nan"))},
     r"NaN or Inf in coords \(first at row 3\)"),
    (lambda b: {**b, "patch_size_level0": "256"}, r"missing or invalid patch_size_level0 \('256'\)"),
]  # fmt: skip


@pytest.mark.parametrize("change, message", BAD_BAGS)
def test_bad_bags_name_the_slide(model_dir, bag_factory, change, message):
    with pytest.raises(ValueError, match=f"slide 'slide-0'.*{message}|{message}"):
        pipeline("slide-feature-extraction", model=str(model_dir))(change(bag_factory(0, 20)))


@pytest.mark.parametrize("value", [None, 5, 2.5])
def test_an_input_that_is_neither_a_bag_nor_a_path_is_named(model_dir, value):
    with pytest.raises(ValueError, match=rf"a slide input must be a bag .* or a path, got \w+ {value}"):
        pipeline("slide-feature-extraction", model=str(model_dir))(value)


# ---- file names built from data stay inside the output folder -------------------------------------------------

HOSTILE_IDS = ["../../escape", "/etc/passwd-copy", "a/b\\\\c", "nul\x00byte", "x" * 400, "unicodé-切片", ".", ".."]


@pytest.mark.parametrize("slide_id", HOSTILE_IDS)
def test_hostile_slide_ids_write_inside_the_output_folder(model_dir, bag_factory, tmp_path, slide_id):
    output = tmp_path / "maps"
    bag = {**bag_factory(0, 20), "slide_id": slide_id}
    (result,) = pipeline("slide-grounding", model=str(model_dir))(bag, sentences="tumour ../../../x",
                                                                   output_dir=str(output))  # fmt: skip
    written = sorted(path for path in tmp_path.rglob("*") if path.is_file())
    assert len(written) == 2 and all(path.parent == output for path in written), written
    assert {result["png_file"], result["geojson_file"]} == {str(path) for path in written}
    assert all(len(path.name) < 200 for path in written)


def test_sentences_and_bags_that_would_share_a_file_name_get_files_of_their_own(model_dir, bag_factory, tmp_path):
    ground = pipeline("slide-grounding", model=str(model_dir))
    alike = ["An invasive carcinoma nest with hyperchromatic nuclei in the left part of the tissue.",
             "An invasive carcinoma nest with hyperchromatic nuclei in the right part of the tissue.",
             "Tumour.", "tumour!"]  # fmt: skip
    unnamed = [{key: value for key, value in bag_factory(seed, 20 + seed).items() if key != "slide_id"}
               for seed in (0, 1)]  # fmt: skip
    results = [result for bag in unnamed for result in ground(bag, sentences=alike, output_dir=str(tmp_path))]
    assert len({result["png_file"] for result in results}) == len(results) == 8
    assert len(list(tmp_path.glob("*.png"))) == 8 and len(list(tmp_path.glob("*.geojson"))) == 8


def test_the_catalogue_holds_sixty_bad_inputs():
    assert len(OPTION_CASES) + 39 + len(PIPELINE_CASES) + len(BAD_BAGS) + len(HOSTILE_IDS) >= 60
    json.dumps([case[0] for case in OPTION_CASES])  # the table stays plain data

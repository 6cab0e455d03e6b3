"""The generalization study: argument checks, resuming from finished runs, and the summary over seeds."""

import json

import pytest

from pathflip.cli.jobs import ABLATION_NAMES
from pathflip.demo import generalization
from pathflip.demo.options import ABLATIONS


def test_cli_ablation_names_are_the_demos():
    assert ABLATION_NAMES == list(ABLATIONS)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"families": ["tumours"]}, "unknown family 'tumours'"),
        ({"variants": ["no-slide-loss"]}, "unknown variant 'no-slide-loss'"),
        ({"seeds": [-1]}, "seeds must be non-negative ints"),
        ({"seeds": []}, "seeds must be non-negative ints"),
        ({"num_slides": 4}, "num_slides must be an int >= 8"),
        ({"seeds": [0, 0]}, r"seeds repeats \[0\]; give each once"),
        ({"variants": ["full", "full"]}, r"variants repeats \['full'\]"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, arguments, message):
    options = {"families": ["hierarchical"], "seeds": [0], "variants": ["full"], **arguments}
    with pytest.raises(ValueError, match=message):
        generalization.run_study(tmp_path, **options)
    assert not any(tmp_path.iterdir())


def test_the_command_line_refuses_a_bad_option_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        generalization.main(["--output", str(tmp_path), "--seeds", "0", "--num-slides", "3"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().endswith("num_slides must be an int >= 8, got 3")
    (tmp_path / "runs.txt").write_text("")
    for argv, message in ((["--output", str(tmp_path / "runs.txt")], "runs.txt' is a file; give a folder for the runs"),
                          (["--output", str(tmp_path / "runs"), "--json", str(tmp_path)], "is a folder; give a file"),
                          (["--output", str(tmp_path / "runs"), "--json", str(tmp_path / "runs.txt" / "s.json")],
                           "lies under the file")):
        with pytest.raises(SystemExit) as exit_:
            generalization.main(argv)
        error = capsys.readouterr().err
        assert exit_.value.code == 2 and message in error and len(error.strip().splitlines()) == 1, error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs.txt"], "nothing written"


def _finished(folder, run, metrics):
    (folder / run).mkdir(parents=True)
    (folder / run / "metrics.json").write_text(json.dumps(metrics))


def test_finished_runs_are_read_back_and_summarised_over_seeds(tmp_path):
    figures = {
        ("hierarchical-seed0", "full"): {"zero_shot_balanced_accuracy": 0.9, "grounding_auroc": 0.8,
                                         "grounding_auroc/stroma": 0.7, "pointing_game": 0.5, "slides": 45},
        ("hierarchical-seed1", "full"): {"zero_shot_balanced_accuracy": 1.0, "grounding_auroc": 0.6,
                                         "grounding_auroc/stroma": 0.5, "pointing_game": 0.3, "slides": 45},
        ("hierarchical-seed0", "ablation-no-tra"): {"zero_shot_balanced_accuracy": 0.8, "grounding_auroc": 0.5,
                                                    "pointing_game": 0.2, "slides": 45},
        ("hierarchical-seed1", "ablation-no-tra"): {"zero_shot_balanced_accuracy": 0.7, "grounding_auroc": 0.5,
                                                    "pointing_game": 0.1, "slides": 45},
    }  # fmt: skip
    for (folder, run), metrics in figures.items():
        _finished(tmp_path / folder, run, metrics)
    study = generalization.run_study(tmp_path, families=["hierarchical"], seeds=[0, 1], variants=["full", "no-tra"])
    full = study["summary"]["hierarchical"]["full"]
    assert full["grounding_auroc"] == pytest.approx({"mean": 0.7, "min": 0.6, "max": 0.8, "std": 0.1, "n": 2})
    assert full["zero_shot_balanced_accuracy"]["mean"] == pytest.approx(0.95)
    assert "grounding_auroc/stroma" not in study["summary"]["hierarchical"]["no-tra"]
    assert [run["variant"] for run in study["runs"]] == ["full", "no-tra", "full", "no-tra"]
    assert json.loads((tmp_path / "study.json").read_text()) == study
    table = (tmp_path / "study.md").read_text()
    assert "| full | 0.950 (0.900) | 0.700 (0.600) | 0.400 (0.300) | 0.600 (0.500) |" in table
    assert "| no-tra | 0.750 (0.700) | 0.500 (0.500) | 0.150 (0.100) | - |" in table

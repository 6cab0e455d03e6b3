"""The push verb: check a model folder or a feature-bag dataset, then upload it to the Hub."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def command_push(args: argparse.Namespace) -> int:
    """Check a model folder (complete, every task runs as remote code) or a feature-bag dataset, then upload it
    to the Hub."""
    from ..model_cards.hub import check_repo_id, is_dataset_folder, push_dataset, push_model

    common = {"revision": args.revision, "private": args.private, "token": args.token}
    if args.commit_message:
        common["commit_message"] = args.commit_message
    card = {"dataset_name": args.dataset_name, "datasets": args.dataset, "base_models": args.base_model,
            "license": args.license}  # fmt: skip
    card = {key: value for key, value in card.items() if value}
    for repo_id in [*(args.dataset or []), *(args.base_model or [])]:
        check_repo_id(repo_id)
    if is_dataset_folder(args.path):
        if card or args.metrics:
            raise ValueError(f"{args.path} is a dataset: the model card options (--metrics, --dataset-name, --dataset, "
                             "--base-model, --license) apply to a model folder; leave them out.")  # fmt: skip
        commit = push_dataset(args.path, args.repo_id, **common)
    else:
        metrics = _metrics(args.metrics) if args.metrics else None
        print(f"checking {args.path}: every file a Hub repo needs, then every task as remote code", flush=True)
        commit = push_model(args.path, args.repo_id, metrics=metrics, card_options=card, **common)
    print(f"pushed {args.path} to {commit.commit_url}\npin this upload with revision={commit.oid!r}")
    return 0


def _metrics(path: str) -> dict:
    """The metrics JSON of `pathflip eval`, refused with its file named when it is not one."""
    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"--metrics {path}: not a readable JSON file ({error}); give the metrics.json that pathflip "
                         "eval wrote.") from None  # fmt: skip
    if not isinstance(metrics, dict):
        raise ValueError(f"--metrics {path} holds a {type(metrics).__name__}, not the object pathflip eval writes.")
    return metrics


def add_verbs(commands) -> None:
    push = commands.add_parser("push", help=command_push.__doc__)
    push.add_argument("path", help="a saved model folder, or a feature-bag dataset folder (save_to_disk)")
    push.add_argument("repo_id", help="the Hub repository, e.g. my-lab/pathflip-brca")
    push.add_argument("--revision", help="a branch to push to (created if needed; default main)")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--token", help="a Hub token (default: HF_TOKEN or the saved login)")
    push.add_argument("--commit-message")
    card = push.add_argument_group("model card (written when the folder has none, or when --metrics is given)")
    card.add_argument("--metrics", help="metrics.json of `pathflip eval`: the card's results and model-index")
    card.add_argument("--dataset-name", help="the evaluation dataset's name in the card")
    card.add_argument("--dataset", nargs="+", help="Hub ids of the training datasets (card metadata)")
    card.add_argument("--base-model", nargs="+", help="Hub ids of the base models: text tower, LLM")
    card.add_argument("--license", help="licence id (default apache-2.0)")
    push.set_defaults(run=command_push)


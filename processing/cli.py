"""The `pathflip` command line: one verb per task."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .tiler import TilingOptions


def _tiling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slides", nargs="+", help="slide files or folders of slides")
    parser.add_argument("--output", "-o", required=True, help="output folder")
    parser.add_argument("--mpp", type=float, help="microns per level-0 pixel (overrides slide metadata)")
    parser.add_argument("--target-mpp", type=float, default=0.5, help="patch resolution (default 0.5, ~20x)")
    parser.add_argument("--patch-size", type=int, default=256, help="patch side in pixels (default 256)")
    parser.add_argument("--min-tissue", type=float, default=0.25, help="minimum tissue fraction of a patch")


def _tiling_options(args: argparse.Namespace) -> TilingOptions:
    return TilingOptions(target_mpp=args.target_mpp, patch_size=args.patch_size, min_tissue_fraction=args.min_tissue)


def command_tile(args: argparse.Namespace) -> int:
    """Tile slides: tissue overlays and patch coordinates, without features."""
    from .extract import find_slides
    from .reader import SlideError, SlideReader
    from .tiler import tile_slide
    from .tissue import save_overlay

    output, failures = Path(args.output), {}
    for path in find_slides(args.slides):
        try:
            with SlideReader(path, mpp=args.mpp) as reader:
                tiling = tile_slide(reader, _tiling_options(args))
        except SlideError as error:
            failures[path.stem] = str(error)
            continue
        save_overlay(tiling.thumbnail, tiling.mask, output / "tissue" / f"{tiling.slide_id}.png")
        record = {
            "slide_id": tiling.slide_id,
            "patch_size_level0": tiling.patch_size_level0,
            "mpp": tiling.mpp,
            "coords": tiling.coords.tolist(),
        }
        (output / "coords").mkdir(parents=True, exist_ok=True)
        (output / "coords" / f"{tiling.slide_id}.json").write_text(json.dumps(record))
        print(f"{tiling.slide_id}: {len(tiling.coords)} patches of {tiling.patch_size_level0} level-0 px")
    return _report_failures(failures)


def command_extract(args: argparse.Namespace) -> int:
    """Extract feature bags into a resumable output folder and a `datasets` dataset."""
    from .encoders import load_encoder
    from .extract import ExtractionOptions, find_slides, run_extraction

    options = ExtractionOptions(
        tiling=_tiling_options(args),
        mpp=args.mpp,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        parquet=args.parquet,
    )
    report = run_extraction(find_slides(args.slides), args.output, load_encoder(args.encoder), options)
    if report.is_main_process:
        print(report.summary())
        if report.dataset:
            print(f"dataset: {report.dataset}")
    return 1 if report.failed else 0


def command_import(args: argparse.Namespace) -> int:
    """Import TRIDENT/CLAM .h5 or .pt bags into a feature-bag dataset."""
    from . import importers

    options = {
        "output": args.output,
        "patch_size_level0": args.patch_size_level0,
        "mpp": args.mpp,
        "captions": args.captions,
    }
    if args.coords_dir:
        dataset = importers.import_pt_folder(args.folder, coords_dir=args.coords_dir, **options)
    else:
        dataset = importers.import_h5_folder(args.folder, **options)
    print(f"{len(dataset)} slides -> {args.output}")
    return 0


def command_decompose(args: argparse.Namespace) -> int:
    """Decompose captions into a `subcaptions` column with a local causal LM."""
    import datasets

    from .bags import save_dataset
    from .decompose import decompose_dataset

    loaded = datasets.load_from_disk(args.dataset)
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else {"": loaded}
    result = {}
    for name, split in splits.items():
        result[name], report = decompose_dataset(
            split, args.model, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
        )
        print(f"{name or 'dataset'}: {report.rows} captions, {report.fallbacks} kept the rule-based split")
    output = datasets.DatasetDict(result) if isinstance(loaded, datasets.DatasetDict) else result[""]
    if isinstance(output, datasets.DatasetDict):
        output.save_to_disk(args.output)
    else:
        save_dataset(output, args.output)
    return 0


def command_heatmap(args: argparse.Namespace) -> int:
    """Ground sentences in a slide: heatmap PNG over the thumbnail (or the patch grid) and GeoJSON."""
    grounder = _pipeline("slide-grounding", args)
    options = {"patch_encoder": args.patch_encoder, "mpp": args.mpp, "top_k": args.top_k, "output_dir": args.output}
    for result in grounder(args.input, sentences=args.sentence, slide=args.slide, **options):
        print(f"{result['sentence']!r}: {result['png_file']} {result['geojson_file']}")
    return 0


def command_classify(args: argparse.Namespace) -> int:
    """Zero-shot slide classification: one JSON line per slide with the ranked labels."""
    from .inputs import load_bags

    classifier = _pipeline("zero-shot-slide-classification", args)
    templates = {"hypothesis_template": args.template} if args.template else {}
    records = []
    for source in args.inputs:
        for bag in load_bags(source, encoder=args.patch_encoder, mpp=args.mpp):
            ranked = classifier(bag, candidate_labels=args.labels, top_k=args.top_k, **templates)
            records.append({"slide_id": bag.get("slide_id") or str(source), "predictions": ranked})
    _emit(records, args.output)
    return 0


def command_retrieve(args: argparse.Namespace) -> int:
    """Text -> slides of a dataset (--query), or slide -> candidate texts (--slide): JSON lines."""
    import datasets

    from .bags import save_dataset
    from .inputs import load_bags

    retriever = _pipeline("slide-text-retrieval", args)
    if args.slide:
        if not args.text:
            raise ValueError("--slide ranks candidate texts: give them with --text (repeatable).")
        records = []
        for bag in load_bags(args.slide, encoder=args.patch_encoder, mpp=args.mpp):
            matches = retriever(bag, candidate_texts=args.text, top_k=args.top_k)
            records.append({"slide_id": bag.get("slide_id") or args.slide, "matches": matches})
    else:
        if not (args.index and args.query):
            raise ValueError("give --index DATASET with --query TEXT (repeatable), or --slide INPUT with --text.")
        index = datasets.load_from_disk(args.index)
        if "slide_embedding" not in index.column_names:  # a feature-bag dataset: embed its slides once
            index = retriever.build_index(index, use_faiss=False)  # save_to_disk refuses attached FAISS indexes
            if args.save_index:
                save_dataset(index, args.save_index)
        records = [{"query": query, "matches": retriever(query, index=index, top_k=args.top_k)} for query in args.query]
    _emit(records, args.output)
    return 0


def _pipeline(task: str, args: argparse.Namespace):
    """``transformers.pipeline(task, model=args.model)`` with the PathFLIP tasks registered."""
    from transformers import pipeline

    import modeling_pathflip  # noqa: F401  (registers the tasks, so no trust_remote_code is needed)

    return pipeline(task, model=args.model, trust_remote_code=args.trust_remote_code)


def _emit(records: list[dict], output: str | None) -> None:
    """Print records as JSON lines, and write them to ``output`` when given."""
    lines = [json.dumps(record) for record in records]
    print("\n".join(lines))
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text("\n".join(lines) + "\n")


def command_demo(args: argparse.Namespace) -> int:
    """The whole job on a generated cohort: features, pretraining, evaluation, heatmaps, a Hub-ready folder,
    then captioning and VQA with a small LLM."""
    from .demo import DemoOptions, run_demo

    options = DemoOptions(output=Path(args.output), seed=args.seed, num_slides=args.num_slides,
                          max_steps=args.max_steps, ablation=args.ablation, text_model=args.text_model,
                          learning_rate=args.learning_rate, llm_steps=args.llm_steps)  # fmt: skip
    run_demo(options)
    return 0


def command_eval(args: argparse.Namespace) -> int:
    """Evaluate a model on a feature-bag dataset: metrics.json and metrics.md (zero-shot, retrieval and
    grounding for an alignment model; captions and VQA for an LLM-stage model)."""
    import datasets
    from transformers import AutoConfig

    from eval.generation import evaluate_generation
    from eval.runner import evaluate_model, write_report

    loaded = datasets.load_from_disk(args.dataset)
    if isinstance(loaded, datasets.DatasetDict):
        if args.split not in loaded:
            raise ValueError(f"{args.dataset} has splits {list(loaded)}; choose one with --split.")
        loaded = loaded[args.split]
    model_type = AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code).model_type
    evaluate = evaluate_generation if model_type == "pathflip_generation" else evaluate_model
    metrics = evaluate(args.model, loaded, class_names=args.class_names, trust_remote_code=args.trust_remote_code)
    path = write_report(metrics, args.output)
    print((path.parent / "metrics.md").read_text())
    return 0


def command_push(args: argparse.Namespace) -> int:
    """Check a model folder (complete, every task runs as remote code) or a feature-bag dataset, then upload it
    to the Hub."""
    from model_cards.hub import is_dataset_folder, push_dataset, push_model

    common = {"revision": args.revision, "private": args.private, "token": args.token}
    if args.commit_message:
        common["commit_message"] = args.commit_message
    if is_dataset_folder(args.path):
        commit = push_dataset(args.path, args.repo_id, **common)
    else:
        print(f"checking {args.path}: every file a Hub repo needs, then every task as remote code", flush=True)
        metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else None
        card = {"dataset_name": args.dataset_name, "datasets": args.dataset, "base_models": args.base_model,
                "license": args.license}  # fmt: skip
        card = {key: value for key, value in card.items() if value}
        commit = push_model(args.path, args.repo_id, metrics=metrics, card_options=card, **common)
    print(f"pushed {args.path} to {commit.commit_url}\npin this upload with revision={commit.oid!r}")
    return 0


def command_doctor(args: argparse.Namespace) -> int:
    """Report versions, OpenSlide, the device and writable cache folders."""
    from .doctor import run_checks

    return run_checks()


def _report_failures(failures: dict[str, str]) -> int:
    for reason in failures.values():
        print(f"FAILED {reason}", file=sys.stderr)
    return 1 if failures else 0


def _model_input_arguments(parser: argparse.ArgumentParser, *, json_output: bool = True) -> None:
    parser.add_argument("--patch-encoder", help="encoder for slide inputs (the model's patch encoder)")
    parser.add_argument("--mpp", type=float, help="microns per level-0 pixel, for slides without it")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model folder's own code")
    if json_output:
        parser.add_argument("--output", "-o", help="also write the JSON lines to this file")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `pathflip`."""
    parser = argparse.ArgumentParser(prog="pathflip", description="PathFLIP whole-slide tools")
    commands = parser.add_subparsers(dest="command", required=True)

    _add_data_verbs(commands)
    _add_model_verbs(commands)
    _add_demo_verbs(commands)
    _add_push_verb(commands)
    doctor = commands.add_parser("doctor", help=command_doctor.__doc__)
    doctor.set_defaults(run=command_doctor)
    return parser


def _add_data_verbs(commands) -> None:
    """tile, extract, import, decompose: slides and feature-bag datasets."""
    tile = commands.add_parser("tile", help=command_tile.__doc__)
    _tiling_arguments(tile)
    tile.set_defaults(run=command_tile)

    extract = commands.add_parser("extract", help=command_extract.__doc__)
    _tiling_arguments(extract)
    extract.add_argument("--encoder", default="stain-texture", help="stain-texture, a HF path/id, or timm:<name>")
    extract.add_argument("--batch-size", type=int, default=64)
    extract.add_argument("--num-workers", type=int, default=2, help="slide-reading worker processes")
    extract.add_argument("--parquet", action="store_true", help="also write parquet shards")
    extract.set_defaults(run=command_extract)

    importer = commands.add_parser("import", help=command_import.__doc__)
    importer.add_argument("folder", help="folder of .h5 files (or of .pt files with --coords-dir)")
    importer.add_argument("--output", "-o", required=True, help="dataset folder to write")
    importer.add_argument("--coords-dir", help="CLAM/TRIDENT patches .h5 folder holding the coords of .pt bags")
    importer.add_argument("--patch-size-level0", type=int, help="patch side in level-0 px, if the files lack it")
    importer.add_argument("--mpp", type=float, help="microns per level-0 pixel, if the files lack it")
    importer.add_argument("--captions", help="CSV or JSON with slide_id and caption columns")
    importer.set_defaults(run=command_import)

    decompose = commands.add_parser("decompose", help=command_decompose.__doc__)
    decompose.add_argument("dataset", help="feature-bag dataset folder (save_to_disk)")
    decompose.add_argument("--model", required=True, help="local causal LM folder or Hub id")
    decompose.add_argument("--output", "-o", required=True, help="dataset folder to write")
    decompose.add_argument("--batch-size", type=int, default=8)
    decompose.add_argument("--max-new-tokens", type=int, default=200)
    decompose.set_defaults(run=command_decompose)


def _add_model_verbs(commands) -> None:
    """heatmap, classify, retrieve: a trained model's pipelines."""
    heatmap = commands.add_parser("heatmap", help=command_heatmap.__doc__)
    heatmap.add_argument("model", help="a PathFLIP folder or Hub id")
    heatmap.add_argument("input", help="a bag (.h5, extracted .safetensors, dataset folder) or a slide file")
    heatmap.add_argument("--sentence", "-s", action="append", required=True, help="text to ground (repeatable)")
    heatmap.add_argument("--output", "-o", required=True, help="folder for the PNG and GeoJSON files")
    heatmap.add_argument("--slide", help="the slide, for a thumbnail background when input is a bag")
    heatmap.add_argument("--top-k", type=int, default=20, help="patches written to the GeoJSON")
    _model_input_arguments(heatmap, json_output=False)
    heatmap.set_defaults(run=command_heatmap)

    classify = commands.add_parser("classify", help=command_classify.__doc__)
    classify.add_argument("model", help="a PathFLIP folder or Hub id")
    classify.add_argument("inputs", nargs="+", help="bags (.h5, .safetensors), dataset folders or slide files")
    classify.add_argument("--labels", nargs="+", required=True, help="candidate class names")
    classify.add_argument("--template", action="append", help="prompt template with {} (repeatable: an ensemble)")
    classify.add_argument("--top-k", type=int, help="labels to report per slide (default: all)")
    _model_input_arguments(classify)
    classify.set_defaults(run=command_classify)

    retrieve = commands.add_parser("retrieve", help=command_retrieve.__doc__)
    retrieve.add_argument("model", help="a PathFLIP folder or Hub id")
    retrieve.add_argument("--index", help="feature-bag dataset folder, or one saved with --save-index")
    retrieve.add_argument("--query", action="append", help="text to search slides for (repeatable)")
    retrieve.add_argument("--save-index", help="save the embedded dataset here, to reuse with --index")
    retrieve.add_argument("--slide", help="a bag or slide to rank --text candidates for")
    retrieve.add_argument("--text", action="append", help="candidate text for --slide (repeatable)")
    retrieve.add_argument("--top-k", type=int, default=5)
    _model_input_arguments(retrieve)
    retrieve.set_defaults(run=command_retrieve)


def _add_demo_verbs(commands) -> None:
    """demo and eval."""
    demo = commands.add_parser("demo", help=command_demo.__doc__)
    demo.add_argument("--output", "-o", default="demo_output", help="folder for everything (default demo_output)")
    demo.add_argument("--seed", type=int, default=0, help="cohort, split and training seed")
    demo.add_argument("--num-slides", type=int, default=150)
    demo.add_argument("--max-steps", type=int, default=200, help="training steps")
    demo.add_argument("--learning-rate", type=float, default=5e-4)
    demo.add_argument("--llm-steps", type=int, default=300, help="steps of each LLM stage (0: skip captioning/VQA)")
    demo.add_argument("--ablation", choices=["no-region-loss", "no-tra"], help="train an ablated model instead")
    demo.add_argument(
        "--text-model",
        choices=["auto", "minilm", "scratch"],
        default="auto",
        help="text tower: all-MiniLM-L6-v2 (frozen), a small BERT from scratch, or minilm when installed",
    )
    demo.set_defaults(run=command_demo)

    evaluate = commands.add_parser("eval", help=command_eval.__doc__)
    evaluate.add_argument("model", help="a PathFLIP folder or Hub id")
    evaluate.add_argument("dataset", help="feature-bag dataset folder (save_to_disk)")
    evaluate.add_argument("--split", default="test", help="split of a DatasetDict (default test)")
    evaluate.add_argument("--class-names", nargs="+", help="zero-shot classes (default: the label column's names)")
    evaluate.add_argument("--output", "-o", required=True, help="folder for metrics.json and metrics.md")
    evaluate.add_argument("--trust-remote-code", action="store_true", help="run the model folder's own code")
    evaluate.set_defaults(run=command_eval)


def _add_push_verb(commands) -> None:
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pathflip` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:  # bad input: say what and how to fix it, without a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

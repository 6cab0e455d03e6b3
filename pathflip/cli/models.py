"""Verbs on a trained model: heatmap, classify, retrieve, fit-grounding, eval."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from pathlib import Path

from modeling_pathflip.pipeline_options_pathflip import OPTION_CHECKS

from ..files import write_text
from .options import (
    check_replaceable_output,
    cosine,
    dataset_reference,
    existing_input,
    model_reference,
    nonempty,
    nonnegative_float,
    output_file,
    output_folder,
    positive_float,
    positive_int,
    seed,
)


def command_heatmap(args: argparse.Namespace) -> int:
    """Ground sentences in a slide: heatmap PNG over the thumbnail (or the patch grid) and GeoJSON."""
    _check_slide_options(args, [args.input])
    grounder = _pipeline("slide-grounding", args)
    options = {"patch_encoder": args.patch_encoder, "mpp": args.mpp, "top_k": args.top_k, "output_dir": args.output}
    for result in grounder(args.input, sentences=args.sentence, slide=args.slide, **options):
        print(f"{result['sentence']!r}: {result['png_file']} {result['geojson_file']}")
    return 0


def command_classify(args: argparse.Namespace) -> int:
    """Zero-shot slide classification: one JSON line per slide with the ranked labels."""
    _check_json_output(args)
    _check_slide_options(args, args.inputs)
    OPTION_CHECKS["candidate_labels"]("--labels", args.labels)  # the pipeline's rules, named as the command spells it
    classifier = _pipeline("zero-shot-slide-classification", args)
    templates = {"hypothesis_template": args.template} if args.template else {}

    def records():
        for source in args.inputs:
            for name, bag in _inputs(source):
                ranked = classifier(bag, candidate_labels=args.labels, top_k=args.top_k,
                                    patch_encoder=args.patch_encoder, mpp=args.mpp, **templates)  # fmt: skip
                yield {"slide_id": name, "predictions": ranked}

    _emit(records(), args)
    return 0


def command_retrieve(args: argparse.Namespace) -> int:
    """Text -> slides of a dataset (--query), or slide -> candidate texts (--slide): JSON lines."""
    _check_json_output(args)
    if args.save_index:
        check_replaceable_output(args.save_index, inputs=[args.index] if args.index else [], overwrite=args.overwrite,
                                 option="--save-index")  # fmt: skip
    _check_retrieve_mode(args)
    _check_slide_options(args, [args.slide] if args.slide else [])
    retriever = _pipeline("slide-text-retrieval", args)
    if args.slide:
        records = ({"slide_id": name, "matches": retriever(bag, candidate_texts=args.text, top_k=args.top_k,
                                                           patch_encoder=args.patch_encoder, mpp=args.mpp)}
                   for name, bag in _inputs(args.slide))  # fmt: skip
    else:
        index = _search_index(args, retriever)
        records = ({"query": query, "matches": retriever(query, index=index, top_k=args.top_k)} for query in args.query)
    _emit(records, args)
    return 0


def _check_slide_options(args: argparse.Namespace, inputs: list[str]) -> None:
    """--patch-encoder and --mpp say how to encode a slide file: refused when no input is one (a bag is encoded)."""
    from ..processing.extract import SLIDE_SUFFIXES

    given = [option for option, value in (("--patch-encoder", args.patch_encoder), ("--mpp", args.mpp)) if value]
    if given and not any(Path(source).suffix.lower() in SLIDE_SUFFIXES for source in inputs):
        raise ValueError(f"{' and '.join(given)} say{'' if len(given) > 1 else 's'} how to encode a slide file, but no "
                         "input is one (bags and datasets are already encoded); leave them out.")  # fmt: skip


def _check_retrieve_mode(args: argparse.Namespace) -> None:
    """One of the two searches, with only its own options (the other's would be ignored)."""
    if args.slide:
        if not args.text:
            raise ValueError("--slide ranks candidate texts: give them with --text (repeatable).")
        if args.index or args.query or args.save_index:
            raise ValueError("--slide ranks --text candidates for one slide; --index, --query and --save-index search "
                             "a dataset for texts: give one of the two searches.")  # fmt: skip
    elif not (args.index and args.query):
        raise ValueError("give --index DATASET with --query TEXT (repeatable), or --slide INPUT with --text.")
    elif args.text:
        raise ValueError("--text gives candidates for --slide; with --index, search with --query.")
    for option in ("query", "text"):  # the pipeline's rule for a list of texts, named as the command spells it
        if getattr(args, option):
            OPTION_CHECKS["candidate_texts"](f"--{option}", getattr(args, option))


def _search_index(args: argparse.Namespace, retriever):
    """The ``--index`` dataset with one unit slide embedding per row (embedded here, and saved with
    ``--save-index``, when it is a feature-bag dataset)."""
    import datasets

    from ..processing.bags import save_dataset

    index = datasets.load_from_disk(args.index)
    if isinstance(index, datasets.DatasetDict):
        raise ValueError(f"--index {args.index} has splits {list(index)}; give one split's folder, e.g. "
                         f"{Path(args.index) / next(iter(index))}.")  # fmt: skip
    if "slide_embedding" in index.column_names:
        if args.save_index:
            raise ValueError(f"--index {args.index} already holds slide embeddings; leave out --save-index.")
        return index
    index = retriever.build_index(index, use_faiss=False)  # save_to_disk refuses attached FAISS indexes
    if args.save_index:
        save_dataset(index, args.save_index)
    return index


def _inputs(source: str):
    """``(slide id, input)`` pairs of one command-line input: a dataset folder's rows one at a time, else the path
    itself (the pipeline reads it, encoding a slide file as the model records)."""
    path = Path(source)
    if path.is_dir():
        from ..processing.inputs import iter_bags

        for number, bag in enumerate(iter_bags(path)):
            yield str(bag.get("slide_id") or f"{path.name}[{number}]"), bag
    else:
        yield path.stem, str(path)


def command_eval(args: argparse.Namespace) -> int:
    """Evaluate a model on a feature-bag dataset: metrics.json and metrics.md (zero-shot, retrieval and
    grounding for an alignment model; captions and VQA for an LLM-stage model)."""
    from transformers import AutoConfig

    from ..eval.generation import evaluate_generation
    from ..eval.runner import evaluate_model, write_report

    loaded = _dataset_split(args)
    model_type = AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code).model_type
    options = {"class_names": args.class_names, "trust_remote_code": args.trust_remote_code}
    if model_type == "pathflip_generation":
        metrics = evaluate_generation(args.model, loaded, **options)
    else:
        metrics = evaluate_model(args.model, loaded, label_column=args.label_column, **options)
    path = write_report(metrics, args.output)
    print((path.parent / "metrics.md").read_text())
    return 0


def command_fit_grounding(args: argparse.Namespace) -> int:
    """Fit a patch-sentence grounding head on the training bags of a trained model (its own weights stay as they
    are) and save the model with it: grounding (`get_grounding`, `pathflip heatmap`) and zero-shot classification
    then read it, in the pipelines and in `pathflip eval`."""
    from transformers import AutoModel, AutoProcessor

    from modeling_pathflip import PathFLIPModel, save_pretrained_with_pipelines

    from ..files import atomic_path
    from ..training.grounding_head import GroundingHeadOptions, fit_grounding_head

    check_replaceable_output(args.output, inputs=[args.model, args.dataset], overwrite=args.overwrite)
    names = {field.name for field in dataclasses.fields(GroundingHeadOptions)}
    options = GroundingHeadOptions(**{name: value for name, value in vars(args).items() if name in names})
    dataset = _dataset_split(args)
    model = AutoModel.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    if not isinstance(model, PathFLIPModel):
        raise ValueError(f"{args.model} holds a {type(model).__name__}; fit-grounding takes a PathFLIP alignment "
                         "model (what pathflip train saves).")  # fmt: skip
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    fit_grounding_head(model, processor, dataset, options=options, caption_column=args.caption_column)
    with atomic_path(args.output) as folder:
        save_pretrained_with_pipelines(model, processor, folder)
    print(f"saved the model with its grounding head to {args.output}")
    return 0


WHOLE = "(no splits)"


def _dataset_split(args: argparse.Namespace):
    """Split ``args.split`` of the bag dataset ``args.dataset`` (a folder, parquet files or a Hub id). A dataset
    without splits is read whole, or, when it has a ``split`` column, as its rows of that split: its training rows
    must not be evaluated with its test rows."""
    from ..processing.bags import load_bag_dataset

    splits = load_bag_dataset(args.dataset, default_split=WHOLE)
    if WHOLE in splits:
        data = splits[WHOLE]
        if "split" in data.column_names and len(values := sorted(set(data["split"]), key=str)) > 1:
            data = data.filter(lambda split: split == args.split, input_columns="split")
            if not len(data):
                raise ValueError(f"--split {args.split!r}: no row of {args.dataset} has it in its 'split' column "
                                 f"(values: {values}).")  # fmt: skip
            print(f"{len(data)} rows of {args.dataset} with split {args.split!r} (its 'split' column)")
    elif args.split not in splits:
        raise ValueError(f"--split {args.split!r} is not a split of {args.dataset}; it has {list(splits)}.")
    else:
        data = splits[args.split]
    if not len(data):
        raise ValueError(f"{args.dataset} ({args.split}) has no rows; give a dataset with slides in it.")
    return data


def _pipeline(task: str, args: argparse.Namespace):
    """``transformers.pipeline(task, model=args.model)`` with the PathFLIP tasks registered."""
    from transformers import pipeline

    import modeling_pathflip  # noqa: F401  (registers the tasks, so no trust_remote_code is needed)

    return pipeline(task, model=args.model, trust_remote_code=args.trust_remote_code)


def _emit(records, args: argparse.Namespace) -> None:
    """Print each record as a JSON line as soon as it is made, then write them all to ``args.output`` (one
    atomic write) when given."""
    lines = []
    for record in records:
        lines.append(json.dumps(record))
        print(lines[-1], flush=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_text(Path(args.output), "\n".join(lines) + "\n")


def _check_json_output(args: argparse.Namespace) -> None:
    """Refuse an ``--output`` file that is one of the inputs, or that exists without ``--overwrite``."""
    if not args.output:
        return
    inputs = [*getattr(args, "inputs", []), args.index if getattr(args, "index", None) else None,
              getattr(args, "slide", None)]  # fmt: skip
    output = Path(args.output).expanduser().resolve()
    for source in filter(None, inputs):
        if Path(source).expanduser().resolve() == output:
            raise ValueError(f"--output {args.output} is the input {source}; write the results to a new file.")
    if output.exists() and not args.overwrite:
        raise ValueError(f"--output {args.output} already exists; pass --overwrite to replace it, or choose a new "
                         "file.")  # fmt: skip


def _model_input_arguments(parser: argparse.ArgumentParser, *, json_output: bool = True) -> None:
    parser.add_argument("--patch-encoder", help="encoder for slide inputs (default: the one the model records)")
    parser.add_argument("--mpp", type=positive_float, help="microns per level-0 pixel, for slides without it")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model folder's own code")
    if json_output:
        parser.add_argument("--output", "-o", type=output_file, help="also write the JSON lines to this file")
        parser.add_argument("--overwrite", action="store_true",
                            help="replace --output if it exists (retrieve: and --save-index)")  # fmt: skip


def add_verbs(commands) -> None:
    """heatmap, classify, retrieve, fit-grounding, eval: a trained model's pipelines, grounding head and evaluation."""
    heatmap = commands.add_parser("heatmap", help=command_heatmap.__doc__)
    heatmap.add_argument("model", type=model_reference, help="a PathFLIP folder or Hub id")
    heatmap.add_argument("input", type=existing_input,
                         help="a bag (.h5, extracted .safetensors, dataset folder) or a slide file")  # fmt: skip
    heatmap.add_argument("--sentence", "-s", action="append", required=True, help="text to ground (repeatable)")
    heatmap.add_argument("--output", "-o", type=output_folder, required=True,
                         help="folder for the PNG and GeoJSON files")
    heatmap.add_argument("--slide", help="the slide, for a thumbnail background when input is a bag")
    heatmap.add_argument("--top-k", type=positive_int, default=20, help="patches written to the GeoJSON")
    _model_input_arguments(heatmap, json_output=False)
    heatmap.set_defaults(run=command_heatmap)

    classify = commands.add_parser("classify", help=command_classify.__doc__)
    classify.add_argument("model", type=model_reference, help="a PathFLIP folder or Hub id")
    classify.add_argument("inputs", nargs="+", type=existing_input,
                          help="bags (.h5, .safetensors), dataset folders or slide files")  # fmt: skip
    classify.add_argument("--labels", nargs="+", type=nonempty, required=True, help="candidate class names")
    classify.add_argument("--template", action="append", help="prompt template with {} (repeatable: an ensemble)")
    classify.add_argument("--top-k", type=positive_int, help="labels to report per slide (default: all)")
    _model_input_arguments(classify)
    classify.set_defaults(run=command_classify)

    retrieve = commands.add_parser("retrieve", help=command_retrieve.__doc__)
    retrieve.add_argument("model", type=model_reference, help="a PathFLIP folder or Hub id")
    retrieve.add_argument("--index", type=dataset_reference,
                          help="feature-bag dataset folder, or one saved with --save-index")
    retrieve.add_argument("--query", action="append", help="text to search slides for (repeatable)")
    retrieve.add_argument("--save-index", type=output_folder,
                          help="save the embedded dataset in this new folder, to reuse with --index")
    retrieve.add_argument("--slide", type=existing_input, help="a bag or slide to rank --text candidates for")
    retrieve.add_argument("--text", action="append", help="candidate text for --slide (repeatable)")
    retrieve.add_argument("--top-k", type=positive_int, default=5)
    _model_input_arguments(retrieve)
    retrieve.set_defaults(run=command_retrieve)

    _add_fit_grounding(commands)

    evaluate = commands.add_parser("eval", help=command_eval.__doc__)
    evaluate.add_argument("model", type=model_reference, help="a PathFLIP folder or Hub id")
    evaluate.add_argument("dataset", type=dataset_reference, help="feature-bag dataset (folder, parquet or Hub id)")
    evaluate.add_argument("--split", default="test", help="split of a DatasetDict (default test)")
    evaluate.add_argument("--class-names", nargs="+", type=nonempty, help="zero-shot classes (default: the labels')")
    evaluate.add_argument("--label-column", default="label", help="column of the diagnoses (class index or name)")
    evaluate.add_argument("--output", "-o", type=output_folder, required=True,
                          help="folder for metrics.json and metrics.md")
    evaluate.add_argument("--trust-remote-code", action="store_true", help="run the model folder's own code")
    evaluate.set_defaults(run=command_eval)


def _add_fit_grounding(commands) -> None:
    """fit-grounding, whose head options default to `GroundingHeadOptions`' own."""
    fit = commands.add_parser("fit-grounding", help=command_fit_grounding.__doc__)
    fit.add_argument("model", type=model_reference, help="a PathFLIP folder or Hub id")
    fit.add_argument("dataset", type=dataset_reference,
                     help="the feature-bag dataset the model was trained on (folder, parquet or Hub id)")
    fit.add_argument("--split", default="train", help="split of a DatasetDict to fit on (default train)")
    fit.add_argument("--output", "-o", type=output_folder, required=True, help="new folder for the model with its head")
    fit.add_argument("--overwrite", action="store_true", help="replace --output if it already holds files")
    fit.add_argument("--caption-column", default="caption", help="column of the captions (default caption)")
    # The head's options default to GroundingHeadOptions' own (SUPPRESS: only options given reach it).
    head_option = functools.partial(fit.add_argument, default=argparse.SUPPRESS)
    head_option("--members", type=positive_int, help="independently fitted heads averaged (default 5)")
    head_option("--steps", type=positive_int, help="optimisation steps (default 400)")
    head_option("--slides-per-step", type=positive_int, help="default 32")
    head_option("--learning-rate", type=positive_float, help="default 2e-3")
    head_option("--paraphrase-threshold", type=cosine,
                help="text cosine from which two sentences count as the same finding (default 0.8)")
    head_option("--presence-sharpness", type=positive_float,
                help="inverse temperature of the soft maximum and minimum over a slide's patches (default 3)")
    head_option("--negative-threshold", type=cosine,
                help="a slide counts against a sentence only if none of its own sentences reaches this cosine "
                     "(default 0.45)")  # fmt: skip
    head_option("--slide-noise", type=nonnegative_float,
                help="feature standard deviations of a random shift per slide and step, hiding stain (default 0.3)")
    head_option("--presence-pooling", choices=["mixed", "max", "mean"],
                help="mixed (default): each sentence pools its patch scores as its text says (a finding anywhere, an "
                     "extent, an absence); max: every sentence by the soft maximum; mean: every sentence by the "
                     "mean, weighing every patch alike whatever the text")  # fmt: skip
    head_option("--partial-label-weight", type=nonnegative_float,
                help="weight of the term that assigns each patch to one of its slide's sentences (default 1; 0 "
                     "leaves it out)")  # fmt: skip
    head_option("--presence-weight", type=nonnegative_float,
                help="weight of the term that pools a sentence's patch scores into whether the slide mentions it "
                     "(default 1; 0 leaves it out)")  # fmt: skip
    head_option("--attention-weight", type=nonnegative_float,
                help="how much the model's attention scores add to the head's when grounding (default 0.5; 0: the "
                     "head alone)")  # fmt: skip
    head_option("--seed", type=seed, help="default 0")
    fit.add_argument("--trust-remote-code", action="store_true", help="run the model folder's own code")
    fit.set_defaults(run=command_fit_grounding)

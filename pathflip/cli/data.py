"""Verbs on slides and feature-bag datasets: tile, extract, import, decompose."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..files import safe_name, write_text
from ..processing.tiler import TilingOptions
from ..processing.tissue import TISSUE_METHODS
from .options import (
    check_replaceable_output,
    dataset_reference,
    fraction,
    language_model_reference,
    nonempty,
    nonnegative_int,
    output_folder,
    positive_float,
    positive_int,
)


def _tiling_arguments(parser: argparse.ArgumentParser, slides: str = "+") -> None:
    parser.add_argument("slides", nargs=slides, help="slide files or folders of slides")
    parser.add_argument("--output", "-o", type=output_folder, required=True, help="output folder")
    parser.add_argument("--mpp", type=positive_float, help="microns per level-0 pixel (overrides slide metadata)")
    parser.add_argument("--target-mpp", type=positive_float, default=0.5, help="patch resolution (default 0.5, ~20x)")
    parser.add_argument("--patch-size", type=positive_int, default=256, help="patch side in pixels (default 256)")
    parser.add_argument("--min-tissue", type=fraction, default=0.25, help="minimum tissue fraction of a patch")
    parser.add_argument("--tissue-method", choices=TISSUE_METHODS, default="od",
                        help="tissue detector: od (optical density above the slide's glass; keeps pale tissue) or "
                             "saturation (the earlier Otsu threshold on saturation)")  # fmt: skip
    parser.add_argument("--tissue-threshold", type=positive_float,
                        help="the detector's threshold instead of its own: optical density above the glass "
                             "(od, default 0.02 or more on noisy glass) or saturation (saturation, default "
                             "Otsu's)")  # fmt: skip


def _tiling_options(args: argparse.Namespace) -> TilingOptions:
    return TilingOptions(target_mpp=args.target_mpp, patch_size=args.patch_size, min_tissue_fraction=args.min_tissue,
                         tissue_method=args.tissue_method, tissue_threshold=args.tissue_threshold)  # fmt: skip


def command_tile(args: argparse.Namespace) -> int:
    """Tile slides: tissue overlays and patch coordinates, without features."""
    from ..processing.extract import check_has_patches, find_slides
    from ..processing.reader import SlideError, SlideReader
    from ..processing.tiler import tile_slide
    from ..processing.tissue import save_overlay

    output, failures, options = Path(args.output), {}, _tiling_options(args)
    for path in find_slides(args.slides):
        try:
            with SlideReader(path, mpp=args.mpp) as reader:
                tiling = tile_slide(reader, options)
        except SlideError as error:
            failures[path.stem] = str(error)
            continue
        name = safe_name(tiling.slide_id)
        save_overlay(tiling.thumbnail, tiling.mask, output / "tissue" / f"{name}.png", kept=tiling.kept,
                     non_glass=tiling.non_glass)  # fmt: skip
        try:
            check_has_patches(tiling, options)
        except SlideError as error:  # its overlay shows what the detector saw
            failures[path.stem] = str(error)
            continue
        record = {
            "slide_id": tiling.slide_id,
            "patch_size_level0": tiling.patch_size_level0,
            "mpp": tiling.mpp,
            "tissue": tiling.quality,
            "coords": tiling.coords.tolist(),
        }
        write_text(output / "coords" / f"{name}.json", json.dumps(record))
        quality = tiling.quality
        print(f"{tiling.slide_id}: {len(tiling.coords)} patches of {tiling.patch_size_level0} level-0 px; tissue "
              f"{quality['tissue_fraction']:.1%} of the slide, patches hold {quality['non_glass_kept']:.0%} of what "
              "differs from glass")  # fmt: skip
        for warning in quality["warnings"]:
            print(f"WARNING {tiling.slide_id}: {warning}; check tissue/{name}.png", file=sys.stderr)
    return _report_failures(failures)


def command_extract(args: argparse.Namespace) -> int:
    """Extract feature bags into a resumable output folder and a `datasets` dataset (by split, with captions and
    labels, when a cohort table describes the slides)."""
    from ..processing.encoders import load_encoder
    from ..processing.extract import ExtractionOptions, SlideSpec, find_slides, run_extraction

    if bool(args.slides) == bool(args.table):
        raise ValueError("give the slides (files or folders) or --table cohort.csv, one of the two.")
    tiling = _tiling_options(args)
    cohort = _cohort(args)
    slides = find_slides(args.slides) if args.slides else [SlideSpec(row.slide, row.slide_id, row.mpp)
                                                            for row in cohort.rows]  # fmt: skip
    options = ExtractionOptions(
        tiling=tiling,
        mpp=args.mpp,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        parquet=args.parquet,
    )
    report = run_extraction(slides, args.output, load_encoder(args.encoder), options, cohort=cohort)
    if report.is_main_process:
        print(report.summary())
        if report.dataset:
            print(f"dataset: {report.dataset}" + (f" (classes, label order: {cohort.class_names})" if cohort else ""))
    return 1 if report.failed else 0


def _cohort(args: argparse.Namespace):
    """The cohort table of ``--table`` (None without one)."""
    if args.class_order and not args.table:
        raise ValueError("--class-order orders the labels of a cohort table: give --table too.")
    if not args.table:
        return None
    from ..processing.cohort_table import read_cohort_table

    return read_cohort_table(args.table, class_order=args.class_order)


def command_import(args: argparse.Namespace) -> int:
    """Import TRIDENT/CLAM .h5 or .pt bags into a feature-bag dataset (by split, with captions and labels, when a
    cohort table describes the slides)."""
    from ..processing import importers

    if args.captions and args.table:
        raise ValueError(f"--captions {args.captions} and --table {args.table} both give captions; put them in the "
                         "table's caption column and leave out --captions.")  # fmt: skip
    inputs = [path for path in (args.folder, args.coords_dir, args.captions, args.table) if path]
    check_replaceable_output(args.output, inputs=inputs, overwrite=args.overwrite)
    cohort = _cohort(args)
    options = {
        "output": args.output,
        "patch_size_level0": args.patch_size_level0,
        "mpp": args.mpp,
        "captions": args.captions,
        "cohort": cohort,
    }
    if args.coords_dir:
        dataset = importers.import_pt_folder(args.folder, coords_dir=args.coords_dir, **options)
    else:
        dataset = importers.import_h5_folder(args.folder, **options)
    splits = dataset if hasattr(dataset, "keys") else {"": dataset}
    found = {slide_id for split in splits.values() for slide_id in split["slide_id"]}
    print(f"{len(found)} slides -> {args.output}" + (f" (splits {sorted(splits)})" if cohort else ""))
    missing = sorted({row.slide_id for row in cohort.rows} - found) if cohort else []
    for slide_id in missing:
        print(f"MISSING {slide_id}: no <slide_id>.h5 / .pt in {args.folder}", file=sys.stderr)
    return 1 if missing else 0


def command_check(args: argparse.Namespace) -> int:
    """Check every row of a feature-bag dataset (what training checks before its first step)."""
    from ..processing.bags import check_bag_dataset, load_bag_dataset

    splits = load_bag_dataset(args.dataset)  # what training reads; a plain dataset is its train split
    if args.split:
        if args.split not in splits:
            raise ValueError(f"--split {args.split!r} is not a split of {args.dataset}; it has {list(splits)}.")
        splits = {args.split: splits[args.split]}
    for name, split in splits.items():
        rows = check_bag_dataset(split, f"{args.dataset} [{name}]", patch_dim=args.patch_dim,
                                 require_caption=args.captions)  # fmt: skip
        print(f"{name}: {rows} rows, all usable")
    return 0


def command_decompose(args: argparse.Namespace) -> int:
    """Decompose captions into a `subcaptions` column with a local causal LM."""
    import datasets

    from ..processing.bags import save_dataset
    from ..training.decompose import decompose_dataset

    check_replaceable_output(args.output, inputs=[args.dataset, args.model], overwrite=args.overwrite)
    loaded = datasets.load_from_disk(args.dataset)
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else {"": loaded}
    result = {}
    for name, split in splits.items():
        result[name], report = decompose_dataset(
            split, args.model, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
        )
        print(f"{name or 'dataset'}: {report.rows} captions, {report.fallbacks} kept the rule-based split")
    save_dataset(datasets.DatasetDict(result) if isinstance(loaded, datasets.DatasetDict) else result[""], args.output)
    return 0


def _report_failures(failures: dict[str, str]) -> int:
    for reason in failures.values():
        print(f"FAILED {reason}", file=sys.stderr)
    return 1 if failures else 0


def add_verbs(commands) -> None:
    """tile, extract, import, check, decompose: slides and feature-bag datasets."""
    tile = commands.add_parser("tile", help=command_tile.__doc__)
    _tiling_arguments(tile)
    tile.set_defaults(run=command_tile)

    extract = commands.add_parser("extract", help=command_extract.__doc__)
    _tiling_arguments(extract, slides="*")
    _table_arguments(extract)
    extract.add_argument("--encoder", default="stain-texture", help="stain-texture, a HF path/id, or timm:<name>")
    extract.add_argument("--batch-size", type=positive_int, default=64)
    extract.add_argument("--num-workers", type=nonnegative_int, default=2, help="slide-reading worker processes")
    extract.add_argument("--parquet", action="store_true", help="also write parquet shards")
    extract.set_defaults(run=command_extract)

    importer = commands.add_parser("import", help=command_import.__doc__)
    importer.add_argument("folder", help="folder of .h5 files (or of .pt files with --coords-dir)")
    importer.add_argument("--output", "-o", type=output_folder, required=True, help="new dataset folder to write")
    importer.add_argument("--overwrite", action="store_true", help="replace --output if it already holds files")
    importer.add_argument("--coords-dir", help="CLAM/TRIDENT patches .h5 folder holding the coords of .pt bags")
    importer.add_argument("--patch-size-level0", type=positive_int, help="patch side in level-0 px, if files lack it")
    importer.add_argument("--mpp", type=positive_float, help="microns per level-0 pixel, if the files lack it")
    importer.add_argument("--captions", help="CSV or JSON with slide_id and caption columns")
    _table_arguments(importer)
    importer.set_defaults(run=command_import)

    check = commands.add_parser("check", help=command_check.__doc__)
    check.add_argument("dataset", type=dataset_reference,
                       help="feature-bag dataset: folder (save_to_disk), parquet files or Hub id")  # fmt: skip
    check.add_argument("--split", help="one split (default: all; a dataset without splits is 'train')")
    check.add_argument("--patch-dim", type=positive_int, help="the feature dimension the model reads")
    check.add_argument("--captions", action="store_true", help="every row needs a caption (training does)")
    check.set_defaults(run=command_check)

    decompose = commands.add_parser("decompose", help=command_decompose.__doc__)
    decompose.add_argument("dataset", type=dataset_reference, help="feature-bag dataset folder (save_to_disk)")
    decompose.add_argument("--model", type=language_model_reference, required=True,
                           help="local causal LM folder or Hub id")  # fmt: skip
    decompose.add_argument("--output", "-o", type=output_folder, required=True, help="new dataset folder to write")
    decompose.add_argument("--overwrite", action="store_true", help="replace --output if it already holds files")
    decompose.add_argument("--batch-size", type=positive_int, default=8)
    decompose.add_argument("--max-new-tokens", type=positive_int, default=200)
    decompose.set_defaults(run=command_decompose)


def _table_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", help="cohort table (CSV/TSV/parquet): slide, slide_id, mpp, caption, label, split")
    parser.add_argument("--class-order", nargs="+", type=nonempty, help="label order of the classes (default: sorted)")

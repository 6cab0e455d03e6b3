"""The authors' released weights: convert their checkpoint, and run their zero-shot benchmark on any model."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import check_replaceable_output, model_reference, output_folder, text_model_reference


def command_convert(args: argparse.Namespace) -> int:
    """Convert the PathFLIP authors' released checkpoint (PathFLIP2 architecture) into a model folder."""
    from ..conversion.pathflip2 import convert_checkpoint

    check_replaceable_output(args.output, inputs=[args.checkpoint, args.hparams, args.text_model],
                             overwrite=args.overwrite)  # fmt: skip
    output = convert_checkpoint(args.checkpoint, args.hparams, args.text_model, args.output,
                                allow_pickle=args.allow_pickle)  # fmt: skip
    print(f"converted {args.checkpoint} -> {output} (load it with AutoModel.from_pretrained or pipeline())")
    return 0


def command_benchmark(args: argparse.Namespace) -> int:
    """Score a model on a benchmark; pathflip2-zero-shot: the authors' zero-shot slide classification."""
    import torch
    from transformers import AutoModel, AutoProcessor

    import modeling_pathflip  # noqa: F401  (registers the model types)

    from ..eval.benchmarks import PATHFLIP2_ZERO_SHOT, run_zero_shot_benchmark, write_benchmark

    unknown = sorted(set(args.datasets or []) - set(PATHFLIP2_ZERO_SHOT))
    if unknown:
        raise ValueError(f"--datasets {unknown} are not in the benchmark; choose from {sorted(PATHFLIP2_ZERO_SHOT)}.")
    model = AutoModel.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    results = run_zero_shot_benchmark(model, processor, args.features, split=args.split, datasets=args.datasets,
                                      dtype=torch.bfloat16 if args.bf16 else torch.float32)  # fmt: skip
    if not any(result["slides_found"] for result in results.values()):
        raise ValueError(f"--features {args.features} holds none of the benchmark's slides: name each file "
                         "<slide_id>.h5 (e.g. from the split lists in pathflip/eval/protocols), directly in the "
                         "folder or in a subfolder per dataset. Nothing was written.")  # fmt: skip
    path = write_benchmark(results, args.output, name=Path(args.model).name)
    print(path.read_text())
    return 0


def add_verbs(commands) -> None:
    """convert, benchmark."""
    convert = commands.add_parser("convert", help=command_convert.__doc__)
    convert.add_argument("checkpoint", help="the released weights: Lightning .ckpt, pytorch_model.bin or .safetensors")
    convert.add_argument("--hparams", required=True, help="the run's Lightning hparams.yaml")
    convert.add_argument("--text-model", type=text_model_reference, required=True,
                         help="the text tower (folder or Hub id; emilyalsentzer/Bio_ClinicalBERT for the release): "
                         "tokenizer, config, and weights the checkpoint lacks")  # fmt: skip
    convert.add_argument("--output", "-o", type=output_folder, required=True, help="new model folder to write")
    convert.add_argument("--overwrite", action="store_true", help="replace --output if it already holds files")
    convert.add_argument("--allow-pickle", action="store_true",
                         help="read a checkpoint holding Python objects (runs code from it: only for a trusted file)")
    convert.set_defaults(run=command_convert)

    benchmark = commands.add_parser("benchmark", help=command_benchmark.__doc__)
    benchmark.add_argument("name", choices=["pathflip2-zero-shot"], help="the benchmark")
    benchmark.add_argument("model", type=model_reference, help="a PathFLIP or PathFLIP2 folder or Hub id")
    benchmark.add_argument("--features", required=True, help="folder of TRIDENT/CLAM <slide_id>.h5 feature files")
    benchmark.add_argument("--split", choices=["test", "train"], default="test")
    benchmark.add_argument("--datasets", nargs="+", help="a subset of Camelyon16 CPTAC_NSCLC TCGA_RCC TCGA_NSCLC")
    benchmark.add_argument("--output", "-o", type=output_folder, required=True,
                           help="folder for benchmark.json and benchmark.md")
    benchmark.add_argument("--bf16", action="store_true", help="run the model in bfloat16, as the authors did")
    benchmark.add_argument("--trust-remote-code", action="store_true", help="run the model folder's own code")
    benchmark.set_defaults(run=command_benchmark)

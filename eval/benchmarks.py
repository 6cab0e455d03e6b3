"""`pathflip benchmark pathflip2-zero-shot`: the PathFLIP authors' zero-shot slide classification benchmark.

The split lists ship in ``protocols/pathflip2_zero_shot`` (see its README for their provenance). Scoring follows
the authors' script: one prompt per class, all prompts of a dataset embedded in one batch, slide and prompt
embeddings L2-normalised, probabilities = softmax of the raw cosines (no logit scale), prediction = argmax;
accuracy; AUC of the class-1 probability for two classes, one-vs-rest macro for more; binary F1 for two classes,
weighted F1 for more; slides without a feature file are dropped (and counted). Any PathFLIP or PathFLIP2 model
can be scored; the published rows of their Table 2 are printed beside ours.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score
from tqdm.auto import tqdm

from ..files import write_text
from ..processing.importers import read_h5_bag

PROTOCOLS_DIR = Path(__file__).resolve().parent / "protocols" / "pathflip2_zero_shot"
LUAD = "H&E stained histopathology image of lung adenocarcinoma"
LUSC = "H&E stained histopathology image of lung squamous cell carcinoma"
KIDNEY = "H&E stained histopathology image of kidney {} carcinoma"
# dataset -> class name (the CSV label) -> prompt, in the authors' class order
PATHFLIP2_ZERO_SHOT = {
    "Camelyon16": {"Normal": "Normal", "Tumor": "metastatic breast cancer"},
    "CPTAC_NSCLC": {"CPTAC-LUAD": LUAD, "CPTAC-LSCC": LUSC},
    "TCGA_RCC": {"TCGA-KICH": KIDNEY.format("chromophobe"), "TCGA-KIRC": KIDNEY.format("renal clear cell"),
                 "TCGA-KIRP": KIDNEY.format("renal papillary cell")},
    "TCGA_NSCLC": {"TCGA-LUAD": LUAD, "TCGA-LUSC": LUSC},
}  # fmt: skip
# Table 2 of the authors' repository README (test split): model -> (ACC, AUC, F1); TCGA_NSCLC has no column there.
PUBLISHED = {
    "Camelyon16": {"PathFLIP": (0.6434, 0.6805, 0.5106), "CONCH": (0.6279, 0.6451, 0.4800),
                   "TITAN": (0.4031, 0.5377, 0.3778), "PLIP": (0.6201, 0.5038, 0.3827)},
    "CPTAC_NSCLC": {"PathFLIP": (0.6959, 0.7460, 0.6218), "CONCH": (0.6363, 0.7272, 0.5909),
                    "TITAN": (0.5244, 0.6050, 0.4876), "PLIP": (0.4928, 0.7390, 0.3382)},
    "TCGA_RCC": {"PathFLIP": (0.5715, 0.6214, 0.4260), "CONCH": (0.4032, 0.7818, 0.3755),
                 "TITAN": (0.5591, 0.5030, 0.2390), "PLIP": (0.5645, 0.7289, 0.2976)},
}  # fmt: skip
SPLITS = ("test", "train")


def split_list(dataset: str, split: str = "test") -> list[tuple[str, str]]:
    """``(slide_id, label)`` rows of one dataset's split list."""
    if dataset not in PATHFLIP2_ZERO_SHOT:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(PATHFLIP2_ZERO_SHOT)}.")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {list(SPLITS)}.")
    with (PROTOCOLS_DIR / f"{dataset}_{split}.csv").open(newline="") as handle:
        return [(row["slide_id"], row["label"]) for row in csv.DictReader(handle)]


def feature_file(features_dir: Path, dataset: str, slide_id: str) -> Path | None:
    """``DIR/<slide_id>.h5`` or ``DIR/<dataset>/<slide_id>.h5``, whichever exists."""
    for candidate in (features_dir / f"{slide_id}.h5", features_dir / dataset / f"{slide_id}.h5"):
        if candidate.is_file():
            return candidate
    return None


def scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, AUC and F1 as the authors compute them (binary or multi-class forms)."""
    predictions = probabilities.argmax(axis=1)
    binary = probabilities.shape[1] == 2
    result = {"acc": float((predictions == labels).mean()),
              "f1": float(f1_score(labels, predictions) if binary else f1_score(labels, predictions,
                                                                               average="weighted"))}  # fmt: skip
    if len(np.unique(labels)) == probabilities.shape[1]:
        result["auc"] = float(roc_auc_score(labels, probabilities[:, 1]) if binary
                              else roc_auc_score(labels, probabilities, multi_class="ovr"))  # fmt: skip
    else:
        result["auc"] = float("nan")  # AUC needs every class among the slides found
    return result


@torch.no_grad()
def run_zero_shot_benchmark(
    model, processor, features_dir: str | Path, *, split: str = "test", datasets: list[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, dict]:  # fmt: skip
    """Score ``model`` on each dataset's split; per dataset ACC/AUC/F1 and slide counts (listed, found, missing)."""
    features_dir = Path(features_dir)
    if not features_dir.is_dir():
        raise FileNotFoundError(f"--features {features_dir} is not a folder of <slide_id>.h5 feature files.")
    model = model.to(dtype).eval()
    needs_geometry = "region_patch_index" in processor.bag_input_names
    results = {}
    for dataset in datasets or list(PATHFLIP2_ZERO_SHOT):
        rows, classes = split_list(dataset, split), list(PATHFLIP2_ZERO_SHOT[dataset])
        found = [(path, classes.index(label)) for slide_id, label in rows
                 if (path := feature_file(features_dir, dataset, slide_id)) is not None]  # fmt: skip
        summary = {"slides_listed": len(rows), "slides_found": len(found), "slides_missing": len(rows) - len(found)}
        if found:
            prompts = processor(text=list(PATHFLIP2_ZERO_SHOT[dataset].values())).to(model.device)
            texts = torch.nn.functional.normalize(model.get_text_features(**prompts).float(), dim=-1)
            slides = []
            for path, _ in tqdm(found, desc=dataset, unit="slide"):
                bag = read_h5_bag(path, require_patch_size=needs_geometry)
                batch = processor([bag], return_loss=False)
                inputs = {name: batch[name].to(model.device) for name in processor.bag_input_names}
                inputs["patch_features"] = inputs["patch_features"].to(dtype)
                slides.append(model.get_slide_features(**inputs).slide_embeds[0].float())
            cosine = torch.nn.functional.normalize(torch.stack(slides), dim=-1) @ texts.T
            probabilities = cosine.softmax(dim=-1).cpu().numpy()
            summary.update(scores(np.array([label for _, label in found]), probabilities))
        results[dataset] = summary
    return results


def benchmark_table(results: dict[str, dict], name: str = "this model") -> str:
    """A markdown table per dataset: our ACC/AUC/F1 and slide counts, then Table 2's published rows."""
    lines = []
    for dataset, result in results.items():
        counts = f"{result['slides_found']} of {result['slides_listed']} slides found"
        lines += [f"### {dataset} ({counts}, {result['slides_missing']} missing)", "",
                  "| model | ACC | AUC | F1 |", "|---|---|---|---|"]  # fmt: skip
        if "acc" in result:
            lines.append(f"| {name} | {result['acc']:.4f} | {result['auc']:.4f} | {result['f1']:.4f} |")
        else:
            lines.append(f"| {name} | - | - | - |")
        for model, values in PUBLISHED.get(dataset, {}).items():
            lines.append(f"| {model} (published) | " + " | ".join(f"{value:.4f}" for value in values) + " |")
        if dataset not in PUBLISHED:
            lines.append("| (no published row: Table 2 has no column for this dataset) | | | |")
        lines.append("")
    return "\n".join(lines)


def write_benchmark(results: dict[str, dict], output_dir: str | Path, name: str = "this model") -> Path:
    """``benchmark.json`` and ``benchmark.md`` in ``output_dir``; returns the markdown path."""
    output = Path(output_dir)
    write_text(output / "benchmark.json", json.dumps(results, indent=2) + "\n")
    return write_text(output / "benchmark.md", benchmark_table(results, name))

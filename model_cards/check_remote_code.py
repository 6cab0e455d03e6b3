"""Run every task of a saved PathFLIP folder once, as a Hub user without the package would (run as a script).

Usage: python check_remote_code.py FOLDER. Prints one JSON line: task -> the type of what it returned.
"""

from __future__ import annotations

import json
import sys

import torch
from transformers import AutoConfig, pipeline

PACKAGES = ("modeling_pathflip", "pathflip")

TASK_OPTIONS = {
    "zero-shot-slide-classification": {"candidate_labels": ["tumour", "normal tissue"]},
    "slide-text-retrieval": {"candidate_texts": ["Sheets of tumour cells.", "Mature adipose tissue."]},
    "slide-grounding": {"sentences": ["Sheets of tumour cells."]},
    "slide-text-generation": {"prompt": "Describe the slide.", "max_new_tokens": 4},
}


def generated_bag(patch_dim: int, side: int = 6, patch_size: int = 256) -> dict:
    """A bag of ``side`` x ``side`` patches with random features of the model's dimension."""
    generator = torch.Generator().manual_seed(0)
    cells = torch.arange(side * side)
    return {
        "slide_id": "generated-check-bag",
        "features": torch.randn(side * side, patch_dim, generator=generator),
        "coords": (torch.stack([cells % side, cells // side], dim=1) * patch_size).int(),
        "patch_size_level0": patch_size,
    }


def main(folder: str) -> dict[str, str]:
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    alignment = getattr(config, "pathflip_config", config)
    bag = generated_bag(alignment.patch_dim)
    served = {}
    for task in config.to_dict().get("custom_pipelines", {}):
        output = pipeline(task, model=folder, trust_remote_code=True)(bag, **TASK_OPTIONS.get(task, {}))
        served[task] = type(output).__name__
    return served


if __name__ == "__main__":
    for package in PACKAGES:
        sys.modules[package] = None  # importing the installed package fails: only the folder's code can run
    print(json.dumps(main(sys.argv[1])))

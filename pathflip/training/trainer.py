"""The `Trainer` subclass: training batches from the sampling collator, evaluation batches from its own."""

from __future__ import annotations

from transformers import Trainer


class PathFLIPTrainer(Trainer):
    """A `Trainer` whose evaluation batches keep every region and draw subcaptions deterministically."""

    def __init__(self, *args, eval_data_collator=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator

    def get_eval_dataloader(self, eval_dataset=None):
        training_collator = self.data_collator
        self.data_collator = self.eval_data_collator or training_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = training_collator

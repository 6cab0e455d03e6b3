"""The `Trainer` subclass: training batches from the sampling collator, evaluation batches from its own."""

from __future__ import annotations

from torch import nn
from transformers import Trainer

NO_DECAY_NAME_SUFFIXES = ("logit_scale", "logit_bias")
NORM_LAYER_TYPES = (nn.LayerNorm, nn.RMSNorm)


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer: LayerNorm, RMSNorm or any class whose name contains "Norm"."""
    return isinstance(module, NORM_LAYER_TYPES) or "Norm" in type(module).__name__


def keep_frozen_modules_in_eval(model: nn.Module) -> list[str]:
    """Put every maximal submodule whose parameters are all frozen in eval mode; return their qualified names.

    The `Trainer` calls ``model.train()`` before every step, which turns dropout back on in frozen towers (the
    PathFLIP encoder of the LLM stages, a ``--freeze_text_model`` text tower): the trainable part would then learn
    from noisy features and be evaluated on clean ones. Modules without parameters (a bare ``nn.Dropout``) follow
    their parent; a module with any trainable parameter (a LoRA-wrapped LLM) stays in train mode and is descended
    into. A frozen module that gradient-checkpoints (transformers' ``gradient_checkpointing`` flag on) is left in
    train mode itself, because transformers only checkpoints in train mode and gradients may flow through it (a
    frozen LLM in front of which the projector trains); its children are still put in eval mode.
    """
    summary: dict[nn.Module, tuple[bool, bool, bool]] = {}

    def scan(module: nn.Module) -> tuple[bool, bool, bool]:
        """(has parameters, has a trainable one, has a gradient-checkpointing module) of the subtree, memoised."""
        if module not in summary:
            own = list(module.parameters(recurse=False))
            has, trainable = bool(own), any(p.requires_grad for p in own)
            checkpoints = getattr(module, "gradient_checkpointing", False) is True
            for child in module.children():
                child_has, child_trainable, child_checkpoints = scan(child)
                has, trainable = has or child_has, trainable or child_trainable
                checkpoints = checkpoints or child_checkpoints
            summary[module] = (has, trainable, checkpoints)
        return summary[module]

    frozen: list[str] = []

    def visit(module: nn.Module, name: str) -> None:
        has, trainable, checkpoints = scan(module)
        if has and not trainable and not checkpoints:
            module.eval()
            frozen.append(name)
            return
        for child_name, child in module.named_children():
            visit(child, f"{name}.{child_name}" if name else child_name)

    visit(model, "")
    return frozen


class PathFLIPTrainer(Trainer):
    """A `Trainer` whose evaluation batches keep every region and draw subcaptions deterministically.

    Two training details follow the PathFLIP / BLIP-2 authors rather than the `Trainer` defaults:

    - Weight decay: besides what `Trainer.get_decay_parameter_names` already leaves out (``nn.LayerNorm``
      parameters and names containing "bias", "layernorm", "rmsnorm" or a "norm" component), no parameter whose
      name ends with ``logit_scale`` or ``logit_bias`` (learnable log temperatures and sigmoid biases: decay would
      pull them towards 0, the inverse temperature towards 1 and the bias away from its init), no bias and no
      parameter of a normalisation layer (``nn.LayerNorm``, ``nn.RMSNorm`` or any class whose name contains
      "Norm", e.g. ``LlamaRMSNorm``) is decayed, as in LAVIS (BLIP-2).
    - Frozen modules stay in eval mode at every training step (`keep_frozen_modules_in_eval`).
    """

    def __init__(self, *args, eval_data_collator=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator

    def get_eval_dataloader(self, eval_dataset=None):
        """The evaluation collator, and every row: no last batch is dropped (training drops it so that every process
        has equal batches for the all-gather; under several processes accelerate pads the last evaluation batch
        with repeated rows instead, and `gather_for_metrics` removes them before the metrics)."""
        training_collator, drop_last = self.data_collator, self.args.dataloader_drop_last
        self.data_collator = self.eval_data_collator or training_collator
        self.args.dataloader_drop_last = False
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator, self.args.dataloader_drop_last = training_collator, drop_last

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """The `Trainer`'s decayed parameters less logit scales/biases, biases and normalisation-layer parameters."""
        in_norm_layers = {
            f"{module_name}.{name}" if module_name else name
            for module_name, module in model.named_modules(remove_duplicate=False)
            if is_norm_layer(module)
            for name, _ in module.named_parameters(remove_duplicate=False)
        }
        return [
            name
            for name in super().get_decay_parameter_names(model)
            if not name.endswith(NO_DECAY_NAME_SUFFIXES)
            and not name.rsplit(".", 1)[-1].endswith("bias")
            and name not in in_norm_layers
        ]

    def compute_loss(self, model, inputs, *args, **kwargs):
        # `training_step` calls `model.train()` just before this: undo it for frozen modules. Evaluation calls
        # this too, with the model already in eval mode.
        if model.training:
            keep_frozen_modules_in_eval(model)
        return super().compute_loss(model, inputs, *args, **kwargs)

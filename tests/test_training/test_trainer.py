"""PathFLIPTrainer's training details: no weight decay on logit scales, biases and norms; frozen modules in eval."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import TrainingArguments

from modeling_pathflip import PathFLIPModel
from pathflip.training.trainer import PathFLIPTrainer, keep_frozen_modules_in_eval


def _arguments(tmp_path, **overrides) -> TrainingArguments:
    values = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True, save_strategy="no", weight_decay=0.05,
                  dataloader_num_workers=0, remove_unused_columns=False, logging_strategy="no")  # fmt: skip
    return TrainingArguments(**{**values, **overrides})


def test_logit_scales_biases_and_norms_get_no_weight_decay(config_factory, tokenizer, tmp_path):
    model = PathFLIPModel(config_factory())
    trainer = PathFLIPTrainer(model=model, args=_arguments(tmp_path), processing_class=tokenizer)
    decay = set(trainer.get_decay_parameter_names(model))
    names = {name for name, _ in model.named_parameters()}
    norm_parameters = {
        f"{module_name}.{name}"
        for module_name, module in model.named_modules()
        if isinstance(module, nn.LayerNorm)
        for name, _ in module.named_parameters()
    }
    assert {"patch_projector.1.weight", "qformer.layernorm.weight", "context_encoder.layers.0.norm1.weight",
            "text_model.embeddings.LayerNorm.weight"} <= norm_parameters  # fmt: skip
    biases = {name for name in names if name.endswith("bias")}
    assert {"region_logit_bias", "patch_projector.0.bias", "text_region_attention.attention.in_proj_bias"} <= biases
    assert names - decay == {"logit_scale", "region_logit_scale"} | biases | norm_parameters
    assert {"query_tokens", "patch_projector.0.weight", "qformer.encoder.layer.0.attention.attention.query.weight",
            "context_encoder.layers.0.self_attn.in_proj_weight", "text_projection.weight",
            "text_model.embeddings.word_embeddings.weight"} <= decay  # fmt: skip

    optimizer = trainer.create_optimizer()
    by_decay = {group["weight_decay"]: {id(p) for p in group["params"]} for group in optimizer.param_groups}
    assert id(model.logit_scale) in by_decay[0.0] and id(model.region_logit_scale) in by_decay[0.0]
    assert id(model.text_projection.weight) in by_decay[0.05]


class ToyRMSNorm(nn.Module):
    """A norm that is neither an nn.LayerNorm nor named like one ("ln_f")."""

    def __init__(self, width: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))


def test_any_norm_class_and_paired_logit_names_get_no_weight_decay(tmp_path):
    toy = nn.Module()
    toy.embed = nn.Embedding(5, 4)
    toy.proj = nn.Linear(4, 4)
    toy.ln_f = ToyRMSNorm(4)
    toy.final = nn.RMSNorm(4)
    toy.global_logit_scale = nn.Parameter(torch.tensor(0.0))
    toy.local_logit_bias = nn.Parameter(torch.tensor(0.0))
    trainer = PathFLIPTrainer(model=nn.Linear(1, 1), args=_arguments(tmp_path))
    assert sorted(trainer.get_decay_parameter_names(toy)) == ["embed.weight", "proj.weight"]


def test_frozen_pathflip_stays_in_eval_mode_at_every_training_step(generation_model, bag_factory, tmp_path):
    model, processor = generation_model
    model.freeze_for_stage("caption")
    seen = {"pathflip": [], "projector": [], "llm": []}
    # get_visual_features calls pathflip.get_slide_features (not forward): watch its Q-Former, called every step.
    model.pathflip.qformer.register_forward_pre_hook(lambda m, a: seen["pathflip"].append(model.pathflip.training))
    model.visual_projector.register_forward_pre_hook(lambda m, a: seen["projector"].append(m.training))
    model.language_model.register_forward_pre_hook(lambda m, a: seen["llm"].append(m.training))
    bags = [bag_factory(i, 20 + i) for i in range(4)]

    def collate(rows):
        return processor(rows, "Describe the slide.", [row["caption"] for row in rows])

    arguments = _arguments(tmp_path, max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3)
    trainer = PathFLIPTrainer(model=model, args=arguments, train_dataset=bags, data_collator=collate)
    projector_before = model.visual_projector.state_dict()
    projector_before = {name: value.clone() for name, value in projector_before.items()}
    trainer.train()

    assert seen["projector"] == [True, True]  # two training steps, the trainable projector in train mode
    assert seen["pathflip"] and not any(seen["pathflip"])
    assert seen["llm"] == [False, False]  # the LLM is frozen in the caption stage too
    assert any(
        not torch.equal(value, projector_before[name]) for name, value in model.visual_projector.state_dict().items()
    )


def test_lora_wrapped_llm_stays_in_train_mode(generation_model):
    peft = pytest.importorskip("peft")
    model, _ = generation_model
    model.freeze_for_stage("instruct")
    lora = peft.LoraConfig(r=2, lora_alpha=4, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
                           task_type="CAUSAL_LM")  # fmt: skip
    model.language_model = peft.get_peft_model(model.language_model, lora)
    model.train()  # what the Trainer does before each step
    assert model.pathflip.training
    frozen = keep_frozen_modules_in_eval(model)

    assert "pathflip" in frozen and not any(module.training for module in model.pathflip.modules())
    assert model.training and model.visual_projector.training and model.language_model.training
    attention = model.language_model.base_model.model.model.layers[0].self_attn
    assert attention.training and attention.q_proj.training and attention.q_proj.lora_dropout.training
    assert not attention.q_proj.base_layer.training and not attention.k_proj.training  # frozen leaves
    assert not model.language_model.base_model.model.model.embed_tokens.training


def test_gradient_checkpointing_layers_keep_train_mode_their_children_do_not(generation_model):
    model, _ = generation_model
    model.freeze_for_stage("caption")
    model.gradient_checkpointing_enable()
    model.train()
    keep_frozen_modules_in_eval(model)
    # transformers checkpoints a layer only in train mode: the frozen LLM, through which the projector's gradients
    # flow, keeps its layers in train mode; everything under them (attention with its dropout, MLP, norms) is eval.
    layer = model.language_model.model.layers[0]
    assert layer.gradient_checkpointing and layer.training
    assert not any(module.training for module in layer.children())
    assert not model.language_model.lm_head.training and not model.pathflip.context_encoder.training

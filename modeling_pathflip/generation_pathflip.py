"""PathFLIP's LLM stage: slide and region tokens read by a causal LLM for captioning and VQA."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from .configuration_pathflip import PathFLIPConfig, PathFLIPGenerationConfig
from .modeling_pathflip import PathFLIPModel

IGNORE_INDEX = -100


@dataclass
class PathFLIPGenerationOutput(ModelOutput):
    """Output of [`PathFLIPForConditionalGeneration`].

    Args:
        loss: next-token cross-entropy on the target tokens (labels != -100), when labels are given.
        logits: ``[B, T, V]`` LLM logits over the spliced sequence.
        attention_mask: ``[B, T]`` mask of the spliced (left-padded) sequence.
        labels: ``[B, T]`` labels aligned with the spliced sequence (-100 on prompt, image and padding).
        visual_embeds: ``[B, 1 + L, H]`` projected slide and region tokens.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None
    labels: torch.LongTensor | None = None
    visual_embeds: torch.FloatTensor | None = None


@dataclass
class SplicedInputs:
    """A batch after the visual tokens replaced each sequence's ``<image>`` placeholder (left-padded)."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None


class PathFLIPForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """A [`PathFLIPModel`], a projector to the LLM width and any causal LM; the visual tokens ``[slide; regions]``
    replace the ``<image>`` placeholder of the prompt."""

    config_class = PathFLIPGenerationConfig
    base_model_prefix = "pathflip"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Blip2QFormerLayer", "TransformerEncoderLayer"]

    def __init__(self, config: PathFLIPGenerationConfig):
        super().__init__(config)
        self.pathflip = PathFLIPModel(config.pathflip_config)
        width = config.llm_config.hidden_size
        self.visual_projector = nn.Sequential(
            nn.Linear(config.pathflip_config.embed_dim, width),
            ACT2FN[config.projector_hidden_act],
            nn.Linear(width, width),
        )
        self.language_model = AutoModelForCausalLM.from_config(config.llm_config)
        self.post_init()

    @classmethod
    def from_alignment(
        cls, alignment: str | Path | PathFLIPModel, llm: str | Path | dict, **config_kwargs
    ) -> PathFLIPForConditionalGeneration:
        """Start the LLM stage from a trained alignment model (a folder or a [`PathFLIPModel`]) and an LLM: a
        causal-LM folder / Hub id (pretrained weights) or a config dict (random weights, e.g. for tests)."""
        aligned = alignment if isinstance(alignment, PathFLIPModel) else PathFLIPModel.from_pretrained(alignment)
        pretrained_llm = None
        if isinstance(llm, dict):
            llm_config = llm
        else:
            pretrained_llm = AutoModelForCausalLM.from_pretrained(llm)
            llm_config = pretrained_llm.config
        # The alignment folder's tasks and remote-code map belong to that folder, not to the nested config.
        values = {k: v for k, v in aligned.config.to_dict().items() if k not in ("custom_pipelines", "auto_map")}
        pathflip_config = PathFLIPConfig.from_dict(values)
        config = PathFLIPGenerationConfig(pathflip_config=pathflip_config, llm_config=llm_config, **config_kwargs)
        model = cls(config)
        model.pathflip.load_state_dict(aligned.state_dict())
        if pretrained_llm is not None:
            model.language_model.load_state_dict(pretrained_llm.state_dict())
            model.generation_config = pretrained_llm.generation_config
        return model

    def freeze_for_stage(self, stage: str) -> None:
        """Stage "caption": train the projector only; "instruct": the projector (LoRA adapters are added by the
        caller with peft); PathFLIP and the LLM's own weights stay frozen in both."""
        if stage not in ("caption", "instruct"):
            raise ValueError(f"stage must be 'caption' or 'instruct', got {stage!r}.")
        self.requires_grad_(False)
        self.visual_projector.requires_grad_(True)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_visual_features(
        self,
        patch_features: torch.Tensor,
        patch_attention_mask: torch.Tensor,
        region_patch_index: torch.Tensor,
        region_attention_mask: torch.Tensor,
        region_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected ``[slide; regions]`` tokens ``[B, 1 + L, H]`` and their mask ``[B, 1 + L]``."""
        slide = self.pathflip.get_slide_features(
            patch_features, patch_attention_mask, region_patch_index, region_attention_mask, region_positions
        )
        tokens = torch.cat([slide.slide_embeds[:, None], slide.region_embeds], dim=1)
        mask = torch.cat([torch.ones_like(region_attention_mask[:, :1]), region_attention_mask], dim=1)
        return self.visual_projector(tokens), mask

    def splice(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        visual_embeds: torch.Tensor,
        visual_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> SplicedInputs:
        """Replace each sequence's single ``<image>`` token by its real visual tokens; keep the text before and
        after it; left-pad the result (so that generation continues every sequence at the end)."""
        image_id = self.config.image_token_id
        if image_id is None:
            raise ValueError("config.image_token_id is not set: build inputs with PathFLIPGenerationProcessor.")
        embed = self.get_input_embeddings()
        sequences, label_rows = [], []
        for row in range(input_ids.shape[0]):
            ids = input_ids[row][attention_mask[row].bool()]
            where = (ids == image_id).nonzero().flatten()
            if len(where) != 1:
                raise ValueError(
                    f"sequence {row} has {len(where)} {self.config.image_token!r} tokens; exactly one is needed."
                )
            cut = int(where[0])
            visual = visual_embeds[row][visual_mask[row].bool()]
            sequences.append(torch.cat([embed(ids[:cut]), visual, embed(ids[cut + 1 :])]))
            if labels is not None:
                kept = labels[row][attention_mask[row].bool()]
                ignored = kept.new_full((len(visual),), IGNORE_INDEX)
                label_rows.append(torch.cat([kept[:cut], ignored, kept[cut + 1 :]]))
        length = max(len(sequence) for sequence in sequences)
        width = sequences[0].shape[-1]
        inputs_embeds = visual_embeds.new_zeros(len(sequences), length, width)
        mask = attention_mask.new_zeros(len(sequences), length)
        spliced_labels = None if labels is None else labels.new_full((len(sequences), length), IGNORE_INDEX)
        for row, sequence in enumerate(sequences):
            inputs_embeds[row, length - len(sequence) :] = sequence
            mask[row, length - len(sequence) :] = 1
            if spliced_labels is not None:
                spliced_labels[row, length - len(sequence) :] = label_rows[row]
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        return SplicedInputs(inputs_embeds, mask, position_ids, spliced_labels)

    def _spliced(self, input_ids, attention_mask, labels, *bag: torch.Tensor) -> tuple[SplicedInputs, torch.Tensor]:
        """Visual tokens of the bag tensors (in `get_visual_features` order) spliced into the prompts."""
        visual_embeds, visual_mask = self.get_visual_features(*bag)
        visual_embeds = visual_embeds.to(self.get_input_embeddings().weight.dtype)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.splice(input_ids, attention_mask, visual_embeds, visual_mask, labels), visual_embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        patch_features: torch.Tensor,
        patch_attention_mask: torch.Tensor,
        region_patch_index: torch.Tensor,
        region_attention_mask: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        region_positions: torch.Tensor | None = None,
        **kwargs,
    ) -> PathFLIPGenerationOutput:
        """LLM logits over prompt + visual tokens + target; with ``labels`` the caption/answer loss.

        Inputs are what [`PathFLIPGenerationProcessor`] returns (``labels`` are -100 on the prompt).
        """
        spliced, visual_embeds = self._spliced(
            input_ids,
            attention_mask,
            labels,
            patch_features,
            patch_attention_mask,
            region_patch_index,
            region_attention_mask,
            region_positions,
        )
        outputs = self.language_model(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=spliced.attention_mask,
            position_ids=spliced.position_ids,
            labels=spliced.labels,
            **kwargs,
        )
        return PathFLIPGenerationOutput(
            loss=outputs.loss,
            logits=outputs.logits,
            attention_mask=spliced.attention_mask,
            labels=spliced.labels,
            visual_embeds=visual_embeds,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        patch_features: torch.Tensor,
        patch_attention_mask: torch.Tensor,
        region_patch_index: torch.Tensor,
        region_attention_mask: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        region_positions: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """Generate the continuation of each prompt (only the new tokens are returned, as for ``inputs_embeds``)."""
        generate_kwargs.pop("labels", None)
        spliced, _ = self._spliced(
            input_ids,
            attention_mask,
            None,
            patch_features,
            patch_attention_mask,
            region_patch_index,
            region_attention_mask,
            region_positions,
        )
        # The saved generation_config.json is this model's; options given here override it.
        generation_config = copy.deepcopy(generate_kwargs.pop("generation_config", None) or self.generation_config)
        other_kwargs = generation_config.update(**generate_kwargs)
        return self.language_model.generate(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=spliced.attention_mask,
            generation_config=generation_config,
            **other_kwargs,
        )

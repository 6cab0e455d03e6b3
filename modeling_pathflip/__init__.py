"""PathFLIP as Hugging Face classes. Importing this package registers the Auto classes."""

from transformers import AutoConfig, AutoModel, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_pathflip import PathFLIPConfig
from .modeling_pathflip import (
    PathFLIPGroundingOutput,
    PathFLIPModel,
    PathFLIPOutput,
    PathFLIPPreTrainedModel,
    PathFLIPSlideOutput,
)
from .pipeline_pathflip import TASKS, save_pretrained_with_pipelines
from .processing_pathflip import BAG_INPUT_NAMES, PathFLIPProcessor
from .subcaptions_pathflip import sample_subcaptions, split_sentences

AutoConfig.register(PathFLIPConfig.model_type, PathFLIPConfig, exist_ok=True)
AutoModel.register(PathFLIPConfig, PathFLIPModel, exist_ok=True)
AutoProcessor.register(PathFLIPConfig, PathFLIPProcessor, exist_ok=True)
# Saved folders carry auto_map + code, so they also load with trust_remote_code=True.
PathFLIPConfig.register_for_auto_class()
PathFLIPModel.register_for_auto_class("AutoModel")
PathFLIPProcessor.register_for_auto_class("AutoProcessor")
for _task, _pipeline_class in TASKS.items():
    PIPELINE_REGISTRY.register_pipeline(_task, pipeline_class=_pipeline_class, pt_model=AutoModel, type="multimodal")

__all__ = [
    "BAG_INPUT_NAMES",
    "PathFLIPConfig",
    "PathFLIPGroundingOutput",
    "PathFLIPModel",
    "PathFLIPOutput",
    "PathFLIPPreTrainedModel",
    "PathFLIPProcessor",
    "PathFLIPSlideOutput",
    "sample_subcaptions",
    "save_pretrained_with_pipelines",
    "split_sentences",
]

"""PathFLIP as Hugging Face classes. Importing this package registers the Auto classes."""

from transformers import AutoConfig, AutoModel, AutoProcessor

from .configuration_pathflip import PathFLIPConfig
from .modeling_pathflip import (
    PathFLIPGroundingOutput,
    PathFLIPModel,
    PathFLIPOutput,
    PathFLIPPreTrainedModel,
    PathFLIPSlideOutput,
)
from .processing_pathflip import BAG_INPUT_NAMES, PathFLIPProcessor
from .subcaptions_pathflip import sample_subcaptions, split_sentences

AutoConfig.register(PathFLIPConfig.model_type, PathFLIPConfig, exist_ok=True)
AutoModel.register(PathFLIPConfig, PathFLIPModel, exist_ok=True)
AutoProcessor.register(PathFLIPConfig, PathFLIPProcessor, exist_ok=True)
# Saved folders carry auto_map + code, so they also load with trust_remote_code=True.
PathFLIPConfig.register_for_auto_class()
PathFLIPModel.register_for_auto_class("AutoModel")
PathFLIPProcessor.register_for_auto_class("AutoProcessor")

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
    "split_sentences",
]

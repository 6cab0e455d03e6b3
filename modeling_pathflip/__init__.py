"""PathFLIP as Hugging Face classes. Importing this package registers the Auto classes and the pipelines."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_pathflip import PathFLIPConfig, PathFLIPGenerationConfig
from .configuration_pathflip2 import PathFLIP2Config
from .generation_pathflip import PathFLIPForConditionalGeneration, PathFLIPGenerationOutput
from .generation_pipeline_pathflip import GENERATION_TASKS
from .generation_processing_pathflip import PathFLIPGenerationProcessor
from .modeling_pathflip import (
    PathFLIPGroundingOutput,
    PathFLIPModel,
    PathFLIPOutput,
    PathFLIPPreTrainedModel,
    PathFLIPSlideOutput,
)
from .modeling_pathflip2 import PathFLIP2GroundingOutput, PathFLIP2Model, PathFLIP2Output, PathFLIP2SlideOutput
from .pipeline_pathflip import TASKS
from .processing_pathflip import BAG_INPUT_NAMES, PathFLIPProcessor
from .processing_pathflip2 import PathFLIP2Processor
from .saving_pathflip import save_pretrained_with_pipelines
from .subcaptions_pathflip import sample_subcaptions, split_sentences

AutoConfig.register(PathFLIPConfig.model_type, PathFLIPConfig, exist_ok=True)
AutoModel.register(PathFLIPConfig, PathFLIPModel, exist_ok=True)
AutoProcessor.register(PathFLIPConfig, PathFLIPProcessor, exist_ok=True)
AutoConfig.register(PathFLIP2Config.model_type, PathFLIP2Config, exist_ok=True)
AutoModel.register(PathFLIP2Config, PathFLIP2Model, exist_ok=True)
AutoProcessor.register(PathFLIP2Config, PathFLIP2Processor, exist_ok=True)
AutoConfig.register(PathFLIPGenerationConfig.model_type, PathFLIPGenerationConfig, exist_ok=True)
AutoModel.register(PathFLIPGenerationConfig, PathFLIPForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(PathFLIPGenerationConfig, PathFLIPForConditionalGeneration, exist_ok=True)
AutoProcessor.register(PathFLIPGenerationConfig, PathFLIPGenerationProcessor, exist_ok=True)
# Saved folders carry auto_map + code, so they also load with trust_remote_code=True.
PathFLIPConfig.register_for_auto_class()
PathFLIPModel.register_for_auto_class("AutoModel")
PathFLIPProcessor.register_for_auto_class("AutoProcessor")
PathFLIP2Config.register_for_auto_class()
PathFLIP2Model.register_for_auto_class("AutoModel")
PathFLIP2Processor.register_for_auto_class("AutoProcessor")
PathFLIPGenerationConfig.register_for_auto_class()
PathFLIPForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
PathFLIPGenerationProcessor.register_for_auto_class("AutoProcessor")
for _task, _pipeline_class in TASKS.items():
    PIPELINE_REGISTRY.register_pipeline(_task, pipeline_class=_pipeline_class, pt_model=AutoModel, type="multimodal")
for _task, _pipeline_class in GENERATION_TASKS.items():
    PIPELINE_REGISTRY.register_pipeline(
        _task, pipeline_class=_pipeline_class, pt_model=AutoModelForImageTextToText, type="multimodal"
    )

__all__ = [
    "BAG_INPUT_NAMES",
    "PathFLIP2Config",
    "PathFLIP2GroundingOutput",
    "PathFLIP2Model",
    "PathFLIP2Output",
    "PathFLIP2Processor",
    "PathFLIP2SlideOutput",
    "GENERATION_TASKS",
    "PathFLIPConfig",
    "PathFLIPForConditionalGeneration",
    "PathFLIPGenerationConfig",
    "PathFLIPGenerationOutput",
    "PathFLIPGenerationProcessor",
    "PathFLIPGroundingOutput",
    "PathFLIPModel",
    "PathFLIPOutput",
    "PathFLIPPreTrainedModel",
    "PathFLIPProcessor",
    "PathFLIPSlideOutput",
    "TASKS",
    "sample_subcaptions",
    "save_pretrained_with_pipelines",
    "split_sentences",
]

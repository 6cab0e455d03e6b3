"""Saving a PathFLIP model as a folder that serves its tasks through ``pipeline(task, model=folder)``."""

from __future__ import annotations

from .generation_pipeline_pathflip import GENERATION_TASKS
from .pipeline_pathflip import TASKS


def pipeline_tasks(model) -> tuple[dict, str]:
    """The tasks a model serves and the Auto class that loads it for them."""
    if model.config.model_type == "pathflip_generation":
        return GENERATION_TASKS, "AutoModelForImageTextToText"
    return TASKS, "AutoModel"


def save_pretrained_with_pipelines(model, processor, save_directory) -> None:
    """Save model, processor and every task of the model so that ``pipeline(task, model=folder)`` works for each.

    `Pipeline.save_pretrained` writes only its own task into ``custom_pipelines`` and no processor config;
    this writes them all (and the pipeline code, for ``trust_remote_code=True`` without the package).
    """
    from transformers import pipeline

    tasks, auto_class = pipeline_tasks(model)
    first_task = next(iter(tasks))
    pipeline(first_task, model=model, processor=processor).save_pretrained(save_directory)  # copies the code
    model.config.custom_pipelines = {
        task: {"impl": f"{pipeline_class.__module__.rsplit('.', 1)[-1]}.{pipeline_class.__name__}",
               "pt": [auto_class], "type": "multimodal"}
        for task, pipeline_class in tasks.items()
    }  # fmt: skip
    model.save_pretrained(save_directory)
    processor.save_pretrained(save_directory)

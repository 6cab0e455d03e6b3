"""The `slide-text-generation` pipeline: bag + instruction or question (+ options) -> text."""

from __future__ import annotations

from collections.abc import Sequence

from .options_pathflip import multiple_choice_prompt, parse_option_letter
from .pipeline_pathflip import _SlidePipeline

DEFAULT_INSTRUCTION = "Describe the slide."
DEFAULT_MAX_NEW_TOKENS = 128


class SlideTextGenerationPipeline(_SlidePipeline):
    """bag + ``prompt`` (an instruction) or ``question`` with ``options`` -> ``{"generated_text"}``; for multiple
    choice also ``"answer"``, the option letter parsed from the text (None when none can be read).

    Generation options (``max_new_tokens``, default 128; ``do_sample``, ``num_beams``, ...) go to ``model.generate``.
    """

    preprocess_options = ("prompt", "question", "options", "patch_encoder", "mpp")
    postprocess_options = ()
    model_types = ("pathflip_generation",)

    def _sanitize_parameters(self, **kwargs):
        generate_kwargs = dict(kwargs.pop("generate_kwargs", None) or {})
        for key in list(kwargs):
            if key not in self.preprocess_options:
                generate_kwargs[key] = kwargs.pop(key)
        if "max_length" not in generate_kwargs:
            # transformers' GenerationConfig default (max_length 20) would cut a caption after a few words.
            generate_kwargs.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        pre, _, post = super()._sanitize_parameters(**kwargs)
        return pre, {"generate_kwargs": generate_kwargs}, post

    def preprocess(self, inputs, prompt=None, question=None, options=None, patch_encoder=None, mpp=None):
        if prompt is not None and question is not None:
            raise ValueError("Give either prompt (an instruction) or question (with options), not both.")
        options = list(options) if options is not None else None
        if options is not None and (question is None or not options):
            raise ValueError("options need a question and at least one option text.")
        text = multiple_choice_prompt(question, options) if options else (question or prompt or DEFAULT_INSTRUCTION)
        bags = self.load_bags(inputs, patch_encoder, mpp)
        if len(bags) != 1:
            raise ValueError(f"{inputs!r} holds {len(bags)} bags; pass them as a list of rows, one per slide.")
        batch = dict(self.processor(bags, text))
        return {"batch": batch, "options": options}

    def _forward(self, model_inputs, generate_kwargs=None):
        generated = self.model.generate(**model_inputs["batch"], **(generate_kwargs or {}))
        return {"generated": generated, "options": model_inputs["options"]}

    def postprocess(self, model_outputs):
        text = self.processor.batch_decode(model_outputs["generated"])[0].strip()
        result = {"generated_text": text}
        options: Sequence[str] | None = model_outputs["options"]
        if options:
            result["answer"] = parse_option_letter(text, options)
        return result


GENERATION_TASKS = {"slide-text-generation": SlideTextGenerationPipeline}

"""PathFLIPForConditionalGeneration and its processor: splicing, labels, training, generation, saving."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from modeling_pathflip import PathFLIPForConditionalGeneration, PathFLIPGenerationProcessor, PathFLIPModel

IGNORE = -100


def _bags(bag_factory, sizes=(20, 9)):
    return [bag_factory(i, n) for i, n in enumerate(sizes)]


def test_spliced_sequence_equals_a_hand_built_one(generation_model, bag_factory):
    model, processor = generation_model
    bags = _bags(bag_factory)
    batch = processor(bags, ["Describe the <image> slide.", "What is the diagnosis?"])
    with torch.no_grad():
        bag = {key: batch[key] for key in ("patch_features", "patch_attention_mask", "region_patch_index",
                                           "region_attention_mask")}  # fmt: skip
        visual, visual_mask = model.get_visual_features(**bag)
        spliced = model.splice(batch["input_ids"], batch["attention_mask"], visual, visual_mask)
        embed = model.get_input_embeddings()
        for row, prompt in enumerate(["Describe the <image> slide.", "<image>\nWhat is the diagnosis?"]):
            before, after = (prompt + "\n").split("<image>")
            ids_before = processor.tokenizer(before)["input_ids"]  # <s> + text before the placeholder
            ids_after = processor.tokenizer(after, add_special_tokens=False)["input_ids"]
            expected = torch.cat([embed(torch.tensor(ids_before)), visual[row][visual_mask[row].bool()],
                                  embed(torch.tensor(ids_after))])  # fmt: skip
            length = spliced.attention_mask[row].sum()
            torch.testing.assert_close(spliced.inputs_embeds[row, -length:], expected)
            assert (spliced.inputs_embeds[row, :-length] == 0).all()  # left padding
            assert spliced.position_ids[row, -length:].tolist() == list(range(length))


def test_labels_cover_exactly_the_target_tokens(generation_model, bag_factory):
    model, processor = generation_model
    bags = _bags(bag_factory)
    targets = ["Invasive carcinoma.", "Fat and stroma with lymphocytes."]
    batch = processor(bags, "Describe the slide.", targets)
    output = model(**batch)
    for row, target in enumerate(targets):
        expected = processor.tokenizer(target, add_special_tokens=False)["input_ids"] + [
            processor.tokenizer.eos_token_id
        ]
        kept = output.labels[row][output.labels[row] != IGNORE].tolist()
        assert kept == expected
        real = output.attention_mask[row].bool()
        assert output.labels[row][real][-len(expected) :].tolist() == expected  # targets come last
        assert (output.labels[row][~real] == IGNORE).all()
    num_visual = 1 + batch["region_attention_mask"].sum(1)
    assert (output.attention_mask.sum(1) == batch["attention_mask"].sum(1) - 1 + num_visual).all()


def test_training_steps_reduce_the_caption_loss(generation_model, bag_factory):
    model, processor = generation_model
    bags = _bags(bag_factory, (20, 9, 14, 11))
    batch = processor(bags, "Describe the slide.", [bag["caption"] for bag in bags])
    model.train()
    model.freeze_for_stage("caption")
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert trainable and all(name.startswith("visual_projector.") for name in trainable)
    model.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_generate_returns_text_and_batching_does_not_change_it(generation_model, bag_factory):
    model, processor = generation_model
    bags = _bags(bag_factory)
    batched = model.generate(**processor(bags, "Describe the slide."), max_new_tokens=6, do_sample=False)
    texts = processor.batch_decode(batched)
    assert all(isinstance(text, str) for text in texts) and batched.shape == (2, 6)
    for row, bag in enumerate(bags):
        alone = model.generate(**processor([bag], "Describe the slide."), max_new_tokens=6, do_sample=False)
        assert alone[0].tolist() == batched[row].tolist()


def test_save_load_gives_the_same_greedy_generation(tmp_path, generation_model, bag_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, processor = generation_model
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is PathFLIPForConditionalGeneration and type(loaded_processor) is PathFLIPGenerationProcessor
    bags = _bags(bag_factory)
    before = model.generate(**processor(bags, "Describe the slide."), max_new_tokens=8, do_sample=False)
    after = loaded.generate(**loaded_processor(bags, "Describe the slide."), max_new_tokens=8, do_sample=False)
    assert before.tolist() == after.tolist()


def test_alignment_checkpoint_and_llm_folder_load_into_the_generation_model(tmp_path, model, llm_tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.conftest import tiny_llm_config

    model.save_pretrained(tmp_path / "aligned")
    llm = AutoModelForCausalLM.from_config(LlamaConfig(**{k: v for k, v in tiny_llm_config(llm_tokenizer).items()
                                                          if k != "model_type"}))  # fmt: skip
    llm.save_pretrained(tmp_path / "llm")
    combined = PathFLIPForConditionalGeneration.from_alignment(tmp_path / "aligned", tmp_path / "llm")
    for name, value in PathFLIPModel.from_pretrained(tmp_path / "aligned").state_dict().items():
        torch.testing.assert_close(combined.pathflip.state_dict()[name], value)
    for name, value in llm.state_dict().items():
        torch.testing.assert_close(combined.language_model.state_dict()[name], value)


def test_prompts_without_placeholder_get_it_prepended_and_bad_prompts_fail(generation_model, bag_factory):
    _, processor = generation_model
    assert processor.format_prompt("Describe the slide.") == "<image>\nDescribe the slide.\n"
    with pytest.raises(ValueError, match="2 '<image>' placeholders"):
        processor(bag_factory(0, 9), "<image> and <image>")
    with pytest.raises(ValueError, match="slide .slide-0.: the prompt is 206 tokens .* over max_length=160"):
        processor(bag_factory(0, 9), "tumour " * 200)
    with pytest.raises(ValueError, match="Empty prompt"):
        processor(bag_factory(0, 9), "  ")
    with pytest.raises(ValueError, match="empty target"):
        processor(bag_factory(0, 9), "Describe the slide.", "")
    processor.tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    try:
        assert processor.format_prompt("Why?") == "<|user|><image>\nWhy?\n<|assistant|>"
    finally:
        processor.tokenizer.chat_template = None


def test_the_pipeline_generates_and_reads_the_option_letter(tmp_path, generation_model, bag_factory):
    from transformers import pipeline

    from modeling_pathflip import save_pretrained_with_pipelines

    model, processor = generation_model
    save_pretrained_with_pipelines(model, processor, tmp_path / "model")
    generator = pipeline("slide-text-generation", model=str(tmp_path / "model"))
    bag = bag_factory(0, 20)
    result = generator(bag, prompt="Describe the slide.", max_new_tokens=5)
    expected = model.generate(**processor(bag, "Describe the slide."), max_new_tokens=5, do_sample=False)
    assert result["generated_text"] == processor.batch_decode(expected)[0].strip()
    answer = generator(bag, question="What is the diagnosis?", options=["carcinoma", "fat"], max_new_tokens=3)
    assert set(answer) == {"generated_text", "answer"} and answer["answer"] in (None, "A", "B")
    with pytest.raises(ValueError, match="options need a question"):
        generator(bag, prompt="Describe.", options=["a", "b"])
    refused = [({"question": "Is there fat?", "options": "yes"}, r"options needs at least two answers"),
               ({"question": "Is there fat?", "options": ["Yes", "yes "]}, r"options repeats"),
               ({"prompt": ""}, r"prompt must be a non-empty text, got ''"),
               ({"prompt": 5}, r"prompt must be a non-empty text, got 5")]  # fmt: skip
    for options, message in refused:
        with pytest.raises(ValueError, match=message):
            generator(bag, max_new_tokens=2, **options)


def test_an_alignment_task_on_an_llm_stage_model_names_the_mismatch(tmp_path, generation_model):
    from transformers import pipeline

    from modeling_pathflip import save_pretrained_with_pipelines

    save_pretrained_with_pipelines(*generation_model, tmp_path / "model")
    with pytest.raises(ValueError, match=r"runs on an alignment model; this one is a 'pathflip_generation' model"):
        pipeline("zero-shot-slide-classification", model=str(tmp_path / "model"))


REMOTE_LOADER = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_pathflip"] = None
    sys.modules["processing"] = None
    import torch
    from transformers import pipeline
    folder, bag_file = sys.argv[1:]
    generator = pipeline("slide-text-generation", model=folder, trust_remote_code=True)
    result = generator(torch.load(bag_file), prompt="Describe the slide.", max_new_tokens=4)
    print(type(generator.model).__name__, type(result["generated_text"]).__name__)
    """
)


def test_saved_folder_loads_as_remote_code_without_the_package(tmp_path, generation_model, bag_factory):
    from modeling_pathflip import save_pretrained_with_pipelines

    model, processor = generation_model
    save_pretrained_with_pipelines(model, processor, tmp_path / "model")
    torch.save(bag_factory(0, 20), tmp_path / "bag.pt")
    (tmp_path / "load.py").write_text(REMOTE_LOADER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(tmp_path / "model"),
                             str(tmp_path / "bag.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["PathFLIPForConditionalGeneration", "str"]

"""LLM decomposition of captions through a real text-generation pipeline (tiny random LLaMA)."""

import datasets
import pytest

from pathflip.cli import main
from pathflip.training.decompose import decompose_dataset, parse_findings

CAPTIONS = [
    "Invasive carcinoma with dense nuclei. Fibrous stroma in the left region.",
    "Benign fat with small lymphocytes.",
    "",
]


def test_parse_findings_takes_one_finding_per_line():
    text = "1. Invasive carcinoma in the left lobe.\n- Fibrous stroma\n\n* ok\n- Fibrous stroma\nnecrosis is focal"
    assert parse_findings(text) == ["Invasive carcinoma in the left lobe.", "Fibrous stroma", "necrosis is focal"]


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from pathflip.demo.offline_tokenizers import train_wordpiece_tokenizer

    folder = tmp_path_factory.mktemp("llm")
    tokenizer = train_wordpiece_tokenizer(CAPTIONS * 3 + ["Split the pathology report findings"], vocab_size=120)
    tokenizer.eos_token = "[SEP]"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_decompose_writes_a_subcaptions_column(tiny_llm, tmp_path):
    dataset = datasets.Dataset.from_dict({"slide_id": ["a", "b", "c"], "caption": CAPTIONS})
    decomposed, report = decompose_dataset(dataset, str(tiny_llm), max_new_tokens=12, batch_size=2)
    assert report.rows == 2, "the row without a caption is not sent to the model"
    assert decomposed.column_names == ["slide_id", "caption", "subcaptions"]
    for row in decomposed:
        assert isinstance(row["subcaptions"], list) and all(isinstance(text, str) for text in row["subcaptions"])
    assert decomposed[2]["subcaptions"] == [], "nothing made up for a slide without a caption"
    dataset.save_to_disk(str(tmp_path / "in"))
    assert main(["decompose", str(tmp_path / "in"), "--model", str(tiny_llm), "-o", str(tmp_path / "out"),
                 "--max-new-tokens", "8"]) == 0  # fmt: skip
    assert "subcaptions" in datasets.load_from_disk(str(tmp_path / "out")).column_names


def test_missing_caption_column_is_named(tiny_llm):
    with pytest.raises(ValueError, match="no 'caption' column"):
        decompose_dataset(datasets.Dataset.from_dict({"text": ["x"]}), str(tiny_llm))


def test_no_captions_or_a_model_that_is_not_a_causal_lm_is_refused(tiny_llm, tmp_path, capsys):
    with pytest.raises(ValueError, match="no row of the dataset has a caption"):
        decompose_dataset(datasets.Dataset.from_dict({"caption": ["", None]}), str(tiny_llm))
    from transformers import ViTConfig

    ViTConfig().save_pretrained(tmp_path / "encoder")  # a slide model's folder fails the same way, before any weight
    with pytest.raises(ValueError, match=r"is a 'vit' model, not a causal language model"):
        decompose_dataset(datasets.Dataset.from_dict({"caption": ["Fat."]}), str(tmp_path / "encoder"))
    datasets.Dataset.from_dict({"caption": ["Fat."]}).save_to_disk(str(tmp_path / "in"))
    with pytest.raises(SystemExit, match="2"):
        main(["decompose", str(tmp_path / "in"), "--model", "./no-such-llm", "-o", str(tmp_path / "out")])
    assert "'./no-such-llm' does not exist; give a causal language model's folder" in capsys.readouterr().err

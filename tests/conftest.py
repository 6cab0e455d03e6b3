"""Shared offline fixtures: a tiny word-level tokenizer, a tiny PathFLIP config and generated bags."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

VOCABULARY = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] . , the a an of in with and is are at shows show seen there"
    " tumour tumor stroma necrosis fat lymphocytes nuclei dense fibrous cells region slide left right upper lower"
    " carcinoma invasive benign normal grade high low focal areas large small cm mm 1 2 3 4 5"
).split()


def build_tokenizer():
    """A BERT-style word-level tokenizer built in memory (no download)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(VOCABULARY)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_config(**overrides):
    """A PathFLIP config small enough for CPU tests that still learns in a few dozen steps.

    At width 32 the usual std of 0.02 leaves every embedding dominated by the query/[CLS] residual
    stream (inputs barely matter at init, and contrastive training collapses); 0.2 keeps the
    input-dependent share near that of the 768-wide paper model. Dropout is off for the same reason.
    """
    from modeling_pathflip import PathFLIPConfig

    init_std = 0.2
    values = dict(
        patch_dim=16,
        patch_projection_dim=16,
        num_query_tokens=4,
        region_grid_size=4,
        region_chunk_size=3,
        qformer_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            initializer_range=init_std,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        text_config=dict(
            model_type="bert",
            vocab_size=len(VOCABULARY),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            initializer_range=init_std,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        initializer_range=init_std,
        context_dropout=0.0,
        embed_dim=16,
        context_heads=4,
        context_intermediate_size=32,
        tra_heads=4,
        num_subcaptions=3,
    )
    values.update(overrides)
    return PathFLIPConfig(**values)


CAPTIONS = [
    "Invasive carcinoma with dense nuclei. Fibrous stroma in the left region. Focal necrosis is seen.",
    "Benign fat with small lymphocytes. There are normal cells.",
    "High grade tumour in the upper region. Large areas of necrosis. Stroma is fibrous.",
    "Lymphocytes in the lower region. Fat and stroma. No tumour is seen.",
]


def make_bag(
    index: int, num_patches: int, *, patch_dim: int = 16, grid_side: int = 12, patch_size: int = 512, seed: int = 0
) -> dict:
    """A bag on random distinct cells of a ``grid_side`` x ``grid_side`` patch grid.

    Features scatter around a per-bag centre, as patches of one slide share its tissue and stain.
    """
    generator = torch.Generator().manual_seed(seed * 1000 + index)
    cells = torch.randperm(grid_side * grid_side, generator=generator)[:num_patches]
    coords = torch.stack([cells % grid_side, cells // grid_side], dim=1) * patch_size
    return {
        "slide_id": f"slide-{index}",
        "features": torch.randn(patch_dim, generator=generator)
        + 0.5 * torch.randn(num_patches, patch_dim, generator=generator),
        "coords": coords.int(),
        "patch_size_level0": patch_size,
        "caption": CAPTIONS[index % len(CAPTIONS)],
    }


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture
def config():
    return tiny_config()


@pytest.fixture
def processor(tokenizer, config):
    from modeling_pathflip import PathFLIPProcessor

    return PathFLIPProcessor.from_model_config(tokenizer, config)


@pytest.fixture
def model(config):
    from modeling_pathflip import PathFLIPModel

    torch.manual_seed(0)
    return PathFLIPModel(config).eval()


@pytest.fixture(scope="session")
def bag_factory():
    return make_bag


@pytest.fixture(scope="session")
def config_factory():
    return tiny_config


@pytest.fixture(scope="session")
def bag_inputs():
    """Select the bag tensors of a processor batch, in `get_slide_features` order."""
    from modeling_pathflip import BAG_INPUT_NAMES

    return lambda batch: {key: batch[key] for key in BAG_INPUT_NAMES}


@pytest.fixture
def free_port() -> int:
    """A free TCP port on the loopback interface, for a test's own process group."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_llm_config(tokenizer, **overrides) -> dict:
    """A 2-layer LLaMA-style causal LM config for ``tokenizer`` (random weights)."""
    values = dict(
        model_type="llama", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    values.update(overrides)
    return values


@pytest.fixture(scope="session")
def llm_tokenizer():
    """A byte-level BPE tokenizer trained on the test captions, with the ``<image>`` placeholder."""
    from processing.text import train_causal_lm_tokenizer

    questions = ["Describe the slide.", "What is the diagnosis?", "Is there necrosis?", "A. B. C. yes no"]
    return train_causal_lm_tokenizer(CAPTIONS * 4 + questions * 4, vocab_size=400)


@pytest.fixture
def generation_model(llm_tokenizer):
    """A tiny PathFLIPForConditionalGeneration and its processor (max 5 visual tokens)."""
    from modeling_pathflip import (
        PathFLIPForConditionalGeneration,
        PathFLIPGenerationConfig,
        PathFLIPGenerationProcessor,
    )

    config = PathFLIPGenerationConfig(
        pathflip_config=tiny_config().to_dict(), llm_config=tiny_llm_config(llm_tokenizer), max_visual_tokens=5
    )
    processor = PathFLIPGenerationProcessor.from_model_config(llm_tokenizer, config, max_length=160)
    torch.manual_seed(0)
    return PathFLIPForConditionalGeneration(config).eval(), processor

"""A random state dict in the authors' released layout, its hparams.yaml and a text-model folder."""

from __future__ import annotations

import pytest
import torch

from tests.test_conversion.released_layout import RELEASED_HPARAMS, TINY, TINY_TEXT, random_state, released_shapes


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory, tokenizer):
    """A random state dict in the released layout at small sizes, its hparams.yaml and a text-model folder."""
    import yaml
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("release")
    text = {**TINY_TEXT, "vocab_size": len(tokenizer)}
    hparams = {**RELEASED_HPARAMS, **TINY}
    shapes = released_shapes(hparams["image_embed_dim"], hparams["embed_dim"], text, hparams["lora_rank"],
                             hparams["lora_target_modules"])  # fmt: skip
    (folder / "hparams.yaml").write_text(yaml.safe_dump(hparams))
    torch.manual_seed(1)
    BertModel(BertConfig(**text)).save_pretrained(folder / "text-model")
    tokenizer.save_pretrained(folder / "text-model")
    return {"folder": folder, "hparams": hparams, "state": random_state(shapes), "text": text}

"""Initialising the Q-Former from a pretrained BERT with BLIP-2's mapping (LAVIS's query-FFN copy included)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertModel, Blip2QFormerConfig, Blip2QFormerModel

from modeling_pathflip import PathFLIPModel
from pathflip.training.qformer_init import initialise_qformer_from_bert


def tiny_bert(**overrides) -> BertModel:
    values = dict(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(1)
    bert = BertModel(BertConfig(**{**values, **overrides}), add_pooling_layer=False)
    with torch.no_grad():
        for parameter in bert.parameters():  # LayerNorms start at 1 / 0 on both sides: make every copy visible
            parameter.normal_()
    return bert


def expected_pairs(num_layers: int, text_ffn: bool = False) -> dict[str, str]:
    """The BLIP-2 mapping written out by hand: Q-Former parameter -> BERT parameter."""
    pairs = {"layernorm.weight": "embeddings.LayerNorm.weight", "layernorm.bias": "embeddings.LayerNorm.bias"}
    for i in range(num_layers):
        for p in ("weight", "bias"):
            pairs[f"encoder.layer.{i}.attention.attention.query.{p}"] = f"encoder.layer.{i}.attention.self.query.{p}"
            pairs[f"encoder.layer.{i}.attention.attention.key.{p}"] = f"encoder.layer.{i}.attention.self.key.{p}"
            pairs[f"encoder.layer.{i}.attention.attention.value.{p}"] = f"encoder.layer.{i}.attention.self.value.{p}"
            pairs[f"encoder.layer.{i}.attention.output.dense.{p}"] = f"encoder.layer.{i}.attention.output.dense.{p}"
            pairs[f"encoder.layer.{i}.attention.output.LayerNorm.{p}"] = (
                f"encoder.layer.{i}.attention.output.LayerNorm.{p}"
            )
            pairs[f"encoder.layer.{i}.intermediate_query.dense.{p}"] = f"encoder.layer.{i}.intermediate.dense.{p}"
            pairs[f"encoder.layer.{i}.output_query.dense.{p}"] = f"encoder.layer.{i}.output.dense.{p}"
            pairs[f"encoder.layer.{i}.output_query.LayerNorm.{p}"] = f"encoder.layer.{i}.output.LayerNorm.{p}"
            if text_ffn:
                pairs[f"encoder.layer.{i}.intermediate.dense.{p}"] = f"encoder.layer.{i}.intermediate.dense.{p}"
                pairs[f"encoder.layer.{i}.output.dense.{p}"] = f"encoder.layer.{i}.output.dense.{p}"
                pairs[f"encoder.layer.{i}.output.LayerNorm.{p}"] = f"encoder.layer.{i}.output.LayerNorm.{p}"
    return pairs


def test_qformer_equals_bert_on_shared_weights_and_keeps_cross_attention(config_factory):
    torch.manual_seed(0)
    model = PathFLIPModel(config_factory())  # Q-Former: 2 layers of 32, 4 heads, FFN 64
    before = {name: value.clone() for name, value in model.state_dict().items()}
    bert = tiny_bert()  # 3 layers: the Q-Former takes the first 2
    copied = initialise_qformer_from_bert(model, bert)

    pairs = expected_pairs(2)
    assert sorted(copied) == sorted(pairs)
    qformer, bert_weights = model.qformer.state_dict(), bert.state_dict()
    for qformer_key, bert_key in pairs.items():
        torch.testing.assert_close(qformer[qformer_key], bert_weights[bert_key], rtol=0, atol=0, msg=qformer_key)
        assert not torch.equal(qformer[qformer_key], before[f"qformer.{qformer_key}"]), f"{qformer_key} unchanged"
    cross = [name for name in before if ".crossattention." in name]
    assert cross
    for name, value in model.state_dict().items():
        if name.removeprefix("qformer.") not in pairs:  # cross-attention, query tokens, the rest of PathFLIP
            torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)


def test_state_dict_with_prefix_and_a_text_ffn():
    config = Blip2QFormerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                encoder_hidden_size=16, use_qformer_text_input=True)  # fmt: skip
    holder = nn.Module()
    holder.qformer = Blip2QFormerModel(config)
    torch.manual_seed(2)
    masked_lm = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=64, max_position_embeddings=32))  # fmt: skip
    state = masked_lm.state_dict()  # "bert."-prefixed keys, plus the MLM head's own LayerNorm
    with pytest.raises(ValueError, match="pass num_attention_heads="):
        initialise_qformer_from_bert(holder, state)
    copied = initialise_qformer_from_bert(holder, state, num_attention_heads=4)
    pairs = expected_pairs(2, text_ffn=True)
    assert sorted(copied) == sorted(pairs)
    for qformer_key, bert_key in pairs.items():
        torch.testing.assert_close(holder.qformer.state_dict()[qformer_key], state[f"bert.{bert_key}"], rtol=0, atol=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden_size": 48, "num_attention_heads": 4}, r"hidden_size 48 \(Q-Former: 32\)"),
        ({"intermediate_size": 128}, r"intermediate_size 128 \(Q-Former: 64\)"),
        ({"num_attention_heads": 8}, r"num_attention_heads 8 \(Q-Former: 4\)"),
        ({"num_hidden_layers": 1}, r"1 layers \(Q-Former: 2; it may have fewer, not more\)"),
    ],
)
def test_a_bert_that_does_not_fit_is_refused(config_factory, overrides, message):
    model = PathFLIPModel(config_factory())
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        initialise_qformer_from_bert(model, tiny_bert(**overrides))
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed although the BERT was refused"


def test_not_a_bert_or_no_qformer_names_the_fix(config_factory):
    with pytest.raises(ValueError, match="have no 'embeddings.LayerNorm.weight' key"):
        initialise_qformer_from_bert(PathFLIPModel(config_factory()), {"weight": torch.zeros(2)}, num_attention_heads=4)
    with pytest.raises(ValueError, match="Linear has no Blip2QFormerModel `qformer`"):
        initialise_qformer_from_bert(nn.Linear(2, 2), tiny_bert())

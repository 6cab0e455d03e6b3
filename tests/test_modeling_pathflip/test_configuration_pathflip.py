import pytest
from transformers import AutoConfig, Blip2QFormerConfig

from modeling_pathflip import PathFLIPConfig


def test_defaults_are_the_paper_configuration():
    config = PathFLIPConfig()
    assert (config.patch_dim, config.patch_projection_dim, config.embed_dim) == (512, 256, 256)
    qformer = config.qformer_config
    assert isinstance(qformer, Blip2QFormerConfig)
    assert (qformer.num_hidden_layers, qformer.hidden_size, qformer.cross_attention_frequency) == (12, 768, 2)
    assert qformer.encoder_hidden_size == 256
    assert (config.num_query_tokens, config.region_grid_size, config.context_layers) == (8, 16, 2)
    assert (config.num_subcaptions, config.tra_heads) == (8, 8)
    assert config.text_config.model_type == "bert"


def test_round_trip_through_save_and_to_dict(tmp_path, config_factory):
    config = config_factory(text_pooling="mean", region_negatives="one_per_slide", use_region_loss=False)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, PathFLIPConfig)
    assert _comparable(loaded) == _comparable(config)
    assert loaded.qformer_config.hidden_size == 32 and loaded.text_config.hidden_size == 32
    rebuilt = PathFLIPConfig(**config.to_dict())
    assert _comparable(rebuilt) == _comparable(config)


def _comparable(config):
    values = config.to_dict()
    values.pop("_name_or_path", None)  # where it was loaded from
    return values


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"embed_dim": 30, "tra_heads": 4}, "divisible by"),
        ({"qformer_config": {"encoder_hidden_size": 99}}, "encoder_hidden_size"),
        ({"text_pooling": "max"}, "text_pooling"),
        ({"region_negatives": "some"}, "region_negatives"),
        ({"use_slide_loss": False, "use_region_loss": False}, "At least one"),
        ({"num_query_tokens": 0}, "num_query_tokens"),
        ({"context_layers": -1}, "context_layers must be an integer >= 0"),
        ({"context_layers": 1.5}, "context_layers must be an integer >= 0"),
        ({"label_smoothing": 1.5}, "label_smoothing"),
        ({"use_slide_loss": "false"}, r"use_slide_loss must be True or False, got 'false'"),
        ({"patch_dim": True}, r"patch_dim must be a positive integer, got True"),
        ({"region_loss_weight": -1.0}, r"region_loss_weight must be a finite number >= 0, got -1.0"),
        ({"slide_loss_weight": float("nan")}, r"slide_loss_weight must be a finite number >= 0, got nan"),
        ({"logit_scale_init_value": float("inf")}, r"logit_scale_init_value must be a finite number, got inf"),
        ({"initializer_range": -0.02}, r"initializer_range must be a finite number >= 0"),
        ({"patch_size_px": 0}, r"patch_size_px must be None or a number > 0, got 0"),
        ({"patch_size_um": float("nan")}, r"patch_size_um must be None or a number > 0"),
        ({"patch_encoder": " "}, r"patch_encoder must be None or the name of the patch encoder"),
        ({"context_dropout": "0.1"}, r"context_dropout must be a number in \[0, 1\), got '0.1'"),
    ],
)
def test_inconsistent_values_raise(overrides, message, config_factory):
    with pytest.raises(ValueError, match=message):
        config_factory(**overrides)

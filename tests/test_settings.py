"""Settings: recipe defaults, the tiny profile, and --set overrides that fail with the key named."""

import pytest

from phi3e2e.errors import UserError
from phi3e2e.workflow.settings import build_settings, parse_override, valid_keys


def test_defaults_are_the_recipes():
    s = build_settings("phi3-mini", {})
    assert (s.lora.r, s.lora.alpha, s.lora.dropout) == (64, 64, 0.1)
    assert s.lora.target_modules == ["o_proj", "qkv_proj"]
    t = s.training
    assert (t.learning_rate, t.gradient_accumulation_steps, t.max_grad_norm) == (1e-4, 4, 0.3)
    assert (t.seed, t.data_seed) == (0, 42)
    assert s.data.text_template == "<|user|>\n{Question}<|end|>\n<|assistant|>\n{Best Answer}\n<|end|>"
    assert s.data.max_length == 2048
    assert (s.qlora.quant_type, s.qlora.double_quant, s.qlora.compute_dtype) == ("nf4", True, "bfloat16")


def test_tiny_profile_trains_fast_on_cpu():
    s = build_settings("tiny", {})
    assert s.training.torch_dtype == "float32"
    assert s.data.max_length < 2048
    assert s.lora.r < 64


def test_user_overrides_win_over_the_profile():
    s = build_settings("tiny", dict([parse_override("lora.r=4"), parse_override("training.max_steps=50")]))
    assert s.lora.r == 4 and s.training.max_steps == 50


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("lora.r=16", "lora.r", 16),
        ("training.learning_rate=2e-4", "training.learning_rate", "2e-4"),
        ("lora.target_modules=[qkv_proj, o_proj]", "lora.target_modules", ["qkv_proj", "o_proj"]),
        ("qlora.double_quant=false", "qlora.double_quant", False),
        ("data.text_template=Q: {Question}\\nA: {Best Answer}", "data.text_template", "Q: {Question}\nA: {Best Answer}"),
    ],
)
def test_parse_override(text, key, value):
    assert parse_override(text) == (key, value)


def test_scientific_notation_becomes_a_float():
    s = build_settings("phi3-mini", dict([parse_override("training.learning_rate=2e-4")]))
    assert s.training.learning_rate == pytest.approx(2e-4)


def test_unknown_key_names_the_nearest_valid_ones():
    with pytest.raises(UserError) as e:
        build_settings("phi3-mini", {"lora.rank": 8})
    assert "'lora.rank'" in str(e.value) and "lora.r" in str(e.value)


def test_bad_value_names_the_key_and_reason():
    with pytest.raises(UserError) as e:
        build_settings("phi3-mini", {"lora.dropout": 1.5})
    assert "lora.dropout" in str(e.value) and "less than 1" in str(e.value)


def test_override_without_equals_is_rejected():
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_override("lora.r")


def test_every_key_is_section_dot_field():
    keys = valid_keys()
    assert "training.max_steps" in keys and "export.int4_block_size" in keys
    assert all(key.count(".") == 1 for key in keys)


def test_a_boolean_is_not_a_number():
    """pydantic reads `true` as 1.0: a learning rate of 1 would train to nonsense."""
    for text in ("training.learning_rate=true", "lora.r=false", "training.max_steps=yes"):
        with pytest.raises(UserError, match=r"not a true/false setting \(its default: "):
            build_settings("phi3-mini", dict([parse_override(text)]))
    s = build_settings("phi3-mini", dict([parse_override("training.gradient_checkpointing=false"),
                                          parse_override("export.int4_is_symmetric=false")]))
    assert s.training.gradient_checkpointing is False and s.export.int4_is_symmetric is False


def test_max_length_beyond_the_models_context_fails_before_anything_runs(tmp_path):
    import json

    from phi3e2e.workflow.model_family import check_max_length

    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    check_max_length(tmp_path, 4096)
    with pytest.raises(UserError, match=r"data.max_length=1000000000000000000000000: more than .*context of 4096"):
        check_max_length(tmp_path, 10**24)

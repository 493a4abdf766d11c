"""Every algo x target workflow renders, validates, and is accepted by Olive itself."""

import json
import shutil

import pytest

from phi3e2e.errors import UserError
from phi3e2e.resources import templates_dir
from phi3e2e.workflow import render
from phi3e2e.workflow.render import WorkflowPaths, render_workflow
from phi3e2e.workflow.settings import build_settings

PATHS = WorkflowPaths(
    model="/models/phi3", train_file="/data/train.jsonl", eval_file="/data/eval.jsonl",
    output="olive-output", cache=".olive-cache", checkpoints=".checkpoints",
)
COMBINATIONS = [(algo, target) for algo in ("lora", "qlora") for target in ("local", "aml")]


@pytest.mark.parametrize("algo, target", COMBINATIONS)
def test_each_combination_renders_the_three_passes(algo, target):
    config = render_workflow(algo, target, build_settings("phi3-mini", {}), PATHS).config
    passes = config["passes"]
    assert list(passes) == ["finetune", "merge", "int4"]
    assert passes["finetune"]["type"] == {"lora": "LoRA", "qlora": "QLoRA"}[algo]
    assert passes["merge"]["type"] == "MergeAdapterWeights"
    assert passes["int4"] == {"type": "ModelBuilder", "precision": "int4"}
    assert passes["finetune"]["r"] == 64 and passes["finetune"]["training_args"]["seed"] == 0
    assert config["input_model"] == {"type": "HfModel", "model_path": "/models/phi3"}
    device = config["systems"]["local_system"]["accelerators"][0]
    # QLoRA (bitsandbytes) and Azure ML compute are CUDA; local LoRA runs on the CPU here.
    assert device["device"] == ("cpu" if (algo, target) == ("lora", "local") else "gpu")
    if algo == "qlora":
        assert (passes["finetune"]["quant_type"], passes["finetune"]["double_quant"]) == ("nf4", True)
    else:
        assert "quant_type" not in passes["finetune"]


def test_eval_split_becomes_olive_eval_data():
    config = render_workflow("lora", "local", build_settings("tiny", {}), PATHS).config
    assert [d["name"] for d in config["data_configs"]] == ["train_data", "eval_data"]
    assert config["passes"]["finetune"]["eval_data_config"] == "eval_data"
    no_eval = WorkflowPaths(**{**PATHS.__dict__, "eval_file": None})
    config = render_workflow("lora", "local", build_settings("tiny", {}), no_eval).config
    assert [d["name"] for d in config["data_configs"]] == ["train_data"]
    assert "eval_data_config" not in config["passes"]["finetune"]


def test_text_with_quotes_and_newlines_survives_rendering():
    settings = build_settings("phi3-mini", {"data.text_template": 'Q "{Question}"\n\tA: {Best Answer}'})
    config = render_workflow("lora", "local", settings, PATHS).config
    assert config["data_configs"][0]["pre_process_data_config"]["text_template"] == 'Q "{Question}"\n\tA: {Best Answer}'


@pytest.mark.parametrize("algo, target", COMBINATIONS)
def test_olive_accepts_the_rendered_config(algo, target):
    """Our pydantic models mirror Olive's schema; Olive's own RunConfig must agree."""
    from olive.workflows.run.config import RunConfig

    config = render_workflow(algo, target, build_settings("phi3-mini", {}), PATHS).config
    run_config = RunConfig.model_validate(json.loads(json.dumps(config)))
    finetune = run_config.passes["finetune"][0]
    assert finetune.type.lower() == algo
    assert finetune.config["r"] == 64


def test_a_broken_template_value_fails_naming_the_field(tmp_path, monkeypatch):
    broken = tmp_path / "templates"
    shutil.copytree(templates_dir(), broken)
    template = broken / render.WORKFLOW_TEMPLATE
    text = template.read_text().replace('"type": "MergeAdapterWeights"', '"type": "MergeAdapterWeight"')
    template.write_text(text)
    monkeypatch.setattr(render, "templates_dir", lambda: broken)
    with pytest.raises(UserError) as e:
        render_workflow("lora", "local", build_settings("phi3-mini", {}), PATHS).config
    assert "passes.merge.type" in str(e.value)


def test_an_unknown_field_in_the_template_fails_naming_it(tmp_path, monkeypatch):
    broken = tmp_path / "templates"
    shutil.copytree(templates_dir(), broken)
    template = broken / render.WORKFLOW_TEMPLATE
    template.write_text(template.read_text().replace('"lora_dropout"', '"dropout"'))
    monkeypatch.setattr(render, "templates_dir", lambda: broken)
    with pytest.raises(UserError) as e:
        render_workflow("lora", "local", build_settings("phi3-mini", {}), PATHS).config
    assert "passes.finetune.LoRA.dropout: Extra inputs are not permitted" in str(e.value)
    assert "passes.finetune.LoRA.lora_dropout: Field required" in str(e.value)


def test_a_template_without_placeholders_is_rejected():
    settings = build_settings("phi3-mini", {"data.text_template": "no columns here"})
    with pytest.raises(UserError, match="text_template"):
        render_workflow("lora", "local", settings, PATHS).config

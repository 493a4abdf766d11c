"""Every workflow phi3e2e writes renders from its template, validates, and is accepted by Olive itself.

Three templates: lora.json.j2, qlora.json.j2 (extends it) and model-builder.json.j2 (export's
workflow, and the macro that is the fine-tune's int4 pass). A project's templates/ wins.
"""

import json
import shutil

import pytest

from phi3e2e.errors import UserError
from phi3e2e.resources import templates_dir
from phi3e2e.workflow.render import WorkflowPaths, render_model_builder, render_workflow
from phi3e2e.workflow.settings import build_settings

PATHS = WorkflowPaths(
    model="/models/phi3", train_file="/data/train.jsonl", eval_file="/data/eval.jsonl",
    output="olive-output", cache=".olive-cache", checkpoints=".checkpoints",
)
COMBINATIONS = [(algo, target) for algo in ("lora", "qlora") for target in ("local", "aml")]
QLORA_KEYS = {"compute_dtype", "quant_type", "double_quant"}


@pytest.fixture
def project_templates(tmp_path):
    """A project's templates/ as `phi3e2e init` writes it: copies of the shipped ones, to edit."""
    folder = tmp_path / "templates"
    shutil.copytree(templates_dir(), folder)
    return folder


def edit(template, old, new):
    text = template.read_text()
    assert old in text, f"{old!r} not in {template.name}"
    template.write_text(text.replace(old, new, 1))


def test_the_four_templates_ship_and_the_old_one_is_gone():
    assert sorted(p.name for p in templates_dir().glob("*.j2")) == ["adapter-int4.json.j2", "lora.json.j2",
                                                                    "model-builder.json.j2", "qlora.json.j2"]


@pytest.mark.parametrize("algo, target", COMBINATIONS)
def test_each_combination_renders_the_three_passes(algo, target):
    rendered = render_workflow(algo, algo == "qlora" or target == "aml", build_settings("phi3-mini", {}), PATHS)
    assert rendered.template == templates_dir() / f"{algo}.json.j2"
    config = rendered.config
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


@pytest.mark.parametrize("profile", ["tiny", "phi3-mini"])
def test_qlora_is_lora_plus_its_quantization_keys(profile):
    """qlora.json.j2 extends lora.json.j2: apart from the pass type and 4-bit keys, the same workflow."""
    settings = build_settings(profile, {})
    lora = render_workflow("lora", True, settings, PATHS).config
    qlora = render_workflow("qlora", True, settings, PATHS).config
    assert QLORA_KEYS <= set(qlora["passes"]["finetune"])
    for key in QLORA_KEYS:
        del qlora["passes"]["finetune"][key]
    qlora["passes"]["finetune"]["type"] = "LoRA"
    assert json.dumps(qlora) == json.dumps(lora)  # same keys in the same order


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_finetune_int4_step_and_export_share_the_model_builder_pass(device):
    options = {"int4_block_size": 32, "int4_accuracy_level": 4, "int4_op_types_to_quantize": ["MatMul", "Gather"],
               "int4_is_symmetric": False}
    settings = build_settings("tiny", {f"export.{key}": value for key, value in options.items()})
    int4 = render_workflow("lora", device == "cuda", settings, PATHS).config["passes"]["int4"]
    rendered = render_model_builder("/runs/r/merged", device, "int4", options)
    assert rendered.template == templates_dir() / "model-builder.json.j2"
    assert rendered.config["passes"] == {"build": int4}
    assert int4 == {"type": "ModelBuilder", "precision": "int4", **options}
    assert rendered.config["input_model"] == {"type": "HfModel", "model_path": "/runs/r/merged"}
    accelerator = rendered.config["systems"]["local_system"]["accelerators"][0]
    assert accelerator == ({"device": "cpu", "execution_providers": ["CPUExecutionProvider"]} if device == "cpu"
                           else {"device": "gpu", "execution_providers": ["CUDAExecutionProvider"]})


def test_export_keeps_modelbuilder_defaults_for_unset_options_and_int4_options_only_for_int4():
    build = render_model_builder("/m", "cuda", "int4", {"int4_block_size": 32, "int4_is_symmetric": None})
    assert build.config["passes"]["build"] == {"type": "ModelBuilder", "precision": "int4", "int4_block_size": 32}
    fp32 = render_model_builder("/m", "cuda", "fp32", {"int4_block_size": 32, "int4_accuracy_level": 4})
    assert fp32.config["passes"]["build"] == {"type": "ModelBuilder", "precision": "fp32"}


def test_eval_split_becomes_olive_eval_data():
    config = render_workflow("lora", False, build_settings("tiny", {}), PATHS).config
    assert [d["name"] for d in config["data_configs"]] == ["train_data", "eval_data"]
    assert config["passes"]["finetune"]["eval_data_config"] == "eval_data"
    no_eval = WorkflowPaths(**{**PATHS.__dict__, "eval_file": None})
    config = render_workflow("lora", False, build_settings("tiny", {}), no_eval).config
    assert [d["name"] for d in config["data_configs"]] == ["train_data"]
    assert "eval_data_config" not in config["passes"]["finetune"]


def test_text_with_quotes_and_newlines_survives_rendering():
    settings = build_settings("phi3-mini", {"data.text_template": 'Q "{Question}"\n\tA: {Best Answer}'})
    config = render_workflow("lora", False, settings, PATHS).config
    assert config["data_configs"][0]["pre_process_data_config"]["text_template"] == 'Q "{Question}"\n\tA: {Best Answer}'


@pytest.mark.parametrize("algo, target", COMBINATIONS)
def test_olive_accepts_the_rendered_config(algo, target):
    """Our pydantic models mirror Olive's schema; Olive's own RunConfig must agree."""
    from olive.workflows.run.config import RunConfig

    config = render_workflow(algo, algo == "qlora" or target == "aml", build_settings("phi3-mini", {}), PATHS).config
    run_config = RunConfig.model_validate(json.loads(json.dumps(config)))
    finetune = run_config.passes["finetune"][0]
    assert finetune.type.lower() == algo
    assert finetune.config["r"] == 64


@pytest.mark.parametrize("precision", ["int4", "fp16", "fp32"])
def test_olive_accepts_the_export_workflow(precision):
    from olive.workflows.run.config import RunConfig

    config = render_model_builder("/m", "cuda", precision, {"int4_block_size": 32}).config
    run_config = RunConfig.model_validate(json.loads(json.dumps(config)))
    assert run_config.passes["build"][0].type.lower() == "modelbuilder"
    assert run_config.passes["build"][0].config["precision"] == precision


# --- A project's own templates ---------------------------------------------------------------


def test_project_copies_win_and_say_so(project_templates, tmp_path):
    edit(project_templates / "lora.json.j2", '"lora_dropout": {{ s.lora.dropout | tojson }}', '"lora_dropout": 0.25')
    settings = build_settings("phi3-mini", {})
    rendered = render_workflow("lora", False, settings, PATHS, project_templates=project_templates)
    assert rendered.config["passes"]["finetune"]["lora_dropout"] == 0.25
    assert rendered.template == project_templates / "lora.json.j2"
    assert rendered.template_note(tmp_path) == "templates/lora.json.j2, project copy"
    # QLoRA extends the project's lora.json.j2, so it gets the edit too.
    qlora = render_workflow("qlora", True, settings, PATHS, project_templates=project_templates).config
    assert qlora["passes"]["finetune"]["lora_dropout"] == 0.25
    shipped = render_workflow("lora", False, settings, PATHS)
    assert shipped.config["passes"]["finetune"]["lora_dropout"] == 0.1
    assert shipped.template_note(tmp_path) == "lora.json.j2, shipped"


def test_a_template_missing_from_the_project_falls_back_to_the_shipped_one(project_templates):
    (project_templates / "qlora.json.j2").unlink()
    (project_templates / "model-builder.json.j2").unlink()
    edit(project_templates / "lora.json.j2", '"save_strategy": "steps"', '"save_strategy": "epoch"')
    rendered = render_workflow("qlora", True, build_settings("tiny", {}), PATHS, project_templates=project_templates)
    assert rendered.template == templates_dir() / "qlora.json.j2"
    # The shipped qlora.json.j2 extends "lora.json.j2", found in the project first.
    assert rendered.config["passes"]["finetune"]["training_args"]["save_strategy"] == "epoch"


def test_one_model_builder_edit_changes_the_finetune_int4_step_and_export(project_templates):
    edit(project_templates / "model-builder.json.j2", '"precision": {{ build.precision | tojson }}',
         '"precision": {{ build.precision | tojson }}, "int4_accuracy_level": 2')
    settings = build_settings("tiny", {})
    int4 = render_workflow("lora", False, settings, PATHS, project_templates=project_templates).config["passes"]
    build = render_model_builder("/m", "cpu", "int4", {}, project_templates=project_templates).config["passes"]
    assert int4["int4"] == build["build"] == {"type": "ModelBuilder", "precision": "int4", "int4_accuracy_level": 2}


# --- An edit that breaks the workflow fails before anything runs, naming the file -------------


def render_lora(project_templates, algo="lora"):
    return render_workflow(algo, algo == "qlora", build_settings("phi3-mini", {}), PATHS, project_templates=project_templates)


def fails(call) -> str:
    with pytest.raises(UserError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message  # one line
    return message


def line_of(template, text) -> int:
    return next(n for n, line in enumerate(template.read_text().splitlines(), 1) if text in line)


def test_a_jinja_syntax_error_names_the_file_and_line(project_templates):
    lora = project_templates / "lora.json.j2"
    edit(lora, "{%- endfor %}", "{%- endfro %}")
    for algo in ("lora", "qlora"):  # QLoRA extends the broken file: the error names that file
        message = fails(lambda: render_lora(project_templates, algo))
        assert message.startswith(f"{lora}:{line_of(lora, 'endfro')}: ") and "endfro" in message


def test_an_undefined_variable_names_the_file_and_line(project_templates):
    lora = project_templates / "lora.json.j2"
    edit(lora, "s.lora.r | tojson", "rank | tojson")
    message = fails(lambda: render_lora(project_templates))
    assert message == f"{lora}:{line_of(lora, 'rank | tojson')}: 'rank' is undefined"
    edit(lora, "s.training.seed", "s.training.sed")  # a misspelt setting, not only a missing variable
    edit(lora, "rank | tojson", "s.lora.r | tojson")
    message = fails(lambda: render_lora(project_templates))
    assert message.startswith(f"{lora}:{line_of(lora, 'training.sed')}: ") and "'sed'" in message


def test_an_error_in_the_imported_model_builder_macro_names_that_file(project_templates):
    model_builder = project_templates / "model-builder.json.j2"
    edit(model_builder, "build.int4_block_size | tojson", "build.int4_blocksize | tojson")
    settings = build_settings("tiny", {"export.int4_block_size": 32})
    where = f"{model_builder}:{line_of(model_builder, 'int4_blocksize')}: "
    message = fails(lambda: render_workflow("lora", False, settings, PATHS, project_templates=project_templates))
    assert message.startswith(where) and "int4_blocksize" in message
    message = fails(lambda: render_model_builder("/m", "cpu", "int4", {"int4_block_size": 32},
                                                 project_templates=project_templates))
    assert message.startswith(where)


def test_a_missing_parent_template_names_the_line_that_asks_for_it(project_templates):
    qlora = project_templates / "qlora.json.j2"
    edit(qlora, 'extends "lora.json.j2"', 'extends "lora-v2.json.j2"')
    assert fails(lambda: render_lora(project_templates, "qlora")) == (
        f"{qlora}:{line_of(qlora, 'extends')}: template lora-v2.json.j2 not found")


def test_invalid_json_names_the_template_and_where_in_the_output(project_templates):
    lora = project_templates / "lora.json.j2"
    edit(lora, '"merge": {"type": "MergeAdapterWeights"},', '"merge": {"type": "MergeAdapterWeights"}')
    message = fails(lambda: render_lora(project_templates))
    assert message.startswith(f"{lora} (with model-builder.json.j2) rendered invalid JSON: Expecting ',' delimiter")
    assert "near '\"int4\": {'" in message


def test_a_broken_template_value_fails_naming_the_field(project_templates):
    edit(project_templates / "lora.json.j2", '"type": "MergeAdapterWeights"', '"type": "MergeAdapterWeight"')
    message = fails(lambda: render_lora(project_templates))
    assert message.startswith(f"{project_templates / 'lora.json.j2'} (with model-builder.json.j2) rendered an "
                              "invalid Olive config: passes.merge.type:")


def test_an_unknown_field_in_the_template_fails_naming_it(project_templates):
    edit(project_templates / "lora.json.j2", '"lora_dropout"', '"dropout"')
    message = fails(lambda: render_lora(project_templates, "qlora"))
    assert f"{project_templates / 'qlora.json.j2'} (with lora.json.j2, model-builder.json.j2)" in message
    assert "passes.finetune.QLoRA.dropout: Extra inputs are not permitted" in message
    assert "passes.finetune.QLoRA.lora_dropout: Field required" in message


def test_an_invalid_export_workflow_names_the_field(project_templates):
    edit(project_templates / "model-builder.json.j2", '"build":', '"int4":')  # export reads passes.build back
    message = fails(lambda: render_model_builder("/m", "cpu", "int4", {}, project_templates=project_templates))
    assert message.startswith(f"{project_templates / 'model-builder.json.j2'} rendered an invalid Olive config: "
                              "passes.int4.[key]:")


def test_a_received_projects_template_cannot_run_code(project_templates, tmp_path, monkeypatch):
    """A project folder from someone else: its templates render in Jinja's sandbox."""
    monkeypatch.chdir(tmp_path)
    lora = project_templates / "lora.json.j2"
    attacks = ['{{ cycler.__init__.__globals__.os.system("touch pwned") }}',
               "{{ ''.__class__.__mro__[1].__subclasses__() }}",
               "{{ s.lora.__class__.__init__.__globals__ }}",
               "{% set x = [] %}{{ x.append(1) }}"]
    for attack in attacks:
        shutil.copy(templates_dir() / "lora.json.j2", lora)
        edit(lora, '"lora_dropout"', attack + '"lora_dropout"')
        message = fails(lambda: render_lora(project_templates))
        assert message.startswith(f"{lora}:{line_of(lora, attack)}: ") and "unsafe" in message, message
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("name", ["/etc/hostname", "../../../../etc/hostname", "sub/../lora.json.j2", ".hidden"])
def test_templates_include_only_template_files_and_never_echo_another_file(project_templates, name):
    lora = project_templates / "lora.json.j2"
    edit(lora, '"lora_dropout"', '{% include "' + name + '" %}"lora_dropout"')
    message = fails(lambda: render_lora(project_templates))
    assert message == f"{lora}:{line_of(lora, 'include')}: template {name} not found"


def test_a_template_without_placeholders_is_rejected():
    settings = build_settings("phi3-mini", {"data.text_template": "no columns here"})
    with pytest.raises(UserError, match="text_template"):
        render_workflow("lora", False, settings, PATHS).config

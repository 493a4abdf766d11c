"""User story: build another ONNX model from a finished run's merged model with `phi3e2e export`.

Runs the real Olive ModelBuilder pass (`olive run`) on the tiny fine-tuned model; no network.
"""

import json
import shutil

import pytest
from helpers import run_cli

from phi3e2e.build.export import export
from phi3e2e.errors import UserError
from phi3e2e.infer.chat import ChatSession, GenerationOptions
from phi3e2e.project import Project


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A writable copy of the finished project: (project, run_dir)."""
    project = Project(tmp_path / "project")
    shutil.copytree(finished_run[0].root, project.root, symlinks=True)
    return project, project.gen_model / finished_run[1].name


def test_export_for_cpu_yields_a_model_that_chats(run_copy):
    project, run_dir = run_copy
    result = run_cli("export", "--device", "cpu", project=project)
    assert result.returncode == 0, result.stderr
    model_dir = run_dir / "onnx-cpu-int4"
    assert "onnx-cpu-int4" in result.stdout and "phi3e2e chat --model" in result.stdout
    first_line = result.stdout.splitlines()[0]
    assert first_line.endswith("(Olive ModelBuilder, int4 for cpu; template: model-builder.json.j2, shipped)")
    record = json.loads((model_dir / "export.json").read_text())
    assert record["device"] == "cpu" and record["precision"] == "int4" and record["source"] == "merged"
    assert json.loads((model_dir / "olive-config.json").read_text())["passes"]["build"]["type"] == "ModelBuilder"
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]  # no staging left
    genai_config = json.loads((model_dir / "genai_config.json").read_text())
    assert genai_config["model"]["decoder"]["session_options"]["provider_options"] == []
    # A CPU export decodes on every physical core, like the run's own onnx-int4/.
    from phi3e2e.infer.threads import physical_cores

    assert genai_config["model"]["decoder"]["session_options"]["intra_op_num_threads"] == physical_cores()
    options = GenerationOptions(max_new_tokens=8, min_new_tokens=8)
    answer = ChatSession(model_dir, options).ask("Where is your roastery?")
    assert answer.text and answer.tokens == 8

    again = run_cli("export", "--device", "cpu", project=project)
    assert again.returncode == 2 and "already exists" in again.stderr and again.stderr.count("\n") == 1


def test_export_for_cuda_builds_here_and_its_int4_model_still_runs_on_cpu(run_copy):
    """Building needs no GPU; a CUDA int4 model (as Azure ML runs make) also runs on CPU."""
    project, run_dir = run_copy
    result = export(project, run_dir.name, device="cuda", precision="int4", say=lambda _: None)
    assert result.model_dir == run_dir / "onnx-cuda-int4"
    genai_config = json.loads((result.model_dir / "genai_config.json").read_text())
    assert "cuda" in genai_config["model"]["decoder"]["session_options"]["provider_options"][0]
    session = ChatSession(result.model_dir, GenerationOptions(max_new_tokens=8, min_new_tokens=8), device="cpu")
    assert session.ask("Do you ship?").tokens == 8
    chat = run_cli("chat", "--model", str(result.model_dir), "--prompt", "Do you ship?", "--max-length", "4",
                   project=project)
    assert chat.returncode == 0, chat.stderr
    assert "built for CUDA; it runs on the CPU here" in chat.stderr  # said, not silent


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"device": "cpu", "precision": "fp16"}, "--precision fp16 is for --device cuda"),
        ({"device": "tpu"}, "--device 'tpu'"),
        ({"precision": "int8"}, "--precision 'int8'"),
        ({"run": "no-such-run"}, "no run .no-such-run. in"),
        ({"precision": "fp32", "int4_options": {"int4_block_size": 32}}, "only for --precision int4"),
    ],
)
def test_bad_export_requests_fail_before_anything_is_built(run_copy, kwargs, message):
    project, run_dir = run_copy
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(UserError, match=message.replace("'", ".")):
        export(project, say=lambda _: None, **kwargs)
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_export_renders_the_projects_model_builder_template(run_copy):
    """A project's templates/model-builder.json.j2 wins; a broken edit stops export before it builds."""
    from phi3e2e.resources import templates_dir

    project, run_dir = run_copy
    project.templates.mkdir()
    template = project.templates / "model-builder.json.j2"
    shutil.copyfile(templates_dir() / template.name, template)
    template.write_text(template.read_text().replace('"log_severity_level": 1', '"log_severity_level": "loud"'))
    before = sorted(p.name for p in run_dir.iterdir())
    result = run_cli("export", "--device", "cpu", project=project)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {template} rendered an invalid Olive config: log_severity_level:")
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_export_without_a_finished_run_says_what_to_run(tiny_project):
    result = run_cli("export", project=tiny_project)
    assert result.returncode == 2 and "phi3e2e finetune" in result.stderr


def test_export_builds_with_the_int4_options_the_run_used(run_copy):
    from phi3e2e import runs
    from phi3e2e.build.export import int4_build_options
    from phi3e2e.workflow.render import render_model_builder

    project, run_dir = run_copy
    merged = run_dir / "merged"
    record = runs.read_record(run_dir)
    record.settings.export.int4_block_size, record.settings.export.int4_accuracy_level = 16, 4
    runs.write_record(run_dir, record)
    options = int4_build_options(run_dir, "cpu", merged)
    int4 = render_model_builder(merged, "cpu", "int4", options).config["passes"]["build"]
    assert int4["int4_block_size"] == 16 and int4["int4_accuracy_level"] == 4
    # A CUDA build keeps ModelBuilder's own options, not the CPU run's.
    cuda = render_model_builder(merged, "cuda", "int4", int4_build_options(run_dir, "cuda", merged)).config
    assert cuda["passes"]["build"] == {"type": "ModelBuilder", "precision": "int4"}
    # A run built for CUDA (no cpu_int4 record) gets phi3e2e's measured CPU defaults on a CPU export.
    record.cpu_int4 = None
    runs.write_record(run_dir, record)
    assert int4_build_options(run_dir, "cpu", merged)["int4_op_types_to_quantize"] == ["MatMul", "Gather"]
    fp32 = render_model_builder(merged, "cuda", "fp32", options).config
    assert fp32["passes"]["build"] == {"type": "ModelBuilder", "precision": "fp32"}
    assert fp32["systems"]["local_system"]["accelerators"][0]["execution_providers"] == ["CUDAExecutionProvider"]


def _matmuls(model_dir) -> list:
    import onnx

    graph = onnx.load(model_dir / "model.onnx", load_external_data=False).graph
    return [node for node in graph.node if node.op_type == "MatMulNBits"]


def _matmul_block_sizes(model_dir) -> set[int]:
    return {attr.i for node in _matmuls(model_dir) for attr in node.attribute if attr.name == "block_size"}


def _matmuls_with_zero_points(model_dir) -> set[bool]:
    return {len(node.input) > 3 and bool(node.input[3]) for node in _matmuls(model_dir)}


def test_export_set_rebuilds_with_other_int4_options_and_records_them(run_copy):
    project, run_dir = run_copy
    # The run's own build: the tiny model's default block, asymmetric.
    assert _matmul_block_sizes(run_dir / "onnx-int4") == {64}
    assert _matmuls_with_zero_points(run_dir / "onnx-int4") == {True}
    result = run_cli("export", "--device", "cpu", "--set", "export.int4_block_size=32",
                     "--set", "export.int4_is_symmetric=true", project=project)
    assert result.returncode == 0, result.stderr
    model_dir = run_dir / "onnx-cpu-int4"
    assert _matmul_block_sizes(model_dir) == {32}
    assert _matmuls_with_zero_points(model_dir) == {False}
    build = json.loads((model_dir / "export.json").read_text())["pass"]
    # The options asked for win; the run's other CPU options stay.
    assert build["int4_block_size"] == 32 and build["int4_is_symmetric"] is True
    assert build["int4_op_types_to_quantize"] == ["MatMul", "Gather"]


@pytest.mark.parametrize(
    "setting, message",
    [
        ("export.int4_block_size=128", "larger than the hidden size 64"),
        ("export.int4_block_size=48", "export.int4_block_size=48"),
        ("export.int4_blok_size=32", "did you mean export.int4_block_size"),
        ("lora.r=8", "export takes only export.int4_* settings"),
    ],
)
def test_export_set_refuses_what_cannot_apply_in_one_line(run_copy, setting, message):
    project, run_dir = run_copy
    before = sorted(p.name for p in run_dir.iterdir())
    result = run_cli("export", "--set", setting, project=project)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == before

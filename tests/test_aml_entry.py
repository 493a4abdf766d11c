"""What runs on the Azure ML compute: the staged entry script fills the job's mount paths into the
Olive config, runs the real `olive run`, and leaves adapter/, merged/, onnx-int4/ in the output.

Here the "mounts" are the tiny project's folders and the workflow is rendered for this CPU
(the compute's is the same config with CUDA); everything else is what the job runs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from phi3e2e.train.aml.compute_entry import fill_placeholders
from phi3e2e.train.aml.staging import ENTRY_SCRIPT, stage_job_files
from phi3e2e.runs import missing_outputs
from phi3e2e.train.plan import CHECKPOINTS, OLIVE_CACHE, OLIVE_OUTPUT
from phi3e2e.workflow.render import WorkflowPaths, render_workflow
from phi3e2e.workflow.settings import build_settings


def test_placeholders_are_filled_everywhere_and_only_there():
    config = {
        "model_path": "${{inputs.model}}",
        "files": ["${{inputs.data}}/train.jsonl", "${{ inputs.data }}/e"],
        "n": 3,
    }
    filled = fill_placeholders(config, {"${{inputs.model}}": "/mnt/m", "${{inputs.data}}": "/mnt/d"})
    assert filled == {"model_path": "/mnt/m", "files": ["/mnt/d/train.jsonl", "/mnt/d/e"], "n": 3}


def test_unbound_placeholder_stops_the_job_with_a_clear_message(tmp_path):
    run_dir = tmp_path / "run"
    staged = stage_job_files(run_dir, {"input_model": {"model_path": "${{inputs.model}}"}})
    result = subprocess.run(
        [sys.executable, ENTRY_SCRIPT, "--models-out", str(tmp_path / "out")],
        cwd=staged.code_dir, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0 and "uses ${{inputs.model}} but the command binds no such path" in result.stderr


@pytest.mark.e2e
def test_entry_script_runs_olive_and_collects_the_three_models(tiny_project, tmp_path):
    settings = build_settings("tiny", {})
    paths = WorkflowPaths(
        model="${{inputs.model}}", train_file="${{inputs.train_file}}", eval_file=None,
        output=OLIVE_OUTPUT, cache=OLIVE_CACHE, checkpoints=CHECKPOINTS,
    )  # fmt: skip
    staged = stage_job_files(tmp_path / "run", render_workflow("lora", "local", settings, paths).config)
    models_out = tmp_path / "outputs" / "models"
    result = subprocess.run(
        [
            sys.executable, ENTRY_SCRIPT, "--config", "olive-config.json", "--models-out", str(models_out),
            "--bind", f"inputs.model={tiny_project.model_cache / 'tiny-phi3'}",
            "--bind", f"inputs.train_file={tiny_project.datasets / 'sample' / 'train.jsonl'}",
        ],
        cwd=staged.code_dir, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert missing_outputs(models_out) == []
    assert json.loads((models_out / "adapter" / "adapter_config.json").read_text())["r"] == settings.lora.r


def test_the_entry_script_names_forms_as_phi3e2e_does():
    """The staged script runs without phi3e2e installed, so it keeps its own copy of these names."""
    from phi3e2e.runs import REQUIRED_FILES
    from phi3e2e.train.aml import compute_entry
    from phi3e2e.train.olive_outputs import FORM_FROM_PASS

    assert compute_entry.REQUIRED_FILES == REQUIRED_FILES
    assert compute_entry.FORM_FROM_PASS == FORM_FROM_PASS

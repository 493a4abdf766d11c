"""The small folder a job carries to the compute, and the environment file next to it.

gen-model/<run>/aml-code/ holds only the rendered Olive config (its paths are job-input
placeholders), the entry script and the few modules through which phi3e2e runs Olive (the lean
int4 step, the LM head fix, no telemetry: STAGED_MODULES, which import nothing else of phi3e2e);
never the repository, the model cache or the data, which travel as job inputs.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from phi3e2e.resources import aml_conda_env

CODE_DIR = "aml-code"
CONFIG_FILE = "olive-config.json"
ENTRY_SCRIPT = "phi3e2e_job.py"
CONDA_FILE = "conda.yaml"
CHECKPOINTS_OUTPUT = "checkpoints"
# `python -m phi3e2e.build.lean_int4 run ...` on the node, as local runs run Olive: the int4 build in a
# node's RAM (the stock step needs > 24 GB for Phi-3-mini; a T4 node has 28 GiB), the model's own LM head,
# and no telemetry.
STAGED_MODULES = ("__init__.py", "build/__init__.py", "build/builder_patch.py", "build/lean_int4.py",
                  "build/lm_head_fix.py")  # fmt: skip
# On the compute, a checkpoint every 50 optimizer steps (a few minutes of Phi-3-mini on an A100)
# unless the workflow already saves; the last 2 are kept in the job's output.
NODE_SAVE_STEPS, NODE_SAVE_LIMIT = 50, 2


@dataclass(frozen=True)
class StagedFiles:
    code_dir: Path
    config_file: Path
    conda_file: Path


def stage_job_files(run_dir: Path, config: dict, conda_source: Optional[Path] = None) -> StagedFiles:
    """`conda_source`: the project's own setup/conda.yaml (`phi3e2e init` writes it), else the shipped one."""
    code_dir = run_dir / CODE_DIR
    if code_dir.exists():
        shutil.rmtree(code_dir)
    code_dir.mkdir(parents=True)
    config_file = code_dir / CONFIG_FILE
    config_file.write_text(json.dumps(checkpoints_to_output(config), indent=2) + "\n")
    shutil.copyfile(Path(__file__).with_name("compute_entry.py"), code_dir / ENTRY_SCRIPT)
    package = Path(__file__).resolve().parents[2]  # src/phi3e2e (or the installed package)
    for module in STAGED_MODULES:
        (code_dir / "phi3e2e" / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package / module, code_dir / "phi3e2e" / module)
    conda = run_dir / CONDA_FILE
    shutil.copyfile(conda_source if conda_source and conda_source.is_file() else aml_conda_env(), conda)
    return StagedFiles(code_dir, config_file, conda)


def checkpoints_to_output(config: dict) -> dict:
    """The fine-tune's checkpoints into the job's `checkpoints` output, so a restarted job resumes.

    A node-local folder dies with a preempted node; the output survives it, and Olive's LoRA pass
    resumes from the last checkpoint it finds in training_args.output_dir.
    """
    config = json.loads(json.dumps(config))
    for step in config.get("passes", {}).values():
        if step.get("type") in ("LoRA", "QLoRA") and isinstance(step.get("training_args"), dict):
            args = step["training_args"]
            args["output_dir"] = "${{outputs." + CHECKPOINTS_OUTPUT + "}}"
            if args.get("save_strategy", "no") == "no":
                args.update(save_strategy="steps", save_steps=NODE_SAVE_STEPS)
            args.setdefault("save_total_limit", NODE_SAVE_LIMIT)
    return config

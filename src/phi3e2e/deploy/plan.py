"""What `phi3e2e deploy RUN --target aml` is asked to do, checked before a file is written or a call is sent.

Names follow Azure ML's rules for online endpoints and deployments (Azure ML docs, "Manage and increase
quotas ... managed online endpoints": begin with a letter, 3-32 characters, letters, digits and '-', not
ending in '-'). The VM size must be a CPU size (the int4 model is onnxruntime-genai's CPU build) with room
for the model: its files, the answers' KV caches and the server.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.storage import shipped_bytes

# 4 vCPUs, 14 GiB: Phi-3-mini int4 (2 GiB) and 3 answers at its whole 4k context at once (3 GiB of KV cache each;
# shorter answers take less), the 4th waiting its turn
DEFAULT_INSTANCE_TYPE = "Standard_DS3_v2"
_NAME = re.compile(r"\A[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]\Z")
# RAM (GiB) of the CPU sizes Azure ML's managed online endpoints offer (Azure's VM size pages); a size not
# listed is not checked (a warning says so).
CPU_RAM_GIB = {
    "Standard_DS1_v2": 3.5, "Standard_DS2_v2": 7, "Standard_DS3_v2": 14, "Standard_DS4_v2": 28,
    "Standard_DS5_v2": 56, "Standard_F2s_v2": 4, "Standard_F4s_v2": 8, "Standard_F8s_v2": 16,
    "Standard_F16s_v2": 32, "Standard_F32s_v2": 64, "Standard_F48s_v2": 96, "Standard_F64s_v2": 128,
    "Standard_F72s_v2": 144, "Standard_E2s_v3": 16, "Standard_E4s_v3": 32, "Standard_E8s_v3": 64,
    "Standard_E16s_v3": 128, "Standard_E32s_v3": 256, "Standard_D2as_v4": 8, "Standard_D4as_v4": 16,
    "Standard_D8as_v4": 32, "Standard_D16as_v4": 64, "Standard_D32as_v4": 128,
}  # fmt: skip
# What the node needs beside the model files: the OS, Azure ML's agents and the server (~1.5 GiB), and the
# KV caches of the answers generated at once (SLOTS), each up to the model's context (infer/engines/genai.py's
# kv_bytes_per_token: 3 GiB for Phi-3-mini at 4k). serve queues the answers whose KV cache would not fit.
OVERHEAD_GIB = 1.5
SLOTS = 4  # the deployment's max concurrency: Azure ML sends an instance at most this many requests at once
GIB = 1 << 30


@dataclass(frozen=True)
class DeployRequest:
    run_dir: Path
    endpoint: str
    deployment: str
    instance_type: str
    instance_count: int
    traffic: int  # the share (percent) the new deployment gets once its smoke test passed


def check_name(name: str, what: str, flag: str) -> str:
    if not _NAME.match(name):
        raise UserError(f"{flag} {name!r}: not a valid Azure ML {what} name; begin with a letter, use 3-32 letters, "
                        "digits or '-', and end with a letter or digit")  # fmt: skip
    return name


def deployment_name(run_name: str) -> str:
    """A run's deployment on an endpoint: `r-` and the run name in Azure's alphabet (each run its own)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", run_name.lower()).strip("-")
    name = f"r-{slug}"
    if len(name) > 32:  # keep it unique: the end of a long run name (its time or algo) and a hash
        name = f"r-{slug[:19].strip('-')}-{hashlib.sha256(run_name.encode()).hexdigest()[:10]}"
    return name


def default_endpoint(project_root: Path) -> str:
    """One endpoint per project by default, so each new run deploys beside the last (blue/green).

    Endpoint names are unique per Azure region across all customers: the project folder's name plus a
    hash of its path keeps two projects (and two users) apart.
    """
    slug = re.sub(r"[^a-z0-9-]+", "-", project_root.name.lower()).strip("-")[:16].strip("-") or "project"
    digest = hashlib.sha256(str(project_root.resolve()).encode()).hexdigest()[:6]
    return f"phi3e2e-{slug}-{digest}"


def model_size_gib(model_dir: Path) -> float:
    """The files that are uploaded and loaded, not this machine's .prepacked/ cache (`.amlignore` keeps it out)."""
    return shipped_bytes(model_dir) / GIB


def answer_kv_gib(model_dir: Path) -> float:
    """One answer's KV cache at the model's whole context (what serve allots an answer with no max_tokens)."""
    from phi3e2e.infer.engines.genai import genai_config, kv_bytes_per_token

    settings = genai_config(model_dir)
    return settings["model"]["context_length"] * kv_bytes_per_token(settings, "cpu") / GIB


def check_instance_type(instance_type: str, model_gib: float, kv_gib: float) -> Optional[str]:
    """A UserError for a GPU size or one too small for the model and one whole-context answer; a warning
    (returned) for a size not known here, or one where fewer than SLOTS whole-context answers fit at once."""
    from phi3e2e.train.aml.vm_sizes import UNKNOWN, gpu_of

    gpu = gpu_of(instance_type)
    if (gpu is not None and gpu is not UNKNOWN) or instance_type.lower().startswith("standard_n"):
        raise UserError(f"--instance-type {instance_type}: a GPU size; the run's int4 model is built for CPUs "
                        "(onnxruntime-genai's CPU build), so a GPU would sit idle: use a CPU size such as "
                        f"{DEFAULT_INSTANCE_TYPE} (a GPU deployment needs a CUDA build of the model "
                        "and image)")  # fmt: skip
    ram = next((gib for name, gib in CPU_RAM_GIB.items() if name.lower() == instance_type.lower()), None)
    needed, full = model_gib + OVERHEAD_GIB + kv_gib, model_gib + OVERHEAD_GIB + SLOTS * kv_gib
    sizes = f"model {model_gib:.1f} GiB + server {OVERHEAD_GIB:g} + {kv_gib:.1f} per answer at the model's whole context"
    if ram is None:
        return (f"--instance-type {instance_type}: its memory is not known here; the model needs at least "
                f"{needed:.1f} GiB, {full:.1f} for {SLOTS} whole-context answers at once ({sizes})")
    if ram < needed:
        by_ram = sorted(CPU_RAM_GIB.items(), key=lambda item: item[1])
        bigger = next((name for name, gib in by_ram if gib >= needed), None)
        raise UserError(f"--instance-type {instance_type}: {ram:g} GiB of RAM, the model needs at least {needed:.1f} "
                        f"({sizes})" + (f"; use {bigger} or larger" if bigger else ""))  # fmt: skip
    if ram < full:
        fit = int((ram - model_gib - OVERHEAD_GIB) // kv_gib)
        return (f"--instance-type {instance_type}: {ram:g} GiB of RAM holds {fit} of the {SLOTS} answers at once when "
                f"each may run to the whole context ({sizes}); the others wait their turn, and answers with a "
                "max_tokens take less")
    return None


def check_built_for_cpu(run_dir: Path) -> None:
    """The endpoint's image runs onnxruntime-genai's CPU build: a model ModelBuilder built for CUDA (an Azure ML
    run's) names the CUDA provider in genai_config.json and would not load there."""
    from phi3e2e.infer.engines.genai import built_for

    config_file = run_dir / runs.ONNX_INT4 / "genai_config.json"
    try:
        provider = built_for(json.loads(config_file.read_text()))
    except (OSError, ValueError) as e:
        raise UserError(f"{config_file}: not a readable genai_config.json ({e})") from None
    if provider != "cpu":
        raise UserError(f"{run_dir.name}: {runs.ONNX_INT4}/ is built for {provider} (an Azure ML run's build); "
                        "the endpoint runs onnxruntime-genai on CPUs, and deploying a CUDA build is not supported yet")


def plan_deploy(project, run: Optional[str], endpoint: Optional[str], instance_type: Optional[str],
                instance_count: int, traffic: int) -> tuple[DeployRequest, Optional[str]]:
    """The checked request and a warning (or None). Nothing is contacted."""
    if not 0 <= traffic <= 100:
        raise UserError(f"--traffic {traffic}: give a percentage from 0 to 100")
    if not 1 <= instance_count <= 20:
        raise UserError(f"--instance-count {instance_count}: give 1 to 20 instances")
    endpoint = check_name(endpoint, "endpoint", "--endpoint") if endpoint else default_endpoint(project.root)
    run_dir = runs.find_finished_run(project, run)
    model_dir = run_dir / runs.ONNX_INT4
    missing = [name for name in runs.REQUIRED_FILES[runs.ONNX_INT4] if not (model_dir / name).is_file()]
    if missing:
        raise UserError(f"{run_dir.name}: {runs.ONNX_INT4}/ lacks {', '.join(missing)}; nothing to deploy "
                        f"(an Azure ML run: `phi3e2e jobs download {run_dir.name}` first)")  # fmt: skip
    check_built_for_cpu(run_dir)
    instance_type = instance_type or DEFAULT_INSTANCE_TYPE
    warning = check_instance_type(instance_type, model_size_gib(model_dir), answer_kv_gib(model_dir))
    request = DeployRequest(run_dir, endpoint, deployment_name(run_dir.name), instance_type, instance_count, traffic)
    return request, warning

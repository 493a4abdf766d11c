"""Runs ON the Azure ML compute (staged as aml-code/phi3e2e_job.py): `olive run` on the staged config.

The staged olive-config.json names the job's inputs and outputs by placeholders such as
"${{inputs.train_file}}"; Azure ML substitutes the same placeholders in the job's command line
only, so the command passes them here as `--bind inputs.train_file=/mnt/...` and this script
writes them into the config before running Olive. Afterwards the adapter, merged and int4 models
are moved out of Olive's cache into the job's `models` output as adapter/, merged/, onnx-int4/.

Before any training it checks the node's GPU (driver, CUDA, compute capability, bf16) and ends the
job in one line when there is none it can use: a node without a GPU would otherwise train on CPU
for days. Checkpoints go to the job's `checkpoints` output, so when Azure ML restarts a preempted
job, Olive's LoRA pass resumes from the last one. When Azure ML provides MLflow tracking
(MLFLOW_TRACKING_URI), the trainer reports its losses there, so the studio shows the curves.

phi3e2e itself is not installed on the compute: this file is standard library only, plus torch
from the job environment for the GPU check (and azure-identity / azure-keyvault-secrets when
--hf-token-secret is given).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

# Mirrors phi3e2e.build.olive_outputs.FORM_FROM_PASS (pinned by tests/test_aml_entry.py): the Olive pass
# types (as footprint.json spells them) per form.
FORM_FROM_PASS = {"adapter": ("lora", "qlora"), "merged": ("mergeadapterweights",), "onnx-int4": ("modelbuilder",)}
REQUIRED_FILES = {
    "adapter": ["adapter_config.json", "adapter_model.safetensors"],
    "merged": ["config.json", "*.safetensors", "tokenizer.json"],
    "onnx-int4": ["genai_config.json", "model.onnx", "tokenizer.json"],
}
PLACEHOLDER = re.compile(r"\$\{\{\s*(?:inputs|outputs)\.\w+\s*\}\}")
WORK_DIR = "phi3e2e-work"
# The job's torch is a CUDA 12.6 build (setup/conda.yaml): NVIDIA's minor-version compatibility
# runs it on drivers from 525.60.13 on; its kernels start at Volta (sm_70); bf16 is native from Ampere.
DRIVER_FLOOR = (525, 60, 13)
MIN_CAPABILITY = (7, 0)
MAX_CAPABILITY = (9, 0)  # the job's CUDA 12.6 torch: Volta sm_70 to Hopper sm_90 (Blackwell needs CUDA 12.8)
BF16_CAPABILITY = (8, 0)
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def fail(message: str) -> None:
    """End the job with one line in its log (exit code 2, as phi3e2e's own errors)."""
    print(f"phi3e2e_job: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def driver_version() -> tuple[str, str] | None:
    """(driver version, GPU name) from nvidia-smi, or None when the node has no NVIDIA driver."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = out.strip().splitlines()[0] if out.strip() else ""
    version, _, name = first.partition(",")
    return (version.strip(), name.strip()) if version.strip() else None


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def check_gpu(config: dict, allow_cpu: bool) -> dict:
    """Refuse a node with no usable GPU; on a GPU without native bf16 (T4, V100) train in fp16."""
    driver = driver_version()
    if driver and version_tuple(driver[0]) < DRIVER_FLOOR:
        fail(f"NVIDIA driver {driver[0]} on {driver[1]} is too old for the job's CUDA 12 torch "
             f"(needs >= {'.'.join(map(str, DRIVER_FLOOR))}); pick another compute or image")  # fmt: skip
    try:
        import torch
    except ImportError:
        fail("torch is not installed in the job environment (see conda.yaml)")
    if not torch.cuda.is_available():
        if allow_cpu:
            print("phi3e2e_job: --allow-cpu: no CUDA GPU, training on CPU (emulation only)", flush=True)
            return config
        if driver is None:
            fail("no NVIDIA GPU on this node (no nvidia-smi, no CUDA device): pick a GPU compute, "
                 "e.g. Standard_NC24ads_A100_v4 (docs/azure.md lists the supported sizes)")  # fmt: skip
        fail(f"CUDA is not usable on {driver[1]} (driver {driver[0]}, torch {torch.__version__} "
             f"built for CUDA {torch.version.cuda}): pick another compute or image")  # fmt: skip
    name, capability = torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)
    sm = f"sm_{capability[0]}{capability[1]}"
    if problem := capability_problem(name, tuple(capability)):
        fail(problem)
    print(f"phi3e2e_job: {torch.cuda.device_count()} x {name} ({sm}), driver {driver[0] if driver else '?'}, "
          f"torch {torch.__version__} (CUDA {torch.version.cuda})", flush=True)  # fmt: skip
    if capability < BF16_CAPABILITY:
        config = use_fp16(config, f"{name} ({sm}) has no native bfloat16")
    return config


def capability_problem(name: str, capability: tuple[int, int]) -> str | None:
    """Why the job's torch build cannot train on this GPU (None: it can), before a CUDA kernel fails mid-run."""
    sm = f"sm_{capability[0]}{capability[1]}"
    if capability < MIN_CAPABILITY:
        return f"{name} ({sm}) is older than Volta (sm_70), which the job's torch build needs"
    if capability > MAX_CAPABILITY:
        return (f"{name} ({sm}) is newer than the job's CUDA 12.6 torch build has kernels for (sm_70 to sm_90): "
                "pick a compute with an A100, H100, A10, T4 or V100")
    return None


def use_fp16(config: dict, reason: str) -> dict:
    """bfloat16 -> float16 in the fine-tune pass (Olive then trains with fp16 mixed precision)."""
    finetune = finetune_pass(config)
    changed = [key for key in ("torch_dtype", "compute_dtype") if finetune.get(key) == "bfloat16"]
    for key in changed:
        finetune[key] = "float16"
    if changed:
        print(f"phi3e2e_job: {reason}: {' and '.join(changed)} bfloat16 -> float16", flush=True)
    return config


def finetune_pass(config: dict) -> dict:
    return next((p for p in config.get("passes", {}).values() if p.get("type") in ("LoRA", "QLoRA")), {})


def training_args(config: dict) -> dict:
    return finetune_pass(config).get("training_args") or {}


def last_checkpoint(folder: Path, remove_broken: bool = True) -> Path | None:
    """The newest intact checkpoint. A node reclaimed mid-save leaves a newer folder without trainer_state.json
    (written last) or with a truncated file: such a folder is removed, or the trainer, which takes the
    highest-numbered one, would fail on it at every restart."""
    found = []
    for path in folder.glob("checkpoint-*"):
        if (m := CHECKPOINT.match(path.name)) and (problem := checkpoint_problem(path)) is None:
            found.append((int(m[1]), path))
        elif remove_broken:
            print(f"phi3e2e_job: removing {path.name}: {problem if m else 'not a checkpoint'}", flush=True)
            shutil.rmtree(path, ignore_errors=True)
    return max(found)[1] if found else None


def carry_over(previous: Path, checkpoints: Path) -> None:
    """`finetune --resume` of a stopped job: the newest intact checkpoint of the earlier job's output (a read-only
    input) into this job's own output, unless this job already has one (it was itself restarted). Copied under a
    temporary name and renamed, so a node reclaimed mid-copy leaves a folder the next start removes."""
    if last_checkpoint(checkpoints) or not (source := last_checkpoint(previous, remove_broken=False)):
        return
    copying = checkpoints / f"{source.name}.copying"  # not a checkpoint name: removed by last_checkpoint
    shutil.rmtree(copying, ignore_errors=True)
    shutil.copytree(source, copying)
    copying.rename(checkpoints / source.name)
    print(f"phi3e2e_job: carried {source.name} over from the earlier job's checkpoints", flush=True)


# A copy of phi3e2e.runs.lifecycle.checkpoint_problem (this script runs without phi3e2e; a test pins the two).
def checkpoint_problem(checkpoint: Path) -> str | None:
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_bytes())
    except FileNotFoundError:
        return "no trainer_state.json (saving was cut off)"
    except (OSError, ValueError) as e:
        return f"trainer_state.json unreadable ({e})"
    if not isinstance(state, dict) or "global_step" not in state:
        return "trainer_state.json has no global_step"
    for path in sorted(checkpoint.iterdir()):
        if problem := weights_problem(path):
            return f"{path.name}: {problem}"
    return None


def weights_problem(path: Path) -> str | None:
    if path.suffix == ".safetensors":
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                header_size = int.from_bytes(f.read(8), "little")
                if size < 8 or header_size > size - 8:
                    return "truncated header"
                header = json.loads(f.read(header_size))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            return f"unreadable header ({e})"
        return f"truncated ({size} of {8 + header_size + end} bytes)" if 8 + header_size + end > size else None
    if path.suffix in (".pt", ".bin", ".pth") and not zipfile.is_zipfile(path):
        return "not a complete torch file"
    return None


def report_to_mlflow(config: dict) -> None:
    """Azure ML sets MLFLOW_TRACKING_URI in its jobs (azureml-mlflow resolves it): the trainer logs there."""
    args = training_args(config)
    if os.environ.get("MLFLOW_TRACKING_URI") and args.get("report_to", "none") in ("none", [], None):
        args["report_to"] = ["mlflow"]
        print("phi3e2e_job: training and eval loss are logged to MLflow (the job's Metrics tab)", flush=True)


def fill_placeholders(value, bindings: dict[str, str]):
    """Replace every "${{inputs.x}}" / "${{outputs.x}}" in the config's strings with its mount path."""
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda m: bindings.get(re.sub(r"\s", "", m[0]), m[0]), value)
    if isinstance(value, list):
        return [fill_placeholders(item, bindings) for item in value]
    if isinstance(value, dict):
        return {key: fill_placeholders(item, bindings) for key, item in value.items()}
    return value


def apply_overrides(config: dict, pairs: list[str]) -> dict:
    """`--override passes.finetune.r=16`: a sweep trial's value at a dotted path of the config (list items by
    index). Azure ML writes the trial's value into the command (${{search_space.NAME}}); it is read as JSON, and
    a whole float (16.0, from a quniform search space) stays an int where the config holds an int."""
    for pair in pairs:
        path, sep, text = pair.partition("=")
        *parents, last = path.split(".")
        node = config
        try:
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            key = int(last) if isinstance(node, list) else last
            old = node[key]
        except (KeyError, IndexError, ValueError, TypeError):
            fail(f"--override {pair!r}: the config has no {path!r}")
        if not sep:
            fail(f"--override {pair!r}: expected PATH=VALUE")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        if isinstance(old, int) and not isinstance(old, bool) and isinstance(value, float) and value.is_integer():
            value = int(value)
        node[key] = value
        print(f"phi3e2e_job: sweep trial: {path} = {value!r}", flush=True)
    return config


def parse_bindings(pairs: list[str]) -> dict[str, str]:
    bindings = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not path:
            sys.exit(f"phi3e2e_job: --bind {pair!r}: expected NAME=PATH")
        bindings["${{" + name + "}}"] = path
    return bindings


def read_hf_token(secret_name: str) -> str:
    """The HF token from the workspace's Key Vault, read with the compute's managed identity."""
    from azure.identity import DefaultAzureCredential
    from azure.keyvault.secrets import SecretClient

    credential = DefaultAzureCredential(managed_identity_client_id=os.environ.get("DEFAULT_IDENTITY_CLIENT_ID"))
    return SecretClient(workspace_key_vault_url(credential), credential).get_secret(secret_name).value


def workspace_key_vault_url(credential) -> str:
    # Azure ML sets these on its computes; they are read here, never written into the job.
    workspace = (
        f"https://management.azure.com/subscriptions/{os.environ['AZUREML_ARM_SUBSCRIPTION']}"
        f"/resourceGroups/{os.environ['AZUREML_ARM_RESOURCEGROUP']}/providers/"
        f"Microsoft.MachineLearningServices/workspaces/{os.environ['AZUREML_ARM_WORKSPACE_NAME']}"
        "?api-version=2024-04-01"
    )
    token = credential.get_token("https://management.azure.com/.default").token
    request = urllib.request.Request(workspace, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        key_vault_id = json.load(response)["properties"]["keyVault"]
    return f"https://{key_vault_id.rstrip('/').split('/')[-1]}.vault.azure.net"


def collect_forms(olive_output: Path, models_out: Path) -> None:
    footprint_file = olive_output / "footprint.json"
    if not footprint_file.is_file():
        sys.exit("phi3e2e_job: Olive produced no output model (no footprint.json); see the log above")
    footprint = json.loads(footprint_file.read_text())
    by_pass = {node.get("from_pass"): node.get("model_config_data") or {} for node in footprint.values()}
    for form, pass_types in FORM_FROM_PASS.items():
        model_config = next((by_pass[p] for p in pass_types if p in by_pass), {}).get("config", {})
        source = model_config.get("adapter_path") if form == "adapter" else model_config.get("model_path")
        if not source or not Path(source).is_dir():
            sys.exit(f"phi3e2e_job: Olive produced no {form} model; see the log above")
        shutil.copytree(source, models_out / form, dirs_exist_ok=True)
    missing = [
        f"{form}/{pattern}"
        for form, patterns in REQUIRED_FILES.items()
        for pattern in patterns
        if not any((models_out / form).glob(pattern))
    ]
    if missing:
        sys.exit(f"phi3e2e_job: incomplete models, missing {', '.join(missing)}")


def olive_command(env: dict) -> list[str]:
    """`olive run` as local runs run it: through phi3e2e.build.lean_int4, staged beside this script (the lean
    int4 step, the LM head fix, and no telemetry unless OLIVE_DISABLE_TELEMETRY is 0). `env` gets the
    staged modules on its path; Olive runs in WORK_DIR, away from them."""
    here = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    return [sys.executable, "-m", "phi3e2e.build.lean_int4", "run", "--config", "olive-config.json"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="olive-config.json", help="the staged Olive workflow")
    parser.add_argument("--bind", action="append", default=[], metavar="NAME=PATH", help="e.g. inputs.model=/mnt/x")
    parser.add_argument("--models-out", required=True, help="the job's `models` output folder")
    parser.add_argument("--hf-token-secret", help="workspace Key Vault secret holding a Hugging Face token")
    parser.add_argument("--resume-from", metavar="DIR", help="an earlier job's checkpoints (finetune --resume)")
    parser.add_argument("--allow-cpu", action="store_true", help="emulation in tests only: train without a GPU")
    parser.add_argument("--override", action="append", default=[], metavar="PATH=VALUE",
                        help="a sweep trial's value, e.g. passes.finetune.r=16")  # fmt: skip
    args = parser.parse_args(argv)

    config_file = Path(args.config).resolve()
    config = fill_placeholders(json.loads(config_file.read_text()), parse_bindings(args.bind))
    config = apply_overrides(config, args.override)
    if unbound := sorted(set(PLACEHOLDER.findall(json.dumps(config)))):
        sys.exit(f"phi3e2e_job: {config_file.name} uses {', '.join(unbound)} but the command binds no such path")
    config = check_gpu(config, args.allow_cpu)
    report_to_mlflow(config)
    if (checkpoints := training_args(config).get("output_dir")) and Path(checkpoints).is_absolute():
        Path(checkpoints).mkdir(parents=True, exist_ok=True)
        if args.resume_from:
            carry_over(Path(args.resume_from), Path(checkpoints))
        if resume := last_checkpoint(Path(checkpoints)):
            # Azure ML restarted the job (a preempted low-priority node): the trainer resumes from this one,
            # named explicitly (Olive would otherwise take the highest-numbered folder itself).
            finetune_pass(config)["training_args"]["resume_from_checkpoint"] = str(resume)
            print(f"phi3e2e_job: resuming from {resume.name} in the checkpoints output", flush=True)
    work = Path(WORK_DIR).resolve()  # local disk of the node, not the code snapshot or an output mount
    work.mkdir(parents=True, exist_ok=True)
    (work / "olive-config.json").write_text(json.dumps(config, indent=2) + "\n")

    env = dict(os.environ)
    env.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if args.hf_token_secret:
        env["HF_TOKEN"] = read_hf_token(args.hf_token_secret)  # lives only in this process's environment
    print(f"phi3e2e_job: olive run --config {work / 'olive-config.json'}", flush=True)
    returncode = subprocess.call(olive_command(env), cwd=work, env=env)
    if returncode != 0:
        return returncode
    models_out = Path(args.models_out)
    models_out.mkdir(parents=True, exist_ok=True)
    collect_forms(work / config.get("output_dir", "olive-output"), models_out)
    print("phi3e2e_job: adapter/, merged/, onnx-int4/ written to the `models` output", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

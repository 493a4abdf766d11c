"""`phi3e2e doctor`: is this machine ready? One check per thing a run needs, each ok / warn / missing.

Local and fast: no network, no torch import; package metadata, /proc, PATH and a 5 s nvidia-smi.
"missing" means phi3e2e cannot run at all (a package of the pinned stack is not installed);
"warn" is what only some commands need (a GPU, a token, Azure, chromium) or what makes a run slow
or short of room. Secrets are never read into a line: a token or a subscription ID is only
reported as present or absent.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Literal, Mapping, Optional

from phi3e2e.infer.threads import physical_cores
from phi3e2e.machine import MEMINFO, cpu_info, meminfo
from phi3e2e.project import Project
from phi3e2e.resources import azure_requirements_file, requirements_file
from phi3e2e.train.aml.workspace import ENV_VARS, find_config_file

Status = Literal["ok", "warn", "missing"]
GB = 10**9
INSTALL_FIX = "make install  (or: pip install -r setup/requirements.txt)"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: Optional[str] = None
    extra: dict = field(default_factory=dict)  # --json only: versions, flags, sizes

    def as_json(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix, **self.extra}


def all_ok(checks: list[Check]) -> bool:
    """No check is missing (warnings do not count): the exit code of `phi3e2e doctor`."""
    return not any(check.status == "missing" for check in checks)


# --- The stack --------------------------------------------------------------------------------

# Checked when setup/requirements.txt is not there (an installed wheel): the packages a run imports.
CORE_PACKAGES = ("torch", "olive-ai", "onnxruntime", "onnxruntime-genai", "transformers", "peft")


def read_pins(path: Path) -> dict[str, Optional[str]]:
    """{package: pinned version, or None when the line is not an `==` pin} from a requirements file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(==\s*([^\s;]+))?", line)
        if match:
            pins[match.group(1)] = match.group(4)
    return pins


def installed_version(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def matches_pin(installed: str, pinned: str) -> bool:
    """PEP 440 `==`: torch 2.13.0+cpu matches a 2.13.0 pin."""
    try:
        from packaging.specifiers import SpecifierSet

        return installed in SpecifierSet(f"=={pinned}")
    except ImportError:  # packaging comes with the stack; without it, the plain comparison
        return installed.split("+")[0] == pinned.split("+")[0]
    except ValueError:  # not a PEP 440 version
        return installed == pinned


def check_python() -> Check:
    version = platform.python_version()
    if sys.version_info < (3, 11):
        return Check("python", "missing", f"Python {version}: phi3e2e needs 3.11 or newer",
                     "install Python 3.11+ and reinstall phi3e2e in it", {"version": version})  # fmt: skip
    return Check("python", "ok", f"Python {version} ({sys.executable})", extra={"version": version})


def check_stack(requirements: Optional[Path]) -> Check:
    """The installed versions against setup/requirements.txt's pins (the stack phi3e2e is tested with)."""
    if requirements is None or not requirements.is_file():
        versions = {name: installed_version(name) for name in CORE_PACKAGES}
        absent = [name for name, version in versions.items() if version is None]
        found = ", ".join(f"{name} {version}" for name, version in versions.items() if version)
        extra = {"requirements": None, "packages": [{"name": n, "installed": v} for n, v in versions.items()]}
        if absent:
            return Check("stack", "missing", f"not installed: {', '.join(absent)}",
                         "pip install 'phi3e2e[ml]' (or the repository's setup/requirements.txt)", extra)  # fmt: skip
        return Check("stack", "warn", f"{found}; versions not compared (no setup/requirements.txt: an installed wheel)",
                     "compare with setup/requirements.txt in the phi3e2e repository", extra)  # fmt: skip
    pins = read_pins(requirements)
    packages, absent, different = [], [], []
    for name, pinned in pins.items():
        installed = installed_version(name)
        if installed is None:
            status = "missing"
            absent.append(name)
        elif pinned is not None and not matches_pin(installed, pinned):
            status = "warn"
            different.append(f"{name} {installed} (pinned {pinned})")
        else:
            status = "ok"
        packages.append({"name": name, "pinned": pinned, "installed": installed, "status": status})
    extra = {"requirements": str(requirements), "packages": packages}
    source = _short(requirements)
    if absent:
        also = f"; differ: {', '.join(different)}" if different else ""
        return Check("stack", "missing", f"not installed: {', '.join(absent)}{also}", INSTALL_FIX, extra)
    if different:
        return Check("stack", "warn", f"{len(different)} of {len(pins)} packages differ from {source}: "
                     f"{', '.join(different)}", INSTALL_FIX, extra)  # fmt: skip
    return Check("stack", "ok", f"{len(pins)} pinned packages match {source}", extra=extra)


def _short(path: Path) -> str:
    """setup/requirements.txt when it is the repository's, else the full path."""
    try:
        return str(path.resolve().relative_to(requirements_file().resolve().parents[1]))
    except ValueError:
        return str(path)


# --- The machine ------------------------------------------------------------------------------

# What onnxruntime's int4 MatMulNBits kernels use, best last: AVX2+FMA at least, AVX-512, VNNI dot products, AMX tiles.
SIMD_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile")


def check_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> Check:
    model, flags = cpu_info(cpuinfo)
    cores = physical_cores()
    used = [feature for feature in SIMD_FEATURES if feature in flags]
    extra = {"model": model, "physical_cores": cores, "logical_cpus": os.cpu_count(), "simd": used}
    summary = f"{model}, {cores} physical core{'s' if cores != 1 else ''}; int4 kernels: {' '.join(used) or 'no AVX2'}"
    if platform.machine().lower() in ("arm64", "aarch64"):
        return Check("cpu", "ok", f"{model}, {cores} physical cores (ARM: the NEON int4 kernels)", extra=extra)
    if "avx2" not in flags:
        return Check("cpu", "warn", f"{summary}: int4 decode falls back to slow kernels",
                     "a CPU with AVX2 (any x86 since ~2015) for usable int4 speed", extra)  # fmt: skip
    return Check("cpu", "ok", summary, extra=extra)


# What a Phi-3-mini run needs (README.md, docs/performance.md "Full depth").
RAM_NEED = 12 * GB
RAM_WHY = "the full-depth int4 build peaked at 10.7 GB RSS"
DISK_NEED = 25 * GB
DISK_WHY = "7.6 GB download, 7.6 GB merged model, 2 GB int4 build, checkpoints and Olive's cache"
DISK_FIX = "free some space: gen-model/.olive-cache/ and old runs (`phi3e2e runs rm RUN`) are safe to delete"


def check_ram(need: int = RAM_NEED, path: Path = MEMINFO) -> Check:
    memory = meminfo(path)
    total, available = memory.get("MemTotal"), memory.get("MemAvailable")
    why = f"a Phi-3-mini run needs ~{need / GB:.0f} GB: {RAM_WHY}"
    if total is None or available is None:
        return Check("ram", "warn", f"unknown (no {path}); {why}", "check the memory by hand (free -g)")
    extra = {"total_bytes": total, "available_bytes": available, "need_bytes": need}
    detail = f"{available / GB:.1f} GB available of {total / GB:.1f} GB ({why})"
    if total < need:
        return Check("ram", "warn", detail, "a machine with more memory, or `--target aml` (trains and builds on "
                     "Azure ML); the tiny model (`prepare --tiny`) runs anywhere", extra)  # fmt: skip
    if available < need:
        return Check("ram", "warn", detail, "close other programs before a Phi-3-mini run", extra)
    return Check("ram", "ok", detail, extra=extra)


def check_disk(folder: Path, need: int = DISK_NEED) -> Check:
    existing = next(path for path in (folder, *folder.parents) if path.exists())  # the project may not exist yet
    free = shutil.disk_usage(existing).free
    extra = {"folder": str(folder), "free_bytes": free, "need_bytes": need}
    detail = f"{free / GB:.0f} GB free in {folder} (a Phi-3-mini run needs ~{need / GB:.0f} GB: {DISK_WHY})"
    if free < need:
        return Check("disk", "warn", detail, DISK_FIX, extra)
    return Check("disk", "ok", detail, extra=extra)


# --- GPU --------------------------------------------------------------------------------------

NO_GPU_FIX = "`--target aml` trains on Azure ML GPUs; CPU chat, serve and export need none"


def check_gpu(timeout: float = 5) -> Check:
    """nvidia-smi's view: name, driver, memory of each GPU."""
    if not shutil.which("nvidia-smi"):
        return Check("gpu", "warn", "no NVIDIA GPU (no nvidia-smi on PATH): local QLoRA and --device cuda need one",
                     NO_GPU_FIX, {"gpus": []})  # fmt: skip
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=timeout)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("gpu", "warn", f"nvidia-smi did not answer ({type(e).__name__})",
                     "check the NVIDIA driver (nvidia-smi should list the GPU)", {"gpus": []})  # fmt: skip
    gpus = []
    for line in result.stdout.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) >= 3 and parts[0]:
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    if result.returncode != 0 or not gpus:
        message = " ".join((result.stderr or result.stdout).split())[:160] or f"exit code {result.returncode}"
        return Check("gpu", "warn", f"nvidia-smi found no GPU: {message}",
                     "check the NVIDIA driver (nvidia-smi should list the GPU)", {"gpus": []})  # fmt: skip
    listed = "; ".join(f"{gpu['name']} ({gpu['memory']}, driver {gpu['driver']})" for gpu in gpus)
    return Check("gpu", "ok", listed, extra={"gpus": gpus})


def check_cuda() -> Check:
    """Can the ONNX models run on CUDA here: onnxruntime's CUDA provider and onnxruntime-genai-cuda."""
    genai_cuda = installed_version("onnxruntime-genai-cuda")
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        providers = []
    extra = {"providers": providers, "onnxruntime_genai_cuda": genai_cuda}
    has_provider = "CUDAExecutionProvider" in providers
    if has_provider and genai_cuda:
        return Check("cuda", "ok", f"onnxruntime CUDAExecutionProvider, onnxruntime-genai-cuda {genai_cuda}",
                     extra=extra)  # fmt: skip
    missing = [what for what, there in (("no CUDAExecutionProvider in onnxruntime", has_provider),
                                        ("onnxruntime-genai-cuda not installed", genai_cuda)) if not there]  # fmt: skip
    return Check("cuda", "warn", f"CPU only: {'; '.join(missing)} (--device cuda needs both)",
                 "on a GPU machine: pip install onnxruntime-genai-cuda onnxruntime-gpu (instead of the CPU "
                 "packages; versions in setup/conda.yaml)", extra)  # fmt: skip


# --- Accounts (present or not; never their values) --------------------------------------------


def hf_token_source(env: Mapping[str, str]) -> Optional[str]:
    """Where huggingface_hub would find a token: HF_TOKEN (or the older HUGGING_FACE_HUB_TOKEN), else its token file.

    Read here rather than with huggingface_hub.get_token(), which may exchange or refresh a token over the network.
    """
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if env.get(name, "").strip():
            return name
    try:
        from huggingface_hub import constants

        token_file = Path(constants.HF_TOKEN_PATH)
    except ImportError:
        token_file = Path(env.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "token"
    try:
        return "the token file" if token_file.read_text().strip() else None
    except OSError:
        return None


def check_hf_token(env: Mapping[str, str] = os.environ) -> Check:
    source = hf_token_source(env)
    if source:
        return Check("hf-token", "ok", f"present (from {source})", extra={"present": True, "source": source})
    return Check("hf-token", "warn", "none (only gated or private models need one)",
                 "hf auth login, or set HF_TOKEN", {"present": False, "source": None})  # fmt: skip


def check_azure_cli() -> Check:
    path = shutil.which("az")
    if path:
        return Check("azure-cli", "ok", f"az at {path}", extra={"path": path})
    return Check("azure-cli", "warn", "no `az` on PATH (only --target aml and `phi3e2e jobs` use it, to log in)",
                 "install the Azure CLI: https://learn.microsoft.com/cli/azure/install-azure-cli", {"path": None})


def azure_subscription_count(azure_dir: Path) -> Optional[int]:
    """How many subscriptions `az login` left in azureProfile.json (None: no readable file). Only the count."""
    try:
        profile = json.loads((azure_dir / "azureProfile.json").read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return None
    subscriptions = profile.get("subscriptions") if isinstance(profile, dict) else None
    return len(subscriptions) if isinstance(subscriptions, list) else 0


def check_azure_login(env: Mapping[str, str] = os.environ) -> Check:
    """Who DefaultAzureCredential would be, from local files and variables only (nothing is asked of Azure)."""
    azure_dir = Path(env.get("AZURE_CONFIG_DIR") or Path.home() / ".azure")
    count = azure_subscription_count(azure_dir)
    principal = all(env.get(name) for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID"))
    found = []
    if count:
        found.append(f"az login ({count} subscription{'s' if count != 1 else ''})")
    if principal:
        found.append("a service principal (AZURE_CLIENT_ID, AZURE_TENANT_ID)")
    extra = {"az_login_subscriptions": count or 0, "service_principal": principal}
    if found:
        return Check("azure-login", "ok", "logged in: " + ", ".join(found), extra=extra)
    return Check("azure-login", "warn", "not logged in (only --target aml and `phi3e2e jobs` need it)",
                 "az login, or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET", extra)  # fmt: skip


def check_workspace(search_from: tuple[Path, ...], env: Mapping[str, str] = os.environ) -> Check:
    """Where the Azure ML workspace would come from (as train/aml/workspace.py resolves it): variables, config.json."""
    from_env = [key for key, variable in ENV_VARS.items() if env.get(variable)]
    config_file = find_config_file(*search_from)
    from_file = []
    if config_file:
        try:
            recorded = json.loads(config_file.read_text())
        except (OSError, ValueError):
            return Check("workspace", "warn", f"{config_file}: not a readable Azure ML config.json",
                         "download it again from the workspace's overview page in Azure ML studio",
                         {"config_file": str(config_file)})  # fmt: skip
        if isinstance(recorded, dict):
            recorded.setdefault("resource_group", recorded.get("resourceGroup"))
            from_file = [key for key in ENV_VARS if recorded.get(key)]
    have = set(from_env) | set(from_file)
    absent = [key for key in ENV_VARS if key not in have]
    extra = {"config_file": str(config_file) if config_file else None, "from_env": [ENV_VARS[k] for k in from_env]}
    sources = []
    if from_env:
        sources.append("environment (" + ", ".join(ENV_VARS[key] for key in from_env) + ")")
    if config_file and set(from_file) - set(from_env):
        sources.append(str(config_file))
    if not absent:
        return Check("workspace", "ok", "Azure ML workspace from " + " and ".join(sources), extra=extra)
    where = f"{config_file} lacks {', '.join(absent)}" if config_file else "no Azure ML config.json found"
    return Check("workspace", "warn", f"{where} (only --target aml and `phi3e2e jobs` need one)",
                 "download config.json from the workspace's overview page in Azure ML studio into the project "
                 f"folder, or set {', '.join(ENV_VARS[key] for key in absent)}", extra)  # fmt: skip


def check_azure_sdk(requirements: Optional[Path]) -> Check:
    pins = read_pins(requirements) if requirements and requirements.is_file() else {"azure-ai-ml": None}
    fix = "pip install -r setup/requirements-azure.txt  (or: pip install 'phi3e2e[azure]')"
    packages = [{"name": n, "pinned": p, "installed": installed_version(n)} for n, p in pins.items()]
    extra = {"packages": packages}
    absent = [package["name"] for package in packages if package["installed"] is None]
    if absent:
        return Check("azure-sdk", "warn", f"not installed: {', '.join(absent)} (only --target aml and `phi3e2e jobs` "
                     "need it)", fix, extra)  # fmt: skip
    different = [f"{p['name']} {p['installed']} (pinned {p['pinned']})" for p in packages
                 if p["pinned"] and not matches_pin(p["installed"], p["pinned"])]  # fmt: skip
    if different:
        detail = f"differ from setup/requirements-azure.txt: {', '.join(different)}"
        return Check("azure-sdk", "warn", detail, fix, extra)
    return Check("azure-sdk", "ok", ", ".join(f"{p['name']} {p['installed']}" for p in packages), extra=extra)


# --- Tools ------------------------------------------------------------------------------------

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def check_chromium() -> Check:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return Check("chromium", "ok", f"{name} at {path} (the playground's browser test)", extra={"path": path})
    return Check("chromium", "warn", "no chromium on PATH: the playground's browser test (tests/test_playground.py) "
                 "is skipped", "apt-get install chromium", {"path": None})  # fmt: skip


# --- All of them ------------------------------------------------------------------------------


def run_checks(project: Project) -> list[Check]:
    """Every check, in the order `phi3e2e doctor` prints them."""
    steps: list[Callable[[], Check]] = [
        check_python,
        lambda: check_stack(requirements_file()),
        check_cpu,
        check_ram,
        lambda: check_disk(project.root),
        check_gpu,
        check_cuda,
        check_hf_token,
        check_azure_cli,
        check_azure_login,
        lambda: check_workspace((project.root, Path.cwd())),
        lambda: check_azure_sdk(azure_requirements_file()),
        check_chromium,
    ]
    return [step() for step in steps]

"""`phi3e2e doctor`: every check there, each ok / warn / missing with a fix, --json agreeing with the text,
and no secret ever printed. The command runs for real in a subprocess; the domain checks take their
inputs (a requirements file, a need in bytes, /proc files, the environment) as parameters so a
test can give them a machine this one is not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_cli

from phi3e2e.doctor import (
    all_ok,
    check_cpu,
    check_disk,
    check_ram,
    check_stack,
    check_workspace,
    matches_pin,
    run_checks,
)
from phi3e2e.project import Project

NAMES = ["python", "stack", "cpu", "ram", "disk", "gpu", "cuda", "hf-token", "azure-cli", "azure-login", "workspace",
         "azure-sdk", "chromium"]  # fmt: skip
HF_SECRET = "hf_secret_value_for_test"
SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-111122223333"
OTHER_SUBSCRIPTION = "9c2e7d00-5a5a-4b4b-8c8c-444455556666"


def text_statuses(stdout: str) -> dict[str, str]:
    """{check name: status} from the text output (all lines but the summary)."""
    lines = stdout.strip().splitlines()
    return {line.split()[1]: line.split()[0] for line in lines[:-1]}


def doctor_json(**kwargs) -> tuple[subprocess.CompletedProcess, dict]:
    result = run_cli("doctor", "--json", **kwargs)
    return result, json.loads(result.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"]}


def test_every_check_is_there_with_a_status_and_a_fix_for_each_that_is_not_ok(tmp_path):
    project = Project(tmp_path)
    text = run_cli("doctor", project=project)
    result, report = doctor_json(project=project)
    assert [check["name"] for check in report["checks"]] == NAMES
    for check in report["checks"]:
        assert check["status"] in ("ok", "warn", "missing"), check
        assert check["detail"], check
        assert check["status"] == "ok" or check["fix"], check
    # The exit code follows "missing" only; the text says the same as --json, line for line.
    assert report["ok"] == all(check["status"] != "missing" for check in report["checks"])
    assert result.returncode == text.returncode == (0 if report["ok"] else 1), text.stderr
    assert text_statuses(text.stdout) == {check["name"]: check["status"] for check in report["checks"]}
    for line in text.stdout.splitlines()[:-1]:
        status = line.split()[0]
        assert (" — fix: " in line) == (status != "ok"), line
    counts = {s: sum(c["status"] == s for c in report["checks"]) for s in ("ok", "warn", "missing")}
    summary = f"{counts['ok']} ok, {counts['warn']} warn, {counts['missing']} missing"
    assert text.stdout.splitlines()[-1].startswith(summary)


def test_this_machine_has_the_pinned_stack_and_a_usable_cpu():
    """The test machine is set up by `make install`: the stack matches the pins, every package listed in --json."""
    result, report = doctor_json()
    assert result.returncode == 0 and report["ok"], result.stdout
    stack = by_name(report)["stack"]
    assert stack["status"] == "ok" and "pinned packages match setup/requirements.txt" in stack["detail"]
    typer_row = next(p for p in stack["packages"] if p["name"] == "typer")
    assert typer_row["installed"] == typer_row["pinned"]
    cpu = by_name(report)["cpu"]
    assert cpu["physical_cores"] >= 1 and "avx2" in cpu["simd"] and cpu["status"] == "ok"


def test_the_checks_take_well_under_five_seconds():
    start = time.monotonic()
    run_checks(Project(Path.cwd()))
    assert time.monotonic() - start < 5


# --- Stack pins -------------------------------------------------------------------------------


def test_a_version_that_differs_from_its_pin_is_a_warning_with_the_install_fix(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# a comment\ntyper==0.0.1  # old\njinja2\n")
    check = check_stack(requirements)
    assert check.status == "warn"
    assert "typer" in check.detail and "pinned 0.0.1" in check.detail and "jinja2" not in check.detail
    assert "pip install -r setup/requirements.txt" in check.fix and "make install" in check.fix
    assert all_ok([check])
    assert {p["name"]: p["status"] for p in check.extra["packages"]} == {"typer": "warn", "jinja2": "ok"}


def test_a_pinned_package_that_is_not_installed_is_missing_and_fails_the_doctor(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("phi3e2e-no-such-package==1.0\ntyper==0.0.1\n")
    check = check_stack(requirements)
    assert check.status == "missing" and "phi3e2e-no-such-package" in check.detail and "typer" in check.detail
    assert not all_ok([check])
    # The command's exit code: the same file in place of setup/requirements.txt.
    probe = ("import sys, pathlib, phi3e2e.resources as r\n"
             "pinned = pathlib.Path(sys.argv[1])\n"
             "r.requirements_file = lambda: pinned\n"
             "sys.argv = ['phi3e2e', 'doctor']\n"
             "from phi3e2e.cli.app import main\nmain()\n")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", probe, str(requirements)], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert text_statuses(result.stdout)["stack"] == "missing"
    assert result.stdout.splitlines()[-1].endswith("not ready: install what is missing")


def test_an_installed_wheel_without_the_requirements_file_says_versions_are_not_compared(tmp_path):
    check = check_stack(tmp_path / "absent.txt")
    assert check.status == "warn" and "versions not compared" in check.detail and check.fix


def test_a_local_version_matches_its_pin():
    assert matches_pin("2.13.0+cpu", "2.13.0")
    assert not matches_pin("2.12.0", "2.13.0")


# --- Machine ----------------------------------------------------------------------------------


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 {flags}\n\n")
    return path


def test_a_cpu_without_avx2_is_a_warning_and_the_int4_features_are_listed(tmp_path):
    slow = check_cpu(cpuinfo(tmp_path, "sse4_2"))
    assert slow.status == "warn" and "Test CPU 9000" in slow.detail and "AVX2" in slow.fix
    fast = check_cpu(cpuinfo(tmp_path, "avx2 fma avx512f avx512_vnni amx_tile"))
    assert fast.status == "ok"
    assert fast.extra["simd"] == ["avx2", "fma", "avx512f", "avx512_vnni", "amx_tile"]


def test_too_little_memory_or_disk_is_a_warning_that_says_what_a_run_needs(tmp_path):
    assert check_ram(need=1).status == "ok"
    ram = check_ram(need=10**15)
    assert ram.status == "warn" and "10.7 GB" in ram.detail and ram.fix
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:    4000000 kB\n")
    busy = check_ram(path=meminfo)
    assert busy.status == "warn" and "4.1 GB available of 32.8 GB" in busy.detail and "close other" in busy.fix
    assert check_disk(tmp_path, need=1).status == "ok"
    disk = check_disk(tmp_path / "not-yet", need=10**18)
    assert disk.status == "warn" and "7.6 GB download" in disk.detail and str(tmp_path / "not-yet") in disk.detail
    assert "gen-model/.olive-cache/" in disk.fix and "phi3e2e runs rm" in disk.fix


# --- Tools on PATH ----------------------------------------------------------------------------


def test_no_chromium_on_path_is_a_warning_with_the_apt_fix(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result, report = doctor_json(env={"PATH": str(empty)})
    chromium = by_name(report)["chromium"]
    assert chromium["status"] == "warn" and chromium["fix"] == "apt-get install chromium"
    assert by_name(report)["azure-cli"]["status"] == "warn"
    text = run_cli("doctor", env={"PATH": str(empty)})
    assert "apt-get install chromium" in next(line for line in text.stdout.splitlines() if " chromium " in line)


def test_a_gpu_that_nvidia_smi_reports_is_named_with_its_driver(tmp_path):
    """A stand-in `nvidia-smi` on PATH replaces the hardware boundary (this machine has no GPU): it answers
    only the query the check should ask, as the real one prints it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    query = "--query-gpu=name,driver_version,memory.total --format=csv,noheader"
    fake.write_text(f'#!/bin/sh\nif [ "$*" = "{query}" ]; then\n'
                    '  echo "NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB"; exit 0\n'
                    'fi\necho "unexpected arguments: $*" >&2; exit 9\n')  # fmt: skip
    fake.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    result, report = doctor_json(env={"PATH": path})
    gpu = by_name(report)["gpu"]
    assert gpu["status"] == "ok", gpu
    assert gpu["gpus"] == [{"name": "NVIDIA H100 80GB HBM3", "driver": "550.54.15", "memory": "81559 MiB"}]
    text = run_cli("doctor", env={"PATH": path})
    line = next(line for line in text.stdout.splitlines() if line.split()[1] == "gpu")
    assert "NVIDIA H100 80GB HBM3" in line and "driver 550.54.15" in line


def test_no_gpu_is_a_warning_not_a_failure(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result, report = doctor_json(env={"PATH": str(empty)})
    gpu = by_name(report)["gpu"]
    assert gpu["status"] == "warn" and "--target aml" in gpu["fix"]
    assert result.returncode == 0 and report["ok"]


# --- Secrets: present or not, never shown -----------------------------------------------------


@pytest.fixture
def secrets(tmp_path) -> tuple[Project, dict]:
    """A project with an Azure ML config.json, an az login profile, and a Hugging Face token in the environment."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "config.json").write_text(json.dumps(
        {"subscription_id": OTHER_SUBSCRIPTION, "resource_group": "rg-secret-group", "workspace_name": "ws-secret"}))
    azure_dir = tmp_path / "azure"
    azure_dir.mkdir()
    profile = {"installationId": "x", "subscriptions": [
        {"id": SUBSCRIPTION, "name": "Secret Subscription Name", "state": "Enabled", "tenantId": SUBSCRIPTION[::-1],
         "user": {"name": "someone@example.com", "type": "user"}, "isDefault": True}]}  # fmt: skip
    (azure_dir / "azureProfile.json").write_text(json.dumps(profile), encoding="utf-8-sig")  # az writes a BOM
    env = {"HF_TOKEN": HF_SECRET, "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION, "AZURE_CONFIG_DIR": str(azure_dir)}
    return Project(root), env


def test_tokens_and_subscription_ids_are_reported_present_but_never_printed(secrets):
    project, env = secrets
    text = run_cli("doctor", project=project, env=env)
    result, report = doctor_json(project=project, env=env)
    for output in (text.stdout, text.stderr, result.stdout, result.stderr):
        for secret in (HF_SECRET, HF_SECRET[:8], SUBSCRIPTION, OTHER_SUBSCRIPTION, SUBSCRIPTION[:8],
                       "Secret Subscription Name", "someone@example.com", "rg-secret-group", "ws-secret"):  # fmt: skip
            assert secret not in output
    checks = by_name(report)
    assert checks["hf-token"]["status"] == "ok" and checks["hf-token"]["detail"] == "present (from HF_TOKEN)"
    assert checks["azure-login"]["status"] == "ok" and "1 subscription" in checks["azure-login"]["detail"]
    workspace = checks["workspace"]
    assert workspace["status"] == "ok" and workspace["config_file"] == str(project.root / "config.json")
    assert "AZURE_SUBSCRIPTION_ID" in workspace["detail"]
    assert text_statuses(text.stdout)["hf-token"] == "ok"


def test_a_stored_hugging_face_token_is_found_and_not_shown(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(HF_SECRET + "\n")
    env = {"HF_TOKEN": "", "HUGGING_FACE_HUB_TOKEN": "", "HF_TOKEN_PATH": str(token_file)}
    result, report = doctor_json(env=env)
    assert by_name(report)["hf-token"]["detail"] == "present (from the token file)"
    assert HF_SECRET not in result.stdout + result.stderr
    token_file.unlink()
    result, report = doctor_json(env=env)
    hf = by_name(report)["hf-token"]
    assert hf["status"] == "warn" and "hf auth login" in hf["fix"] and "HF_TOKEN" in hf["fix"]


def test_a_workspace_config_lacking_a_field_names_it_and_the_variable_that_gives_it(tmp_path):
    folder = tmp_path / "with-config"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"subscription_id": SUBSCRIPTION, "resourceGroup": "rg"}))
    check = check_workspace((folder,), env={})
    assert check.status == "warn" and "lacks workspace_name" in check.detail and "AZUREML_WORKSPACE_NAME" in check.fix
    assert SUBSCRIPTION not in check.detail + check.fix
    filled = check_workspace((folder,), env={"AZUREML_WORKSPACE_NAME": "ws"})
    assert filled.status == "ok" and str(folder / "config.json") in filled.detail
    nothing = check_workspace((tmp_path / "elsewhere",), env={})
    assert nothing.status == "warn" and "no Azure ML config.json found" in nothing.detail

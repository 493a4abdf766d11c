"""A fine-tune shipped as its LoRA adapter on the project's shared int4 base (ONNX Runtime GenAI adapters).

Olive's ModelBuilder pass, given the base model with the run's adapter, builds the base as int4 with the
adapter's LoRA MatMuls beside it (kept in float); Olive's ExtractAdapters pass then moves those weights
into an .onnx_adapter file and leaves optional LoRA inputs in model.onnx (empty by default: the plain
base). Every adapter of one base model, build options and set of LoRA target modules gives the same
model.onnx byte for byte (checked by sha256 here, on every build), so it is kept once, in
model-cache/.onnx-int4-adapters/<model>-<key>/, built by the first run under a lock, staged and renamed
last; each run keeps only onnx-adapter/: model.onnx_adapter and base.json (where its base lies, relative
to that folder so a copied project stays whole, and the base's sha256).

onnxruntime-genai loads it as `og.Model(base)`, `og.Adapters(model).load(file, name)` and
`generator.set_active_adapter(adapters, name)` per answer (infer/engines/genai.py).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from phi3e2e import runs
from phi3e2e.build.base_int4 import build_lock, fingerprint
from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.storage import atomic_write, disk_bytes, publish, staging_name

BASES = ".onnx-int4-adapters"  # under model-cache/, beside base_int4's .onnx-int4/
BASE_RECORD = "phi3e2e-adapter-base.json"
CONFIG, LOG = "olive-config.json", "olive.log"
# Olive's names for what ExtractAdapters leaves in the model folder, and the files that are not the model.
_OLIVE_FILES = ("footprint.json", "output_footprint.json", "run_history.txt", "model_config.json")


@dataclass
class AdapterForm:
    folder: Path  # the run's onnx-adapter/
    base_dir: Path  # the shared base it answers on
    adapter_bytes: int
    base_bytes: int
    base_built: bool  # this build made the base (False: it was already there and is reused)
    duration_s: float


def base_key(base_model: Path, int4_options: dict, adapter_dir: Path) -> str:
    """What makes two bases' model.onnx differ: the base model's files, the int4 options, which modules have LoRA
    inputs (the adapter's target modules) and its rank: ModelBuilder quantizes the LoRA MatMuls to int4 too, and
    ExtractAdapters' dynamic rank holds for float weights only, so the int4 inputs keep the rank as a fixed
    dimension (lora_A's weight_Q4 input is [r, 'lora_r', blob] in the built model.onnx)."""
    config = _adapter_config(adapter_dir)
    modules = config.get("target_modules")
    modules = sorted(modules) if isinstance(modules, list) else modules
    # Without the project's path: a copied project's new adapter runs share the base its old ones use (a base that
    # differs after all is caught by the sha256 check of model.onnx).
    return fingerprint(base_model, int4_options | {"lora_target_modules": modules, "lora_r": config.get("r")},
                       with_path=False)


def build_adapter_form(project: Project, base_model: Path, adapter_dir: Path, int4_options: dict, out_dir: Path,
                       say: Callable[[str], None] = print, verbose: bool = False) -> AdapterForm:
    """Build `out_dir`/onnx-adapter/ for `adapter_dir` on the shared base (built first when it is not there).

    `int4_options`: the execution provider and int4 options of the run's own build (build/options.py)."""
    from phi3e2e.build.olive_runner import run_olive
    from phi3e2e.runs.record import file_sha256
    from phi3e2e.workflow.render import render_adapter_int4

    start = time.monotonic()
    final = out_dir / runs.ONNX_ADAPTER
    base_dir = project.model_cache / BASES / f"{base_model.name}-{base_key(base_model, int4_options, adapter_dir)}"
    options = dict(int4_options)
    device = "cuda" if options.pop("execution_provider", "cpu") == "cuda" else "cpu"
    rendered = render_adapter_int4(base_model, adapter_dir, device, options, project_templates=project.templates)
    staging = staging_name(final)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        (staging / CONFIG).write_text(json.dumps(rendered.config, indent=2) + "\n")
        say(f"Building the adapter on the shared int4 base (Olive ModelBuilder + ExtractAdapters; template: "
            f"{rendered.template_note(project.root)})")
        run_olive(staging / CONFIG, staging / LOG, say, verbose=verbose)
        built = staging / "olive-output"
        adapters = sorted(built.glob("*.onnx_adapter"))
        if not (built / "model.onnx").is_file() or len(adapters) != 1:
            raise UserError(f"Olive produced no base model.onnx with one .onnx_adapter; see {staging / LOG}")
        digest = file_sha256(built / "model.onnx")
        base_built = _share_base(built, base_dir, digest, device, say)
        form = staging / "model"
        form.mkdir()
        shutil.move(adapters[0], form / runs.ADAPTER_FILE)
        shutil.move(staging / CONFIG, form / CONFIG)
        shutil.move(staging / LOG, form / LOG)
        pointer = {"base": os.path.relpath(base_dir, final), "base_model_sha256": digest}
        atomic_write(form / runs.BASE_POINTER, json.dumps(pointer, indent=2) + "\n")
        publish(form, final, replace=True)  # replace: rebuilding a run whose base was deleted
    finally:  # an error or Ctrl-C keeps nothing half-built
        shutil.rmtree(staging, ignore_errors=True)
    return AdapterForm(final, base_dir, (final / runs.ADAPTER_FILE).stat().st_size, disk_bytes(base_dir), base_built,
                       runs.elapsed(start))


def _share_base(built: Path, base_dir: Path, digest: str, device: str, say: Callable[[str], None]) -> bool:
    """Keep `built`'s base as the shared one when there is none yet; otherwise check it is the same model."""
    with build_lock(base_dir):
        if (base_dir / BASE_RECORD).is_file():
            recorded = _read_json(base_dir / BASE_RECORD).get("model_sha256")
            if recorded != digest:
                raise UserError(f"the adapter's base model.onnx differs from the shared base {base_dir} (sha256 "
                                f"{digest[:12]} vs {str(recorded)[:12]}); it was built by another phi3e2e or Olive")
            return False
        staging = staging_name(base_dir)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for path in built.iterdir():
            if path.suffix != ".onnx_adapter" and path.name not in _OLIVE_FILES and path.name != "model.onnx" \
                    and path.is_file():
                shutil.copy2(path, staging / path.name)
        _save_with_external_data(built / "model.onnx", staging / "model.onnx")
        if device == "cpu":
            from phi3e2e.infer.engines.genai import use_all_cores

            use_all_cores(staging)  # ModelBuilder leaves onnxruntime-genai on one decode thread
        (staging / BASE_RECORD).write_text(json.dumps({"model_sha256": digest}, indent=2) + "\n")
        publish(staging, base_dir, replace=base_dir.exists())  # a half-removed base is replaced whole
        say(f"Built the shared int4 base {base_dir.parent.name}/{base_dir.name} ({disk_bytes(base_dir) / 1e6:.1f} MB)")
        return True


def _save_with_external_data(source: Path, target: Path) -> None:
    """The base as model.onnx + model.onnx.data, as ModelBuilder's own int4 builds are.

    Olive's ExtractAdapters writes the base as one protobuf with its weights inside; onnxruntime then keeps
    that copy beside its repacked weights: 1761 MB loaded against 1166 MB for the same model with external
    data (16-layer Phi-3-mini shape, docs/serve.md), the same tokens. The recorded sha256 stays the built
    file's, which every later build of this base is checked against."""
    import onnx

    onnx.save_model(onnx.load(source), target, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    (target.parent / "model.onnx.data").chmod(0o644)  # onnx writes it 0600


def export_adapter(project: Project, run: Optional[str] = None, say: Callable[[str], None] = print,
                   verbose: bool = False) -> AdapterForm:
    """`phi3e2e export RUN --ship adapter`: the adapter form of a finished run (again, when its base was deleted)."""
    from phi3e2e.build.options import recorded_int4_options

    run_dir = runs.find_finished_run(project, run)
    record = runs.read_record(run_dir)
    existing = run_dir / runs.ONNX_ADAPTER
    if existing.is_dir() and runs.adapter_base_dir(existing, must_exist=False).is_dir():
        raise UserError(f"{project.relative(existing)} already exists on its base; delete it to build it again")
    with runs.run_lock(project.gen_model, run_dir.name):
        form = build_adapter_form(project, project.resolve(record.base_model), run_dir / runs.ADAPTER,
                                  recorded_int4_options(record), run_dir, say, verbose)
        record.adapter_base = project.relative(form.base_dir)
        runs.write_record(run_dir, record)
    return form


def _adapter_config(adapter_dir: Path) -> dict:
    config = _read_json(adapter_dir / "adapter_config.json")
    if config.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{adapter_dir / 'adapter_config.json'}: peft_type {config.get('peft_type')!r}; "
                        "only a LoRA adapter ships on the int4 base")
    return config


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data

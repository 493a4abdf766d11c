"""`phi3e2e export`: build another ONNX Runtime GenAI model from a run's merged model.

Runs Olive's ModelBuilder pass (the same pass `finetune` ends with) through `olive run`, for
the device and precision asked, e.g. a CPU int4 model from an Azure ML run built for CUDA.
Building needs no GPU: a CUDA model can be built here and run on a GPU machine.

The model is built in gen-model/<run>/.onnx-<device>-<precision>.partial/ and renamed to
onnx-<device>-<precision>/ only once its files are verified; a failed build leaves only its
log, as onnx-<device>-<precision>.failed.log.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.prepare.models import check_model_folder
from phi3e2e.project import Project
from phi3e2e.storage import publish, shipped_bytes, staging_name
from phi3e2e.workflow.render import render_model_builder

Precision = Literal["int4", "fp16", "fp32"]
DEVICES: tuple[str, ...] = ("cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("int4", "fp16", "fp32")
EXPORT_CONFIG, EXPORT_LOG, EXPORT_RECORD = "olive-config.json", "olive.log", "export.json"


@dataclass
class ExportResult:
    run_dir: Path
    model_dir: Path
    record: dict


def export_folder_name(device: str, precision: str) -> str:
    return f"onnx-{device}-{precision}"


def check_choices(device: str, precision: str) -> None:
    if device not in DEVICES:
        raise UserError(f"--device {device!r}: choose one of {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device == "cpu":
        # Olive's ModelBuilder skips fp16 for CPU (onnxruntime has no fast fp16 CPU kernels).
        raise UserError("--precision fp16 is for --device cuda; for CPU use int4 (smallest, fastest) or fp32")


def int4_build_options(run_dir: Path, device: str, merged_dir: Path, overrides: Optional[dict] = None) -> dict:
    """int4 options for this export: `overrides` (export --set) first; then, for CPU, the CPU
    run's own options (or phi3e2e's measured CPU defaults when the run was built for CUDA); a
    CUDA export otherwise keeps ModelBuilder's."""
    from phi3e2e.build.options import int4_build_options as decide
    from phi3e2e.build.options import recorded_build_device

    overrides = overrides or {}
    if device == "cuda":
        return decide(overrides, merged_dir, for_cpu=False)
    record = runs.read_record(run_dir)
    recorded = record.settings.export.model_dump() if recorded_build_device(record) == "cpu" else {}
    return decide(recorded | overrides, merged_dir, for_cpu=True)


def export(
    project: Project,
    run: Optional[str] = None,
    *,
    device: str = "cpu",
    precision: str = "int4",
    int4_options: Optional[dict] = None,
    verbose: bool = False,
    say: Callable[[str], None] = print,
) -> ExportResult:
    """`int4_options`: ModelBuilder int4 options that win over the run's and the defaults."""
    check_choices(device, precision)
    if int4_options and precision != "int4":
        raise UserError(f"--set export.int4_*: only for --precision int4, not {precision}")
    run_dir = runs.find_finished_run(project, run)
    merged_dir = run_dir / runs.MERGED
    check_model_folder(merged_dir)
    name = export_folder_name(device, precision)
    final = run_dir / name
    if final.exists():
        raise UserError(f"{final} already exists; delete it to build it again")
    build_options = int4_build_options(run_dir, device, merged_dir, int4_options)
    # model-builder.json.j2, the project's copy first: the same ModelBuilder pass as finetune's int4 step
    rendered = render_model_builder(merged_dir, device, precision, build_options, project_templates=project.templates)
    config = rendered.config

    staging = staging_name(final)  # Olive works here; the verified model inside it is published as `final`
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    (staging / EXPORT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    say(f"Building {name} from {project.relative(merged_dir)} (Olive ModelBuilder, {precision} for {device}; "
        f"template: {rendered.template_note(project.root)})")
    start = time.monotonic()
    try:
        from phi3e2e.build.olive_runner import run_olive

        run_olive(staging / EXPORT_CONFIG, staging / EXPORT_LOG, say, verbose=verbose)
        model_dir = _collect_model(staging, staging / EXPORT_LOG)
        if device == "cpu":
            from phi3e2e.infer import prepacked
            from phi3e2e.infer.engines.genai import use_all_cores

            threads = use_all_cores(model_dir)  # ModelBuilder leaves onnxruntime-genai on one decode thread
            if prepacked.wanted():
                prepacked.save_prepacked(model_dir, threads)
        for kept in (EXPORT_CONFIG, EXPORT_LOG):
            shutil.move(staging / kept, model_dir / kept)
        record = {
            "run": run_dir.name,
            "source": "merged",
            "device": device,
            "precision": precision,
            "pass": config["passes"]["build"],
            "duration_s": runs.elapsed(start),
            "size_bytes": shipped_bytes(model_dir),  # a cache (.prepacked/) is not the model
        }
        (model_dir / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        publish(model_dir, final)  # the last step: only a verified model ever appears under its name
    except (UserError, KeyboardInterrupt) as e:
        failed_log = run_dir / f"{name}.failed.log"
        if (staging / EXPORT_LOG).is_file():
            shutil.move(staging / EXPORT_LOG, failed_log)
        shutil.rmtree(staging, ignore_errors=True)
        reason = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
        raise UserError(f"export failed: {reason} [log: {project.relative(failed_log)}]") from None
    shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(run_dir, final, record)


def _collect_model(staging: Path, log_file: Path) -> Path:
    """Move the built model out of Olive's cache into staging/model and check its files."""
    from phi3e2e.build.olive_outputs import produced_models

    built = produced_models(staging / "olive-output", log_file, forms=(runs.ONNX_INT4,))[runs.ONNX_INT4]
    model_dir = staging / "model"
    shutil.move(str(built), model_dir)
    missing = [name for name in runs.REQUIRED_FILES[runs.ONNX_INT4] if not any(model_dir.glob(name))]
    if missing:
        raise UserError(f"the built model lacks {', '.join(missing)}")
    return model_dir

"""Run folders: gen-model/<run>/ is the unit of truth for one fine-tune.

layout     the folder's files and model forms, run names, where scratch lies
record     run.json, the typed and versioned run record
locks      one writer per run
lifecycle  staged -> finished (renamed last) or failed; resume points
lookup     the runs there are, the finished ones, one by name
overview   `phi3e2e runs`: a row per run, one in full, two compared, one removed (imported on its own)

The names below are the package's public face: `from phi3e2e import runs`, then `runs.NAME`.
"""

from phi3e2e.runs.layout import (
    ADAPTER,
    ADAPTER_FILE,
    BASE_POINTER,
    CONFIG_FILE,
    EVAL_FILE,
    EVAL_PLOT,
    EVAL_REPORT,
    FORMS,
    LOSS_PLOT,
    MERGED,
    OLIVE_LOG,
    ONNX_ADAPTER,
    ONNX_INT4,
    REQUIRED_FILES,
    RUN_FILE,
    TRAIN_LOG,
    adapter_base_dir,
    check_run_name,
    checkpoints_dir,
    failed_dir,
    missing_outputs,
    olive_cache_dir,
    partial_dir,
    shipped_form,
)
from phi3e2e.runs.lifecycle import fail_run, finish_run, last_checkpoint, reopen_run, start_run
from phi3e2e.runs.locks import in_progress, new_run_name, process_alive, run_lock
from phi3e2e.runs.lookup import LATEST, find_finished_run, finished_runs, match_run, newest_onnx_model, run_folders
from phi3e2e.runs.record import (
    SCHEMA_VERSION,
    AmlRecord,
    DeployRecord,
    LossSummary,
    PushRecord,
    ResumePoint,
    RunRecord,
    Status,
    SweepTrial,
    data_fingerprint,
    elapsed,
    file_sha256,
    now,
    read_record,
    try_read_record,
    write_record,
)

__all__ = [
    "ADAPTER", "ADAPTER_FILE", "BASE_POINTER", "ONNX_ADAPTER", "shipped_form", "adapter_base_dir",
    "CONFIG_FILE", "EVAL_FILE", "EVAL_PLOT", "EVAL_REPORT", "FORMS", "LOSS_PLOT", "MERGED", "OLIVE_LOG",
    "ONNX_INT4", "REQUIRED_FILES", "RUN_FILE", "TRAIN_LOG", "check_run_name", "checkpoints_dir", "failed_dir",
    "missing_outputs", "new_run_name", "olive_cache_dir", "partial_dir", "fail_run", "finish_run", "last_checkpoint",
    "reopen_run", "start_run", "in_progress", "process_alive", "run_lock", "LATEST", "find_finished_run", "finished_runs", "match_run", "newest_onnx_model",
    "run_folders", "SCHEMA_VERSION", "AmlRecord",
    "DeployRecord", "LossSummary", "PushRecord", "ResumePoint", "RunRecord", "Status",
    "SweepTrial",
    "data_fingerprint", "elapsed", "file_sha256", "now", "read_record", "try_read_record", "write_record",
]  # fmt: skip

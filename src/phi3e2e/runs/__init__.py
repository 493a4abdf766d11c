"""Run folders: gen-model/<run>/ is the unit of truth for one fine-tune.

layout     the folder's files and model forms, run names, where scratch lies
record     run.json, the typed and versioned run record
locks      one writer per run
lifecycle  staged -> finished (renamed last) or failed; resume points
lookup     the runs there are, the finished ones, one by name
overview   `phi3e2e runs`: a row per run, one in full, two compared, one removed (imported on its own)

The names below are the package's public face: `from phi3e2e import runs`, then `runs.NAME`.
"""

import importlib

# Loaded on first use (PEP 562): `chat --model DIR` needs layout's names only, not the run record's pydantic models
# and the fine-tune settings behind them (~50 ms of its start).
_NAMES_IN = {
    "layout": (
        "ADAPTER", "ADAPTER_FILE", "BASE_POINTER", "CONFIG_FILE", "EVAL_FILE", "EVAL_PLOT", "EVAL_REPORT",
        "FORMS", "LOSS_PLOT", "MERGED", "OLIVE_LOG", "ONNX_ADAPTER", "ONNX_INT4", "REQUIRED_FILES", "RUN_FILE",
        "TRAIN_LOG", "adapter_base_dir", "check_run_name", "checkpoints_dir", "failed_dir", "missing_outputs",
        "olive_cache_dir", "partial_dir", "shipped_form",
    ),
    "lifecycle": (
        "fail_run", "finish_run", "last_checkpoint", "reopen_run", "start_run",
    ),
    "locks": (
        "in_progress", "new_run_name", "process_alive", "run_lock",
    ),
    "lookup": (
        "LATEST", "find_finished_run", "finished_runs", "match_run", "newest_onnx_model", "run_folders",
    ),
    "record": (
        "SCHEMA_VERSION", "AmlRecord", "DeployRecord", "LossSummary", "PushRecord", "ResumePoint", "RunRecord",
        "Status", "SweepTrial", "data_fingerprint", "elapsed", "file_sha256", "now", "read_record",
        "try_read_record", "write_record",
    ),
}
_MODULE_OF = {name: module for module, names in _NAMES_IN.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # once
    return value

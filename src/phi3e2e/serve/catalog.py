"""Which models a project serves: every finished run's int4 model, and each run's base model as int4.

A run shipped as an adapter (onnx-adapter/) is served on its shared int4 base: the registry loads that
base once for every adapter run on it (registry.py).

The base build is what `eval` compares against (phi3e2e.build.base_int4: the same builder and
int4 options as the run's), so the playground's side-by-side view shows what the fine-tune changed
and nothing else. It is built on first use and cached in model-cache/.onnx-int4/.

This is the one module of the server that reads run folders (phi3e2e.runs).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.runs import ADAPTER_FILE, ONNX_ADAPTER, ONNX_INT4, adapter_base_dir, shipped_form
from phi3e2e.serve.errors import ApiError

BASE_PREFIX = "base/"  # run names cannot hold "/", so a base id never clashes with a run
MAX_EXAMPLES = 50


@dataclass(frozen=True)
class ServedModel:
    id: str
    created: int  # seconds since the epoch, as OpenAI lists it
    kind: str  # "fine-tuned" or "base"
    run_dir: Optional[Path] = None  # fine-tuned: the run; base: a run whose build options it uses
    base_id: Optional[str] = None  # fine-tuned: the base model to compare with
    dataset: Optional[Path] = None  # fine-tuned: its dataset folder (eval.jsonl: the playground's examples)
    base_model: Optional[Path] = None  # base: the Hugging Face folder it is built from
    build_options: Optional[dict] = None  # base: execution provider and int4 options
    version: str = ""  # fine-tuned: which folder holds the run now (a new run of the same name is another)
    adapter: Optional[Path] = None  # fine-tuned, shipped as an adapter: its .onnx_adapter (on model_dir, its base)
    shared_base: Optional[Path] = None  # base: an adapter run's int4 base, which answers as the base with no adapter

    def as_openai(self) -> dict:
        extra = {"phi3e2e_kind": self.kind}
        if self.base_id:
            extra["phi3e2e_base"] = self.base_id
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": "phi3e2e"} | extra


class Catalog:
    """The project's servable models, re-read from gen-model/ when asked, so new runs appear."""

    def __init__(self, project: Project, default_run: Optional[str] = None, say: Callable[[str], None] = print):
        from phi3e2e.runs import find_finished_run  # UserError naming the run when it is not a finished one

        self.project = project
        self.say = say
        self.default_id = find_finished_run(project, default_run).name  # UserError when there is none
        self._lock = threading.Lock()
        self._models: dict[str, ServedModel] = {}
        if self.default_id not in {model.id for model in self.refresh()}:
            raise UserError(f"run {self.default_id}: no {ONNX_INT4}/ or {ONNX_ADAPTER}/ model in it to serve")

    def refresh(self) -> list[ServedModel]:
        found: dict[str, ServedModel] = {}
        bases: dict[tuple[str, str], list[Path]] = {}  # (base folder, options) -> runs built that way
        for run in _finished_runs(self.project):
            adapter = run.run_dir / ONNX_ADAPTER / ADAPTER_FILE
            if shipped_form(run.run_dir) != ONNX_ADAPTER:
                adapter = None
                if not (run.run_dir / ONNX_INT4 / "genai_config.json").is_file():
                    continue
            if run.base_model is not None and run.base_model.is_dir() and run.int4_options is not None:
                build = (str(run.base_model), json.dumps(run.int4_options, sort_keys=True))
                bases.setdefault(build, []).append(run.run_dir)
            found[run.run_dir.name] = ServedModel(run.run_dir.name, _epoch(run.finished_at), "fine-tuned", run.run_dir,
                                                  dataset=run.dataset, version=run_version(run.run_dir),
                                                  adapter=adapter)
        names = [Path(folder).name for folder, _ in bases]
        for (folder, options), run_dirs in bases.items():
            name = BASE_PREFIX + Path(folder).name
            if names.count(Path(folder).name) > 1:  # runs built the same base differently: one build each
                name += "@" + hashlib.sha256(options.encode()).hexdigest()[:8]
            # With no adapter active, an adapter run's shared base gives the plain base int4's logits exactly
            # (tests/test_adapters.py): the base it already loads answers for base/<model> too.
            shared = next((found[run_dir.name].adapter.parent for run_dir in run_dirs
                           if found[run_dir.name].adapter is not None), None)
            found[name] = ServedModel(name, 0, "base", run_dirs[0], base_model=Path(folder),
                                      build_options=json.loads(options),
                                      shared_base=adapter_base_dir(shared, must_exist=False) if shared else None)
            for run_dir in run_dirs:
                found[run_dir.name] = replace(found[run_dir.name], base_id=name)
        with self._lock:
            self._models = found
        return list(found.values())

    def get(self, model_id: Optional[str]) -> ServedModel:
        """The model as it is on disk now: a run removed since the last look is a 404, a replaced one the new run."""
        model_id = model_id or self.default_id
        with self._lock:
            model = self._models.get(model_id)
        if model is not None and model.kind == "fine-tuned" and run_version(model.run_dir) != model.version:
            model = None  # `runs rm`, or a new run of that name, since the last refresh
        if model is None and model_id not in {m.id for m in self.refresh()}:
            raise ApiError(404, f"The model '{model_id}' does not exist; GET /v1/models lists the models served here.",
                           param="model", code="model_not_found")
        with self._lock:
            return self._models[model_id]

    def model_dir(self, model: ServedModel) -> Path:
        """The int4 folder to load (an adapter run's: its shared base); a base model is built here on its first use
        (minutes for Phi-3-mini)."""
        if model.adapter is not None:
            try:
                return adapter_base_dir(model.adapter.parent)  # a deleted base: one line saying how to rebuild it
            except UserError as e:
                raise ApiError(500, f"{model.id}: {e}", "server_error") from None
        if model.shared_base is not None and (model.shared_base / "model.onnx").is_file():
            return model.shared_base
        if model.kind == "fine-tuned":
            return model.run_dir / ONNX_INT4
        from phi3e2e.build.base_int4 import cached_base_int4

        try:
            return cached_base_int4(self.project.model_cache, model.base_model, model.build_options, self.say)
        except UserError as e:
            raise ApiError(500, f"{model.id}: {e}", "server_error") from None

    def examples(self, model_id: str) -> list[dict]:
        """The run's held-out questions with their reference answers (its dataset's eval.jsonl)."""
        from phi3e2e.chat_format import ChatFormat

        model = self.get(model_id)
        if model.dataset is None:
            return []
        eval_file = model.dataset / "eval.jsonl"
        base = adapter_base_dir(model.adapter.parent, must_exist=False) if model.adapter is not None else None
        chat_format = ChatFormat.of_folder(model.run_dir / ONNX_INT4, base)
        examples = []
        try:
            with open(eval_file, encoding="utf-8") as f:
                for line in f:
                    row = json.loads(line) if line.strip() else {}
                    if "Question" in row and "Best Answer" in row:
                        examples.append({"question": str(row["Question"]), "reference": str(row["Best Answer"])})
                    elif "text" in row:  # a chat rendered in the model's chat format (dataset_import)
                        prompt, reference = chat_format.split_prompt(str(row["text"]))
                        examples.append({"question": chat_format.last_user_turn(prompt), "reference": reference})
                    if len(examples) >= MAX_EXAMPLES:
                        break
        except (OSError, json.JSONDecodeError):
            return []  # no eval split: the page simply offers no examples
        return examples


@dataclass(frozen=True)
class _Run:
    """What the server needs from a finished run's record; paths resolved in the project."""

    run_dir: Path
    finished_at: Optional[str]
    base_model: Optional[Path]
    dataset: Optional[Path]
    int4_options: Optional[dict]  # how its onnx-int4/ was built, so the base is built the same way


def _finished_runs(project: Project) -> list[_Run]:
    """The one place that reads run records (phi3e2e.runs owns their format)."""
    from phi3e2e import runs
    from phi3e2e.build.options import recorded_int4_options

    found = []
    for run_dir in runs.finished_runs(project.gen_model):
        record = runs.try_read_record(run_dir)
        if record is None:
            continue
        base_model = project.resolve(record.base_model) if record.base_model else None
        dataset = project.resolve(record.dataset) if record.dataset else None
        found.append(_Run(run_dir, record.finished_at, base_model, dataset, recorded_int4_options(record)))
    return found


def run_version(run_dir: Path) -> str:
    """Which run folder holds this name now ("" when none): its inode and its record's last change."""
    form = shipped_form(run_dir)
    model_file = run_dir / form / (ADAPTER_FILE if form == ONNX_ADAPTER else "genai_config.json")
    try:
        return f"{run_dir.stat().st_ino}:{model_file.stat().st_mtime_ns}"
    except OSError:
        return ""


def _epoch(timestamp: Optional[str]) -> int:
    try:
        return int(datetime.fromisoformat(timestamp).timestamp())
    except (TypeError, ValueError):
        return 0

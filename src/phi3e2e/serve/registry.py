"""Models loaded on first use and kept within a memory budget.

A model's memory is counted as its folder's size (the int4 weights as loaded); the answers in
progress add their KV caches (scheduler.py asks `kv_room`). Loading a model that does not fit
unloads the least recently used models that no request is using; if that is not enough, the
request is refused with 503 rather than the machine swapping.

Adapter runs (onnx-adapter/) share their int4 base: it is loaded once, as its own entry
(`shared-base/<folder>`), counted once and held while any adapter on it is loaded; each adapter
run adds only its .onnx_adapter file's bytes.
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from phi3e2e.chat_format import ChatFormat
from phi3e2e.errors import UserError
from phi3e2e.serve.catalog import Catalog
from phi3e2e.serve.errors import ApiError

GIB = 1 << 30
SHARED_BASE = "shared-base/"  # the registry's entry for a base that adapter runs share (not a served model id)


@dataclass
class Loaded:
    engine: Any  # GenaiEngine
    chat_format: ChatFormat  # the model's own chat template (chat_template.jinja in its folder)
    bytes: int
    kv_bytes_per_token: int
    users: int = 0
    last_used: float = 0.0
    version: str = ""  # the catalog's version of the model when it was loaded
    base_key: Optional[str] = None  # an adapter run's: the entry of the shared base it holds


class ModelRegistry:
    def __init__(self, catalog: Catalog, device: str, budget_bytes: int, say: Callable[[str], None] = print):
        self.catalog, self.device, self.budget, self.say = catalog, device, budget_bytes, say
        self.kv_in_use: Callable[[], int] = lambda: 0  # set to the scheduler's once both exist
        self._loaded: dict[str, Loaded] = {}
        self._lock = threading.Lock()  # guards _loaded
        self._load_lock = threading.Lock()  # one load at a time, so two loads never both count on the same room
        self._adapter_loads = 0  # each adapter load gets its own name in the base's og.Adapters

    def models_bytes(self) -> int:
        with self._lock:
            return sum(loaded.bytes for loaded in self._loaded.values())

    def loaded_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._loaded)

    def kv_room(self) -> int:
        return self.budget - self.models_bytes()

    def acquire(self, model_id: str) -> Loaded:
        """The loaded model, marked in use until `release` (blocking: may build and load it).

        A run removed or replaced on disk since it was loaded is let go: answers in progress finish
        on the old engine; new requests get a 404 or the new run's weights.
        """
        model = self.catalog.get(model_id)
        if (loaded := self._use(model)) is not None:
            return loaded
        with self._load_lock:
            if (loaded := self._use(model)) is not None:
                return loaded
            if model.adapter is not None or (model.shared_base and (model.shared_base / "model.onnx").is_file()):
                return self._load_on_shared_base(model)
            model_dir = self.catalog.model_dir(model)
            size = _folder_bytes(model_dir)
            self._make_room(model.id, size)
            self.say(f"Loading {model.id} ({size / GIB:.2f} GiB) ...")
            start = time.monotonic()
            try:
                engine = _open_engine(model_dir, self.device)
            except UserError as e:
                raise ApiError(500, f"{model.id}: {e}", "server_error") from None
            self.say(f"Loaded {model.id} in {time.monotonic() - start:.1f} s")
            loaded = Loaded(engine, ChatFormat.of_folder(model_dir), size, _kv_bytes_per_token(engine, self.device),
                            users=1, last_used=time.monotonic(), version=model.version)
            with self._lock:
                self._loaded[model.id] = loaded
            return loaded

    def _load_on_shared_base(self, model) -> Loaded:
        """An adapter run: its shared base (loaded once, held while the adapter is), then the adapter on it. A base
        model that an adapter run's base stands for: that base itself, with no adapter."""
        base_dir = self.catalog.model_dir(model)
        key = SHARED_BASE + base_dir.name
        with self._lock:
            base = self._loaded.get(key)
            if base is not None:
                base.users += 1  # held by this adapter until it is unloaded
        if base is None:
            size = _folder_bytes(base_dir)
            self._make_room(key, size)
            self.say(f"Loading the int4 base {base_dir.name} that adapter runs share ({size / GIB:.2f} GiB) ...")
            try:
                engine = _open_engine(base_dir, self.device)
            except UserError as e:
                raise ApiError(500, f"{model.id}: {e}", "server_error") from None
            base = Loaded(engine, ChatFormat.of_folder(base_dir), size, _kv_bytes_per_token(engine, self.device),
                          users=1, last_used=time.monotonic())
            with self._lock:
                self._loaded[key] = base
        size = model.adapter.stat().st_size if model.adapter is not None else 0
        try:
            self._make_room(model.id, size)
            from phi3e2e.infer.engines.genai import AdapterEngine

            self._adapter_loads += 1
            engine = base.engine if model.adapter is None else AdapterEngine(
                base.engine, model.adapter, f"{model.id}#{self._adapter_loads}")
        except (UserError, ApiError) as e:
            with self._lock:
                base.users -= 1
            raise e if isinstance(e, ApiError) else ApiError(500, f"{model.id}: {e}", "server_error") from None
        self.say(f"Loaded {model.id}: " + (f"its adapter ({size / 1e6:.1f} MB) on {base_dir.name}" if model.adapter
                                          else f"{base_dir.name} with no adapter"))
        loaded = Loaded(engine, base.chat_format, size, base.kv_bytes_per_token, users=1,
                        last_used=time.monotonic(), version=model.version, base_key=key)
        with self._lock:
            self._loaded[model.id] = loaded
        return loaded

    def _let_go(self, loaded: Loaded) -> None:
        """An entry is gone (with self._lock held): an adapter frees its hold on the shared base."""
        if loaded.base_key and (base := self._loaded.get(loaded.base_key)) is not None:
            base.users -= 1
            base.last_used = time.monotonic()

    def release(self, loaded: Loaded) -> None:
        with self._lock:
            loaded.users -= 1
            loaded.last_used = time.monotonic()

    def _use(self, model) -> Optional[Loaded]:
        with self._lock:
            loaded = self._loaded.get(model.id)
            if loaded is not None and loaded.version != model.version:
                del self._loaded[model.id]  # stale: its answers in progress hold it until they end
                self._let_go(loaded)
                self.say(f"Unloaded {model.id}: its run folder was removed or replaced")
                return None
            if loaded is not None:
                loaded.users += 1
                loaded.last_used = time.monotonic()
            return loaded

    def _make_room(self, model_id: str, size: int) -> None:
        if size > self.budget:
            raise ApiError(503, f"{model_id} needs {size / GIB:.2f} GiB, more than the server's memory budget of "
                                f"{self.budget / GIB:.2f} GiB (phi3e2e serve --memory-budget)", "server_error",
                           code="memory_budget")
        kv_in_use = self.kv_in_use()  # asked before taking our lock: the scheduler's admission takes them the other way
        with self._lock:
            idle = sorted((loaded.last_used, name) for name, loaded in self._loaded.items() if loaded.users == 0)
            free = self.budget - sum(loaded.bytes for loaded in self._loaded.values()) - kv_in_use
            evicted = []
            while free < size and idle:
                _, name = idle.pop(0)
                gone = self._loaded.pop(name)
                free += gone.bytes
                self._let_go(gone)
                if gone.base_key and hasattr(gone.engine, "unload"):
                    gone.engine.unload()  # idle: no answer is using it
                evicted.append(name)
        if evicted:
            gc.collect()  # the engines' memory goes back now, before the new model is loaded
            self.say(f"Unloaded {', '.join(evicted)} to stay within the memory budget")
        if free < size:
            raise ApiError(503, f"{model_id} does not fit in the memory budget ({self.budget / GIB:.2f} GiB) while "
                                "other models are answering; retry shortly", "server_error", code="memory_budget")


def _open_engine(model_dir: Path, device: str):
    from phi3e2e.infer.engines.genai import GenaiEngine

    return GenaiEngine(model_dir, device)  # a base build that sets no thread count gets every core


def _kv_bytes_per_token(engine, device: str) -> int:
    from phi3e2e.infer.engines.genai import genai_config, kv_bytes_per_token

    return kv_bytes_per_token(genai_config(engine.model_dir), device)


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


def default_budget_bytes() -> int:
    """60% of the memory available now: room for the OS, the page cache and the server itself."""
    from phi3e2e.machine import available_memory_bytes

    available = available_memory_bytes()
    return int(available * 0.6) if available is not None else 8 * GIB

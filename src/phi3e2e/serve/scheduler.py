"""The one thread that generates: every answer in progress gets a token in turn.

One thread for all models, so two generators never run at once on a model (a model's
onnxruntime sessions are shared by its generators) and two models never fight over the cores
that each one's decode already uses in full. Turn by turn, so every streaming client sees its
answer move and a long answer does not hold up a short one. Answers beyond `slots`, or whose
KV cache would not fit in the memory left, wait in arrival order.

Events go back through `Job.emit` (from this thread): ("text", str), ("done", finish_reason,
completion_tokens) or ("error", message). A job whose `cancelled` is set (its client went
away) is dropped at its next turn, and its generator freed.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from phi3e2e.infer.generation import GenerationOptions
from phi3e2e.serve.stops import StopText


class QueueFull(Exception):
    pass


@dataclass
class Job:
    engine: Any  # GenaiEngine
    prompt_tokens: list[int]
    options: GenerationOptions
    emit: Callable[[tuple], None]
    stops: list[str] = field(default_factory=list)
    kv_bytes: int = 0  # the KV cache onnxruntime-genai allocates for prompt + max new tokens
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Running:
    job: Job
    tokens: Iterator[tuple[int, str]]
    stop_text: StopText
    count: int = 0


class Scheduler:
    def __init__(self, slots: int = 4, max_waiting: int = 256, kv_room: Callable[[], int] = lambda: 1 << 62):
        """`kv_room()`: bytes the memory budget has left for KV caches (the budget minus loaded models)."""
        self.slots, self.max_waiting, self.kv_room = slots, max_waiting, kv_room
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: list[_Running] = []
        self._wake = threading.Condition()
        self._closing = False
        self._counts = collections.Counter()  # tokens, finished and cancelled answers since start
        self._thread = threading.Thread(target=self._loop, name="phi3e2e-generate", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._wake:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(job)
            self._wake.notify()

    def kv_in_use(self) -> int:
        with self._wake:
            return sum(running.job.kv_bytes for running in self._running)

    def stats(self) -> dict:
        with self._wake:
            return {"running": len(self._running), "waiting": len(self._waiting),
                    "tokens_generated": self._counts["tokens"], "answers_finished": self._counts["finished"],
                    "answers_cancelled": self._counts["cancelled"]}

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def _admit(self) -> None:
        """Start waiting jobs while a slot and their KV cache's memory are free (one always may run)."""
        in_use = sum(running.job.kv_bytes for running in self._running)
        while self._waiting and len(self._running) < self.slots:
            job = self._waiting[0]
            if job.cancelled.is_set():
                self._waiting.popleft()
                continue
            if self._running and in_use + job.kv_bytes > self.kv_room():
                break
            self._waiting.popleft()
            in_use += job.kv_bytes
            self._running.append(_Running(job, job.engine.stream_tokens(job.prompt_tokens, job.options),
                                          StopText(job.stops)))

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._waiting or self._running or self._closing):
                    self._wake.wait()
                if self._closing:
                    for job in [running.job for running in self._running] + list(self._waiting):
                        job.emit(("error", "the server is shutting down"))
                    return
                self._admit()
                turn = list(self._running)
            finished = [running for running in turn if not self._step(running)]
            if finished:
                with self._wake:
                    self._running = [running for running in self._running if running not in finished]

    def _step(self, running: _Running) -> bool:
        """Generate one token of this answer; False once it is over (done, failed or cancelled)."""
        job = running.job
        if job.cancelled.is_set():
            running.tokens.close()  # frees the generator and its KV cache now
            self._count("cancelled")
            return False
        try:
            token, text = next(running.tokens)
        except StopIteration:  # onnxruntime-genai reached max_length
            return self._finish(running, "length")
        except Exception as e:  # noqa: BLE001  (the runtime's own error: fail this answer, keep the thread)
            job.emit(("error", f"generation failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"))
            return False
        if job.engine.is_end(token):
            return self._finish(running, "stop")
        running.count += 1
        self._count("tokens")
        out = running.stop_text.feed(text)
        if out:
            job.emit(("text", out))
        if running.stop_text.stopped:
            return self._finish(running, "stop")
        at_context = len(job.prompt_tokens) + running.count >= job.engine.context_length
        if running.count >= job.options.max_new_tokens or at_context:
            return self._finish(running, "length")
        return True

    def _finish(self, running: _Running, reason: str) -> bool:
        rest = running.stop_text.flush()
        if rest:
            running.job.emit(("text", rest))
        running.job.emit(("done", reason, running.count))
        running.tokens.close()
        self._count("finished")
        return False

    def _count(self, what: str) -> None:
        with self._wake:
            self._counts[what] += 1

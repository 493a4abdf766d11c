"""The one thread that generates: every batch of answers in progress gets a forward pass in turn.

One thread for all models, so two forward passes never run at once on a model (a model's
onnxruntime sessions are shared by its batches) and two models never fight over the cores that
each one's decode already uses in full. Answers to the same model (or the same adapter of it) that are
waiting together start as one batch (up to `max_batch`, infer/engines/genai_batch.py): one forward pass
then gives each its next token, for about the cost of one answer's. Batch by batch in turn, so every streaming
client sees its answer move, an answer that arrives while others run starts at once (as a new
batch) instead of waiting for them, and a long answer does not hold up a short one. Answers
beyond `slots`, or whose KV cache would not fit in the memory left, wait in arrival order.

A batch's rows stay in its forward passes until all of them are over (an onnxruntime-genai Generator
cannot drop a row), and its KV cache is held until then; an answer that is over (done,
stopped, cancelled) is no longer read and frees its slot.

Events go back through `Job.emit` (from this thread): ("text", str), ("done", finish_reason,
completion_tokens) or ("error", message). A job whose `cancelled` is set (its client went
away) is dropped at its next turn; its batch is closed, and its KV cache freed, once no answer in
it is still wanted.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from phi3e2e.infer.engines.genai_batch import DEFAULT_BATCH, BatchDecode, SingleDecode, can_join
from phi3e2e.infer.generation import GenerationOptions
from phi3e2e.serve.stops import StopText

# Requests sent together (4 clients starting at once) reach the server a few ms apart: an idle server waits this
# long after the first for the others, so they start as one batch rather than as 1 + 3 (a small part of a prefill).
GATHER_S = 0.025


class QueueFull(Exception):
    pass


@dataclass
class Job:
    engine: Any  # GenaiEngine
    prompt_tokens: list[int]
    options: GenerationOptions
    emit: Callable[[tuple], None]
    stops: list[str] = field(default_factory=list)
    kv_bytes_per_token: int = 0  # the model's keys and values for one token of max_length
    submitted: float = 0.0  # time.monotonic() when it joined the queue
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def kv_bytes(self) -> int:
        """The KV cache onnxruntime-genai allocates for this answer alone: prompt + max new tokens."""
        return (len(self.prompt_tokens) + self.options.max_new_tokens) * self.kv_bytes_per_token


@dataclass
class _Answer:
    job: Job
    stop_text: StopText
    count: int = 0
    over: bool = False  # done, failed or cancelled: its row is no longer read


@dataclass
class _Batch:
    decode: BatchDecode | SingleDecode
    answers: list[_Answer]
    kv_bytes: int  # rows x the longest max_length: what the runtime allocated, held until the batch closes


class Scheduler:
    def __init__(self, slots: int = DEFAULT_BATCH, max_batch: int = DEFAULT_BATCH, max_waiting: int = 256,
                 kv_room: Callable[[], int] = lambda: 1 << 62):
        """`kv_room()`: bytes the memory budget has left for KV caches (the budget minus loaded models).
        `max_batch` 1: every answer on its own generator, as before batching."""
        self.slots, self.max_batch, self.max_waiting, self.kv_room = slots, max_batch, max_waiting, kv_room
        self._waiting: collections.deque[Job] = collections.deque()
        self._batches: list[_Batch] = []
        self._wake = threading.Condition()
        self._closing = False
        self._counts = collections.Counter()  # tokens, finished and cancelled answers since start
        self._thread = threading.Thread(target=self._loop, name="phi3e2e-generate", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._wake:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            job.submitted = time.monotonic()
            self._waiting.append(job)
            self._wake.notify()

    def kv_in_use(self) -> int:
        with self._wake:
            return sum(batch.kv_bytes for batch in self._batches)

    def stats(self) -> dict:
        with self._wake:
            return {"running": self._live(), "waiting": len(self._waiting), "batches": len(self._batches),
                    "tokens_generated": self._counts["tokens"], "answers_finished": self._counts["finished"],
                    "answers_cancelled": self._counts["cancelled"], "answers_batched": self._counts["batched"],
                    "largest_batch": self._counts["largest_batch"]}

    def close(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def _live(self) -> int:
        return sum(not answer.over for batch in self._batches for answer in batch.answers)

    def _admit(self) -> None:
        """Start waiting jobs while slots and their KV caches' memory are free (one always may run); jobs for
        the same model that wait together start as one batch."""
        in_use = sum(batch.kv_bytes for batch in self._batches)
        free = self.slots - self._live()
        while self._waiting and free > 0:
            if self._waiting[0].cancelled.is_set():
                self._waiting.popleft()
                continue
            group, kv_bytes = self._group(min(free, self._batch_limit(self._waiting[0])), in_use)
            if not group:
                break
            for job in group:
                self._waiting.remove(job)
            in_use += kv_bytes
            free -= len(group)
            self._batches.append(_Batch(self._decode(group), [_Answer(job, StopText(job.stops)) for job in group],
                                        kv_bytes))
            if len(group) > 1:
                self._counts["batched"] += len(group)
                self._counts["largest_batch"] = max(self._counts["largest_batch"], len(group))

    def _group(self, limit: int, in_use: int) -> tuple[list[Job], int]:
        """The first waiting job and, in arrival order, others for its model that may share its batch
        (genai_batch.can_join), while they fit in memory."""
        group, kv_bytes = [], 0
        for job in self._waiting:
            if len(group) == limit:
                break
            if job.cancelled.is_set() or (group and job.engine is not group[0].engine):
                continue
            if group and not can_join(job.engine, [(other.prompt_tokens, other.options) for other in [*group, job]]):
                continue
            size = _bytes_needed([*group, job])
            if (self._batches or group) and in_use + size > self.kv_room():
                break
            group, kv_bytes = [*group, job], size
        return group, kv_bytes

    def _gather_left(self) -> float:
        """Seconds to wait for more requests to batch with the first waiting one (0: start now)."""
        if not self._waiting or self.max_batch == 1:
            return 0.0
        room = min(self.slots - self._live(), self.max_batch)
        if room < 2 or len(self._waiting) >= room:
            return 0.0
        return max(0.0, GATHER_S - (time.monotonic() - self._waiting[0].submitted))

    def _batch_limit(self, job: Job) -> int:
        return self.max_batch if self._batched(job) else 1

    def _batched(self, job: Job) -> bool:
        # Batched decoding is checked on CPU only (this project has no onnxruntime-genai CUDA build to check it
        # on): on a GPU every answer keeps its own generator, as with batching off.
        return self.max_batch > 1 and job.engine.device == "cpu"

    def _decode(self, group: list[Job]):
        # Alone, an answer takes `chat`'s path: the runtime's own sampler and a prompt pass without padding.
        if len(group) == 1:
            return SingleDecode(group[0].engine, group[0].prompt_tokens, group[0].options)
        return BatchDecode(group[0].engine, [(job.prompt_tokens, job.options) for job in group])

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._waiting or self._batches or self._closing):
                    self._wake.wait()
                if self._closing:
                    for job in [answer.job for batch in self._batches for answer in batch.answers
                                if not answer.over] + list(self._waiting):
                        job.emit(("error", "the server is shutting down"))
                    return
                gather = self._gather_left()
                if gather > 0 and not self._batches:
                    self._wake.wait(gather)
                    continue
                if gather <= 0:  # (batches running: they take their turn first, which outlasts the gathering)
                    self._admit()
                turn = list(self._batches)
            closed = [batch for batch in turn if not self._step(batch)]
            if closed:
                with self._wake:
                    self._batches = [batch for batch in self._batches if batch not in closed]

    def _step(self, batch: _Batch) -> bool:
        """One forward pass of this batch; False once it is closed (no answer in it wanted any more)."""
        for answer in batch.answers:
            if not answer.over and answer.job.cancelled.is_set():
                answer.over = True
                self._count("cancelled")
        if all(answer.over for answer in batch.answers):
            batch.decode.close()
            return False
        try:
            events = batch.decode.step()
        except Exception as e:  # noqa: BLE001  (the runtime's own error: fail this batch's answers, keep the thread)
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            for answer in batch.answers:
                if not answer.over:
                    answer.over = True
                    answer.job.emit(("error", f"generation failed: {reason}"))
            batch.decode.close()
            return False
        for row, token, text in events:
            answer = batch.answers[row]
            if answer.over:
                continue
            if token is None:  # the runtime ended it: its end of turn ("stop") or max_length ("length")
                self._finish(answer, text)
            else:
                self._take(answer, token, text)
        return True

    def _take(self, answer: _Answer, token: int, text: str) -> None:
        job = answer.job
        if job.engine.is_end(token):
            return self._finish(answer, "stop")
        answer.count += 1
        self._count("tokens")
        out = answer.stop_text.feed(text)
        if out:
            job.emit(("text", out))
        if answer.stop_text.stopped:
            return self._finish(answer, "stop")
        at_context = len(job.prompt_tokens) + answer.count >= job.engine.context_length
        if answer.count >= job.options.max_new_tokens or at_context:
            self._finish(answer, "length")

    def _finish(self, answer: _Answer, reason: str) -> None:
        rest = answer.stop_text.flush()
        if rest:
            answer.job.emit(("text", rest))
        answer.job.emit(("done", reason, answer.count))
        answer.over = True
        self._count("finished")

    def _count(self, what: str) -> None:
        with self._wake:
            self._counts[what] += 1


def _bytes_needed(group: list[Job]) -> int:
    """What a batch allocates: every row's KV cache at the longest max_length, and the prompt pass's logits
    for every padded position (onnxruntime's output and the batch's copy of it, genai_batch.py)."""
    if len(group) == 1:
        return group[0].kv_bytes
    longest = max(len(job.prompt_tokens) for job in group)
    max_length = longest + max(job.options.max_new_tokens for job in group)
    per_token = max(job.kv_bytes_per_token for job in group)
    return len(group) * (max_length * per_token + 2 * longest * 4 * group[0].engine.vocab_size)

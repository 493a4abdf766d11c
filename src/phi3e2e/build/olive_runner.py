"""Run `olive run --config` as a subprocess and show its progress.

Olive prints a lot; the user sees the pass boundaries and the training loss as it goes, and
everything lands in the run's olive.log. Olive can log "No output model produced" and still
exit 0, so the outputs are checked afterwards (olive_outputs.py).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, TextIO

from phi3e2e.errors import UserError

PASS_LABELS = {"finetune": "fine-tune", "merge": "merge adapter", "int4": "build int4 ONNX"}
_RUNNING_PASS = re.compile(r"Running pass (\w+):")
_PASS_DONE = re.compile(r"Pass (\w+):\w+ finished in ([\d.]+) seconds")
# A tqdm bar: the Trainer's carry no label; ModelBuilder's "Saving <tensor>: 12%|..." and
# "Loading weights: ..." do.
_PROGRESS = re.compile(r"^(?P<label>[^|]*?)\s*\d+%\|[^|]*\| *(?P<done>\d+)/(?P<total>\d+) \[")
_READING = re.compile(r"^Reading (?:layer \d+|embedding layer|final norm|LM head)")
_LOG_DICT = re.compile(r"\{'(?:loss|train_runtime|eval_loss)'.*\}")
_EXCEPTION = re.compile(r"^[\w.]*(?:Error|Exception): .+")  # the last line of a Python traceback
NO_OUTPUT = "No output model produced"


def olive_env() -> dict:
    env = dict(os.environ)
    # Olive sends usage telemetry by default; our users' runs are theirs unless they opt in.
    if env.get("PHI3E2E_OLIVE_TELEMETRY") != "1":
        env["OLIVE_DISABLE_TELEMETRY"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if env.get("TRANSFORMERS_VERBOSITY") == "error":  # quiet in phi3e2e's own output (cli/app.py), not in the log
        env["TRANSFORMERS_VERBOSITY"] = "warning"
    return env


class StageLine:
    """Where a stage stands: one line updated in place on a terminal (`live`), else a plain line
    every `every_s` seconds, so a log or CI output shows progress without a wall of lines."""

    def __init__(self, say: Callable[[str], None], live: Optional[TextIO] = None, every_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.say, self.live, self.every_s, self.clock = say, live, every_s, clock
        self.started = self.shown_at = clock()
        self.first: Optional[tuple[float, int]] = None  # (time, done) when counting began: the rate's base
        self.shown = False

    def start(self) -> None:
        self.clear()
        self.started = self.shown_at = self.clock()
        self.first = None

    def update(self, done: Optional[int] = None, total: Optional[int] = None, detail: str = "", force: bool = False) -> None:
        now = self.clock()
        if done is not None and (self.first is None or done < self.first[1]):
            self.first = (now, done)
        parts = [f"{done}/{total}" if done is not None and total else "", detail, _clock(now - self.started)]
        if done is not None and total and self.first and now > self.first[0] and done > self.first[1]:
            rate = (done - self.first[1]) / (now - self.first[0])
            parts += [f"{rate:.2f}/s" if rate < 10 else f"{rate:.0f}/s", f"ETA {_clock((total - done) / rate)}"]
        text = "  " + "  ".join(part for part in parts if part)
        if self.live is not None:
            self.live.write("\r\033[K" + text)
            self.live.flush()
            self.shown = True
        elif force or now - self.shown_at >= self.every_s:
            self.say(text)
            self.shown_at = now

    def clear(self) -> None:
        if self.live is not None and self.shown:
            self.live.write("\r\033[K")
            self.live.flush()
            self.shown = False


class ProgressReader:
    """Turns Olive's output into a progress line per stage and a training-loss history."""

    def __init__(self, say: Callable[[str], None], logging_steps: int, line: Optional[StageLine] = None,
                 start_step: int = 0, on_eval: Optional[Callable[[int, float, int], None]] = None):  # fmt: skip
        """`start_step`: the checkpoint a resumed training goes on from (its logs count on from there).
        `on_eval(step, eval_loss, total_steps)`: told each eval loss; what it raises stops the run (a sweep's
        median rule)."""
        self.line = line or StageLine(say)
        self.say = lambda text: (self.line.clear(), say(text))  # a whole line never lands inside the live one
        self.logging_steps = logging_steps
        self.start_step = start_step
        self.step = start_step
        self.steps_per_epoch: Optional[float] = None
        self.bar_done = 0  # the training bar's count, as last printed
        self.total_steps = 0
        self.in_finetune = False
        self.detail = ""
        self.history: list[dict] = []
        self.last_error = ""
        self.produced_nothing = False
        self.on_eval = on_eval

    def feed(self, line: str) -> None:
        if match := _RUNNING_PASS.search(line):
            self.say(f"- {PASS_LABELS.get(match[1], match[1])} ...")
            self.line.start()
            self.total_steps, self.in_finetune, self.detail = 0, match[1] == "finetune", ""
        elif match := _PASS_DONE.search(line):
            self.say(f"  {PASS_LABELS.get(match[1], match[1])} done in {float(match[2]):.1f}s")
        if match := _PROGRESS.search(line):
            self._bar(match)
        elif match := _READING.match(line):  # ModelBuilder reads the model layer by layer
            self.detail = match[0].lower()
            self.line.update(detail=self.detail)
        if match := _LOG_DICT.search(line):
            self._training_log(match[0])
        if _EXCEPTION.match(line.strip()):
            self.last_error = line.strip()
        elif "[ERROR]" in line and not self.last_error:
            self.last_error = line.strip()
        if NO_OUTPUT in line:
            self.produced_nothing = True

    def _bar(self, match: re.Match) -> None:
        label, done, total = match["label"].strip().rstrip(":"), int(match["done"]), int(match["total"])
        if not self.in_finetune:  # merge, int4 build: whatever bar is running (loading, saving weights)
            self.line.update(done, total, " ".join(label.split()[:1]).lower())
            return
        if label:
            return  # loading weights
        # The first unlabelled bar of the fine-tune pass is training (for its total); eval bars follow.
        self.total_steps = self.total_steps or total
        if total == self.total_steps:
            self.bar_done = done
            self.line.update(done, total, self.detail)

    def _training_log(self, text: str) -> None:
        try:
            entry = {key: _number(value) for key, value in ast.literal_eval(text).items()}
        except (ValueError, SyntaxError):
            return
        if "loss" in entry:
            # The Trainer logs the loss at each step that is a multiple of `logging_steps`; tqdm's text lags.
            self.step = (self.step // self.logging_steps + 1) * self.logging_steps
            self.step = min(self.step, self.total_steps) if self.total_steps else self.step
            if entry.get("epoch", 0) > 0:  # the Trainer's epoch is step / steps per epoch
                self.steps_per_epoch = self.step / entry["epoch"]
        elif "train_runtime" in entry:
            self.step = self.total_steps or self.step
        entry["step"] = self.step
        if "eval_loss" in entry:
            entry["step"] = self._eval_step(entry)
        self.history.append(entry)
        if "loss" in entry:
            self.detail = f"loss {entry['loss']:.4f}"
            self.line.update(self.step, self.total_steps, self.detail)
        elif "eval_loss" in entry:
            self.say(f"  step {entry['step']}/{self.total_steps}  eval loss {entry['eval_loss']:.4f}")
            if self.on_eval is not None and isinstance(entry["eval_loss"], float):
                self.on_eval(entry["step"], entry["eval_loss"], self.total_steps)
        elif "train_runtime" in entry:
            self.say(f"  trained {self.step - self.start_step} steps in {entry['train_runtime']:.1f}s")

    def _eval_step(self, entry: dict) -> int:
        """The step an evaluation ran at. Its log line names only the epoch, and evaluations need not fall on a
        loss log (eval each epoch, or more often than the loss is logged): the epoch times the steps per epoch
        the loss logs show; before the first loss log, the training bar's count."""
        epoch = entry.get("epoch")
        if self.steps_per_epoch and isinstance(epoch, float):
            step = round(epoch * self.steps_per_epoch)
        else:
            step = max(self.bar_done, self.start_step)
        return min(step, self.total_steps) if self.total_steps else step


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def die_with_parent() -> None:
    """In the child: Linux sends it SIGKILL when phi3e2e dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the process group is still stopped on the way out
        pass


def stop_process_group(process: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM Olive's whole process group, then SIGKILL what is left after `grace_s`."""
    import signal

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            process.wait(timeout=wait_s)
            os.killpg(process.pid, signal.SIGKILL)  # children that outlived their parent
        except subprocess.TimeoutExpired:
            continue
        except (ProcessLookupError, PermissionError):
            pass
        break


def run_olive(config_file: Path, log_file: Path, say: Callable[[str], None], verbose: bool = False,
              start_step: int = 0, on_eval: Optional[Callable[[int, float, int], None]] = None) -> list[dict]:  # fmt: skip
    """Run Olive to completion; return the training-loss history (steps counted on from `start_step`, where a
    resumed training goes on). Raises UserError on failure. `on_eval`: see ProgressReader."""
    # `olive run`, with ModelBuilder's int4 step made lean enough for Phi-3-mini in 24 GB (build/lean_int4.py)
    command = [sys.executable, "-m", "phi3e2e.build.lean_int4", "run", "--config", str(config_file)]
    finetune_pass = json.loads(config_file.read_text())["passes"].get("finetune", {})
    # On a terminal the stage's line updates in place; with --verbose Olive's own output is the progress.
    live = sys.stdout if sys.stdout.isatty() and not verbose else None
    logging_steps = finetune_pass.get("training_args", {}).get("logging_steps", 1)
    reader = ProgressReader(say, logging_steps, StageLine(say, live), start_step=start_step, on_eval=on_eval)
    with open(log_file, "w", encoding="utf-8") as log:
        # Its own process group, so stopping the run stops Olive's children too; and it dies with us
        # even when we are killed with SIGKILL (no cleanup runs then), never writing on unowned.
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=olive_env(), cwd=config_file.parent,
            start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip
        try:
            buffer = ""
            while chunk := process.stdout.read1(65536):
                text = chunk.decode("utf-8", errors="replace")
                log.write(text)
                log.flush()
                if verbose:
                    try:
                        sys.stdout.write(text)
                    except (BrokenPipeError, ValueError):  # stdout closed: the log still has it all
                        verbose = False
                buffer += text
                *lines, buffer = re.split(r"[\r\n]", buffer)
                for line in lines:
                    reader.feed(line)
            reader.feed(buffer)
            returncode = process.wait()
        except BaseException:
            reader.line.clear()  # the error that follows gets a line of its own
            stop_process_group(process)
            raise
    # Olive exits 0 after a failed pass, logging only "No output model produced".
    if returncode != 0 or reader.produced_nothing:
        detail = reader.last_error or (NO_OUTPUT if returncode == 0 else f"exit code {returncode}")
        raise UserError(f"olive run failed: {detail[:300]} (full log: {log_file})")
    return reader.history

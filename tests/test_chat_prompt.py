"""User story: at the chat prompt, keys and commands work as in other chat tools, and temperature means one
thing everywhere (0 greedy, above 0 samples, a seed repeats a sampled answer).

The interactive tests drive the real `phi3e2e chat` through a pseudo-terminal, as a person at a terminal
would (readline is only used there), on the tiny model of the `finished_run` fixture.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time

import pytest
from helpers import run_cli

from phi3e2e.cli.chat_prompt import command
from phi3e2e.errors import UserError
from phi3e2e.infer.chat import ChatSession, GenerationOptions

UP = b"\x1b[A"
CTRL_C, CTRL_D = b"\x03", b"\x04"


class Terminal:
    """`phi3e2e chat` with a pseudo-terminal as its controlling terminal (so Ctrl-C is a real SIGINT)."""

    def __init__(self, project_dir, *args: str):
        master, slave = pty.openpty()

        def own_terminal():
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell's background job starts with Ctrl-C ignored

        env = dict(os.environ, PHI3E2E_PROJECT_DIR=str(project_dir), TERM="xterm")
        self.process = subprocess.Popen([sys.executable, "-m", "phi3e2e", "chat", *args], stdin=slave, stdout=slave,
                                        stderr=slave, env=env, preexec_fn=own_terminal)  # fmt: skip
        os.close(slave)
        self.master, self.output = master, b""
        self.wait_for_prompts(1)

    def wait_for_prompts(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.output.count(b"you> ") < count:
            assert time.monotonic() < deadline, f"no prompt #{count} in:\n{self.text}"
            if select.select([self.master], [], [], 0.2)[0]:
                try:
                    self.output += os.read(self.master, 4096)
                except OSError:  # the chat ended
                    raise AssertionError(f"the chat ended early:\n{self.text}") from None

    def type(self, keys: bytes) -> None:
        """Keys, then wait for the next prompt."""
        prompts = self.output.count(b"you> ")
        os.write(self.master, keys)
        self.wait_for_prompts(prompts + 1)

    def wait_for_echo(self, text: bytes, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.output.endswith(text):
            assert time.monotonic() < deadline, f"{text!r} not echoed in:\n{self.text}"
            if select.select([self.master], [], [], 0.2)[0]:
                self.output += os.read(self.master, 4096)

    def leave(self) -> int:
        os.write(self.master, CTRL_D)
        code = self.process.wait(timeout=60)
        while select.select([self.master], [], [], 0.2)[0]:
            try:
                self.output += os.read(self.master, 4096)
            except OSError:
                break
        os.close(self.master)
        return code

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")


def test_keys_and_commands_at_the_prompt(finished_run, tmp_path):
    _, run_dir = finished_run
    model = str(run_dir / "onnx-int4")
    chat = Terminal(tmp_path, "--model", model, "--max-length", "4")
    chat.type(b"/help\r")
    chat.type(UP + b"\r")  # line editing: Up-arrow brings /help back
    assert chat.text.count("/clear                 a new conversation") == 2 and "^[[A" not in chat.text
    chat.type(b"/bogus\r")
    assert "error: unknown command /bogus (/help lists them" in chat.text
    assert "phi3> " not in chat.text  # no command reached the model
    os.write(chat.master, b"half a question")
    chat.wait_for_echo(b"half a question")  # readline has the line
    # ... and waits for more keys: CPython's readline loop misses a SIGINT that lands between its echo and its
    # select() until the next key, a microsecond window at human speed but not when a test types at once.
    time.sleep(0.5)
    chat.type(CTRL_C)  # Ctrl-C at the prompt drops the line and says how to leave
    assert "(Ctrl-D or /exit leaves)" in chat.text
    chat.type(b"/set temperature 0.5\r")
    chat.type(b"/set\r")
    assert "temperature=0.5" in chat.text and "max_length=4" in chat.text
    chat.type(b"/set top_p 7\r")
    assert "error: /set top_p 7: top_p takes a number above 0, at most 1" in chat.text
    chat.type(b"Do you ship to Canada?\r")
    assert chat.text.count("phi3> ") == 1
    assert chat.leave() == 0, chat.text

    history = tmp_path / "gen-model" / ".chat-history"
    lines = history.read_text().splitlines()
    kept = [line for i, line in enumerate(lines) if i == 0 or line != lines[i - 1]]  # a recalled line may repeat
    assert kept == ["/help", "/bogus", "/set temperature 0.5", "/set", "/set top_p 7", "Do you ship to Canada?"]
    assert history.stat().st_mode & 0o077 == 0  # questions can be private
    again = Terminal(tmp_path, "--model", model, "--max-length", "4")
    again.type(UP + b"\r")  # history is kept per project, across chats
    assert again.text.count("phi3> ") == 1
    assert again.leave() == 0, again.text
    assert history.read_text().splitlines()[-1] == "Do you ship to Canada?"


def test_slash_commands_change_the_conversation_and_refuse_bad_values(finished_run):
    _, run_dir = finished_run
    session = ChatSession(run_dir / "onnx-int4", GenerationOptions(max_new_tokens=4, min_new_tokens=4))
    session.ask("Hello")
    assert session.turns
    assert command(session, "/clear") == "(a new conversation)" and session.turns == []
    command(session, "/system Answer in one sentence.")
    assert session.system == "Answer in one sentence." and "one sentence" in command(session, "/system")
    command(session, "/system off")
    assert session.system is None
    command(session, "/set seed 7")
    command(session, "/set max_length 9")
    assert (session.options.seed, session.options.max_new_tokens) == (7, 9)
    for bad in ("/set temperature -1", "/set top_k 0", "/set seed x", "/set min_length 20", "/set colour 1",
                "/set temperature", "/wat"):  # fmt: skip
        with pytest.raises(UserError):
            command(session, bad)
    assert (session.options.seed, session.options.max_new_tokens, session.options.min_new_tokens) == (7, 9, 4)


def test_temperature_zero_is_greedy_and_above_zero_samples():
    assert not GenerationOptions().do_sample and not GenerationOptions(temperature=0).do_sample
    assert GenerationOptions(temperature=0.7).do_sample


@pytest.mark.parametrize("form", ["onnx-int4", "merged"])
def test_a_seed_repeats_a_sampled_chat_answer(finished_run, form):
    """onnxruntime-genai (int4) and transformers (merged) both take the seed."""
    _, run_dir = finished_run
    options = GenerationOptions(max_new_tokens=12, min_new_tokens=12, temperature=1.0, top_p=0.95, seed=5)
    answers = [ChatSession(run_dir / form, options).ask("Do you ship to Canada?").text for _ in range(2)]
    assert answers[0] and answers[0] == answers[1]


def test_do_sample_is_deprecated_with_a_note_and_still_samples(finished_run):
    project, run_dir = finished_run
    args = ("chat", "--model", str(run_dir / "onnx-int4"), "--json", "--max-length", "6", "--min-length", "6",
            "--prompt", "Do you ship to Canada?", "--seed", "3")  # fmt: skip
    old = run_cli(*args, "--do-sample", project=project)
    new = run_cli(*args, "--temperature", "1", project=project)
    assert old.returncode == 0 and new.returncode == 0, old.stderr + new.stderr
    assert "--do-sample is no longer needed: --temperature above 0 samples" in old.stderr
    assert json.loads(old.stdout)["text"] == json.loads(new.stdout)["text"]  # the same seed, the same sampling
    assert "--do-sample" not in run_cli("chat", "--help").stdout

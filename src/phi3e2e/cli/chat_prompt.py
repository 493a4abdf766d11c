"""The chat prompt people are used to: line editing and history (GNU readline, kept per project)
and slash commands, as in ollama's and llama.cpp's prompts."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from phi3e2e.errors import UserError

HISTORY_LINES = 1000
COMMANDS = """\
/help                  this list
/clear                 a new conversation (the model forgets the turns so far)
/system [TEXT | off]   show, set or remove the system prompt
/set [NAME VALUE]      show the answer settings, or change one: temperature (0 = greedy, above 0 samples),
                       top_p, top_k, max_length, min_length, seed (or none)
/exit, /bye            leave (so does Ctrl-D); Ctrl-C stops an answer
//TEXT                 ask a question that begins with "/"
"""
LEAVE = ("/exit", "/bye", "/quit")
LEAVE_HINT = "(Ctrl-D or /exit leaves)"

# /set NAME -> (GenerationOptions field, how to read the value, its check, what the check wants)
SETTINGS: dict[str, tuple[str, Callable[[str], object], Callable[[object], bool], str]] = {
    "temperature": ("temperature", float, lambda v: v >= 0, "a number, 0 or more"),
    "top_p": ("top_p", float, lambda v: 0 < v <= 1, "a number above 0, at most 1"),
    "top_k": ("top_k", int, lambda v: v >= 1, "a whole number, 1 or more"),
    "max_length": ("max_new_tokens", int, lambda v: v >= 1, "a whole number, 1 or more"),
    "min_length": ("min_new_tokens", int, lambda v: v >= 0, "a whole number, 0 or more"),
    "seed": ("seed", lambda text: None if text == "none" else int(text), lambda v: v is None or v >= 0,
             "a whole number, 0 or more, or none"),
}


def _say(text: str) -> None:
    typer.echo(text, err=True)


class LineReader:
    """input() with readline's editing and a history file, when a person is at a terminal."""

    def __init__(self, history: Optional[Path]):
        self.history = history
        self.readline = None
        self.loaded = 0
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            return  # piped questions: plain input(), no history
        try:
            import readline
        except ImportError:  # a Python built without it: plain input()
            return
        self.readline = readline
        if history is not None and history.is_file():
            try:
                readline.read_history_file(history)
            except OSError:
                pass  # unreadable history is no reason not to chat
        self.loaded = readline.get_current_history_length()

    def read(self, prompt: str) -> str:
        return input(prompt)

    def save(self) -> None:
        """Append this session's lines, so two chats at once both keep theirs; trim an overgrown file."""
        if self.readline is None or self.history is None:
            return
        added = self.readline.get_current_history_length() - self.loaded
        if added <= 0:
            return
        try:
            self.history.parent.mkdir(parents=True, exist_ok=True)
            self.history.touch(mode=0o600, exist_ok=True)  # questions can be private
            self.readline.append_history_file(added, self.history)
            if self.readline.get_current_history_length() > 2 * HISTORY_LINES:
                self.readline.set_history_length(HISTORY_LINES)
                self.readline.write_history_file(self.history)
        except OSError as e:  # a read-only or full disk: the chat itself went fine
            _say(f"note: chat history not saved to {self.history}: {e.strerror}")


def talk(session, ask: Callable[[str], None], reader: LineReader) -> bool:
    """The conversation at the prompt until /exit or Ctrl-D; a refused question or a bad command is said and
    the talk goes on. `ask` prints the answer to one question."""
    try:
        while True:
            try:
                line = reader.read("you> ")
            except EOFError:
                _say("")
                return False
            except KeyboardInterrupt:  # at the prompt: drop the line, as a shell does, and say how to leave
                _say("\n" + LEAVE_HINT)
                continue
            text = line.strip()
            if not text:
                continue
            try:
                if text.startswith("/") and not text.startswith("//"):
                    if text.split()[0] in LEAVE:
                        return False
                    _say(command(session, text))
                    continue
                sys.stdout.write("phi3> ")
                ask(line.strip()[1:] if text.startswith("//") else line)
            except UserError as e:  # e.g. a prompt longer than the context, a bad /set value
                _say(f"error: {e}")
    finally:
        reader.save()


def command(session, text: str) -> str:
    """Carry out one slash command (not /exit); what to tell the user. A bad one raises UserError."""
    name, _, rest = text.partition(" ")
    rest = rest.strip()
    if name == "/help":
        return COMMANDS.rstrip()
    if name == "/clear":
        session.new_conversation()
        return "(a new conversation)"
    if name == "/system":
        if not rest and session.system:
            return f"system prompt: {session.system!r}"
        if not rest:
            return "(no system prompt: /system TEXT sets one)"
        session.system = None if rest == "off" else rest
        return "(system prompt removed)" if session.system is None else "(system prompt set)"
    if name == "/set":
        return set_option(session, rest)
    raise UserError(f"unknown command {name} (/help lists them; //{name[1:]} asks it as a question)")


def set_option(session, rest: str) -> str:
    options = session.options
    words = rest.split()
    if not words:
        shown = {name: getattr(options, field) for name, (field, *_) in SETTINGS.items()}
        return "  ".join(f"{name}={'none' if value is None else value}" for name, value in shown.items())
    if len(words) != 2 or words[0] not in SETTINGS:
        raise UserError(f"/set {rest}: use /set NAME VALUE, NAME one of {', '.join(SETTINGS)}")
    name, raw = words
    field, read, check, wanted = SETTINGS[name]
    try:
        value = read(raw)
    except ValueError:
        value = ValueError
    if value is ValueError or not check(value):
        raise UserError(f"/set {name} {raw}: {name} takes {wanted}")
    changed = dataclasses.replace(options, **{field: value})
    if changed.min_new_tokens > changed.max_new_tokens:
        raise UserError(f"/set {name} {raw}: min_length {changed.min_new_tokens} would be more than "
                        f"max_length {changed.max_new_tokens}")  # fmt: skip
    session.options = changed
    return f"({name} = {raw})"

"""The chat format, written once: prompts for chat and eval, training text, templates.

ChatFormat renders through a model's own tokenizer chat template (Phi-3.5, Phi-3-medium and
Phi-4-mini differ from Phi-3-mini); the plain functions below are Phi-3's format, the fallback.

As Phi-3-mini-4k-instruct's tokenizer chat template writes it: each turn is
"<|role|>\\n{content}<|end|>\\n", and a prompt ends with "<|assistant|>\\n" where the answer starts.
"""

from __future__ import annotations

import functools
from typing import Optional

END = "<|end|>"
END_OF_TEXT = "<|endoftext|>"
ROLE_TAGS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS = [END_OF_TEXT, *ROLE_TAGS.values(), END]
ANSWER_START = ROLE_TAGS["assistant"] + "\n"

# The recipe's training text: one Q&A row as a user turn and the assistant's answer.
RECIPE_TEXT_TEMPLATE = f"{ROLE_TAGS['user']}\n{{Question}}{END}\n{ANSWER_START}{{Best Answer}}\n{END}"

# The same format as Phi-3-mini-4k-instruct's tokenizer chat template (the tiny model carries it).
TOKENIZER_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


def turn(role: str, content: str) -> str:
    return f"{ROLE_TAGS[role]}\n{content}{END}\n"


def render_chat(messages: list[tuple[str, str]]) -> str:
    """(role, content) pairs as one training text."""
    return "".join(turn(role, content) for role, content in messages)


def chat_prompt(turns: list[tuple[str, str]], user: str, system: Optional[str] = None) -> str:
    """A conversation so far plus the user's new message, ending where the assistant's answer starts."""
    parts = [turn("system", system)] if system else []
    for past_user, past_answer in turns:
        parts += [turn("user", past_user), turn("assistant", past_answer)]
    parts.append(turn("user", user) + ANSWER_START)
    return "".join(parts)


def messages_prompt(messages: list[tuple[str, str]]) -> str:
    """A whole conversation of (role, content) turns, ending where the assistant's answer starts.

    For callers that get the history as one list (the OpenAI-style server); same text as chat_prompt.
    """
    return render_chat(messages) + ANSWER_START


def split_prompt(text: str) -> tuple[str, str]:
    """A rendered conversation -> (prompt up to the last assistant turn, that turn's answer)."""
    cut = text.rfind(ANSWER_START)
    if cut < 0:
        return text, ""
    prompt, answer = text[: cut + len(ANSWER_START)], text[cut + len(ANSWER_START) :]
    return prompt, answer.replace(END, "").strip()


def last_user_turn(prompt: str) -> str:
    start = prompt.rfind(ROLE_TAGS["user"] + "\n")
    if start < 0:
        return prompt.strip()
    return prompt[start + len(ROLE_TAGS["user"]) + 1 :].split(END, 1)[0].strip()


class ChatFormat:
    """A model's chat format, rendered through its own tokenizer chat template (Jinja).

    Built from the template string found in the model folder (chat_template.jinja or
    tokenizer_config.json); with none, the plain Phi-3 functions above. The markers that cut a
    rendered conversation apart (where an answer starts, where a turn ends) are found by rendering
    marker contents once, so any template that renders user/assistant turns works.
    bos/eos are rendered empty: the tokenizer (chat) and Olive (training, "{bos} {text} {eos}") add them.
    """

    def __init__(self, template: Optional[str] = None):
        self.template = template

    @classmethod
    def of_folder(cls, *folders) -> "ChatFormat":
        """The chat template saved with the first of `folders` that has one (a model, adapter or int4 folder)."""
        import json
        from pathlib import Path

        for folder in folders:
            if folder is None:
                continue
            jinja_file, config_file = Path(folder) / "chat_template.jinja", Path(folder) / "tokenizer_config.json"
            if jinja_file.is_file():
                return cls(jinja_file.read_text(encoding="utf-8"))
            if config_file.is_file():
                try:
                    template = json.loads(config_file.read_text(encoding="utf-8")).get("chat_template")
                except ValueError:
                    template = None
                if isinstance(template, list):  # named templates: the default one
                    template = next((t["template"] for t in template if t.get("name") == "default"), None)
                if template:
                    return cls(template)
        return cls()

    @classmethod
    def of_tokenizer(cls, tokenizer) -> "ChatFormat":
        template = getattr(tokenizer, "chat_template", None)
        return cls(template if isinstance(template, str) else None)

    @property
    def is_phi3(self) -> bool:
        """Renders exactly as Phi-3-mini's template (the plain functions): the recipe's text applies as is."""
        if self.template is None:
            return True
        probe = [("system", "S"), ("user", "U"), ("assistant", "A"), ("user", "V")]
        return self.render(probe, True) == messages_prompt(probe) and self.render(probe[:3]) == render_chat(probe[:3])

    def render(self, messages: list[tuple[str, str]], add_generation_prompt: bool = False) -> str:
        if self.template is None:
            return messages_prompt(messages) if add_generation_prompt else render_chat(messages)
        return _compiled(self.template).render(
            messages=[{"role": role, "content": content} for role, content in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token="",
            eos_token="",
        )

    def conversation_text(self, messages: list[tuple[str, str]]) -> str:
        """A whole conversation as one training text (render_chat's counterpart)."""
        return self.render(messages)

    def prompt(self, turns: list[tuple[str, str]], user: str, system: Optional[str] = None) -> str:
        """chat_prompt's counterpart: the conversation so far plus the user's message, up to the answer."""
        messages = [("system", system)] if system else []
        for past_user, past_answer in turns:
            messages += [("user", past_user), ("assistant", past_answer)]
        return self.render([*messages, ("user", user)], add_generation_prompt=True)

    def messages_prompt(self, messages: list[tuple[str, str]]) -> str:
        return self.render(messages, add_generation_prompt=True)

    def qa_text_template(self) -> str:
        """The training text of a Q&A row ({Question}, {Best Answer}) in this format.

        Phi-3-format models keep the recipe's exact text (RECIPE_TEXT_TEMPLATE)."""
        if self.is_phi3:
            return RECIPE_TEXT_TEMPLATE
        text = self.render([("user", _USER), ("assistant", _ANSWER)]).replace("{", "{{").replace("}", "}}")
        return text.replace(_USER, "{Question}").replace(_ANSWER, "{Best Answer}")

    def split_prompt(self, text: str) -> tuple[str, str]:
        """split_prompt's counterpart: (prompt up to the last answer, that answer without its end marker)."""
        if self.template is None:
            return split_prompt(text)
        answer_start, turn_end = self._markers()
        cut = text.rfind(answer_start)
        if cut < 0:
            return text, ""
        prompt, answer = text[: cut + len(answer_start)], text[cut + len(answer_start) :]
        return prompt, answer.replace(turn_end, "").strip()

    def last_user_turn(self, prompt: str) -> str:
        if self.template is None:
            return last_user_turn(prompt)
        user_start = self.render([("user", _USER)]).split(_USER, 1)[0]
        _, turn_end = self._markers()
        start = prompt.rfind(user_start) if user_start else -1
        if start < 0:
            return prompt.strip()
        return prompt[start + len(user_start) :].split(turn_end, 1)[0].strip()

    def _markers(self) -> tuple[str, str]:
        """(what comes between a user's message and the answer, the marker that ends a turn)."""
        text = self.render([("user", _USER), ("assistant", _ANSWER)])
        answer_start = text.split(_USER, 1)[1].split(_ANSWER, 1)[0]
        after_answer = text.split(_ANSWER, 1)[1]
        turn_end = after_answer.strip() or answer_start.strip().split()[0]
        return answer_start, turn_end


_USER, _ANSWER = "\x01USER\x01", "\x01ANSWER\x01"


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
    """The template compiled as transformers' apply_chat_template does (sandboxed, trimmed blocks)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)

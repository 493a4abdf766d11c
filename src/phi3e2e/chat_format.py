"""The Phi-3 chat format, written once: prompts for chat and eval, training text, templates.

As Phi-3-mini-4k-instruct's tokenizer chat template writes it: each turn is
"<|role|>\\n{content}<|end|>\\n", and a prompt ends with "<|assistant|>\\n" where the answer starts.
"""

from __future__ import annotations

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

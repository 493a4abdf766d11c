"""A dataset row as the fine-tune sees it: the rendered text and its tokens.

Olive's text data (strategy line-by-line, add_special_tokens) formats each row with
`text_template.format(**row)`, wraps it as "{bos} {text} {eos}", tokenizes without adding
special tokens again and truncates to max_length. Import statistics and eval losses count
tokens the same way, so their numbers match what training used.
"""

from __future__ import annotations

from pathlib import Path

# The Phi-3 chat format (as Phi-3-mini-4k-instruct's chat template writes it).
ROLE_TAGS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
ANSWER_START = "<|assistant|>\n"


def render(text_template: str, row: dict) -> str:
    return text_template.format(**row)


def render_chat(messages: list[tuple[str, str]]) -> str:
    return "".join(f"{ROLE_TAGS[role]}\n{content}<|end|>\n" for role, content in messages)


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def training_token_ids(tokenizer, text: str, max_length: int | None = None) -> list[int]:
    wrapped = f"{tokenizer.bos_token} {text} {tokenizer.eos_token}" if tokenizer.bos_token else text
    ids = tokenizer(wrapped, add_special_tokens=False)["input_ids"]
    return ids[:max_length] if max_length else ids


def split_prompt(text: str) -> tuple[str, str]:
    """A rendered conversation -> (prompt up to the last assistant turn, that turn's answer)."""
    cut = text.rfind(ANSWER_START)
    if cut < 0:
        return text, ""
    prompt, answer = text[: cut + len(ANSWER_START)], text[cut + len(ANSWER_START) :]
    return prompt, answer.replace("<|end|>", "").strip()


def last_user_turn(prompt: str) -> str:
    start = prompt.rfind(ROLE_TAGS["user"] + "\n")
    if start < 0:
        return prompt.strip()
    return prompt[start + len(ROLE_TAGS["user"]) + 1 :].split("<|end|>", 1)[0].strip()

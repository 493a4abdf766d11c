"""A dataset row as the fine-tune sees it: the rendered text and its tokens.

Olive's text data (strategy line-by-line, add_special_tokens) formats each row with
`text_template.format(**row)`, wraps it as "{bos} {text} {eos}", tokenizes without adding
special tokens again and truncates to max_length. Import statistics and eval losses count
tokens the same way, so their numbers match what training used.
"""

from __future__ import annotations

from pathlib import Path


def render(text_template: str, row: dict) -> str:
    return text_template.format(**row)


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def training_token_ids(tokenizer, text: str, max_length: int | None = None) -> list[int]:
    wrapped = f"{tokenizer.bos_token} {text} {tokenizer.eos_token}" if tokenizer.bos_token else text
    ids = tokenizer(wrapped, add_special_tokens=False)["input_ids"]
    return ids[:max_length] if max_length else ids

"""The held-out rows of a run's dataset, tokenized exactly as the fine-tune saw them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from phi3e2e.errors import UserError
from phi3e2e.workflow.settings import DataSettings


@dataclass
class EvalRows:
    rows: list[dict]
    token_ids: list[list[int]]
    prompts: list[tuple[str, str, str]]  # (question, full prompt text, reference answer) for the samples


def load_eval_rows(dataset_dir: Path, base_model: Path, data_settings: DataSettings, max_rows: Optional[int]) -> EvalRows:
    from phi3e2e.chat_format import ChatFormat
    from phi3e2e.workflow.training_text import load_tokenizer, render, training_token_ids

    eval_file = dataset_dir / "eval.jsonl"
    if not eval_file.is_file() or eval_file.stat().st_size == 0:
        raise UserError(
            f"{eval_file}: no eval split to measure on; import the data with `phi3e2e prepare --data FILE --eval-split 0.1`"
        )
    with open(eval_file, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = rows[:max_rows] if max_rows else rows
    template = data_settings.text_template
    tokenizer = load_tokenizer(base_model)
    chat_format = ChatFormat.of_tokenizer(tokenizer)  # the prompts as the model's chat template writes them
    token_ids, prompts = [], []
    for lineno, row in enumerate(rows, 1):
        try:
            text = render(template, row)
        except KeyError as e:
            raise UserError(f"{eval_file}:{lineno}: the run's text template needs column {e}") from None
        token_ids.append(training_token_ids(tokenizer, text, data_settings.max_length))
        if "Question" in row and "Best Answer" in row:
            question = str(row["Question"])
            prompts.append((question, chat_format.prompt([], question), str(row["Best Answer"])))
        else:
            prompt, reference = chat_format.split_prompt(text)
            prompts.append((chat_format.last_user_turn(prompt), prompt, reference))
    return EvalRows(rows, token_ids, prompts)

"""Import a user's data file into datasets/<name>/: train.jsonl, eval.jsonl and summary.json.

Two steps, so that `prepare` can check the data before it fetches a model and count tokens
with that model's tokenizer afterwards:

  load_dataset()   read + validate + clean, in memory (any error: nothing written)
  write_dataset()  token statistics, drop too-long rows, seeded split, then write
                   beside the target and rename last (no half dataset is ever left)

Record shapes: Q&A columns, Alpaca instruction/input/output, and chat `messages`. Q&A-like
data is stored as {"Question", "Best Answer"} rows for the recipe's text template; chats
with a system prompt or several turns are stored rendered in the model's chat format (Phi-3's
until `prepare` knows the model: LoadedDataset.in_format) as a "text" column, with text
template "{text}".
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from phi3e2e.chat_format import RECIPE_TEXT_TEMPLATE, ROLE_TAGS, ChatFormat, render_chat
from phi3e2e.errors import UserError
from phi3e2e.prepare.data_formats import RawFile, Record, read_data_file
from phi3e2e.runs.locks import process_alive
from phi3e2e.storage import staged_dir
from phi3e2e.workflow.training_text import render

CHAT_TEXT_TEMPLATE = "{text}"
QUESTION, ANSWER, TEXT = "Question", "Best Answer", "text"
# Q&A column pairs recognised without options (matched case-insensitively), the recipe's first.
QA_PAIRS = [("Question", "Best Answer"), ("question", "answer"), ("prompt", "response"), ("prompt", "completion")]
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant"}
EMPTY_QUESTION, EMPTY_ANSWER, DUPLICATE, TOO_LONG = "empty question", "empty answer", "duplicate", "too long"
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")  # \Z: "$" would let a trailing newline in


@dataclass
class LoadedDataset:
    """Clean rows in memory, not yet written."""

    source: Path
    format: str
    shape: str  # "qa", "alpaca" or "chat"
    fields: dict  # which input fields the rows came from
    text_template: str
    rows: list[dict]
    wheres: list[str]  # where each row came from (line/record)
    rows_read: int
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> where (line/record)
    conversations: list[list[tuple[str, str]]] = field(default_factory=list)  # each row's turns

    def rendered(self) -> list[str]:
        return [render(self.text_template, row) for row in self.rows]

    def in_format(self, chat_format: ChatFormat) -> "LoadedDataset":
        """The rows as the model's chat format writes them: Q&A rows by its Q&A text template, chats re-rendered."""
        if self.text_template == RECIPE_TEXT_TEMPLATE:
            return replace(self, text_template=chat_format.qa_text_template())
        return replace(self, rows=[{TEXT: chat_format.conversation_text(turns)} for turns in self.conversations])


@dataclass
class ImportResult:
    dataset_dir: Path
    summary: dict


def load_dataset(
    source: Path,
    *,
    fmt: Optional[str] = None,
    encoding: Optional[str] = None,
    question_col: Optional[str] = None,
    answer_col: Optional[str] = None,
) -> LoadedDataset:
    source = Path(source)
    raw = read_data_file(source, fmt, encoding)
    shape, fields = _detect_shape(source, raw, question_col, answer_col)
    dropped: dict[str, list[str]] = {}
    pairs: list[tuple[Record, list[tuple[str, str]]]] = []
    for record in raw.records:
        messages = _conversation(source, record, shape, fields)
        reason = _empty_reason(messages)
        if reason:
            dropped.setdefault(reason, []).append(record.where)
        else:
            pairs.append((record, messages))

    # Plain question -> answer data keeps the recipe's columns; anything richer is rendered text.
    single_turn = all(len(m) == 2 and m[0][0] == "user" for _, m in pairs)
    template = RECIPE_TEXT_TEMPLATE if single_turn else CHAT_TEXT_TEMPLATE
    rows, wheres, conversations, seen = [], [], [], set()
    for record, messages in pairs:
        row = {QUESTION: messages[0][1], ANSWER: messages[1][1]} if single_turn else {TEXT: render_chat(messages)}
        key = tuple(row.values())
        if key in seen:
            dropped.setdefault(DUPLICATE, []).append(record.where)
            continue
        seen.add(key)
        rows.append(row)
        wheres.append(record.where)
        conversations.append(messages)
    return LoadedDataset(
        source, raw.format, shape, fields, template, rows, wheres, len(raw.records), dropped, conversations
    )


def _detect_shape(
    source: Path, raw: RawFile, question_col: Optional[str], answer_col: Optional[str]
) -> tuple[str, dict]:
    by_lower = {}
    for column in raw.columns:
        by_lower.setdefault(str(column).lower(), column)
    found = ", ".join(map(repr, raw.columns))
    if question_col or answer_col:
        wanted = {"question": question_col or QUESTION, "answer": answer_col or ANSWER}
        missing = [name for name in wanted.values() if name not in raw.columns]
        if missing:
            raise UserError(
                f"{source}: missing column(s) {', '.join(map(repr, missing))}; found: {found}; "
                f"needed: {wanted['question']!r} and {wanted['answer']!r} (from --question-col/--answer-col)"
            )
        return "qa", wanted
    if "messages" in by_lower:
        return "chat", {"messages": by_lower["messages"]}
    if "instruction" in by_lower and "output" in by_lower:
        return "alpaca", {key: by_lower[key] for key in ("instruction", "input", "output") if key in by_lower}
    for question, answer in QA_PAIRS:
        if question.lower() in by_lower and answer.lower() in by_lower:
            return "qa", {"question": by_lower[question.lower()], "answer": by_lower[answer.lower()]}
    raise UserError(
        f"{source}: missing required columns; found: {found}; needed: 'Question' and 'Best Answer' "
        "(or name yours with --question-col/--answer-col), 'instruction' and 'output' (Alpaca), or 'messages' (chat)"
    )


def _conversation(source: Path, record: Record, shape: str, fields: dict) -> list[tuple[str, str]]:
    """Any record shape -> [(role, content), ...] in the Phi-3 chat roles."""
    if shape == "qa":
        return [
            ("user", _text(source, record, fields["question"])),
            ("assistant", _text(source, record, fields["answer"])),
        ]
    if shape == "alpaca":
        instruction = _text(source, record, fields["instruction"])
        extra = _text(source, record, fields["input"], required=False) if "input" in fields else ""
        prompt = f"{instruction}\n\n{extra}" if instruction and extra else instruction or extra
        return [("user", prompt), ("assistant", _text(source, record, fields["output"]))]
    return _chat_messages(source, record, fields["messages"])


def _text(source: Path, record: Record, column: str, required: bool = True) -> str:
    if column not in record.values:
        if not required:
            return ""
        found = ", ".join(map(repr, record.values))
        raise UserError(f"{source} {record.where}: missing column {column!r}; found: {found}")
    value = record.values[column]
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise UserError(f"{source} {record.where}: {column!r} should be text, found a JSON {type(value).__name__}")
    return str(value).strip()


def _chat_messages(source: Path, record: Record, column: str) -> list[tuple[str, str]]:
    messages = record.values.get(column)
    if not isinstance(messages, list):
        raise UserError(f"{source} {record.where}: {column!r} should be a list of {{role, content}} messages")
    conversation = []
    for i, message in enumerate(messages):
        at = f"{source} {record.where}: {column}[{i}]"
        if not isinstance(message, dict):
            raise UserError(f"{at} should be an object with 'role' and 'content'")
        role = message.get("role", message.get("from"))
        role = SHAREGPT_ROLES.get(role, role)
        if role not in ROLE_TAGS:
            raise UserError(f"{at}: role {role!r}; expected one of {', '.join(ROLE_TAGS)}")
        content = message.get("content", message.get("value"))
        if content is not None and not isinstance(content, str):
            raise UserError(f"{at}: content should be text, found a JSON {type(content).__name__}")
        conversation.append((role, (content or "").strip()))
    while conversation and conversation[-1][0] != "assistant":
        conversation.pop()  # turns after the last answer teach nothing
    return conversation


def _empty_reason(messages: list[tuple[str, str]]) -> Optional[str]:
    answers = [content for role, content in messages if role == "assistant"]
    if not answers or not answers[-1]:
        return EMPTY_ANSWER
    if not any(content for role, content in messages if role == "user"):
        return EMPTY_QUESTION
    return None


def write_dataset(
    loaded: LoadedDataset,
    datasets_dir: Path,
    name: str,
    *,
    tokenizer=None,
    max_length: Optional[int] = None,
    eval_split: float = 0.1,
    seed: int = 42,
    say: Callable[[str], None] = lambda _: None,
) -> ImportResult:
    """Count tokens, drop rows above max_length, split with `seed`, write and rename last."""
    check_name(name)
    if not 0 <= eval_split < 1:
        raise UserError(f"--eval-split {eval_split}: use a fraction from 0 to below 1, e.g. 0.1")
    rows = list(loaded.rows)
    dropped = {reason: list(wheres) for reason, wheres in loaded.dropped.items()}
    tokens = None
    if tokenizer is not None and rows:
        say(f"Counting tokens of {len(rows)} rows with the model's tokenizer ...")
        tokens, too_long = _token_stats(tokenizer, loaded.rendered(), max_length)
        if too_long:
            dropped[TOO_LONG] = [loaded.wheres[i] for i in too_long]
            skip = set(too_long)
            rows = [row for i, row in enumerate(rows) if i not in skip]
    if not rows:
        reasons = ", ".join(f"{len(w)} {reason}" for reason, w in dropped.items()) or "none read"
        raise UserError(f"{loaded.source}: no usable rows left ({reasons})")

    random.Random(seed).shuffle(rows)
    n_eval = round(len(rows) * eval_split)
    if eval_split > 0 and len(rows) > 1:
        n_eval = min(max(n_eval, 1), len(rows) - 1)
    splits = {"train": rows[n_eval:], "eval": rows[:n_eval]}
    summary = {
        "source": str(loaded.source),
        "format": loaded.format,
        "shape": loaded.shape,
        "fields": loaded.fields,
        "rows_read": loaded.rows_read,
        "rows_kept": len(rows),
        "rows_dropped": {reason: len(wheres) for reason, wheres in dropped.items()},
        # The first few places per reason, so the user can look them up in their file.
        "dropped_where": {reason: wheres[:5] for reason, wheres in dropped.items()},
        "train_rows": len(splits["train"]),
        "eval_rows": len(splits["eval"]),
        "eval_split": eval_split,
        "seed": seed,
        "text_template": loaded.text_template,
        "tokens": tokens,
        "samples": [render(loaded.text_template, row) for row in splits["train"][:2]],
    }
    dataset_dir = datasets_dir / name
    if dataset_dir.exists() and not dataset_dir.is_dir():
        raise UserError(f"--name {name}: {dataset_dir} is a file, not a dataset folder; choose another --name")
    try:
        datasets_dir.mkdir(parents=True, exist_ok=True)
        remove_abandoned_imports(datasets_dir)
        with staged_dir(dataset_dir, datasets_dir / f".{name}{IMPORTING}{os.getpid()}", replace=True) as staging:
            for split, split_rows in splits.items():
                with open(staging / f"{split}.jsonl", "w", encoding="utf-8") as f:
                    for row in split_rows:
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
            (staging / "summary.json").write_text(
                json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
    except OSError as e:  # disk full, read-only folder: the old dataset (if any) is left as it was
        raise UserError(f"{e.filename or dataset_dir}: cannot write the dataset ({e.strerror or e})") from None
    return ImportResult(dataset_dir, summary)


IMPORTING = ".importing-"  # datasets/.NAME.importing-PID: an import in progress (or killed)


def remove_abandoned_imports(datasets_dir: Path) -> None:
    """The staging folders of imports whose process is gone (killed mid-write): they are never datasets."""
    for folder in datasets_dir.glob(f".*{IMPORTING}*"):
        pid = folder.name.rpartition(IMPORTING)[2]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def check_dataset_folder(dataset_dir: Path) -> Path:
    """A dataset `prepare` finished, with JSON-object rows; its train.jsonl. One line names what is wrong."""
    again = "import it again with `phi3e2e prepare --data FILE`"
    if dataset_dir.name.startswith("."):
        raise UserError(f"{dataset_dir}: an unfinished import's staging folder, not a dataset; {again}")
    train_file = dataset_dir / "train.jsonl"
    if not train_file.is_file() or train_file.stat().st_size == 0:
        raise UserError(f"{dataset_dir}: no training data (train.jsonl); import it with `phi3e2e prepare --data FILE`")
    for split_file in (train_file, dataset_dir / "eval.jsonl"):
        if not split_file.is_file():
            continue
        with open(split_file, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:  # JSON, or UTF-8, broken: a hand edit or a damaged disk
                    raise UserError(f"{split_file}:{number}: not a JSON row ({str(e).splitlines()[0]}); {again}") from None
                if not isinstance(row, dict):
                    raise UserError(f"{split_file}:{number}: a row must be a JSON object, not {type(row).__name__}; "
                                    f"{again}")
    return train_file


def _token_stats(tokenizer, texts: list[str], max_length: Optional[int]) -> tuple[dict, list[int]]:
    from phi3e2e.workflow.training_text import training_token_ids

    lengths = [len(training_token_ids(tokenizer, text)) for text in texts]
    ordered = sorted(lengths)
    too_long = [i for i, n in enumerate(lengths) if max_length and n > max_length]
    stats = {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p95": ordered[math.ceil(0.95 * len(ordered)) - 1],
        "max": ordered[-1],
        "max_length": max_length,
        "above_max_length": len(too_long),
    }
    return stats, too_long


def default_name(source: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", source.stem).strip("-.") or "dataset"
    return name[:100]


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (max 100), not a path")
    return name


# Fewer eval rows than this are too few to tell a loss change from which rows happened to be held out:
# `prepare` says so, and eval's verdict (evaluate/uncertainty.py) calls no winner.
MIN_EVAL_ROWS = 20


def few_eval_rows(eval_rows: int, rows: int) -> str:
    """What a split too small to judge a fine-tune by means, and the --eval-split that gives enough rows."""
    text = (f"  note: {eval_rows} eval rows are too few to tell a loss change from chance (eval says so under "
            f"{MIN_EVAL_ROWS});")  # fmt: skip
    split = math.ceil(100 * MIN_EVAL_ROWS / rows) / 100
    if split <= 0.3:
        return f"{text} --eval-split {split:g} holds out {round(rows * split)} of the {rows} rows"
    return f"{text} {rows} rows are few for both training and evaluation: more data helps most"


def describe(summary: dict) -> list[str]:
    """The import summary as the lines `prepare` prints."""
    lines = [
        f"Read {summary['rows_read']} rows ({summary['format']}, {summary['shape']}); "
        f"kept {summary['rows_kept']}: {summary['train_rows']} train, {summary['eval_rows']} eval"
    ]
    if not summary["eval_rows"]:  # said now, not when `eval` or the end of `finetune` finds out
        lines.append("  no eval rows: `phi3e2e eval` needs some to measure the fine-tune; "
                     "import with --eval-split 0.1 (and at least 2 rows) to hold some out")  # fmt: skip
    elif summary["eval_rows"] < MIN_EVAL_ROWS:
        lines.append(few_eval_rows(summary["eval_rows"], summary["rows_kept"]))
    for reason, count in summary["rows_dropped"].items():
        where = ", ".join(summary["dropped_where"][reason])
        lines.append(f"  dropped {count} {reason} ({where}{', ...' if count > 5 else ''})")
    tokens = summary.get("tokens")
    if tokens:
        lines.append(
            f"  tokens per row: min {tokens['min']}, median {tokens['median']:g}, p95 {tokens['p95']}, "
            f"max {tokens['max']}; {tokens['above_max_length']} above max length {tokens['max_length']}"
        )
    for i, sample in enumerate(summary["samples"], 1):
        lines.append(f"  training sample {i}:")
        lines.extend("    | " + line for line in sample.splitlines())
    return lines

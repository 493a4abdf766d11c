"""Import a Q&A file into datasets/<name>/ as train.jsonl + eval.jsonl (seeded split)."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from phi3e2e.errors import UserError

RECIPE_TEXT_TEMPLATE = "<|user|>\n{Question}<|end|>\n<|assistant|>\n{Best Answer}\n<|end|>"
QUESTION, ANSWER = "Question", "Best Answer"


@dataclass
class ImportResult:
    dataset_dir: Path
    summary: dict


def _read_records(source: Path) -> list[dict]:
    text = source.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{source}:{e.lineno}: invalid JSON: {e.msg}") from None
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{source}:{lineno}: invalid JSON line: {e.msg}") from None
    return records


def import_dataset(
    source: Path,
    datasets_dir: Path,
    *,
    name: Optional[str] = None,
    eval_split: float = 0.1,
    seed: int = 42,
) -> ImportResult:
    source = Path(source)
    if not source.is_file():
        raise UserError(f"{source}: no such file")
    records = _read_records(source)
    if not records:
        raise UserError(f"{source}: no records")
    rows = []
    for i, record in enumerate(records, 1):
        if not isinstance(record, dict) or QUESTION not in record or ANSWER not in record:
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise UserError(f"{source}: record {i} needs columns {QUESTION!r} and {ANSWER!r}; found {found}")
        rows.append({QUESTION: str(record[QUESTION]).strip(), ANSWER: str(record[ANSWER]).strip()})
    random.Random(seed).shuffle(rows)
    n_eval = int(round(len(rows) * eval_split)) if len(rows) > 1 else 0
    splits = {"train": rows[n_eval:], "eval": rows[:n_eval]}
    name = name or source.stem
    dataset_dir = datasets_dir / name
    summary = {
        "source": str(source),
        "rows_read": len(records),
        "rows_kept": len(rows),
        "train_rows": len(splits["train"]),
        "eval_rows": len(splits["eval"]),
        "text_template": RECIPE_TEXT_TEMPLATE,
    }
    # Write beside the target and rename last, so a failure never leaves half a dataset.
    datasets_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=datasets_dir))
    try:
        for split, split_rows in splits.items():
            with open(staging / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for row in split_rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if dataset_dir.exists():
            shutil.rmtree(dataset_dir)
        staging.rename(dataset_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ImportResult(dataset_dir, summary)

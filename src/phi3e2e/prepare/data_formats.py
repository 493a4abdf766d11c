"""Read a user's data file into records: CSV, a JSON array or JSONL, detected from the content.

Every record keeps where it came from (a line number, or the record number in a JSON array) so
that a later error can name the exact place. Anything unreadable is a one-line UserError.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from phi3e2e.errors import UserError

Format = Literal["csv", "json", "jsonl"]
FORMATS: tuple[str, ...] = ("csv", "json", "jsonl")
# Delimiters a spreadsheet export may use; the header line decides which one.
CSV_DELIMITERS = (",", ";", "\t", "|")
# No Q&A row is this long (the recipe trains on 2048 tokens, ~8 KB): a longer line or record is a
# broken file, rejected before parsing it costs minutes and gigabytes.
MAX_ROW_CHARS = 1 << 20


@dataclass
class Record:
    where: str  # "line 12" or "record 3": for error messages
    values: dict


@dataclass
class RawFile:
    format: str
    records: list[Record]
    columns: list[str]  # the columns (keys) seen, in first-seen order


def read_data_file(source: Path, fmt: Optional[str] = None, encoding: Optional[str] = None) -> RawFile:
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if not source.is_file():
        raise UserError(f"{source}: no such file")
    text = _decode(source, source.read_bytes(), encoding)
    if not text.strip():
        raise UserError(f"{source}: empty file, nothing to import")
    fmt = fmt or detect_format(text)
    if fmt != "json":
        _check_line_lengths(source, text)
    records = {"csv": _read_csv, "json": _read_json, "jsonl": _read_jsonl}[fmt](source, text)
    if not records:
        raise UserError(f"{source}: no records to import")
    columns: list[str] = []
    for record in records:
        columns.extend(key for key in record.values if key not in columns)
    return RawFile(fmt, records, columns)


def detect_format(text: str) -> str:
    first = text.lstrip()[:1]
    if first == "[":
        return "json"
    if first == "{":
        return "jsonl"
    return "csv"


def _decode(source: Path, data: bytes, encoding: Optional[str]) -> str:
    """UTF-8 (BOM or not) by default; UTF-16 when it has a BOM (Excel's "Unicode text")."""
    if encoding is None and data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    try:
        return data.decode(encoding or "utf-8-sig")
    except LookupError:
        raise UserError(f"--encoding {encoding!r}: unknown encoding; try utf-8, gbk, cp1252") from None
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        hint = "re-save it as UTF-8, or pass --encoding (e.g. gbk, cp1252)" if not encoding else "check --encoding"
        raise UserError(
            f"{source}:{line}: cannot decode byte 0x{data[e.start]:02x} as {encoding or 'UTF-8'}; {hint}"
        ) from None


def _check_line_lengths(source: Path, text: str) -> None:
    longest = max(map(len, text.splitlines()), default=0)
    if longest > MAX_ROW_CHARS:
        lineno = next(i for i, line in enumerate(text.splitlines(), 1) if len(line) == longest)
        raise UserError(f"{source}:{lineno}: a line of {longest:,} characters (at most {MAX_ROW_CHARS:,}); "
                        "is this a Q&A file?")  # fmt: skip


def _read_json(source: Path, text: str) -> list[Record]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{source}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    except (RecursionError, ValueError) as e:  # 100 000 nested brackets; a number over 4300 digits
        raise UserError(f"{source}: unreadable JSON ({_why(e)})") from None
    if not isinstance(data, list):
        raise UserError(f"{source}: expected a JSON array of records or JSON Lines, found a JSON {type(data).__name__}")
    return [_record(source, f"record {i}", value) for i, value in enumerate(data, 1)]


def _read_jsonl(source: Path, text: str) -> list[Record]:
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{source}:{lineno}: invalid JSON line: {e.msg} (column {e.colno})") from None
        except (RecursionError, ValueError) as e:
            raise UserError(f"{source}:{lineno}: unreadable JSON line ({_why(e)})") from None
        records.append(_record(source, f"line {lineno}", value))
    return records


def _record(source: Path, where: str, value: object) -> Record:
    if not isinstance(value, dict):
        raise UserError(f"{source} {where}: expected an object with named fields, found a JSON {type(value).__name__}")
    try:
        size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    except (UnicodeEncodeError, RecursionError, ValueError) as e:  # a lone surrogate "\ud800" has no UTF-8
        raise UserError(f"{source} {where}: cannot be stored as UTF-8 ({_why(e)})") from None
    if size > MAX_ROW_CHARS:
        raise UserError(f"{source} {where}: {size:,} bytes in one record (at most {MAX_ROW_CHARS:,})")
    return Record(where, value)


def _why(error: Exception) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error).split(";")[0][:120]


def _read_csv(source: Path, text: str) -> list[Record]:
    header_line = text.lstrip("\r\n").split("\n", 1)[0]
    delimiter = max(CSV_DELIMITERS, key=header_line.count)
    # newline="" keeps quoted newlines and CRLF intact for the csv module to handle.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header: list[str] = []
        for header in reader:
            if any(cell.strip() for cell in header):
                break
        header = [cell.strip() for cell in header]
        if len(set(header)) != len(header):
            repeated = sorted({c for c in header if header.count(c) > 1})
            raise UserError(f"{source}:{reader.line_num}: column name repeated in the header: {', '.join(repeated)}")
        records = []
        start = reader.line_num + 1
        for row in reader:
            where, start = f"line {start}", reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise UserError(
                    f"{source}:{where[5:]}: {len(row)} fields but the header has {len(header)}; "
                    "quote fields that contain the delimiter"
                )
            records.append(Record(where, dict(zip(header, row))))
    except csv.Error as e:
        raise UserError(f"{source}:{reader.line_num}: invalid CSV: {e}") from None
    return records

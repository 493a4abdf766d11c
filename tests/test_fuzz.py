"""Property-based hunting for tracebacks: whatever a user's file, flag or name holds, phi3e2e
either accepts it or says one UserError, never another exception. Bounded examples (seconds).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.prepare.data_formats import read_data_file
from phi3e2e.prepare.dataset_import import check_name, load_dataset, write_dataset
from phi3e2e.project import Project
from phi3e2e.workflow.settings import FinetuneSettings, build_settings, parse_override, valid_keys

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON-like values, with the awkward ones: deep nesting, huge numbers, lone surrogates, NaN.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.sampled_from(["", " ", "\ud800", "9" * 5000])
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=12)  # fmt: skip
qa_records = st.fixed_dictionaries({"question": json_values, "answer": json_values}, optional={"extra": json_values})


def _file_text(kind: str, records: list) -> str:
    def dump(value):
        return json.dumps(value, ensure_ascii=False, allow_nan=True)

    if kind == "jsonl":
        return "\n".join(dump(record) for record in records) + "\n"
    if kind == "json":
        return dump(records)
    rows = [",".join(str(v).replace(",", ";") for v in record.values()) for record in records if isinstance(record, dict)]
    return "question,answer\n" + "\n".join(rows) + "\n"


def _import(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / f"data{suffix}"
        source.write_bytes(data)
        try:
            loaded = load_dataset(source)
            write_dataset(loaded, Path(folder) / "datasets", "fuzz")
        except UserError as e:
            assert "\n" not in str(e).strip(), str(e)  # one line


@FAST
@given(kind=st.sampled_from(["jsonl", "json", "csv"]), records=st.lists(qa_records | json_values, max_size=6))
def test_importers_accept_or_refuse_structured_input_in_one_line(kind, records):
    try:
        text = _file_text(kind, records)
    except (ValueError, RecursionError):  # not expressible as that file type
        return
    _import(text.encode("utf-8", errors="surrogatepass"), f".{kind}")


@FAST
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".json", ".jsonl", ".txt"]))
def test_importers_accept_or_refuse_any_bytes(data, suffix):
    _import(data, suffix)


@FAST
@given(depth=st.integers(1, 200_000), bracket=st.sampled_from(["[", "{\"a\":"]))
def test_deep_nesting_is_refused_not_a_recursion_error(depth, bracket):
    closing = "]" if bracket == "[" else "}"
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "deep.json"
        source.write_text("[" + bracket * depth + "1" + closing * depth + "]")
        try:
            read_data_file(source)
        except UserError:
            pass


@FAST
@given(key=st.sampled_from(valid_keys()) | st.text(max_size=20), raw=st.text(max_size=30)
       | st.sampled_from([".inf", "-.inf", ".nan", "1e400", "nan", "inf", "-1", "0", "[]", "{}", "~", "1e-400"]))
def test_set_values_build_settings_that_are_valid_json_or_one_error(key, raw):
    try:
        settings_ = build_settings("phi3-mini", dict([parse_override(f"{key}={raw}")]))
    except UserError:
        return
    assert isinstance(settings_, FinetuneSettings)
    # What gets rendered into olive-config.json and run.json: finite numbers only.
    text = json.dumps(settings_.model_dump(mode="json"), allow_nan=False)
    for value in json.loads(text)["training"].values():
        assert not isinstance(value, float) or math.isfinite(value)


@FAST
@given(name=st.text(max_size=110) | st.sampled_from(["r\n", "a/b", "..", ".hidden", "x.failed", "ok-1.2_3"]))
def test_run_and_dataset_names_are_plain_or_refused(name):
    for check in (runs.check_run_name, check_name):
        try:
            accepted = check(name)
        except UserError:
            continue
        assert accepted == name and "\n" not in name and "/" not in name and not name.startswith(".")
        assert len(name) <= 100 and name.isascii()


@FAST
@given(content=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_project_and_run_records_read_or_one_error(content):
    with tempfile.TemporaryDirectory() as folder:
        project = Project(Path(folder))
        project.project_file.write_bytes(content)
        try:
            recorded = project.read_choices()
            assert isinstance(recorded, dict)
        except UserError:
            pass
        (project.root / runs.RUN_FILE).write_bytes(content)
        try:
            runs.read_record(project.root)
        except UserError:
            pass
        assert runs.try_read_record(project.root) is None or content.strip().startswith(b"{")

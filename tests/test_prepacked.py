"""This CPU's prepacked weights, saved when the run is built (unless the user left them out) and mapped at load:
the same answers, a cache that is rebuilt when stale, never a reason to fail, never shipped. Real onnxruntime
sessions and files throughout."""

from __future__ import annotations

import os
import shutil

import pytest

from phi3e2e.infer.engines.genai import GenaiEngine, genai_config
from phi3e2e.infer.generation import GenerationOptions
from phi3e2e.infer.prepacked import CACHE, SWITCH, save_prepacked, saved_model
from phi3e2e.share.hub import pushed_files

pytestmark = pytest.mark.e2e
GREEDY = GenerationOptions(max_new_tokens=12, min_new_tokens=12)


def _tokens(engine: GenaiEngine) -> list[int]:
    return [int(token) for token, _ in engine.stream_tokens(engine.encode("Do you ship to Canada?"), GREEDY)]


@pytest.fixture
def int4_copy(finished_run, tmp_path):
    """The finished run's int4 model without its cache, as a model downloaded from elsewhere would be."""
    _, run_dir = finished_run
    copy = tmp_path / "onnx-int4"
    shutil.copytree(run_dir / "onnx-int4", copy, ignore=shutil.ignore_patterns(CACHE))
    return copy


def test_builds_save_them_unless_left_out_and_chat_then_loads_them_with_the_same_answers(int4_copy, monkeypatch):
    from phi3e2e.build.options import tune_for_cpu
    from phi3e2e.workflow.settings import ExportSettings

    plain = GenaiEngine(int4_copy)
    assert plain.prepacked is None
    expected = _tokens(plain)
    monkeypatch.setenv(SWITCH, "0")
    assert tune_for_cpu(int4_copy, ExportSettings())["prepacked_for_this_cpu"] is False  # left out by the user
    assert not (int4_copy / CACHE).exists()
    monkeypatch.delenv(SWITCH)
    assert tune_for_cpu(int4_copy, ExportSettings(), prepack=False)["prepacked_for_this_cpu"] is False  # sweep trials
    assert tune_for_cpu(int4_copy, ExportSettings())["prepacked_for_this_cpu"] is True  # the default: saved

    built = GenaiEngine(int4_copy)
    assert built.prepacked is not None and (int4_copy / built.prepacked).with_name("model.onnx.data").stat().st_size
    assert _tokens(built) == expected  # the same kernels on the same packed bytes: identical, not close

    # A cache for this CPU is never shipped: not in an Azure ML upload (the SDK's own ignore rules), not to the Hub.
    from azure.ai.ml._utils._asset_utils import get_ignore_file

    ignore = get_ignore_file(int4_copy)
    assert ignore.is_file_excluded(int4_copy / built.prepacked)
    assert not ignore.is_file_excluded(int4_copy / "model.onnx")


def test_push_leaves_the_cache_out(finished_run, tmp_path):
    _, run_dir = finished_run
    run_copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, run_copy)
    assert save_prepacked(run_copy / "onnx-int4", threads=1) is not None
    pushed = [name for name, _ in pushed_files(run_copy, "int4")[1]]
    assert "model.onnx" in pushed and not any(CACHE in name for name in pushed)


def test_a_changed_model_file_makes_the_cache_stale_and_a_new_save_replaces_it(int4_copy):
    first = save_prepacked(int4_copy, threads=1)
    assert first is not None and GenaiEngine(int4_copy).prepacked == first
    data = int4_copy / "model.onnx.data"
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 1_000_000_000))  # rebuilt, say
    assert saved_model(int4_copy, genai_config(int4_copy)) is None
    assert GenaiEngine(int4_copy).prepacked is None  # the usual load, not weights of another build
    (int4_copy / CACHE / ".abandoned.partial").mkdir()  # what a kill during a save leaves
    second = save_prepacked(int4_copy, threads=1)
    assert second is not None and second != first
    assert sorted(p.name for p in (int4_copy / CACHE).iterdir() if p.is_dir()) == [second.parent.name]


def test_a_folder_where_the_cache_cannot_be_made_still_loads(int4_copy):
    (int4_copy / CACHE).write_text("not a folder")
    assert save_prepacked(int4_copy, threads=1) is None
    engine = GenaiEngine(int4_copy)
    assert engine.prepacked is None and len(_tokens(engine)) == 12

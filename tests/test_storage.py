"""Files and folders appear whole or not at all (phi3e2e.storage)."""

import pytest

from phi3e2e.storage import atomic_write, publish, staged_dir


def test_atomic_write_replaces_the_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "run.json"
    target.write_text("old")
    atomic_write(target, "new")
    assert target.read_text() == "new"
    atomic_write(target, b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "eval.json"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write(target, "caf\udcff")  # a lone surrogate cannot be written as UTF-8
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


def test_staged_dir_appears_only_when_the_block_ends(tmp_path):
    final = tmp_path / "onnx-int4"
    with staged_dir(final) as staging:
        (staging / "model.onnx").write_text("x")
        assert not final.exists() and staging.name == ".onnx-int4.partial"
    assert (final / "model.onnx").read_text() == "x"
    assert not staging.exists()


def test_staged_dir_leaves_nothing_on_an_error_and_keeps_the_old_folder(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old").write_text("kept")
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(final, replace=True) as staging:
            (staging / "half").write_text("x")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert (final / "old").read_text() == "kept"


def test_staged_dir_replace_swaps_the_old_folder_out(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old").write_text("x")
    with staged_dir(final, replace=True) as staging:
        (staging / "new").write_text("y")
    assert [p.name for p in final.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_publish_refuses_to_merge_into_an_existing_folder(tmp_path):
    staging, final = tmp_path / ".x.partial", tmp_path / "x"
    staging.mkdir()
    (final / "inside").mkdir(parents=True)
    with pytest.raises(OSError):
        publish(staging, final)
    assert staging.is_dir() and (final / "inside").is_dir()

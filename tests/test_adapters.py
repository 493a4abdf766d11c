"""Fine-tunes shipped as adapters on one shared int4 base: built once, answering each as itself, in every command.

Two adapter runs are made from the `finished_run` fixture's adapter, not by training again: `ad-plus` is its
adapter as trained, `ad-minus` the same with every lora_B weight negated (the opposite fine-tune, same shape).
Both are built through the real `export --ship adapter` path (Olive ModelBuilder + ExtractAdapters).
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from helpers import API_KEY, Server, health, quiet, run_cli

from phi3e2e import runs
from phi3e2e.build.adapter_int4 import BASE_RECORD, export_adapter
from phi3e2e.project import Project

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def adapter_project(finished_run, tmp_path_factory) -> Project:
    from safetensors.numpy import load_file, save_file

    original, run_dir = finished_run
    project = Project(tmp_path_factory.mktemp("adapters") / "project")
    shutil.copytree(original.root, project.root, symlinks=True)
    for name, sign in (("ad-plus", 1.0), ("ad-minus", -1.0)):
        folder = project.gen_model / name
        shutil.copytree(project.gen_model / run_dir.name, folder)
        record = runs.read_record(folder)
        record.name = name
        # fp32 activations in the int4 MatMuls (test_serve.fp32_activations says why): batched and lone answers of
        # an adapter are then the same tokens, so the serve test can compare them exactly
        record.settings.export = record.settings.export.model_copy(update={"int4_accuracy_level": 1})
        runs.write_record(folder, record)
        weights_file = folder / runs.ADAPTER / "adapter_model.safetensors"
        weights = load_file(weights_file)
        save_file({key: value * sign if "lora_B" in key else value for key, value in weights.items()}, weights_file)
        shutil.rmtree(folder / runs.ONNX_INT4)  # it ships the adapter
        export_adapter(project, name, say=quiet)
    return project


def _base_of(project: Project, name: str):
    return runs.adapter_base_dir(project.gen_model / name / runs.ONNX_ADAPTER)


def test_two_adapter_runs_share_one_base_byte_for_byte(adapter_project):
    project = adapter_project
    base = _base_of(project, "ad-plus")
    assert base == _base_of(project, "ad-minus")
    assert [p.name for p in base.parent.iterdir() if p.is_dir()] == [base.name]  # one base folder, no leftovers
    sha = json.loads((base / BASE_RECORD).read_text())["model_sha256"]  # of the model.onnx the first build made
    assert (base / "model.onnx.data").stat().st_size > 5 * (base / "model.onnx").stat().st_size  # weights beside it
    for name in ("ad-plus", "ad-minus"):  # each build's own base model.onnx had this very sha256
        pointer = json.loads((project.gen_model / name / runs.ONNX_ADAPTER / runs.BASE_POINTER).read_text())
        assert pointer["base_model_sha256"] == sha
        assert not pointer["base"].startswith("/")  # relative: a copied project stays whole
    plus, minus = (project.gen_model / n / runs.ONNX_ADAPTER / runs.ADAPTER_FILE for n in ("ad-plus", "ad-minus"))
    assert plus.read_bytes() != minus.read_bytes()
    assert plus.stat().st_size < 0.25 * (base / "model.onnx.data").stat().st_size


def test_each_adapter_answers_as_itself_and_none_is_the_plain_base(adapter_project):
    from phi3e2e.build.base_int4 import cached_base_int4
    from phi3e2e.build.options import recorded_int4_options
    from phi3e2e.evaluate.eval_data import load_eval_rows
    from phi3e2e.evaluate.losses import mean_loss, onnx_row_nll

    project = adapter_project
    record = runs.read_record(project.gen_model / "ad-plus")
    base_model = project.resolve(record.base_model)
    rows = load_eval_rows(project.resolve(record.dataset), base_model, record.settings.data, 4).token_ids
    plain = cached_base_int4(project.model_cache, base_model, recorded_int4_options(record), quiet)
    nll = {
        "plain": onnx_row_nll(plain, rows, base_model),
        "no adapter": onnx_row_nll(_base_of(project, "ad-plus"), rows, base_model),
        "plus": onnx_row_nll(project.gen_model / "ad-plus" / runs.ONNX_ADAPTER, rows, base_model),
        "minus": onnx_row_nll(project.gen_model / "ad-minus" / runs.ONNX_ADAPTER, rows, base_model),
    }
    loss = {name: mean_loss(values, rows) for name, values in nll.items()}
    assert nll["no adapter"] == pytest.approx(nll["plain"], abs=1e-4)  # empty LoRA inputs: the plain base int4
    assert loss["plus"] < loss["plain"] - 0.5  # the trained adapter answers (held-out loss ~7.96 -> ~6.3)
    assert abs(loss["minus"] - loss["plus"]) > 0.5  # the other adapter answers as itself


def test_chat_eval_and_runs_understand_an_adapter_run(adapter_project):
    project = adapter_project
    chat = run_cli("chat", "--model", str(project.gen_model / "ad-plus"), "--prompt", "Hello?", "--max-length", "8",
                   "--json", project=project)
    assert chat.returncode == 0, chat.stderr
    assert json.loads(chat.stdout.splitlines()[0])["form"] == "onnx-adapter"

    evaluated = run_cli("eval", "ad-plus", "--max-rows", "3", "--samples", "1", project=project)
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads((project.gen_model / "ad-plus" / runs.EVAL_FILE).read_text())
    assert result["losses"]["int4"]["fine_tuned"]["model"] == "gen-model/ad-plus/onnx-adapter"
    assert result["losses"]["int4"]["change"] < 0  # the trained adapter helps on held-out rows

    listed = {row["name"]: row for row in json.loads(run_cli("runs", "--json", project=project).stdout)}
    assert listed["ad-plus"]["ships"] == "adapter"
    assert listed["ad-plus"]["shared_base"].startswith("model-cache/.onnx-int4-adapters/")
    assert listed["ad-plus"]["ships_bytes"] < listed["e2e"]["ships_bytes"] / 4  # e2e ships its merged int4
    shown = run_cli("runs", "show", "ad-plus", project=project)
    assert "adapter" in shown.stdout and ".onnx-int4-adapters" in shown.stdout


def test_serve_answers_each_adapter_run_on_one_loaded_base(adapter_project):
    server = Server(adapter_project, "--api-key", API_KEY)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY)
        assert {"ad-plus", "ad-minus"} <= {model.id for model in client.models.list().data}

        def ask(model: str) -> str:
            stream = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "What are the opening hours?"}], max_tokens=12,
                temperature=0, stream=True, extra_body={"min_tokens": 12})
            return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

        alone = {model: ask(model) for model in ("ad-plus", "ad-minus")}
        assert alone["ad-plus"] != alone["ad-minus"]
        before = health(server)["answers_batched"]
        with ThreadPoolExecutor(6) as pool:  # concurrent and streamed: each gets its own adapter's answer
            models = ["ad-plus", "ad-minus", "ad-plus", "ad-minus", "ad-plus", "ad-minus"]
            assert list(pool.map(ask, models)) == [alone[model] for model in models]
        assert health(server)["answers_batched"] - before >= 2  # answers to one adapter decoded together
        ask(client.models.retrieve("ad-plus").model_extra["phi3e2e_base"])  # the playground's base: the shared
        # base with no adapter, not another copy
        state = health(server)
        shared = [name for name in state["models_loaded"] if name.startswith("shared-base/")]
        assert len(shared) == 1 and {"ad-plus", "ad-minus"} <= set(state["models_loaded"])
        base = _base_of(adapter_project, "ad-plus")
        base_bytes = sum(p.stat().st_size for p in base.iterdir() if p.is_file())
        adapters = sum((adapter_project.gen_model / n / runs.ONNX_ADAPTER / runs.ADAPTER_FILE).stat().st_size
                       for n in ("ad-plus", "ad-minus"))
        assert state["models_bytes"] == base_bytes + adapters  # the base counted once, for all three
    finally:
        server.stop()
    assert "Traceback" not in "".join(server.output)


def test_runs_rm_keeps_a_base_another_run_uses_and_a_missing_base_says_how_to_rebuild(adapter_project, tmp_path):
    project = Project(tmp_path / "project")
    shutil.copytree(adapter_project.root, project.root, symlinks=True)
    base = _base_of(project, "ad-plus")
    removed = run_cli("runs", "rm", "ad-minus", "--yes", project=project)
    assert removed.returncode == 0, removed.stderr
    assert "Kept its int4 base" in removed.stdout and "ad-plus" in removed.stdout
    assert (base / "model.onnx").is_file()

    shutil.move(base, tmp_path / "away")  # (that command builds as the fixture did; moved back here to save a build)
    chat = run_cli("chat", "--model", str(project.gen_model / "ad-plus"), "--prompt", "Hello?", project=project)
    assert chat.returncode == 2
    assert chat.stderr.strip().count("\n") == 0 and "phi3e2e export ad-plus --ship adapter" in chat.stderr
    shutil.move(tmp_path / "away", base)

    last = run_cli("runs", "rm", "ad-plus", "--yes", project=project)
    assert "Deleted its int4 base" in last.stdout and not base.exists()

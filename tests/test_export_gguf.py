"""User story: take a fine-tune to Ollama / llama.cpp with `phi3e2e export --format gguf`.

The real converter (llama.cpp's convert_hf_to_gguf.py from the pinned llama-cpp-python sdist,
the file `make install` fetched into .venv/llama-cpp-sdist/, or $PHI3E2E_LLAMA_CPP_SDIST) runs
on the tiny fine-tune; no network. Every weight of the GGUF is read back with gguf-py and
compared with the merged model's. The greedy-token check needs llama-cpp-python (no wheel on
PyPI; `make test-gguf` builds it) and is skipped without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from phi3e2e.build.gguf_converter import LLAMA_CPP_PYTHON, SDIST, SDIST_ENV, converter_dir
from phi3e2e.build.ollama_modelfile import ollama_template, stop_tokens, turn_pieces
from phi3e2e.chat_format import ChatFormat
from phi3e2e.errors import UserError
from phi3e2e.project import Project
from phi3e2e.workflow.model_family import MEMBERS

FETCHED_SDIST = Path(os.environ.get(SDIST_ENV) or Path(sys.prefix) / "llama-cpp-sdist" / SDIST)
PROMPTS = ["How long does shipping take?", "What is your return policy?", "Do you ship abroad?"]
# Q8_0 vs fp32 on the tiny fine-tune: at most 0.20 apart on any logit (measured: 5 fine-tunes x these
# prompts x 12 greedy steps, llama-cpp-python 0.3.36, AVX-512 build); its logits span several units.
LOGIT_TOLERANCE = 0.5


@pytest.fixture(scope="module")
def gguf_export(finished_run, tmp_path_factory):
    """`phi3e2e export --format gguf` (Q8_0) on a copy of the finished run: (project, run_dir, completed process)."""
    assert FETCHED_SDIST.is_file(), f"{FETCHED_SDIST}: `make install` fetches it (or set {SDIST_ENV})"
    project = Project(tmp_path_factory.mktemp("gguf") / "project")
    shutil.copytree(finished_run[0].root, project.root, symlinks=True)
    result = run_cli("export", "--format", "gguf", project=project, env={SDIST_ENV: str(FETCHED_SDIST)})
    return project, project.gen_model / finished_run[1].name, result


def test_export_gguf_writes_the_gguf_and_a_modelfile_and_says_how_to_use_them(gguf_export):
    project, run_dir, result = gguf_export
    assert result.returncode == 0, result.stderr
    folder = run_dir / "gguf-q8_0"
    gguf_file = folder / f"{run_dir.name}-Q8_0.gguf"
    assert sorted(p.name for p in folder.iterdir()) == sorted([gguf_file.name, "Modelfile", "export.json", "convert.log"])
    assert not list(run_dir.glob(".gguf*")) and not list(run_dir.glob("*.failed.log"))  # nothing staged left
    lines = result.stdout.strip().splitlines()
    assert "Converting" in result.stdout and "ollama create" in lines[-2] and "llama-cli -m" in lines[-1]
    assert f"ollama create {run_dir.name} -f gen-model/{run_dir.name}/gguf-q8_0/Modelfile" in lines[-2]

    modelfile = (folder / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{gguf_file.name}\n")
    assert 'PARAMETER stop "<|end|>"' in modelfile and 'PARAMETER stop "<|endoftext|>"' in modelfile
    assert '{{ if eq .Role "user" }}' not in modelfile  # system comes first in the branches
    assert '{{ else if eq .Role "user" }}<|user|>\n{{ .Content }}<|end|>\n' in modelfile
    assert modelfile.count('"""') == 2 and '{{ end }}{{ end }}<|assistant|>\n"""' in modelfile
    record = json.loads((folder / "export.json").read_text())
    assert record["quant"] == "Q8_0" and record["size_bytes"] == gguf_file.stat().st_size
    assert LLAMA_CPP_PYTHON in record["converter"]


def test_every_gguf_weight_is_the_merged_weight_within_q8_0_rounding(gguf_export, monkeypatch):
    """Read back with the gguf-py the converter ships (model-cache/.llama.cpp-*/gguf-py), no llama.cpp needed."""
    from safetensors.numpy import load_file

    project, run_dir, result = gguf_export
    assert result.returncode == 0, result.stderr
    monkeypatch.syspath_prepend(str(project.model_cache / f".llama.cpp-{LLAMA_CPP_PYTHON}" / "gguf-py"))
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(run_dir / "gguf-q8_0" / f"{run_dir.name}-Q8_0.gguf")
    merged_dir = run_dir / "merged"
    merged = {}
    for shard in merged_dir.glob("*.safetensors"):
        merged |= load_file(shard)
    config = json.loads((merged_dir / "config.json").read_text())
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.PHI3, config["num_hidden_layers"])
    by_gguf_name = {names.get_name(name, try_suffixes=(".weight", ".bias")): name for name in merged}
    assert sorted(by_gguf_name) == sorted(t.name for t in reader.tensors)  # every weight, nothing else
    for tensor in reader.tensors:
        want = merged[by_gguf_name[tensor.name]].astype(np.float32)
        got = dequantize(tensor.data, tensor.tensor_type).reshape(want.shape)
        if tensor.tensor_type == gguf.GGMLQuantizationType.F32:
            np.testing.assert_array_equal(got, want, err_msg=tensor.name)
            continue
        assert tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0, tensor.name
        # Q8_0: blocks of 32 with scale max|w|/127 stored as f16: half a step, plus the f16 scale's rounding
        blocks_max = np.abs(want).reshape(-1, 32).max(axis=1, keepdims=True)
        error = np.abs(got - want).reshape(-1, 32)
        assert (error <= blocks_max * (0.5 / 127 + 2**-10) + 1e-12).all(), tensor.name

    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.ggml.t")}
    assert fields["general.architecture"] == "phi3" and fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert fields["tokenizer.chat_template"] == ChatFormat.of_folder(merged_dir).template
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    special = json.loads((merged_dir / "tokenizer.json").read_text())["added_tokens"]
    assert all(tokens[t["id"]] == t["content"] for t in special)  # <|end|>, <|user|>, ... at their ids
    assert tokens[fields["tokenizer.ggml.eos_token_id"]] == "<|endoftext|>"


def test_the_gguf_answers_llama_cpp_with_the_merged_models_greedy_tokens(gguf_export):
    """llama.cpp (llama-cpp-python) on the Q8_0 GGUF, the chat template applied, vs transformers fp32 on merged/.

    Along the merged model's greedy answer to each prompt, llama.cpp's logits stay within
    LOGIT_TOLERANCE of transformers' at every step, and its greedy token is the same wherever
    transformers' top two logits are at least twice that apart (closer is a near-tie that rounding
    may flip on some CPU, so it is not asserted)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make test-gguf` (no wheel on PyPI)")
    import torch
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoModelForCausalLM, AutoTokenizer

    project, run_dir, result = gguf_export
    assert result.returncode == 0, result.stderr
    merged_dir = run_dir / "merged"
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    llm = Llama(model_path=str(run_dir / "gguf-q8_0" / f"{run_dir.name}-Q8_0.gguf"), n_ctx=256, n_threads=2,
                logits_all=True, verbose=False)  # fmt: skip (logits_all: llm.scores keeps each step's logits)
    template_in_gguf = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token="", bos_token="")
    compared = 0
    for question in PROMPTS:
        prompt = ChatFormat.of_folder(merged_dir).prompt([], question)
        # llama-cpp-python's chat formatter, over the template the GGUF carries, writes the same prompt,
        # and llama.cpp's tokenizer reads it as the same ids
        assert template_in_gguf(messages=[{"role": "user", "content": question}]).prompt == prompt
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
        llm.reset()
        llm.eval(ids)
        with torch.no_grad():
            for step in range(16):
                want = model(torch.tensor([ids])).logits[0, -1].numpy()
                got = llm.scores[llm.n_tokens - 1]
                assert np.abs(got - want).max() < LOGIT_TOLERANCE, (question, step)
                first, second = np.sort(want)[-2:][::-1]
                if first - second >= 2 * LOGIT_TOLERANCE:
                    assert int(np.argmax(got)) == int(np.argmax(want)), (question, step)
                    compared += 1
                ids.append(int(np.argmax(want)))  # along the merged model's greedy answer
                llm.eval([ids[-1]])
    llm.close()
    assert compared >= 8, f"only {compared} greedy steps clear of near-ties; use other prompts"


def test_q4_k_m_is_llama_cpps_own_mixture_and_loads(finished_run, tmp_path):
    """llama.cpp's quantizer from f16, its Q4_K_M mixture: on a real Phi-3, Q4_K with some tensors at Q6_K.
    K blocks need rows of 256 and the tiny model's are 64 wide, so llama.cpp's own fallback applies
    (vendor/llama.cpp/src/llama-quant.cpp:416-418 in the sdist: Q4_K -> Q5_0, Q6_K -> Q8_0)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make test-gguf` (no wheel on PyPI)")
    from llama_cpp import Llama

    project = Project(tmp_path / "project")
    shutil.copytree(finished_run[0].root, project.root, symlinks=True)
    result = run_cli("export", "--format", "gguf", "--quant", "Q4_K_M", project=project, env={SDIST_ENV: str(FETCHED_SDIST)})
    assert result.returncode == 0, result.stderr
    folder = project.gen_model / finished_run[1].name / "gguf-q4_k_m"
    gguf_file = folder / f"{finished_run[1].name}-Q4_K_M.gguf"
    assert sorted(p.name for p in folder.iterdir()) == sorted([gguf_file.name, "Modelfile", "export.json", "convert.log"])
    sys.path.insert(0, str(project.model_cache / f".llama.cpp-{LLAMA_CPP_PYTHON}" / "gguf-py"))
    try:
        import gguf
    finally:
        sys.path.pop(0)
    reader = gguf.GGUFReader(gguf_file)
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert {t.tensor_type.name for t in reader.tensors} == {"Q5_0", "Q8_0", "F32"}  # no F16 left from the first step
    llm = Llama(model_path=str(gguf_file), n_ctx=128, n_threads=2, verbose=False)
    llm.eval(llm.tokenize(b"<|user|>\nhi<|end|>\n<|assistant|>\n", add_bos=False, special=True))  # it runs
    assert llm.n_tokens > 3
    llm.close()


def test_a_failed_conversion_is_one_line_with_its_log_and_leaves_no_folder(finished_run, tmp_path):
    project = Project(tmp_path / "project")
    shutil.copytree(finished_run[0].root, project.root, symlinks=True)
    run_dir = project.gen_model / finished_run[1].name
    config_file = run_dir / "merged" / "config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | {"architectures": ["NotAModelForCausalLM"]}))
    result = run_cli("export", "--format", "gguf", project=project, env={SDIST_ENV: str(FETCHED_SDIST)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: export --format gguf failed: llama.cpp's converter failed: ") and "\n" not in line
    assert "NotAModelForCausalLM" in line and line.endswith(f"[log: gen-model/{run_dir.name}/gguf-q8_0.failed.log]")
    assert "NotAModelForCausalLM" in (run_dir / "gguf-q8_0.failed.log").read_text()
    assert not (run_dir / "gguf-q8_0").exists() and not list(run_dir.glob(".gguf*"))


def test_q4_without_llama_cpp_python_says_what_to_install_and_writes_nothing(tiny_project):
    if importlib.util.find_spec("llama_cpp") is not None:
        pytest.skip("llama-cpp-python is installed here: Q4_K_M is built (test-gguf lane)")
    result = run_cli("export", "--format", "gguf", "--quant", "Q4_K_M", project=tiny_project)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: --quant Q4_K_M needs llama.cpp's quantizer, which llama-cpp-python brings: pip install "
        f"llama-cpp-python=={LLAMA_CPP_PYTHON} (it builds llama.cpp, 6-10 minutes), or use --quant Q8_0"
    )
    assert not list(tiny_project.model_cache.glob(".llama.cpp*"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "gguf", "--device", "cpu"], "error: --device: for --format onnx; a GGUF's weights are set by --quant"),
        (["--format", "gguf", "--precision", "fp32", "--set", "export.int4_block_size=32"],
         "error: --precision, --set: for --format onnx; a GGUF's weights are set by --quant"),
        (["--quant", "Q8_0"], "error: --quant: for --format gguf; an ONNX build's weights are set by --precision"),
    ],
)  # fmt: skip
def test_options_of_the_other_format_are_refused_in_one_line(tiny_project, args, message):
    result = run_cli("export", *args, project=tiny_project)
    assert result.returncode == 2 and result.stderr.strip() == message


def test_a_converter_sdist_that_is_not_the_pinned_one_is_refused_and_nothing_is_unpacked(tmp_path, monkeypatch):
    fake = tmp_path / SDIST
    fake.write_bytes(b"not llama.cpp")
    monkeypatch.setenv(SDIST_ENV, str(fake))
    with pytest.raises(UserError, match=r"sha256 [0-9a-f]{64} is not the pinned llama-cpp-python==0\.3\.36's"):
        converter_dir(tmp_path / "model-cache", say=lambda _: None)
    assert [p.name for p in (tmp_path / "model-cache").iterdir()] == []


@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_the_ollama_template_is_each_family_members_chat_format_turn_by_turn(member):
    chat_format = ChatFormat(MEMBERS[member].chat_template)
    pieces, answer_start = turn_pieces(chat_format)
    template = ollama_template(chat_format)
    for role, (before, after) in pieces.items():
        assert f'eq .Role "{role}" }}}}{before}{{{{ .Content }}}}{after}' in template
    assert template.endswith("{{ end }}{{ end }}" + answer_start)


GO_RENDER = """package main

import ("encoding/json"; "os"; "text/template")

type Message struct{ Role, Content string }  // the fields of Ollama's api.Message a template reads

func main() {
	var input struct { Template string; Messages []Message }
	if err := json.NewDecoder(os.Stdin).Decode(&input); err != nil { panic(err) }
	tmpl := template.Must(template.New("modelfile").Parse(input.Template))
	if err := tmpl.Execute(os.Stdout, map[string]any{"Messages": input.Messages}); err != nil { panic(err) }
}
"""


@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_go_renders_the_ollama_template_as_the_chat_template_renders(member, tmp_path):
    """Go's text/template (what Ollama runs) on the TEMPLATE gives the chat template's prompt, byte for byte."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain here (apt-get install golang-go)")
    chat_format = ChatFormat(MEMBERS[member].chat_template)
    messages = [("system", "Be brief."), ("user", "Hi {{ .Role }} <|end|>"), ("assistant", "Hello.\n"), ("user", "Q?")]
    (tmp_path / "render.go").write_text(GO_RENDER)
    request = {"Template": ollama_template(chat_format), "Messages": [{"Role": r, "Content": c} for r, c in messages]}
    env = dict(os.environ, GOCACHE=str(tmp_path / "go-cache"), GOPATH=str(tmp_path / "go"), GOFLAGS="-mod=mod")
    rendered = subprocess.run([go, "run", str(tmp_path / "render.go")], input=json.dumps(request), capture_output=True,
                              text=True, env=env, timeout=120)  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout == chat_format.render(messages, add_generation_prompt=True)


@pytest.mark.parametrize(
    "generation_config, message",
    [("{not json", "generation_config.json: not a JSON object"),
     ('{"eos_token_id": "<|end|>"}', "generation_config.json: eos_token_id must be a token id or a list of token ids")],
)  # fmt: skip
def test_a_broken_generation_config_is_one_line_naming_it(tiny_template, tmp_path, generation_config, message):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_template.model_cache / "tiny-phi3", model_dir)
    assert stop_tokens(model_dir) == ["<|end|>", "<|endoftext|>"]
    (model_dir / "generation_config.json").write_text(generation_config)
    with pytest.raises(UserError) as refused:
        stop_tokens(model_dir)
    assert str(refused.value) == f"{model_dir}/{message}"


def test_a_template_that_renders_a_turn_by_its_place_is_refused():
    numbered = "{% for m in messages %}[{{ loop.index }}]{{ m['content'] }}{% endfor %}"
    with pytest.raises(UserError, match="does not render a conversation turn by turn"):
        ollama_template(ChatFormat(numbered))


def test_a_role_the_template_leaves_out_has_no_branch():
    template = ollama_template(ChatFormat(MEMBERS["phi3-medium"].chat_template))  # it drops the system prompt
    assert '"system"' not in template and template.startswith('{{ range .Messages }}{{ if eq .Role "user" }}<|user|>')

"""The Phi family end to end: each member's tiny twin through the whole real pipeline, profiles read
from the model's config, each model's own chat format, and LoRA targets checked against the weights.

The twins are made offline (`prepare --twin NAME`); the Hub downloads use tests/fake_hub.py on
127.0.0.1 (only the network boundary is replaced). phi3-mini's twin is today's tiny model, whose
pipeline tests/test_e2e.py runs (the `finished_run` fixture); the four others run here.
"""

import json
import shutil

import pytest
from helpers import FakeHub, quiet, run_cli

from phi3e2e.chat_format import ChatFormat, chat_prompt, split_prompt
from phi3e2e.errors import UserError
from phi3e2e.infer.chat import ChatSession, GenerationOptions
from phi3e2e.project import Project
from phi3e2e.train.aml.job import AmlOptions
from phi3e2e.train.finetune import finetune
from phi3e2e.workflow.model_family import FAMILY, MEMBERS, family_member, linear_modules

NEW_TWINS = ["phi3-mini-128k", "phi3-medium", "phi3.5-mini", "phi4-mini"]
PHI3_LINEAR = ["down_proj", "gate_up_proj", "lm_head", "o_proj", "qkv_proj"]


@pytest.fixture(scope="session")
def twin_template(tmp_path_factory):
    """prepare --twin NAME into a project of its own, once per twin; copy it, don't modify it."""
    made = {}

    def make(name: str) -> Project:
        if name not in made:
            project = Project(tmp_path_factory.mktemp(f"twin-{name}"))
            result = run_cli("prepare", "--twin", name, project=project)  # as a user types it
            assert result.returncode == 0, result.stderr[-2000:]
            assert f"Model:   model-cache/tiny-{name}" in result.stdout
            made[name] = project
        return made[name]

    return make


def copy_project(template: Project, tmp_path) -> Project:
    root = tmp_path / "project"
    shutil.copytree(template.root, root, symlinks=True)
    return Project(root)


@pytest.mark.parametrize("name", NEW_TWINS)
@pytest.mark.e2e  # builds each twin (prepare --twin: weights and a tokenizer trained here)
def test_twin_keeps_what_changes_code_paths(twin_template, name):
    member = MEMBERS[name]
    model_dir = twin_template(name).model_cache / f"tiny-{name}"
    config = json.loads((model_dir / "config.json").read_text())
    real = member.config
    assert config["architectures"] == ["Phi3ForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] == member.head_size  # the real head size
    assert (config["num_attention_heads"] // config["num_key_value_heads"]
            == real["num_attention_heads"] // real["num_key_value_heads"])  # fmt: skip
    assert config.get("partial_rotary_factor", 1.0) == real.get("partial_rotary_factor", 1.0)
    assert config["tie_word_embeddings"] == real["tie_word_embeddings"]
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if real["rope_scaling"]:
        assert config["max_position_embeddings"] > config["original_max_position_embeddings"]  # longrope's path
        assert rope.get("rope_type", rope.get("type")) == "longrope"
        assert len(rope["short_factor"]) == len(rope["long_factor"]) == real["rope_scaling"]["factors"]
    else:
        assert config["max_position_embeddings"] == config["original_max_position_embeddings"]
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    template = (model_dir / "chat_template.jinja").read_text() if (model_dir / "chat_template.jinja").is_file() \
        else tokenizer_config["chat_template"]  # fmt: skip
    assert template == member.chat_template
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    assert {token["content"] for token in tokenizer["added_tokens"]} == set(member.special_tokens)
    # The profile comes from the config (the folder name says nothing): the twin's family member.
    expected = "phi3-mini-128k" if name == "phi3.5-mini" else name
    assert family_member(config).name == expected
    assert linear_modules(model_dir) == PHI3_LINEAR


@pytest.mark.parametrize("member", FAMILY, ids=lambda m: m.name)
def test_real_configs_pick_their_profile(member):
    expected = "phi3-mini-128k" if member.name == "phi3.5-mini" else member.name
    assert family_member(member.config).name == expected
    assert family_member({**member.config, "architectures": ["LlamaForCausalLM"]}) is None


@pytest.mark.parametrize("member", FAMILY, ids=lambda m: m.name)
def test_each_chat_template_renders_prompts_and_training_text(member):
    chat = ChatFormat(member.chat_template)
    text = chat.qa_text_template().format(Question="Is it fresh?", **{"Best Answer": "Roasted today."})
    prompt, answer = chat.split_prompt(text)
    assert answer == "Roasted today."
    assert prompt == chat.prompt([], "Is it fresh?")
    assert chat.last_user_turn(prompt) == "Is it fresh?"
    two_turns = chat.prompt([("Hi", "Hello!")], "Is it fresh?", system="Be brief.")
    assert two_turns.startswith(chat.render([("system", "Be brief."), ("user", "Hi")])) or "Be brief." not in two_turns
    assert two_turns.endswith(prompt) and "Hello!" in two_turns
    if member.name in ("phi3-mini", "phi3-mini-128k"):  # Phi-3's own template: the recipe's text, as before
        assert chat.is_phi3 and text.startswith("<|user|>\nIs it fresh?<|end|>\n<|assistant|>\n")
        assert chat.prompt([], "Is it fresh?") == chat_prompt([], "Is it fresh?")
        assert split_prompt(text) == (prompt, answer)
    if member.name == "phi4-mini":
        assert prompt == "<|user|>Is it fresh?<|end|><|assistant|>"  # no newline after the role tags
    if member.name == "phi3-medium":
        assert "Be brief." not in two_turns  # its template has no system turn


@pytest.mark.parametrize("name", NEW_TWINS)
@pytest.mark.e2e
def test_twin_runs_the_whole_pipeline(twin_template, tmp_path, name):
    """prepare --twin NAME -> LoRA -> merge -> int4 -> eval -> chat with all three forms; QLoRA and Azure ML
    dry-runs render and validate. A few training steps: the pipeline, not the quality, is under test."""
    project = copy_project(twin_template(name), tmp_path)
    member = MEMBERS[name]
    chat = ChatFormat(member.chat_template)
    result = run_cli("finetune", "--algo", "lora", "--run-name", "twin", "--set", "training.max_steps=12",
                     project=project)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = project.gen_model / "twin"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "succeeded" and record["profile"] == "tiny"
    assert record["settings"]["data"]["text_template"] == chat.qa_text_template()
    assert (run_dir / "merged" / "model.safetensors").is_file() and (run_dir / "adapter").is_dir()
    genai = json.loads((run_dir / "onnx-int4" / "genai_config.json").read_text())["model"]
    config = json.loads((project.model_cache / f"tiny-{name}" / "config.json").read_text())
    assert genai["type"] == "phi3" and genai["decoder"]["head_size"] == member.head_size
    assert genai["decoder"]["num_key_value_heads"] == config["num_key_value_heads"]
    # finetune ends with eval: held-out losses of base and fine-tuned, int4 and merged; the int4 build keeps at
    # least 80% of the merged model's gain (issue 20: measured ~100% on every twin after the LM head fix).
    assert (run_dir / "eval.json").is_file(), result.stdout[-2000:]  # its "Eval skipped: ..." line says why
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert set(evaluation["losses"]) == {"int4", "merged"}
    keeps = evaluation["int4_keeps"]
    assert keeps["merged_change"] < -0.5 and keeps["share"] >= 0.8, keeps
    assert "warning" not in result.stdout

    answered = run_cli("chat", "--prompt", "Where is your roastery?", "--max-length", "8", "--min-length", "2",
                       "--json", project=project)  # fmt: skip
    assert answered.returncode == 0, answered.stderr[-2000:]
    answer = json.loads(answered.stdout.strip().splitlines()[-1])
    # The text of a 12-step twin may be all blank tokens (stripped to ""): check the structure, not the words.
    assert answer["tokens"] >= 2 and answer["finish_reason"] in ("stop", "length")
    for form in ("merged", "adapter"):  # in-process: the same ChatSession the command uses, without a new Python
        session = ChatSession(run_dir / form, GenerationOptions(max_new_tokens=8, min_new_tokens=2))
        assert session.chat_format.template == member.chat_template, form
        assert session.ask("Where is your roastery?").tokens >= 2, form

    for algo, target in (("qlora", "local"), ("qlora", "aml"), ("lora", "aml")):
        aml = AmlOptions(compute="gpu-a100") if target == "aml" else None
        dry = finetune(project, algo=algo, target=target, dry_run=True, run_name=f"{algo}-{target}",
                       aml_options=aml, say=quiet)  # fmt: skip
        assert dry.record.status == "dry-run" and dry.record.profile == "tiny"
        assert dry.record.settings.data.text_template == chat.qa_text_template()


def test_chat_session_speaks_the_models_own_format(twin_template, finished_run):
    """The int4 folder carries the model's chat template; the session renders through it."""
    from phi3e2e.infer.chat import ChatSession
    from phi3e2e.infer.engines.genai import GenaiEngine

    _, run_dir = finished_run
    session = ChatSession(run_dir / "onnx-int4", engine=GenaiEngine(run_dir / "onnx-int4"))
    assert session.chat_format.prompt([], "Hi") == chat_prompt([], "Hi")  # Phi-3-mini's format, as before
    phi4 = ChatFormat.of_folder(twin_template("phi4-mini").model_cache / "tiny-phi4-mini")
    assert phi4.template == MEMBERS["phi4-mini"].chat_template


def test_an_unknown_twin_is_one_line(tmp_path):
    result = run_cli("prepare", "--twin", "phi5", project=Project(tmp_path))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "phi4-mini" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "model-cache").exists()


def test_a_target_module_the_model_lacks_is_refused_before_olive(tiny_project):
    result = run_cli("finetune", "--algo", "lora", "--set", "lora.target_modules=[q_proj, o_proj]",
                     project=tiny_project)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: lora.target_modules: q_proj not in ")
    assert f"its linear modules: {', '.join(PHI3_LINEAR)}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not tiny_project.gen_model.exists() or list(tiny_project.gen_model.iterdir()) == []


@pytest.fixture
def llama_model(tiny_template, tmp_path):
    """A model outside the family: a tiny random Llama with the tiny model's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "tiny-llama"
    config = LlamaConfig(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_template.model_cache / "tiny-phi3" / name).is_file():
            shutil.copy(tiny_template.model_cache / "tiny-phi3" / name, folder / name)
    return folder


def test_a_model_outside_the_family_needs_its_own_targets(tiny_project, llama_model):
    with pytest.raises(UserError) as refused:
        finetune(tiny_project, algo="lora", target="local", model=str(llama_model), dry_run=True, say=quiet)
    message = str(refused.value)
    assert "qkv_proj not in" in message and "LlamaForCausalLM" in message
    assert "its linear modules: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in message
    assert "microsoft/Phi-4-mini-instruct" in message  # names the supported ones
    result = finetune(tiny_project, algo="lora", target="local", model=str(llama_model), dry_run=True,
                      set_args=["lora.target_modules=[q_proj, v_proj]"], run_name="llama", say=quiet)  # fmt: skip
    assert result.record.profile == "other"
    assert json.loads(result.config_file.read_text())["passes"]["finetune"]["target_modules"] == ["q_proj", "v_proj"]


@pytest.mark.parametrize("member", FAMILY[1:], ids=lambda m: m.name)
@pytest.mark.e2e  # builds each twin to publish on the stand-in Hub
def test_prepare_model_downloads_each_member(twin_template, tmp_path, member):
    """`prepare --model <hub id>` from a stand-in Hub holding the member's files as its repo lays them out
    (sharded safetensors with an index, tokenizer.model, remote code) plus files it must skip."""
    files = tmp_path / "hub-files"
    shutil.copytree(twin_template(member.name).model_cache / f"tiny-{member.name}", files)
    (files / "phi3e2e-tiny.json").unlink()  # as published: nothing says "tiny"
    shard = "model-00001-of-00001.safetensors"
    (files / "model.safetensors").rename(files / shard)
    weight_map = {key: shard for key in json.loads(_header(files / shard)) if key != "__metadata__"}
    (files / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (files / "tokenizer.model").write_bytes(b"sentencepiece model")
    (files / "modeling_phi3.py").write_text("# remote code\n")
    (files / "pytorch_model.bin").write_bytes(b"old duplicate")
    (files / "onnx").mkdir()
    (files / "onnx" / "model.onnx").write_bytes(b"not used")
    hub = FakeHub(member.hub_id, files)
    try:
        project = Project(tmp_path / "project")
        project.root.mkdir()
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": ""}
        result = run_cli("prepare", "--model", member.hub_id, project=project, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        downloaded = set(hub.downloaded())
    finally:
        hub.close()
    assert {shard, "model.safetensors.index.json", "tokenizer.json", "tokenizer.model", "modeling_phi3.py"} <= downloaded
    assert "pytorch_model.bin" not in downloaded and "onnx/model.onnx" not in downloaded
    dry = run_cli("finetune", "--dry-run", "--run-name", "dry", project=project)
    assert dry.returncode == 0, dry.stderr[-2000:]
    record = json.loads((project.gen_model / "dry" / "run.json").read_text())
    assert record["profile"] == ("phi3-mini-128k" if member.name == "phi3.5-mini" else member.name)
    assert record["settings"]["data"]["text_template"] == ChatFormat(member.chat_template).qa_text_template()


def _header(path) -> bytes:
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        return f.read(length)

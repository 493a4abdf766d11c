"""User story: after a fine-tune, chat with each form of the model the run left behind.

Real engines on the tiny model from the `finished_run` fixture (onnxruntime-genai for the
int4 model, transformers for the merged model, transformers + peft for the adapter); nothing
is replaced and there is no network.
"""

import json
import shutil

import pytest
from helpers import run_cli

from phi3e2e.chat_format import chat_prompt
from phi3e2e.cli.chat import EMPTY_ANSWER
from phi3e2e.errors import UserError
from phi3e2e.infer.chat import ChatSession, GenerationOptions

FORMS = {"onnx-int4": "onnx", "merged": "merged", "adapter": "adapter"}
QUESTION = "How long does shipping take?"


@pytest.mark.parametrize("folder", FORMS)
def test_each_model_form_answers_in_the_chat_format(finished_run, folder):
    _, run_dir = finished_run
    # The tiny model's greedy first token is a near tie that on some CPUs is the end of turn: ask for 8 tokens.
    options = GenerationOptions(max_new_tokens=16, min_new_tokens=8)
    session = ChatSession(run_dir / folder, options, system="Answer briefly.")
    assert session.form == FORMS[folder]
    streamed = []
    answer = session.ask(QUESTION, on_text=streamed.append)
    assert 8 <= answer.tokens <= 16
    assert answer.text and "".join(streamed).strip() == answer.text
    # The prompt is exactly Phi-3's chat format, system prompt included.
    assert answer.prompt_tokens == len(session.engine.encode(chat_prompt([], QUESTION, "Answer briefly.")))
    assert session.turns == [(QUESTION, answer.text)]


def test_adapter_on_its_base_answers_like_the_merged_model_and_unlike_the_base(finished_run):
    project, run_dir = finished_run
    options = GenerationOptions(max_new_tokens=8, min_new_tokens=8)
    merged = ChatSession(run_dir / "merged", options).ask(QUESTION)
    adapter = ChatSession(run_dir / "adapter", options).ask(QUESTION)
    base = ChatSession(project.model_cache / "tiny-phi3", options).ask(QUESTION)
    assert adapter.text == merged.text
    assert base.text != merged.text  # the adapter really was applied


def test_adapter_whose_base_moved_needs_base(finished_run, tmp_path):
    project, run_dir = finished_run
    adapter = tmp_path / "adapter"
    shutil.copytree(run_dir / "adapter", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (adapter / "adapter_config.json").write_text(json.dumps(config))

    result = run_cli("chat", "--model", str(adapter), "--prompt", "hi", project=project)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--base" in result.stderr and "adapter_config.json" in result.stderr

    base = project.model_cache / "tiny-phi3"
    result = run_cli("chat", "--model", str(adapter), "--base", str(base), "--prompt", "hi", "--max-length", "8",
                     "--min-length", "4", project=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_an_answer_that_ends_at_once_is_explained_not_a_blank_line(finished_run, tmp_path):
    project, run_dir = finished_run
    # A stand-in for a model that ends its turn at once: every token id counts as end of turn.
    model = tmp_path / "ends-at-once"
    shutil.copytree(run_dir / "onnx-int4", model)
    config = json.loads((model / "genai_config.json").read_text())
    config["model"]["eos_token_id"] = list(range(config["model"]["vocab_size"]))
    (model / "genai_config.json").write_text(json.dumps(config))

    result = run_cli("chat", "--model", str(model), "--prompt", QUESTION, project=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "\n"
    assert result.stderr.splitlines() == [EMPTY_ANSWER] and "--min-length" in EMPTY_ANSWER

    # Where the model does say something, there is no such notice.
    result = run_cli("chat", "--prompt", QUESTION, "--max-length", "6", "--min-length", "6", project=project)
    assert result.returncode == 0 and result.stdout.strip() and EMPTY_ANSWER not in result.stderr


@pytest.mark.parametrize("folder", ["onnx-int4", "merged"])
def test_an_answer_cut_at_the_length_limit_says_so(finished_run, folder):
    project, run_dir = finished_run
    # min = max: the end of turn is held back until the limit, so the answer is cut there.
    cut = ChatSession(run_dir / folder, GenerationOptions(max_new_tokens=5, min_new_tokens=5)).ask(QUESTION)
    assert (cut.finish_reason, cut.tokens) == ("length", 5)
    result = run_cli("chat", "--model", str(run_dir / folder), "--prompt", QUESTION, "--max-length", "5",
                     "--min-length", "5", "--json", project=project)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["finish_reason"] == "length"
    result = run_cli("chat", "--model", str(run_dir / folder), "--prompt", QUESTION, "--max-length", "5",
                     "--min-length", "5", project=project)  # fmt: skip
    assert result.stderr.splitlines()[-1].startswith("[cut off at the length limit (5 tokens")


def test_an_answer_the_model_ended_reports_stop(finished_run, tmp_path):
    project, run_dir = finished_run
    # A stand-in for a model that ends its turn at once (every token id is an end of turn): structure, not text.
    model = tmp_path / "ends-at-once"
    shutil.copytree(run_dir / "onnx-int4", model)
    config = json.loads((model / "genai_config.json").read_text())
    config["model"]["eos_token_id"] = list(range(config["model"]["vocab_size"]))
    (model / "genai_config.json").write_text(json.dumps(config))
    result = run_cli("chat", "--model", str(model), "--prompt", QUESTION, "--json", project=project)
    answer = json.loads(result.stdout)
    assert (answer["finish_reason"], answer["text"], answer["stopped"]) == ("stop", "", False)


def test_min_length_above_max_length_is_a_user_error(finished_run):
    project, _ = finished_run
    result = run_cli("chat", "--prompt", "hi", "--max-length", "4", "--min-length", "5", project=project)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --min-length 5 is more than --max-length 4"]


def test_long_conversation_drops_oldest_turns_to_stay_within_context(finished_run):
    _, run_dir = finished_run
    session = ChatSession(run_dir / "onnx-int4", GenerationOptions(max_new_tokens=16, min_new_tokens=16))
    # Pretend a small context so a few turns overflow it (the tiny model's real one is 4096).
    session.context_length = 120
    notices = []
    for turn in range(6):
        answer = session.ask(f"Question {turn}: how long does shipping to Lisbon take?", notice=notices.append)
        assert answer.prompt_tokens + 16 <= 120
    assert notices and all("oldest turn dropped" in n for n in notices)
    assert 1 <= len(session.turns) < 6
    assert session.turns[-1][0].startswith("Question 5")


def test_prompt_longer_than_the_context_is_a_clear_error(finished_run):
    project, run_dir = finished_run
    result = run_cli("chat", "--model", str(run_dir / "onnx-int4"), "--prompt", "coffee " * 100,
                     "--max-length", "4050", project=project)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "tokens" in lines[0] and "--max-length" in lines[0]


def test_a_question_that_is_not_utf8_is_a_clear_error(finished_run):
    project, run_dir = finished_run
    result = run_cli("chat", "--model", str(run_dir / "onnx-int4"), "--prompt", "caf\udcff", project=project)  # b"caf\xff"
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not valid UTF-8" in lines[0] and "byte 0xff at character 3" in lines[0]


def test_json_prints_one_object_per_answer(finished_run):
    project, _ = finished_run
    result = subprocess_chat(project, "--json", "--max-length", "20", "--min-length", "5",
                             stdin="Do you ship?\n\nDo you ship?\n")
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert len(answers) == 2  # the empty line is not a question
    for answer in answers:
        assert answer["text"]
        assert 5 <= answer["tokens"] <= 20
        assert answer["tokens_per_second"] > 0
        assert 0 < answer["first_token_seconds"] <= answer["seconds"]
        assert answer["prompt_tokens"] > 0 and answer["form"] == "onnx" and answer["stopped"] is False
        assert answer["finish_reason"] in ("stop", "length")
    # Each line is answered on its own, as a batch script expects: the same question, the same prompt.
    assert answers[1]["prompt_tokens"] == answers[0]["prompt_tokens"]
    talked = subprocess_chat(project, "--json", "--conversation", "--max-length", "20", "--min-length", "5",
                             stdin="Do you ship?\nDo you ship?\n")
    turns = [json.loads(line) for line in talked.stdout.strip().splitlines()]
    assert turns[1]["prompt_tokens"] > turns[0]["prompt_tokens"]  # --conversation: the second saw the first turn


def test_json_reports_each_failed_question_as_an_object_and_exits_non_zero(finished_run):
    """A batch script reads one JSON object per question: a question too long for the context, or not UTF-8, is an
    error object in its place, the others are answered, and the exit code says something failed."""
    import os
    import subprocess
    import sys

    project, _ = finished_run
    stdin = b"Do you ship?\n" + b"coffee " * 5000 + b"\ncaf\xff\nWhere is your roastery?\n"
    result = subprocess.run([sys.executable, "-m", "phi3e2e", "chat", "--json", "--max-length", "8"], input=stdin,
                            capture_output=True, env=dict(os.environ, PHI3E2E_PROJECT_DIR=str(project.root)), timeout=300)
    assert result.returncode == 2, result.stderr
    objects = [json.loads(line) for line in result.stdout.decode().strip().splitlines()]
    assert [("error" in o) for o in objects] == [False, True, True, False]
    assert "tokens" in objects[1]["error"]["message"] and "not valid UTF-8" in objects[2]["error"]["message"]
    assert b"Traceback" not in result.stderr

    too_long = subprocess_chat(project, "--json", "--prompt", "coffee " * 5000, stdin="")
    assert too_long.returncode == 2 and "error" in json.loads(too_long.stdout)


def test_ctrl_c_stops_the_answer_not_the_session(finished_run):
    _, run_dir = finished_run
    session = ChatSession(run_dir / "onnx-int4", GenerationOptions(max_new_tokens=32, min_new_tokens=32))

    seen = []

    def press_ctrl_c_after_three(piece):
        seen.append(piece)
        if len(seen) == 3:
            raise KeyboardInterrupt  # where a terminal's SIGINT lands: inside the streaming loop

    stopped = session.ask(QUESTION, on_text=press_ctrl_c_after_three)
    assert stopped.stopped and stopped.tokens < 32 and stopped.finish_reason == "interrupted"
    follow_up = session.ask("And to Porto?")
    assert not follow_up.stopped and follow_up.tokens == 32
    assert len(session.turns) == 2


def test_cuda_without_cuda_is_a_clear_message(finished_run):
    import onnxruntime_genai as og

    if og.is_cuda_available():
        pytest.skip("this machine has CUDA")
    project, _ = finished_run
    result = run_cli("chat", "--device", "cuda", "--prompt", "hi", project=project)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        (
            "error: --device cuda: this onnxruntime-genai has no CUDA support (install onnxruntime-genai-cuda "
            "on a machine with an NVIDIA GPU), or use --device cpu"
        )
    ]


def test_a_run_folder_chats_with_its_int4_model(finished_run):
    project, run_dir = finished_run
    result = run_cli("chat", "--model", str(run_dir), "--prompt", QUESTION, "--json", "--max-length", "8",
                     project=project)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["form"] == "onnx"


def test_too_small_a_context_for_the_answer_is_a_user_error(finished_run):
    _, run_dir = finished_run
    session = ChatSession(run_dir / "onnx-int4", GenerationOptions(max_new_tokens=5000))
    with pytest.raises(UserError, match="lower --max-length"):
        session.ask("hi")


def subprocess_chat(project, *args, stdin):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PHI3E2E_PROJECT_DIR=str(project.root))
    return subprocess.run([sys.executable, "-m", "phi3e2e", "chat", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=300)


def test_threads_override_gives_the_same_greedy_answer(finished_run):
    project, _ = finished_run
    answers = []
    for extra in ([], ["--threads", "1"]):
        result = run_cli("chat", "--json", "--max-length", "12", "--min-length", "12", "--prompt",
                         "Do you ship to Canada?", *extra, project=project)
        assert result.returncode == 0, result.stderr
        answers.append(json.loads(result.stdout)["text"])
    assert answers[0] and answers[0] == answers[1]


def test_interactive_session_says_it_is_loading_then_chats_then_leaves(finished_run):
    project, run_dir = finished_run
    result = subprocess_chat(project, "--max-length", "6", "--min-length", "6",
                             stdin="Where is your roastery?\n/exit\nnever asked\n")
    assert result.returncode == 0, result.stderr
    model = run_dir / "onnx-int4"
    status = result.stderr.splitlines()
    assert status[0] == f"Loading {model} ..."
    assert status[1].startswith(f"Chatting with {model} (onnx, cpu)")
    # One question answered after the prompts, then /exit: the third line is never read.
    assert result.stdout.count("phi3> ") == 1 and result.stdout.count("you> ") == 2
    answer = result.stdout.split("phi3> ", 1)[1].split("you> ", 1)[0]  # all of it: the tiny model may start a line
    assert answer.strip()

"""`phi3e2e serve` as an app developer meets it: the official `openai` client against the real server.

One server per module (the real CLI in a subprocess, on a free loopback port, with an API key)
on a copy of the `finished_run` project. The tiny model's answers are gibberish, so the tests
check structure and consistency (usage counts, finish reasons, the same greedy answer alone and
under load), never the words. `min_tokens` (vLLM's extension, which the server accepts) holds
back the end of turn, so a test can count on an answer's length.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from helpers import API_KEY, Server, health, run_cli

from phi3e2e.project import Project


@pytest.fixture(scope="module")
def served(finished_run, tmp_path_factory):
    """(server, run name) on a copy of the finished run's project (the server may write a cache there)."""
    original, run_dir = finished_run
    project = Project(tmp_path_factory.mktemp("serve") / "project")
    shutil.copytree(original.root, project.root, symlinks=True)
    fp32_activations(project.gen_model / run_dir.name / "onnx-int4")
    server = Server(project, "--api-key", API_KEY)
    yield server, run_dir.name
    assert server.stop() in (0, 130, -signal.SIGINT), "".join(server.output)
    assert "Traceback" not in "".join(server.output)


def fp32_activations(onnx_dir):
    """The int4 MatMuls with fp32 activations (accuracy level 1), not int8 ones (4, the CPU default).

    With int8 activations a batch's logits differ from one answer's in the last digits (onnxruntime takes
    another kernel path for several rows) and can flip a greedy token (seen: a 0.2 logit margin); with fp32
    ones batched and unbatched decoding give the same tokens, so the tests can compare answers exactly.
    """
    import onnx

    model = onnx.load(onnx_dir / "model.onnx", load_external_data=False)
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "MatMulNBits" and attribute.name == "accuracy_level":
                attribute.i = 1
    onnx.save(model, onnx_dir / "model.onnx")


@pytest.fixture(scope="module")
def client(served):
    server, _ = served
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def ask(client, model, question="How long does shipping take?", **options):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], **options)


def exactly(n: int) -> dict:
    """An answer of exactly n tokens: greedy, the end of turn held back until the limit."""
    return {"max_tokens": n, "temperature": 0, "extra_body": {"min_tokens": n}}


def test_models_lists_the_run_and_the_base_model_built_like_it(served, client):
    _, run = served
    models = {model.id: model for model in client.models.list()}
    assert run in models
    base = models[run].model_extra["phi3e2e_base"]
    assert base.startswith("base/") and base in models
    assert client.models.retrieve(run).id == run


def test_a_plain_answer_has_consistent_usage_and_finish_reason(served, client):
    _, run = served
    reply = ask(client, run, max_tokens=24, temperature=0)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == run
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens == 24 if choice.finish_reason == "length" else usage.completion_tokens < 24

    long = ask(client, run, **exactly(12))
    assert long.choices[0].finish_reason == "length" and long.usage.completion_tokens == 12
    assert long.choices[0].message.content  # twelve tokens of something


def test_a_streamed_answer_is_the_plain_answer_in_pieces(served, client):
    _, run = served
    plain = ask(client, run, **exactly(16)).choices[0].message.content
    chunks = list(ask(client, run, stream=True, stream_options={"include_usage": True}, **exactly(16)))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == plain
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert len({chunk.id for chunk in chunks}) == 1


def test_stop_cuts_the_answer_before_the_stop_sequence(served, client):
    _, run = served
    whole = ask(client, run, **exactly(20)).choices[0].message.content
    stop = whole[len(whole) // 2 : len(whole) // 2 + 3]  # three characters from the middle of the greedy answer
    assert stop.strip(), whole
    cut = ask(client, run, stop=[stop], **exactly(20))
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == whole[: whole.index(stop)]
    stream = ask(client, run, stop=stop, stream=True, **exactly(20))
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert streamed == whole[: whole.index(stop)]


def test_a_seed_repeats_a_sampled_answer(served, client):
    _, run = served
    sampled = [ask(client, run, max_tokens=16, temperature=1.0, top_p=0.9, seed=11, extra_body={"min_tokens": 16})
               for _ in range(2)]
    assert sampled[0].choices[0].message.content == sampled[1].choices[0].message.content


def test_sixteen_parallel_requests_from_eight_clients_get_their_own_answers(served):
    server, run = served
    clients = [openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
               for _ in range(8)]
    questions = [f"Question {i}: how long does shipping to zone {i} take?" for i in range(8)]
    alone = [ask(clients[0], run, question, **exactly(24)).choices[0].message.content for question in questions]

    def one(i: int) -> str:
        client, question = clients[i % 8], questions[i % 8]
        if i < 8:
            return ask(client, run, question, **exactly(24)).choices[0].message.content
        stream = ask(client, run, question, stream=True, **exactly(24))
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream)

    before = health(server)
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(one, range(16)))
    assert answers == alone + alone  # greedy: under load every client gets exactly its own answer
    assert health(server)["answers_batched"] - before["answers_batched"] >= 8  # and they decoded together
    assert health(server)["largest_batch"] > 4  # more than onnxruntime-genai's own Engine takes


def decoded_tokens(engine, decode, rows: int) -> list[list[int]]:
    """Each row's token ids from a BatchDecode or SingleDecode, until every row ended; then it is closed."""
    got, ended = [[] for _ in range(rows)], set()
    while len(ended) < rows:
        for row, token, _text in decode.step():
            if token is None or engine.is_end(token):
                ended.add(row)
            elif row not in ended:
                got[row].append(int(token))
    decode.close()
    return got


def test_sampled_and_greedy_answers_sent_together_each_keep_their_own_settings(served):
    """Through the server: answers sent together batch, each with its own temperature and seed. (Whether two
    requests land in one batch depends on their arrival, within GATHER_S, so seeds are compared exactly only in
    the decode-level test above.)"""
    server, run = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)

    def sampled(seed):
        options = {"max_tokens": 16, "extra_body": {"min_tokens": 16}, "temperature": 0}  # greedy without a seed
        if seed is not None:
            options |= {"temperature": 1.0, "top_p": 0.95, "seed": seed}
        return ask(client, run, "Which roast is darkest?", **options).choices[0].message.content

    before = health(server)["answers_batched"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(sampled, [5, 6, None, None]))
    assert health(server)["answers_batched"] - before >= 2
    greedy = sampled(None)
    assert together[2] == together[3] == greedy  # greedy: as alone, whatever shares its batch
    assert greedy not in together[:2] and together[0] != together[1]  # sampled at temperature 1, each its own draw


def test_a_batch_gives_the_tokens_each_answer_gets_on_its_own_generator(served):
    """The batched path (one og.Generator, a row per answer) against the unbatched one, token ids, prompts of
    different lengths (padded), each answer with its own max_tokens and min_tokens."""
    from phi3e2e.chat_format import ChatFormat
    from phi3e2e.infer.engines.genai import GenaiEngine
    from phi3e2e.infer.engines.genai_batch import BatchDecode, SingleDecode
    from phi3e2e.infer.generation import GenerationOptions

    server, run = served
    model_dir = server.project.gen_model / run / "onnx-int4"
    engine, chat_format = GenaiEngine(model_dir, huge_pages=False), ChatFormat.of_folder(model_dir)
    questions = ["Hi", "How long does shipping take?", "Which beans are roasted darkest, and why?", "Zone 4?"]
    prompts = [engine.encode(chat_format.messages_prompt([("user", question)])) for question in questions]
    assert len({len(prompt) for prompt in prompts}) > 1  # the batch pads the shorter prompts
    lengths = [GenerationOptions(max_new_tokens=n, min_new_tokens=n) for n in (12, 20, 6, 16)]
    lengths[0] = GenerationOptions(max_new_tokens=20)  # may end at its end of turn

    def tokens(decode, rows: int) -> list[list[int]]:
        return decoded_tokens(engine, decode, rows)

    alone = [tokens(SingleDecode(engine, prompt, options), 1)[0] for prompt, options in zip(prompts, lengths)]
    assert tokens(BatchDecode(engine, list(zip(prompts, lengths))), 4) == alone
    assert [len(answer) for answer in alone[1:]] == [20, 6, 16]


def test_a_batch_takes_more_than_four_answers_each_sampling_with_its_own_settings(served):
    """Seven answers in one batch (onnxruntime-genai's Engine took four at most): the greedy ones are their lone
    answers; a seeded sampled one repeats whatever else shares its batch, and another seed samples another."""
    from phi3e2e.chat_format import ChatFormat
    from phi3e2e.infer.engines.genai import GenaiEngine
    from phi3e2e.infer.engines.genai_batch import BatchDecode, SingleDecode
    from phi3e2e.infer.generation import GenerationOptions

    server, run = served
    model_dir = server.project.gen_model / run / "onnx-int4"
    engine, chat_format = GenaiEngine(model_dir, huge_pages=False), ChatFormat.of_folder(model_dir)
    questions = ["Hi", "Zone 4?", "Do you ship to Canada?", "How long does shipping take?", "Refunds?",
                 "Which beans are roasted darkest, and why?"]
    prompts = [engine.encode(chat_format.messages_prompt([("user", question)])) for question in questions]
    greedy = GenerationOptions(max_new_tokens=10, min_new_tokens=10)
    sampled = {seed: GenerationOptions(max_new_tokens=16, min_new_tokens=16, temperature=1.0, top_p=0.9, seed=seed)
               for seed in (11, 12)}

    def answers(decode, rows: int) -> list[list[int]]:
        return decoded_tokens(engine, decode, rows)

    alone = [answers(SingleDecode(engine, prompt, greedy), 1)[0] for prompt in prompts]
    wide = answers(BatchDecode(engine, [(prompts[3], sampled[11])] + [(prompt, greedy) for prompt in prompts]), 7)
    assert wide[1:] == alone and all(len(answer) == 10 for answer in alone)
    small = answers(BatchDecode(engine, [(prompts[0], greedy), (prompts[3], sampled[11])]), 2)
    assert small[1] == wide[0] and len(wide[0]) == 16
    other = answers(BatchDecode(engine, [(prompts[3], sampled[12]), (prompts[0], greedy)]), 2)
    assert other[0] != wide[0]


def test_which_answers_may_share_a_batch(served):
    """Long prompts go alone (a batch pads every row to its longest prompt), so does a prompt that ends in the pad
    token (it would be masked), and a batch's longest prompt + most new tokens must fit every row's context."""
    from phi3e2e.infer.engines.genai import GenaiEngine
    from phi3e2e.infer.engines.genai_batch import PROMPT_TOKENS, BatchDecode, can_join
    from phi3e2e.infer.generation import GenerationOptions

    server, run = served
    engine = GenaiEngine(server.project.gen_model / run / "onnx-int4", huge_pages=False)
    short, options = [17, 5, 9], GenerationOptions(max_new_tokens=8)
    assert can_join(engine, [(short, options)] * 16)
    long = [17] * (PROMPT_TOKENS // 2)
    assert can_join(engine, [(long, options), (short, options)])
    assert not can_join(engine, [(long, options), (short, options), (short, options)])  # 3 rows x 1024 > 2048
    assert not can_join(engine, [(short, options), (short[:-1] + [engine.pad_token_id], options)])
    room = engine.context_length - len(short)  # the most new tokens a 3-token prompt has room for
    assert can_join(engine, [(short, options), (short, GenerationOptions(max_new_tokens=room))])
    assert not can_join(engine, [(short, options), (short, GenerationOptions(max_new_tokens=room + 1))])
    with pytest.raises(ValueError):
        BatchDecode(engine, [(short, options)])  # one answer takes the lone path


def test_errors_are_openai_errors_with_the_right_status(served, client):
    _, run = served
    with pytest.raises(openai.NotFoundError) as unknown:
        ask(client, "no-such-run", max_tokens=4)
    assert unknown.value.status_code == 404 and unknown.value.code == "model_not_found"

    with pytest.raises(openai.BadRequestError) as negative:
        ask(client, run, max_tokens=-5)
    assert negative.value.status_code == 400 and negative.value.param == "max_tokens"

    with pytest.raises(openai.BadRequestError) as too_long:
        ask(client, run, "coffee " * 5000, max_tokens=4)
    assert too_long.value.code == "context_length_exceeded" and "4096 tokens" in too_long.value.message

    with pytest.raises(openai.BadRequestError):
        ask(client, run, max_tokens=4, temperature=3)
    with pytest.raises(openai.BadRequestError) as tools:
        ask(client, run, max_tokens=4, tools=[{"type": "function", "function": {"name": "f"}}])
    assert tools.value.param == "tools"

    with pytest.raises(openai.BadRequestError) as huge_seed:
        ask(client, run, max_tokens=4, seed=2**70)
    assert huge_seed.value.param == "seed"
    assert ask(client, run, max_tokens=4, temperature=1, seed=2**40).choices[0].finish_reason in ("stop", "length")

    # JSON can carry a lone surrogate, which no tokenizer takes (the openai client cannot even send it)
    connection = http.client.HTTPConnection("127.0.0.1", served[0].port, timeout=30)
    body = '{"model": "%s", "max_tokens": 4, "messages": [{"role": "user", "content": "caf\\ud800"}]}' % run
    connection.request("POST", "/v1/chat/completions", body=body,
                       headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    response = connection.getresponse()
    error = json.loads(response.read())["error"]
    assert response.status == 400 and error["param"] == "messages.0.content" and "lone surrogate" in error["message"]


def test_text_completions_continue_a_prompt_plain_and_streamed(served, client):
    _, run = served
    plain = client.completions.create(model=run, prompt="Shipping takes", **exactly(10))
    assert plain.object == "text_completion" and plain.id.startswith("cmpl-")
    assert plain.choices[0].finish_reason == "length" and plain.usage.completion_tokens == 10
    stream = client.completions.create(model=run, prompt=["Shipping takes"], stream=True,
                                       stream_options={"include_usage": True}, **exactly(10))
    chunks = list(stream)
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == plain.choices[0].text
    assert chunks[-1].usage.completion_tokens == 10
    assert client.completions.create(model=run, prompt="Hi", temperature=0).usage.completion_tokens <= 16  # OpenAI's
    with pytest.raises(openai.BadRequestError) as two:
        client.completions.create(model=run, prompt=["one", "two"], max_tokens=4)
    assert two.value.param == "prompt"


def test_an_unknown_path_is_a_404_that_names_the_endpoints(served):
    server, _ = served
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", "/v1/embeddings", headers={"Authorization": f"Bearer {API_KEY}"})
    response = connection.getresponse()
    error = json.loads(response.read())["error"]
    assert response.status == 404 and set(error) == {"message", "type", "param", "code"}
    assert "GET /v1/embeddings" in error["message"] and "POST /v1/chat/completions" in error["message"]


def test_each_request_is_one_log_line_and_quiet_unbatched_serve_gives_the_same_answers(served, client):
    server, run = served
    batched = ask(client, run, "Which roast is darkest?", **exactly(8)).choices[0].message.content
    time.sleep(0.2)  # the server's output arrives through a pipe
    line = [line for line in server.output if line.startswith("POST /v1/chat/completions 200")][-1]
    assert f"model={run} tokens=8 " in line and line.rstrip().endswith("s"), line

    quiet = Server(server.project, "--api-key", API_KEY, "--quiet", "--max-batch", "1")
    try:
        unbatched = openai.OpenAI(base_url=quiet.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
        assert ask(unbatched, run, "Which roast is darkest?", **exactly(8)).choices[0].message.content == batched
        assert health(quiet)["answers_batched"] == 0
    finally:
        assert quiet.stop() in (0, 130, -signal.SIGINT)
    assert not any(line.startswith(("POST ", "GET ")) for line in quiet.output), quiet.output


def test_every_request_needs_the_api_key(served):
    server, _ = served
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="not-the-key", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    for path in ("/", "/health", "/v1/models"):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 401 and response.getheader("WWW-Authenticate"), path
        assert "error" in json.loads(response.read())


def test_a_rebound_host_name_or_another_sites_page_is_refused(served):
    """DNS rebinding: a page on attacker.example resolved to 127.0.0.1 sends that Host (and its Origin)."""
    server, _ = served
    key = {"Authorization": f"Bearer {API_KEY}"}
    for headers, status, code in (({"Host": f"attacker.example:{server.port}"}, 421, "host_not_allowed"),
                                  ({"Origin": "http://attacker.example"}, 403, "origin_not_allowed")):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.putrequest("GET", "/v1/models", skip_host="Host" in headers)
        for name, value in {**key, **headers}.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == status and json.loads(response.read())["error"]["code"] == code
    assert any(line.startswith("refused: host not allowed") for line in server.output)


def test_a_too_large_body_is_refused_before_it_is_read(served):
    server, run = served
    body = json.dumps({"model": run, "messages": [{"role": "user", "content": "x" * (2 << 20)}]})
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", "/v1/chat/completions", body=body,
                       headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "body_too_large"


def test_a_client_that_goes_away_mid_stream_stops_its_generation(served):
    server, run = served
    before = health(server)
    body = json.dumps({"model": run, "messages": [{"role": "user", "content": "Tell me everything."}], "stream": True,
                       "max_tokens": 4000, "min_tokens": 4000})
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", "/v1/chat/completions", body=body,
                       headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    events = [response.readline() for _ in range(6)]  # a few tokens' events: the answer is under way
    assert all(line.startswith(b"data: ") for line in events[::2]), events
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()

    deadline = time.monotonic() + 20
    while (now := health(server))["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert now["running"] == 0 and now["answers_cancelled"] == before["answers_cancelled"] + 1
    assert now["tokens_generated"] - before["tokens_generated"] < 4000  # stopped, not run to its end
    time.sleep(0.2)  # the server's output arrives through a pipe
    gone = [line for line in server.output if "client went away" in line]
    assert len(gone) == 1 and gone[0].startswith(f"POST /v1/chat/completions 200 model={run} "), gone
    assert not any("socket.send()" in line for line in server.output)


def test_serve_refuses_an_open_address_without_a_key_and_a_port_in_use(served):
    result = run_cli("serve", "--host", "0.0.0.0")
    assert result.returncode == 2 and result.stderr.strip().startswith("error: --host 0.0.0.0")
    assert "--api-key" in result.stderr and len(result.stderr.strip().splitlines()) == 1

    server, _ = served  # its port is taken
    taken = run_cli("serve", "--port", str(server.port), project=server.project)
    assert taken.returncode == 2, taken.stderr
    assert f":{server.port}: already in use" in taken.stderr and "Traceback" not in taken.stderr


def test_models_load_on_first_use_within_the_memory_budget(finished_run, tmp_path):
    from phi3e2e.serve.catalog import Catalog
    from phi3e2e.serve.errors import ApiError
    from phi3e2e.serve.registry import ModelRegistry

    original, run_dir = finished_run
    project = Project(tmp_path / "project")
    shutil.copytree(original.root, project.root, symlinks=True)
    shutil.copytree(run_dir, project.gen_model / "second", symlinks=True)  # a second finished run
    size = sum(path.stat().st_size for path in (run_dir / "onnx-int4").iterdir())
    registry = ModelRegistry(Catalog(project, run_dir.name, say=lambda _: None), "cpu", int(size * 1.5),
                             say=lambda _: None)
    assert registry.loaded_ids() == []  # nothing loaded before it is asked for

    registry.release(registry.acquire(run_dir.name))
    second = registry.acquire("second")  # one fits, two do not: the idle one is unloaded
    assert registry.loaded_ids() == ["second"]
    assert second.engine.encode("hello")

    with pytest.raises(ApiError) as full:  # "second" is still in use: nothing can make room
        registry.acquire(run_dir.name)
    assert full.value.status == 503 and full.value.code == "memory_budget"
    registry.release(second)
    registry.acquire(run_dir.name)
    assert registry.loaded_ids() == [run_dir.name]


def test_a_removed_run_is_a_404_and_a_replaced_one_is_loaded_anew(finished_run, tmp_path):
    """`runs rm` (or a new run of the same name) while serve runs: serve lets go of the old folder."""
    from phi3e2e.serve.catalog import Catalog
    from phi3e2e.serve.errors import ApiError
    from phi3e2e.serve.registry import ModelRegistry

    original, run_dir = finished_run
    project = Project(tmp_path / "project")
    shutil.copytree(original.root, project.root, symlinks=True)
    shutil.copytree(run_dir, project.gen_model / "second", symlinks=True)
    said = []
    registry = ModelRegistry(Catalog(project, run_dir.name, say=said.append), "cpu", 1 << 34, say=said.append)
    in_use = registry.acquire("second")

    assert run_cli("runs", "rm", "second", "--yes", project=project).returncode == 0
    with pytest.raises(ApiError) as removed:
        registry.acquire("second")
    assert removed.value.status == 404 and removed.value.code == "model_not_found"
    assert in_use.engine.encode("an answer in progress goes on")  # its files stay open until it ends
    registry.release(in_use)

    shutil.copytree(run_dir, project.gen_model / "second", symlinks=True)  # a new run of that name
    replaced = registry.acquire("second")
    assert replaced is not in_use and registry.loaded_ids().count("second") == 1
    assert "Unloaded second: its run folder was removed or replaced" in said


def test_serve_help_imports_no_server_or_ml_stack():
    heavy = ("torch", "onnxruntime", "onnxruntime_genai", "transformers", "fastapi", "uvicorn", "starlette", "openai")
    probe = (
        "import sys, json\nfrom phi3e2e.cli.app import app\ntry:\n    app(['serve', '--help'])\nexcept SystemExit:\n"
        "    pass\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in " + repr(heavy) + ")))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "--api-key" in out and json.loads(out.strip().splitlines()[-1]) == []

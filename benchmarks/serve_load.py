"""How `phi3e2e serve` holds up under load, batched and unbatched: requests/s, latency and tokens/s for 1, 4
and 16 clients.

    .venv/bin/python benchmarks/serve_load.py             # ~6 minutes on a quiet 2-core machine (+ the model's first build)
    .venv/bin/python benchmarks/serve_load.py --requests-per-client 1 --clients 1 4 --pairs 0

The model: the Phi-3-mini-shaped one with random weights (hidden 3072, intermediate 8192, 32
heads, vocab 32064, `--layers` of them) that benchmarks/int4_options.py writes with
`write_tiny_model` and builds as int4 with phi3e2e's CPU options (every physical core), laid
out as a finished run of a project, so the real `phi3e2e serve` serves it as it would a fine-tune.

Two servers on it, side by side: `serve` as it ships (answers waiting together decode as one
batch, up to 16 per forward pass) and `serve --max-batch 1` (each answer on its own generator,
taking turns); each level runs on one, then the other, so both see the same machine.

The anchor (`--llama-server PATH`): llama.cpp's own C++ server, built from the same vendored llama.cpp
source as the benchmark peer (`make bench-llama-server`), on the same model converted by llama.cpp's
converter and quantized to Q4_0 by its `llama-quantize`, with as many slots (`-np`) as clients and
continuous batching on (its default), restarted for each level; `ignore_eos` makes it answer the same 128
tokens. llama-cpp-python's `llama_cpp.server` answers one request at a time, so it is not the anchor.

Each request: a 32-token chat prompt, 128 greedy new tokens (`min_tokens` holds the end of turn
back), streamed, as the decode benchmarks measure. Each client sends its requests one after
another; N clients run at once. Per level: requests/s, latency (request sent -> last token)
p50/p95, time to first token p50/p95, tokens/s summed over all clients, and each stream's own
decode tokens/s. Then (`--pairs`, 0 to skip) one stream through the server against `chat`'s path
(ChatSession, the same model and prompt, in this process), in paired rounds. Each level and
round starts once the machine is quiet (`--max-busy`, as int4_options.py waits): a shared
2-core machine's other work slows int4 decode many times over. The clients are plain http.client
threads: cheap, so the 2 cores go to the server.

Writes benchmarks/results/serve-load.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
RESULTS = REPO / "benchmarks" / "results"
NEW_TOKENS = 128
PROMPT_TOKENS = 32
RUN = "bench"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_project(work_dir: Path, layers: int) -> Path:
    """A project whose one finished run's onnx-int4/ is the Phi-3-mini-shaped model (cached)."""
    from decode_speed import benchmark_corpus
    from int4_options import build_int4

    from phi3e2e import runs
    from phi3e2e.build.options import CPU_INT4_DEFAULTS
    from phi3e2e.infer.engines.genai import use_all_cores
    from phi3e2e.prepare.tiny_model import PHI3_MINI_SHAPED, write_tiny_model
    from phi3e2e.workflow.settings import FinetuneSettings

    project = work_dir / f"serve-phi3-mini-shaped-{layers}-layers"
    hf_dir = project / "model-cache" / "phi3-mini-shaped"
    run_dir = project / "gen-model" / RUN
    if (run_dir / runs.RUN_FILE).is_file():
        return project
    if not (hf_dir / "phi3e2e-tiny.json").is_file():
        log(f"Writing a Phi-3-mini-shaped random model ({layers} layers) into {hf_dir} ...")
        write_tiny_model(hf_dir, benchmark_corpus(), shape=replace(PHI3_MINI_SHAPED, num_hidden_layers=layers))
    log("Building it as int4 with phi3e2e's CPU options (a few minutes, once) ...")
    onnx_dir = build_int4(hf_dir, run_dir / runs.ONNX_INT4, dict(CPU_INT4_DEFAULTS))
    use_all_cores(onnx_dir)  # as finetune leaves a run's model
    record = runs.RunRecord(name=RUN, algo="lora", target="local", profile="tiny", base_model=str(hf_dir),
                            dataset="none", settings=FinetuneSettings(), status="succeeded", finished_at=runs.now())
    runs.write_record(run_dir, record)
    return project


MODES = {"batched": (), "unbatched": ("--max-batch", "1")}  # serve's own switch


class Server:
    def __init__(self, project: Path, *args: str):
        env = dict(os.environ, PHI3E2E_PROJECT_DIR=str(project), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen([sys.executable, "-m", "phi3e2e", "serve", RUN, "--port", "0", *args], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in self.process.stdout:  # bounded: the process prints its address or exits
            if line.startswith("Playground: "):
                self.port = int(line.split()[1].rstrip("/").rsplit(":", 1)[1])
                break
        else:
            raise SystemExit(f"phi3e2e serve did not start (exit {self.process.wait()})")
        threading.Thread(target=lambda: [None for _ in self.process.stdout], daemon=True).start()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=30)


class LlamaServer:
    """llama.cpp's `llama-server` on the Q4_0 GGUF, `slots` requests decoding at once (continuous batching)."""

    def __init__(self, binary: Path, gguf: Path, slots: int, threads: int):
        import socket

        with socket.socket() as probe:  # llama-server takes no port 0: ask the kernel for a free one
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        context = slots * 2 * (PROMPT_TOKENS + NEW_TOKENS + 64)  # split evenly among the slots
        self.process = subprocess.Popen(
            [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port), "-t", str(threads),
             "-tb", str(threads), "-np", str(slots), "-c", str(context), "--jinja", "--no-webui"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"llama-server exited ({self.process.returncode}) before it was ready")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit("llama-server was not ready within 300 s")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def llama_gguf(project: Path, binary: Path) -> Path:
    """The benchmark model as Q4_0 GGUF: llama.cpp's converter (vendored beside the server's source, run by
    benchmarks/peers/llama_cpp_peer.py) to f16, then the server's sibling `llama-quantize`."""
    hf_dir = project / "model-cache" / "phi3-mini-shaped"
    f16, q4_0 = project / "model-f16.gguf", project / "model-q4_0.gguf"
    source = binary.resolve().parents[2]  # <llama.cpp>/build/bin/llama-server
    if not q4_0.is_file():
        log("Converting the model to GGUF Q4_0 for llama-server (once) ...")
        # The GGUF's name comes from the folder's; llama.cpp treats a model named "phi3..." as a real Phi-3 and looks
        # up "<|end|>", which the benchmark tokenizer lacks ("unordered_map::at" at load).
        unnamed = project / "gguf-source"
        if not unnamed.exists():
            unnamed.symlink_to(hf_dir.resolve())
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "peers" / "llama_cpp_peer.py"), "convert",
                        str(unnamed), str(f16), "--llama-cpp-dir", str(source)], check=True)
        subprocess.run([str(binary.with_name("llama-quantize")), str(f16), str(q4_0), "Q4_0"], check=True,
                       stdout=subprocess.DEVNULL)
        f16.unlink()
    return q4_0


def one_request(port: int, user_text: str, model: str = RUN) -> dict:
    """One streamed answer: seconds to the first token and to the last, and the tokens counted by the server."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": user_text}], "stream": True,
                       "stream_options": {"include_usage": True}, "temperature": 0,
                       "max_tokens": NEW_TOKENS, "min_tokens": NEW_TOKENS,  # phi3e2e serve's
                       "ignore_eos": True})  # llama-server's way to the same length; phi3e2e ignores it
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    first, usage = None, None
    for line in response:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            usage = chunk["usage"]
        elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            first = time.perf_counter() - start
    seconds = time.perf_counter() - start
    connection.close()
    assert usage and usage["completion_tokens"] == NEW_TOKENS, usage
    return {"seconds": seconds, "ttft_s": first, "tokens": usage["completion_tokens"],
            "decode_tok_s": (usage["completion_tokens"] - 1) / (seconds - first)}


def load_level(port: int, user_text: str, clients: int, requests_per_client: int, model: str = RUN) -> dict:
    def client(_: int) -> list[dict]:
        return [one_request(port, user_text, model) for _ in range(requests_per_client)]

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        done = [result for results in pool.map(client, range(clients)) for result in results]
    wall = time.perf_counter() - start
    latencies = sorted(r["seconds"] for r in done)
    ttfts = sorted(r["ttft_s"] for r in done)
    return {"clients": clients, "requests": len(done), "wall_s": round(wall, 2),
            "requests_per_s": round(len(done) / wall, 3),
            "latency_p50_s": round(percentile(latencies, 50), 2), "latency_p95_s": round(percentile(latencies, 95), 2),
            "ttft_p50_s": round(percentile(ttfts, 50), 2), "ttft_p95_s": round(percentile(ttfts, 95), 2),
            "tokens_per_s_all_clients": round(sum(r["tokens"] for r in done) / wall, 1),
            "decode_tok_s_per_stream_median": round(statistics.median(r["decode_tok_s"] for r in done), 1)}


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: with 8-32 samples, a measured value)."""
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


def single_stream_pairs(port: int, onnx_dir: Path, user_text: str, repeats: int, quiet) -> dict:
    """One answer through the server, then `chat`'s path (ChatSession, no server) on the same model and
    prompt, round after round: a shared machine's load changes by the minute, so the two are compared
    within each round."""
    from decode_speed import time_chat_path

    from phi3e2e.infer.chat import ChatSession
    from phi3e2e.infer.generation import GenerationOptions

    options = GenerationOptions(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    session = ChatSession(onnx_dir, options)
    time_chat_path(session, user_text)  # warm-up
    rounds = []
    for i in range(repeats):
        quiet()
        # Alternate which goes first, and let the other's spinning onnxruntime threads go idle in between.
        if i % 2:
            chat = time_chat_path(session, user_text)
            time.sleep(0.5)
            served = one_request(port, user_text)
        else:
            served = one_request(port, user_text)
            time.sleep(0.5)
            chat = time_chat_path(session, user_text)
        rounds.append({"serve_tok_s": round(served["decode_tok_s"], 1), "chat_tok_s": round(chat["decode_tok_s"], 1),
                       "serve_ttft_s": round(served["ttft_s"], 3), "chat_ttft_s": round(chat["ttft_s"], 3)})
    return {"rounds": rounds, **{f"{key}_median": statistics.median(r[key] for r in rounds) for key in rounds[0]},
            "serve_vs_chat_median": round(statistics.median(r["serve_tok_s"] / r["chat_tok_s"] for r in rounds), 3)}


def table(result: dict) -> str:
    rows = [("| clients | serve | requests | requests/s | latency p50 / p95 (s) | first token p50 / p95 (s) "
             "| tokens/s, all clients | decode tok/s per stream (median) |"),
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for level in result["levels"]:
        rows.append(f"| {level['clients']} | {level['mode']} | {level['requests']} | {level['requests_per_s']:.2f} "
                    f"| {level['latency_p50_s']:.2f} / {level['latency_p95_s']:.2f} "
                    f"| {level['ttft_p50_s']:.2f} / {level['ttft_p95_s']:.2f} "
                    f"| {level['tokens_per_s_all_clients']:.1f} | {level['decode_tok_s_per_stream_median']:.1f} |")
    pairs = result.get("single_stream")
    if pairs:
        rows.append(f"\nOne stream, {len(pairs['rounds'])} paired rounds: served {pairs['serve_tok_s_median']:.1f} "
                    f"tok/s (first token {pairs['serve_ttft_s_median']:.2f} s) vs `chat` {pairs['chat_tok_s_median']:.1f}"
                    f" tok/s (first token {pairs['chat_ttft_s_median']:.2f} s): served / chat, median of rounds "
                    f"{pairs['serve_vs_chat_median']:.2f}")
    return "\n".join(rows)


def llama_level(args, project: Path, user_text: str, clients: int, per_client: int) -> dict:
    """One level against llama-server with `clients` slots (its own process, stopped after)."""
    from int4_options import wait_until_quiet

    from phi3e2e.infer.threads import physical_cores

    server = LlamaServer(args.llama_server, llama_gguf(project, args.llama_server), clients, physical_cores())
    try:
        one_request(server.port, user_text, "q4_0")  # warm-up: not timed
        busy, waited = wait_until_quiet(args.max_busy, args.max_wait)
        log(f"{clients} clients x {per_client} requests, llama-server -np {clients} (CPU busy {busy:.0%} after "
            f"waiting {waited:.0f} s) ...")
        level = {"mode": f"llama-server Q4_0 -np {clients}"} | load_level(server.port, user_text, clients, per_client,
                                                                        "q4_0") | {"busy_before": busy}
    finally:
        server.stop()
    log(f"  {level}")
    return level


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the Phi-3-mini-shaped model")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrency levels")
    parser.add_argument("--requests-per-client", type=int, default=None,
                        help="default: 4 at 1 client, 2 at 4, 1 at 16 (4-16 requests a level, run on each server)")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES),
                        help="serve as it ships (batched) and/or with --max-batch 1 (unbatched)")
    parser.add_argument("--llama-server", type=Path, default=None,
                        help="llama.cpp's llama-server binary (make bench-llama-server): the anchor at each level")
    parser.add_argument("--pairs", type=int, default=6, help="rounds of one served answer and one `chat` answer")
    parser.add_argument("--max-busy", type=float, default=0.15,
                        help="start a level only when other work uses at most this share of the CPUs")
    parser.add_argument("--max-wait", type=float, default=300, help="seconds to wait for that before running anyway")
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "phi3e2e-serve-load")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve-load.json")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the server it started

    from decode_speed import user_text_for
    from int4_options import wait_until_quiet

    from phi3e2e.infer.engines.genai import GenaiEngine
    from phi3e2e.infer.threads import physical_cores

    project = bench_project(args.work_dir, args.layers)
    onnx_dir = project / "gen-model" / RUN / "onnx-int4"
    user_text = user_text_for(GenaiEngine(onnx_dir), PROMPT_TOKENS)
    result = {"started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "layers": args.layers,
              "cpus": os.cpu_count(), "physical_cores": physical_cores(), "prompt_tokens": PROMPT_TOKENS,
              "new_tokens": NEW_TOKENS, "load_1m_at_start": os.getloadavg()[0], "levels": []}

    servers = {mode: Server(project, *MODES[mode]) for mode in args.modes}
    try:
        for server in servers.values():
            one_request(server.port, user_text)  # loads the model: not timed
        for clients in args.clients:
            per_client = args.requests_per_client or {1: 4, 4: 2}.get(clients, 1)
            for mode, server in servers.items():
                busy, waited = wait_until_quiet(args.max_busy, args.max_wait)
                log(f"{clients} clients x {per_client} requests, {mode} (CPU busy {busy:.0%} after waiting "
                    f"{waited:.0f} s) ...")
                level = load_level(server.port, user_text, clients, per_client)
                result["levels"].append({"mode": mode} | level | {"busy_before": busy})
                log(f"  {result['levels'][-1]}")
            if args.llama_server:
                result["levels"].append(llama_level(args, project, user_text, clients, per_client))
        if args.pairs:
            log(f"One stream through the server vs chat's path, {args.pairs} paired rounds ...")
            result["single_stream"] = single_stream_pairs(next(iter(servers.values())).port, onnx_dir, user_text,
                                                          args.pairs,
                                                          lambda: wait_until_quiet(args.max_busy, args.max_wait))
    finally:
        for server in servers.values():
            server.stop()
    result["load_1m_at_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Phi-3-mini-shaped model, {args.layers} layers, int4; {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} greedy "
          f"tokens per request, streamed; {os.cpu_count()} CPUs; 1-min load {result['load_1m_at_start']:.1f} at start, "
          f"{result['load_1m_at_end']:.1f} at end\n")
    print(table(result))
    log(f"\nWrote {args.out}")


if __name__ == "__main__":
    main()

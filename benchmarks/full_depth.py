"""What a user feels at full depth: build, long prompts, cold start and memory, phi3e2e int4 vs llama.cpp Q4_0.

    .venv/bin/python benchmarks/full_depth.py                      # 32 layers, Phi-3-mini's shape (~35 min first run)
    .venv/bin/python benchmarks/full_depth.py --layers 16 --repeats 3
    .venv/bin/python benchmarks/int4_options.py --head-to-head --skip-quality --layers 32 --repeats 5   # decode

A Phi-3-mini-shaped model with random weights (hidden 3072, intermediate 8192, 32 heads, vocab
32064, `--layers` of them), written in bf16 like the published checkpoint, built the way
`phi3e2e finetune` builds its CPU model (Olive's ModelBuilder, phi3e2e's int4 options, every core)
and the way a llama.cpp user would (its vendored converter, then Q4_0). Both engines get the
same token ids and the same threads; llama.cpp keeps llama-cpp-python's defaults (512-token
batches). The models are shared with int4_options.py (same --work-dir), so its `--head-to-head
--layers N` decode table measures the very same files.

1. Build: seconds and peak RSS of writing the model, of phi3e2e's int4 build and of llama.cpp's
   convert + quantize; the size of each.
2. Prefill: time to first token and prompt tokens/s for 128/512/1024/2048-token prompts, both
   engines loaded, timed round-robin in the same rounds (medians).
3. Cold start: a fresh process each time, process start -> exit after a one-token answer:
   `phi3e2e chat --model <onnx> --prompt ... --max-length 1` against llama-cpp-python's own entry
   (`Llama(gguf)(prompt, max_tokens=1)`); where phi3e2e's time goes (imports, model load, first
   token), measured inside a fresh process; and onnxruntime's session alone over the same decoder
   file with prepacking off (its floor), as chat loads it, and prepacked in parallel, beside the
   time to read the decoder's data file once.
4. Memory: peak RSS of `phi3e2e chat --prompt` answering 128 tokens (and of llama.cpp doing the
   same) against the weights each reads per token.
5. Limits (benchmarks/int4_kernel.py on this build): the model's MatMuls alone, onnxruntime's int4 kernel as built
   and its int8 GEMM, at 128 and 1024 rows and at one row with the weights in cache; then 5 decode rounds, each
   between two reads of the memory bandwidth, and the share of a step each op takes.

Prints the tables, then each goal (issue 26) met or beside the measured limit that stops it, and writes
benchmarks/results/full-depth-<layers>.json. `--skip PART` keeps that part's figures from an earlier run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from decode_speed import log, read_bandwidth, weights_read_per_token  # noqa: E402
from int4_options import PEER_SCRIPT, PEERS_PYTHON, RESULTS, Candidate, candidate_folder, wait_until_quiet  # noqa: E402

PROMPTS = (128, 512, 1024, 2048)
SHORT_PROMPT = "How long does shipping to Canada take?"
CHAT_TOKENS = 128  # the memory run's answer length


# --- measuring a process ----------------------------------------------------------------------


def run_measured(command: list[str], **kwargs) -> dict:
    """Run `command`; wall seconds from spawn to exit, its peak RSS, its stdout.

    The peak is the child's own VmHWM, polled: rusage's maxrss also counts what the child shared with
    this (large) process between fork and exec.
    """
    with tempfile.TemporaryFile("w+") as stderr:  # a file, not a pipe: a chatty child never blocks on it
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, **kwargs)
        peak = [0]
        watcher = threading.Thread(target=_watch_peak_rss, args=(process, peak), daemon=True)
        watcher.start()
        stdout = process.stdout.read()
        process.wait()
        seconds = time.perf_counter() - start
        watcher.join()
        if process.returncode != 0:
            stderr.seek(0)
            raise SystemExit(f"{' '.join(command[:4])} ... failed ({process.returncode}):\n{stderr.read()[-2000:]}")
    return {"seconds": seconds, "peak_rss": peak[0], "stdout": stdout}


def _watch_peak_rss(process: subprocess.Popen, peak: list[int]) -> None:
    status = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            peak[0] = max(peak[0], int(fields.get("VmHWM", "0 kB").split()[0]) * 1024)
        except (OSError, ValueError):
            pass
        time.sleep(0.02)


def python_code(code: str, *args: str, python: str = sys.executable) -> list[str]:
    return [python, "-c", code, *args]


# --- 1. build ---------------------------------------------------------------------------------


WRITE_MODEL = """
import sys; sys.path.insert(0, sys.argv[3])
from pathlib import Path
from decode_speed import write_phi3_mini_shaped
write_phi3_mini_shaped(Path(sys.argv[1]), int(sys.argv[2]))
"""


def build(work: Path, layers: int, threads: int) -> tuple[dict, Path, Path, Path]:
    """The bf16 model, phi3e2e's int4 build and the Q4_0 GGUF (each cached), with what making each took."""
    record = work / "build-steps.json"  # what the first run measured; later runs reuse the files
    steps = json.loads(record.read_text()) if record.is_file() else {}
    hf_dir, build_dir, onnx_dir = build_phi3e2e(work, layers, threads, steps, record)
    q4_0 = build_gguf(work, hf_dir, threads, steps, record)
    sizes = {"bf16 model": sum(f.stat().st_size for f in hf_dir.glob("*.safetensors")),
             "phi3e2e int4": sum(f.stat().st_size for f in build_dir.iterdir() if f.is_file()),
             "llama.cpp Q4_0": q4_0.stat().st_size}
    return {"steps": steps, "sizes": sizes}, hf_dir, onnx_dir, q4_0


def measured_step(steps: dict, record: Path, name: str, command: list[str], **kwargs) -> None:
    done = run_measured(command, **kwargs)
    steps[name] = {"seconds": done["seconds"], "peak_rss": done["peak_rss"]}
    record.write_text(json.dumps(steps, indent=2))
    log(f"  {name}: {done['seconds']:.0f} s, peak RSS {done['peak_rss'] / 1e9:.2f} GB")


def build_phi3e2e(work: Path, layers: int, threads: int, steps: dict, record: Path) -> tuple[Path, Path, Path]:
    from phi3e2e.build.options import CPU_INT4_DEFAULTS
    from phi3e2e.infer import prepacked as saved

    hf_dir = work / "hf-bf16"
    if not (hf_dir / "phi3e2e-tiny.json").is_file():
        measured_step(steps, record, "write the bf16 model",
                      python_code(WRITE_MODEL, str(hf_dir), str(layers), str(REPO / "benchmarks")))
    default = Candidate("phi3e2e default", dict(CPU_INT4_DEFAULTS))
    build_dir = work / default.build_key  # where int4_options.py builds it too
    if not (build_dir / "genai_config.json").is_file():
        log(f"Building phi3e2e's int4 model ({layers} layers) ...")
        partial = build_dir.with_name(build_dir.name + ".partial")
        subprocess.run(["rm", "-rf", str(partial)], check=True)
        partial.mkdir(parents=True)
        measured_step(steps, record, "phi3e2e int4 build (ModelBuilder)",
                      [sys.executable, "-m", "phi3e2e.build.base_int4", str(hf_dir), str(partial),
                       json.dumps({"execution_provider": "cpu", **default.options})],
                      env=dict(os.environ, OLIVE_DISABLE_TELEMETRY="1"))  # fmt: skip
        subprocess.run(["rm", "-rf", str(partial / "cache")], check=True)
        partial.rename(build_dir)
    folder = candidate_folder(build_dir, default, threads)
    if saved.wanted() and saved.save_prepacked(folder, threads):  # as finetune leaves it (PHI3E2E_PREPACKED=0: not)
        log("  this CPU's prepacked weights are saved beside it")
    return hf_dir, build_dir, folder


def build_gguf(work: Path, hf_dir: Path, threads: int, steps: dict, record: Path) -> Path:
    f16, q4_0 = work / "model-f16.gguf", work / "model-q4_0.gguf"  # int4_options.py's names too
    if not f16.is_file():
        log("Converting to an f16 GGUF (llama.cpp's converter) ...")
        measured_step(steps, record, "llama.cpp convert to f16 GGUF",
                      [str(PEERS_PYTHON), str(PEER_SCRIPT), "convert", str(hf_dir), str(f16)])
    if not q4_0.is_file():
        measured_step(steps, record, "llama.cpp quantize to Q4_0",
                      [str(PEERS_PYTHON), str(PEER_SCRIPT), "quantize", str(f16), str(q4_0), "Q4_0", "--threads", str(threads)])
    return q4_0


# --- 2. prefill -------------------------------------------------------------------------------


class LlamaCppPrefill:
    """The Q4_0 model loaded in the peers venv; `run(n)` times the first n prompt ids to the first token."""

    def __init__(self, gguf: Path, prompt_ids: list[int], threads: int):
        self.process = subprocess.Popen(
            [str(PEERS_PYTHON), str(PEER_SCRIPT), "serve", str(gguf), "--prompt-ids", ",".join(map(str, prompt_ids)),
             "--threads", str(threads), "--new-tokens", "1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        if not json.loads(self.process.stdout.readline() or "{}").get("ready"):
            raise SystemExit(f"llama.cpp peer failed to load {gguf}")

    def run(self, length: int) -> float:
        self.process.stdin.write(f"prefill {length}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())["ttft_s"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def prompt_ids_of(engine, length: int) -> list[int]:
    """`length` token ids of real text (the sample data, repeated)."""
    from decode_speed import benchmark_corpus

    text = " ".join(benchmark_corpus())
    ids = engine.encode(text)
    while len(ids) < length:
        ids += ids
    return ids[:length]


def phi3e2e_ttft(engine, prompt_ids: list[int]) -> float:
    """The chat path's engine call: prompt in, first token out (GenaiEngine.stream_tokens)."""
    from phi3e2e.infer.generation import GenerationOptions

    start = time.perf_counter()
    next(engine.stream_tokens(prompt_ids, GenerationOptions(max_new_tokens=1, min_new_tokens=1)))
    return time.perf_counter() - start


def measure_prefill(onnx_dir: Path, gguf: Path, threads: int, args) -> dict:
    from phi3e2e.infer.engines.genai import GenaiEngine

    engine = GenaiEngine(onnx_dir, "cpu")
    longest = prompt_ids_of(engine, max(args.prompts))
    peer = LlamaCppPrefill(gguf, longest, threads) if gguf else None
    samples = {(name, n): [] for name in ("phi3e2e", "llama.cpp") for n in args.prompts}
    phi3e2e_ttft(engine, longest[:128])  # warm-up
    bandwidth = []
    for repeat in range(args.repeats):
        bandwidth.append(read_bandwidth(threads, gib=0.5, tries=3) / 1e9)
        log(f"  prefill round {repeat + 1}/{args.repeats} (memory read {bandwidth[-1]:.0f} GB/s)")
        for n in args.prompts:
            for name in ("phi3e2e", "llama.cpp") if repeat % 2 == 0 else ("llama.cpp", "phi3e2e"):
                if name == "llama.cpp" and not peer:
                    continue
                time.sleep(0.2)
                wait_until_quiet(args.max_busy, args.max_wait)
                seconds = phi3e2e_ttft(engine, longest[:n]) if name == "phi3e2e" else peer.run(n)
                samples[(name, n)].append(seconds)
    if peer:
        peer.close()
    rows = []
    for n in args.prompts:
        row = {"prompt_tokens": n}
        for name in ("phi3e2e", "llama.cpp"):
            if samples[(name, n)]:
                row[name] = {"ttft_s": statistics.median(samples[(name, n)]), "each": samples[(name, n)]}
        if "llama.cpp" in row:
            row["ratio"] = statistics.median(b / a for a, b in zip(samples[("phi3e2e", n)], samples[("llama.cpp", n)]))
        rows.append(row)
    return {"rows": rows, "read_gb_s_each_round": bandwidth}


# --- 3. cold start and 4. memory --------------------------------------------------------------


PHASES = """
import json, sys, time
start = time.perf_counter()
import typer
from phi3e2e.cli.app import build_app
typer.main.get_command(build_app("chat"))  # what `phi3e2e chat` parses with
from pathlib import Path
from phi3e2e.infer.chat import ChatSession
from phi3e2e.infer.engines.genai import GenaiEngine
from phi3e2e.infer.generation import GenerationOptions
imported = time.perf_counter()
import onnxruntime_genai as og  # chat imports it when it loads the model
spent = {"genai_import": time.perf_counter() - imported}
def timed(name, call):
    def run(*args, **kwargs):
        begun = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0) + time.perf_counter() - begun
    return run
og.Model, og.Tokenizer = timed("session", og.Model), timed("tokenizer", og.Tokenizer)  # GenaiEngine's calls
engine = GenaiEngine(Path(sys.argv[1]), "cpu")
loaded = time.perf_counter()
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
memory = {key: int(status[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}  # after the load, and its peak
session = ChatSession(Path(sys.argv[1]), GenerationOptions(max_new_tokens=1), engine=engine)
session.chat_format.prompt = timed("chat_template", session.chat_format.prompt)
engine.encode = timed("encode", engine.encode)
answer = session.ask(sys.argv[2])
done = time.perf_counter()
print(json.dumps({"imports": imported - start, "load": loaded - imported, "first_token": done - loaded,
                  **spent, "rss_after_load": memory["VmRSS"], "peak_rss_in_load": memory["VmHWM"]}))
"""

# onnxruntime's session alone over the decoder chat loads, with session config entries (argv[3:]), in seconds.
SESSION_LOAD = """
import sys, time
import onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = int(sys.argv[2])
for entry in sys.argv[3:]:
    options.add_session_config_entry(*entry.split("=", 1))
start = time.perf_counter()
ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
print(time.perf_counter() - start)
"""

# Where the load goes, each a fresh process (the saved prepacked weights are what chat loads: infer/prepacked.py).
LOAD_CONFIGS = {
    "prepacking off (the session's own cost; decode would be unusable)": ["session.disable_prepacking=1"],
    "as chat loads it: the saved prepacked weights": [],
    "the same, prepacked in parallel (session.prepack.enable_parallel)": ["session.prepack.enable_parallel=1"],
}


LLAMA_CPP_ENTRY = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_threads=int(sys.argv[2]), n_threads_batch=int(sys.argv[2]), verbose=False)
out = llm(sys.argv[3], max_tokens=int(sys.argv[4]), temperature=0.0)
print(out["usage"]["completion_tokens"])
"""


def chat_command(onnx_dir: Path, max_length: int) -> list[str]:
    return [str(Path(sys.executable).with_name("phi3e2e")), "chat", "--model", str(onnx_dir), "--prompt", SHORT_PROMPT,
            "--max-length", str(max_length), "--min-length", str(max_length)]


def llama_cpp_command(gguf: Path, threads: int, max_tokens: int) -> list[str]:
    prompt = f"<|user|>\n{SHORT_PROMPT}<|end|>\n<|assistant|>\n"  # what phi3e2e chat sends
    return python_code(LLAMA_CPP_ENTRY, str(gguf), str(threads), prompt, str(max_tokens), python=str(PEERS_PYTHON))


def measure_cold_start(onnx_dir: Path, gguf: Path, threads: int, args) -> dict:
    engines = {"phi3e2e chat --prompt": chat_command(onnx_dir, 1)}
    if gguf:
        engines["llama.cpp (llama-cpp-python)"] = llama_cpp_command(gguf, threads, 1)
    runs = {name: [] for name in engines}
    from phi3e2e.infer.engines.genai import genai_config
    from phi3e2e.infer.prepacked import saved_model

    phases, load = {}, {}
    decoder = onnx_dir / (saved_model(onnx_dir, genai_config(onnx_dir)) or "model.onnx")  # the file chat loads
    data_file = decoder.with_name(decoder.name + ".data")
    read_s = read_seconds(data_file)
    for command in engines.values():  # untimed: every engine's files into the page cache first, as for a second start
        run_measured(command)
    for repeat in range(args.repeats):
        log(f"  cold start round {repeat + 1}/{args.repeats}")
        for name, command in engines.items():
            wait_until_quiet(args.max_busy, args.max_wait)
            runs[name].append(run_measured(command)["seconds"])
        for label, entries in LOAD_CONFIGS.items():
            wait_until_quiet(args.max_busy, args.max_wait)
            run = run_measured(python_code(SESSION_LOAD, str(decoder), str(threads), *entries))
            load.setdefault(label, []).append({"seconds": float(run["stdout"]), "peak_rss": run["peak_rss"]})
        wait_until_quiet(args.max_busy, args.max_wait)
        command = python_code(PHASES, str(onnx_dir), SHORT_PROMPT)
        phases.setdefault("as chat runs", []).append(json.loads(run_measured(command)["stdout"]))
    result = {"seconds": {name: statistics.median(times) for name, times in runs.items()},
              "each": runs,
              "phases": {label: {k: statistics.median(p[k] for p in each) for k in each[0]} for label, each in phases.items()},
              "session_load": {label: {k: statistics.median(r[k] for r in each) for k in each[0]} for label, each in load.items()},
              "reading_the_data_file_s": read_s, "data_file_bytes": data_file.stat().st_size}
    return result


def read_seconds(path: Path) -> float:
    """Reading `path` once from the page cache (after a first, untimed read): what 'the cost of reading the file'
    is on this machine."""
    buffer = bytearray(16 << 20)
    for _ in range(2):  # the first read puts it in the page cache; the second is timed
        start = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass
    return time.perf_counter() - start


def measure_memory(onnx_dir: Path, gguf: Path, threads: int) -> dict:
    rows = {"phi3e2e chat --prompt": (chat_command(onnx_dir, CHAT_TOKENS), weights_read_per_token(onnx_dir))}
    if gguf:
        per_token = subprocess.run([str(PEERS_PYTHON), "-c", "import sys; sys.path.insert(0, sys.argv[2]); "
                                    "from llama_cpp_peer import bytes_per_token; print(bytes_per_token(sys.argv[1]))",
                                    str(gguf), str(PEER_SCRIPT.parent)], capture_output=True, text=True, check=True)
        rows["llama.cpp (llama-cpp-python)"] = (llama_cpp_command(gguf, threads, CHAT_TOKENS), int(per_token.stdout))
    found = {}
    for name, (command, per_token) in rows.items():
        peak = run_measured(command)["peak_rss"]
        found[name] = {"peak_rss": peak, "weights_read_per_token": per_token, "ratio": peak / per_token}
    return found


# --- 5. the limits ------------------------------------------------------------------------------


def measure_limits(onnx_dir: Path, layers: int, threads: int, work: Path) -> dict:
    """What bounds the goals (benchmarks/int4_kernel.py): the model's MatMuls alone, int4 as built and onnxruntime's
    int8 GEMM, at the prompts' rows and at one row with its weights in cache; and decode rounds, each between two
    reads of the memory bandwidth, with the share of a step each op takes."""
    from int4_kernel import PHI3_MINI, decode_profile, token_passes

    from phi3e2e.build.options import CPU_INT4_DEFAULTS

    block = CPU_INT4_DEFAULTS["int4_block_size"]
    kernel = {"int4": {"1 in cache": token_passes(PHI3_MINI, layers, 1, block, threads, in_cache=True)}, "int8 GEMM": {}}
    for rows in (128, 1024):
        for name, kind in (("int4", block), ("int8 GEMM", None)):
            wait_until_quiet(0.15, 300)
            kernel[name][str(rows)] = token_passes(PHI3_MINI, layers, rows, kind, threads)
    log(f"  the MatMuls alone, token passes/s: {kernel}")
    (work / "decode-profile").mkdir(exist_ok=True)
    decode = decode_profile(onnx_dir, layers, threads, 48, 5, work / "decode-profile")
    return {"int4_block_size": block, "matmuls_alone": kernel, "decode": decode}


# --- report -----------------------------------------------------------------------------------


def report(result: dict) -> str:
    mb = 1e6
    lines = [f"Phi-3-mini-shaped model, {result['layers']} layers, random weights; {result['threads']} threads per engine", ""]
    build = result["build"]
    lines += ["| step | seconds | peak RSS GB |", "|---|---:|---:|"]
    lines += [f"| {name} | {r['seconds']:.0f} | {r['peak_rss'] / 1e9:.2f} |" for name, r in build["steps"].items()]
    sizes = build["sizes"]
    lines += ["", "| model | size MB | ÷ GGUF Q4_0 |", "|---|---:|---:|"]
    lines += [f"| {name} | {size / mb:.0f} | {size / sizes['llama.cpp Q4_0']:.2f} |" for name, size in sizes.items()]
    if "prefill" in result:
        lines += ["", "| prompt tokens | phi3e2e TTFT s | phi3e2e prompt tok/s | llama.cpp Q4_0 TTFT s | "
                      "llama.cpp prompt tok/s | phi3e2e ÷ llama.cpp (same round) |", "|---:|---:|---:|---:|---:|---:|"]
        for row in result["prefill"]["rows"]:
            n, ours = row["prompt_tokens"], row["phi3e2e"]["ttft_s"]
            peer = row.get("llama.cpp", {}).get("ttft_s")
            peer_cells = f"{peer:.2f} | {n / peer:.0f} | {row['ratio']:.2f}x" if peer else "– | – | –"
            lines.append(f"| {n} | {ours:.2f} | {n / ours:.0f} | {peer_cells} |")
    if "cold_start" in result:
        cold = result["cold_start"]
        lines += ["", "| process start -> exit after a one-token answer | seconds (median) |", "|---|---:|"]
        lines += [f"| {name} | {seconds:.2f} |" for name, seconds in cold["seconds"].items()]
        lines += ["", "| inside a fresh phi3e2e process | imports s | model load s | first token s |", "|---|---:|---:|---:|"]
        lines += [f"| {label} | {p['imports']:.2f} | {p['load']:.2f} | {p['first_token']:.2f} |"
                  for label, p in cold["phases"].items()]
        for label, p in cold["phases"].items():
            if "session" in p:  # the load and the first token, step by step
                rest = p["first_token"] - p["chat_template"] - p["encode"]
                lines += ["", "| of which, s | genai import | config + onnxruntime session | tokenizer | chat template "
                              "| first encode | prompt pass + first token |", "|---|---:|---:|---:|---:|---:|---:|",
                          f"| {label} | {p['genai_import']:.3f} | {p['session']:.3f} | {p['tokenizer']:.3f} | "
                          f"{p['chat_template']:.3f} | {p['encode']:.3f} | {rest:.3f} |"]
        if "session_load" in cold:
            lines += ["", "| onnxruntime's session over the decoder, fresh process | seconds | peak RSS MB |", "|---|---:|---:|"]
            lines += [f"| {label} | {r['seconds']:.2f} | {r['peak_rss'] / mb:.0f} |" for label, r in cold["session_load"].items()]
            lines.append(f"| reading its {cold['data_file_bytes'] / 1e9:.1f} GB data file once, page cache | "
                         f"{cold['reading_the_data_file_s']:.2f} | |")
    if "memory" in result:
        lines += ["", f"| {CHAT_TOKENS}-token answer, fresh process | peak RSS MB | weights read per token MB | ratio |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {name} | {r['peak_rss'] / mb:.0f} | {r['weights_read_per_token'] / mb:.0f} | {r['ratio']:.2f} |"
                  for name, r in result["memory"].items()]
    return "\n".join(lines + goals(result))


def decode_goals(result: dict) -> list[tuple]:
    """The decode goals, from int4_options.py --head-to-head on the same models (its own file), when it ran."""
    found = RESULTS / f"int4-head-to-head-{result['layers']}.json"
    speed = json.loads(found.read_text())["speed"] if found.is_file() else {}
    if speed.get("layers") != result["layers"] or not speed.get("paired_ratios"):
        return []
    ours = next(r for r in speed["rows"] if "chat_tok_s" in r)
    peer = next(r for r in speed["rows"] if r["engine"] == "llama.cpp Q4_0")
    ratio = next(iter(speed["paired_ratios"].values()))
    pairs = [a / b for a, b in zip(ours["chat_tok_s_each"], ours["bare_tok_s_each"])]
    chat_vs_bare = statistics.median(pairs)
    streamed = [t * ours["bytes_per_token"] / 1e9 for t in ours["chat_tok_s_each"]]
    peer_streamed = [t * peer["bytes_per_token"] / 1e9 for t in peer["bare_tok_s_each"]]
    limit = (f"both stream their weights from memory, {peer['bytes_per_token'] / ours['bytes_per_token']:.2f}x as many "
             f"bytes a token for llama.cpp; phi3e2e streams {min(streamed):.0f}-{max(streamed):.0f} GB/s, llama.cpp "
             f"{min(peer_streamed):.0f}-{max(peer_streamed):.0f} (reads "
             + ", ".join(f"{r:.0f}" for r in speed["read_gb_s_each_round"]) + " GB/s)")
    limits = result.get("limits")
    if limits:
        cached = (limits["matmuls_alone"]["int4"]["1 in cache"]["token_passes_per_s"]
                  * limits["decode"]["int4_bytes_per_step_mb"] / 1e3)
        serial = [1 / (1 / cached + 1 / r) for r in speed["read_gb_s_each_round"]]
        limit += (f"; phi3e2e's kernel computing ({cached:.0f} GB/s in cache), then reading, one after the other, "
                  f"predicts {min(serial):.0f}-{max(serial):.0f} GB/s; 1.5x needs "
                  f"{1.5 * statistics.median(peer_streamed) * ours['bytes_per_token'] / peer['bytes_per_token']:.0f} GB/s")
    return [("decode (chat path) ≥ 1.5x llama.cpp Q4_0", f"{ratio:.2f}x ({found.name})", ratio >= 1.5, limit),
            ("chat-path decode ≥ 0.97x the bare loop, same rounds", f"{chat_vs_bare:.2f}x ({found.name})",
             chat_vs_bare >= 0.97, f"same loaded model, same rounds: pairs {min(pairs):.2f}-{max(pairs):.2f}x; what the "
             "chat path adds per token (text decoding, streaming) is not broken out here")]


def goals(result: dict) -> list[str]:
    """The performance goals, each met or with the measured limit that stops it."""
    from cold_start import PREPACKED, REPACKED

    rows = []
    kernel = result.get("limits", {}).get("matmuls_alone", {})
    for n, want in ((1024, 2.0), (128, 1.5)):
        row = next((r for r in result.get("prefill", {}).get("rows", []) if r["prompt_tokens"] == n and "ratio" in r), None)
        if row:
            need = want * n / row["llama.cpp"]["ttft_s"]
            alone = kernel.get("int4", {}).get(str(n), {}).get("token_passes_per_s")
            int8 = kernel.get("int8 GEMM", {}).get(str(n), {}).get("token_passes_per_s")
            ours = n / row["phi3e2e"]["ttft_s"]
            limit = f"{want}x needs {need:.0f} prompt tokens/s; the int4 MatMuls alone do {alone} token passes/s at {n} rows"
            if alone and alone < need:
                limit += f", below it (onnxruntime's int8 GEMM: {int8}, with int8 weights)"
            elif alone:
                limit += (f": {need:.0f} would leave {1 - need / alone:.0%} of the time to everything else (attention, "
                          f"norms), which takes {1 - ours / alone:.0%} now")
            rows.append((f"prefill, {n}-token prompt, ≥ {want}x llama.cpp Q4_0", f"{row['ratio']:.2f}x",
                         row["ratio"] >= want, limit if alone else ""))
    if "cold_start" in result and len(result["cold_start"]["seconds"]) == 2:
        ours, peer = result["cold_start"]["seconds"].values()
        phases = next(iter(result["cold_start"]["phases"].values()))
        limit = (f"where phi3e2e's start goes, in a fresh process: imports {phases['imports']:.2f} s, onnxruntime's "
                 f"load {phases['load']:.2f} s, first token {phases['first_token']:.2f} s")
        if load := result["cold_start"].get("session_load"):
            off, shipped, parallel = load.values()
            limit += (f"; onnxruntime's session alone: {shipped['seconds']:.2f} s as chat loads it, "
                      f"{off['seconds']:.2f} s with prepacking off (reading the data file once: "
                      f"{result['cold_start']['reading_the_data_file_s']:.2f} s). Over the saved weights onnxruntime "
                      f"1.32 still repacks and hashes every int4 weight, then compares it with the saved copy "
                      f"(docs/performance.md, perf); in parallel {parallel['seconds']:.2f} s, but peak RSS "
                      f"{parallel['peak_rss'] / 1e9:.2f} GB against {shipped['peak_rss'] / 1e9:.2f} GB")
        levers = RESULTS / f"cold-start-{result['layers']}.json"  # benchmarks/cold_start.py on the same layers
        medians = json.loads(levers.read_text())["medians"] if levers.is_file() else {}
        if REPACKED in medians and PREPACKED in medians and "llama.cpp (llama-cpp-python)" in medians:
            limit += (f"; {levers.name}: repacked {medians[REPACKED]['start_to_exit_s']:.2f} s, prepacked "
                      f"{medians[PREPACKED]['start_to_exit_s']:.2f} s, llama.cpp "
                      f"{medians['llama.cpp (llama-cpp-python)']['start_to_exit_s']:.2f} s")
        rows.append(("`chat --prompt` start -> exit ≤ llama.cpp's Python entry", f"{ours:.2f} vs {peer:.2f} s",
                     ours <= peer, limit))
    if "limits" in result:
        decode = result["limits"]["decode"]
        shares = [r["share_of_bandwidth"][0] for r in decode["rounds"]]  # against the higher of its two reads
        cached = kernel["int4"]["1 in cache"]["token_passes_per_s"] * decode["int4_bytes_per_step_mb"] / 1e3
        serial = [1 / (1 / cached + 1 / r["read_bandwidth_gb_s"][1]) for r in decode["rounds"]]
        streamed = [r["step_gb_s"] for r in decode["rounds"]]
        rows.append(("decode ≥ 80% of the round's memory read bandwidth, every round",
                     f"{min(shares):.0%}-{max(shares):.0%} ({sum(s >= 0.8 for s in shares)} of {len(shares)} rounds)",
                     min(shares) >= 0.8, f"the one-row int4 kernel computes {cached:.0f} GB/s of its weights in cache; "
                     f"computing, then reading at the round's higher read, one after the other, predicts "
                     f"{min(serial):.0f}-{max(serial):.0f} GB/s; measured {min(streamed):.0f}-{max(streamed):.0f} "
                     "(reads " + ", ".join("{}-{}".format(*r["read_bandwidth_gb_s"]) for r in decode["rounds"]) + " GB/s)"))
    rows += decode_goals(result)
    if "memory" in result:
        ours = result["memory"]["phi3e2e chat --prompt"]
        limit = ""
        phases = next(iter(result.get("cold_start", {}).get("phases", {}).values()), {})
        if "peak_rss_in_load" in phases:
            weights, mb = ours["weights_read_per_token"], 1e6
            limit = (f"peak {ours['peak_rss'] / mb:.0f} MB against {weights / mb:.0f} MB of weights; in the cold-start "
                     f"rounds the loaded process held {(phases['rss_after_load'] - weights) / mb:.0f} MB beside the "
                     f"weights (Python, onnxruntime, genai, the tokenizer), and the load peaked "
                     f"{(phases['peak_rss_in_load'] - phases['rss_after_load']) / mb:.0f} MB above what it left "
                     "(onnxruntime packs each weight once more, beside its saved copy)")
        rows.append(("peak RSS ÷ weights read per token ≤ 1.3", f"{ours['ratio']:.2f}", ours["ratio"] <= 1.3, limit))
    if not rows:
        return []
    return ["", "| goal | measured | met | the measured limit, where not |", "|---|---|---|---|"] + [
        f"| {goal} | {figure} | {'yes' if met else 'no'} | {'' if met else limit} |" for goal, figure, met, limit in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=32, help="decoder layers (Phi-3-mini has 32)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each measurement (medians)")
    parser.add_argument("--prompts", type=lambda s: [int(x) for x in s.split(",")], default=list(PROMPTS),
                        help="prompt lengths in tokens, comma-separated")
    parser.add_argument("--threads", type=int, default=None, help="threads for every engine (default: physical cores)")
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "phi3e2e-int4-options")
    parser.add_argument("--max-busy", type=float, default=0.15)
    parser.add_argument("--max-wait", type=float, default=120)
    parser.add_argument("--skip", action="append", default=[], choices=["prefill", "cold-start", "memory", "limits"],
                        help="leave a part out (its figures from an earlier --out stay)")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/full-depth-<layers>.json")
    args = parser.parse_args()

    from phi3e2e.infer.threads import physical_cores

    threads = args.threads or physical_cores()
    if not PEERS_PYTHON.is_file():
        raise SystemExit("needs llama.cpp's peers venv: make bench-peers")
    work = args.work_dir / f"phi3-mini-shaped-{args.layers}-layers"
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or RESULTS / f"full-depth-{args.layers}.json"
    result = json.loads(out.read_text()) if args.skip and out.is_file() else {}
    result |= {"layers": args.layers, "threads": threads, "started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "cpus": os.cpu_count()}
    result["build"], hf_dir, onnx_dir, gguf = build(work, args.layers, threads)
    if "prefill" not in args.skip:
        log("Prefill ...")
        result["prefill"] = measure_prefill(onnx_dir, gguf, threads, args)
    if "cold-start" not in args.skip:
        log("Cold start ...")
        result["cold_start"] = measure_cold_start(onnx_dir, gguf, threads, args)
    if "memory" not in args.skip:
        log("Memory ...")
        result["memory"] = measure_memory(onnx_dir, gguf, threads)
    if "limits" not in args.skip:
        log("Limits ...")
        result["limits"] = measure_limits(onnx_dir, args.layers, threads, work)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    log(f"\nWrote {out}")


if __name__ == "__main__":
    main()

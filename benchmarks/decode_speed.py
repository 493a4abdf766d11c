"""Decode speed of every way phi3e2e runs a model, on one machine in one run.

    .venv/bin/python benchmarks/decode_speed.py            # ~5 minutes on 2 cores, first run
    .venv/bin/python benchmarks/decode_speed.py --layers 2 --repeats 1

Measures, on a Phi-3-mini-shaped model with random weights (hidden 3072, intermediate 8192,
32 heads, vocab 32064; `--layers` of them), built by the same code as `prepare --tiny`:

- decode tokens/s and time to first token for 32- and 512-token prompts, 128 new greedy tokens:
  the int4 model through phi3e2e's own chat code path (ChatSession), a bare onnxruntime-genai
  generate loop on the same model and the same prompt tokens, and transformers fp32 (CPU,
  `model.generate`) on the Hugging Face model (the "merged" form);
- the memory-bandwidth bound: weight bytes read per generated token / the machine's read
  bandwidth (measured here, with all cores), and each engine's share of it. For int4 the bytes
  are measured: what an onnxruntime-genai load adds in memory, i.e. the weights as prepacked;
- `phi3e2e --help` against `olive --help` wall time.

The int4 model is built with `phi3e2e.build.export` (Olive's ModelBuilder pass, with the CPU
options `finetune` uses: docs/performance.md). Models are cached in --work-dir, so reruns skip
building them.
Prints a table and writes JSON (and a PNG chart) to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PROMPT_LENGTHS = (32, 512)
NEW_TOKENS = 128


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the models -------------------------------------------------------------------------------


def build_models(work_dir: Path, layers: int) -> tuple[Path, Path]:
    """The Phi-3-mini-shaped HF model (as a finished run's merged/) and its int4 ONNX export."""
    from phi3e2e import runs
    from phi3e2e.build.export import export
    from phi3e2e.prepare.tiny_model import PHI3_MINI_SHAPED, write_tiny_model
    from phi3e2e.project import Project
    from phi3e2e.workflow.settings import FinetuneSettings

    project = Project(work_dir / f"phi3-mini-shaped-{layers}-layers")
    run_dir = project.gen_model / "bench"
    merged = run_dir / "merged"
    if not (merged / "phi3e2e-tiny.json").is_file():
        log(f"Writing a Phi-3-mini-shaped random model ({layers} layers) into {merged} ...")
        write_tiny_model(merged, benchmark_corpus(), shape=replace(PHI3_MINI_SHAPED, num_hidden_layers=layers))
        # A finished run's record around it, so `phi3e2e export` builds from it as from a fine-tune.
        record = runs.RunRecord(name="bench", algo="lora", target="local", profile="tiny", base_model=str(merged),
                                dataset="none", settings=FinetuneSettings(), status="succeeded", finished_at=runs.now())
        runs.write_record(run_dir, record)
    onnx_dir = run_dir / "onnx-cpu-int4"
    if not (onnx_dir / "genai_config.json").is_file():
        log("Building its int4 ONNX model with phi3e2e export (Olive ModelBuilder) ...")
        export(project, "bench", device="cpu", precision="int4", say=lambda m: log("  " + m))
    return merged, onnx_dir


def write_phi3_mini_shaped(hf_dir: Path, layers: int) -> Path:
    """The Phi-3-mini-shaped random model, in bf16 like the published Phi-3-mini checkpoint (fp32 of
    32 layers would be 15 GB before the int4 build even starts on a 24 GB machine); cached."""
    import torch

    from phi3e2e.prepare.tiny_model import PHI3_MINI_SHAPED, write_tiny_model

    if not (hf_dir / "phi3e2e-tiny.json").is_file():
        log(f"Writing a Phi-3-mini-shaped random model ({layers} layers, bf16) into {hf_dir} ...")
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            write_tiny_model(hf_dir, benchmark_corpus(), shape=replace(PHI3_MINI_SHAPED, num_hidden_layers=layers))
        finally:
            torch.set_default_dtype(previous)
    return hf_dir


def benchmark_corpus() -> list[str]:
    from phi3e2e.resources import sample_dataset

    with open(sample_dataset(), encoding="utf-8") as f:
        rows = [" ".join(str(v) for v in json.loads(line).values()) for line in f if line.strip()]
    return rows + ["<|system|>\nYou are helpful.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"]


def user_text_for(engine, length: int) -> str:
    """A user message whose full chat-format prompt is exactly `length` tokens."""
    import numpy

    from phi3e2e.chat_format import chat_prompt

    words = " ".join(benchmark_corpus()).split()
    text_ids = engine.encode(" ".join(words * (1 + 4 * length // max(len(words), 1))))
    overhead = len(engine.encode(chat_prompt([], "")))
    for keep in range(length - overhead, 0, -1):
        text = engine.tokenizer.decode(numpy.array(text_ids[:keep], dtype=numpy.int32))
        if len(engine.encode(chat_prompt([], text))) == length:
            return text
    raise RuntimeError(f"cannot make a {length}-token prompt with this tokenizer")


# --- the engines ------------------------------------------------------------------------------


def time_chat_path(session, user_text: str) -> dict:
    """phi3e2e's own path: ChatSession.ask (chat format, history check, streaming text)."""
    session.turns.clear()
    answer = session.ask(user_text)
    assert answer.tokens == NEW_TOKENS, answer.tokens
    return {"ttft_s": answer.first_token_seconds, "decode_tok_s": answer.decode_tokens_per_second,
            "prompt_tokens": answer.prompt_tokens}


def time_bare_genai(model, prompt_tokens: list[int]) -> dict:
    """The shortest onnxruntime-genai loop: no chat format, no text decoding."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    total = len(prompt_tokens) + NEW_TOKENS
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    generator = og.Generator(model, params)
    start = time.perf_counter()
    generator.append_tokens(prompt_tokens)
    count, first = 0, None
    while not generator.is_done():
        generator.generate_next_token()
        generator.get_next_tokens()
        count += 1
        if first is None:
            first = time.perf_counter() - start
    seconds = time.perf_counter() - start
    assert count == NEW_TOKENS, count
    return {"ttft_s": first, "decode_tok_s": (count - 1) / (seconds - first), "prompt_tokens": len(prompt_tokens)}


def time_transformers(model, prompt_tokens: list[int]) -> dict:
    """transformers fp32 on CPU, its own `generate`, timing each streamed token."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.times: list[float] = []
            self.prompt_seen = False

        def put(self, value):
            if not self.prompt_seen:  # generate hands the prompt over first
                self.prompt_seen = True
                return
            self.times.append(time.perf_counter())

        def end(self):
            pass

    clock = Clock()
    input_ids = torch.tensor([prompt_tokens])
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=NEW_TOKENS,
                       min_new_tokens=NEW_TOKENS, do_sample=False, streamer=clock)
    count = len(clock.times)
    assert count == NEW_TOKENS, count
    return {"ttft_s": clock.times[0] - start, "decode_tok_s": (count - 1) / (clock.times[-1] - clock.times[0]),
            "prompt_tokens": len(prompt_tokens)}


# --- the bound --------------------------------------------------------------------------------


def read_bandwidth(threads: int, gib: float = 1.0, tries: int = 8) -> float:
    """Bytes/s a `threads`-way parallel sum streams from memory (best of `tries`)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    data = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    data.sum()  # touch every page first
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(previous)
    return data.numel() * 4 / best


def weights_read_per_token(folder: Path) -> int:
    """The anonymous mappings an onnxruntime-genai load adds (fresh process): the int4 weights as
    onnxruntime prepacked them, which decode reads once per token. The packed form keeps a block
    sum beside each scale, so it is larger than the file's share of them (the input embedding
    stays in the file mapping; one row of it is read per token)."""
    code = ("import sys, onnxruntime_genai as og; from phi3e2e.infer.huge_pages import anonymous_regions as regions; "
            "before = regions(); model = og.Model(sys.argv[1]); "
            "print(sum(max(0, size - before.get(r, 0)) for r, size in regions().items()))")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def torch_bytes_per_token(model) -> int:
    """fp32 weights read per step: all parameters but one row of the input embedding."""
    embedding = model.get_input_embeddings().weight
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return total - embedding.numel() * embedding.element_size() + embedding.shape[1] * embedding.element_size()


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


# --- startup ----------------------------------------------------------------------------------


def help_seconds(program: str, tries: int) -> float | None:
    executable = Path(sys.executable).parent / program
    if not executable.exists():
        return None
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        subprocess.run([str(executable), "--help"], capture_output=True, check=True,
                       env=dict(os.environ, OLIVE_DISABLE_TELEMETRY="1"))
        best = min(best, time.perf_counter() - start)
    return best


# --- the run ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the Phi-3-mini-shaped model")
    parser.add_argument("--repeats", type=int, default=6, help="timed runs per ONNX engine and prompt (median)")
    parser.add_argument("--hf-repeats", type=int, default=1, help="timed runs for transformers fp32 (slow)")
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "phi3e2e-bench")
    parser.add_argument("--out", type=Path, default=RESULTS / "decode-speed.json")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from phi3e2e.infer.chat import ChatSession
    from phi3e2e.infer.engines.genai import GenaiEngine
    from phi3e2e.infer.generation import GenerationOptions

    merged_dir, onnx_dir = build_models(args.work_dir, args.layers)
    threads = os.cpu_count() or 1

    log("Loading the int4 model ...")
    options = GenerationOptions(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    session = ChatSession(onnx_dir, options, engine=GenaiEngine(onnx_dir, "cpu"))
    # GenaiEngine loads it as a bare user would, og.Model(folder); both loops share that one model, so
    # the comparison is of the code paths alone (two loaded copies differed by a few % on their own).
    bare_model = session.engine.model
    prompts = {length: user_text_for(session.engine, length) for length in PROMPT_LENGTHS}
    prompt_tokens = {length: session.prompt_tokens(text) for length, text in prompts.items()}

    rows: list[dict] = []

    def record(engine: str, length: int, samples: list[dict]) -> None:
        rows.append({
            "engine": engine,
            "prompt_tokens": length,
            "new_tokens": NEW_TOKENS,
            "decode_tok_s": statistics.median(s["decode_tok_s"] for s in samples),
            "ttft_s": statistics.median(s["ttft_s"] for s in samples),
            "runs": len(samples),
            "decode_tok_s_each": [round(s["decode_tok_s"], 2) for s in samples],
        })

    for length in PROMPT_LENGTHS:
        log(f"int4 ONNX, {length}-token prompt: warm-up, then {args.repeats} runs each, interleaved ...")
        time_chat_path(session, prompts[length])
        time_bare_genai(bare_model, prompt_tokens[length])
        chat_runs, bare_runs = [], []
        for repeat in range(args.repeats):  # interleaved, in turns first, so drift in machine load hits both alike
            if repeat % 2:
                bare_runs.append(time_bare_genai(bare_model, prompt_tokens[length]))
            chat_runs.append(time_chat_path(session, prompts[length]))
            if not repeat % 2:
                bare_runs.append(time_bare_genai(bare_model, prompt_tokens[length]))
        assert all(r["prompt_tokens"] == length for r in chat_runs), chat_runs
        record("phi3e2e chat (onnx int4)", length, chat_runs)
        record("bare genai loop (onnx int4)", length, bare_runs)
    int4_bytes = weights_read_per_token(onnx_dir)
    del session, bare_model

    log("Loading the fp32 Hugging Face model (transformers) ...")
    hf_model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    for length in PROMPT_LENGTHS:
        log(f"transformers fp32, {length}-token prompt: warm-up, then {args.hf_repeats} run(s) ...")
        with torch.inference_mode():  # warm-up: a short answer to the same prompt
            hf_model.generate(torch.tensor([prompt_tokens[length]]), max_new_tokens=4, do_sample=False)
        record("transformers fp32", length, [time_transformers(hf_model, prompt_tokens[length])
                                             for _ in range(args.hf_repeats)])
    fp32_bytes = torch_bytes_per_token(hf_model)
    del hf_model

    log(f"Measuring memory read bandwidth (1 to {threads} threads) ...")
    by_threads = {n: read_bandwidth(n) for n in range(1, threads + 1)}
    # The machine's bandwidth is the most any thread count streams (a busy core can make more threads slower).
    bandwidth_threads, bandwidth = max(by_threads.items(), key=lambda item: item[1])
    for row in rows:
        weight_bytes = fp32_bytes if row["engine"].startswith("transformers") else int4_bytes
        row["bound_tok_s"] = bandwidth / weight_bytes
        row["share_of_bound"] = row["decode_tok_s"] / row["bound_tok_s"]

    log("Timing --help ...")
    phi3e2e_help, olive_help = help_seconds("phi3e2e", 5), help_seconds("olive", 2)

    def speed(engine: str, length: int) -> float:
        return next(r["decode_tok_s"] for r in rows if r["engine"] == engine and r["prompt_tokens"] == length)

    targets = {}
    for length in PROMPT_LENGTHS:
        chat, fp32 = speed("phi3e2e chat (onnx int4)", length), speed("transformers fp32", length)
        # Runs were interleaved in pairs; the median of the pairs' ratios shrugs off a load spike in one run.
        chat_runs, bare_runs = (next(r["decode_tok_s_each"] for r in rows if r["engine"] == e and r["prompt_tokens"] == length)
                                for e in ("phi3e2e chat (onnx int4)", "bare genai loop (onnx int4)"))
        paired = statistics.median(c / b for c, b in zip(chat_runs, bare_runs))
        targets[f"chat_vs_bare_{length}"] = {"ratio": paired, "target": ">= 0.95", "met": paired >= 0.95}
        targets[f"int4_vs_fp32_{length}"] = {"ratio": chat / fp32, "target": ">= 4", "met": chat / fp32 >= 4}
    targets["phi3e2e_help_s"] = {"value": phi3e2e_help, "target": "< 0.3", "met": bool(phi3e2e_help and phi3e2e_help < 0.3)}

    result = {
        "machine": {"cpus": threads, "platform": platform.platform(), "processor": platform.processor(),
                    "load_average_1m": os.getloadavg()[0]},
        "model": {"shape": "Phi-3-mini-shaped, random weights", "layers": args.layers, "hidden": 3072,
                  "intermediate": 8192, "heads": 32, "vocab": 32064,
                  "int4_folder_bytes": folder_bytes(onnx_dir), "int4_build": json.loads((onnx_dir / "export.json").read_text())["pass"]},
        "memory_bandwidth": {"read_bytes_per_s": bandwidth, "threads": bandwidth_threads,
                             "read_bytes_per_s_by_threads": by_threads},
        "weight_bytes_per_token": {"onnx_int4": int4_bytes, "transformers_fp32": fp32_bytes},
        "rows": rows,
        "help_seconds": {"phi3e2e": phi3e2e_help, "olive": olive_help},
        "targets": targets,
        "versions": versions(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    plot(result, args.out.with_suffix(".png"))
    log(f"\nWrote {args.out} and {args.out.with_suffix('.png')}")


def table(result: dict) -> str:
    bw = result["memory_bandwidth"]
    weights = result["weight_bytes_per_token"]
    lines = [
        (
            f"Phi-3-mini-shaped model, {result['model']['layers']} layers, random weights; {NEW_TOKENS} new greedy "
            f"tokens; {result['machine']['cpus']} CPUs (1-min load {result['machine']['load_average_1m']:.1f})"
        ),
        f"Memory read bandwidth: {bw['read_bytes_per_s'] / 1e9:.1f} GB/s (best of "
        + ", ".join(f"{n} thread(s) {v / 1e9:.1f}" for n, v in bw["read_bytes_per_s_by_threads"].items())
        + "); weights read per token: "
        f"int4 {weights['onnx_int4'] / 1e6:.0f} MB, fp32 {weights['transformers_fp32'] / 1e6:.0f} MB",
        "",
        f"| {'engine':<28} | prompt | decode tok/s | first token (s) | bound tok/s | share of bound |",
        f"|{'-' * 30}|-------:|-------------:|----------------:|------------:|---------------:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['engine']:<28} | {row['prompt_tokens']:>6} | {row['decode_tok_s']:>12.1f} | {row['ttft_s']:>15.3f} "
            f"| {row['bound_tok_s']:>11.1f} | {row['share_of_bound']:>14.0%} |"
        )
    help_s = result["help_seconds"]
    olive = f"{help_s['olive']:.2f} s" if help_s["olive"] is not None else "n/a"
    lines += ["", f"`phi3e2e --help` {help_s['phi3e2e']:.2f} s vs `olive --help` {olive}", "", "Targets:"]
    for name, target in result["targets"].items():
        value = target.get("ratio", target.get("value"))
        lines.append(f"  {name:<20} {value:8.2f}  (target {target['target']}): {'met' if target['met'] else 'NOT met'}")
    return "\n".join(lines)


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = list(dict.fromkeys(row["engine"] for row in result["rows"]))
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    width = 0.8 / len(PROMPT_LENGTHS)
    for i, length in enumerate(PROMPT_LENGTHS):
        values = [next(r["decode_tok_s"] for r in result["rows"] if r["engine"] == e and r["prompt_tokens"] == length)
                  for e in engines]
        ax.bar([x + i * width for x in range(len(engines))], values, width, label=f"{length}-token prompt")
    bound = result["rows"][0]["bound_tok_s"]
    ax.axhline(bound, color="grey", linestyle="--", linewidth=1, label=f"int4 bandwidth bound ({bound:.0f})")
    ax.set_xticks([x + width / 2 for x in range(len(engines))], engines, fontsize=8)
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"Decode speed, Phi-3-mini-shaped ({result['model']['layers']} layers), {NEW_TOKENS} new tokens")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def versions() -> dict:
    from importlib import metadata

    found = {}
    for package in ("onnxruntime-genai", "onnxruntime", "torch", "transformers", "olive-ai"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


if __name__ == "__main__":
    main()

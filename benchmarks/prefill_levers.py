"""What each onnxruntime lever gives the prompt pass (prefill) of phi3e2e's int4 CPU build.

    .venv/bin/python benchmarks/prefill_levers.py --layers 16      # ~15 minutes on 2 cores

The Phi-3-mini-shaped int4 model of benchmarks/serve_load.py (`--layers` of it, phi3e2e's CPU build:
block 128, int8 activations, every core). Each lever is one change to that build, loaded through
onnxruntime-genai as `chat` loads it; each prompt length is timed from `append_tokens` to the first token,
`--repeats` times after one untimed run, in this process.

- session options in genai_config.json (flat onnxruntime keys): spinning, `session.dynamic_block_base`,
  `mlas.use_lut_gemm`, denormals as zero, the graph optimization level, one thread instead of all;
- the int4 MatMuls' accuracy level (the MatMulNBits attribute: 4 int8, 3 bf16, 2 fp16, 1 fp32 activations);
- the prompt in chunks (append_tokens per chunk: smaller matrices, more passes).

Then the measured limit: onnxruntime's best int8 GEMM on this CPU (MatMulInteger, u8 x s8, MLAS's VNNI
kernels) on the model's own matrix shapes at the same thread count, against what the int4 MatMuls reach in
the default build's prompt pass (from onnxruntime's profile: its MatMulNBits time). Writes
benchmarks/results/prefill-levers-<layers>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

RESULTS = HERE / "results"

SESSION_LEVERS = {
    "as built (2 threads, spinning, ORT_ENABLE_ALL, accuracy 4)": {},
    "no spinning": {"session.intra_op.allow_spinning": "0"},
    "session.dynamic_block_base 4": {"session.dynamic_block_base": "4"},
    "mlas.use_lut_gemm": {"mlas.use_lut_gemm": "1"},
    "denormals as zero": {"session.set_denormal_as_zero": "1"},
    "graph optimization: extended": {"graph_optimization_level": "ORT_ENABLE_EXTENDED"},
    "graph optimization: basic": {"graph_optimization_level": "ORT_ENABLE_BASIC"},
    "one thread": {"intra_op_num_threads": 1},
}
ACCURACY_LEVELS = {"accuracy 3 (bf16 activations)": 3, "accuracy 2 (fp16 activations)": 2,
                   "accuracy 1 (fp32 activations)": 1}
CHUNKS = (256, 512)
PARTS = ["session", "accuracy", "chunks", "limit", "llama.cpp"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def with_accuracy(onnx_dir: Path, level: int, work: Path) -> Path:
    """A folder of hard links to the build (onnxruntime refuses external data behind a symlink that leaves the
    model's folder), with its own model.onnx whose MatMulNBits take this accuracy level."""
    import onnx

    folder = work / f"accuracy-{level}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in onnx_dir.iterdir():
        if path.is_file() and path.name != "model.onnx":
            os.link(path, folder / path.name)
    model = onnx.load(onnx_dir / "model.onnx", load_external_data=False)
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "MatMulNBits" and attribute.name == "accuracy_level":
                attribute.i = level
    onnx.save(model, folder / "model.onnx")
    return folder


def time_prefill(folder: Path, session_options: dict, lengths: list[int], repeats: int, chunk: int = 0) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    if session_options:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": session_options}}}))
    model = og.Model(config)
    rng = np.random.default_rng(0)
    out = {}
    for length in lengths:
        seconds = []
        for attempt in range(repeats + 1):
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=length + 2, do_sample=False)
            generator = og.Generator(model, params)
            prompt = rng.integers(10, 30000, length).astype(np.int32)
            start = time.perf_counter()
            for begin in range(0, length, chunk or length):
                generator.append_tokens(prompt[begin:begin + (chunk or length)])
            generator.generate_next_token()
            if attempt:  # the first run is untimed (its allocations)
                seconds.append(time.perf_counter() - start)
            del generator
        out[str(length)] = round(length / statistics.median(seconds), 1)  # str: as the JSON file reads back
    del model
    return out


def int8_gemm_roofline(hidden: int, intermediate: int, vocab: int, rows: int, threads: int) -> dict:
    """onnxruntime's MatMulInteger (uint8 x int8) on the model's matrix shapes: G int8 ops/s."""
    from int4_kernel import kernel_seconds, model_shapes

    return {name: round(2 * rows * k * n / kernel_seconds(k, n, rows, None, threads) / 1e9, 1)
            for name, (k, n) in model_shapes(hidden, intermediate, vocab).items()}


def matmulnbits_rate(folder: Path, length: int, threads: int, work: Path) -> dict:
    """The default build's prompt pass under onnxruntime's profiler: its MatMulNBits seconds and G ops/s."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(work / "prefill-profile")
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    feeds = {}
    for given in session.get_inputs():
        if given.name == "input_ids":
            feeds[given.name] = np.random.default_rng(0).integers(10, 30000, (1, length)).astype(np.int64)
        elif given.name == "attention_mask":
            feeds[given.name] = np.ones((1, length), np.int64)
        else:  # past keys/values: none yet
            feeds[given.name] = np.zeros((1, given.shape[1], 0, given.shape[3]), np.float32)
    session.run(["logits"], feeds)
    start = time.perf_counter()
    session.run(["logits"], feeds)
    whole = time.perf_counter() - start
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    for event in events[len(events) // 2:]:  # the second run's half
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"].get("op_name")
            by_op[op] = by_op.get(op, 0.0) + event["dur"] / 1e6
    return {"prompt_tokens": length, "seconds": round(whole, 2),
            "share_by_op": {op: round(seconds / sum(by_op.values()), 3)
                            for op, seconds in sorted(by_op.items(), key=lambda item: -item[1])[:4]},
            "matmulnbits_seconds": round(by_op.get("MatMulNBits", 0.0), 2)}


def against_llama_cpp(project: Path, onnx_dir: Path, lengths: list[int], repeats: int, threads: int) -> dict:
    """The as-built prompt pass against llama.cpp's Q4_0 of the same model (the GGUF serve_load.py
    --llama-server made), same prompt ids, paired rounds: first-token seconds, medians."""
    from full_depth import PEERS_PYTHON, LlamaCppPrefill, phi3e2e_ttft, prompt_ids_of
    from int4_options import wait_until_quiet

    from phi3e2e.infer.engines.genai import GenaiEngine

    gguf = project / "model-q4_0.gguf"
    if not (PEERS_PYTHON.is_file() and gguf.is_file()):
        raise SystemExit(f"needs make bench-peers and {gguf} (benchmarks/serve_load.py --llama-server makes it)")
    engine = GenaiEngine(onnx_dir)
    prompt = prompt_ids_of(engine, max(lengths))
    peer = LlamaCppPrefill(gguf, prompt, threads)
    phi3e2e_ttft(engine, prompt[:128])  # warm-up
    seconds = {(name, n): [] for name in ("phi3e2e", "llama.cpp") for n in lengths}
    for repeat in range(repeats + 1):
        for n in lengths:
            for name in ("phi3e2e", "llama.cpp") if repeat % 2 == 0 else ("llama.cpp", "phi3e2e"):
                wait_until_quiet(0.15, 120)
                took = phi3e2e_ttft(engine, prompt[:n]) if name == "phi3e2e" else peer.run(n)
                if repeat:  # the first round is untimed
                    seconds[(name, n)].append(took)
    peer.close()
    rows = {}
    for n in lengths:
        ours, theirs = (statistics.median(seconds[(name, n)]) for name in ("phi3e2e", "llama.cpp"))
        rows[str(n)] = {"phi3e2e_tok_s": round(n / ours, 1), "llama_cpp_tok_s": round(n / theirs, 1),
                        "ratio": round(theirs / ours, 2)}
        log(f"{n} prompt tokens: phi3e2e {n / ours:.1f} tok/s, llama.cpp Q4_0 {n / theirs:.1f} ({theirs / ours:.2f}x)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "phi3e2e-serve-load")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS,
                        help="what to measure (a rerun keeps the other parts' figures from --out)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from int4_options import wait_until_quiet
    from serve_load import RUN, bench_project

    from phi3e2e.infer.engines.genai import genai_config, written_threads

    project = bench_project(args.work_dir, args.layers)
    onnx_dir = project / "gen-model" / RUN / "onnx-int4"
    decoder = genai_config(onnx_dir)["model"]["decoder"]
    threads = written_threads(genai_config(onnx_dir)) or 1
    work = args.work_dir / f"prefill-levers-{args.layers}"
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or RESULTS / f"prefill-levers-{args.layers}.json"
    result = json.loads(out.read_text()) if out.is_file() and set(args.parts) != set(PARTS) else {"prompt_tok_s": {}}
    result |= {"started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "layers": args.layers,
               "threads": threads, "load_1m_at_start": os.getloadavg()[0]}

    def measure(name: str, folder: Path, session_options: dict, chunk: int = 0) -> None:
        busy, _ = wait_until_quiet(0.15, 300)
        result["prompt_tok_s"][name] = time_prefill(folder, session_options, args.lengths, args.repeats, chunk)
        log(f"{name}: {result['prompt_tok_s'][name]} prompt tok/s (CPU busy {busy:.0%} before)")

    if "session" in args.parts:
        for name, options in SESSION_LEVERS.items():
            measure(name, onnx_dir, options)
    if "accuracy" in args.parts:
        for name, level in ACCURACY_LEVELS.items():
            measure(name, with_accuracy(onnx_dir, level, work), {})
    if "chunks" in args.parts:
        for chunk in CHUNKS:
            measure(f"prompt in chunks of {chunk}", onnx_dir, {}, chunk)

    longest = max(args.lengths)
    if "limit" in args.parts:
        profile = matmulnbits_rate(onnx_dir, longest, threads, work)
        hidden, vocab = decoder["hidden_size"], genai_config(onnx_dir)["model"]["vocab_size"]
        intermediate = json.loads((project / "model-cache" / "phi3-mini-shaped" / "config.json").read_text())[
            "intermediate_size"]
        macs_per_token = args.layers * (hidden * 3 * hidden + hidden * hidden + hidden * 2 * intermediate
                                        + intermediate * hidden) + hidden * vocab
        seconds = profile["matmulnbits_seconds"]
        profile["matmulnbits_g_ops_per_s"] = round(2 * macs_per_token * longest / seconds / 1e9, 1)
        result["int4_matmuls_in_prompt_pass"] = profile
        result["int8_gemm_g_ops_per_s"] = int8_gemm_roofline(hidden, intermediate, vocab, longest, threads)
    if "llama.cpp" in args.parts:
        result["against_llama_cpp"] = against_llama_cpp(project, onnx_dir, args.lengths, args.repeats, threads)
    result["load_1m_at_end"] = os.getloadavg()[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    base = result["prompt_tok_s"][next(iter(SESSION_LEVERS))]
    print(f"Prompt tokens/s, {args.layers} layers, {threads} threads (median of {args.repeats}):\n")
    print("| lever | " + " | ".join(f"{n} tokens" for n in args.lengths) + " | vs as built |")
    print("| --- | " + " | ".join("---:" for _ in args.lengths) + " | ---: |")
    for name, rates in result["prompt_tok_s"].items():
        ratio = statistics.mean(rates[str(n)] / base[str(n)] for n in args.lengths)
        print(f"| {name} | " + " | ".join(f"{rates[str(n)]}" for n in args.lengths) + f" | {ratio:.2f}x |")
    for n, row in result.get("against_llama_cpp", {}).items():
        print(f"{n} prompt tokens against llama.cpp Q4_0: {row}")
    if "int4_matmuls_in_prompt_pass" in result:
        print(f"\nIn the prompt pass: {result['int4_matmuls_in_prompt_pass']}")
        print(f"onnxruntime MatMulInteger u8 x s8, {longest} rows, G ops/s: {result['int8_gemm_g_ops_per_s']}")


if __name__ == "__main__":
    main()

"""Where onnxruntime's int4 kernel stops: the rate of its int4 MatMul by block size and rows, and where a
decode step's time and bytes go.

    .venv/bin/python benchmarks/int4_kernel.py --layers 16      # ~10 minutes on 2 cores

Part `blocks`: onnxruntime's MatMulNBits (int4 weights, int8 activations: accuracy level 4, as phi3e2e builds
it), alone, on Phi-3-mini's matrix shapes, for each block size and number of rows: 1 row is a single answer's
decode step, 4-64 rows a batch of answers in `serve`, 1024 rows a prompt pass. Beside it, onnxruntime's int8
GEMM (MatMulInteger, u8 x s8) on the same shapes and rows. Below 256 rows each graph holds enough copies of
the weight (>= 256 MB) that they stream from memory, as a real model's do, instead of sitting in the cache.
Figures: the model's MatMuls alone, `--layers` of them plus the int4 lm_head, as token passes per second
(a token pass is one row through every MatMul: a prompt token, or one answer's next token).

Part `decode`: the int4 build of benchmarks/serve_load.py (`--layers`; or `--model DIR`), one answer decoding
through onnxruntime-genai with its weights on 2 MiB pages, as `chat` decodes once its first answer is out. Each
of `--rounds` rounds reads the memory bandwidth (a 1 GiB float32 sum, as benchmarks/decode_speed.py reads it),
times one answer in a fresh load and reads the bandwidth again: the int4 weights streamed per second (packed:
4 bits a weight plus a float scale and a float block sum per block) against both reads. Then one more load under
onnxruntime's profiler gives the share of a step each op takes. Writes benchmarks/results/int4-kernel-<layers>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

RESULTS = HERE / "results"
BLOCKS = (32, 64, 128, 256)
ROWS = (1, 4, 16, 64, 1024)
STREAMED = 256 * 2**20  # below 256 rows, at least this many weight bytes per graph
IN_CACHE_COLUMNS = 2048  # 3072 x 2048 int4 at block 128: 3.5 MB, in the L3 cache
PARTS = ["blocks", "decode"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def model_shapes(hidden: int, intermediate: int, vocab: int) -> dict[str, tuple[int, int]]:
    """(K, N) of each MatMul of a Phi-3 layer (ModelBuilder fuses q/k/v and gate/up), and the lm_head."""
    return {"qkv": (hidden, 3 * hidden), "o": (hidden, hidden), "gate_up": (hidden, 2 * intermediate),
            "down": (intermediate, hidden), "lm_head": (hidden, vocab)}


PHI3_MINI = model_shapes(3072, 8192, 32064)


def int4_bytes(k: int, n: int, block: int) -> int:
    """The packed int4 weight onnxruntime streams: 4 bits a weight, a float scale and a float block sum per block."""
    return k * n // 2 + (k // block) * n * 8


def kernel_seconds(k: int, n: int, rows: int, block: int | None, threads: int, repeats: int = 3,
                   in_cache: bool = False) -> float:
    """Seconds for one (rows x k) @ (k x n): MatMulNBits with this block size (asymmetric, accuracy level 4),
    or MatMulInteger (u8 x s8) when block is None. Best of `repeats`, after one untimed run. Below 256 rows
    the weight streams from memory (copies of it), unless `in_cache`."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    weight_bytes = int4_bytes(k, n, block) if block else k * n
    copies = 1 if rows >= 256 or in_cache else max(1, math.ceil(STREAMED / weight_bytes))
    nodes, inits = [], []
    for c in range(copies):
        if block:
            blocks = k // block
            inits += [helper.make_tensor(f"b{c}", TensorProto.UINT8, (n, blocks, block // 2),
                                         rng.integers(0, 256, (n, blocks, block // 2), dtype=np.uint8).tobytes(), True),
                      helper.make_tensor(f"s{c}", TensorProto.FLOAT, (n * blocks,),
                                         (rng.random(n * blocks, dtype=np.float32) * 0.01 + 1e-3).tobytes(), True),
                      helper.make_tensor(f"z{c}", TensorProto.UINT8, (n * ((blocks + 1) // 2),),
                                         rng.integers(0, 256, n * ((blocks + 1) // 2), dtype=np.uint8).tobytes(), True)]
            nodes.append(helper.make_node("MatMulNBits", ["a", f"b{c}", f"s{c}", f"z{c}"], [f"y{c}"],
                                          domain="com.microsoft", K=k, N=n, bits=4, block_size=block, accuracy_level=4))
        else:
            inits.append(helper.make_tensor(f"b{c}", TensorProto.INT8, (k, n),
                                            rng.integers(-8, 8, (k, n), dtype=np.int8).tobytes(), True))
            nodes.append(helper.make_node("MatMulInteger", ["a", f"b{c}"], [f"y{c}"]))
    a_type, y_type = (TensorProto.FLOAT, TensorProto.FLOAT) if block else (TensorProto.UINT8, TensorProto.INT32)
    graph = helper.make_graph(nodes, "kernel", [helper.make_tensor_value_info("a", a_type, (rows, k))],
                              [helper.make_tensor_value_info(f"y{c}", y_type, (rows, n)) for c in range(copies)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"a": rng.standard_normal((rows, k), dtype=np.float32) if block
            else rng.integers(0, 256, (rows, k), dtype=np.uint8)}
    session.run(None, feed)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - start)
    return best / copies


def token_passes(shapes: dict, layers: int, rows: int, block: int | None, threads: int,
                 in_cache: bool = False) -> dict:
    """The model's MatMuls alone at this many rows: token passes/s and G int8 ops/s. `in_cache`: one row against
    a 2048-column slice of each weight that stays in the cache, timed often and scaled to the whole weight: what
    the kernel computes when memory never makes it wait."""
    def seconds(k: int, n: int) -> float:
        if in_cache:
            return kernel_seconds(k, IN_CACHE_COLUMNS, 1, block, threads, repeats=100, in_cache=True) * n / IN_CACHE_COLUMNS
        return kernel_seconds(k, n, rows, block, threads)

    total = sum(seconds(k, n) * (1 if name == "lm_head" else layers) for name, (k, n) in shapes.items())
    macs = sum(k * n * (1 if name == "lm_head" else layers) for name, (k, n) in shapes.items())
    return {"token_passes_per_s": round(rows / total, 1), "g_ops_per_s": round(2 * macs * rows / total / 1e9, 1)}


def decode_profile(folder: Path, layers: int, threads: int, steps: int, rounds_wanted: int, work: Path) -> dict:
    """One answer's decode steps through onnxruntime-genai, as `chat` runs them: this CPU's saved prepacked weights
    mapped when the folder has them, else the repacked copy, on 2 MiB pages after the load. Each round: the read
    bandwidth, one load's timed answer, the read bandwidth again. Then one load under onnxruntime's profiler (its
    own cost stays out of the timed rounds): the share of a step in each op."""
    import numpy as np
    import onnx
    import onnxruntime_genai as og
    from decode_speed import read_bandwidth

    from phi3e2e.infer.engines.genai import genai_config
    from phi3e2e.infer.huge_pages import anonymous_regions, collapse_new
    from phi3e2e.infer.prepacked import saved_model

    prepacked = saved_model(folder, genai_config(folder))  # this CPU's saved prepacked weights: chat maps them
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    streamed = 0  # packed int4 bytes the MatMulNBits read per step
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            streamed += int4_bytes(attrs["K"], attrs["N"], attrs["block_size"])
    prompt = np.random.default_rng(0).integers(10, 30000, 32).astype(np.int32)
    prefix = work / "decode-profile"
    for old in work.glob("decode-profile*.json"):
        old.unlink()

    def step_seconds(session_options: dict) -> list[float]:
        """Load, one untimed answer, then one answer of `steps` tokens: seconds of each step after the first."""
        config = og.Config(str(folder))
        decoder = {"session_options": session_options} | ({"filename": str(prepacked)} if prepacked else {})
        config.overlay(json.dumps({"model": {"decoder": decoder}}))
        before = anonymous_regions()
        model = og.Model(config)
        collapse_new(before, anonymous_regions())
        for _ in range(2):
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(prompt) + steps + 1, do_sample=False)
            generator = og.Generator(model, params)
            generator.append_tokens(prompt)
            seconds = []
            for _ in range(steps):
                start = time.perf_counter()
                generator.generate_next_token()
                seconds.append(time.perf_counter() - start)
            del generator
        del model  # onnxruntime writes the profile when its session closes
        return seconds[1:]

    rounds = []
    for _ in range(rounds_wanted):
        before = read_bandwidth(threads)
        step_s = statistics.median(step_seconds({}))
        after = read_bandwidth(threads)
        low, high = sorted([before, after])
        rounds.append({"step_ms": round(step_s * 1e3, 2), "tok_s": round(1 / step_s, 1),
                       "step_gb_s": round(streamed / step_s / 1e9, 1),
                       "read_bandwidth_gb_s": [round(low / 1e9, 1), round(high / 1e9, 1)],
                       "share_of_bandwidth": [round(streamed / step_s / high, 3), round(streamed / step_s / low, 3)]})
        log(f"decode round: {rounds[-1]}")
    step_seconds({"enable_profiling": str(prefix)})
    events = json.loads(max(work.glob("decode-profile*.json"), key=lambda p: p.stat().st_mtime).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[-(steps - 1):]
    by_op: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") \
                and any(start <= event["ts"] <= end for start, end in runs):
            op = event["args"].get("op_name")
            by_op[op] = by_op.get(op, 0.0) + event["dur"] / 1e6 / len(runs)
    kernels = sum(by_op.values())
    return {"layers": layers, "steps": steps, "weights": "prepacked, mapped" if prepacked else "repacked at load",
            "int4_bytes_per_step_mb": round(streamed / 1e6, 1), "rounds": rounds,
            "share_by_op": {op: round(s / kernels, 4) for op, s in sorted(by_op.items(), key=lambda item: -item[1])}}


def matmuls_alone(layers: int, threads: int, blocks: list[int], rows: list[int]) -> dict:
    """Token passes/s of the model's MatMuls alone, by kernel (int4 at each block size, then the int8 GEMM) and
    rows; with one row also against weights in cache."""
    from int4_options import wait_until_quiet

    rates = {}
    for block in [*blocks, None]:
        name = f"int4 block {block}" if block else "int8 GEMM (MatMulInteger)"
        rates[name] = {}
        if 1 in rows:
            rates[name]["1 in cache"] = token_passes(PHI3_MINI, layers, 1, block, threads, in_cache=True)
        for count in rows:
            busy, _ = wait_until_quiet(0.15, 300)
            rates[name][str(count)] = token_passes(PHI3_MINI, layers, count, block, threads)
            log(f"{name}, {count} rows: {rates[name][str(count)]} (CPU busy {busy:.0%} before)")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--model", type=Path, default=None,
                        help="the int4 folder the decode part runs (default: benchmarks/serve_load.py's --layers build)")
    parser.add_argument("--threads", type=int, default=None, help="default: the threads the build wrote")
    parser.add_argument("--blocks", type=int, nargs="+", default=list(BLOCKS))
    parser.add_argument("--rows", type=int, nargs="+", default=list(ROWS))
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5, help="decode rounds, each between two bandwidth reads")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS)
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "phi3e2e-serve-load")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from int4_options import wait_until_quiet

    from phi3e2e.infer.engines.genai import genai_config, written_threads

    onnx_dir = args.model
    if onnx_dir is None:
        from serve_load import RUN, bench_project

        onnx_dir = bench_project(args.work_dir, args.layers) / "gen-model" / RUN / "onnx-int4"
    threads = args.threads or written_threads(genai_config(onnx_dir)) or 1
    out = args.out or RESULTS / f"int4-kernel-{args.layers}.json"
    result = json.loads(out.read_text()) if out.is_file() and set(args.parts) != set(PARTS) else {}
    result |= {"started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "layers": args.layers,
               "threads": threads, "load_1m_at_start": os.getloadavg()[0]}
    if "blocks" in args.parts:
        result["matmuls_alone"] = matmuls_alone(args.layers, threads, args.blocks, args.rows)
    if "decode" in args.parts:
        work = args.work_dir / f"int4-kernel-{args.layers}"
        work.mkdir(parents=True, exist_ok=True)
        wait_until_quiet(0.15, 300)
        result["decode"] = decode_profile(onnx_dir, args.layers, threads, args.steps, args.rounds, work)
    result["load_1m_at_end"] = os.getloadavg()[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(tables(result))


def tables(result: dict) -> str:
    lines = []
    if "matmuls_alone" in result:
        rows = list(next(iter(result["matmuls_alone"].values())))
        lines += [f"The MatMuls of {result['layers']} layers alone, {result['threads']} threads: token passes/s "
                  "(G int8 ops/s)\n", "| kernel | " + " | ".join(r if " " in r else f"{r} rows" for r in rows) + " |",
                  "| --- | " + " | ".join("---:" for _ in rows) + " |"]
        for name, by_rows in result["matmuls_alone"].items():
            lines.append(f"| {name} | " + " | ".join(
                f"{by_rows[r]['token_passes_per_s']} ({by_rows[r]['g_ops_per_s']:.0f})" for r in rows) + " |")
    if "decode" in result:
        d = result["decode"]
        lines += ["", f"One answer's decode, {d['layers']} layers, {d['int4_bytes_per_step_mb']} MB of int4 weights a "
                  f"step ({d.get('weights', 'repacked at load')}): rounds, each between two bandwidth reads\n",
                  "| round | tok/s | weights streamed GB/s | memory read GB/s (lower-higher of the two reads) | share of it |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {i} | {r['tok_s']} | {r['step_gb_s']} | {r['read_bandwidth_gb_s'][0]}-{r['read_bandwidth_gb_s'][1]} "
                  f"| {r['share_of_bandwidth'][0]:.0%}-{r['share_of_bandwidth'][1]:.0%} |" for i, r in enumerate(d["rounds"], 1)]
        lines += ["", "| op | share of a decode step (profiled) |", "| --- | ---: |"]
        lines += [f"| {op} | {share:.1%} |" for op, share in d["share_by_op"].items() if share >= 0.001]
        cached = result.get("matmuls_alone", {}).get("int4 block 128", {}).get("1 in cache")
        if cached:
            ceiling = cached["token_passes_per_s"] * d["int4_bytes_per_step_mb"] / 1e3
            lines.append(f"\nThe one-row int4 kernel with its weights in cache computes {ceiling:.0f} GB/s of them: "
                         "near that bandwidth, decode is bound by the kernel, not by memory.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

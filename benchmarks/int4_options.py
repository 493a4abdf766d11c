"""Which int4 build should phi3e2e ship for CPUs? Speed, size and quality of each candidate, side by side.

    .venv/bin/python benchmarks/int4_options.py                 # ~15 minutes on 2 cores, first run
    .venv/bin/python benchmarks/int4_options.py --repeats 3 --skip-quality
    .venv/bin/python benchmarks/int4_options.py --head-to-head --repeats 30 --skip-quality \
        --out benchmarks/results/int4-head-to-head.json   # phi3e2e default vs llama.cpp Q4_0 only
    make bench                                                  # the same, after `make bench-peers`

Speed and size: a Phi-3-mini-shaped model with random weights (hidden 3072, intermediate 8192,
32 heads, vocab 32064, `--layers` of them; built by the same code as `prepare --tiny`), built
as int4 ONNX with each candidate's ModelBuilder options (block size, accuracy level, input
embedding quantized or not, symmetric or asymmetric blocks; Olive's ModelBuilder patches
applied, as in `finetune`), decoding 128 greedy tokens after a 32-token chat prompt, through
phi3e2e's chat path (ChatSession) and a bare onnxruntime-genai loop. Peers on the same model, same prompt tokens, same run: llama.cpp
Q4_0 and Q4_K_M (llama-cpp-python from .venv-peers, see `make bench-peers`; the GGUF is made
with the converter vendored in its source distribution) and transformers fp32. All engines
stay loaded and are timed round-robin, so a change in machine load hits them alike; medians.
Each round first reads the memory bandwidth the machine gives (int4 decode is bound by it).
phi3e2e's engines load as `chat` loads them (weights on 2 MiB pages, phi3e2e.infer.huge_pages);
one candidate keeps 4 KiB pages to show what that is worth.

Quality: the held-out loss (phi3e2e.evaluate.evaluation's loss, on the dataset's eval split) of each
candidate build of a fine-tuned model against the merged fp32 model it was built from: the
tiny model after `finetune` (hidden 64: blocks 32 and 64 only) and a wider tiny model
(hidden 256, so block 128 is measured too). The rule: the fastest, smallest build within 2%.

Each engine's weights read per token: for phi3e2e, the anonymous mappings its load added (the
int4 weights as onnxruntime prepacked them, scales and block sums included); for llama.cpp, the GGUF's
tensors with one row of the input embedding. With the bandwidth of each round this shows how
close each engine runs to the memory bound, and which ratio equal bandwidth use would give.

Prints the tables and writes JSON to benchmarks/results/int4-options.json, and a PNG beside it
(per round: tok/s and the phi3e2e ÷ llama.cpp Q4_0 ratio against the measured bandwidth;
`--plot-with earlier.json` adds the rounds of earlier runs).
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
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
RESULTS = REPO / "benchmarks" / "results"
PEERS_PYTHON = REPO / ".venv-peers" / "bin" / "python"
PEER_SCRIPT = REPO / "benchmarks" / "peers" / "llama_cpp_peer.py"
NEW_TOKENS = 128
PROMPT_TOKENS = 32
QUALITY_LIMIT = 0.02  # int4 held-out loss at most 2% above the merged fp32 model's
EMBED = ["MatMul", "Gather"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Candidate:
    name: str
    options: dict  # ModelBuilder int4 options
    all_cores: bool = True  # write intra_op_num_threads = physical cores into genai_config.json
    bare: bool = False  # also time a bare onnxruntime-genai loop (the chat path's overhead check)
    huge_pages: bool = True  # weights on 2 MiB pages after loading, as `chat` does (phi3e2e.infer.huge_pages)

    @property
    def build_key(self) -> str:
        block = self.options.get("int4_block_size", 32)
        level = self.options.get("int4_accuracy_level", 4)
        embed = "-embed" if "Gather" in self.options.get("int4_op_types_to_quantize", []) else ""
        asym = "-asym" if self.options.get("int4_is_symmetric") is False else ""  # ModelBuilder: symmetric
        return f"b{block}-acc{level}{embed}{asym}"


def speed_candidates() -> list[Candidate]:
    from phi3e2e.build.options import CPU_INT4_DEFAULTS

    return [
        Candidate("ModelBuilder default (block 32, 1 thread)", {}, all_cores=False, bare=True),
        Candidate("block 32, all cores", {"int4_block_size": 32}),
        Candidate("block 64, all cores", {"int4_block_size": 64}),
        Candidate("block 128, all cores", {"int4_block_size": 128}),
        Candidate("block 32 + int4 embedding", {"int4_block_size": 32, "int4_op_types_to_quantize": EMBED}),
        Candidate("block 128 + int4 embedding, acc 1", {"int4_block_size": 128, "int4_accuracy_level": 1,
                                                         "int4_op_types_to_quantize": EMBED}),
        Candidate("block 256 + int4 embedding", {"int4_block_size": 256, "int4_op_types_to_quantize": EMBED}),
        Candidate("phi3e2e default, 4 KiB pages", dict(CPU_INT4_DEFAULTS), huge_pages=False),
        Candidate("phi3e2e default but symmetric", dict(CPU_INT4_DEFAULTS, int4_is_symmetric=True)),
        Candidate("phi3e2e default: block 128 + int4 embedding", dict(CPU_INT4_DEFAULTS), bare=True),
    ]


def quality_candidates(hidden: int) -> list[Candidate]:
    found = []
    for block in (32, 64, 128, 256):
        if block > hidden:  # phi3e2e refuses blocks wider than the hidden size
            continue
        for embed in ("", " + int4 embedding"):
            for symmetric in (True, False):
                options = {"int4_block_size": block, "int4_is_symmetric": symmetric}
                if embed:
                    options["int4_op_types_to_quantize"] = EMBED
                found.append(Candidate(f"block {block}{embed}, {'' if symmetric else 'a'}symmetric", options))
    top = max(block for block in (32, 64, 128, 256) if block <= hidden)
    found.append(Candidate(f"block {top} + int4 embedding, asymmetric, acc 1",
                           {"int4_block_size": top, "int4_accuracy_level": 1, "int4_op_types_to_quantize": EMBED,
                            "int4_is_symmetric": False}))
    return found


# --- building ----------------------------------------------------------------------------------


def build_int4(hf_dir: Path, out_dir: Path, options: dict) -> Path:
    """ModelBuilder int4 for CPU with Olive's patches (phi3e2e.build.base_int4.build), in a subprocess; cached."""
    if (out_dir / "genai_config.json").is_file():
        return out_dir
    partial = out_dir.with_name(out_dir.name + ".partial")
    subprocess.run(["rm", "-rf", str(partial)], check=True)
    partial.mkdir(parents=True)
    command = [sys.executable, "-m", "phi3e2e.build.base_int4", str(hf_dir), str(partial),
               json.dumps({"execution_provider": "cpu", **options})]
    start = time.monotonic()
    with open(out_dir.with_name(out_dir.name + ".log"), "w") as out:
        done = subprocess.run(command, check=False, stdout=out, stderr=subprocess.STDOUT,
                              env=dict(os.environ, OLIVE_DISABLE_TELEMETRY="1"))
    if done.returncode != 0:
        raise SystemExit(f"building {out_dir.name} failed; see {out_dir.with_name(out_dir.name + '.log')}")
    subprocess.run(["rm", "-rf", str(partial / "cache")], check=True)
    partial.rename(out_dir)
    log(f"  built {out_dir.name} in {time.monotonic() - start:.0f} s")
    return out_dir


def candidate_folder(build_dir: Path, candidate: Candidate, threads: int) -> Path:
    """The build with this candidate's thread setting: a folder of links with its own genai_config."""
    from phi3e2e.infer.engines.genai import use_all_cores

    folder = build_dir.with_name(build_dir.name + ("-cores" if candidate.all_cores else "-default-threads"))
    if not folder.is_dir():
        folder.mkdir()
        for item in build_dir.iterdir():
            if item.name != "genai_config.json":
                (folder / item.name).symlink_to(item.resolve())
        (folder / "genai_config.json").write_text((build_dir / "genai_config.json").read_text())
    if candidate.all_cores:
        use_all_cores(folder, threads)
    return folder


def folder_bytes(folder: Path) -> int:
    return sum(f.resolve().stat().st_size for f in folder.iterdir() if f.is_file())


# --- speed -------------------------------------------------------------------------------------


class LlamaCppPeer:
    """A GGUF model loaded in the peers venv; `run()` asks it for one timed decode."""

    def __init__(self, gguf: Path, prompt_ids: list[int], threads: int):
        self.process = subprocess.Popen(
            [str(PEERS_PYTHON), str(PEER_SCRIPT), "serve", str(gguf), "--prompt-ids", ",".join(map(str, prompt_ids)),
             "--threads", str(threads), "--new-tokens", str(NEW_TOKENS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        ready = json.loads(self.process.stdout.readline() or "{}")
        if not ready.get("ready"):
            raise SystemExit(f"llama.cpp peer failed to load {gguf}")
        self.bytes_per_token = ready["bytes_per_token"]

    def run(self) -> dict:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def make_ggufs(hf_dir: Path, work_dir: Path, quants: tuple[str, ...]) -> dict[str, Path]:
    peer = [str(PEERS_PYTHON), str(PEER_SCRIPT)]
    f16 = work_dir / "model-f16.gguf"
    if not f16.is_file():
        log("Converting the HF model to GGUF (llama.cpp's vendored converter) ...")
        subprocess.run(peer + ["convert", str(hf_dir), str(f16)], check=True, capture_output=True)
    ggufs = {}
    for quant in quants:
        target = work_dir / f"model-{quant.lower()}.gguf"
        if not target.is_file():
            log(f"Quantizing GGUF to {quant} ...")
            subprocess.run(peer + ["quantize", str(f16), str(target), quant], check=True, capture_output=True)
        ggufs[quant] = target
    return ggufs


def measure_speed(args, threads: int) -> dict:
    import onnxruntime_genai as og  # noqa: F401  (fail early if missing)
    import torch
    from decode_speed import (
        read_bandwidth,
        time_chat_path,
        time_transformers,
        user_text_for,
        weights_read_per_token,
        write_phi3_mini_shaped,
    )
    from transformers import AutoModelForCausalLM

    from phi3e2e.infer.chat import ChatSession
    from phi3e2e.infer.engines.genai import GenaiEngine
    from phi3e2e.infer.generation import GenerationOptions

    work = args.work_dir / f"phi3-mini-shaped-{args.layers}-layers"
    hf_dir = write_phi3_mini_shaped(work / "hf-bf16", args.layers)

    candidates = speed_candidates()
    if args.head_to_head:
        candidates = [c for c in candidates if c.name.startswith("phi3e2e default:")]
    log(f"Building {len({c.build_key for c in candidates})} int4 candidates (cached in {work}) ...")
    folders = {c.name: candidate_folder(build_int4(hf_dir, work / c.build_key, c.options), c, threads)
               for c in candidates}
    peers_ready = PEERS_PYTHON.is_file() and not args.skip_peers
    ggufs = make_ggufs(hf_dir, work, ("Q4_0",) if args.head_to_head else ("Q4_0", "Q4_K_M")) if peers_ready else {}
    if not peers_ready:
        log("No .venv-peers (run `make bench-peers`): skipping llama.cpp")

    log("Loading every engine ...")
    options = GenerationOptions(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    sessions = {c.name: ChatSession(folders[c.name], options,
                                    engine=GenaiEngine(folders[c.name], "cpu", huge_pages=c.huge_pages))
                for c in candidates}
    for session in sessions.values():  # time decode on the pages `chat` settles on, not during the copy
        if session.engine.use_huge_pages():
            session.engine.huge_pages_done.join()
    first = next(iter(sessions.values()))
    prompt_text = user_text_for(first.engine, PROMPT_TOKENS)
    prompt_ids = first.prompt_tokens(prompt_text)
    peers = {f"llama.cpp {quant}": LlamaCppPeer(path, prompt_ids, threads) for quant, path in ggufs.items()}

    def bare(session) -> dict:
        from decode_speed import time_bare_genai

        return time_bare_genai(session.engine.model, prompt_ids)

    engines: dict[str, callable] = {}
    for c in candidates:
        engines[f"{c.name} | chat"] = lambda s=sessions[c.name]: time_chat_path(s, prompt_text)
        if c.bare:
            engines[f"{c.name} | bare"] = lambda s=sessions[c.name]: bare(s)
    for name, peer in peers.items():
        engines[name] = peer.run
    for run in engines.values():  # warm-up
        run()
    samples: dict[str, list[dict]] = {name: [] for name in engines}
    load, waited, bandwidth = [], [], []
    for repeat in range(args.repeats):
        load.append(os.getloadavg()[0])
        bandwidth.append(read_bandwidth(threads, gib=0.5, tries=5) / 1e9)  # GB/s now: decode is bound by it
        log(f"  round {repeat + 1}/{args.repeats} (1-min load {load[-1]:.2f}, memory read {bandwidth[-1]:.1f} GB/s)")
        # Every other round in reverse: the engine timed right after the bandwidth probe ran slower (the chat path
        # came out 0.88x the bare loop at 16 layers in a fixed order, 0.98x alternating in one process).
        for name, run in (reversed(engines.items()) if repeat % 2 else engines.items()):
            time.sleep(0.2)  # let the previous engine's spinning threads go idle
            waited.append(wait_until_quiet(args.max_busy, args.max_wait))
            samples[name].append(run())
    for peer in peers.values():
        peer.close()

    rows = []
    for c in candidates:
        chat, bare_runs = samples[f"{c.name} | chat"], samples.get(f"{c.name} | bare")
        rows.append({"engine": f"phi3e2e int4: {c.name}", "options": c.options, "all_cores": c.all_cores,
                     "chat_tok_s": statistics.median(r["decode_tok_s"] for r in chat),
                     "chat_tok_s_each": [round(r["decode_tok_s"], 1) for r in chat],
                     "bytes": folder_bytes(folders[c.name]),
                     "bytes_per_token": weights_read_per_token(folders[c.name])})
        if bare_runs:
            rows[-1]["bare_tok_s"] = statistics.median(r["decode_tok_s"] for r in bare_runs)
            rows[-1]["bare_tok_s_each"] = [round(r["decode_tok_s"], 1) for r in bare_runs]
    for name, path in ggufs.items():
        runs = samples[f"llama.cpp {name}"]
        rows.append({"engine": f"llama.cpp {name}", "bare_tok_s": statistics.median(r["decode_tok_s"] for r in runs),
                     "bare_tok_s_each": [round(r["decode_tok_s"], 1) for r in runs], "bytes": path.stat().st_size,
                     "bytes_per_token": peers[f"llama.cpp {name}"].bytes_per_token})
    del sessions

    if not (args.skip_transformers or args.head_to_head):
        log("transformers fp32 (one run after a warm-up) ...")
        hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        with torch.inference_mode():
            hf_model.generate(torch.tensor([prompt_ids]), max_new_tokens=4, do_sample=False)
        wait_until_quiet(args.max_busy, args.max_wait)
        hf = time_transformers(hf_model, prompt_ids)
        rows.append({"engine": "transformers fp32", "bare_tok_s": hf["decode_tok_s"],
                     "bytes": sum(f.stat().st_size for f in hf_dir.glob("*.safetensors"))})
    quiet = [busy for busy, _ in waited]
    return {"rows": rows, "load_1m_each_round": load, "read_gb_s_each_round": bandwidth, "busy_before_runs": {
                "median": statistics.median(quiet), "max": max(quiet), "limit": args.max_busy,
                "runs_started_busy": sum(busy > args.max_busy for busy in quiet),
                "seconds_waited": round(sum(w for _, w in waited), 1)}, "prompt_tokens": len(prompt_ids), "layers": args.layers,
            "paired_ratios": paired_ratios(samples, candidates)}


def cpu_busy(seconds: float = 0.3) -> float:
    """Share of all CPUs busy over `seconds` (/proc/stat), measured while this benchmark is idle."""
    def sample():
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_until_quiet(max_busy: float, max_wait: float) -> tuple[float, float]:
    """Other work on a shared machine skews 2-thread decoding badly: start each run when it is quiet."""
    start = time.monotonic()
    busy = cpu_busy()
    while busy > max_busy and time.monotonic() - start < max_wait:
        time.sleep(1)
        busy = cpu_busy()
    return busy, time.monotonic() - start


def paired_ratios(samples: dict, candidates: list[Candidate]) -> dict:
    """Per round, chat tok/s of each candidate / llama.cpp Q4_0 tok/s in the same round; median."""
    peer = samples.get("llama.cpp Q4_0")
    if not peer:
        return {}
    return {c.name: statistics.median(a["decode_tok_s"] / b["decode_tok_s"]
                                      for a, b in zip(samples[f"{c.name} | chat"], peer)) for c in candidates}


# --- quality -----------------------------------------------------------------------------------


QUALITY_MODELS = {"tiny": None, "tiny-wide": {"hidden_size": 256, "intermediate_size": 512}}


def measure_quality(args) -> list[dict]:
    """The candidates on `--run` (a user's own fine-tune), or on the two tiny fine-tunes made here."""
    if args.run:
        run_dir = args.run.resolve()
        return quality_of_run(run_dir, run_dir.name, args.work_dir / f"quality-{run_dir.name}-builds")
    results = []
    for label in QUALITY_MODELS:
        run_dir = tiny_quality_run(args.work_dir, label)
        results += quality_of_run(run_dir, label, args.work_dir / f"quality-{label}-builds")
    return results


def tiny_quality_run(work_dir: Path, label: str) -> Path:
    """`prepare --tiny` + `finetune --algo lora` of a tiny model (widened for `tiny-wide`); cached."""
    from phi3e2e.prepare.prepare_project import prepare
    from phi3e2e.prepare.tiny_model import TINY, write_tiny_model
    from phi3e2e.project import Project
    from phi3e2e.runs import try_read_record
    from phi3e2e.train.finetune import finetune

    def quiet(_message):
        pass

    project = Project(work_dir / f"quality-{label}")
    run_dir = project.gen_model / "quality"
    record = try_read_record(run_dir)
    if record and record.status == "succeeded":
        return run_dir
    log(f"Fine-tuning the {label} model (phi3e2e prepare --tiny; finetune --algo lora) ...")
    prepare(project, tiny=True, say=quiet)
    model = None
    if QUALITY_MODELS[label]:
        from decode_speed import benchmark_corpus

        model = project.model_cache / label
        if not (model / "phi3e2e-tiny.json").is_file():
            write_tiny_model(model, benchmark_corpus(), shape=replace(TINY, **QUALITY_MODELS[label]))
    finetune(project, algo="lora", target="local", model=str(model) if model else None, run_name="quality", say=quiet)
    return run_dir


def quality_of_run(run_dir: Path, label: str, builds_dir: Path) -> list[dict]:
    """Held-out loss of the run's own onnx-int4 and of each candidate built from its merged/."""
    from phi3e2e.evaluate.eval_data import load_eval_rows
    from phi3e2e.evaluate.losses import onnx_loss, torch_loss
    from phi3e2e.project import Project
    from phi3e2e.runs import try_read_record

    record = try_read_record(run_dir)
    if record is None or record.status != "succeeded" or not (run_dir / "merged" / "config.json").is_file():
        raise SystemExit(f"{run_dir}: not a finished phi3e2e run with a merged/ model")
    project = Project(run_dir.parent.parent)  # run.json paths are relative to the project
    base_model, merged = project.resolve(record.base_model), run_dir / "merged"
    hidden = json.loads((merged / "config.json").read_text())["hidden_size"]
    data = load_eval_rows(project.resolve(record.dataset), base_model, record.settings.data, None)
    fp32 = torch_loss(merged, data.token_ids, base_model)
    log(f"  {label} (hidden {hidden}): merged fp32 held-out loss {fp32:.4f} on {len(data.token_ids)} rows")
    measured = []
    if record.cpu_int4:
        built = record.cpu_int4["build_options"]
        measured.append((f"phi3e2e finetune's onnx-int4 {_options_label(built)}", run_dir / "onnx-int4", built))
    for c in quality_candidates(hidden):
        measured.append((c.name, build_int4(merged, builds_dir / c.build_key, c.options), c.options))
    results = []
    for name, folder, options in measured:
        loss = onnx_loss(folder, data.token_ids, base_model)
        results.append({"model": label, "hidden": hidden, "build": name, "options": options,
                        "fp32_loss": fp32, "int4_loss": loss, "relative": loss / fp32 - 1,
                        "bytes": folder_bytes(folder), "eval_rows": len(data.token_ids)})
        log(f"    {name:<48} {loss:.4f} ({loss / fp32 - 1:+.2%})")
    return results


def _options_label(options: dict) -> str:
    embed = " + int4 embedding" if "Gather" in (options.get("int4_op_types_to_quantize") or []) else ""
    symmetry = "asymmetric" if options.get("int4_is_symmetric") is False else "symmetric"
    return f"(block {options.get('int4_block_size')}{embed}, {symmetry}, acc {options.get('int4_accuracy_level')})"


# --- report ------------------------------------------------------------------------------------


def default_and_q4_0(speed: dict) -> tuple[dict, dict | None]:
    rows = speed["rows"]
    default = next(r for r in rows if r["engine"].startswith("phi3e2e int4: phi3e2e default:"))
    return default, next((r for r in rows if r["engine"] == "llama.cpp Q4_0"), None)


def speed_table(speed: dict) -> str:
    rows = speed["rows"]
    default, q4_0 = default_and_q4_0(speed)
    lines = [
        "| engine | decode tok/s (chat path) | decode tok/s (bare loop) | size MB | size / GGUF Q4_0 "
        "| weights read per token MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        chat = f"{r['chat_tok_s']:.1f}" if "chat_tok_s" in r else "–"
        bare = f"{r['bare_tok_s']:.1f}" if "bare_tok_s" in r else "–"
        share = f"{r['bytes'] / q4_0['bytes']:.2f}" if q4_0 else "–"
        streamed = f"{r['bytes_per_token'] / 1e6:.0f}" if "bytes_per_token" in r else "–"
        lines.append(f"| {r['engine']} | {chat} | {bare} | {r['bytes'] / 1e6:.0f} | {share} | {streamed} |")
    if speed["paired_ratios"]:
        lines += ["", "phi3e2e chat tok/s ÷ llama.cpp Q4_0 tok/s, median of same-round pairs:"]
        lines += [f"  {name:<48} {ratio:.2f}x" for name, ratio in speed["paired_ratios"].items()]
        lines += ["", f"Weights read per token, llama.cpp Q4_0 ÷ phi3e2e default: "
                      f"{q4_0['bytes_per_token'] / default['bytes_per_token']:.2f}x (the ratio if both read memory "
                      "equally fast)",
                  "Each round: memory read GB/s; phi3e2e default chat tok/s (GB/s of weights); "
                  "llama.cpp Q4_0 tok/s (GB/s); ratio:"]
        for gb_s, ours, peer in zip(speed["read_gb_s_each_round"], default["chat_tok_s_each"], q4_0["bare_tok_s_each"]):
            lines.append(f"  {gb_s:5.1f}  {ours:6.1f} ({ours * default['bytes_per_token'] / 1e9:4.1f})  "
                         f"{peer:6.1f} ({peer * q4_0['bytes_per_token'] / 1e9:4.1f})  {ours / peer:.2f}x")
    return "\n".join(lines)


def plot_rounds(runs: list[tuple[str, dict]], png: Path) -> None:
    """Per round: tok/s of phi3e2e's default and llama.cpp Q4_0, and their ratio, against the memory
    bandwidth measured just before it. `runs`: (label, speed result), this run first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    markers, all_ratios, rounds = "osD^v", [], 0
    top = max(x for _, speed in runs for x in speed["read_gb_s_each_round"]) * 1.1
    for i, (label, speed) in enumerate(runs):
        default, q4_0 = default_and_q4_0(speed)
        gb_s, marker = speed["read_gb_s_each_round"], markers[i % len(markers)]
        rounds += len(gb_s)
        left.scatter(gb_s, default["chat_tok_s_each"], color="tab:blue", marker=marker,
                     label=f"phi3e2e default, {label}")
        left.scatter(gb_s, q4_0["bare_tok_s_each"], color="tab:orange", marker=marker, label=f"llama.cpp Q4_0, {label}")
        ratios = [a / b for a, b in zip(default["chat_tok_s_each"], q4_0["bare_tok_s_each"])]
        all_ratios += ratios
        right.scatter(gb_s, ratios, color=f"C{i + 2}", marker=marker,
                      label=f"{label}: median {statistics.median(ratios):.2f}x")
    default, q4_0 = default_and_q4_0(runs[0][1])
    for row, name, color in ((default, "phi3e2e", "tab:blue"), (q4_0, "llama.cpp Q4_0", "tab:orange")):
        per_token = row["bytes_per_token"]
        left.plot([0, top], [0, top * 1e9 / per_token], color=color, linestyle="--", linewidth=1,
                  label=f"{name} at the bandwidth bound ({per_token / 1e6:.0f} MB/token)")
    equal = q4_0["bytes_per_token"] / default["bytes_per_token"]
    right.axhline(1.3, color="red", linestyle=":", label="target 1.3x")
    right.axhline(equal, color="grey", linestyle="--", label=f"both at the bandwidth bound ({equal:.2f}x)")
    left.set_xlim(0, top)
    left.set_ylim(0, None)
    left.set_ylabel("decode tokens/s")
    right.set_ylim(min(*all_ratios, equal) - 0.05, max(*all_ratios, 1.3) + 0.05)
    right.set_ylabel("phi3e2e ÷ llama.cpp Q4_0, same round")
    for ax in (left, right):
        ax.set_xlabel("memory read GB/s (measured before the round)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Decode, Phi-3-mini-shaped ({runs[0][1]['layers']} layers), {NEW_TOKENS} greedy tokens, "
                 f"{rounds} rounds", fontsize=10)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def quality_table(quality: list[dict]) -> str:
    lines = ["| model | int4 build | size MB | held-out loss int4 | merged fp32 | change | within 2% |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in quality:
        ok = "yes" if r["relative"] <= QUALITY_LIMIT else "NO"
        lines.append(f"| {r['model']} (hidden {r['hidden']}) | {r['build']} | {r['bytes'] / 1e6:.2f} | "
                     f"{r['int4_loss']:.4f} | {r['fp32_loss']:.4f} | {r['relative']:+.2%} | {ok} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the Phi-3-mini-shaped model")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds over every engine (median)")
    parser.add_argument("--threads", type=int, default=None, help="threads for every engine (default: physical cores)")
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "phi3e2e-int4-options")
    parser.add_argument("--max-busy", type=float, default=0.15,
                        help="start a timed run only when other work uses at most this share of the CPUs")
    parser.add_argument("--max-wait", type=float, default=120, help="seconds to wait for that before running anyway")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--run", type=Path, default=None,
                        help="measure quality on this finished run (gen-model/<run>) instead of the tiny models")
    parser.add_argument("--skip-peers", action="store_true", help="no llama.cpp even if .venv-peers exists")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--head-to-head", action="store_true",
                        help="time only phi3e2e's default and llama.cpp Q4_0 (cheap rounds: use many --repeats)")
    parser.add_argument("--out", type=Path, default=RESULTS / "int4-options.json")
    parser.add_argument("--plot-with", type=Path, action="append", default=[],
                        help="an earlier result JSON whose rounds the plot shows too (repeatable)")
    args = parser.parse_args()

    from phi3e2e.build.options import CPU_INT4_DEFAULTS
    from phi3e2e.infer.threads import physical_cores

    threads = args.threads or physical_cores()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    result = {"machine": {"cpus": os.cpu_count(), "physical_cores": physical_cores(), "threads": threads,
                          "platform": platform.platform(), "load_1m_at_start": os.getloadavg()[0]},
              "started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "new_tokens": NEW_TOKENS, "defaults": CPU_INT4_DEFAULTS, "versions": versions()}
    if not args.skip_quality:
        result["quality"] = measure_quality(args)
    if not args.skip_speed:
        result["speed"] = measure_speed(args, threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{os.cpu_count()} CPUs, {threads} threads per engine, {NEW_TOKENS} new greedy tokens")
    if "speed" in result:
        speed = result["speed"]
        busy = speed["busy_before_runs"]
        print(f"\nPhi-3-mini-shaped model, {speed['layers']} layers, random weights, {speed['prompt_tokens']}-token "
              f"prompt; 1-min load per round: {', '.join(f'{x:.1f}' for x in speed['load_1m_each_round'])}; "
              f"memory read GB/s per round: {', '.join(f'{x:.0f}' for x in speed['read_gb_s_each_round'])}; "
              f"CPU busy before each run: median {busy['median']:.0%}, max {busy['max']:.0%} "
              f"({busy['runs_started_busy']} runs started above {busy['limit']:.0%})\n")
        print(speed_table(speed))
        if speed["paired_ratios"]:
            earlier = [json.loads(path.read_text()) for path in args.plot_with]
            earlier = [(run.get("started_at", "earlier"), run["speed"]) for run in earlier]
            plot_rounds([(result["started_at"], speed)] + earlier, args.out.with_suffix(".png"))
            log(f"Wrote {args.out.with_suffix('.png')}")
    if "quality" in result:
        print("\nHeld-out loss of int4 builds vs the merged fp32 model they were built from (fine-tuned):\n")
        print(quality_table(result["quality"]))
    log(f"\nWrote {args.out}")


def versions() -> dict:
    """decode_speed's package versions, plus llama-cpp-python's from the peers venv."""
    from decode_speed import versions as package_versions

    found = package_versions()
    if PEERS_PYTHON.is_file():
        done = subprocess.run([str(PEERS_PYTHON), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                              capture_output=True, text=True, check=False)
        found["llama-cpp-python"] = done.stdout.strip() or None
    return found


if __name__ == "__main__":
    main()

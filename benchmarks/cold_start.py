"""`phi3e2e chat --prompt` from process start to exit, and its first answer's decode speed, with the weights mapped
from this CPU's saved prepacked file (infer/prepacked.py) and without it; llama.cpp's Python entry on the same model
as the anchor.

    .venv/bin/python benchmarks/cold_start.py --layers 16 --rounds 5      # after serve_load.py built the model
    .venv/bin/python benchmarks/cold_start.py --layers 32 --rounds 3 --model DIR --gguf FILE   # full_depth.py's

The model: benchmarks/serve_load.py's Phi-3-mini-shaped int4 run (`--layers`, built there once), and its Q4_0 GGUF
(made there by `--llama-server`) for llama.cpp when the peers venv exists (`make bench-peers`). Each round runs every
configuration once, in a fresh process each, when the machine is quiet (`--max-busy`):

- start -> exit: `chat --prompt ... --max-length 1` (imports, load, one token), as full_depth.py measures it;
- first answer: `chat --json --prompt ... --max-length 128 --min-length 128`, its own decode tok/s and first token.

Configurations: the weights repacked at load (a folder without the saved file, as PHI3E2E_PREPACKED=0 builds it)
and this CPU's saved prepacked weights mapped (the default build). One untimed run of each first puts every file in
the page cache, so each start reads what a second start of the day would. Writes
benchmarks/results/cold-start-<layers>.json. (glibc's malloc on huge pages, measured here on 2026-12-04 and
rejected, is no longer a configuration: phi3e2e does not set it.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from full_depth import chat_command, llama_cpp_command, run_measured  # noqa: E402
from int4_options import PEERS_PYTHON, RESULTS, wait_until_quiet  # noqa: E402

ANSWER_TOKENS = 128
REPACKED, PREPACKED = "repacked at load (PHI3E2E_PREPACKED=0)", "saved prepacked weights, mapped (the default)"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def model_folders(onnx_dir: Path, work: Path) -> dict[str, Path]:
    """The run's model twice, as links to the same files: once with this CPU's saved prepacked weights, once
    without (so both read the same bytes from the same page cache)."""
    from phi3e2e.infer.prepacked import CACHE, save_prepacked

    folders = {}
    for name in ("plain", "prepacked"):
        folder = work / f"cold-start-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        for source in onnx_dir.iterdir():
            if source.is_file() and not (folder / source.name).exists():
                (folder / source.name).symlink_to(source.resolve())
        folders[name] = folder
    if not (folders["prepacked"] / CACHE).is_dir():
        log("Saving this CPU's prepacked weights (once) ...")
        start = time.perf_counter()
        save_prepacked(folders["prepacked"])
        log(f"  {time.perf_counter() - start:.1f} s")
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-busy", type=float, default=0.15)
    parser.add_argument("--max-wait", type=float, default=120)
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "phi3e2e-serve-load")
    parser.add_argument("--model", type=Path, default=None,
                        help="an int4 folder of --layers layers (e.g. full_depth.py's) instead of serve_load.py's run")
    parser.add_argument("--gguf", type=Path, default=None, help="the Q4_0 GGUF of the same model, with --model")
    args = parser.parse_args()

    from phi3e2e.infer.threads import physical_cores

    project = args.work_dir / f"serve-phi3-mini-shaped-{args.layers}-layers"
    onnx_dir = args.model or project / "gen-model" / "bench" / "onnx-int4"
    if not (onnx_dir / "genai_config.json").is_file():
        raise SystemExit(f"{onnx_dir}: missing; run benchmarks/serve_load.py --layers {args.layers} first")
    folders = model_folders(onnx_dir, args.work_dir / f"cold-start-{args.layers}")
    configs = {REPACKED: folders["plain"], PREPACKED: folders["prepacked"]}
    gguf = args.gguf or project / "model-q4_0.gguf"
    peer = PEERS_PYTHON.is_file() and gguf.is_file()
    threads = physical_cores()
    samples: dict[str, list[dict]] = {name: [] for name in configs}
    if peer:
        samples["llama.cpp (llama-cpp-python)"] = []
    llama_cpp = llama_cpp_command(gguf, threads, 1)
    for folder in configs.values():  # untimed: every configuration's files into the page cache first
        run_measured(chat_command(folder, 1))
    if peer:
        run_measured(llama_cpp)
    for round_ in range(args.rounds):
        log(f"round {round_ + 1}/{args.rounds}")
        for name, folder in configs.items():
            wait_until_quiet(args.max_busy, args.max_wait)
            start_exit = run_measured(chat_command(folder, 1))["seconds"]
            wait_until_quiet(args.max_busy, args.max_wait)
            answer = json.loads(run_measured([*chat_command(folder, ANSWER_TOKENS), "--json"])["stdout"])
            samples[name].append({"start_to_exit_s": start_exit, "first_token_s": answer["first_token_seconds"],
                                  "decode_tok_s": answer["decode_tokens_per_second"]})
        if peer:
            wait_until_quiet(args.max_busy, args.max_wait)
            seconds = run_measured(llama_cpp)["seconds"]
            samples["llama.cpp (llama-cpp-python)"].append({"start_to_exit_s": seconds})
    rows = {name: {key: round(statistics.median(s[key] for s in each), 3) for key in each[0]}
            for name, each in samples.items()}  # fmt: skip
    result = {"layers": args.layers, "threads": threads, "rounds": args.rounds, "answer_tokens": ANSWER_TOKENS,
              "started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "medians": rows, "each": samples}
    out = RESULTS / f"cold-start-{args.layers}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Phi-3-mini-shaped int4, {args.layers} layers, {threads} threads; medians of {args.rounds} rounds\n")
    print("| start | chat --prompt start -> exit (s) | first answer: first token (s) | first answer: decode tok/s |")
    print("| --- | ---: | ---: | ---: |")
    for name, row in rows.items():
        print(f"| {name} | {row['start_to_exit_s']:.2f} | {row.get('first_token_s', float('nan')):.2f} "
              f"| {row.get('decode_tok_s', float('nan')):.1f} |")
    log(f"\nWrote {out}")


if __name__ == "__main__":
    main()

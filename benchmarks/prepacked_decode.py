"""Decode with this CPU's saved prepacked weights mapped from their file, against the usual load (weights repacked
into memory, then moved onto 2 MiB pages after the first answer): fresh processes, in alternating pairs.

    .venv/bin/python benchmarks/prepacked_decode.py --layers 32 --pairs 3     # after cold_start.py made the folders

The folders are benchmarks/cold_start.py's (`cold-start-plain` and `cold-start-prepacked` under its work dir: the
same files, one with the saved prepacked weights). Each process loads the model as `chat` does (GenaiEngine) and
decodes `--answers` answers of 128 greedy tokens from a 32-token prompt through the bare onnxruntime-genai loop,
moving the repacked weights onto 2 MiB pages after the first answer, as `chat` does. The first answer is reported
apart (its pages differ); the steady figure is the median of the others. Pairs alternate which goes first.
Writes benchmarks/results/prepacked-decode-<layers>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

ONE_PROCESS = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from decode_speed import time_bare_genai
from phi3e2e.infer.engines.genai import GenaiEngine

engine = GenaiEngine(Path(sys.argv[1]), "cpu")
tok_s = []
for answer in range(int(sys.argv[3])):
    tok_s.append(time_bare_genai(engine.model, list(range(100, 132)))["decode_tok_s"])
    if answer == 0 and (moving := engine.use_huge_pages()) is not None:
        moving.join()
print(json.dumps({"prepacked": engine.prepacked is not None, "tok_s": tok_s}))
"""


def one_process(folder: Path, answers: int) -> dict:
    done = subprocess.run([sys.executable, "-c", ONE_PROCESS, str(folder), str(HERE), str(answers)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--answers", type=int, default=4)
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "phi3e2e-int4-options")
    args = parser.parse_args()

    from int4_options import wait_until_quiet

    folders = {name: args.work_dir / f"cold-start-{args.layers}" / f"cold-start-{name}" for name in ("plain", "prepacked")}
    pairs = []
    for pair in range(args.pairs):
        order = ("plain", "prepacked") if pair % 2 == 0 else ("prepacked", "plain")
        got = {}
        for name in order:
            wait_until_quiet(0.15, 300)
            got[name] = one_process(folders[name], args.answers)
            if got[name]["prepacked"] != (name == "prepacked"):
                raise SystemExit(f"{folders[name]}: expected prepacked={name == 'prepacked'}; rerun cold_start.py")
        pairs.append({"first": order[0]} | {name: [round(t, 1) for t in got[name]["tok_s"]] for name in order})
        print(f"pair {pair + 1}: {pairs[-1]}", file=sys.stderr, flush=True)
    rows = []
    for pair in pairs:
        steady = {name: statistics.median(pair[name][1:]) for name in ("plain", "prepacked")}
        rows.append({"first answer": {name: pair[name][0] for name in ("plain", "prepacked")}, "steady": steady,
                     "ratio": steady["prepacked"] / steady["plain"]})
    result = {"layers": args.layers, "started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "pairs": pairs,
              "steady_ratio_median": round(statistics.median(r["ratio"] for r in rows), 3)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"prepacked-decode-{args.layers}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"Decode tok/s, {args.layers} layers, fresh processes in pairs ({args.answers} answers each)\n")
    print("| pair | first | repacked: first answer / steady | prepacked: first answer / steady | prepacked ÷ repacked |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for i, (pair, row) in enumerate(zip(pairs, rows), 1):
        print(f"| {i} | {pair['first']} | {row['first answer']['plain']} / {row['steady']['plain']} "
              f"| {row['first answer']['prepacked']} / {row['steady']['prepacked']} | {row['ratio']:.2f}x |")
    print(f"\nmedian of the pairs: {result['steady_ratio_median']:.2f}x")


if __name__ == "__main__":
    main()

"""Two fine-tunes served at once: as two adapter runs on one shared int4 base vs as two merged int4 runs.

    .venv/bin/python benchmarks/serve_adapters.py --layers 16     # ~25 minutes the first time (5 int4 builds)

The Phi-3-mini-shaped random model of benchmarks/serve_load.py (`--layers` of it) and two LoRA adapters in
phi3e2e's default shape (FinetuneSettings().lora, random B so each changes the answers) become four runs of
one project: `merged-1`, `merged-2` (the adapter merged, built as int4 with phi3e2e's CPU options) and
`adapter-1`, `adapter-2` (the same adapters through the real `export --ship adapter` build). `phi3e2e serve`
then answers `--clients` streams per run for the two merged runs, and in a fresh server for the two adapter
runs: aggregate tok/s, first token, the server's resident memory and what /health counts for the models.
Writes benchmarks/results/serve-adapters.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from serve_load import PROMPT_TOKENS, RUN, Server, bench_project, one_request, percentile  # noqa: E402

RESULTS = HERE / "results"
KINDS = {"merged": ("merged-1", "merged-2"), "adapter": ("adapter-1", "adapter-2")}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_runs(project: Path) -> None:
    """The four runs (cached: a run whose run.json exists is kept)."""
    from adapter_bytes import write_random_adapter
    from int4_options import build_int4
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from phi3e2e import runs
    from phi3e2e.build.adapter_int4 import export_adapter
    from phi3e2e.build.options import CPU_INT4_DEFAULTS, run_export_settings
    from phi3e2e.infer.engines.genai import use_all_cores
    from phi3e2e.project import Project
    from phi3e2e.workflow.settings import FinetuneSettings

    hf_dir = project / "model-cache" / "phi3-mini-shaped"
    for index in (1, 2):
        adapter_dir = project / "model-cache" / f"bench-adapter-{index}"
        if not (adapter_dir / "adapter_config.json").is_file():
            write_random_adapter(hf_dir, adapter_dir, seed=index)
        for kind in KINDS:
            name = f"{kind}-{index}"
            run_dir = project / "gen-model" / name
            if (run_dir / runs.RUN_FILE).is_file():
                continue
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            settings = FinetuneSettings()  # with the CPU int4 options finetune records (the shared base's key)
            settings.export = run_export_settings(settings.export, hf_dir, trains_on_cuda=False)
            record = runs.RunRecord(name=name, algo="lora", target="local", profile="tiny", base_model=str(hf_dir),
                                    dataset="none", settings=settings, status="succeeded",
                                    finished_at=runs.now(), cpu_int4={"build_options": dict(CPU_INT4_DEFAULTS)})
            shutil.copytree(adapter_dir, run_dir / runs.ADAPTER)
            if kind == "merged":
                log(f"Building {name}: the adapter merged, as int4 ...")
                merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hf_dir), adapter_dir)
                merged_dir = project / "model-cache" / f".merged-{index}"
                merged.merge_and_unload().save_pretrained(merged_dir)
                for extra in hf_dir.iterdir():  # the tokenizer and phi3e2e's own files
                    if extra.is_file() and not (merged_dir / extra.name).exists():
                        shutil.copy2(extra, merged_dir / extra.name)
                use_all_cores(build_int4(merged_dir, run_dir / runs.ONNX_INT4, dict(CPU_INT4_DEFAULTS)))
                shutil.rmtree(merged_dir)
                runs.write_record(run_dir, record)
            else:
                log(f"Building {name}: the adapter on the shared int4 base ...")
                runs.write_record(run_dir, record)
                export_adapter(Project(project), name, say=log)


def rss_mb(pid: int) -> dict:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) // 1024 for key in ("VmRSS", "VmHWM")}


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as response:
        return json.loads(response.read())


def measure(project: Path, kind: str, user_text: str, clients: int, rounds: int) -> dict:
    models = KINDS[kind]
    server = Server(project)
    try:
        rss_after_each = [rss_mb(server.process.pid)["VmRSS"]]  # the server alone, then with each run loaded
        for model in models:
            one_request(server.port, user_text, model)  # loads it: not timed
            time.sleep(5)  # the weights' move onto 2 MiB pages after the first answer (infer/huge_pages.py)
            rss_after_each.append(rss_mb(server.process.pid)["VmRSS"])
        loaded = rss_mb(server.process.pid) | {"models_bytes": health(server.port)["models_bytes"]}
        done, walls = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            with ThreadPoolExecutor(len(models) * clients) as pool:
                done += list(pool.map(lambda model: one_request(server.port, user_text, model), models * clients))
            walls.append(time.perf_counter() - start)
        after = rss_mb(server.process.pid)
        state = health(server.port)
    finally:
        server.stop()
    ttfts = sorted(r["ttft_s"] for r in done)
    per_round = len(models) * clients * done[0]["tokens"]
    return {"kind": kind, "models": list(models), "streams": len(models) * clients, "rounds": rounds,
            "tokens_per_s_all_clients": round(statistics.median(per_round / wall for wall in walls), 1),
            "ttft_p50_s": round(percentile(ttfts, 50), 2), "ttft_p95_s": round(percentile(ttfts, 95), 2),
            "rss_loaded_mb": loaded["VmRSS"], "rss_peak_mb": after["VmHWM"], "rss_after_each_load_mb": rss_after_each,
            "models_bytes_mb": round(loaded["models_bytes"] / 1e6, 1), "largest_batch": state.get("largest_batch")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--clients", type=int, default=2, help="streams per run at once")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "phi3e2e-serve-load")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve-adapters.json")
    args = parser.parse_args()

    from decode_speed import user_text_for
    from int4_options import wait_until_quiet

    from phi3e2e.infer.engines.genai import GenaiEngine

    project = bench_project(args.work_dir, args.layers)
    make_runs(project)
    user_text = user_text_for(GenaiEngine(project / "gen-model" / RUN / "onnx-int4"), PROMPT_TOKENS)
    result = {"started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "layers": args.layers,
              "load_1m_at_start": os.getloadavg()[0], "measured": []}
    for kind in KINDS:
        busy, _ = wait_until_quiet(0.15, 600)
        log(f"Serving the two {kind} runs, {args.clients} streams each, {args.rounds} rounds (CPU busy {busy:.0%}) ...")
        result["measured"].append(measure(project, kind, user_text, args.clients, args.rounds))
        log(f"  {result['measured'][-1]}")
    result["load_1m_at_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| runs | streams | tokens/s, all | first token p50 / p95 (s) | RSS: server, + first run, + second run, "
          "peak (MB) | models (MB) |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in result["measured"]:
        print(f"| two {row['kind']} | {row['streams']} | {row['tokens_per_s_all_clients']} | {row['ttft_p50_s']} / "
              f"{row['ttft_p95_s']} | {', '.join(map(str, row['rss_after_each_load_mb']))}, {row['rss_peak_mb']} | "
              f"{row['models_bytes_mb']} |")


if __name__ == "__main__":
    main()

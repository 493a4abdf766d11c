"""Does an ONNX build compute the model it was built from? Logits of each build against the merged PyTorch model.

    .venv/bin/python benchmarks/build_agreement.py gen-model/RUN [gen-model/OTHER ...] [--rows 6]

For every ONNX folder of each run (onnx-int4/, and onnx-*/ made by `phi3e2e export`, e.g. an fp32 build),
the first `--rows` eval rows of the run's dataset, tokenized as training saw them, go through the merged
model (transformers, fp32) and through the build (onnxruntime-genai, one pass over the prompt): the largest
logit difference, the share of positions whose likeliest next token is the same, and both mean losses. An
fp32 build should agree exactly (difference ~1e-5, 100%); an int4 build should keep the loss close. This is
how the Phi-4-mini twin's builds were found answering from layer 0 (fp32: 0% agreement; docs/models.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def build_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    return np.asarray(generator.get_output("logits"))[0][-len(ids) :]


def mean_nll(logits: np.ndarray, ids: list[int]) -> float:
    logits = logits[:-1].astype(np.float64)
    peak = logits.max(-1, keepdims=True)
    log_norm = np.log(np.exp(logits - peak).sum(-1)) + peak[:, 0]
    return float((log_norm - logits[np.arange(len(ids) - 1), ids[1:]]).mean())


def measure(run_dir: Path, rows: int) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from phi3e2e import runs
    from phi3e2e.evaluate.eval_data import load_eval_rows
    from phi3e2e.project import Project

    project = Project(run_dir.resolve().parents[1])
    record = runs.read_record(run_dir)
    data = load_eval_rows(project.resolve(record.dataset), project.resolve(record.base_model), record.settings.data,
                          rows)  # fmt: skip
    merged = AutoModelForCausalLM.from_pretrained(run_dir / runs.MERGED, dtype=torch.float32).eval()
    with torch.no_grad():
        reference = [merged(torch.tensor([ids])).logits[0].numpy() for ids in data.token_ids]
    results = []
    for folder in sorted(path for path in run_dir.glob("onnx-*") if (path / "genai_config.json").is_file()):
        built = [build_logits(folder, ids) for ids in data.token_ids]
        results.append({
            "run": run_dir.name,
            "build": folder.name,
            "max_logit_difference": max(float(np.abs(b - r).max()) for b, r in zip(built, reference)),
            "same_next_token": float(np.mean([(b.argmax(-1) == r.argmax(-1)).mean() for b, r in zip(built, reference)])),
            "merged_loss": float(np.mean([mean_nll(r, ids) for r, ids in zip(reference, data.token_ids)])),
            "build_loss": float(np.mean([mean_nll(b, ids) for b, ids in zip(built, data.token_ids)])),
        })  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (gen-model/RUN)")
    parser.add_argument("--rows", type=int, default=6, help="eval rows to compare on")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    results = [row for run_dir in args.runs for row in measure(run_dir, args.rows)]
    print("| run | build | max logit difference | same next token | merged loss | build loss |")
    print("|---|---|---:|---:|---:|---:|")
    for row in results:
        print(f"| {row['run']} | {row['build']} | {row['max_logit_difference']:.4f} | {row['same_next_token']:.1%} "
              f"| {row['merged_loss']:.3f} | {row['build_loss']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

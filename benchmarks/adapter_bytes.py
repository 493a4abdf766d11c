"""Bytes of a fine-tune shipped as an adapter on the shared int4 base vs as its own merged int4 model.

    .venv/bin/python benchmarks/adapter_bytes.py --layers 1     # ~3 minutes on 2 cores

A Phi-3-mini-shaped model (hidden 3072, intermediate 8192, vocab 32064; `--layers` of them, random
weights, written like `prepare --tiny`) and a LoRA adapter in phi3e2e's default shape (r 16 on
qkv_proj, o_proj, gate_up_proj, down_proj; random B, so it changes the answers) go through the real
`--ship adapter` build (build/adapter_int4.py: Olive ModelBuilder + ExtractAdapters, phi3e2e's CPU int4
options) and the base alone through base_int4 (the merged run's int4 build has the same size). LoRA
weights sit in every layer and nowhere else, so the adapter's bytes scale with the layer count; the
base's do not (the embedding and LM head are most of a 1-layer model).
Writes benchmarks/results/adapter-bytes.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_random_adapter(model_dir: Path, adapter_dir: Path, seed: int = 0) -> None:
    """A PEFT LoRA adapter in phi3e2e's default shape (FinetuneSettings().lora) for the model in `model_dir`,
    with random B (PEFT starts B at zero, which would change nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from phi3e2e.workflow.settings import FinetuneSettings

    lora = FinetuneSettings().lora
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=list(lora.target_modules)))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.02)
    model.save_pretrained(adapter_dir)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/phi3e2e-adapter-bytes"))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from phi3e2e import runs
    from phi3e2e.build.adapter_int4 import build_adapter_form
    from phi3e2e.build.base_int4 import build
    from phi3e2e.build.options import int4_build_options
    from phi3e2e.prepare.tiny_model import PHI3_MINI_SHAPED, write_tiny_model
    from phi3e2e.project import Project
    from phi3e2e.workflow.settings import FinetuneSettings

    work = args.work_dir
    shutil.rmtree(work, ignore_errors=True)
    project = Project(work / "project")
    for folder in (project.model_cache, project.gen_model):
        folder.mkdir(parents=True)
    model_dir = project.model_cache / "phi3-mini-shaped"
    write_tiny_model(model_dir, ["a corpus line"] * 50, shape=replace(PHI3_MINI_SHAPED, num_hidden_layers=args.layers))
    lora = FinetuneSettings().lora
    adapter_dir = work / "adapter"
    write_random_adapter(model_dir, adapter_dir)
    options = {"execution_provider": "cpu"} | {
        key: value for key, value in int4_build_options({}, model_dir, for_cpu=True).items() if value is not None}
    form = build_adapter_form(project, model_dir, adapter_dir, options, project.gen_model, say=print)
    plain = work / "plain-int4"
    build(model_dir, plain, "cpu", {k: v for k, v in options.items() if k != "execution_provider"})
    shutil.rmtree(plain / "cache", ignore_errors=True)
    plain_bytes = sum(p.stat().st_size for p in plain.iterdir() if p.is_file())
    result = {
        "layers": args.layers,
        "lora": {"r": lora.r, "target_modules": list(lora.target_modules)},
        "int4_options": options,
        "adapter_bytes": form.adapter_bytes,
        "adapter_bytes_per_layer": form.adapter_bytes / args.layers,
        "shared_base_bytes": form.base_bytes,
        "plain_int4_bytes": plain_bytes,
        "adapter_file": str(form.folder / runs.ADAPTER_FILE),
    }
    out = REPO / "benchmarks" / "results" / "adapter-bytes.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

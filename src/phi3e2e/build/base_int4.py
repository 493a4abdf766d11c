"""The base model as int4 ONNX, built exactly like a fine-tune's onnx-int4/, cached in model-cache/.

`eval` compares the fine-tuned int4 model with the base model in the same form, so the base
must go through the same builder: onnxruntime-genai's ModelBuilder with Olive's ModelBuilder
pass patches applied, the run's execution provider and its int4 options. The build runs in a
subprocess (`python -m phi3e2e.build.base_int4 ...`) so its chatter goes to a log file; it is
written to a temporary folder and renamed last, under a lock (two evals at once: the second
waits for the first's build and uses it).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

from phi3e2e.errors import UserError
from phi3e2e.storage import exclusive_lock, staged_dir

BUILT_FROM = "phi3e2e-built-from.json"


def cached_base_int4(model_cache: Path, base_model: Path, options: dict, say: Callable[[str], None] = print) -> Path:
    """model-cache/.onnx-int4/<model>-<key>/: built once per base model (and its files) and options."""
    key = fingerprint(base_model, options)
    target = model_cache / ".onnx-int4" / f"{base_model.name}-{key}"
    if _built(target):
        return target
    with build_lock(target):
        if _built(target):  # another eval built it while we waited
            return target
        return _build_cached(target, base_model, options, say)


def _built(target: Path) -> bool:
    return (target / "genai_config.json").is_file() and (target / BUILT_FROM).is_file()


@contextlib.contextmanager
def build_lock(target: Path):
    """One builder per cached model at a time (an flock: released if the builder dies)."""
    with exclusive_lock(target.with_name(target.name + ".lock")):
        yield


def _build_cached(target: Path, base_model: Path, options: dict, say: Callable[[str], None]) -> Path:
    from phi3e2e.build.olive_runner import die_with_parent

    log = target.parent / f"{target.name}.log"
    say(f"Building the base model as int4 ONNX for comparison (once; cached in {target.parent.name}/) ...")
    with staged_dir(target, target.with_name(target.name + ".partial"), replace=True) as staging:
        command = [sys.executable, "-m", "phi3e2e.build.base_int4", str(base_model), str(staging), json.dumps(options)]
        with open(log, "w") as out:  # the build dies with eval, however eval ends (minutes of CPU, GBs of disk)
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        if done.returncode != 0 or not (staging / "genai_config.json").is_file():
            last = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
            raise UserError(f"building the base int4 model failed: {last[0] if last else 'no output'} (log: {log})")
        shutil.rmtree(staging / "cache", ignore_errors=True)
        (staging / BUILT_FROM).write_text(json.dumps({"base_model": str(base_model), **options}, indent=2) + "\n")
    log.unlink(missing_ok=True)
    return target


# Bumped when phi3e2e changes how ModelBuilder builds (2: the LM head fix, build/lm_head_fix.py), so a base
# built the old way is built again rather than compared with fine-tunes built the new way.
BUILDER_REVISION = 2


def fingerprint(base_model: Path, options: dict, with_path: bool = True) -> str:
    """Changes when the base model's files, the options or phi3e2e's builder patches change, so a stale build is
    never used. `with_path` False: the same for a copied or moved project (its files keep their sizes and times)."""
    parts = [str(base_model.resolve()) if with_path else base_model.name, json.dumps(options, sort_keys=True),
             f"builder:{BUILDER_REVISION}"]
    for path in sorted(base_model.glob("*")):
        if path.is_file():
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def build(base_model: Path, output_dir: Path, execution_provider: str, extra: dict) -> None:
    """What Olive's ModelBuilder pass does for an HfModel input, minus Olive's bookkeeping."""
    try:
        from olive.passes.onnx.model_builder import ModelBuilder

        ModelBuilder.maybe_patch_quant()  # the same builder patches the fine-tune's int4 got
    except ImportError:
        pass
    from onnxruntime_genai.models.builder import create_model

    from phi3e2e.build import lean_int4, lm_head_fix

    lean_int4.install()  # the int4 step weight by weight, as the fine-tune's Olive run gets it
    lm_head_fix.install()  # and the LM head it gets

    extra = {key: tuple(value) if isinstance(value, list) else value for key, value in extra.items()}  # op types
    create_model(
        model_name=str(base_model),
        input_path=str(base_model),
        output_dir=str(output_dir),
        precision="int4",
        execution_provider=execution_provider,
        cache_dir=str(output_dir / "cache"),
        filename="model.onnx",
        **extra,
    )


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi3e2e.build.base_int4")
    parser.add_argument("base_model", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("options", type=json.loads, help='JSON: {"execution_provider": "cpu", "int4_...": ...}')
    args = parser.parse_args(argv)
    build(args.base_model, args.output_dir, args.options.pop("execution_provider", "cpu"), args.options)


if __name__ == "__main__":
    main()

"""`phi3e2e export --format gguf`: the run's merged model as a GGUF, with an Ollama Modelfile.

llama.cpp's own converter (build/gguf_converter.py) writes the GGUF. It writes Q8_0 itself, so
the default needs nothing built. Q4_0 and Q4_K_M are llama.cpp's quantizer's mixtures (Q4_K_M
keeps some tensors at Q6_K, which gguf-py cannot quantize: gguf-py/gguf/quants.py has Q4_K and
Q6_K dequantize_blocks only); they take an f16 GGUF through `llama_model_quantize`, which
llama-cpp-python brings (built from source: no wheel on PyPI).

Built in gen-model/<run>/.gguf-<quant>.partial/ and renamed to gguf-<quant>/ last; a failed
build leaves only its log, gguf-<quant>.failed.log.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from phi3e2e import runs
from phi3e2e.build.gguf_converter import LLAMA_CPP_PYTHON, SDIST_SHA256, converter_dir, quantize
from phi3e2e.build.ollama_modelfile import modelfile, ollama_template, stop_tokens
from phi3e2e.chat_format import ChatFormat
from phi3e2e.errors import UserError
from phi3e2e.prepare.models import check_model_folder
from phi3e2e.project import Project
from phi3e2e.storage import staged_dir, staging_name

QUANTS = ("Q8_0", "Q4_K_M", "Q4_0")
CONVERTER_WRITES = {"Q8_0": "q8_0"}  # the converter's --outtype; the others are quantized from f16
MODELFILE, CONVERT_LOG, EXPORT_RECORD = "Modelfile", "convert.log", "export.json"


@dataclass
class GgufExport:
    run_dir: Path
    folder: Path
    gguf_file: Path
    record: dict


def gguf_folder_name(quant: str) -> str:
    return f"gguf-{quant.lower()}"


def check_quant(quant: str) -> None:
    """Every refusal before anything is fetched or built."""
    if quant not in QUANTS:
        raise UserError(f"--quant {quant!r}: choose one of {', '.join(QUANTS)}")
    if quant not in CONVERTER_WRITES and importlib.util.find_spec("llama_cpp") is None:
        raise UserError(
            f"--quant {quant} needs llama.cpp's quantizer, which llama-cpp-python brings: "
            f"pip install llama-cpp-python=={LLAMA_CPP_PYTHON} (it builds llama.cpp, 6-10 minutes), or use --quant Q8_0"
        )


def export_gguf(project: Project, run: str | None = None, *, quant: str = "Q8_0",
                say: Callable[[str], None] = print) -> GgufExport:  # fmt: skip
    check_quant(quant)
    run_dir = runs.find_finished_run(project, run)
    merged_dir = run_dir / runs.MERGED
    check_model_folder(merged_dir)
    final = run_dir / gguf_folder_name(quant)
    if final.exists():
        raise UserError(f"{final} already exists; delete it to build it again")
    chat_format = ChatFormat.of_folder(merged_dir)
    template = ollama_template(chat_format)  # refuses a template Ollama cannot follow, before the build
    llama_cpp_dir = converter_dir(project.model_cache, say)

    gguf_name = f"{run_dir.name}-{quant}.gguf"
    staging = staging_name(final)
    failed_log = run_dir / f"{final.name}.failed.log"
    failed_log.unlink(missing_ok=True)  # an earlier attempt's
    start = time.monotonic()
    try:
        with staged_dir(final, staging) as folder:
            outtype = CONVERTER_WRITES.get(quant, "f16")
            converted = folder / (gguf_name if quant in CONVERTER_WRITES else f"{run_dir.name}-F16.gguf")
            say(f"Converting {project.relative(merged_dir)} to GGUF {outtype} (llama.cpp's convert_hf_to_gguf.py) ...")
            _convert(llama_cpp_dir, merged_dir, converted, outtype, folder / CONVERT_LOG, failed_log)
            if converted.name != gguf_name:
                say(f"Quantizing to {quant} (llama.cpp's llama_model_quantize) ...")
                quantize(converted, folder / gguf_name, quant, threads=os.cpu_count() or 1)
                converted.unlink()
            (folder / MODELFILE).write_text(modelfile(gguf_name, template, stop_tokens(merged_dir)), encoding="utf-8")
            record = {
                "run": run_dir.name,
                "source": "merged",
                "format": "gguf",
                "quant": quant,
                "converter": f"llama.cpp convert_hf_to_gguf.py from llama-cpp-python=={LLAMA_CPP_PYTHON} "
                             f"(sdist sha256 {SDIST_SHA256})",
                "duration_s": runs.elapsed(start),
                "size_bytes": (folder / gguf_name).stat().st_size,
            }  # fmt: skip
            (folder / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    except (UserError, KeyboardInterrupt) as e:
        reason = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
        where = f" [log: {project.relative(failed_log)}]" if failed_log.is_file() else ""
        raise UserError(f"export --format gguf failed: {reason}{where}") from None
    return GgufExport(run_dir, final, final / gguf_name, record)


def _convert(llama_cpp_dir: Path, merged_dir: Path, out_file: Path, outtype: str, log_file: Path,
             failed_log: Path) -> None:  # fmt: skip
    """The converter in its own process (it imports torch and takes over logging); its output to the log,
    kept as `failed_log` when it fails (the staging folder goes)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH")])))
    with log_file.open("w") as log:
        done = subprocess.run(
            [sys.executable, "-m", "phi3e2e.build.gguf_converter", str(llama_cpp_dir), str(merged_dir), str(out_file),
             "--outtype", outtype],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    if done.returncode != 0 or not out_file.is_file():
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
        failed_log.write_text(log_file.read_text(errors="replace"))
        raise UserError(f"llama.cpp's converter failed: {lines[-1] if lines else f'exit {done.returncode}'}")


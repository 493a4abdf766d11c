"""llama.cpp's own Hugging Face -> GGUF converter, as pinned here and as a user's machine can get it.

llama.cpp ships `convert_hf_to_gguf.py` (with its `conversion/` package and the `gguf-py` it is
written against) but no wheel of it; the pinned llama-cpp-python source distribution on PyPI
vendors exactly that tree. `converter_dir` fetches that sdist once with pip (the only index a
user is sure to reach), checks its sha256, and unpacks those three paths into
model-cache/.llama.cpp-<version>/. The converter runs with that `gguf-py` first on sys.path:
PyPI's gguf 0.19.0 differs from the vendored gguf-py 0.19.0 in 9 files (checked with diff -r),
and the converter is only known to work with the one it was released with.

Run as `python -m phi3e2e.build.gguf_converter CONVERTER_DIR HF_DIR OUT.gguf --outtype q8_0`
(a subprocess: the converter imports torch, sets up logging and reads sys.argv). `quantize` is
llama.cpp's quantizer. The benchmark peer (benchmarks/peers/llama_cpp_peer.py) uses both.

Byte-level BPE Phi-3 models (phi3e2e's tiny and benchmark models; no tokenizer.model): the
converter's Phi-3 vocab step reads a sentencepiece tokenizer.model unless tokenizer_config.json
says GPT2Tokenizer (conversion/phi.py, Phi3MiniModel.set_vocab), and its BPE path names the
pre-tokenizer from a table of known tokenizers' hashes (conversion/base.py, get_vocab_base_pre),
which a locally trained vocabulary is never in. For such a model only (tokenizer.json's
pre-tokenizer is ByteLevel with GPT-2's regex), `run_converter` points the vocab step at the
converter's own GPT-2 BPE path and names the pre-tokenizer "gpt-2", in memory; the vendored
files stay as shipped. A real Phi-3 (sentencepiece tokenizer.model) takes the converter's own path.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

LLAMA_CPP_PYTHON = "0.3.36"  # the same pin as `make bench-peers` (Makefile LLAMA_CPP_PYTHON)
SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_ENV = "PHI3E2E_LLAMA_CPP_SDIST"
VENDORED = ("convert_hf_to_gguf.py", "conversion", "gguf-py")  # under vendor/llama.cpp/ in the sdist
CONVERTER = "convert_hf_to_gguf.py"
OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # what the converter writes itself (its --outtype)


def converter_dir(model_cache: Path, say: Callable[[str], None] = print) -> Path:
    """model-cache/.llama.cpp-<version>/ with the converter unpacked, from the sdist the first time.

    The sdist is $PHI3E2E_LLAMA_CPP_SDIST when set (a machine without PyPI, or the one `make
    bench-peers` fetched), else fetched with pip; either way its sha256 must be the pinned one.
    """
    from phi3e2e.errors import UserError
    from phi3e2e.runs import file_sha256  # here: the benchmark peer imports this module without pydantic
    from phi3e2e.storage import staged_dir

    final = model_cache / f".llama.cpp-{LLAMA_CPP_PYTHON}"
    if (final / CONVERTER).is_file():
        return final
    model_cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_cache, prefix=".llama.cpp-download-") as download:
        given = os.environ.get(SDIST_ENV)
        if given:
            sdist = Path(given)
            if not sdist.is_file():
                raise UserError(f"{SDIST_ENV}={given}: no such file")
        else:
            sdist = _download_sdist(Path(download), say)
        digest = file_sha256(sdist)  # read in chunks, not 77 MB at once
        if digest != SDIST_SHA256:
            raise UserError(f"{sdist}: sha256 {digest} is not the pinned llama-cpp-python=={LLAMA_CPP_PYTHON}'s; not using it")
        say(f"Unpacking llama.cpp's converter into {final.name}/ (once) ...")
        try:
            with staged_dir(final, final.with_name(f".{final.name}.partial-{os.getpid()}")) as staging:
                _unpack_converter(sdist, staging)
        except OSError:
            if not (final / CONVERTER).is_file():
                raise
            # another export unpacked it at the same time: theirs is the same pinned file
    return final


def _download_sdist(into: Path, say: Callable[[str], None]) -> Path:
    from phi3e2e.errors import UserError

    say(f"Fetching llama.cpp's GGUF converter once: llama-cpp-python=={LLAMA_CPP_PYTHON}'s source from PyPI (77 MB) ...")
    # pip, so the user's index settings (PIP_INDEX_URL, a proxy) apply as for any install
    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(into)],
        capture_output=True, text=True,
    )  # fmt: skip
    sdist = into / SDIST
    if fetched.returncode != 0 or not sdist.is_file():
        last = (fetched.stderr.strip().splitlines() or ["pip saved no sdist"])[-1]
        raise UserError(f"could not fetch llama-cpp-python=={LLAMA_CPP_PYTHON}'s source for its GGUF converter "
                        f"(or set {SDIST_ENV} to {SDIST}): {last}")
    return sdist


def _unpack_converter(sdist: Path, into: Path) -> None:
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    with tarfile.open(sdist) as archive:
        members = []
        for member in archive.getmembers():
            name = member.name.removeprefix(prefix)
            if member.name.startswith(prefix) and name.split("/", 1)[0] in VENDORED and (member.isfile() or member.isdir()):
                member.name = name
                members.append(member)
        archive.extractall(into, members=members, filter="data")  # "data": no links out, no absolute paths


def run_converter(llama_cpp_dir: Path, hf_dir: Path, out_file: Path, outtype: str) -> None:
    """The vendored convert_hf_to_gguf.py, in this process (it reads sys.argv and may exit)."""
    converter = llama_cpp_dir / CONVERTER
    if not converter.is_file():
        sys.exit(f"{converter}: not found")
    sys.path[:0] = [str(llama_cpp_dir), str(llama_cpp_dir / "gguf-py")]  # its own gguf-py before any installed gguf
    if is_byte_level_bpe(hf_dir):
        _use_gpt2_bpe_path()
    sys.argv = [str(converter), str(hf_dir), "--outfile", str(out_file), "--outtype", outtype]
    runpy.run_path(str(converter), run_name="__main__")


def is_byte_level_bpe(hf_dir: Path) -> bool:
    """No sentencepiece tokenizer.model, and tokenizer.json is BPE split as GPT-2 splits (ByteLevel, its regex)."""
    if (hf_dir / "tokenizer.model").is_file() or not (hf_dir / "tokenizer.json").is_file():
        return False
    tokenizer = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    pre = tokenizer.get("pre_tokenizer") or {}
    return (tokenizer.get("model") or {}).get("type") == "BPE" and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)


def _use_gpt2_bpe_path() -> None:
    """Patch the converter's classes in memory (module objects it imports itself)."""
    from conversion import phi as phi_models  # the vendored package, on sys.path from run_converter
    from conversion.base import TextModel

    phi_models.Phi3MiniModel.set_vocab = lambda self: self._set_vocab_gpt2()
    known_pre = TextModel.get_vocab_base_pre

    def vocab_base_pre(self, tokenizer) -> str:
        try:
            return known_pre(self, tokenizer)
        except NotImplementedError:  # a vocabulary not in its hash table: ByteLevel's split is GPT-2's
            return "gpt-2"

    TextModel.get_vocab_base_pre = vocab_base_pre


def quantize(in_file: Path, out_file: Path, quant: str, threads: int) -> None:
    """llama.cpp's quantizer (`llama_model_quantize`, from llama-cpp-python): its Q4_0 / Q4_K_M / Q8_0 mixtures."""
    import llama_cpp

    from phi3e2e.errors import UserError

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(in_file).encode(), str(out_file).encode(), params) != 0:
        raise UserError(f"llama.cpp's llama_model_quantize could not make {quant} from {in_file.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Hugging Face folder -> GGUF with llama.cpp's own converter")
    parser.add_argument("llama_cpp_dir", type=Path)
    parser.add_argument("hf_dir", type=Path)
    parser.add_argument("out_file", type=Path)
    parser.add_argument("--outtype", default="f16", choices=OUTTYPES)
    args = parser.parse_args()
    run_converter(args.llama_cpp_dir, args.hf_dir, args.out_file, args.outtype)


if __name__ == "__main__":
    main()

"""llama.cpp as a benchmark peer: convert a Hugging Face Phi-3 folder to GGUF, quantize, time decode.

Runs inside the peers venv (`make bench-peers` makes .venv-peers with llama-cpp-python built
from its PyPI source distribution), never in phi3e2e's own environment:

    .venv-peers/bin/python benchmarks/peers/llama_cpp_peer.py convert HF_DIR OUT.f16.gguf
    .venv-peers/bin/python benchmarks/peers/llama_cpp_peer.py quantize OUT.f16.gguf OUT.q4_0.gguf Q4_0
    .venv-peers/bin/python benchmarks/peers/llama_cpp_peer.py decode OUT.q4_0.gguf --prompt-ids 1,2,3 --threads 2

`convert` runs the converter vendored in that source distribution (convert_hf_to_gguf.py,
found under .venv-peers/llama.cpp/ or --llama-cpp-dir) and `quantize` llama.cpp's quantizer, both
as `phi3e2e export --format gguf` does (phi3e2e.build.gguf_converter, read from this checkout's
src/: it imports only the standard library and, inside functions, the converter and llama_cpp;
it also explains the byte-level BPE tokenizer of phi3e2e's tiny and benchmark models).

`decode` prints one JSON line: greedy decode tokens/s (prompt, then `--new-tokens` steps of
llama_decode + argmax, each timed) for each repeat; `serve` keeps the model loaded and answers
one JSON line per `run` line on stdin (or per `prefill N` line: the first N prompt ids to the
first token), so a benchmark can interleave it with other engines; its
first line also gives the bytes one decode step reads (every tensor, one row of token_embd).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_LLAMA_CPP_DIR = REPO / ".venv-peers" / "llama.cpp"
sys.path.insert(0, str(REPO / "src"))  # the peers venv has no phi3e2e installed
from phi3e2e.build.gguf_converter import quantize as llama_quantize  # noqa: E402
from phi3e2e.build.gguf_converter import run_converter  # noqa: E402

QUANT_TYPES = ("Q4_0", "Q4_K_M", "Q8_0")  # llama.cpp ftypes LLAMA_FTYPE_MOSTLY_<type>


class GreedyDecoder:
    """One loaded GGUF model; `run()` times prompt + `new_tokens` greedy steps (llama_decode + argmax)."""

    def __init__(self, gguf: Path, prompt_ids: list[int], new_tokens: int, threads: int):
        from llama_cpp import Llama

        self.prompt_ids, self.new_tokens = prompt_ids, new_tokens
        self.llm = Llama(
            model_path=str(gguf), n_ctx=len(prompt_ids) + new_tokens + 8, n_batch=min(max(len(prompt_ids), 32), 512),
            n_threads=threads, n_threads_batch=threads, verbose=False,
        )  # fmt: skip
        self.n_vocab = self.llm.n_vocab()

    def run(self) -> dict:
        import numpy as np
        from llama_cpp import llama_cpp

        llm = self.llm
        llm.reset()
        start = time.perf_counter()
        llm.eval(self.prompt_ids)
        times = []
        for _ in range(self.new_tokens):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(self.n_vocab,))
            token = int(logits.argmax())
            times.append(time.perf_counter())
            llm.eval([token])
        decode_tok_s = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None  # one token: no decode
        return {"ttft_s": times[0] - start, "decode_tok_s": decode_tok_s}

    def prefill(self, length: int) -> dict:
        """The first `length` prompt ids to the first token (llama-cpp-python's default batches)."""
        import numpy as np
        from llama_cpp import llama_cpp

        llm = self.llm
        llm.reset()
        start = time.perf_counter()
        llm.eval(self.prompt_ids[:length])
        np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(self.n_vocab,)).argmax()
        return {"ttft_s": time.perf_counter() - start, "prompt_tokens": length}


def bytes_per_token(gguf: Path) -> int:
    """Weight bytes one decode step streams: every tensor, but one row of the input embedding."""
    from gguf import GGUFReader

    total = 0
    for tensor in GGUFReader(gguf).tensors:
        rows = int(tensor.shape[-1]) if tensor.name == "token_embd.weight" else 1  # ggml order: ne[1] = vocab
        total += int(tensor.n_bytes) // rows
    return total


def serve(decoder: GreedyDecoder, gguf: Path) -> None:
    """For interleaved benchmarks: one JSON line per `run` line on stdin (the model stays loaded)."""
    decoder.prefill(min(len(decoder.prompt_ids), 128)) if decoder.new_tokens < 2 else decoder.run()  # warm-up
    print(json.dumps({"ready": True, "bytes_per_token": bytes_per_token(gguf)}), flush=True)
    for line in sys.stdin:
        if line.strip() == "run":
            print(json.dumps(decoder.run()), flush=True)
        elif line.startswith("prefill "):
            print(json.dumps(decoder.prefill(int(line.split()[1]))), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("convert", help="HF folder -> GGUF (f16 by default)")
    p.add_argument("hf_dir", type=Path)
    p.add_argument("out_file", type=Path)
    p.add_argument("--outtype", default="f16", choices=["f32", "f16", "bf16", "q8_0"])
    p.add_argument("--llama-cpp-dir", type=Path, default=Path(os.environ.get("LLAMA_CPP_DIR", DEFAULT_LLAMA_CPP_DIR)))
    p = commands.add_parser("quantize", help="GGUF -> quantized GGUF")
    p.add_argument("in_file", type=Path)
    p.add_argument("out_file", type=Path)
    p.add_argument("quant_type", choices=sorted(QUANT_TYPES))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    for name, text in (("decode", "time greedy decode; prints JSON"), ("serve", "decode on each `run` line of stdin")):
        p = commands.add_parser(name, help=text)
        p.add_argument("gguf", type=Path)
        p.add_argument("--prompt-ids", required=True, help="comma-separated prompt token ids")
        p.add_argument("--new-tokens", type=int, default=128)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    if args.command == "convert":
        run_converter(args.llama_cpp_dir, args.hf_dir, args.out_file, args.outtype)
    elif args.command == "quantize":
        llama_quantize(args.in_file, args.out_file, args.quant_type, args.threads)
    else:
        ids = [int(i) for i in args.prompt_ids.split(",")]
        decoder = GreedyDecoder(args.gguf, ids, args.new_tokens, args.threads)
        if args.command == "serve":
            serve(decoder, args.gguf)
        else:
            decoder.run()  # warm-up
            print(json.dumps({"runs": [decoder.run() for _ in range(args.repeats)], "threads": args.threads}))


if __name__ == "__main__":
    main()

"""The PyTorch engine for the merged Hugging Face model and the PEFT adapter (transformers, peft).

A plain decode loop over the KV cache rather than `model.generate`, so the answer streams
token by token exactly like the ONNX engine and the same options mean the same thing.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Iterator, Optional

from phi3e2e.errors import UserError
from phi3e2e.infer.generation import GenerationOptions
from phi3e2e.prepare.models import check_model_folder

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file()


def adapter_base(adapter_dir: Path, base: Optional[Path]) -> Path:
    """The base model the adapter was trained on: --base, else the adapter config's record."""
    if base is not None:
        check_model_folder(base)
        return base
    try:
        recorded = json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except json.JSONDecodeError as e:
        raise UserError(f"{adapter_dir / ADAPTER_CONFIG}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not recorded:
        raise UserError(f"{adapter_dir / ADAPTER_CONFIG}: no base_model_name_or_path; pass --base DIR")
    recorded_dir = Path(recorded).expanduser()
    if not recorded_dir.is_dir():
        raise UserError(
            f"{adapter_dir / ADAPTER_CONFIG}: base model {recorded} is not a local folder here; pass --base DIR"
        )
    check_model_folder(recorded_dir)
    return recorded_dir


def check_torch_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise UserError("--device cuda: PyTorch sees no CUDA GPU on this machine; use --device cpu")


class HfEngine:
    def __init__(self, model_dir: Path, device: str = "cpu", base: Optional[Path] = None, threads: Optional[int] = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the chat prompt, not a loading bar, is what the user waits for
        hf_logging.set_verbosity_error()
        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.model_dir = model_dir
        self.device = device
        if device == "cuda":
            check_torch_cuda()
        self.form = "adapter" if is_adapter(model_dir) else "merged"
        weights_dir = adapter_base(model_dir, base) if self.form == "adapter" else model_dir
        if self.form == "merged":
            check_model_folder(model_dir)
        # The adapter folder may carry its own tokenizer (special tokens added in training).
        tokenizer_dir = model_dir if (model_dir / "tokenizer.json").is_file() else weights_dir
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
            model = AutoModelForCausalLM.from_pretrained(weights_dir, dtype=torch.float32)
            if self.form == "adapter":
                import warnings

                from peft import PeftModel

                with warnings.catch_warnings():  # peft calls a transformers API deprecated for v6
                    warnings.simplefilter("ignore", FutureWarning)
                    model = PeftModel.from_pretrained(model, model_dir)
        except (OSError, ValueError) as e:
            raise UserError(f"{model_dir}: cannot load model: {str(e).splitlines()[0]}") from None
        self.model = model.to(device).eval()
        core = model if self.form == "merged" else model.get_base_model()
        config = core.config
        # transformers 5.24 renamed the forward's `past_key_values` to `cache`; accept both.
        self._cache_argument = "cache" if "cache" in inspect.signature(core.forward).parameters else "past_key_values"
        self.context_length = int(config.max_position_embeddings)
        self._end_ids = _end_token_ids(weights_dir, config)

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def stream(self, prompt_tokens: list[int], options: GenerationOptions) -> Iterator[Optional[str]]:
        torch = self._torch
        room = min(options.max_new_tokens, self.context_length - len(prompt_tokens))
        pick = _token_picker(options, self.device)
        text = _IncrementalText(self.tokenizer)
        input_ids = torch.tensor([prompt_tokens], device=self.device)
        cache = {self._cache_argument: self._new_cache()}  # filled in place, one step after another
        with torch.inference_mode():
            for step in range(room):
                out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **cache)
                logits = out.logits[0, -1].float()
                if step < options.min_new_tokens:
                    logits[list(self._end_ids)] = float("-inf")
                token = int(pick(logits))
                if token in self._end_ids:
                    yield None  # end of turn (see engines.Engine.stream)
                    return
                yield text.add(token)
                input_ids = torch.tensor([[token]], device=self.device)


def _end_token_ids(model_dir: Path, config) -> set[int]:
    """End-of-turn ids from generation_config.json (Phi-3 stops at <|end|> too), else the model's eos."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:
        eos = config.eos_token_id
    if eos is None:
        return set()
    return set(eos if isinstance(eos, list) else [eos])


def _token_picker(options: GenerationOptions, device):
    """Greedy, or sampling with temperature / top-k / top-p (repeatable with a seed), as onnxruntime-genai does."""
    import torch

    if not options.do_sample:
        return lambda logits: logits.argmax()
    draws = torch.Generator(device=device).manual_seed(options.seed) if options.seed is not None else None

    def sample(logits):
        logits = logits / options.temperature
        if options.top_k and options.top_k < logits.numel():
            kth = torch.topk(logits, options.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if options.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            drop = cumulative - sorted_logits.softmax(-1) > options.top_p  # keep the token that crosses top_p
            logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=draws)[0]

    return sample


class _IncrementalText:
    """Text of each new token, holding back bytes that do not yet form a whole character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.shown = 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece, self.shown = text[self.shown :], len(text)
        return piece

"""The ONNX Runtime GenAI engine: the int4 (or fp16/fp32) model phi3e2e ships."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Iterator, Optional

from phi3e2e.errors import UserError
from phi3e2e.infer.generation import GenerationOptions
from phi3e2e.infer.threads import physical_cores
from phi3e2e.storage import atomic_write

GENAI_CONFIG = "genai_config.json"


def is_genai_model(folder: Path) -> bool:
    return (folder / GENAI_CONFIG).is_file()


def kv_bytes_per_token(settings: dict, device: str) -> int:
    """Keys and values of every layer: what one more token of max_length costs onnxruntime-genai (fp32 on CPU,
    fp16 on CUDA, as ModelBuilder's int4 builds keep them). Phi-3-mini on CPU: 0.75 MiB a token, 3 GiB at 4k."""
    decoder = settings["model"]["decoder"]
    per_layer = decoder["num_key_value_heads"] * decoder["head_size"] * 2
    return decoder["num_hidden_layers"] * per_layer * (4 if device == "cpu" else 2)


def genai_config(folder: Path) -> dict:
    try:
        settings = json.loads((folder / GENAI_CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{folder / GENAI_CONFIG}:{e.lineno}: invalid JSON: {e.msg}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # deleted, binary, unreadable
        raise UserError(f"{folder / GENAI_CONFIG}: cannot read it ({type(e).__name__}); rebuild the model") from None
    if not isinstance(settings, dict):
        raise UserError(f"{folder / GENAI_CONFIG}: expected a JSON object; rebuild the model")
    return settings


def use_all_cores(model_dir: Path, threads: Optional[int] = None) -> int:
    """Write `threads` (default: physical cores) into genai_config.json as the decoder's thread count.

    ModelBuilder leaves it unset, and onnxruntime-genai then decodes on ONE compute thread.
    """
    threads = threads or physical_cores()
    config_file = model_dir / GENAI_CONFIG
    config = json.loads(config_file.read_text())
    decoder = config["model"]["decoder"]
    decoder.setdefault("session_options", {})["intra_op_num_threads"] = threads
    atomic_write(config_file, json.dumps(config, indent=4) + "\n")  # an interrupted write never leaves half a config
    return threads


def written_threads(settings: dict) -> Optional[int]:
    """The decoder's thread count genai_config.json sets (None: onnxruntime-genai's default of one)."""
    options = settings.get("model", {}).get("decoder", {}).get("session_options") or {}
    return options.get("intra_op_num_threads") if isinstance(options, dict) else None


def built_for(settings: dict):
    """The execution provider ModelBuilder built the model for ("cpu" when it names none)."""
    options = settings.get("model", {}).get("decoder", {}).get("session_options", {}).get("provider_options") or []
    return next(iter(options[0]), None) if options and isinstance(options[0], dict) else "cpu"


def check_cuda_available() -> None:
    import onnxruntime_genai as og

    if not og.is_cuda_available():
        raise UserError(
            "--device cuda: this onnxruntime-genai has no CUDA support (install onnxruntime-genai-cuda "
            "on a machine with an NVIDIA GPU), or use --device cpu"
        )


class GenaiEngine:
    form = "onnx"

    def __init__(self, model_dir: Path, device: str = "cpu", threads: Optional[int] = None, huge_pages: bool = True):
        """`huge_pages=False` keeps the weights on 4 KiB pages (benchmarks compare the two)."""
        import onnxruntime_genai as og

        from phi3e2e.infer import huge_pages as pages
        from phi3e2e.infer.prepacked import saved_model

        self._og = og
        self.model_dir = model_dir
        self.device = device
        settings = genai_config(model_dir)
        self.built_for = built_for(settings)  # the device its build targets; it may run on another
        try:
            self.context_length = int(settings["model"]["context_length"])
            eos = settings["model"]["eos_token_id"]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{model_dir / GENAI_CONFIG}: model.context_length or model.eos_token_id missing") from None
        self.end_ids = frozenset(eos if isinstance(eos, list) else [eos])
        self.vocab_size = int(settings["model"].get("vocab_size") or 0)
        self.pad_token_id = settings["model"].get("pad_token_id")
        # onnxruntime-genai recomputes a Phi-3 long-context model's cache at 4097 tokens (src/generators.cpp: its
        # short to long RoPE factor switch), for a batch of one only: a batch stays below it.
        long_rope = settings["model"].get("type") in ("phi3", "phimoe") and self.context_length > 4096
        self.batch_length_limit = 4096 if long_rope else self.context_length
        if device == "cuda":
            check_cuda_available()
        if device == "cpu" and not threads and not written_threads(settings):
            # A folder phi3e2e did not build (plain ModelBuilder output, a published Phi-3 ONNX model)
            # would decode on one thread: give it every core, as phi3e2e's own builds get.
            threads = physical_cores()
        # This CPU's saved prepacked weights, when phi3e2e built the model here: mapped, not repacked (prepacked.py).
        self.prepacked = saved_model(model_dir, settings) if device == "cpu" and self.built_for == "cpu" else None
        # Repacked weights land in anonymous memory, which can move to 2 MiB pages (below); mapped ones cannot
        # (the kernel refuses to collapse a private file mapping), so a prepacked start skips the two /proc
        # snapshots (~45 ms at 16 layers) and the copy.
        mapped_before = pages.anonymous_regions() if device == "cpu" and huge_pages and not self.prepacked else {}
        try:
            if built_for(settings) == device and not threads and not self.prepacked:
                self.model = og.Model(str(model_dir))  # as built
            else:
                config = og.Config(str(model_dir))
                if self.prepacked:
                    config.overlay(json.dumps({"model": {"decoder": {"filename": str(self.prepacked)}}}))
                if built_for(settings) != device:
                    # The device is the user's choice, not the build's: a CUDA-built int4 model also runs on
                    # CPU. (Re-setting the providers of a model built for this device made decode ~10% slower
                    # in onnxruntime-genai 0.14.1, so they are left alone then.)
                    config.clear_providers()
                    if device == "cuda":
                        config.append_provider("cuda")
                if threads:  # overrides the thread count written into genai_config.json at build time
                    session_options = {"intra_op_num_threads": threads}
                    config.overlay(json.dumps({"model": {"decoder": {"session_options": session_options}}}))
                self.model = og.Model(config)
        except Exception as e:  # the runtime raises plain RuntimeError/OSError with its reason
            hint = ""
            if device == "cpu" and built_for(settings) not in ("cpu", None):
                built = built_for(settings)
                hint = f" (built for {built}: use --device {built}, or `phi3e2e export --device cpu`)"
            raise UserError(f"{model_dir}: cannot load model: {str(e).splitlines()[0]}{hint}") from None
        # CPU decode streams every weight each token: on 2 MiB pages it was ~8% faster (docs/performance.md).
        # The kernel's copy of 2 GB takes seconds and slowed a first answer beside it by 0.8 s, so it starts
        # when the first answer is done (chat then waits for the user; `chat --prompt` exits without it).
        self._pages_to_collapse = (mapped_before, pages.anonymous_regions()) if mapped_before else None
        self.huge_pages_done = None
        try:
            self.tokenizer = og.Tokenizer(self.model)
        except Exception as e:  # a deleted or damaged tokenizer.json: the runtime's RuntimeError
            raise UserError(f"{model_dir}: cannot load its tokenizer: {str(e).splitlines()[0][:200]}") from None
        self._adapters = None  # og.Adapters, made on the first load_adapter: one per model, shared by its answers
        # onnxruntime-genai's src/models/adapters.cpp kept a model's adapters in a plain map with plain reference
        # counts until a later release added a mutex: loading, unloading and activating one never run at once here
        # (serve loads in a request thread and decodes in its generating thread), whichever 0.14.1 has.
        self._adapters_lock = threading.Lock()

    def load_adapter(self, adapter_file: Path, name: str) -> None:
        """Make a LoRA adapter (an .onnx_adapter built for this base, build/adapter_int4.py) answerable as `name`."""
        with self._adapters_lock:
            if self._adapters is None:
                self._adapters = self._og.Adapters(self.model)
            try:
                self._adapters.load(str(adapter_file), name)
            except Exception as e:  # the runtime's RuntimeError: a damaged file, or one built for another base
                raise UserError(f"{adapter_file}: cannot load the adapter: {str(e).splitlines()[0][:200]}") from None

    def unload_adapter(self, name: str) -> None:
        """Free an adapter's weights; one a finished answer's Generator still holds stays loaded (a few MB)."""
        with self._adapters_lock:
            if self._adapters is not None:
                try:
                    self._adapters.unload(name)
                except Exception:  # noqa: BLE001  (the runtime refuses while its reference count is not 0)
                    pass

    def use_huge_pages(self):
        """Start moving the loaded weights onto 2 MiB pages (once, in the background); the worker thread."""
        if self._pages_to_collapse:
            from phi3e2e.infer import huge_pages as pages

            self.huge_pages_done = pages.collapse_new_in_background(*self._pages_to_collapse)
            self._pages_to_collapse = None
        return self.huge_pages_done

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def stream(self, prompt_tokens: list[int], options: GenerationOptions) -> Iterator[Optional[str]]:
        for token, text in self.stream_tokens(prompt_tokens, options):
            yield None if self.is_end(token) else text

    def stream_tokens(self, prompt_tokens: list[int], options: GenerationOptions,
                      adapter: Optional[str] = None) -> Iterator[tuple[int, str]]:
        """(token id, its text) per generated token; an end-of-turn token comes last, with text "".
        `adapter`: the name of a loaded adapter that answers (None: the base alone)."""
        generator = self.new_generator(self.generator_params(len(prompt_tokens), options), adapter)
        decoder = self.tokenizer.create_stream()
        try:
            generator.append_tokens(prompt_tokens)
            while not generator.is_done():
                generator.generate_next_token()
                token = generator.get_next_tokens()[0]
                yield token, "" if self.is_end(token) else decoder.decode(token)
        finally:
            self.use_huge_pages()  # the first answer is out (or stopped): now the copy costs nobody a token

    def new_generator(self, params, adapter: Optional[str] = None):
        """An og.Generator on this model, with the loaded adapter `adapter` answering (None: the base alone)."""
        generator = self._og.Generator(self.model, params)
        if adapter is not None:
            with self._adapters_lock:
                generator.set_active_adapter(self._adapters, adapter)
        return generator

    def generator_params(self, prompt_length: int, options: GenerationOptions):
        """onnxruntime-genai's GeneratorParams for one answer on its own Generator (a batch sets its own,
        genai_batch.py)."""
        params = self._og.GeneratorParams(self.model)
        max_length = min(self.context_length, prompt_length + options.max_new_tokens)
        search = {"max_length": max_length, "min_length": min(max_length, prompt_length + options.min_new_tokens)}
        if options.do_sample:
            search |= {"temperature": options.temperature, "top_p": options.top_p, "top_k": options.top_k}
            if options.seed is not None:
                search["random_seed"] = options.seed % 2**31  # genai takes a non-negative 32-bit seed; OpenAI's is 64-bit
        # Greedy gets no sampling options: setting them anyway cost ~5% decode speed (onnxruntime-genai 0.14.1).
        params.set_search_options(do_sample=options.do_sample, **search)
        return params

    def is_end(self, token: int) -> bool:
        """An end-of-turn / end-of-text token (genai_config's eos_token_id)."""
        return token in self.end_ids


class AdapterEngine:
    """A fine-tune's LoRA adapter answering on a loaded base GenaiEngine: the base's weights are loaded once for
    every adapter on it, each answer (or batch of answers, genai_batch.py) picks its adapter on its Generator
    (`set_active_adapter`)."""

    form = "onnx-adapter"

    def __init__(self, base: GenaiEngine, adapter_file: Path, name: str):
        base.load_adapter(adapter_file, name)
        self.base, self.adapter_file, self.name = base, adapter_file, name
        self.model_dir, self.device, self.context_length = base.model_dir, base.device, base.context_length
        self.built_for, self.tokenizer, self.model = base.built_for, base.tokenizer, base.model
        self.vocab_size, self.pad_token_id, self.end_ids = base.vocab_size, base.pad_token_id, base.end_ids
        self.batch_length_limit = base.batch_length_limit

    def new_generator(self, params):
        return self.base.new_generator(params, adapter=self.name)

    def encode(self, text: str) -> list[int]:
        return self.base.encode(text)

    def is_end(self, token: int) -> bool:
        return self.base.is_end(token)

    def use_huge_pages(self):
        return self.base.use_huge_pages()

    def stream(self, prompt_tokens: list[int], options: GenerationOptions) -> Iterator[Optional[str]]:
        for token, text in self.stream_tokens(prompt_tokens, options):
            yield None if self.is_end(token) else text

    def stream_tokens(self, prompt_tokens: list[int], options: GenerationOptions) -> Iterator[tuple[int, str]]:
        return self.base.stream_tokens(prompt_tokens, options, adapter=self.name)

    def unload(self) -> None:
        self.base.unload_adapter(self.name)

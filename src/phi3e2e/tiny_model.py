"""Write a tiny random-weight Phi-3 model with a locally trained tokenizer.

It has Phi-3's architecture (Phi3ForCausalLM), chat special tokens and chat template, so
every real stage (Olive LoRA, merge, ModelBuilder int4, onnxruntime-genai chat) runs on it
offline in seconds. The same code builds the Phi-3-mini-shaped benchmark model via `shape`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

# Phi-3's chat special tokens. <|endoftext|> doubles as bos/pad, as in Phi-3-mini.
SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# Phi-3-mini-4k-instruct's own chat template, so chat prompts look exactly like the real model's.
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    vocab_size: int = 2048
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02


# Wider initial weights than Phi-3's 0.02: at hidden size 64 that scale caps every logit near 1,
# so no adapter could make the tiny model confident; at 0.1 LoRA learns the sample data in seconds.
TINY = ModelShape(initializer_range=0.1)
# Phi-3-mini's real widths; only the layer count is cut so it fits a small machine.
PHI3_MINI_SHAPED = ModelShape(
    hidden_size=3072, intermediate_size=8192, num_hidden_layers=4, num_attention_heads=32, vocab_size=32064
)


def train_tokenizer(corpus: Iterable[str], vocab_size: int):
    """Byte-level BPE trained on `corpus`, with Phi-3's special tokens as single ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def write_tiny_model(out_dir: Path, corpus: list[str], shape: ModelShape = TINY, seed: int = 0) -> dict:
    """Write config, safetensors weights, tokenizer and generation config to `out_dir`."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM, PreTrainedTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    # Chat markup is part of the corpus so the tokenizer learns "\n" merges around it.
    tokenizer_core = train_tokenizer(corpus, vocab_size=shape.vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_core,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=shape.max_position_embeddings,
    )
    tokenizer.chat_template = PHI3_CHAT_TEMPLATE
    token_id = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}

    config = Phi3Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_attention_heads,
        max_position_embeddings=shape.max_position_embeddings,
        original_max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=token_id["<|endoftext|>"],
        eos_token_id=token_id["<|endoftext|>"],
        pad_token_id=token_id["<|endoftext|>"],
        tie_word_embeddings=False,
        initializer_range=shape.initializer_range,
    )
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    # Generation stops at <|end|> (end of a turn) as well as <|endoftext|>, like Phi-3-mini.
    GenerationConfig(
        bos_token_id=token_id["<|endoftext|>"],
        eos_token_id=[token_id["<|end|>"], token_id["<|endoftext|>"]],
        pad_token_id=token_id["<|endoftext|>"],
    ).save_pretrained(out_dir)
    marker = {"kind": "phi3e2e-tiny", "shape": asdict(shape), "seed": seed}
    (out_dir / "phi3e2e-tiny.json").write_text(json.dumps(marker, indent=2) + "\n")
    return marker

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

from phi3e2e.chat_format import END, END_OF_TEXT, SPECIAL_TOKENS, TOKENIZER_CHAT_TEMPLATE


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
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
        model_max_length=shape.max_position_embeddings,
    )
    tokenizer.chat_template = TOKENIZER_CHAT_TEMPLATE
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
        bos_token_id=token_id[END_OF_TEXT],
        eos_token_id=token_id[END_OF_TEXT],
        pad_token_id=token_id[END_OF_TEXT],
        tie_word_embeddings=False,
        initializer_range=shape.initializer_range,
    )
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    # Generation stops at <|end|> (end of a turn) as well as <|endoftext|>, like Phi-3-mini.
    GenerationConfig(
        bos_token_id=token_id[END_OF_TEXT],
        eos_token_id=[token_id[END], token_id[END_OF_TEXT]],
        pad_token_id=token_id[END_OF_TEXT],
    ).save_pretrained(out_dir)
    marker = {"kind": "phi3e2e-tiny", "shape": asdict(shape), "seed": seed}
    (out_dir / "phi3e2e-tiny.json").write_text(json.dumps(marker, indent=2) + "\n")
    return marker

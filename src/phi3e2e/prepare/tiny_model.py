"""Write a tiny random-weight Phi-3 model with a locally trained tokenizer.

It has Phi-3's architecture (Phi3ForCausalLM), chat special tokens and chat template, so
every real stage (Olive LoRA, merge, ModelBuilder int4, onnxruntime-genai chat) runs on it
offline in seconds. The same code builds the Phi-3-mini-shaped benchmark model via `shape`,
and the twins of the other Phi family members (workflow/model_family.py) via `member`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from phi3e2e.chat_format import END, END_OF_TEXT, SPECIAL_TOKENS, TOKENIZER_CHAT_TEMPLATE
from phi3e2e.workflow.model_family import MEMBERS, FamilyMember


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


def train_tokenizer(corpus: Iterable[str], vocab_size: int, special_tokens: list[str] = SPECIAL_TOKENS):
    """Byte-level BPE trained on `corpus`, with the model's special tokens (Phi-3's) as single ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def write_tiny_model(
    out_dir: Path, corpus: list[str], shape: ModelShape = TINY, seed: int = 0, twin: str = "phi3-mini"
) -> dict:
    """Write config, safetensors weights, tokenizer and generation config to `out_dir`.

    `twin` names the family member; phi3-mini is today's tiny Phi-3 (`shape`), the others are
    written by write_twin from the member's real config.
    """
    member = MEMBERS[twin]
    if member.twin is not None:
        return write_twin(out_dir, corpus, member, seed)
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Writing model shards" bar for a 3 MB file is noise

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
    marker = {"kind": "phi3e2e-tiny", "twin": twin, "shape": asdict(shape), "seed": seed}
    (out_dir / "phi3e2e-tiny.json").write_text(json.dumps(marker, indent=2) + "\n")
    return marker


def twin_config(member: FamilyMember, vocab: dict[str, int]) -> dict:
    """The member's real config.json with the twin's sizes; everything that picks a code path is kept."""
    shape = member.twin
    config = dict(member.config)
    config.update(
        hidden_size=shape.num_attention_heads * member.head_size,  # the real head size
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        vocab_size=shape.vocab_size,
        max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=vocab[member.bos],
        eos_token_id=vocab[member.eos],
        pad_token_id=vocab[member.eos],
        # TINY's wide init scaled to the same activation size at this width: at 0.1 the wider twins'
        # activations grew so large that the fp32 ONNX build's loss drifted ~2% from PyTorch's.
        initializer_range=TINY.initializer_range * (TINY.hidden_size / (shape.num_attention_heads * member.head_size)) ** 0.5,
    )
    if config["sliding_window"] > shape.max_position_embeddings:  # long-context models: the window is the context
        config["sliding_window"] = shape.max_position_embeddings
    scaling = config.pop("rope_scaling")
    if scaling:
        # As many short and long factors as the rotary dimension has pairs (48 in the real models).
        count = int(member.head_size * config.get("partial_rotary_factor", 1.0)) // 2
        assert count == scaling["factors"], member.name
        config["rope_scaling"] = {
            "type": scaling["type"],
            "short_factor": [round(1.0 + 0.01 * i, 4) for i in range(count)],
            "long_factor": [round(1.0 + 0.5 * i, 4) for i in range(count)],
        }
    return config


def write_twin(out_dir: Path, corpus: list[str], member: FamilyMember, seed: int = 0) -> dict:
    """A tiny twin of a Phi family member: its config shrunk (twin_config), tokenizer, chat template."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # transformers' advice on rope fields and its shard bar are not the user's
    hf_logging.set_verbosity_error()
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(corpus, member.twin.vocab_size, member.special_tokens),
        bos_token=member.bos,
        eos_token=member.eos,
        pad_token=member.eos,
        unk_token=member.special_tokens[0],
        model_max_length=member.twin.max_position_embeddings,
    )
    tokenizer.chat_template = member.chat_template
    vocab = {token: tokenizer.convert_tokens_to_ids(token) for token in member.special_tokens}
    config = Phi3Config(**{k: v for k, v in twin_config(member, vocab).items() if k not in ("architectures", "model_type")})
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    GenerationConfig(
        bos_token_id=vocab[member.bos],
        eos_token_id=[vocab[token] for token in member.end_of_turn],
        pad_token_id=vocab[member.eos],
    ).save_pretrained(out_dir)
    marker = {"kind": "phi3e2e-tiny", "twin": member.name, "of": member.hub_id, "shape": asdict(member.twin), "seed": seed}
    (out_dir / "phi3e2e-tiny.json").write_text(json.dumps(marker, indent=2) + "\n")
    return marker

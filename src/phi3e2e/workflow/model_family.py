"""The Phi family phi3e2e supports: each model's real config, chat format and tiny twin, and which
profile a model folder gets, read from its config.json (never its folder name).

Every member is `Phi3ForCausalLM` with the same linear layers (qkv_proj, o_proj, gate_up_proj,
down_proj), so the recipe's LoRA targets apply to all. What differs is what breaks tools: rope
scaling (longrope with short/long factors), grouped-query attention, partial rotary embeddings,
tied embeddings, vocabulary and chat template. A twin keeps all of those and the real head size
(ModelBuilder's rotary cache needs rotary_dim/2 <= head_size/2 and a multiple of 8), with fewer
heads, layers and a small vocabulary.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from phi3e2e.chat_format import TOKENIZER_CHAT_TEMPLATE
from phi3e2e.errors import UserError

PHI3 = "Phi3ForCausalLM"

PHI3_MINI_TEMPLATE = TOKENIZER_CHAT_TEMPLATE  # Phi-3-mini-4k/128k-instruct's
PHI35_MINI_TEMPLATE = PHI3_MINI_TEMPLATE.replace(
    "message['role'] == 'system' %}", "message['role'] == 'system' and message['content'] %}"
)
# Phi-3-medium: no system role (a system message is dropped), the answer prompt follows each user turn.
PHI3_MEDIUM_TEMPLATE = (
    "{% for message in messages %}{% if (message['role'] == 'user') %}"
    "{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}"
    "{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' + '\n'}}{% endif %}{% endfor %}"
)
# Phi-4-mini: no newline after the role tags; tools ride on the system turn.
PHI4_MINI_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and 'tools' in message and message['tools'] is not none %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}"
    "{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

PHI3_TOKENS = ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
PHI4_TOKENS = [
    "<|endoftext|>", "<|endofprompt|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>",
    "<|tool|>", "<|/tool|>", "<|tool_call|>", "<|/tool_call|>", "<|tool_response|>", "<|tag|>",
]  # fmt: skip

_PHI3_MINI = {
    "architectures": [PHI3], "model_type": "phi3", "hidden_act": "silu", "hidden_size": 3072,
    "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "max_position_embeddings": 4096, "original_max_position_embeddings": 4096, "rope_theta": 10000.0,
    "rope_scaling": None, "sliding_window": 2047, "vocab_size": 32064, "tie_word_embeddings": False,
    "rms_norm_eps": 1e-05, "bos_token_id": 1, "eos_token_id": 32000, "pad_token_id": 32000,
}  # fmt: skip
_LONGROPE = {"type": "longrope", "factors": 48}  # 48 = rotary dim 96 / 2 short and long factors


@dataclass(frozen=True)
class TwinShape:
    """The twin's sizes: the real head size, fewer heads (same query:kv ratio), 2 layers, small vocabulary."""

    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_position_embeddings: int  # long-context twins: above original_max (the longrope path), not 128k
    vocab_size: int = 2048
    num_hidden_layers: int = 2


@dataclass(frozen=True)
class FamilyMember:
    name: str  # what `prepare --twin NAME` and the run's profile say
    hub_id: str
    config: dict  # the published config.json's fields that change code paths
    chat_template: str
    special_tokens: list[str]
    bos: str
    eos: str
    end_of_turn: list[str]  # generation stops at any of these (generation_config.json)
    differs: str  # for docs/models.md and messages
    twin: Optional[TwinShape] = None  # None: the twin is today's tiny Phi-3 (prepare/tiny_model.TINY)
    extra: dict = field(default_factory=dict)

    @property
    def head_size(self) -> int:
        return self.config["hidden_size"] // self.config["num_attention_heads"]

    @property
    def context(self) -> int:
        return self.config["max_position_embeddings"]


def _config(**changes) -> dict:
    return {**_PHI3_MINI, **changes}


FAMILY = [
    FamilyMember(
        "phi3-mini", "microsoft/Phi-3-mini-4k-instruct", _config(), PHI3_MINI_TEMPLATE,
        PHI3_TOKENS, "<s>", "<|endoftext|>", ["<|end|>", "<|endoftext|>"],
        "the recipe's model: 4k context, full multi-head attention",
    ),
    FamilyMember(
        "phi3-mini-128k", "microsoft/Phi-3-mini-128k-instruct",
        _config(max_position_embeddings=131072, rope_scaling=_LONGROPE, sliding_window=262144), PHI3_MINI_TEMPLATE,
        PHI3_TOKENS, "<s>", "<|endoftext|>", ["<|end|>", "<|endoftext|>"],
        "128k context: longrope rope scaling (48 short + 48 long factors)",
        TwinShape(2, 2, 256, 16384),
    ),
    FamilyMember(
        "phi3-medium", "microsoft/Phi-3-medium-4k-instruct",
        _config(hidden_size=5120, intermediate_size=17920, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=10),
        PHI3_MEDIUM_TEMPLATE, PHI3_TOKENS, "<s>", "<|endoftext|>", ["<|end|>", "<|endoftext|>"],
        "14B: grouped-query attention (40 query / 10 key-value heads, head size 128); "
        "its chat template has no system turn",
        TwinShape(4, 1, 1024, 4096),
    ),
    FamilyMember(
        "phi3.5-mini", "microsoft/Phi-3.5-mini-instruct",
        _config(max_position_embeddings=131072, rope_scaling=_LONGROPE, sliding_window=262144), PHI35_MINI_TEMPLATE,
        PHI3_TOKENS, "<s>", "<|endoftext|>", ["<|end|>", "<|endoftext|>"],
        "128k context (longrope, 48 + 48 factors); an empty system prompt is left out",
        TwinShape(2, 2, 256, 16384),
    ),
    FamilyMember(
        "phi4-mini", "microsoft/Phi-4-mini-instruct",
        _config(num_attention_heads=24, num_key_value_heads=8, max_position_embeddings=131072,
                rope_scaling=_LONGROPE, partial_rotary_factor=0.75, sliding_window=262144, vocab_size=200064,
                tie_word_embeddings=True, bos_token_id=199999, eos_token_id=199999, pad_token_id=199999),
        PHI4_MINI_TEMPLATE, PHI4_TOKENS, "<|endoftext|>", "<|endoftext|>", ["<|end|>", "<|endoftext|>"],
        "128k context (longrope); grouped-query attention (24 / 8 heads, head size 128); partial rotary "
        "(0.75: 96 of 128 dims); tied input/output embeddings; 200k vocabulary; chat format without newlines",
        TwinShape(3, 1, 1024, 16384),
    ),
]  # fmt: skip
MEMBERS = {member.name: member for member in FAMILY}
TWINS = list(MEMBERS)


def read_config(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def family_member(config: dict) -> Optional[FamilyMember]:
    """The member whose code-path features the config has (twins included: sizes are not compared)."""
    if PHI3 not in (config.get("architectures") or []):
        return None
    heads, kv_heads = config.get("num_attention_heads", 1), config.get("num_key_value_heads") or config.get(
        "num_attention_heads", 1
    )
    is_long = config.get("max_position_embeddings") != config.get("original_max_position_embeddings", 4096)
    if config.get("partial_rotary_factor", 1.0) != 1.0 or config.get("tie_word_embeddings"):
        return MEMBERS["phi4-mini"]
    if heads != kv_heads:
        return MEMBERS["phi3-medium"]
    # Phi-3-mini-128k and Phi-3.5-mini have the same config shape (and the same profile).
    return MEMBERS["phi3-mini-128k"] if is_long else MEMBERS["phi3-mini"]


def profile_for(model_dir: Path) -> str:
    """The fine-tune profile of a full-size model folder, from its config.json; "other" outside the family."""
    member = family_member(read_config(model_dir))
    return member.name if member else "other"


def context_length(model_dir: Path) -> Optional[int]:
    value = read_config(model_dir).get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


def linear_modules(model_dir: Path) -> list[str]:
    """The model's linear layer names (as LoRA's target_modules name them), read from the safetensors
    headers without loading any weights: every 2-D `.weight` but the embeddings."""
    names = set()
    for weights in sorted(model_dir.glob("*.safetensors")):
        for key, info in _safetensors_header(weights).items():
            if key.endswith(".weight") and len(info.get("shape", ())) == 2 and "embed" not in key:
                names.add(key.rsplit(".", 2)[-2])
    if names and read_config(model_dir).get("tie_word_embeddings"):
        names.add("lm_head")  # tied to the input embedding, so not saved, but a module all the same
    return sorted(names)


def check_max_length(model_dir: Path, max_length: int) -> None:
    """data.max_length within the model's context: a longer one passed the dry-run and failed 19 s into the run."""
    context = context_length(model_dir)
    if context is not None and max_length > context:
        raise UserError(f"data.max_length={max_length}: more than {model_dir.name}'s context of {context} tokens "
                        f"(max_position_embeddings in {model_dir / 'config.json'}); use at most {context}")


def check_target_modules(model_dir: Path, target_modules: list[str]) -> None:
    """Every lora.target_modules entry names a linear layer the model has, or one line listing those it has."""
    found = linear_modules(model_dir)
    if not found:
        return  # no safetensors here (e.g. *.bin only): PEFT itself will say
    missing = [name for name in target_modules if name not in found]
    if missing:
        config = read_config(model_dir)
        architecture = ", ".join(config.get("architectures") or ["unknown architecture"])
        family = "" if family_member(config) else (
            f"; {architecture} is outside the Phi family phi3e2e knows ({', '.join(m.hub_id for m in FAMILY)}): "
            "set lora.target_modules to its own layers"
        )
        raise UserError(
            f"lora.target_modules: {', '.join(missing)} not in {model_dir} ({architecture}); "
            f"its linear modules: {', '.join(found)}{family}"
        )


def _safetensors_header(path: Path) -> dict:
    """A safetensors file's header: 8 bytes of length, then JSON naming every tensor with its shape."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                return {}
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error):
        return {}  # not readable as safetensors: the fine-tune names the real error
    header.pop("__metadata__", None)
    return header


def model_overrides(model_dir: Path, profile: str) -> dict[str, object]:
    """What the model itself decides on top of its profile: the training text in its own chat format
    (its tokenizer's chat template), and a max length within its context."""
    from phi3e2e.chat_format import ChatFormat
    from phi3e2e.workflow.settings import build_settings

    overrides: dict[str, object] = {"data.text_template": ChatFormat.of_folder(model_dir).qa_text_template()}
    context = context_length(model_dir)
    if context and build_settings(profile, {}).data.max_length > context:
        overrides["data.max_length"] = context
    return overrides

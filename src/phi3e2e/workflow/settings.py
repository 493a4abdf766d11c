"""What the user asked for in a fine-tune: the values the workflow templates are rendered from.

Defaults are the Phi-3 E2E recipe's. A model made by `prepare --tiny` gets the `tiny` profile,
which trains in seconds on a CPU. `--set section.key=value` overrides any value; unknown keys
and bad values fail here, naming the key, before anything runs.
"""

from __future__ import annotations

import difflib
import typing
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError

from phi3e2e.chat_format import RECIPE_TEXT_TEMPLATE
from phi3e2e.errors import UserError

TorchDtype = Literal["bfloat16", "float16", "float32"]


Algo = Literal["lora", "qlora"]  # the one declaration of the fine-tune algorithms


class _Section(BaseModel):
    # allow_inf_nan=False: an inf/nan learning rate would train to a NaN loss and write Infinity into JSON.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class LoraSettings(_Section):
    r: PositiveInt = 64
    alpha: PositiveFloat = 64
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["o_proj", "qkv_proj"], min_length=1)


class QloraSettings(_Section):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: TorchDtype = "bfloat16"


class TrainingSettings(_Section):
    torch_dtype: TorchDtype = "bfloat16"
    learning_rate: PositiveFloat = 1e-4
    per_device_train_batch_size: PositiveInt = 1
    gradient_accumulation_steps: PositiveInt = 4
    max_grad_norm: PositiveFloat = 0.3
    num_train_epochs: PositiveFloat = 1
    max_steps: int = Field(-1, ge=-1, description="-1 trains for num_train_epochs")
    lr_scheduler_type: Literal["constant", "linear", "cosine", "constant_with_warmup"] = "constant"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    logging_steps: PositiveInt = 10
    save_steps: PositiveInt = Field(100, description="a checkpoint every N steps; `finetune --resume` starts there")
    eval_strategy: Optional[Literal["steps", "epoch"]] = Field(None, description="None: steps (eval_steps)")
    eval_steps: Optional[PositiveInt] = Field(
        None, description="evaluate every N steps; None: at checkpoints, often enough to stay under ~10% of training"
    )
    eval_max_rows: Optional[PositiveInt] = Field(
        200, description="evaluation during training on at most N eval rows (the closing eval measures them all)"
    )
    gradient_checkpointing: bool = True
    seed: int = 0
    data_seed: int = 42


class DataSettings(_Section):
    text_template: str = RECIPE_TEXT_TEMPLATE
    max_length: PositiveInt = 2048


class ExportSettings(_Section):
    """ModelBuilder's int4 options. None: phi3e2e's measured CPU choice (build/options.py) for CPU
    builds, ModelBuilder's own default for CUDA builds."""

    precision: Literal["int4"] = "int4"
    int4_block_size: Optional[Literal[16, 32, 64, 128, 256]] = None
    # 1-4 as Olive's ModelBuilder.AccuracyLevel (fp32, fp16, bf16, int8); Olive refuses 0
    int4_accuracy_level: Optional[Literal[1, 2, 3, 4]] = None
    int4_op_types_to_quantize: Optional[list[Literal["MatMul", "Gather"]]] = Field(
        None, min_length=1, description='["MatMul", "Gather"] also quantizes the input embedding'
    )
    int4_is_symmetric: Optional[bool] = Field(None, description="false: a zero point per block beside each scale")


class FinetuneSettings(_Section):
    lora: LoraSettings = Field(default_factory=LoraSettings)
    qlora: QloraSettings = Field(default_factory=QloraSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)


# Overrides on top of the recipe defaults, chosen by the model being fine-tuned.
PROFILES: dict[str, dict[str, object]] = {
    # The Phi family (workflow/model_family.py, chosen from the model's config.json): every member has
    # the recipe's LoRA targets and at least 4k context, so the recipe applies as is; what differs
    # (chat format, context) is read from the model itself (model_family.model_overrides).
    "phi3-mini": {},
    "phi3-mini-128k": {},  # Phi-3.5-mini too: the same config shape
    "phi3-medium": {},
    "phi4-mini": {},
    # Outside the family: the recipe's values; lora.target_modules must name the model's own layers
    # (checked against its weights before anything runs).
    "other": {},
    # The tiny random model has nothing to preserve: train every linear layer hard and fast.
    "tiny": {
        "lora.r": 16,
        "lora.alpha": 32,
        "lora.dropout": 0.0,
        "lora.target_modules": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        "training.torch_dtype": "float32",
        "training.learning_rate": 5e-3,
        "training.per_device_train_batch_size": 8,
        "training.gradient_accumulation_steps": 1,
        "training.num_train_epochs": 10,
        "training.warmup_ratio": 0.0,
        "training.logging_steps": 5,
        "training.save_steps": 20,
        "training.eval_strategy": "epoch",
        "training.gradient_checkpointing": False,
        "data.max_length": 160,
    },
}


# The tiny profile's time budget: its 10 epochs of the bundled sample are 140 steps (~20 s on
# 2 cores); on a larger dataset the steps stop here, so a demo-style run stays about a minute.
# An explicit --set training.max_steps or training.num_train_epochs wins (train/plan.py).
TINY_MAX_STEPS = 150


def valid_keys() -> list[str]:
    return [
        f"{section}.{key}"
        for section, field in FinetuneSettings.model_fields.items()
        for key in field.annotation.model_fields
    ]


def parse_override(text: str) -> tuple[str, object]:
    """`lora.r=16` -> ("lora.r", 16). Values are YAML scalars or lists; strings may use \\n."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. --set lora.r=16")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        value = raw.replace("\\n", "\n")
    return key, value


def build_settings(profile: str, overrides: dict[str, object]) -> FinetuneSettings:
    """Recipe defaults, then the profile, then the user's overrides (last one wins)."""
    settings = FinetuneSettings()
    for source, values in (("profile " + profile, PROFILES[profile]), ("--set", overrides)):
        for key, value in values.items():
            _assign(settings, key, value, source)
    return settings


def int4_overrides(set_args: list[str]) -> dict[str, object]:
    """`export --set export.int4_block_size=32 ...` -> {"int4_block_size": 32}, validated like finetune's."""
    settings, chosen = FinetuneSettings(), {}
    for text in set_args:
        key, value = parse_override(text)
        _assign(settings, key, value, "--set")
        section, field = key.split(".")
        if section != "export" or not field.startswith("int4_"):
            raise UserError(f"--set {key}: export takes only export.int4_* settings (the model is already trained)")
        chosen[field] = getattr(settings.export, field)
    return chosen


def _assign(settings: FinetuneSettings, key: str, value: object, source: str) -> None:
    keys = valid_keys()
    if key not in keys:
        near = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(near)}?" if near else f"valid keys: {', '.join(keys)}"
        raise UserError(f"{source}: unknown setting {key!r}; {hint}")
    section_name, field = key.split(".")
    if isinstance(value, bool) and not _takes_booleans(section_name, field):  # pydantic would read true as 1.0
        default = getattr(getattr(FinetuneSettings(), section_name), field)
        raise UserError(f"{source}: {key}={str(value).lower()}: not a true/false setting (its default: {default!r})")
    try:
        setattr(getattr(settings, section_name), field, value)
    except ValidationError as e:
        reason = e.errors()[0]["msg"]
        raise UserError(f"{source}: {key}={value!r}: {reason}") from None



def _takes_booleans(section_name: str, field: str) -> bool:
    annotation = FinetuneSettings.model_fields[section_name].annotation.model_fields[field].annotation
    return annotation is bool or bool in typing.get_args(annotation)

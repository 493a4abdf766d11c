"""Will the job fit its GPU and node? An estimate before anything is submitted (a late OOM bills GPU hours).

GPU memory, the way `accelerate estimate-memory` counts weights, plus what training adds:
- weights as Olive's LoRA pass loads them (olive/passes/pytorch/lora.py: bfloat16 as is, float16 in float32
  for fp16 mixed precision, which is also what a T4 or V100 gets: the node turns bfloat16 into float16 there);
  QLoRA's 4-bit layers at half a byte per weight plus their block constants, the rest in the load dtype;
- the adapter and its optimizer: fp32 weight, gradient and Adam's two moments, 16 bytes per LoRA weight;
- activations for a batch of max_length tokens (Korthikanti et al. 2022: ~34 bytes x hidden per token and
  layer in 16-bit for a 4x MLP; here 7.5 x hidden + 4 x intermediate values for a gated MLP; with gradient
  checkpointing each layer keeps its input and one layer is recomputed at a time; SDPA attention, no s^2 term);
- the logits and their fp32 copies for the loss; 10% for the allocator and 1 GiB of CUDA context.
Node RAM: the merge holds the bf16 model while it writes it (transformers loads a checkpoint in its own dtype),
the lean int4 build streams it (docs/performance.md: Phi-3-mini peaks at 10.7 GB RSS, 7.6 of it the mapped
checkpoint); plus 3 GiB for Python, torch and the CUDA libraries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from phi3e2e.errors import UserError
from phi3e2e.train.aml import vm_sizes
from phi3e2e.train.aml.vm_sizes import Gpu
from phi3e2e.workflow.settings import FinetuneSettings

GIB = 1 << 30
CUDA_CONTEXT_GIB, ALLOCATOR_SLACK, PROCESS_RAM_GIB = 1.0, 1.1, 3.0
USABLE_SHARE = 0.93  # of the GPU's nominal memory, after the driver's and ECC's share
QLORA_BYTES_PER_WEIGHT = {True: 0.5 + 0.127 / 8, False: 0.5 + 4 / 64}  # double quant: 8-bit constants of constants
LINEAR_KINDS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @classmethod
    def of(cls, name: str, config: dict) -> Optional["ModelShape"]:
        try:
            heads = int(config["num_attention_heads"])
            return cls(name, int(config["hidden_size"]), int(config["intermediate_size"]),
                       int(config["num_hidden_layers"]), heads, int(config.get("num_key_value_heads") or heads),
                       int(config["vocab_size"]), bool(config.get("tie_word_embeddings")))  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return None

    def linear_shape(self, kind: str) -> tuple[int, int]:
        head = self.hidden // self.heads
        return {"qkv_proj": (self.hidden, (self.heads + 2 * self.kv_heads) * head),
                "o_proj": (self.heads * head, self.hidden), "gate_up_proj": (self.hidden, 2 * self.intermediate),
                "down_proj": (self.intermediate, self.hidden)}[kind]  # fmt: skip

    @property
    def linear_params(self) -> int:
        return self.layers * sum(math.prod(self.linear_shape(kind)) for kind in LINEAR_KINDS)

    @property
    def other_params(self) -> int:  # embeddings, the LM head (unless tied), norms
        return self.vocab * self.hidden * (1 if self.tied else 2) + (2 * self.layers + 1) * self.hidden

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params

    def lora_params(self, target_modules: list[str], r: int) -> int:
        kinds = [kind for kind in LINEAR_KINDS if kind in target_modules]
        return self.layers * sum(r * sum(self.linear_shape(kind)) for kind in kinds)


@dataclass
class GpuNeed:
    weights_dtype: str
    parts: dict[str, float]  # GiB

    @property
    def total(self) -> float:
        return sum(v for k, v in self.parts.items() if k != "CUDA") * ALLOCATOR_SLACK + self.parts["CUDA"]

    def describe(self) -> str:
        return " + ".join(f"{name} {gib:.1f}" for name, gib in self.parts.items()) + f" (+10%) = {self.total:.1f} GiB"


def gpu_need(shape: ModelShape, settings: FinetuneSettings, algo: str, bf16: bool) -> GpuNeed:
    training, data = settings.training, settings.data
    dtype = training.torch_dtype if training.torch_dtype != "bfloat16" or bf16 else "float16"
    load_bytes = 2 if dtype == "bfloat16" else 4  # Olive loads float16 in float32 (mixed precision)
    act_bytes = 4 if dtype == "float32" else 2
    if algo == "qlora":  # Olive's QLoRA pass adapts every 4-bit linear layer, whatever target_modules says
        weights = shape.linear_params * QLORA_BYTES_PER_WEIGHT[settings.qlora.double_quant]
        weights += shape.other_params * load_bytes
        targets, weights_dtype = list(LINEAR_KINDS), f"4-bit {settings.qlora.quant_type}, the rest {dtype}"
    else:
        weights, targets, weights_dtype = shape.params * load_bytes, settings.lora.target_modules, dtype
    tokens = training.per_device_train_batch_size * data.max_length
    layer = tokens * (7.5 * shape.hidden + 4 * shape.intermediate) * act_bytes
    if training.gradient_checkpointing:
        activations = shape.layers * tokens * shape.hidden * act_bytes + layer
    else:
        activations = shape.layers * layer
    logits = tokens * shape.vocab * (act_bytes + 8)  # the logits, their fp32 copy and its gradient
    parts = {"weights": weights, "adapter+optimizer": shape.lora_params(targets, settings.lora.r) * 16,
             "activations": activations, "logits": logits}  # fmt: skip
    parts = {name: value / GIB for name, value in parts.items()}
    parts["CUDA"] = CUDA_CONTEXT_GIB
    return GpuNeed(weights_dtype, parts)


def node_ram_need(shape: ModelShape) -> float:
    return shape.params * 2 / GIB + PROCESS_RAM_GIB


def usable(gpu: Gpu) -> float:
    return gpu.memory_gib * USABLE_SHARE


def model_shape(inputs) -> Optional[ModelShape]:
    """The base model's sizes: its config.json when it is here, the family's published config for a Hub id."""
    from phi3e2e.workflow.model_family import FAMILY, read_config

    if inputs.model_dir:
        return ModelShape.of(Path(inputs.model_dir).name, read_config(Path(inputs.model_dir)))
    model_src = inputs.job_sources[0] if inputs.job_sources else None
    member = next((m for m in FAMILY if model_src and m.hub_id.lower() == (model_src.hub_id or "").lower()), None)
    return ModelShape.of(member.hub_id.split("/")[-1], member.config) if member else None


def check_fit(plan, size: Optional[str], what: str, say: Callable[[str], None], refuse: bool = True) -> None:
    """Say the plan for `size` (None: a compute whose size the workspace tells at submit; `what` names the VM
    in messages, e.g. "--instance-type Standard_NC4as_T4_v3"); refuse one that does not fit, naming what would (`refuse` False, --ignore-memory-plan: a warning)."""
    try:
        _check_fit(plan, size, what, say)
    except UserError as e:
        if refuse:
            raise UserError(f"{e} (an estimate: --ignore-memory-plan submits anyway)") from None
        say(f"warning: {e} (--ignore-memory-plan: submitted anyway)")


def _check_fit(plan, size: Optional[str], what: str, say: Callable[[str], None]) -> None:
    shape = model_shape(plan.inputs)
    if shape is None:
        say(f"memory plan: {plan.inputs.model_label}'s sizes are not known here (no config.json); not estimated")
        return
    algo, settings = plan.algo, plan.settings
    if size is None:
        need = gpu_need(shape, settings, algo, bf16=True)
        say(f"memory plan: {algo} on {shape.name} ({shape.params / 1e9:.2f} B parameters) needs about "
            f"{need.total:.1f} GiB of GPU memory on an Ampere or newer GPU ({need.describe()}); "
            f"{what}'s GPU is checked at submit")  # fmt: skip
        return
    gpu = vm_sizes.gpu_of(size)
    if not gpu or gpu is vm_sizes.UNKNOWN:
        say(f"memory plan: {what}: its GPU memory is not known here, not checked")
        return
    need = gpu_need(shape, settings, algo, gpu.bf16)
    ram, node_ram = node_ram_need(shape), vm_sizes.node_ram_gib(size)
    say(f"memory plan: {algo} on {shape.name} ({shape.params / 1e9:.2f} B parameters, weights {need.weights_dtype}): "
        f"GPU {need.describe()} of {usable(gpu):.1f} usable on {gpu.name}; node RAM about {ram:.0f} GiB for the "
        f"merge and int4 build" + (f" of {node_ram:g}" if node_ram else ""))  # fmt: skip
    if need.total > usable(gpu):
        raise UserError(f"{what} ({gpu.name}, {gpu.memory_gib:g} GiB): {algo} on {shape.name} needs about "
                        f"{need.total:.1f} GiB of GPU memory; what fits: {what_fits(shape, settings, algo, gpu)}")
    if node_ram and ram > node_ram:
        bigger = next((name for name, gib in vm_sizes.NODE_RAM_GIB.items() if gib >= ram and
                       vm_sizes.gpu_of(name) == gpu), None)  # fmt: skip
        raise UserError(f"{what} has {node_ram:g} GiB of RAM: merging and building {shape.name} needs "
                        f"about {ram:.0f} GiB" + (f"; a size with more: --instance-type {bigger}" if bigger else ""))


def what_fits(shape: ModelShape, settings: FinetuneSettings, algo: str, gpu: Gpu) -> str:
    """The changes that make the plan fit on this GPU, else the smallest suggested size it fits on."""
    options = []
    if algo == "lora" and (qlora := gpu_need(shape, settings, "qlora", gpu.bf16)).total <= usable(gpu):
        options.append(f"--algo qlora ({qlora.total:.1f} GiB)")
    for length in (1024, 512, 256):
        if length < settings.data.max_length:
            shorter = settings.model_copy(deep=True)
            shorter.data.max_length = length
            if (fits := gpu_need(shape, shorter, algo, gpu.bf16)).total <= usable(gpu):
                options.append(f"--set data.max_length={length} ({fits.total:.1f} GiB)")
                break
    for size in vm_sizes.SUGGESTED_SIZES:
        bigger = vm_sizes.gpu_of(size)
        if bigger.memory_gib > gpu.memory_gib and gpu_need(shape, settings, algo, bigger.bf16).total <= usable(bigger):
            options.append(f"--instance-type {size} ({bigger.name} {bigger.memory_gib:g} GiB)")
            break
    return ", or ".join(options) or "none of the single-GPU sizes phi3e2e knows; a shorter max_length or QLoRA"


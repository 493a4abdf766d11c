"""What an Azure VM size's name says of its GPU and memory (Azure names its GPU sizes after the GPU).

Used where the workspace cannot tell: the region's VM size list is a subscription-scope read that
workspace-scoped roles lack, and it never states GPU memory. Figures are Azure's size pages'
(GPU memory per GPU, node RAM in GiB); a size not listed here is checked on the node instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float  # per GPU (a fraction of one for the partial A10 sizes)
    bf16: bool  # native bfloat16 (Ampere and newer); without it the node trains in fp16 (compute_entry.use_fp16)


T4, V100, V100_32 = Gpu("NVIDIA T4", 16, False), Gpu("NVIDIA V100", 16, False), Gpu("NVIDIA V100", 32, False)
A100_40, A100_80 = Gpu("NVIDIA A100", 40, True), Gpu("NVIDIA A100", 80, True)
H100, H100_NVL, H200 = Gpu("NVIDIA H100", 80, True), Gpu("NVIDIA H100 NVL", 94, True), Gpu("NVIDIA H200", 141, True)
A10_SHARES = {6: 4, 12: 8, 18: 12, 36: 24, 72: 24}  # NV{vCPUs}ads_A10_v5: a sixth, third, half or all of an A10

# First match wins; None: a VM without a GPU.
GPU_BY_NAME: list[tuple[re.Pattern, Optional[Gpu]]] = [
    (re.compile(r"^Standard_[ABDEFGHLM]", re.IGNORECASE), None),  # general purpose, compute, memory, storage
    (re.compile(r"^Standard_ND96asr_v4$", re.IGNORECASE), A100_40),
    (re.compile(r"_A100_v4$", re.IGNORECASE), A100_80),
    (re.compile(r"^Standard_NC\d+adi?s_H100_v5$", re.IGNORECASE), H100_NVL),
    (re.compile(r"_H100_", re.IGNORECASE), H100),
    (re.compile(r"_H200_", re.IGNORECASE), H200),
    (re.compile(r"_T4_v3$", re.IGNORECASE), T4),
    (re.compile(r"^Standard_ND40rs_v2$", re.IGNORECASE), V100_32),
    (re.compile(r"^Standard_NC\d+r?s_v3$", re.IGNORECASE), V100),
]
_A10 = re.compile(r"^Standard_NV(\d+)adm?s_A10_v5$", re.IGNORECASE)

NODE_RAM_GIB = {
    "Standard_NC4as_T4_v3": 28, "Standard_NC8as_T4_v3": 56, "Standard_NC16as_T4_v3": 110,
    "Standard_NC64as_T4_v3": 440,
    "Standard_NV6ads_A10_v5": 55, "Standard_NV12ads_A10_v5": 110, "Standard_NV18ads_A10_v5": 220,
    "Standard_NV36ads_A10_v5": 440, "Standard_NV36adms_A10_v5": 880, "Standard_NV72ads_A10_v5": 880,
    "Standard_NC24ads_A100_v4": 220, "Standard_NC48ads_A100_v4": 440, "Standard_NC96ads_A100_v4": 880,
    "Standard_ND96asr_v4": 900, "Standard_ND96amsr_A100_v4": 1900,
    "Standard_NC40ads_H100_v5": 320, "Standard_NC80adis_H100_v5": 640, "Standard_ND96isr_H100_v5": 1900,
    "Standard_ND96isr_H200_v5": 1850,
    "Standard_NC6s_v3": 112, "Standard_NC12s_v3": 224, "Standard_NC24s_v3": 448, "Standard_NC24rs_v3": 448,
    "Standard_ND40rs_v2": 672,
}  # fmt: skip

# Single-GPU sizes to suggest when a plan does not fit, smallest first.
SUGGESTED_SIZES = ["Standard_NC4as_T4_v3", "Standard_NC8as_T4_v3", "Standard_NV36ads_A10_v5",
                   "Standard_NC24ads_A100_v4", "Standard_NC40ads_H100_v5"]  # fmt: skip

UNKNOWN = Gpu("unknown", 0, False)


def gpu_of(size: str) -> Optional[Gpu]:
    """The size's GPU by its name: None for a VM without one, UNKNOWN where the name does not say."""
    if match := _A10.match(size):
        share = A10_SHARES.get(int(match.group(1)))
        return Gpu("NVIDIA A10" + ("" if share == 24 else f" ({share} GiB share)"), share, True) if share else UNKNOWN
    return next((gpu for pattern, gpu in GPU_BY_NAME if pattern.search(size)), UNKNOWN)


def node_ram_gib(size: str) -> Optional[float]:
    return next((ram for name, ram in NODE_RAM_GIB.items() if name.lower() == size.lower()), None)

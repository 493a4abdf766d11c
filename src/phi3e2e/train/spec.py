"""What the user asked `finetune` for, checked as a whole before anything is planned.

The cross-field rules live here and nowhere else: `--resume` takes the run's own settings, and
QLoRA (bitsandbytes 4-bit) needs CUDA, so it trains, and its int4 model is built, on a CUDA
device: on a GPU target, or on this machine only if it has one.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from phi3e2e.errors import UserError
from phi3e2e.train.targets import DEFAULT_TARGET, Target, get_target
from phi3e2e.workflow.settings import Algo

RESUME_TAKES_RECORDED = ("--resume RUN uses the run's own recorded settings: leave out --run-name, --set, --model, "
                         "--data, --target and --dry-run")  # fmt: skip
QLORA_NEEDS_CUDA = ("QLoRA needs a CUDA GPU (bitsandbytes 4-bit has no CPU path) and none was found: "
                    "use --algo lora here, or --target aml to run QLoRA on Azure ML GPU compute")  # fmt: skip


SHIP_ADAPTER_LOCAL = ("--ship adapter is built where the run finishes (local); for an Azure ML run, build it after "
                      "the download with `phi3e2e export RUN --ship adapter`")


class RunSpec(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    algo: Algo = "lora"
    target: Optional[str] = None  # None: DEFAULT_TARGET (so `--resume` can tell a --target given)
    model: Optional[str] = None
    data: Optional[str] = None
    run_name: Optional[str] = None
    set_args: tuple[str, ...] = ()
    dry_run: bool = False
    verbose: bool = False
    resume: Optional[str] = None
    target_options: Any = None  # the target's own options (Azure ML: AmlOptions)
    ships: Literal["merged", "adapter"] = "merged"  # the int4 form the run ships (docs/models.md measures both)

    @classmethod
    def of(cls, **fields) -> "RunSpec":
        """The spec, or the first broken rule as one UserError line."""
        try:
            return cls(**fields)
        except ValidationError as e:
            error = e.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            reason = str(error.get("ctx", {}).get("error", "")) or error["msg"]
            raise UserError(reason if not where else f"--{where.replace('_', '-')}: {reason}") from None

    @model_validator(mode="after")
    def _rules(self) -> "RunSpec":
        if self.resume and (self.run_name or self.set_args or self.dry_run or self.model or self.data
                            or self.target is not None or self.ships != "merged"):  # fmt: skip
            raise ValueError(RESUME_TAKES_RECORDED)
        if self.ships == "adapter" and self.on_target.name != "local":
            raise ValueError(SHIP_ADAPTER_LOCAL)
        if self.algo == "qlora" and not self.on_target.gpu_compute and not self.dry_run and not cuda_available():
            raise ValueError(QLORA_NEEDS_CUDA)
        return self

    @property
    def on_target(self) -> Target:
        return get_target(self.target or DEFAULT_TARGET)

    @property
    def trains_on_cuda(self) -> bool:
        """QLoRA, or a target whose machines have GPUs: the workflow's device and the int4 build's."""
        return self.algo == "qlora" or self.on_target.gpu_compute


def cuda_available() -> bool:
    import torch  # only asked for QLoRA on a machine without GPUs: torch takes seconds to import

    return torch.cuda.is_available()

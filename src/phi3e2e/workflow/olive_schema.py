"""Pydantic models of the Olive 0.13 workflow config that phi3e2e renders.

They mirror the installed Olive's pass parameters (olive/passes/pytorch/lora.py,
merge_adapter_weights.py, onnx/model_builder.py) for the subset we emit, and forbid anything
else, so a template typo fails here with the field's path instead of deep inside `olive run`.
Importing Olive itself to validate would cost seconds; tests check these models agree with it.
"""

from __future__ import annotations

import string
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from phi3e2e.errors import UserError

TorchDtype = Literal["bfloat16", "float16", "float32"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HfModel(_Strict):
    type: Literal["HfModel"]
    model_path: str = Field(min_length=1)


class Accelerator(_Strict):
    device: Literal["cpu", "gpu"]
    execution_providers: list[Literal["CPUExecutionProvider", "CUDAExecutionProvider"]] = Field(min_length=1)


class LocalSystem(_Strict):
    type: Literal["LocalSystem"]
    accelerators: list[Accelerator] = Field(min_length=1, max_length=1)


class LoadDatasetConfig(_Strict):
    data_name: Literal["json"]
    data_files: str = Field(min_length=1)
    split: Literal["train"]


class PreProcessDataConfig(_Strict):
    text_template: str
    max_seq_len: PositiveInt
    strategy: Literal["line-by-line", "line-by-line-random", "join", "join-random"]
    max_samples: Optional[PositiveInt] = None  # the eval split during training: its first N rows
    pad_to_max_len: bool

    @model_validator(mode="after")
    def _template_has_fields(self):
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(self.text_template) if name is not None]
        except ValueError as e:
            raise ValueError(f"text_template is not a valid format string: {e}") from None
        if not fields:
            raise ValueError("text_template names no dataset column, e.g. {Question}")
        return self


class DataConfig(_Strict):
    name: str
    type: Literal["HuggingfaceContainer"]
    load_dataset_config: LoadDatasetConfig
    pre_process_data_config: PreProcessDataConfig


class TrainingArgs(_Strict):
    learning_rate: PositiveFloat
    per_device_train_batch_size: PositiveInt
    gradient_accumulation_steps: PositiveInt
    max_grad_norm: PositiveFloat
    num_train_epochs: PositiveFloat
    max_steps: int = Field(ge=-1)
    lr_scheduler_type: str
    warmup_ratio: float = Field(ge=0, lt=1)
    logging_steps: PositiveInt
    eval_strategy: Optional[Literal["steps", "epoch"]] = None
    eval_steps: Optional[PositiveInt] = None
    gradient_checkpointing: bool
    seed: int
    data_seed: int
    save_strategy: Literal["no", "steps", "epoch"]
    save_steps: Optional[PositiveInt] = None
    save_total_limit: Optional[PositiveInt] = None
    overwrite_output_dir: bool = False  # false: Olive's LoRA pass resumes from a checkpoint in output_dir
    output_dir: str


class LoraPass(_Strict):
    type: Literal["LoRA"]
    r: PositiveInt
    alpha: PositiveFloat
    lora_dropout: float = Field(ge=0, lt=1)
    target_modules: list[str] = Field(min_length=1)
    torch_dtype: TorchDtype
    train_data_config: str
    eval_data_config: Optional[str] = None
    training_args: TrainingArgs


class QLoraPass(LoraPass):
    type: Literal["QLoRA"]
    compute_dtype: TorchDtype
    quant_type: Literal["nf4", "fp4"]
    double_quant: bool


class MergePass(_Strict):
    type: Literal["MergeAdapterWeights"]


class ModelBuilderPass(_Strict):
    type: Literal["ModelBuilder"]
    precision: Literal["int4", "fp16", "fp32", "bf16"]
    int4_block_size: Optional[Literal[16, 32, 64, 128, 256]] = None
    int4_accuracy_level: Optional[Literal[1, 2, 3, 4]] = None  # ModelBuilder.AccuracyLevel
    int4_op_types_to_quantize: Optional[list[Literal["MatMul", "Gather", "Gemm"]]] = Field(None, min_length=1)
    int4_is_symmetric: Optional[bool] = None


class Passes(_Strict):
    finetune: Annotated[Union[LoraPass, QLoraPass], Field(discriminator="type")]
    merge: MergePass
    int4: ModelBuilderPass


class OliveWorkflow(_Strict):
    input_model: HfModel
    systems: dict[str, LocalSystem]
    data_configs: list[DataConfig] = Field(min_length=1)
    passes: Passes
    host: str
    target: str
    cache_dir: str
    output_dir: str
    log_severity_level: Literal[0, 1, 2, 3, 4]

    @model_validator(mode="after")
    def _references_exist(self):
        for role in ("host", "target"):
            if getattr(self, role) not in self.systems:
                raise ValueError(f"{role} {getattr(self, role)!r} is not one of systems {sorted(self.systems)}")
        names = {data.name for data in self.data_configs}
        if len(names) < len(self.data_configs):  # Olive's RunConfig refuses it too, but only on the compute
            duplicated = sorted({d.name for d in self.data_configs if [e.name for e in self.data_configs].count(d.name) > 1})
            raise ValueError(f"data_configs: name {', '.join(map(repr, duplicated))} is used more than once")
        finetune = self.passes.finetune
        for role in ("train_data_config", "eval_data_config"):
            ref = getattr(finetune, role)
            if ref is not None and ref not in names:
                raise ValueError(f"passes.finetune.{role} {ref!r} is not one of data_configs {sorted(names)}")
        return self


class ExportWorkflow(_Strict):
    """`phi3e2e export`'s one-pass workflow: the merged model -> ModelBuilder."""

    input_model: HfModel
    systems: dict[str, LocalSystem]
    passes: dict[Literal["build"], ModelBuilderPass]  # export reads passes.build back for export.json
    host: str
    target: str
    cache_dir: str
    output_dir: str
    log_severity_level: Literal[0, 1, 2, 3, 4]


class HfModelWithAdapter(HfModel):
    adapter_path: str = Field(min_length=1)  # a PEFT LoRA folder: ModelBuilder builds its MatMuls beside the base's


class ExtractAdaptersPass(_Strict):
    type: Literal["ExtractAdapters"]  # Olive's defaults: optional LoRA inputs, dynamic rank, .onnx_adapter file


class AdapterPasses(_Strict):
    int4: ModelBuilderPass
    extract: ExtractAdaptersPass


class AdapterWorkflow(_Strict):
    """`--ship adapter`'s workflow: base model + LoRA adapter -> ModelBuilder -> ExtractAdapters."""

    input_model: HfModelWithAdapter
    systems: dict[str, LocalSystem]
    passes: AdapterPasses
    host: str
    target: str
    cache_dir: str
    output_dir: str
    log_severity_level: Literal[0, 1, 2, 3, 4]


def validate_workflow(config: dict, source: str, schema: type[BaseModel] = OliveWorkflow) -> BaseModel:
    """Validate a rendered workflow; the error names `source` and the failing fields' paths."""
    try:
        return schema.model_validate(config)
    except ValidationError as e:
        problems = [f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in e.errors()]
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"{source}: {'; '.join(problems[:3])}{more}") from None

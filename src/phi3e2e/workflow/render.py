"""Render the Olive workflow from the Jinja template and validate it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal, Optional

from phi3e2e.errors import UserError
from phi3e2e.resources import templates_dir
from phi3e2e.workflow.olive_schema import validate_workflow
from phi3e2e.workflow.settings import FinetuneSettings

Algo = Literal["lora", "qlora"]
Target = Literal["local", "aml"]
WORKFLOW_TEMPLATE = "olive-workflow.json.j2"


@dataclass(frozen=True)
class WorkflowPaths:
    """Where the workflow reads and writes, as the machine running `olive run` sees them."""

    model: str
    train_file: str
    eval_file: Optional[str]
    output: str
    cache: str
    checkpoints: str


def render_workflow(
    algo: Algo, target: Target, settings: FinetuneSettings, paths: WorkflowPaths, on_gpu: bool = False
) -> dict:
    """The validated Olive config as a dict.

    QLoRA and every Azure ML run use a CUDA device; the int4 model is then built for CUDA too.
    """
    import jinja2

    use_cuda = on_gpu or algo == "qlora" or target == "aml"
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()), undefined=jinja2.StrictUndefined, autoescape=False
    )
    data_files = {"train": paths.train_file}
    if paths.eval_file:
        data_files["eval"] = paths.eval_file
    try:
        text = env.get_template(WORKFLOW_TEMPLATE).render(
            algo=algo,
            s=settings,
            paths=asdict(paths),
            data_files=data_files,
            device="gpu" if use_cuda else "cpu",
            execution_provider="CUDAExecutionProvider" if use_cuda else "CPUExecutionProvider",
        )
    except jinja2.TemplateError as e:
        raise UserError(f"{WORKFLOW_TEMPLATE}:{getattr(e, 'lineno', '?')}: {e}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{WORKFLOW_TEMPLATE} rendered invalid JSON at line {e.lineno}: {e.msg}") from None
    validate_workflow(config, source=f"rendered {WORKFLOW_TEMPLATE}")
    return config

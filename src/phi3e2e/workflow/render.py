"""Render an Olive workflow from its Jinja template and validate it.

A project may hold its own copies of the templates in templates/ (`phi3e2e init` writes them);
those win over the ones shipped with phi3e2e, so a user changes the workflow without touching
site-packages. Every rendered config goes through the same pydantic validation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
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


@dataclass(frozen=True)
class RenderedWorkflow:
    config: dict
    template: Path  # the template file it came from: the project's copy, or the shipped one


def template_dirs(project_templates: Optional[Path]) -> list[Path]:
    """Where templates are looked up, first match wins: the project's templates/, then phi3e2e's."""
    dirs = [project_templates] if project_templates and project_templates.is_dir() else []
    return dirs + [templates_dir()]


def find_template(name: str, project_templates: Optional[Path] = None) -> Path:
    for folder in template_dirs(project_templates):
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"template {name} not found in {', '.join(str(d) for d in template_dirs(project_templates))}")


def render_workflow(
    algo: Algo,
    target: Target,
    settings: FinetuneSettings,
    paths: WorkflowPaths,
    on_gpu: bool = False,
    project_templates: Optional[Path] = None,
) -> RenderedWorkflow:
    """The validated Olive config.

    QLoRA and every Azure ML run use a CUDA device; the int4 model is then built for CUDA too.
    """
    import jinja2

    use_cuda = on_gpu or algo == "qlora" or target == "aml"
    template_file = find_template(WORKFLOW_TEMPLATE, project_templates)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in template_dirs(project_templates)]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
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
        raise UserError(f"{template_file}:{getattr(e, 'lineno', '?')}: {e}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{template_file} rendered invalid JSON at line {e.lineno}: {e.msg}") from None
    validate_workflow(config, source=f"rendered {template_file}")
    return RenderedWorkflow(config, template_file)

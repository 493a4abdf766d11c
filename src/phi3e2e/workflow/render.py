"""Render an Olive workflow from its Jinja template and validate it.

A project may hold its own copies of the templates in templates/ (`phi3e2e init` writes them);
those win over the ones shipped with phi3e2e, so a user changes the workflow without touching
site-packages. Every rendered config goes through the same pydantic validation.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel

from phi3e2e.errors import UserError
from phi3e2e.resources import templates_dir
from phi3e2e.workflow.olive_schema import AdapterWorkflow, ExportWorkflow, OliveWorkflow, validate_workflow
from phi3e2e.workflow.settings import Algo, ExportSettings, FinetuneSettings

# One template per workflow: qlora extends lora, and both take their int4 pass from the
# ModelBuilder macro in model-builder.json.j2, which `export` renders on its own.
WORKFLOW_TEMPLATES: dict[str, str] = {"lora": "lora.json.j2", "qlora": "qlora.json.j2"}
MODEL_BUILDER_TEMPLATE = "model-builder.json.j2"
ADAPTER_TEMPLATE = "adapter-int4.json.j2"


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

    def template_note(self, project_root: Path) -> str:
        """What a command prints: 'templates/lora.json.j2, project copy' or 'lora.json.j2, shipped'."""
        if self.template.resolve().is_relative_to(Path(project_root).resolve()):
            return f"{self.template.resolve().relative_to(Path(project_root).resolve())}, project copy"
        return f"{self.template.name}, shipped"


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
    use_cuda: bool,
    settings: FinetuneSettings,
    paths: WorkflowPaths,
    project_templates: Optional[Path] = None,
) -> RenderedWorkflow:
    """The validated fine-tune workflow (lora.json.j2 or qlora.json.j2).

    `use_cuda` (the run spec decides it: QLoRA, or a target with GPUs): train on a CUDA device and
    build the int4 model for CUDA too.
    """
    data_files = {"train": paths.train_file}
    if paths.eval_file:
        data_files["eval"] = paths.eval_file
    return _render(
        WORKFLOW_TEMPLATES[algo],
        project_templates,
        OliveWorkflow,
        algo=algo,
        s=settings,
        paths=asdict(paths),
        data_files=data_files,
        **_system(use_cuda),
    )


def render_model_builder(
    model: Path,
    device: Literal["cpu", "cuda"],
    precision: str,
    int4_options: dict,
    project_templates: Optional[Path] = None,
) -> RenderedWorkflow:
    """The validated one-pass workflow of `phi3e2e export`: `model` -> ModelBuilder (model-builder.json.j2).

    The template reads s.export like the fine-tune's int4 step does; int4 options unset here
    (None) keep ModelBuilder's defaults, and the template drops them for other precisions.
    """
    build = {name: None for name in ExportSettings.model_fields} | int4_options | {"precision": precision}
    return _render(
        MODEL_BUILDER_TEMPLATE,
        project_templates,
        ExportWorkflow,
        s={"export": build},
        paths={"model": str(model), "output": "olive-output", "cache": ".olive-cache"},
        **_system(device == "cuda"),
    )


def render_adapter_int4(
    model: Path,
    adapter: Path,
    device: Literal["cpu", "cuda"],
    int4_options: dict,
    project_templates: Optional[Path] = None,
) -> RenderedWorkflow:
    """The validated workflow of `--ship adapter`: base `model` + LoRA `adapter` -> ModelBuilder int4 (the same
    macro as finetune's int4 step) -> ExtractAdapters (adapter-int4.json.j2)."""
    build = {name: None for name in ExportSettings.model_fields} | int4_options | {"precision": "int4"}
    return _render(
        ADAPTER_TEMPLATE,
        project_templates,
        AdapterWorkflow,
        s={"export": build},
        paths={"model": str(model), "adapter": str(adapter), "output": "olive-output", "cache": ".olive-cache"},
        **_system(device == "cuda"),
    )


def _system(use_cuda: bool) -> dict:
    return {
        "device": "gpu" if use_cuda else "cpu",
        "execution_provider": "CUDAExecutionProvider" if use_cuda else "CPUExecutionProvider",
    }


def _render(name: str, project_templates: Optional[Path], schema: type[BaseModel], **variables) -> RenderedWorkflow:
    """Render template `name` (project copy first), parse the JSON and validate it against `schema`.

    Any failure is one UserError naming the template file, and Jinja's line or the field's path.
    """
    import jinja2

    template_file = find_template(name, project_templates)
    folders = template_dirs(project_templates)
    loaded: list[str] = []  # every file this render read: the template, what it extends and imports

    def load(template_name: str):
        if not is_template_file_name(template_name):  # `{% include "/etc/hostname" %}`, `../../secret`
            return None
        for folder in folders:  # per file, first match wins: a project may copy only some templates
            if (folder / template_name).is_file():
                loaded.append(str(folder / template_name))
                return (folder / template_name).read_text(), loaded[-1], lambda: True
        return None  # Jinja raises TemplateNotFound, with the line of the extends/import

    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # A project's templates may come from someone else: the sandbox refuses attribute tricks
    # (`cycler.__init__.__globals__.os`) and calls that change objects; templates load only from the
    # template folders, by plain file name.
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.FunctionLoader(load),
        undefined=jinja2.StrictUndefined,  # a misspelt variable fails instead of rendering ""
        autoescape=False,
    )
    # tojson of an undefined value would otherwise be json's TypeError, not Jinja's "'x' is undefined"
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "default": _not_json}
    try:
        text = env.get_template(name).render(**variables)
    except jinja2.TemplateSyntaxError as e:  # knows its file and line
        raise UserError(f"{e.filename or template_file}:{e.lineno}: {e.message}") from None
    except Exception as e:  # undefined variable, missing template, bad value: the line is in Jinja's traceback
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename in loaded]
        if not frames and not isinstance(e, jinja2.TemplateError):
            raise  # not raised by template code: a bug of ours, keep the traceback
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else template_file
        raise UserError(f"{where}: {_jinja_message(e)}") from None
    # JSON and Olive-schema mistakes have no Jinja line: name every file the output came from
    others = sorted({Path(f).name for f in loaded} - {template_file.name})
    source = f"{template_file} (with {', '.join(others)}) rendered" if others else f"{template_file} rendered"
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        near = text.splitlines()[e.lineno - 1].strip()[:80]
        raise UserError(f"{source} invalid JSON: {e.msg} at line {e.lineno} of the output, near {near!r}") from None
    validate_workflow(config, source=f"{source} an invalid Olive config", schema=schema)
    return RenderedWorkflow(config, template_file)


def is_template_file_name(name: str) -> bool:
    """A file directly in a templates folder: no path, no parent folder, no hidden file."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def _not_json(value: object) -> object:
    import jinja2

    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError here, naming what is undefined
    raise TypeError(f"tojson: a {type(value).__name__} is not a JSON value (use one of its fields, e.g. s.lora.r)")


def _jinja_message(error: Exception) -> str:
    import jinja2

    if isinstance(error, jinja2.TemplateNotFound):
        return f"template {error.name} not found"
    return str(error)

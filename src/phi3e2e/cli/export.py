"""`phi3e2e export`: build another ONNX model (device, precision) from a run's merged model."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from phi3e2e.cli.options import DeviceOption, RunArgument, VerboseOption, current_project, say


def export(
    run: RunArgument = None,
    device: DeviceOption = "cpu",
    precision: Annotated[
        Literal["int4", "fp16", "fp32"], typer.Option("--precision", help="Weight precision (fp16: cuda only).")
    ] = "int4",
    set_values: Annotated[
        Optional[list[str]],
        typer.Option("--set", metavar="KEY=VALUE", help="An int4 build option, e.g. --set export.int4_block_size=32."),
    ] = None,
    ship: Annotated[
        Optional[Literal["adapter"]],
        typer.Option("--ship", help="adapter: the run's LoRA adapter on the project's shared int4 base "
                                    "(onnx-adapter/, built like the run's int4 model; rebuilds a deleted base)."),
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Build an ONNX Runtime GenAI model from a run's merged model (Olive ModelBuilder).

    Writes gen-model/RUN/onnx-DEVICE-PRECISION/ (RUN may also be a run folder's path). Building needs no GPU, so a CUDA model can be
    built on a laptop, and a CPU model from an Azure ML run built for CUDA. With --ship adapter it writes
    gen-model/RUN/onnx-adapter/ instead: the run's adapter (kilobytes to megabytes) for the int4 base that every
    adapter run of the same base model shares in model-cache/.onnx-int4-adapters/ (built once).

    Examples:

    \b
      phi3e2e export --device cpu
      phi3e2e export 20250101-120000-qlora --device cpu --precision int4
      phi3e2e export --device cuda --precision fp16
      phi3e2e export --set export.int4_block_size=32   # finer int4 blocks
      phi3e2e export RUN --ship adapter   # the adapter, on the shared int4 base
    """
    from phi3e2e.build.export import export as export_model
    from phi3e2e.workflow.settings import int4_overrides

    project = current_project()
    if ship == "adapter":
        return _export_adapter(project, run, device, precision, set_values, verbose)
    options = int4_overrides(set_values or [])
    result = export_model(project, run, device=device, precision=precision, int4_options=options, verbose=verbose,
                          say=say)
    size_mb = result.record["size_bytes"] / 1e6
    say(f"Done in {result.record['duration_s']}s: {project.relative(result.model_dir)} ({size_mb:.1f} MB)")
    hint = " --device cuda" if device == "cuda" else ""
    say(f'Next:    phi3e2e chat --model {project.relative(result.model_dir)}{hint} --prompt "..."')


def _export_adapter(project, run, device: str, precision: str, set_values, verbose: bool) -> None:
    from phi3e2e.build.adapter_int4 import export_adapter
    from phi3e2e.errors import UserError

    if set_values or precision != "int4" or device != "cpu":
        raise UserError("--ship adapter builds like the run's own int4 model: "
                        "leave out --set, --precision and --device")
    form = export_adapter(project, run, say=say, verbose=verbose)
    shared = "built now" if form.base_built else "shared, already built"
    say(f"Done in {form.duration_s}s: {project.relative(form.folder)} ({form.adapter_bytes / 1e6:.2f} MB) on "
        f"{project.relative(form.base_dir)} ({form.base_bytes / 1e6:.1f} MB, {shared})")
    if (form.folder.parent / "onnx-int4").is_dir():  # the folder decides what a run ships (runs.shipped_form)
        say(f"The run still ships its merged onnx-int4/; delete {project.relative(form.folder.parent / 'onnx-int4')}/ "
            "to ship (and serve) the adapter")
    say(f'Next:    phi3e2e chat --model {project.relative(form.folder)} --prompt "..."')

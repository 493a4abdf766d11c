"""`phi3e2e export`: build another ONNX model (device, precision) from a run's merged model."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from phi3e2e.cli.options import current_project, say


def export(
    run: Annotated[
        Optional[str], typer.Argument(help="Run name under gen-model/ or a run folder; default: the newest finished run.")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="Where the model will run: cpu or cuda.")] = "cpu",
    precision: Annotated[str, typer.Option("--precision", help="int4, fp16 (cuda only) or fp32.")] = "int4",
    set_values: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="An int4 build option for this export, e.g. --set export.int4_block_size=32."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Olive's full output.")] = False,
) -> None:
    """Build an ONNX Runtime GenAI model from a run's merged model (Olive ModelBuilder).

    Writes gen-model/RUN/onnx-DEVICE-PRECISION/. Building needs no GPU, so a CUDA model can be
    built on a laptop, and a CPU model from an Azure ML run built for CUDA.

    Examples:
      phi3e2e export --device cpu
      phi3e2e export 20250101-120000-qlora --device cpu --precision int4
      phi3e2e export --device cuda --precision fp16
      phi3e2e export --device cpu --set export.int4_block_size=32   # finer blocks, if eval shows a loss
    """
    from phi3e2e.train.export import export as export_model
    from phi3e2e.workflow.settings import int4_overrides

    options = int4_overrides(set_values or [])
    project = current_project()
    result = export_model(project, run, device=device, precision=precision, int4_options=options, verbose=verbose,
                          say=say)
    size_mb = result.record["size_bytes"] / 1e6
    say(f"Done in {result.record['duration_s']}s: {project.relative(result.model_dir)} ({size_mb:.1f} MB)")
    hint = " --device cuda" if device == "cuda" else ""
    say(f'Next:    phi3e2e chat --model {project.relative(result.model_dir)}{hint} --prompt "..."')

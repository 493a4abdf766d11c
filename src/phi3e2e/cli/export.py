"""`phi3e2e export`: another form of a run's merged model: an ONNX build (device, precision) or a GGUF."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from phi3e2e.cli.options import DeviceOption, RunArgument, VerboseOption, current_project, say
from phi3e2e.errors import UserError


def export(
    run: RunArgument = None,
    output_format: Annotated[
        Literal["onnx", "gguf"],
        typer.Option("--format", help="onnx: an ONNX Runtime GenAI build; gguf: a GGUF and an Ollama Modelfile."),
    ] = "onnx",
    device: DeviceOption = None,  # onnx only; None: cpu, and a gguf export can tell it was not given
    precision: Annotated[
        Optional[Literal["int4", "fp16", "fp32"]],
        typer.Option("--precision", help="onnx: weight precision (fp16: cuda only).  [default: int4]", show_default=False),
    ] = None,
    set_values: Annotated[
        Optional[list[str]],
        typer.Option("--set", metavar="KEY=VALUE", help="onnx: an int4 build option, e.g. --set export.int4_block_size=32."),
    ] = None,
    quant: Annotated[
        Optional[Literal["Q8_0", "Q4_K_M", "Q4_0"]],
        typer.Option("--quant", help="gguf: the quantization; Q4_K_M and Q4_0 need llama-cpp-python.  [default: Q8_0]",
                     show_default=False),
    ] = None,
    ship: Annotated[
        Optional[Literal["adapter"]],
        typer.Option("--ship", help="adapter: the run's LoRA adapter on the project's shared int4 base "
                                    "(onnx-adapter/, built like the run's int4 model; rebuilds a deleted base)."),
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Build another form of a run's merged model: ONNX (Olive ModelBuilder) or GGUF (llama.cpp).

    --format onnx writes gen-model/RUN/onnx-DEVICE-PRECISION/ (RUN may also be a run folder's path). Building
    needs no GPU, so a CUDA model can be built on a laptop, and a CPU model from an Azure ML run built for CUDA.

    --format gguf writes gen-model/RUN/gguf-QUANT/: a GGUF made by llama.cpp's own converter, and an Ollama
    Modelfile with the run's chat template and stop tokens (`ollama create NAME -f .../Modelfile`).

    --ship adapter writes gen-model/RUN/onnx-adapter/ instead: the run's adapter (kilobytes to megabytes) for the
    int4 base that every adapter run of the same base model shares in model-cache/.onnx-int4-adapters/ (built once).

    Examples:

    \b
      phi3e2e export --device cpu
      phi3e2e export 20250101-120000-qlora --device cpu --precision int4
      phi3e2e export --device cuda --precision fp16
      phi3e2e export --set export.int4_block_size=32   # finer int4 blocks
      phi3e2e export --format gguf                 # Q8_0, for Ollama, llama.cpp
      phi3e2e export --format gguf --quant Q4_K_M  # needs llama-cpp-python
      phi3e2e export RUN --ship adapter   # the adapter, on the shared int4 base
    """
    project = current_project()
    if ship == "adapter":
        if output_format == "gguf" or quant:
            raise UserError("--ship adapter: an ONNX form on the shared int4 base; leave out --format gguf and --quant")
        return _export_adapter(project, run, device or "cpu", precision or "int4", set_values, verbose)
    if output_format == "gguf":
        given = [name for name, value in (("--device", device), ("--precision", precision), ("--set", set_values)) if value]
        if given:
            raise UserError(f"{', '.join(given)}: for --format onnx; a GGUF's weights are set by --quant")
        _export_gguf(project, run, quant or "Q8_0")
        return
    if quant:
        raise UserError("--quant: for --format gguf; an ONNX build's weights are set by --precision")
    _export_onnx(project, run, device or "cpu", precision or "int4", set_values or [], verbose)


def _export_onnx(project, run, device: str, precision: str, set_values: list[str], verbose: bool) -> None:
    from phi3e2e.build.export import export as export_model
    from phi3e2e.workflow.settings import int4_overrides

    options = int4_overrides(set_values)
    result = export_model(project, run, device=device, precision=precision, int4_options=options, verbose=verbose,
                          say=say)
    size_mb = result.record["size_bytes"] / 1e6
    say(f"Done in {result.record['duration_s']}s: {project.relative(result.model_dir)} ({size_mb:.1f} MB)")
    hint = " --device cuda" if device == "cuda" else ""
    say(f'Next:    phi3e2e chat --model {project.relative(result.model_dir)}{hint} --prompt "..."')


def _export_gguf(project, run, quant: str) -> None:
    from phi3e2e.build.gguf_export import export_gguf

    result = export_gguf(project, run, quant=quant, say=say)
    size_mb = result.record["size_bytes"] / 1e6
    say(f"Done in {result.record['duration_s']}s: {project.relative(result.gguf_file)} ({size_mb:.1f} MB) "
        f"and its Modelfile")
    say(f"Ollama:    ollama create {result.run_dir.name.lower()} -f {project.relative(result.folder / 'Modelfile')}")
    say(f"llama.cpp: llama-cli -m {project.relative(result.gguf_file)} -cnv")


def _export_adapter(project, run, device: str, precision: str, set_values, verbose: bool) -> None:
    from phi3e2e.build.adapter_int4 import export_adapter

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

"""The models a workflow produced, as Olive's own footprint reports them.

Olive records every model it made in output_dir/footprint.json; its Footprint class traces the
output model back through the passes that made it. Each form is then moved out of Olive's
cache into the run folder under the name phi3e2e gives it.
"""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict
from pathlib import Path

from phi3e2e.errors import UserError
from phi3e2e.runs import ADAPTER, MERGED, ONNX_INT4

FOOTPRINT = "footprint.json"
# The pass types (as Olive's footprint spells them) that produce each run-folder form.
FORM_FROM_PASS = {ADAPTER: ("lora", "qlora"), MERGED: ("mergeadapterweights",), ONNX_INT4: ("modelbuilder",)}


def produced_models(olive_output: Path, log_file: Path, forms: tuple[str, ...] = tuple(FORM_FROM_PASS)) -> dict[str, Path]:
    """{form: folder} for the passes on the way to Olive's output model."""
    footprint_file = olive_output / FOOTPRINT
    if not footprint_file.is_file():
        raise UserError(f"Olive produced no output model (no {FOOTPRINT}); see {log_file}")
    footprint = read_footprint(footprint_file)
    if footprint.check_empty_nodes():
        raise UserError(f"Olive produced no output model (empty {FOOTPRINT}); see {log_file}")
    chain = footprint.trace_back_run_history(footprint.get_output_model_id())
    by_pass = {footprint.nodes[model_id].from_pass: model_id for model_id in chain}
    produced = {}
    for form in forms:
        pass_types = FORM_FROM_PASS[form]
        model_id = next((by_pass[p] for p in pass_types if p in by_pass), None)
        config = footprint.get_model_config(model_id) if model_id else {}
        source = config.get("adapter_path") if form == ADAPTER else config.get("model_path")
        # Olive records paths absolute, or relative to the folder it ran in (the config's).
        folder = olive_output.parent / source if source else None
        if folder is None or not folder.is_dir():
            raise UserError(f"Olive produced no {form} model; see {log_file}")
        produced[form] = folder
    return produced


def read_footprint(footprint_file: Path):
    """Olive's Footprint of a finished workflow.

    Olive 0.13 writes each node's model under "model_config_data" but Footprint.from_file reads
    the alias "model_config", dropping every model path (tests/test_e2e.py checks this is still
    so); the nodes are read here with the key renamed.
    """
    from olive.engine.footprint import Footprint, FootprintNode

    nodes = OrderedDict()
    for model_id, node in json.loads(footprint_file.read_text()).items():
        node = dict(node)
        node.setdefault("model_config", node.pop("model_config_data", None))
        nodes[model_id] = FootprintNode(**node)
    return Footprint(nodes=nodes)


def collect_forms(olive_output: Path, run_dir: Path, log_file: Path) -> None:
    """Move the adapter, merged and int4 models out of Olive's cache into run_dir/<form>/."""
    for form, folder in produced_models(olive_output, log_file).items():
        shutil.move(str(folder), run_dir / form)

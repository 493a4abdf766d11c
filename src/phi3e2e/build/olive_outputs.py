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
    nodes = read_footprint(footprint_file)
    if not nodes:
        raise UserError(f"Olive produced no output model (empty {FOOTPRINT}); see {log_file}")
    by_pass = {nodes[model_id].get("from_pass"): model_id for model_id in output_chain(nodes)}
    produced = {}
    for form in forms:
        pass_types = FORM_FROM_PASS[form]
        model_id = next((by_pass[p] for p in pass_types if p in by_pass), None)
        config = model_config(nodes[model_id]) if model_id else {}
        source = config.get("adapter_path") if form == ADAPTER else config.get("model_path")
        # Olive records paths absolute, or relative to the folder it ran in (the config's).
        folder = olive_output.parent / source if source else None
        if folder is None or not folder.is_dir():
            raise UserError(f"Olive produced no {form} model; see {log_file}")
        produced[form] = folder
    return produced


def read_footprint(footprint_file: Path) -> dict[str, dict]:
    """footprint.json's nodes, in the order Olive wrote them (the output model last), as plain JSON: Olive's
    Footprint class needs `import olive`, ~4 s of every run's end, and its reader drops the model configs
    Olive 0.13 writes under "model_config_data" (tests/test_e2e.py shows both)."""
    try:
        nodes = json.loads(footprint_file.read_text(), object_pairs_hook=OrderedDict)
    except (OSError, ValueError) as e:
        raise UserError(f"{footprint_file}: unreadable ({e})") from None
    return nodes if isinstance(nodes, dict) else {}


def output_chain(nodes: dict[str, dict]) -> list[str]:
    """The output model and its ancestors, as Olive's Footprint.trace_back_run_history walks them."""
    chain, model_id = [], next(reversed(nodes))
    while model_id is not None and model_id in nodes and model_id not in chain:
        chain.append(model_id)
        model_id = nodes[model_id].get("parent_model_id")
    return chain


def model_config(node: dict) -> dict:
    return (node.get("model_config_data") or node.get("model_config") or {}).get("config") or {}


def collect_forms(olive_output: Path, run_dir: Path, log_file: Path) -> None:
    """Move the adapter, merged and int4 models out of Olive's cache into run_dir/<form>/."""
    for form, folder in produced_models(olive_output, log_file).items():
        shutil.move(str(folder), run_dir / form)

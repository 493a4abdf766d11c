"""The int4 step weight by weight (build/lean_int4.py) builds the very model ModelBuilder's own step does.

Both builds are real ModelBuilder runs on the tiny model (subprocesses, no network); the reference
is onnxruntime-genai's stock `to_int4`. The memory it saves is measured in benchmarks/full_depth.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest
from onnx import numpy_helper

pytestmark = pytest.mark.e2e  # every test here builds int4 models

STOCK = "from phi3e2e.build import lean_int4; lean_int4.install = lambda: None; "  # the reference: no patch
BUILD = "from phi3e2e.build.base_int4 import main; import sys; main(sys.argv[1:])"


def built(model_dir, out_dir, options: dict, stock: bool):
    out_dir.mkdir()
    code = (STOCK if stock else "") + BUILD
    subprocess.run([sys.executable, "-c", code, str(model_dir), str(out_dir), json.dumps(options)],
                   check=True, capture_output=True)
    return onnx.load(out_dir / "model.onnx")


@pytest.mark.parametrize("options", [
    {"int4_block_size": 64, "int4_accuracy_level": 4, "int4_op_types_to_quantize": ["MatMul", "Gather"],
     "int4_is_symmetric": False},  # phi3e2e's CPU default on the tiny model
    {"int4_block_size": 32},  # ModelBuilder's own defaults otherwise: symmetric, MatMuls only
], ids=["phi3e2e-default", "matmuls-symmetric"])
def test_the_lean_build_is_the_stock_build_byte_for_byte(tiny_project, tmp_path, options):
    model_dir = tiny_project.model_cache / "tiny-phi3"
    options = {"execution_provider": "cpu", **options}
    stock = built(model_dir, tmp_path / "stock", options, stock=True)
    lean = built(model_dir, tmp_path / "lean", options, stock=False)

    def tensors(model):
        return {t.name: (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes()) for t in model.graph.initializer}

    def nodes(model):
        return sorted((n.name, n.op_type, n.domain, tuple(n.input), tuple(n.output), str(n.attribute))
                      for n in model.graph.node)

    assert any(n.op_type == "MatMulNBits" for n in lean.graph.node)
    assert not any(n.op_type == "MatMul" and n.input[1] in tensors(lean) for n in lean.graph.node)  # none left fp32
    assert nodes(lean) == nodes(stock)
    assert tensors(lean) == tensors(stock)
    assert {o.domain: o.version for o in lean.opset_import} == {o.domain: o.version for o in stock.opset_import}
    assert lean.ir_version == stock.ir_version


TELEMETRY_PROBE = """
import os, sys
from phi3e2e.build.lean_int4 import silence_telemetry
from olive.telemetry import telemetry
for name in telemetry._CI_ENV_VARS:  # a user's machine, not CI: Olive skips the heartbeat where CI=... is set
    os.environ.pop(name, None)
if sys.argv[1] == "silenced":
    silence_telemetry()
from olive.telemetry.telemetry import Telemetry
print(Telemetry()._logger is None, flush=True)
os._exit(0)  # not Olive's shutdown: offline, the stock exporter would retry its send for seconds
"""


@pytest.mark.parametrize("mode", ["silenced", "stock"])
def test_olive_runs_phi3e2e_starts_send_and_store_no_telemetry(tmp_path, mode):
    """Olive 0.13 makes a device id and queues a heartbeat even with OLIVE_DISABLE_TELEMETRY=1 (the stock case
    shows it, so a fixed Olive is noticed); the wrapper phi3e2e runs Olive through makes no telemetry logger,
    so nothing is written under the user's cache or sent (offline, the send retried for ~12 s at exit)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OLIVE_DISABLE_TELEMETRY="1", XDG_CACHE_HOME=str(tmp_path), HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", TELEMETRY_PROBE, mode], env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = sorted(path.name for path in (tmp_path / "Microsoft").rglob("*") if path.is_file())
    if mode == "silenced":
        assert result.stdout.strip() == "True" and written == []
    else:
        assert result.stdout.strip() == "False" and "deviceid" in written

"""ModelBuilder's int4 step, one weight at a time, so a full-size Phi-3-mini builds in 24 GB.

onnxruntime-genai 0.14.1's ModelBuilder quantizes at save time (`Model.to_int4`): it serializes the
whole model to one protobuf with every weight cast to fp32 (15 GB for Phi-3-mini, next to the 7.6 GB
bf16 checkpoint it still holds), then hands it to onnxruntime's MatMulNBitsQuantizer. On a 24 GB
machine the 32-layer build is killed for memory. `lean_to_int4` does the same quantization with the
same quantizer (`DefaultWeightOnlyQuantizer.quantize`, node by node), but materializes one weight in
fp32 at a time and drops it as soon as its int4 form is in the graph: the output is the same model,
bytes and all (tests/test_lean_int4.py), at about a third of the peak memory.

`install()` patches ModelBuilder in this process; `python -m phi3e2e.build.lean_int4 run ...`
is `olive run ...` with the patch, which is how phi3e2e's local fine-tunes and exports run Olive.
Any configuration the lean path does not cover (a non-default quantization algorithm, QDQ, sub-graphs)
goes through ModelBuilder's own `to_int4` unchanged.
"""

from __future__ import annotations

import gc
import os
import sys

from phi3e2e.build.builder_patch import patch, stock

# A full collection costs ~0.3 s with torch and transformers loaded; once per weight that was 4.5 s of a tiny
# model's 15 and ~40 s of Phi-3-mini's 129. Once per 256 MB of removed fp32 weights keeps the build's memory
# within that of one collection per weight (4-layer Phi-3-mini shape: peak RSS 2.79 GB either way; build
# 35.1 -> 27.4 s, the same bytes).
COLLECT_EVERY_BYTES = 256 << 20


def install() -> None:
    """Make ModelBuilder quantize weight by weight (idempotent)."""
    patch("to_int4", lean_to_int4)


def lean_to_int4(self):
    """`Model.to_int4` of onnxruntime-genai 0.14.1, one weight in fp32 at a time. Returns the ir.Model."""
    import onnx
    import onnx_ir as ir
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.quantization.quant_utils import QuantFormat

    int4 = self.quant_attrs["int4"]
    graph = self.model.graph
    has_subgraphs = any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                        for node in graph for attr in node.attributes.values())
    if int4["algo_config"] is not None or self.quant_attrs["use_qdq"] or has_subgraphs:
        return stock(self, "to_int4")()

    empty = onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))
    quantizer = MatMulNBitsQuantizer(
        model=empty,
        block_size=int4["qdq_block_size"],
        is_symmetric=int4["is_symmetric"],
        accuracy_level=int4["accuracy_level"],
        nodes_to_exclude=int4["nodes_to_exclude"],
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=int4["op_types_to_quantize"],
    )
    op_types = set(quantizer.algo_config.op_types_to_quantize)
    excluded = set(int4["nodes_to_exclude"] or [])
    targets = [node for node in graph
               if node.op_type in op_types and node.domain in ("", "ai.onnx") and node.name not in excluded]
    unfreed = 0
    while targets:  # popped, so a replaced node (and the fp32 weight it points to) is not kept alive here
        unfreed += _quantize_node(graph, targets.pop(0), quantizer.node_quantizer, self.values)
        if unfreed >= COLLECT_EVERY_BYTES:
            # A removed node and its values reference each other: only the cycle collector frees the weights.
            gc.collect()
            unfreed = 0

    # What MatMulNBitsQuantizer.process sets on the model it returns.
    self.model.opset_imports["com.microsoft"] = 1
    if "Gather" in op_types:  # int4 tensors need opset 21 and IR version 10
        self.model.opset_imports[""] = max(self.model.opset_imports.get("", 21), 21)
        self.model.ir_version = max(self.model.ir_version or 10, 10)
    return self.model


def _quantize_node(graph, node, node_quantizer, builder_values: dict) -> int:
    """Replace one MatMul/Gather with its int4 form; its fp32 weight is gone afterwards (the bytes it held).

    `builder_values`: ModelBuilder's own index of its values by name, which would keep the weight alive.
    """
    import onnx
    import onnx_ir as ir

    weight = node.inputs[1] if node.op_type == "MatMul" else node.inputs[0]
    if weight is None or not weight.is_initializer() or weight.const_value is None:
        return 0
    scratch = onnx.GraphProto()  # the quantizer reads the weight from, and adds its int4 tensors to, this graph
    scratch.initializer.append(ir.serde.serialize_tensor(weight.const_value))
    node_proto = ir.serde.serialize_node(node)
    new_protos = node_quantizer.quantize(node_proto, [scratch])
    if len(new_protos) == 1 and new_protos[0] is node_proto:
        return 0  # not quantizable (not a 2-D constant weight): left as it is, as the stock path does

    values = {value.name: value for value in node.inputs if value is not None}
    for added in scratch.initializer[1:]:
        # A standalone copy: a reference into `scratch` would keep all of it, fp32 weight included, alive.
        tensor_proto = onnx.TensorProto()
        tensor_proto.CopyFrom(added)
        tensor = ir.serde.deserialize_tensor(tensor_proto)
        value = ir.Value(name=tensor_proto.name, shape=tensor.shape, type=ir.TensorType(tensor.dtype), const_value=tensor)
        graph.register_initializer(value)
        values[value.name] = value
    old_names = [output.name for output in node.outputs]
    new_nodes, handed_over = [], {}
    for proto in new_protos:
        attributes = {attr.name: onnx.helper.get_attribute_value(attr) for attr in proto.attribute}
        new = ir.node(proto.op_type, [values[name] if name else None for name in proto.input], attributes,
                      domain=proto.domain, name=proto.name, num_outputs=len(proto.output))
        for output, name in zip(new.outputs, proto.output):
            values[name] = output
            if name in old_names:
                handed_over[name] = output  # takes the old output's name and users below
            else:
                output.name = name
        new_nodes.append(new)
    final = [handed_over[name] for name in old_names]
    ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, list(node.outputs), final)
    if not weight.uses() and weight not in graph.outputs:
        graph.initializers.pop(weight.name)  # the fp32 copy (and, for a cast weight, its closure) goes with it
        builder_values.pop(weight.name, None)
        return weight.const_value.nbytes
    return 0


def silence_telemetry() -> None:
    """No usage telemetry unless the user opts in (PHI3E2E_OLIVE_TELEMETRY=1, see olive_runner.olive_env).

    OLIVE_DISABLE_TELEMETRY=1 is not enough in Olive 0.13: Telemetry.__init__ (olive/telemetry/telemetry.py,
    lines 466-482) writes a device id and logs its heartbeat event before it reads the variable, and at exit
    the exporter retries sending it for ~12 s when there is no network (measured: every `olive run` ended
    12 s after its last line). With no heartbeat and no logger (the state Olive falls back to when it cannot
    make one) nothing is written, queued or sent."""
    if os.environ.get("OLIVE_DISABLE_TELEMETRY") != "1":
        return
    from olive.telemetry import telemetry

    telemetry.Telemetry._create_logger = lambda self: None
    telemetry.Telemetry._log_heartbeat = lambda self, metadata=None: None


def main() -> None:
    """`olive <args>` with ModelBuilder's int4 step made lean, its LM head read right, and telemetry off."""
    from phi3e2e.build import lm_head_fix

    install()
    lm_head_fix.install()
    silence_telemetry()
    from olive.cli.launcher import main as olive_main

    olive_main(sys.argv[1:], called_as_console_script=False)


if __name__ == "__main__":
    main()

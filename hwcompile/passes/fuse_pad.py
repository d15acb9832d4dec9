"""Zero Pad into the following Conv's ``pads``. Preserves outputs exactly.

``Conv(Pad(x, p))`` with a constant-mode, zero-valued Pad on the spatial axes only equals
``Conv(x)`` with ``p`` added to the Conv's own (non-negative) pads: the Conv pads with zeros too.
Exporters of TensorFlow-style "same" padding (EfficientNet's static_padding) leave such Pads;
left alone they split an INT8 region and cost a float round trip each. Declines (with a reason in
``graph.meta['fuse_pad_declined']``) when the Pad is not constant zero, pads batch or channel
axes, has negative pads, feeds anything else, or the Conv uses ``auto_pad``.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..ir import Graph, const_array, is_constant
from .base import PassResult

__all__ = ["fuse_pad_into_conv"]


def fuse_pad_into_conv(graph: Graph) -> PassResult:
    fused, declined = 0, {}
    for pad in [n for n in graph.main if n.op_type == "Pad" and n.domain == ""]:
        reason = _check(graph, pad)
        if reason:
            declined[pad.name] = reason
            continue
        conv = graph.consumers(pad.outputs[0])[0]
        p = const_array(pad.inputs[1]).astype(np.int64)
        rank = len(p) // 2
        spatial = rank - 2
        old = list(conv.attributes["pads"].as_ints()) if "pads" in conv.attributes else [0] * (2 * spatial)
        new = [old[i] + int(p[2 + i]) for i in range(spatial)] + [old[spatial + i] + int(p[rank + 2 + i])
                                                                    for i in range(spatial)]
        conv.attributes["pads"] = ir.AttrInt64s("pads", new)
        conv.replace_input_with(0, pad.inputs[0])
        graph.erase(pad)
        fused += 1
    graph.meta.setdefault("fuse_pad_declined", {}).update(declined)
    return PassResult(graph, fused > 0, {"pads_fused": fused})


fuse_pad_into_conv.name, fuse_pad_into_conv.in_place = "fuse_pad_into_conv", True


def _check(graph: Graph, pad: ir.Node) -> str | None:
    mode = pad.attributes.get("mode")
    if mode is not None and mode.as_string() != "constant":
        return f"mode {mode.as_string()}"
    if len(pad.inputs) < 2 or not is_constant(pad.inputs[1]):
        return "pads are not a constant"
    if len(pad.inputs) > 2 and pad.inputs[2] is not None:
        if not is_constant(pad.inputs[2]) or np.any(const_array(pad.inputs[2]) != 0):
            return "pad value is not a constant zero"
    if len(pad.inputs) > 3 and pad.inputs[3] is not None:
        return "Pad has an axes input"
    p = const_array(pad.inputs[1]).astype(np.int64)
    rank = len(p) // 2
    if rank < 3 or np.any(p < 0) or p[0] or p[1] or p[rank] or p[rank + 1]:
        return "pads batch/channel axes or negative pads"
    users = graph.consumers(pad.outputs[0])
    if len(users) != 1 or pad.outputs[0].is_graph_output() or users[0].op_type != "Conv" \
            or users[0].inputs[0] is not pad.outputs[0]:
        return "output does not feed exactly one Conv's data input"
    auto = users[0].attributes.get("auto_pad")
    if auto is not None and auto.as_string() not in ("NOTSET", ""):
        return "Conv uses auto_pad"
    return None

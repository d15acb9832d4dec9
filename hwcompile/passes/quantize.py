"""Static INT8 quantization: insert Q/DQ where the plan says. Preserves outputs up to the
quantization error the plan accepts; layers the plan leaves in float stay bit-exact.

Placement (what makes INT8 fast instead of slower than FP32):
- every INT8 layer (Conv/ConvTranspose/Gemm/MatMul) reads ``DQ(Q(x))`` for its activation and
  ``DQ(w_int8)`` for its weight (an initializer, symmetric, per output channel on the op's axis);
  its output is quantized too, so the backend sees a whole ``DQ -> op -> Q`` group and runs an
  integer kernel (onnxruntime: QLinearConv, QGemm, QLinearMatMul; TensorRT: INT8 tactics);
- ops between INT8 layers that have integer kernels (Add, Concat, pooling, activations, shape
  ops) join the INT8 region, their inputs and outputs quantized, so no float island splits it;
  shape-only ops (Reshape, Transpose, MaxPool, ...) reuse their input's scale, so the backend can
  drop the Q/DQ around them;
- with unsigned asymmetric activations a Relu or Clip(0, c) right after an INT8 layer is absorbed:
  the layer's output is quantized with the activation's calibrated range, whose zero point is 0,
  and QuantizeLinear's saturation then computes the Relu/Clip exactly;
- each quantized tensor gets one Q/DQ pair shared by all its quantized consumers; float consumers
  and graph outputs keep reading the float tensor;
- a float Conv/ConvTranspose/Gemm that reads an INT8 layer's output (which all consumers read
  through DQ, so the producer keeps its integer kernel) gets its own DequantizeLinear with the
  same scale repeated per channel (``axis=1``): identical values, but onnxruntime's
  WeightBiasQuantization only rewrites layers whose input DQ is per-tensor, and would otherwise
  quantize the float layer's weight to per-tensor INT8 behind the plan's back (asymmetric-uint8
  styles only; TensorRT wants per-tensor activation scales and does not requantize).
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..contract import PrecisionPlan, QDQStyle
from ..data import Dataset
from ..errors import DataError
from ..ir import Graph, const_array, is_constant
from ..quant.calibration import Calibration, calibrate
from ..quant.weights import quantize_layer_weight
from .base import BoundPass, PassResult, run_passes

__all__ = ["quantize", "quantize_pass", "plan_static_region", "INT8_CAPABLE", "SCALE_SHARING"]

#: Ops with integer kernels in the backends we target: they join an INT8 region.
INT8_CAPABLE = frozenset({"Add", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Clip",
                          "Sigmoid", "HardSigmoid", "Mul", "LeakyRelu", "Reshape", "Flatten", "Transpose",
                          "Squeeze", "Unsqueeze", "Resize", "Split", "Slice", "Gather"})
#: Ops whose output values are a subset of their input values: output reuses the input's scale.
SCALE_SHARING = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "Split",
                           "Slice", "Gather", "Resize"})
_ABSORBABLE = ("Relu", "Clip")


def quantize(graph: Graph, plan: PrecisionPlan, style: QDQStyle, calib: Dataset | None,
             cache: dict | None = None) -> Graph:
    """Apply every non-float layer choice of ``plan`` to ``graph`` (in place, through the pass runner) and return it."""
    return run_passes(graph, [BoundPass("quantize", quantize_pass, (plan, style, calib), {"cache": cache})],
                      max_rounds=1)


def quantize_pass(graph: Graph, plan: PrecisionPlan, style: QDQStyle, calib: Dataset | None,
                  cache: dict | None = None) -> PassResult:
    """The pass form of :func:`quantize`: declined layers (dynamic INT8 or INT4 the rewrite cannot
    apply) come back with their reasons. Run it once."""
    from .quantize_dynamic import quantize_dynamic_layers
    from .quantize_int4 import quantize_int4_layers

    cache = cache if cache is not None else {}
    layers = graph.layers()
    static = [n for n in layers if plan.choice(n.name).activation == "int8" and plan.choice(n.name).weight == "int8"]
    dynamic = [n for n in layers if plan.choice(n.name).activation == "dynamic"]
    int4 = [n for n in layers if plan.choice(n.name).weight == "int4"]
    if static:
        if calib is None:
            raise DataError("static INT8 needs calibration data", where="--calib")
        _quantize_static(graph, static, plan, style, calib, cache)
    if dynamic:
        quantize_dynamic_layers(graph, dynamic, plan, style)
    if int4:
        quantize_int4_layers(graph, int4, plan, style, calib, cache)
    tables: list[str] = []
    if (static or dynamic or int4) and plan.quant.embeddings == "int8" and style.int8_embeddings:
        from .quantize_embeddings import quantize_embeddings

        tables = graph.meta["int8_embeddings"] = quantize_embeddings(graph)
    graph.main.sort()
    asked = {n.name for n in dynamic} | {n.name for n in int4}
    declined = {k: v for key in ("dynamic_skipped", "int4_skipped") for k, v in graph.meta.get(key, {}).items()
                if k in asked}
    done = len(static) + len(asked) - len(declined)
    return PassResult(graph, done > 0 or bool(tables),
                      {"static_int8": len(static), "dynamic_int8": len(dynamic) - len(set(declined) & {n.name for n in dynamic}),
                       "int4": len(int4) - len(set(declined) & {n.name for n in int4}), "int8_embeddings": len(tables)},
                      declined)


def plan_static_region(graph: Graph, static: list[ir.Node], style: QDQStyle, exclude: frozenset = frozenset()):
    """(nodes in the INT8 region, absorbed activations {layer: act node}, tensors to quantize).
    Nodes named in ``exclude`` never join the region."""
    region: set[str] = {n.name for n in static}
    absorbed: dict[str, ir.Node] = {}
    if style.activation_dtype == "uint8" and not style.symmetric_activations:
        for n in static:
            out = n.outputs[0]
            users = graph.consumers(out)
            if len(users) == 1 and users[0].op_type in _ABSORBABLE and not out.is_graph_output() \
                    and _clip_lower_is_zero(users[0]):
                absorbed[n.name] = users[0]
    skip = {a.name for a in absorbed.values()}
    for node in graph.main:  # topological: grow the region through integer-capable ops
        if node.name in region or node.name in skip or node.name in exclude or node.op_type not in INT8_CAPABLE:
            continue
        acts = [v for v in node.inputs if v is not None and not is_constant(v)]
        if acts and all(_in_region(v, region, absorbed) for v in acts):
            region.add(node.name)
    if style.activation_dtype == "uint8" and not style.symmetric_activations:
        for node in graph.main:  # a Relu after a quantized Add/Concat is absorbed the same way
            if node.name in region and node.op_type in ("Add", "Concat") and node.name not in absorbed:
                users = graph.consumers(node.outputs[0])
                if (len(users) == 1 and users[0].name in region and users[0].op_type in _ABSORBABLE
                        and not node.outputs[0].is_graph_output() and _clip_lower_is_zero(users[0])):
                    absorbed[node.name] = users[0]
                    region.discard(users[0].name)
    tensors: list[ir.Value] = []
    seen: set[int] = set()

    def add(v: ir.Value) -> None:
        if id(v) not in seen and v.dtype == ir.DataType.FLOAT:
            seen.add(id(v))
            tensors.append(v)

    for node in graph.main:
        if node.name not in region:
            continue
        ins = [node.inputs[0]] if node.name in {n.name for n in static} else node.inputs
        for v in ins:
            if v is not None and not is_constant(v):
                add(v)
        out = absorbed[node.name].outputs[0] if node.name in absorbed else node.outputs[0]
        add(out)
    return region, absorbed, tensors


def _in_region(v: ir.Value, region: set[str], absorbed: dict[str, ir.Node]) -> bool:
    prod = v.producer()
    if prod is None:
        return False
    if prod.name in region:
        return True
    return any(a is prod for a in absorbed.values())


def _clip_lower_is_zero(node: ir.Node) -> bool:
    if node.op_type == "Relu":
        return True
    lo = node.inputs[1] if len(node.inputs) > 1 else None
    if lo is None:
        return False
    return is_constant(lo) and float(const_array(lo)) == 0.0


def _quantize_static(graph: Graph, static: list[ir.Node], plan: PrecisionPlan, style: QDQStyle,
                     calib: Dataset, cache: dict) -> None:
    region, absorbed, tensors = plan_static_region(graph, static, style)
    cal: Calibration = calibrate(graph, calib, [t.name for t in tensors], [n for n in static], plan.quant,
                                 cache=cache)
    static, region, absorbed, tensors = _keep_float_tensors(graph, static, style, cal, region, absorbed, tensors)
    act_dtype = "int8" if style.symmetric_activations else style.activation_dtype
    symmetric = style.symmetric_activations or act_dtype == "int8" and plan.quant.symmetric_activations
    qparams: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for t in tensors:
        prod = t.producer()
        src = prod.inputs[0] if prod is not None and prod.op_type in SCALE_SHARING else None
        if src is not None and src.name in qparams:
            qparams[t.name] = qparams[src.name]
            continue
        # A graph output is never clipped: clipping logits changes the answer itself (seen: the entropy
        # observer cut EfficientNet's top logits, top-1 0.88 -> 0.33), so it keeps its full range.
        # Clip(0, 6)-style outputs pile up at their bound; clipping below it drops that spike (the
        # entropy observer halved EfficientNet's ReLU6 ranges), so bounded activations keep min-max.
        bounded = prod is not None and prod.op_type == "Clip"
        method = "minmax" if t.is_graph_output() or bounded else None
        qparams[t.name] = cal.activation_qparams(t.name, act_dtype, symmetric, method)
    x_names = {n.name: n.inputs[0].name for n in static}
    # Absorb Relu/Clip: the layer's output takes the activation's place and range.
    for lname, act in absorbed.items():
        layer_out = act.inputs[0]
        act_out = act.outputs[0]
        qparams[layer_out.name] = qparams.pop(act_out.name)
        graph.replace_all_uses(act_out, layer_out)
        graph.erase(act)
        tensors = [layer_out if t is act_out else t for t in tensors]
    # Weights (and biases) of the INT8 layers, before activation Q/DQ so a MatMul's bias
    # correction still finds the Add that follows it.
    for node in static:
        x_scale = qparams[x_names[node.name]][0] if x_names[node.name] in qparams else None
        quantize_layer_weight(graph, node, plan.quant, style, x_scale, cal)
    # Q/DQ pairs on activations.
    layer_outputs = {id(n.outputs[0]) for n in static}
    keep_float = not style.symmetric_activations
    for t in tensors:
        scale, zp = qparams[t.name]
        dq = _insert_qdq(graph, t, scale, zp, region, all_users=id(t) in layer_outputs)
        if dq is not None and keep_float:
            _private_dq_for_float_layers(graph, dq, region)


def _keep_float_tensors(graph: Graph, static, style, cal: Calibration, region, absorbed, tensors):
    """Re-plan the region so that mask, non-finite and sentinel tensors (``quant.float_guard``) stay
    float: ops reading or writing one leave the region, layers reading one stay float. Records
    {tensor: reason} in ``graph.meta['float_tensors']`` for the report."""
    from ..quant.float_guard import float_tensors

    kept: dict[str, str] = {}
    exclude: set[str] = set()
    for _ in range(len(graph.main) + 1):
        bad = float_tensors(graph, cal.stats, [t.name for t in tensors])
        if not bad:
            break
        kept.update(bad)
        for t in tensors:
            if t.name not in bad:
                continue
            for n in [t.producer()] + [u.node for u in t.uses()]:
                if n is not None and n.name in region:
                    exclude.add(n.name)
        static = [n for n in static if n.name not in exclude]
        region, absorbed, tensors = plan_static_region(graph, static, style, frozenset(exclude))
    if kept:
        graph.meta.setdefault("float_tensors", {}).update(kept)
    return static, region, absorbed, tensors


#: Float layers onnxruntime would quantize itself when their input comes from a per-tensor DQ.
_REQUANTIZED_BY_ORT = ("Conv", "ConvTranspose", "Gemm")


def _private_dq_for_float_layers(graph: Graph, dq: ir.Node, region: set[str]) -> None:
    """Float Conv/ConvTranspose/Gemm readers of ``dq`` get a per-channel copy of it (same values).

    Declines (leaves the reader on the shared DQ, noted in ``graph.meta['float_layer_dq']``) when
    the channel count is not a static dimension.
    """
    q, s, z = dq.inputs
    notes = graph.meta.setdefault("float_layer_dq", {})
    for use in list(dq.outputs[0].uses()):
        node = use.node
        if node.op_type not in _REQUANTIZED_BY_ORT or node.name in region or use.idx != 0:
            continue
        shape = dq.outputs[0].shape
        c = shape[1] if shape is not None and len(shape) >= 2 else None
        if not isinstance(c, int):
            notes[node.name] = "kept the shared per-tensor DQ: channel dimension unknown"
            continue
        sc = graph.add_initializer(f"{s.name}_per_channel", np.full(c, float(const_array(s)), dtype=np.float32))
        zc = graph.add_initializer(f"{z.name}_per_channel", np.full(c, const_array(z), dtype=const_array(z).dtype))
        own = graph.new_node("DequantizeLinear", [q, sc, zc], {"axis": 1}, name=f"{node.name}_input_DequantizeLinear",
                             serves=node.name)
        own.outputs[0].type, own.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT), shape
        graph.insert_before(node, own)
        node.replace_input_with(0, own.outputs[0])
        notes[node.name] = "per-channel input DQ so the backend keeps the weight float"


def _insert_qdq(graph: Graph, value: ir.Value, scale: np.ndarray, zp: np.ndarray, region: set[str],
                all_users: bool = False) -> ir.Node | None:
    """One Q/DQ pair after ``value``; region consumers (all, for an INT8 layer's output) read DQ.
    Returns the DQ node (None when nothing needed it)."""
    users = [u for u in value.uses() if all_users or u.node.name in region]
    as_output = all_users and value.is_graph_output()
    if not users and not as_output:
        return None
    base = value.name
    serves = value.producer().name if value.producer() is not None else (users[0].node.name if users else None)
    s = graph.add_initializer(f"{base}_scale", np.asarray(scale, dtype=np.float32))
    z = graph.add_initializer(f"{base}_zero_point", np.asarray(zp))
    q = graph.new_node("QuantizeLinear", [value, s, z], name=f"{base}_QuantizeLinear", serves=serves)
    dq = graph.new_node("DequantizeLinear", [q.outputs[0], s, z], name=f"{base}_DequantizeLinear", serves=serves)
    q.outputs[0].type, q.outputs[0].shape = ir.TensorType(ir.DataType.from_numpy(np.asarray(zp).dtype)), value.shape
    dq.outputs[0].type, dq.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT), value.shape
    prod = value.producer()
    if prod is not None:
        graph.insert_after(prod, [q, dq])
    else:
        first = next(iter(graph.main))
        graph.insert_before(first, [q, dq])
    for use in users:
        use.node.replace_input_with(use.idx, dq.outputs[0])
    if as_output:  # the graph output keeps its name but now carries the quantized value
        outs = graph.main.outputs
        outs[[i for i, o in enumerate(outs) if o is value][0]] = dq.outputs[0]
        name = value.name
        value.name = graph.mint_name(name + "_float")
        dq.outputs[0].name = name
    return dq

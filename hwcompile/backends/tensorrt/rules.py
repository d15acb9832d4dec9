"""TensorRT explicit-quantization rules, checked on a plain ``onnx.ModelProto``.

TensorRT 10 builds INT8/FP8/INT4 only from explicit QuantizeLinear/DequantizeLinear (Q/DQ) in the
ONNX graph, and TensorRT 11 makes that the one path (strong typing, no precision flags, no
calibrators). TensorRT quantization is symmetric and signed::

    q = saturate(round(x / s))            (zero point 0; int8 in [-128, 127], int4 in [-8, 7])
    x' = q * s

with one scalar ``s`` per activation tensor and one ``s`` per output channel (or per block along
the reduction axis, INT4) for weights. The rules below say what a model must look like for
TensorRT to build it as quantized and fuse it as intended; each has a stable id (``RULES``).

Mixed precision, exactly: a Conv / ConvTranspose / Gemm / MatMul whose inputs carry no Q/DQ at all
is a float layer and is allowed. Once any *activation* input of such an op is dequantized, every
input (activations and weight) must be dequantized. A weight-only quantized MatMul / Gemm (float
activation, DQ'd constant weight: the ``int4w`` candidate) is allowed; a weight-only quantized
Conv / ConvTranspose is flagged (TensorRT's weight-only quantization covers MatMul / Gemm).

Only the top-level graph is checked (not If/Loop bodies). A value is *constant* when it is an
initializer that is not also a graph input, a Constant output, or the output of a node whose
inputs are all constant ("initializer chain").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Iterator

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

__all__ = ["Violation", "RULES", "check_model", "render", "nm_violations", "weights_not_2_4"]

RULES: dict[str, str] = {
    "no-qlinear": "no QLinear*, *Integer, DynamicQuantizeLinear or com.microsoft ops: TensorRT reads Q/DQ only",
    "qdq-dtype": "Q/DQ quantize to INT8, FP8 E4M3FN or INT4 (TensorRT has no UINT8/INT16/INT32 Q/DQ)",
    "zero-point-zero": "every Q/DQ zero point that is given is a constant of all zeros (symmetric)",
    "act-scale-per-tensor": "Q/DQ on activations have a constant scalar scale",
    "weight-per-channel-axis": "weight DQ scales are per-tensor, per output channel on the op's output axis, "
                               "or INT4 blocks along the reduction axis",
    "weight-initializer-dq": "weights are initializer -> DequantizeLinear -> op: no Q on a constant float weight, "
                             "no float weight into a quantized op",
    "qdq-on-inputs": "a Conv/ConvTranspose/Gemm/MatMul with any DQ input has DQ on every input "
                     "(float ops and weight-only MatMul/Gemm allowed)",
    "residual-add-quantized": "an Add fed by a quantized Conv (directly or through Q/DQ) gets its residual input "
                              "from a DequantizeLinear",
    "opset-fp8": "FP8 Q/DQ need default-domain opset >= 19",
    "int4-weight-only": "INT4 Q/DQ (INT4 told by the zero point's dtype, else the data's or output_dtype) only on "
                        "constant weights: TensorRT's INT4 is weight-only",
    "sparsity-2-4": "with sparsity 2:4, Conv/Gemm/MatMul weights have <= 2 nonzeros in every 4 along the reduction axis",
}


@dataclass(frozen=True)
class Violation:
    node: str
    rule: str
    message: str


def check_model(model: onnx.ModelProto, *, sparsity: str | None = None,
                sparse_nodes: Collection[str] | None = None) -> list[Violation]:
    """All violations of ``RULES`` in ``model``, rule by rule, nodes in graph order.

    With ``sparsity="2:4"`` the 2:4 rule checks every Conv/Gemm/MatMul weight, or only the nodes
    named in ``sparse_nodes`` (the layers the plan made sparse: TensorRT's SPARSE_WEIGHTS uses
    sparse kernels where weights allow and dense ones elsewhere, so a dense layer is no error).
    """
    idx = _Index(model)
    idx.sparse_nodes = None if sparse_nodes is None else set(sparse_nodes)
    out: list[Violation] = []
    for rule, fn in _CHECKS.items():
        if rule == "sparsity-2-4" and (sparsity or "").strip() != "2:4":
            continue
        out.extend(Violation(idx.name(n), rule, msg) for n, msg in fn(idx))
    return out


def render(violations: list[Violation]) -> str:
    return "\n".join(f"node '{v.node}': [{v.rule}] {v.message}" for v in violations)


# ---------------------------------------------------------------------------------------------
QDQ = ("QuantizeLinear", "DequantizeLinear")
MATMUL_LIKE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_INTEGER_OPS = ("DynamicQuantizeLinear",)
_FP8 = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ}
_ALLOWED_Q = {TensorProto.INT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4}
_DTYPE_NAME = {v: k for k, v in TensorProto.DataType.items()}


class _Index:
    """Read-only lookups over the top-level graph: producers, constants, opset."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.nodes = list(g.node)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        graph_inputs = {i.name for i in g.input}
        self.inits = {t.name: t for t in g.initializer if t.name not in graph_inputs}
        self.producer: dict[str, onnx.NodeProto] = {o: n for n in self.nodes for o in n.output if o}
        self.types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
        self._names = {id(n): n.name or f"{n.op_type}_{i}" for i, n in enumerate(self.nodes)}
        self._const: dict[str, bool] = {}
        self.sparse_nodes: set[str] | None = None  # 2:4 rule: only these nodes (None: all)

    def name(self, node: onnx.NodeProto) -> str:
        return self._names[id(node)]

    def is_const(self, value: str) -> bool:
        if value in self._const:
            return self._const[value]
        self._const[value] = False  # guards cycles in malformed graphs
        p = self.producer.get(value)
        res = value in self.inits or (p is not None and (p.op_type == "Constant" or (
            bool([i for i in p.input if i]) and all(self.is_const(i) for i in p.input if i))))
        self._const[value] = res
        return res

    def array(self, value: str) -> np.ndarray | None:
        """The constant's stored array for an initializer, a Constant or an Identity of one."""
        if value in self.inits:
            return numpy_helper.to_array(self.inits[value])
        p = self.producer.get(value)
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                    return np.asarray(onnx.helper.get_attribute_value(a))
        if p is not None and p.op_type == "Identity":
            return self.array(p.input[0])
        return None

    def elem_type(self, value: str) -> int | None:
        if value in self.inits:
            return self.inits[value].data_type
        p = self.producer.get(value)
        if p is not None and p.op_type == "Constant":
            for a in p.attribute:
                if a.name == "value":
                    return a.t.data_type
        if p is not None and p.op_type == "QuantizeLinear":
            return _q_dtype(self, p)
        return self.types.get(value) or None

    def dq_feeding(self, value: str) -> onnx.NodeProto | None:
        p = self.producer.get(value)
        return p if p is not None and p.op_type == "DequantizeLinear" else None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _input(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _q_dtype(idx: _Index, node: onnx.NodeProto) -> int | None:
    """The quantized element type of a Q or DQ node (None if unknown)."""
    zp = _input(node, 2)
    if zp:
        return idx.elem_type(zp)
    if node.op_type == "DequantizeLinear":
        return idx.elem_type(node.input[0])
    out = _attr(node, "output_dtype", 0)
    return out or TensorProto.UINT8  # ONNX: no zero point and no output_dtype means uint8


def _weight_axes(op: onnx.NodeProto, rank: int) -> tuple[int, int]:
    """(output-channel axis, reduction axis) of the weight (input 1) of a MATMUL_LIKE op."""
    if op.op_type == "Conv":
        return 0, 1
    if op.op_type == "ConvTranspose":
        return 1, 0
    if op.op_type == "Gemm":
        return (0, 1) if _attr(op, "transB", 0) else (1, 0)
    return rank - 1, rank - 2  # MatMul [..., K, N]


def _shape(idx: _Index, value: str) -> tuple[int, ...] | None:
    if value in idx.inits:
        return tuple(idx.inits[value].dims)
    a = idx.array(value)
    return None if a is None else tuple(a.shape)


# -- the rules ---------------------------------------------------------------------------------
Found = Iterator[tuple[onnx.NodeProto, str]]


def _no_qlinear(idx: _Index) -> Found:
    for n in idx.nodes:
        if n.domain in ("com.microsoft", "com.ms.internal.nhwc"):
            yield n, f"{n.op_type} is an onnxruntime contrib op ({n.domain}); TensorRT cannot parse it"
        elif n.op_type.startswith("QLinear") or "Integer" in n.op_type or n.op_type in _INTEGER_OPS:
            yield n, (f"{n.op_type} is an onnxruntime integer op; express it as DequantizeLinear -> float op "
                      "-> QuantizeLinear (explicit Q/DQ) for TensorRT")


def _qdq_dtype(idx: _Index) -> Found:
    for n in idx.nodes:
        if n.op_type not in QDQ:
            continue
        dt = _q_dtype(idx, n)
        if dt == TensorProto.INT4 and idx.opset < 21:
            yield n, f"INT4 Q/DQ needs opset >= 21, model has {idx.opset}"
        elif dt is None or dt in _ALLOWED_Q:
            continue
        elif n.op_type == "QuantizeLinear" and not _input(n, 2) and not _attr(n, "output_dtype", 0):
            yield n, "no zero point, so ONNX quantizes to uint8; give an int8 zero point of 0"
        else:
            yield n, (f"{n.op_type} uses {_DTYPE_NAME.get(dt, str(dt))}; TensorRT supports INT8, FLOAT8E4M3FN "
                      "and INT4 Q/DQ only")


def _zero_point_zero(idx: _Index) -> Found:
    for n in idx.nodes:
        zp = _input(n, 2) if n.op_type in QDQ else ""
        if not zp:
            continue
        arr = idx.array(zp)
        if arr is None:
            yield n, f"zero point '{zp}' is not a constant; TensorRT needs a constant zero"
        elif np.any(vals := arr.astype(np.float32).ravel()):
            nz = np.flatnonzero(vals)
            yield n, (f"zero point '{zp}' has {nz.size} nonzero value(s) (first {vals[nz[0]]:g} at flat index "
                      f"{nz[0]}); TensorRT quantization is symmetric: use zero point 0")


def _act_scale_per_tensor(idx: _Index) -> Found:
    for n in idx.nodes:
        if n.op_type not in QDQ or idx.is_const(n.input[0]):
            continue
        shape = _shape(idx, n.input[1])
        if shape is None:
            yield n, f"activation scale '{n.input[1]}' is not a constant initializer"
        elif int(np.prod(shape)) != 1:
            yield n, f"activation scale '{n.input[1]}' has shape {list(shape)}; TensorRT needs one scalar per activation"


def _weight_per_channel_axis(idx: _Index) -> Found:
    for n in idx.nodes:
        if n.op_type != "DequantizeLinear" or not idx.is_const(n.input[0]):
            continue
        ws, ss = _shape(idx, n.input[0]), _shape(idx, n.input[1])
        if ws is None or ss is None:
            continue
        for op in (c for c in idx.nodes if c.op_type in MATMUL_LIKE and _input(c, 1) == n.output[0]):
            msg = _check_weight_scale(idx, n, op, ws, ss)
            if msg:
                yield n, msg


def _check_weight_scale(idx: _Index, dq: onnx.NodeProto, op: onnx.NodeProto,
                        ws: tuple[int, ...], ss: tuple[int, ...]) -> str:
    rank = len(ws)
    out_axis, red_axis = _weight_axes(op, rank)
    axis = _attr(dq, "axis", 1)
    axis = axis + rank if axis < 0 else axis
    block = _attr(dq, "block_size", 0)
    opname = f"{op.op_type} '{idx.name(op)}'"
    if block:
        if idx.opset < 21:
            return f"block_size needs opset >= 21, model has {idx.opset}"
        if _q_dtype(idx, dq) != TensorProto.INT4:
            return "block-wise weight quantization is INT4-only in TensorRT"
        want = tuple(-(-d // block) if i == red_axis else d for i, d in enumerate(ws))
        if axis != red_axis or ss != want:
            return (f"block-wise scale must block the reduction axis {red_axis} of weight {list(ws)} for {opname}: "
                    f"axis={red_axis}, scale shape {list(want)}; got axis={axis}, scale shape {list(ss)}")
        return ""
    if int(np.prod(ss)) == 1:
        return ""  # per-tensor weights: supported by TensorRT
    if len(ss) != 1 or axis != out_axis or ss[0] != ws[out_axis]:
        return (f"per-channel weight scale for {opname} must be 1-D of size {ws[out_axis]} on output axis "
                f"{out_axis} of weight {list(ws)}; got axis={axis}, scale shape {list(ss)}")
    return ""


def _weight_initializer_dq(idx: _Index) -> Found:
    for n in idx.nodes:
        if n.op_type == "QuantizeLinear" and idx.is_const(n.input[0]):
            yield n, (f"QuantizeLinear on constant float weight '{n.input[0]}': the weight is quantized by the "
                      "runtime, not stored; store it quantized as an initializer feeding DequantizeLinear")
    for op in idx.nodes:
        if op.op_type not in MATMUL_LIKE or not _activation_quantized(idx, op):
            continue
        w = _input(op, 1)
        if w and idx.is_const(w) and idx.dq_feeding(w) is None:
            yield op, f"float weight '{w}' feeds quantized {op.op_type}; quantize it (initializer -> DequantizeLinear)"


def _activation_quantized(idx: _Index, op: onnx.NodeProto) -> bool:
    """True if some non-constant input of ``op`` comes from a DequantizeLinear of an activation."""
    for v in op.input[:2]:
        dq = idx.dq_feeding(v) if v else None
        if dq is not None and not idx.is_const(dq.input[0]):
            return True
    return False


def _qdq_on_inputs(idx: _Index) -> Found:
    for op in idx.nodes:
        if op.op_type not in MATMUL_LIKE:
            continue
        ins = [v for v in op.input[:2] if v]
        dq = [idx.dq_feeding(v) is not None for v in ins]
        if not any(dq):
            continue  # a float layer: allowed (mixed precision)
        if _activation_quantized(idx, op):
            float_acts = [v for v, q in zip(ins, dq) if not q and not idx.is_const(v)]
            if float_acts:
                yield op, (f"{op.op_type} is quantized but input(s) {float_acts} are float; put Q/DQ on every input "
                           "or leave the whole op in float")
        elif op.op_type in ("Conv", "ConvTranspose"):
            yield op, (f"{op.op_type} has a dequantized weight but float data input '{ins[0]}'; TensorRT runs "
                       "weight-only quantization on MatMul/Gemm only: quantize the data input too, or keep the "
                       "weight float")
        # else: weight-only quantized MatMul/Gemm (float activation, DQ'd constant weight): allowed


def _residual_add_quantized(idx: _Index) -> Found:
    for add in idx.nodes:
        if add.op_type != "Add" or len(add.input) != 2 or any(idx.is_const(v) for v in add.input):
            continue
        convs = [_quantized_conv_source(idx, v) for v in add.input]
        for side, conv in enumerate(convs):
            if conv is None:
                continue
            residual = add.input[1 - side]
            if idx.dq_feeding(residual) is None:
                yield add, (f"Add after quantized Conv '{idx.name(conv)}' has float residual input '{residual}'; "
                            "feed it through QuantizeLinear -> DequantizeLinear so Conv+Add fuse in INT8")
                break


def _quantized_conv_source(idx: _Index, value: str) -> onnx.NodeProto | None:
    """The activation-quantized Conv producing ``value`` directly or through one Q -> DQ pair."""
    p = idx.producer.get(value)
    if p is not None and p.op_type == "DequantizeLinear":
        q = idx.producer.get(p.input[0])
        p = idx.producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
    return p if p is not None and p.op_type == "Conv" and _activation_quantized(idx, p) else None


def _opset_fp8(idx: _Index) -> Found:
    if idx.opset >= 19:
        return
    for n in idx.nodes:
        if n.op_type in QDQ and _q_dtype(idx, n) in _FP8:
            yield n, f"FP8 {n.op_type} needs opset >= 19, model has {idx.opset}"


def _int4_weight_only(idx: _Index) -> Found:
    for n in idx.nodes:
        if n.op_type in QDQ and _q_dtype(idx, n) == TensorProto.INT4 and not idx.is_const(n.input[0]):
            yield n, (f"INT4 {n.op_type} on activation '{n.input[0]}': TensorRT supports INT4 only as weight-only "
                      "quantization (an INT4 initializer -> DequantizeLinear -> MatMul/Gemm); use INT8 or FP8 here")


def _sparsity_2_4(idx: _Index) -> Found:
    for op in idx.nodes:
        if op.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        if idx.sparse_nodes is not None and idx.name(op) not in idx.sparse_nodes:
            continue
        why = _not_2_4(idx, op)
        if why:
            yield op, why


def _not_2_4(idx: _Index, op: onnx.NodeProto) -> str | None:
    """Why the weight of ``op`` is not 2:4 along its reduction axis, or None (also for no constant weight)."""
    w = _input(op, 1)
    dq = idx.dq_feeding(w) if w else None
    arr = idx.array(dq.input[0] if dq is not None else w) if w else None
    if arr is None or arr.ndim < 2:
        return None  # activation x activation (e.g. attention): no weight to prune
    _, red = _weight_axes(op, arr.ndim)
    bad, total, first = nm_violations(arr, red, n=2, m=4)
    if not bad:
        return None
    return (f"weight '{dq.input[0] if dq is not None else w}' {list(arr.shape)} breaks 2:4 along axis {red}: "
            f"{bad} of {total} groups of 4 have more than 2 nonzeros (first at index {first})")


def weights_not_2_4(model: onnx.ModelProto, nodes: Collection[str]) -> dict[str, str]:
    """{node: why not} for those of ``nodes`` whose constant weight is not 2:4 along the reduction axis.

    Unlike the ``sparsity-2-4`` rule (which pads a trailing partial group), a reduction axis whose
    length is not a multiple of 4 counts as not 2:4 here: such a layer has no 2:4 kernel."""
    idx = _Index(model)
    wanted = set(nodes)
    out = {}
    for op in idx.nodes:
        if idx.name(op) not in wanted:
            continue
        if op.op_type not in ("Conv", "Gemm", "MatMul"):
            out[idx.name(op)] = f"{op.op_type} has no 2:4 kernels"
            continue
        w = _input(op, 1)
        dq = idx.dq_feeding(w) if w else None
        arr = idx.array(dq.input[0] if dq is not None else w) if w else None
        if arr is None or arr.ndim < 2:
            out[idx.name(op)] = "no constant weight"
            continue
        red = _weight_axes(op, arr.ndim)[1]
        if arr.shape[red] % 4:
            out[idx.name(op)] = f"reduction axis {red} has length {arr.shape[red]}, not a multiple of 4"
            continue
        why = _not_2_4(idx, op)
        if why:
            out[idx.name(op)] = why
    return out


def nm_violations(w: np.ndarray, axis: int, *, n: int = 2, m: int = 4) -> tuple[int, int, tuple[int, ...]]:
    """(groups with more than ``n`` nonzeros, number of groups, index of the first bad group's start).

    Groups are ``m`` consecutive entries along ``axis`` at every other index; a trailing partial
    group is padded with zeros (padding adds no nonzeros).
    """
    nz = np.moveaxis(w.astype(np.float32) != 0, axis, -1)
    pad = (-nz.shape[-1]) % m
    if pad:
        nz = np.concatenate([nz, np.zeros(nz.shape[:-1] + (pad,), bool)], axis=-1)
    counts = nz.reshape(nz.shape[:-1] + (-1, m)).sum(-1)
    bad = counts > n
    if not bad.any():
        return 0, int(counts.size), ()
    *rest, group = (int(i) for i in np.argwhere(bad)[0])
    first = (*rest[:axis], group * m, *rest[axis:])  # back to the weight's own index order
    return int(bad.sum()), int(counts.size), first


_CHECKS: dict[str, Callable[[_Index], Found]] = {
    "no-qlinear": _no_qlinear,
    "qdq-dtype": _qdq_dtype,
    "zero-point-zero": _zero_point_zero,
    "act-scale-per-tensor": _act_scale_per_tensor,
    "weight-per-channel-axis": _weight_per_channel_axis,
    "weight-initializer-dq": _weight_initializer_dq,
    "qdq-on-inputs": _qdq_on_inputs,
    "residual-add-quantized": _residual_add_quantized,
    "opset-fp8": _opset_fp8,
    "int4-weight-only": _int4_weight_only,
    "sparsity-2-4": _sparsity_2_4,
}
assert list(_CHECKS) == list(RULES)

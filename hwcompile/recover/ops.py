"""ONNX ops in torch: the table the recovery interpreter runs a Graph with.

Each entry is ``fn(node, xs, ctx) -> list of outputs`` for one ``(domain, op_type)``; ``xs`` are the
node's inputs as torch tensors (None for an omitted optional input) and ``ctx`` is the running
``GraphModule`` (it knows which integer initializers are trained as latent float weights). The
semantics are ONNX's (opset 13 and later, attributes or inputs where the opset moved them);
``QuantizeLinear``/``DequantizeLinear``/``MatMulNBits`` run as fake quantization with a
straight-through estimator, so gradients reach the float weights and activations they quantize.
"""
from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F

from ..errors import UnsupportedError
from .fakequant import INT_RANGES, fake_quant, quantize_ste

__all__ = ["OPS", "supported", "torch_dtype"]

OPS: dict[tuple[str, str], object] = {}

_TORCH_DTYPES = {"FLOAT": torch.float32, "FLOAT16": torch.float16, "DOUBLE": torch.float64,
                 "BFLOAT16": torch.bfloat16, "INT64": torch.int64, "INT32": torch.int32, "INT16": torch.int16,
                 "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}


def torch_dtype(dtype: ir.DataType, where: str) -> torch.dtype:
    if dtype.name not in _TORCH_DTYPES:
        raise UnsupportedError(f"element type {dtype.name} has no torch counterpart in recovery", where=where)
    return _TORCH_DTYPES[dtype.name]


def supported(node: ir.Node) -> bool:
    return (node.domain or "", node.op_type) in OPS


def op(*names: str, domain: str = ""):
    def register(fn):
        for n in names:
            OPS[(domain, n)] = fn
        return fn
    return register


def _attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    if a is None:
        return default
    v = a.value
    return list(v) if isinstance(v, tuple) else v


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _where(node: ir.Node) -> str:
    return f"node '{node.name}' ({node.op_type})"


# -- elementwise --------------------------------------------------------------------------------
def _binary(fn):
    return lambda node, xs, ctx: [fn(xs[0], xs[1])]


def _div(a, b):
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


for _name, _fn in {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div, "Pow": torch.pow,
                   "Equal": torch.eq, "Greater": torch.gt, "Less": torch.lt, "GreaterOrEqual": torch.ge,
                   "LessOrEqual": torch.le, "And": torch.logical_and, "Or": torch.logical_or,
                   "Xor": torch.logical_xor}.items():
    OPS[("", _name)] = _binary(_fn)

for _name, _fn in {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
                   "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs,
                   "Not": torch.logical_not, "Reciprocal": torch.reciprocal, "Floor": torch.floor,
                   "Ceil": torch.ceil, "Identity": lambda x: x, "Sin": torch.sin, "Cos": torch.cos}.items():
    OPS[("", _name)] = (lambda f: lambda node, xs, ctx: [f(xs[0])])(_fn)


@op("Max", "Min", "Sum", "Mean")
def _variadic(node, xs, ctx):
    fn = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add, "Mean": torch.add}[node.op_type]
    out = xs[0]
    for x in xs[1:]:
        out = fn(out, x)
    return [out / len(xs) if node.op_type == "Mean" else out]


@op("Clip")
def _clip(node, xs, ctx):
    lo = xs[1] if len(xs) > 1 else None
    hi = xs[2] if len(xs) > 2 else None
    return [torch.clamp(xs[0], min=lo, max=hi)]


@op("LeakyRelu")
def _leaky(node, xs, ctx):
    return [F.leaky_relu(xs[0], _attr(node, "alpha", 0.01))]


@op("HardSigmoid")
def _hardsigmoid(node, xs, ctx):
    return [torch.clamp(_attr(node, "alpha", 0.2) * xs[0] + _attr(node, "beta", 0.5), 0, 1)]


@op("HardSwish")
def _hardswish(node, xs, ctx):
    return [F.hardswish(xs[0])]


@op("Gelu")
def _gelu(node, xs, ctx):
    return [F.gelu(xs[0], approximate=_attr(node, "approximate", "none"))]


@op("PRelu")
def _prelu(node, xs, ctx):
    return [torch.where(xs[0] >= 0, xs[0], xs[0] * xs[1])]


@op("Where")
def _where_op(node, xs, ctx):
    return [torch.where(xs[0], xs[1], xs[2])]


@op("Cast")
def _cast(node, xs, ctx):
    return [xs[0].to(torch_dtype(ir.DataType(_attr(node, "to")), _where(node)))]


# -- linear algebra and convolution -------------------------------------------------------------
@op("MatMul")
def _matmul(node, xs, ctx):
    return [torch.matmul(xs[0], xs[1])]


@op("Gemm")
def _gemm(node, xs, ctx):
    a, b = xs[0], xs[1]
    if _attr(node, "transA", 0):
        a = a.t()
    if _attr(node, "transB", 0):
        b = b.t()
    y = _attr(node, "alpha", 1.0) * (a @ b)
    if len(xs) > 2 and xs[2] is not None:
        y = y + _attr(node, "beta", 1.0) * xs[2]
    return [y]


def _conv_pads(node, x, w, spatial: int) -> tuple[torch.Tensor, list[int]]:
    auto = _attr(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    pads = _attr(node, "pads", [0] * (2 * spatial))
    if auto not in ("NOTSET", "VALID"):
        raise UnsupportedError(f"auto_pad={auto} is not supported in recovery", where=_where(node),
                               hint="export with explicit pads")
    if auto == "VALID":
        pads = [0] * (2 * spatial)
    begin, end = pads[:spatial], pads[spatial:]
    if begin == end:
        return x, begin
    flat = []
    for b, e in zip(reversed(begin), reversed(end)):
        flat += [b, e]
    return F.pad(x, flat), [0] * spatial


@op("Conv")
def _conv(node, xs, ctx):
    x, w = xs[0], xs[1]
    b = xs[2] if len(xs) > 2 else None
    spatial = w.dim() - 2
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(spatial)
    if fn is None:
        raise UnsupportedError(f"{spatial}-d convolution is not supported in recovery", where=_where(node))
    x, pads = _conv_pads(node, x, w, spatial)
    return [fn(x, w, b, stride=_attr(node, "strides", [1] * spatial), padding=pads,
               dilation=_attr(node, "dilations", [1] * spatial), groups=_attr(node, "group", 1))]


@op("ConvTranspose")
def _conv_t(node, xs, ctx):
    x, w = xs[0], xs[1]
    b = xs[2] if len(xs) > 2 else None
    spatial = w.dim() - 2
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[spatial]
    pads = _attr(node, "pads", [0] * (2 * spatial))
    if pads[:spatial] != pads[spatial:] or _attr(node, "output_shape") is not None:
        raise UnsupportedError("asymmetric pads or output_shape are not supported in recovery", where=_where(node))
    return [fn(x, w, b, stride=_attr(node, "strides", [1] * spatial), padding=pads[:spatial],
               output_padding=_attr(node, "output_padding", [0] * spatial), groups=_attr(node, "group", 1),
               dilation=_attr(node, "dilations", [1] * spatial))]


@op("MaxPool", "AveragePool")
def _pool(node, xs, ctx):
    x = xs[0]
    k = _attr(node, "kernel_shape")
    spatial = len(k)
    x, pads = _conv_pads(node, x, x, spatial)
    strides = _attr(node, "strides", [1] * spatial)
    ceil = bool(_attr(node, "ceil_mode", 0))
    if node.op_type == "MaxPool":
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[spatial]
        return [fn(x, k, strides, pads, dilation=_attr(node, "dilations", [1] * spatial), ceil_mode=ceil)]
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial]
    return [fn(x, k, strides, pads, ceil_mode=ceil, count_include_pad=bool(_attr(node, "count_include_pad", 0)))]


@op("GlobalAveragePool", "GlobalMaxPool")
def _gpool(node, xs, ctx):
    dims = tuple(range(2, xs[0].dim()))
    if node.op_type == "GlobalAveragePool":
        return [xs[0].mean(dim=dims, keepdim=True)]
    return [xs[0].amax(dim=dims, keepdim=True)]


@op("BatchNormalization")
def _bn(node, xs, ctx):
    x, scale, bias, mean, var = xs[:5]
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv = scale / torch.sqrt(var + _attr(node, "epsilon", 1e-5))
    return [(x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)]


@op("LayerNormalization")
def _layernorm(node, xs, ctx):
    x = xs[0]
    axis = _attr(node, "axis", -1) % x.dim()
    shape = x.shape[axis:]
    b = xs[2] if len(xs) > 2 else None
    w = xs[1].expand(shape) if xs[1] is not None else None
    return [F.layer_norm(x, shape, w, None if b is None else b.expand(shape), _attr(node, "epsilon", 1e-5))]


@op("Softmax", "LogSoftmax")
def _softmax(node, xs, ctx):
    fn = torch.softmax if node.op_type == "Softmax" else torch.log_softmax
    return [fn(xs[0], dim=_attr(node, "axis", -1))]


def _axes(node, xs, i):
    if len(xs) > i and xs[i] is not None:
        return _ints(xs[i])
    return _attr(node, "axes")


@op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
def _reduce(node, xs, ctx):
    x = xs[0]
    axes = _axes(node, xs, 1)
    keep = bool(_attr(node, "keepdims", 1))
    if not axes:
        if _attr(node, "noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.dim()))
    fn = {"ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax,
          "ReduceMin": torch.amin}[node.op_type]
    return [fn(x, dim=tuple(axes), keepdim=keep)]


# -- shape and indexing -------------------------------------------------------------------------
@op("Shape")
def _shape(node, xs, ctx):
    dims = list(xs[0].shape)
    start, end = _attr(node, "start", 0), _attr(node, "end", None)
    return [torch.tensor(dims[start:end], dtype=torch.int64)]


@op("Size")
def _size(node, xs, ctx):
    return [torch.tensor(xs[0].numel(), dtype=torch.int64)]


@op("Reshape")
def _reshape(node, xs, ctx):
    x, shape = xs[0], _ints(xs[1])
    if not _attr(node, "allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


@op("Flatten")
def _flatten(node, xs, ctx):
    x = xs[0]
    axis = _attr(node, "axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return [x.reshape(math.prod(x.shape[:axis]), -1)]


@op("Transpose")
def _transpose(node, xs, ctx):
    perm = _attr(node, "perm", list(reversed(range(xs[0].dim()))))
    return [xs[0].permute(*perm)]


@op("Unsqueeze")
def _unsqueeze(node, xs, ctx):
    x, axes = xs[0], _axes(node, xs, 1)
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return [x]


@op("Squeeze")
def _squeeze(node, xs, ctx):
    x, axes = xs[0], _axes(node, xs, 1)
    if axes is None:
        return [x.squeeze()]
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return [x]


@op("Concat")
def _concat(node, xs, ctx):
    return [torch.cat([x for x in xs if x is not None], dim=_attr(node, "axis"))]


@op("Split")
def _split(node, xs, ctx):
    axis = _attr(node, "axis", 0)
    sizes = _ints(xs[1]) if len(xs) > 1 and xs[1] is not None else _attr(node, "split")
    if sizes is None:
        n = len(node.outputs)
        dim = xs[0].shape[axis]
        step = -(-dim // n)
        sizes = [min(step, dim - i * step) for i in range(n)]
    return list(torch.split(xs[0], sizes, dim=axis))


@op("Gather")
def _gather(node, xs, ctx):
    data, idx = xs[0], xs[1].long()
    axis = _attr(node, "axis", 0) % data.dim()
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    out = torch.index_select(data, axis, idx.reshape(-1))
    return [out.reshape(tuple(data.shape[:axis]) + tuple(idx.shape) + tuple(data.shape[axis + 1:]))]


@op("Slice")
def _slice(node, xs, ctx):
    x = xs[0]
    starts, ends = _ints(xs[1]), _ints(xs[2])
    axes = _ints(xs[3]) if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
    steps = _ints(xs[4]) if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a %= x.dim()
        idx = range(*slice(s, e, st).indices(x.shape[a]))
        if st == 1:
            x = x.narrow(a, idx.start, len(idx)) if len(idx) else x.narrow(a, 0, 0)
        else:
            x = torch.index_select(x, a, torch.tensor(list(idx), dtype=torch.long))
    return [x]


@op("Expand")
def _expand(node, xs, ctx):
    shape = torch.broadcast_shapes(tuple(xs[0].shape), tuple(_ints(xs[1])))
    return [xs[0].expand(shape)]


@op("Tile")
def _tile(node, xs, ctx):
    return [xs[0].repeat(*_ints(xs[1]))]


@op("Range")
def _range(node, xs, ctx):
    start, limit, delta = (x.item() for x in xs[:3])
    return [torch.arange(start, limit, delta, dtype=xs[0].dtype)]


@op("ConstantOfShape")
def _const_of_shape(node, xs, ctx):
    t = _attr(node, "value")
    value = torch.from_numpy(np.array(t.numpy()).reshape(-1)) if t is not None else torch.zeros(1)
    return [value.reshape(()).expand(_ints(xs[0])).clone()]


@op("Constant")
def _constant(node, xs, ctx):
    t = _attr(node, "value")
    if t is None:
        raise UnsupportedError("Constant without a tensor value is not supported in recovery", where=_where(node))
    return [torch.from_numpy(np.array(t.numpy()))]


@op("Pad")
def _pad(node, xs, ctx):
    mode = _attr(node, "mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = _ints(xs[1])
    value = xs[2].item() if len(xs) > 2 and xs[2] is not None else 0.0
    if len(xs) > 3 and xs[3] is not None:
        raise UnsupportedError("Pad with axes is not supported in recovery", where=_where(node))
    n = len(pads) // 2
    flat = []
    for b, e in zip(reversed(pads[:n]), reversed(pads[n:])):
        flat += [b, e]
    return [F.pad(xs[0], flat, mode={"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode],
                  value=value if mode == "constant" else None)]


# -- quantization (fake, straight-through) ------------------------------------------------------
def _range_of(dtype: ir.DataType | None, where: str) -> tuple[int, int]:
    name = dtype.name if dtype is not None else "UINT8"
    if name not in INT_RANGES:
        raise UnsupportedError(f"quantized type {name} is not supported in recovery", where=where)
    return INT_RANGES[name]


@op("QuantizeLinear")
def _quantize(node, xs, ctx):
    zp = node.inputs[2] if len(node.inputs) > 2 else None
    out_type = _attr(node, "output_dtype", 0)
    dtype = zp.dtype if zp is not None else (ir.DataType(out_type) if out_type else None)
    lo, hi = _range_of(dtype, _where(node))
    z = xs[2] if len(xs) > 2 else None
    return [quantize_ste(xs[0], xs[1], z, lo, hi, _attr(node, "axis", 1), _attr(node, "block_size", 0))]


@op("DequantizeLinear")
def _dequantize(node, xs, ctx):
    x, s = xs[0], xs[1]
    z = xs[2] if len(xs) > 2 else None
    axis, block = _attr(node, "axis", 1), _attr(node, "block_size", 0)
    src = node.inputs[0]
    if ctx.is_latent(src):            # a trained integer weight: fake-quantize its latent float copy
        lo, hi = _range_of(src.dtype, _where(node))
        return [fake_quant(x, s, z, lo, hi, axis, block)]
    from .fakequant import broadcast_param

    x = x.to(s.dtype)
    zz = broadcast_param(z.to(s.dtype), x, axis, block) if z is not None else 0.0
    return [(x - zz) * broadcast_param(s, x, axis, block)]


@op("MatMulNBits", domain="com.microsoft")
def _matmulnbits(node, xs, ctx):
    a, w = xs[0], xs[1]
    if not ctx.is_latent(node.inputs[1]):
        raise UnsupportedError("MatMulNBits with a non-constant weight is not supported in recovery",
                               where=_where(node))
    if len(xs) > 3 and xs[3] is not None:
        raise UnsupportedError("MatMulNBits with zero points is not supported in recovery", where=_where(node))
    y = torch.matmul(a, ctx.nbits_weight(node, w, xs[2]))
    if len(xs) > 5 and xs[5] is not None:
        y = y + xs[5]
    return [y]

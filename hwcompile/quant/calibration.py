"""Calibration: streaming statistics of every float activation, and what compensation needs.

One pass over the calibration data collects, for the float graph: a mergeable histogram of every
float activation (so any subset of tensors can be quantized later without another pass), the mean
input per channel of each weighted layer (bias correction), and, for GPTQ, each layer's input
Hessian ``H = 2/n * X^T X`` over its (im2col'd) inputs. Results are cached by the graph's content
hash and the data, so the mixed-precision search never recollects them; inside a compile they are also
stored in the content-addressed cache (``quant.stored``), so a later compile with the same graph and data
does not either.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..data import Dataset
from ..ir import Graph, is_constant, to_bytes
from ..contract import QuantSettings
from .collect import collect_stats
from .compensate import HessianAccumulator
from .observers import TensorStats, calibrate_range
from .qparams import qparams_from_range

__all__ = ["Calibration", "calibrate", "calibration_batch", "im2col"]

MAX_ROWS_PER_BATCH = 4096
_BATCH = contextvars.ContextVar("hwcompile_calibration_batch", default=4)


@contextlib.contextmanager
def calibration_batch(n: int):
    """Within the block ``calibrate`` runs ``n`` samples at a time (memory vs speed only: histograms are
    exactly mergeable and channel means are summed sample by sample, so results do not depend on ``n``)."""
    token = _BATCH.set(int(n))
    try:
        yield
    finally:
        _BATCH.reset(token)


@dataclass
class Calibration:
    stats: dict[str, TensorStats]
    settings: QuantSettings
    channel_means: dict[str, np.ndarray] = field(default_factory=dict)
    hessians: dict[str, np.ndarray] = field(default_factory=dict)

    def activation_range(self, name: str, symmetric: bool, method: str | None = None) -> tuple[float, float]:
        s = self.settings
        return calibrate_range(self.stats[name], method or s.calib_method, bits=8, symmetric=symmetric,
                               percentile=s.percentile)

    def activation_qparams(self, name: str, dtype: str, symmetric: bool,
                           method: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.activation_range(name, symmetric, method)
        qp = qparams_from_range(lo, hi, bits=8, symmetric=symmetric, signed=dtype == "int8")
        zp_dtype = np.int8 if dtype == "int8" else np.uint8
        return np.float32(np.asarray(qp.scale).reshape(())), np.asarray(qp.zero_point).astype(zp_dtype).reshape(())


def graph_key(graph: Graph, data: Dataset, settings: QuantSettings, extra: str = "") -> str:
    h = hashlib.sha256(to_bytes(graph))
    h.update(f"{data.source}|{len(data)}|{settings.histogram_bins}|{settings.compensation}|{extra}".encode())
    for k in sorted(data.inputs):
        h.update(np.ascontiguousarray(data.inputs[k][:4]).tobytes())
    return h.hexdigest()


def activation_tensors(graph: Graph) -> list[str]:
    names = [v.name for v in graph.main.inputs if v.dtype == ir.DataType.FLOAT]
    for n in graph.main:
        names.extend(o.name for o in n.outputs if o.dtype == ir.DataType.FLOAT and not is_constant(o))
    return names


def calibrate(graph: Graph, data: Dataset, tensors: list[str], layers: list[ir.Node], settings: QuantSettings,
              *, cache: dict | None = None, limit: int | None = 256, batch_size: int | None = None) -> Calibration:
    """Statistics for all float activations (cached); ``tensors`` must be among them."""
    cache = cache if cache is not None else {}
    batch_size = batch_size or _BATCH.get()
    key = graph_key(graph, data, settings, str(limit))
    if key in cache:  # statistics do not depend on the observer: apply this call's settings to them
        return dataclasses.replace(cache[key], settings=settings)
    from .stored import calibration_key, load_calibration, save_calibration

    stored_key = calibration_key(graph, data, settings, limit)   # None outside a compile or with --no-cache
    parts = load_calibration(stored_key) if stored_key else None
    if parts is not None:
        cal = Calibration(stats=parts[0], settings=settings, channel_means=parts[1], hessians=parts[2])
        cache[key] = cal
        return cal
    all_tensors = activation_tensors(graph)
    missing = [t for t in tensors if t not in all_tensors]
    all_tensors += missing
    weighted = [n for n in graph.layers()]
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    hess = {n.name: HessianAccumulator() for n in weighted if settings.compensation == "gptq" and _gptq_ok(n)}

    def visit(values) -> None:
        for n in weighted:
            x = values.get(n.inputs[0].name)
            if x is None:
                continue
            x = np.asarray(x, dtype=np.float64)
            axis = 1 if n.op_type in ("Conv", "ConvTranspose") else x.ndim - 1
            red = tuple(i for i in range(x.ndim) if i != axis)
            # per sample, then added sample by sample: the sum does not depend on how samples were batched
            rows = [x] if axis == 0 else x.sum(axis=tuple(i for i in red if i != 0))   # [samples, channels]
            total = sums.get(n.name, 0)
            for row in rows:
                total = total + row
            sums[n.name] = total
            counts[n.name] = counts.get(n.name, 0) + int(np.prod([x.shape[i] for i in red]))
            if n.name in hess:
                hess[n.name].update(_layer_rows(n, x))

    stats = collect_stats(graph, data, all_tensors, bins=settings.histogram_bins, batch_size=batch_size,
                          limit=limit, extra=visit)
    cal = Calibration(stats=stats, settings=settings,
                      channel_means={k: (v / counts[k]).astype(np.float64) for k, v in sums.items()},
                      hessians={k: h.hessian() for k, h in hess.items() if h.count})
    cache[key] = cal
    if stored_key:
        save_calibration(stored_key, cal)
    return cal


def _gptq_ok(node: ir.Node) -> bool:
    if node.op_type in ("MatMul", "Gemm"):
        return True
    if node.op_type == "Conv":
        g = node.attributes.get("group")
        return g is None or g.as_int() == 1
    return False


def _layer_rows(node: ir.Node, x: np.ndarray) -> np.ndarray:
    """The rows the layer multiplies its weight with: im2col patches for Conv, features otherwise."""
    if node.op_type == "Conv":
        rows = im2col(x, node)
    elif node.op_type == "Gemm" and node.attributes.get("transA") is not None and node.attributes["transA"].as_int():
        rows = x.T
    else:
        rows = x.reshape(-1, x.shape[-1])
    if len(rows) > MAX_ROWS_PER_BATCH:  # deterministic subsample of positions
        rows = rows[:: int(np.ceil(len(rows) / MAX_ROWS_PER_BATCH))]
    return rows


def im2col(x: np.ndarray, node: ir.Node) -> np.ndarray:
    """[N, C, H, W] -> [N*Ho*Wo, C*kh*kw] patches in the weight's (C, kh, kw) order."""
    w_shape = node.inputs[1].shape.dims
    kh, kw = int(w_shape[2]), int(w_shape[3])
    attr = lambda k, d: list(node.attributes[k].as_ints()) if k in node.attributes else d
    sh, sw = attr("strides", [1, 1])
    dh, dw = attr("dilations", [1, 1])
    pads = attr("pads", [0, 0, 0, 0])
    auto = node.attributes["auto_pad"].as_string() if "auto_pad" in node.attributes else "NOTSET"
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in ((x.shape[2], kh, sh, dh), (x.shape[3], kw, sw, dw)):
            total = max((int(np.ceil(size / s)) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2) if auto == "SAME_UPPER" else (total - total // 2, total // 2))
        pads = [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # [N, C, Ho, Wo, kh, kw]
    n, c, ho, wo = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)

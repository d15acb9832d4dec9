"""GraphModule: a Graph run by torch, with its weights as trainable parameters.

Which initializers train: float32 weights and biases of Conv/ConvTranspose/Gemm/MatMul, the
non-scalar constant operand of Add/Sub/Mul (biases, per-channel factors), LayerNormalization's
scale and bias, embedding tables (Gather data), and quantized weights: an integer initializer read
by DequantizeLinear or packed in MatMulNBits trains as a *latent* float copy (its dequantized
value) that the op fake-quantizes on every forward, so the rounding the deployed model does is
the rounding training sees. Scales and zero points stay fixed (the calibration's). Scalars
(epsilons, exponents, GELU constants) and every integer tensor that is not a quantized weight stay
constant.

``masked_layers`` (layer ids) hold sparsity fixed: each one's weight keeps its zeros as a mask, and
masked weights are zero again after every ``apply_masks``. ``write_back`` puts the trained values into the Graph's initializers in place
(integer weights re-quantized with their own scales), so node names, layer ids and value names
stay what they were.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx_ir as ir
import torch

from ..errors import UnsupportedError
from ..ir import Graph, SERVES
from .fakequant import INT_RANGES, round_ste
from .ops import OPS, torch_dtype

__all__ = ["GraphModule", "check_ops"]

#: (op_type, input index) whose float initializer trains (-1: any index).
_TRAINABLE = {("Conv", 1), ("Conv", 2), ("ConvTranspose", 1), ("ConvTranspose", 2), ("Gemm", 0), ("Gemm", 1),
              ("Gemm", 2), ("MatMul", 0), ("MatMul", 1), ("Add", -1), ("Sub", -1), ("Mul", -1),
              ("LayerNormalization", 1), ("LayerNormalization", 2), ("Gather", 0), ("PRelu", 1),
              ("MatMulNBits", 5)}


def check_ops(graph: Graph) -> None:
    """UnsupportedError naming the first node whose op the recovery interpreter lacks."""
    for node in graph.main:
        if (node.domain or "", node.op_type) not in OPS:
            dom = f"{node.domain}::" if node.domain else ""
            raise UnsupportedError(f"recovery training has no torch implementation of op {dom}{node.op_type}",
                                   where=f"node '{node.name}'",
                                   hint="compile without --recover-steps/--recover-minutes, or choose a precision "
                                        "that does not produce this op")


class GraphModule(torch.nn.Module):
    """``forward(feeds)`` -> the graph's outputs; ``trainable=False`` keeps every weight constant."""

    def __init__(self, graph: Graph, trainable: bool = True, masked_layers: Iterable[str] = ()):
        super().__init__()
        check_ops(graph)
        self.graph = graph
        self.nodes = list(graph.main)
        self.input_names = [v.name for v in graph.main.inputs]
        self.output_names = [v.name for v in graph.main.outputs]
        self.channels_last = any(n.op_type == "Conv" for n in self.nodes)
        self.params = torch.nn.ParameterDict()
        self.key: dict[str, str] = {}             # initializer name -> parameter key
        self.latent: dict[str, str] = {}          # initializer name -> "dq" | "nbits"
        self.consts: dict[str, torch.Tensor] = {}
        train = _trainable_initializers(graph) if trainable else {}
        for name, value in graph.main.initializers.items():
            if name not in train:
                self.consts[name] = _to_torch(value)
        for name, value in graph.main.initializers.items():
            kind = train.get(name)
            if kind is None:
                continue
            self.key[name] = f"p{len(self.key)}"
            if kind == "float":
                data = _to_torch(value).clone()
            else:
                self.latent[name] = kind
                data = self._dequantized(value, kind)
            self.params[self.key[name]] = torch.nn.Parameter(data)
        self.masks: dict[str, torch.Tensor] = {}
        for lid in masked_layers:
            name = self._weight_initializer(lid)
            if name is not None and name in self.key:
                self.masks[name] = (self.params[self.key[name]].detach() != 0).to(torch.float32)

    # -- running --------------------------------------------------------------------------------
    def is_latent(self, value: ir.Value | None) -> bool:
        return value is not None and value.name in self.latent

    def tensor(self, name: str) -> torch.Tensor:
        return self.params[self.key[name]] if name in self.key else self.consts[name]

    def forward(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.channels_last:       # torch's CPU convolutions (depthwise above all) run faster in NHWC
            feeds = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 and v.is_floating_point()
                     else v for k, v in feeds.items()}
        return self.run(feeds, self.nodes, self.output_names)

    def run(self, env: dict[str, torch.Tensor], nodes: list[ir.Node], want: list[str]) -> dict[str, torch.Tensor]:
        """Run ``nodes`` (in order) from the values in ``env``; returns the values named in ``want``."""
        env = dict(env)
        for node in nodes:
            xs = []
            for v in node.inputs:
                if v is None:
                    xs.append(None)
                elif v.name in env:
                    xs.append(env[v.name])
                else:
                    xs.append(self.tensor(v.name))
            try:
                outs = OPS[(node.domain or "", node.op_type)](node, xs, self)
            except UnsupportedError:
                raise
            except Exception as e:
                raise UnsupportedError(f"recovery interpreter failed: {type(e).__name__}: {e}",
                                       where=f"node '{node.name}' ({node.op_type})") from None
            for out, t in zip(node.outputs, outs):
                env[out.name] = t
        return {n: env[n] for n in want}

    def nbits_weight(self, node: ir.Node, w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """MatMulNBits' latent [K, N] weight fake-quantized to 4 bits per block -> [K, N]."""
        k, n, block = (node.attributes[a].as_int() for a in ("K", "N", "block_size"))
        blocks = -(-k // block)
        wt = torch.nn.functional.pad(w.t(), (0, blocks * block - k)).reshape(n, blocks, block)
        s = scales.reshape(n, blocks, 1)
        q = (torch.clamp(round_ste(wt / s) + 8, 0, 15) - 8) * s
        return q.reshape(n, blocks * block)[:, :k].t()

    # -- masks and write-back -------------------------------------------------------------------
    @torch.no_grad()
    def apply_masks(self) -> None:
        for name, mask in self.masks.items():
            self.params[self.key[name]].mul_(mask)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in self.params.items()}

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for k, t in state.items():
            self.params[k].copy_(t)

    @torch.no_grad()
    def write_back(self, graph: Graph | None = None) -> list[str]:
        """Trained values into ``graph``'s initializers (default: the one this module was built from),
        in place; returns the initializer names written."""
        graph = graph or self.graph
        inits = graph.main.initializers
        for name, key in self.key.items():
            value = inits[name]
            arr = self.params[key].detach().numpy()
            kind = self.latent.get(name)
            if kind is None:
                graph.replace_initializer(value, arr.astype(value.const_value.numpy().dtype))
                continue
            q = self._requantized(value, kind, arr)
            value.const_value = ir.tensor(q, dtype=value.dtype, name=name)
        return list(self.key)

    # -- latent integer weights -----------------------------------------------------------------
    def _dq_of(self, value: ir.Value) -> ir.Node:
        return next(u.node for u in value.uses() if u.node.op_type in ("DequantizeLinear", "MatMulNBits"))

    def _dequantized(self, value: ir.Value, kind: str) -> torch.Tensor:
        node = self._dq_of(value)
        q = value.const_value.numpy().astype(np.float64)
        if kind == "nbits":
            k, n, block = (node.attributes[a].as_int() for a in ("K", "N", "block_size"))
            b = value.const_value.numpy().astype(np.uint8)
            levels = np.stack([b & 15, b >> 4], axis=-1).reshape(n, -1).astype(np.float64)
            s = self.tensor(node.inputs[2].name).detach().numpy().astype(np.float64).reshape(n, -1)
            w = (levels.reshape(n, s.shape[1], -1) - 8) * s[:, :, None]
            return torch.from_numpy(w.reshape(n, -1)[:, :k].T.astype(np.float32).copy())
        s, z, axis, block = self._qparams(node, q)
        return torch.from_numpy(((q - z) * s).astype(np.float32))

    def _qparams(self, node: ir.Node, q: np.ndarray):
        axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 1
        block = node.attributes["block_size"].as_int() if "block_size" in node.attributes else 0
        s = self.tensor(node.inputs[1].name).detach().numpy().astype(np.float64)
        z = (self.tensor(node.inputs[2].name).detach().numpy().astype(np.float64)
             if len(node.inputs) > 2 and node.inputs[2] is not None else np.zeros_like(s))
        return _expand(s, q, axis, block), _expand(z, q, axis, block), axis, block

    def _requantized(self, value: ir.Value, kind: str, w: np.ndarray) -> np.ndarray:
        node = self._dq_of(value)
        if kind == "nbits":
            from ..passes.quantize_int4 import pack_matmulnbits

            k, n, block = (node.attributes[a].as_int() for a in ("K", "N", "block_size"))
            s = self.tensor(node.inputs[2].name).detach().numpy().astype(np.float64).reshape(n, -1)
            wt = np.zeros((n, s.shape[1] * block))
            wt[:, :k] = w.T
            q = np.clip(np.round(wt.reshape(n, s.shape[1], block) / s[:, :, None]) + 8, 0, 15)
            return pack_matmulnbits(q.reshape(n, -1).astype(np.uint8), block)
        old = value.const_value.numpy()
        s, z, _, _ = self._qparams(node, old.astype(np.float64))
        lo, hi = INT_RANGES[value.dtype.name]
        q = np.clip(np.round(w.astype(np.float64) / s) + z, lo, hi)
        return q.astype(np.int8 if lo < 0 else np.uint8) if value.dtype.name in ("INT4", "UINT4") \
            else q.astype(old.dtype)

    def _weight_initializer(self, lid: str) -> str | None:
        """The initializer holding layer ``lid``'s weight (through a DequantizeLinear or MatMulNBits)."""
        node = next((n for n in self.nodes if n.name == lid), None)
        if node is None:            # replaced by a node serving it (MatMulNBits)
            node = next((n for n in self.nodes if n.metadata_props.get(SERVES) == lid), None)
            return node.inputs[1].name if node is not None else None
        if len(node.inputs) < 2 or node.inputs[1] is None:
            return None
        w = node.inputs[1]
        prod = w.producer()
        if prod is not None and prod.op_type == "DequantizeLinear":
            w = prod.inputs[0]
        return w.name if w.name in self.graph.main.initializers else None


def _expand(p: np.ndarray, q: np.ndarray, axis: int, block: int) -> np.ndarray:
    if p.ndim == 0 or p.size == 1 and not block:
        return p.reshape(())
    axis %= q.ndim
    if block:
        return np.repeat(p, block, axis=axis).take(range(q.shape[axis]), axis=axis)
    shape = [1] * q.ndim
    shape[axis] = -1
    return p.reshape(shape)


def _to_torch(value: ir.Value) -> torch.Tensor:
    arr = value.const_value.numpy()
    if value.dtype.name in ("INT4", "UINT4"):
        return torch.from_numpy(arr.astype(np.int8 if value.dtype.name == "INT4" else np.uint8))
    torch_dtype(value.dtype, f"initializer '{value.name}'")
    return torch.from_numpy(np.array(arr))


def _trainable_initializers(graph: Graph) -> dict[str, str]:
    """Initializer name -> "float" | "dq" | "nbits" for every initializer that trains (module docstring)."""
    out: dict[str, str] = {}
    inits = graph.main.initializers
    qparams = {v.name for n in graph.main if n.op_type in ("QuantizeLinear", "DequantizeLinear", "MatMulNBits")
               for v in n.inputs[1 if n.op_type != "MatMulNBits" else 2:] if v is not None}
    for node in graph.main:
        for i, v in enumerate(node.inputs):
            if v is None or v.name not in inits or v.const_value is None or v.name in qparams:
                continue
            dtype = v.dtype.name
            if node.op_type == "DequantizeLinear" and i == 0 and dtype in INT_RANGES and len(v.shape or ()) >= 1:
                out[v.name] = "dq"
            elif node.op_type == "MatMulNBits" and i == 1:
                out[v.name] = "nbits"
            elif dtype == "FLOAT" and ((node.op_type, i) in _TRAINABLE or (node.op_type, -1) in _TRAINABLE):
                if v.const_value.size > 1:
                    out.setdefault(v.name, "float")
    return out

"""The ``int8_dense`` pattern: ``matmul(DQ(x_q), DQ(W_int8))`` -> ``call_tir`` to an integer dense kernel.

Preserves the outputs up to float rounding: the kernel computes ``sum_k (x_q - zx) * w_q`` exactly in
int32 and multiplies by ``scale_x * scale_w[n]`` once, where the stock lowering multiplies
dequantized floats and sums them in float32; the two differ by float rounding only (~1e-7
relative), which a following QuantizeLinear turns into at most one quantization step on rare ties.

Runs on the Relax module straight from the ONNX frontend, before anything is legalized or folded,
where an INT8 dense layer of our Q/DQ plans reads::

    xd = R.dequantize(x_q, sx, zx)             # x_q uint8/int8 [..., K], sx/zx scalar constants
    wd = R.dequantize(W, sw, zw, axis=1)       # W int8 constant [K, N], sw [N] or scalar, zw == 0
    y  = R.matmul(xd, wd)                      # Gemm transB: matmul(xd, permute_dims(DQ(W[N, K], axis=0)))

and becomes ``reshape(call_tir(kernel, [reshape(x_q, [M/mb, mb, K]), zx, pack(W), colsum(W), sx*sw]), [..., N])``
with the kernel that ``kernels.choose`` picked for the target (``int8_dense.py``). Anything else stays
on the stock path, and a matched layer that does not qualify is listed with the reason (non-zero
weight zero point, per-channel activation scale, non-constant weight, ...).
"""
from __future__ import annotations

from functools import reduce
from typing import Any

import numpy as np

from . import int8_dense

__all__ = ["use_int8_dense"]


def use_int8_dense(mod, kernel) -> tuple[Any, dict[str, Any]]:
    """(module, report): every qualifying INT8 dense layer of ``main`` calls ``kernel`` (a ``kernels.Kernel``).

    ``report["used"]`` lists the rewritten layers as ``{"matmul": i, "k", "n", "x_dtype", "rows_per_tile"}``,
    ``i`` being the layer's position among ``main``'s matmuls (= among the graph's MatMul/Gemm nodes,
    which the frontend converts in order); ``report["declined"]`` the matched ones left alone, with why.
    """
    from tvm import relax

    bb = relax.BlockBuilder(mod)  # mints the kernels' GlobalVars (with their function types)
    rewriter = _Rewriter(kernel, mod["main"], bb)
    main = relax.dpl.rewrite_call(rewriter.pattern, rewriter, mod["main"])
    if not rewriter.used:
        return mod, rewriter.report()
    mod = bb.get()
    mod["main"] = main
    mod = relax.transform.DeadCodeElimination(["main"])(mod)
    return mod, rewriter.report()


class _Rewriter:
    """The pattern, and the callback deciding per match (kernels shared by layers of one shape)."""

    def __init__(self, kernel, main, bb):
        from tvm.relax.dpl import is_const, is_op, wildcard

        self.kernel, self.isa, self.bb = kernel, kernel.kernel, bb
        self.x_q, self.sx, self.zx = wildcard(), is_const(), is_const()
        self.w, self.sw, self.zw = is_const(), is_const(), is_const()
        self.wd = is_op("relax.dequantize")(self.w, self.sw, self.zw)
        self.wt = is_op("relax.permute_dims")(self.wd)
        self.xd = is_op("relax.dequantize")(self.x_q, self.sx, self.zx)
        self.pattern = is_op("relax.matmul")(self.xd, self.wd | self.wt)
        self.matmuls = _matmul_calls(main)
        self.funcs: dict[tuple, Any] = {}
        self.used: list[dict] = []
        self.declined: list[dict] = []

    def report(self) -> dict[str, Any]:
        return {"kernel": self.kernel.name, "instruction": self.isa.instruction,
                "matmuls": len(self.matmuls), "used": self.used, "declined": self.declined}

    def __call__(self, call, m):
        index = next((i for i, c in enumerate(self.matmuls) if c.same_as(call)), -1)
        try:
            new, entry = self._rewrite(call, m)
        except _Decline as why:  # rewrite_call revisits unchanged matches: note each layer once
            if all(d["matmul"] != index for d in self.declined):
                self.declined.append({"matmul": index, "reason": str(why)})
            return call
        self.used.append({"matmul": index, **entry})
        return new

    def _rewrite(self, call, m):
        from tvm import relax, tirx

        x_q, trans_b = m[self.x_q], self.wt in m
        xd_call, wd_call = m[self.xd], m[self.wd]
        if call.attrs.out_dtype not in (None, "float32") or str(xd_call.attrs.out_dtype) != "float32" \
                or str(wd_call.attrs.out_dtype) != "float32":
            raise _Decline("not a float32 matmul of dequantized tensors")
        x_dtype = str(x_q.ty.dtype)
        if x_dtype not in ("uint8", "int8"):
            raise _Decline(f"activation is {x_dtype}, not uint8/int8")
        sx, zx = (m[p].value.numpy() for p in (self.sx, self.zx))
        if sx.size != 1 or zx.size != 1:
            raise _Decline("activation scale/zero point is not per tensor")
        w, sw, zw = (m[p].value.numpy() for p in (self.w, self.sw, self.zw))
        if w.dtype != np.int8 or w.ndim != 2:
            raise _Decline(f"weight is {w.dtype} of rank {w.ndim}, not a 2-D int8 constant")
        if np.any(zw != 0):
            raise _Decline("weight zero point is not 0 (asymmetric weights)")
        w = w.T if trans_b else w  # [K, N]
        k, n = w.shape
        axis = int(wd_call.attrs.axis) % 2
        if sw.size != 1 and (sw.size != n or axis != (0 if trans_b else 1)):
            raise _Decline("weight scale is neither per tensor nor per output channel")
        shape = x_q.ty.shape
        if not isinstance(shape, relax.ShapeExpr) or len(shape.values) < 2:
            raise _Decline("activation shape unknown or of rank < 2")
        dims = list(shape.values)
        if not isinstance(dims[-1], tirx.IntImm) or int(dims[-1]) != k:
            raise _Decline(f"activation's last dimension {dims[-1]} is not the weight's K={k}")
        lead = dims[:-1]
        static = reduce(lambda a, d: a * int(d), (d for d in lead if isinstance(d, tirx.IntImm)), 1)
        symbolic = [d for d in lead if not isinstance(d, tirx.IntImm)]
        mb = next(b for b in (int8_dense.MB, 2, 1) if static % b == 0)
        blocks = reduce(lambda a, d: a * d, symbolic, tirx.IntImm("int64", static // mb))

        key = (k, n, x_dtype, mb)
        if key not in self.funcs:
            name = f"{self.kernel.name}_k{k}_n{n}_{'u8' if x_dtype == 'uint8' else 's8'}_mb{mb}"
            func = int8_dense.int8_dense_func(self.isa, k, n, x_dtype, mb).with_attr("global_symbol", name)
            # hand scheduled (default-schedule passes skip it); MetaSchedule 0.27 would still extract it as a
            # task and fail to serialize it, so the tuning child prepares the module without this rewrite
            func = func.with_attr("tirx.is_scheduled", True)
            self.funcs[key] = self.bb.add_func(func, name)
        gv = self.funcs[key]
        scale = (np.float32(sx.reshape(())) * np.broadcast_to(sw.astype(np.float32).reshape(-1), (n,))).astype(np.float32)
        x3 = relax.op.reshape(x_q, relax.ShapeExpr([blocks, mb, k]))
        args = [x3, relax.const(zx.reshape(1).astype(np.int32)), relax.const(int8_dense.pack_weight(self.isa, w)),
                relax.const(int8_dense.column_sums(w)), relax.const(scale)]
        out = relax.call_tir(gv, args, out_ty=relax.TensorType([blocks, mb, n], "float32"))
        y = relax.op.reshape(out, relax.ShapeExpr([*lead, n]))
        return y, {"k": k, "n": n, "x_dtype": x_dtype, "rows_per_tile": mb, "trans_b": trans_b}


class _Decline(Exception):
    """A matched layer that the kernel does not cover; the message says why."""


def _matmul_calls(main) -> list:
    """``main``'s ``relax.matmul`` calls in binding order."""
    from tvm import ir, relax

    return [b.value for block in main.body.blocks for b in block.bindings
            if isinstance(b.value, relax.Call) and isinstance(b.value.op, ir.Op) and b.value.op.name == "relax.matmul"]

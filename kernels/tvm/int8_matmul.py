"""Integer dense for AVX2 without VNNI: ``y[m, n] = (sum_k (x[m, k] - zx) * w[k, n]) * scale[n]``.

Exact: ``x`` is uint8 or int8 with zero point ``zx``, ``w`` int8 with a zero point of 0 (symmetric,
per channel or per tensor), the products are accumulated in int32 and only the final sum is
converted to float and multiplied by ``scale[n] = scale_x * scale_w[n]``. This is the dense part of
``DQ(Q(x)) @ DQ(W_int8)``; onnxruntime's AVX2 path (``vpmaddubsw``) saturates u8*s8 pairs in int16,
this kernel does not: ``x - zx`` (in [-255, 255]) and ``w`` are widened to int16 and multiplied by
``vpmaddwd`` (16 int16 x int16 -> 8 int32 sums of adjacent pairs), which cannot overflow.

Layout and schedule (one PrimFunc per (K, N, x dtype, rows per tile), the row count symbolic):

- ``w_packed[Nb, Kp/2, 8, 2]`` int16: panels of 8 output columns, the two k's of a pair adjacent,
  so one 32-byte load is the ``vpmaddwd`` operand for 8 columns x 2 k's (``pack_weight``; done
  once at compile time, zero padded to an even K and to a whole number of ``NB`` panels).
- ``x[mo, mb, K]``: the rows in ``mo`` blocks of ``mb`` (4, 2 or 1, a divisor of the row count, so
  no row is padded); ``xs[mo, mb, Kp]`` int16 = ``x - zx`` (K zero padded to even): a pair of k's is
  one int32, broadcast to the 8 lanes (``vpbroadcastd``).
- tile ``mb`` rows x ``NB * 8`` columns: ``mb * NB`` ymm int32 accumulators (4 x 2 = 8, plus 2
  weight vectors, a broadcast and the ``vpmaddwd`` result; 4 x 3 was slower, LLVM spilled), loop over
  k pairs, then ``float(acc) * scale`` written out. Tiles run in parallel over (column panel, row block).

The inner (8 columns x 2 k) block is tensorized with ``llvm.x86.avx2.pmadd.wd``
(``AVX2_DOT_8x2_I16``), so the kernel exists only for x86 targets with AVX2 (``supported``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["MB", "NB", "AVX2_DOT_8x2_I16", "int8_matmul_func", "pack_weight", "reference", "supported",
           "packed_shape"]

MB = 4  # rows per tile
NB = 2  # 8-column panels per tile (4 x 2 accumulators; 4 x 3 spilled one register)

AVX2_DOT_8x2_I16 = "hwcompile_dot_8x2_i16i16i32_avx2"


def supported(target) -> bool:
    """True for an LLVM x86 target whose CPU has AVX2 (the kernel's only instruction set)."""
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", "") or "")
    if triple and not triple.startswith(("x86_64", "i686", "i386")):
        return False
    try:
        return bool(codegen.llvm_cpu_has_features("avx2", target))
    except Exception:  # a CPU name LLVM does not know
        return False


def packed_shape(k: int, n: int) -> tuple[int, int, int, int]:
    """Shape of ``pack_weight``'s result for a [k, n] weight."""
    nb = -(-n // (8 * NB)) * NB
    return nb, (k + 1) // 2, 8, 2


def pack_weight(w: np.ndarray) -> np.ndarray:
    """[K, N] int8 -> [Nb, Kp/2, 8, 2] int16: panels of 8 columns, k pairs adjacent, zero padded."""
    k, n = w.shape
    nb, kp2, _, _ = packed_shape(k, n)
    full = np.zeros((kp2 * 2, nb * 8), np.int16)
    full[:k, :n] = w
    return np.ascontiguousarray(full.reshape(kp2, 2, nb, 8).transpose(2, 0, 3, 1))


def reference(x: np.ndarray, x_zero_point: int, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """What the kernel computes, in numpy: exact int32 (int64 here) accumulation, then one float scale."""
    acc = (x.astype(np.int64) - int(x_zero_point)) @ w.astype(np.int64)
    assert np.abs(acc).max(initial=0) < 2**31
    return (acc.astype(np.int32).astype(np.float32) * scale.astype(np.float32)).astype(np.float32)


def _register_intrin() -> None:
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((2,), "int16", offset_factor=1), b: T.Buffer((8, 2), "int16", offset_factor=1),
             c: T.Buffer((8,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:8], a[0:2], b[0:8, 0:2])
            T.writes(c[0:8])
            for i, k in T.grid(8, 2):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((2,), "int16", offset_factor=1), b: T.Buffer((8, 2), "int16", offset_factor=1),
             c: T.Buffer((8,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:8], a[0:2], b[0:8, 0:2])
            T.writes(c[0:8])
            c[T.ramp(T.int32(0), 1, 8)] = c[T.ramp(T.int32(0), 1, 8)] + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "int16x2"), dtype="int32"), 8), dtype="int16x16"),
                b.vload([0, 0], dtype="int16x16"), dtype="int32x8")

    TensorIntrin.register(AVX2_DOT_8x2_I16, desc, impl, override=True)


def _compute(k: int, n: int, x_dtype: str, mb: int):
    from tvm import te, tirx

    nb, kp2, _, _ = packed_shape(k, n)
    mo = tirx.Var("mo", "int64")
    x = te.placeholder((mo, mb, k), x_dtype, name="x")
    zx = te.placeholder((1,), "int32", name="x_zero_point")
    w = te.placeholder((nb, kp2, 8, 2), "int16", name="w_packed")
    scale = te.placeholder((n,), "float32", name="scale")

    def shifted(io, ii, kk):
        if kp2 * 2 == k:
            return (x[io, ii, kk].astype("int32") - zx[0]).astype("int16")
        val = x[io, ii, tirx.if_then_else(kk < k, kk, 0)].astype("int32") - zx[0]
        return tirx.if_then_else(kk < k, val, 0).astype("int16")

    xs = te.compute((mo, mb, kp2 * 2), shifted, name="xs")
    kp = te.reduce_axis((0, kp2), name="kp")
    k2 = te.reduce_axis((0, 2), name="k2")
    acc = te.compute((mo, mb, nb, 8), lambda io, ii, jo, ji: te.sum(
        xs[io, ii, kp * 2 + k2].astype("int32") * w[jo, kp, ji, k2].astype("int32"), axis=[kp, k2]), name="acc")
    y = te.compute((mo, mb, n), lambda io, ii, j: acc[io, ii, j // 8, j % 8].astype("float32") * scale[j], name="y")
    return [x, zx, w, scale, y]


def int8_matmul_func(k: int, n: int, x_dtype: str = "uint8", mb: int = MB):
    """Scheduled PrimFunc ``(x[mo, mb, k], x_zero_point[1] int32, w_packed, scale[n] f32) -> y[mo, mb, n] f32``.

    The rows come as ``mo`` (symbolic) blocks of ``mb`` (a divisor of the row count the caller knows
    statically: 4, 2 or 1), so no row is padded and no tile is partial.
    """
    from tvm import te
    from tvm.s_tir import Schedule

    if x_dtype not in ("uint8", "int8"):
        raise ValueError(f"x dtype must be uint8 or int8, got {x_dtype}")
    _register_intrin()
    func = te.create_prim_func(_compute(k, n, x_dtype, mb)).with_attr("global_symbol", "int8_matmul")
    sch = Schedule(func)
    xs, acc, y = sch.get_sblock("xs"), sch.get_sblock("acc"), sch.get_sblock("y")
    # x - zx widened to int16, rows in parallel
    io, ii, kk = sch.get_loops(xs)
    sch.parallel(sch.fuse(io, ii))
    sch.vectorize(sch.split(kk, [None, 16])[1])
    # the tile: (column block, row block) parallel, k pairs, rows, panels, [8 columns x 2 k] tensorized
    io, ii, jo, ji, kp, k2 = sch.get_loops(acc)
    joo, joi = sch.split(jo, [None, NB])
    sch.reorder(joo, io, kp, ii, joi, ji, k2)
    tile = sch.fuse(joo, io)
    sch.parallel(tile)
    # epilogue: float(acc) * scale for the tile's valid rows/columns
    sch.reverse_compute_at(y, tile)
    init = sch.decompose_reduction(acc, kp)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(ji, AVX2_DOT_8x2_I16)
    sch.unroll(ii)
    sch.unroll(joi)
    sch.set_scope(init, 0, "local")
    return sch.mod["main"]

"""Integer dense ``y[m, n] = float(sum_k (x[m, k] - zx) * w[k, n]) * scale[n]``, one schedule per ISA.

Exact: ``x`` is uint8 or int8 with a per-tensor zero point ``zx``, ``w`` int8 symmetric (per channel
or per tensor); the sum is computed in int32 as ``sum_k x'[m, k] * w[k, n] - z' * colsum[n]`` with
``x' = x + shift`` in the dot instruction's operand type, ``z' = zx + shift`` and ``colsum[n] =
sum_k w[k, n]`` (a constant), then converted to float and multiplied by ``scale[n] = scale_x *
scale_w[n]`` once. No step saturates, so the result equals numpy's int64 reference bit for bit.

The ISAs (``ISAS``), each a dot-product instruction over ``group`` adjacent k's for ``lanes`` output
columns at once:

- ``avx2``: ``vpmaddwd`` (16 int16 x int16 -> 8 int32 sums of pairs): ``x'`` and ``w`` widened to
  int16, group 2, 8 lanes (this module's own tensor intrinsic). Unlike ``vpmaddubsw`` (onnxruntime's
  AVX2 u8s8 path) nothing saturates in int16.
- ``avx512_vnni``: ``vpdpbusd`` (u8 x s8, 4 products summed into each of 16 int32 lanes, no
  saturation): ``x'`` uint8 (int8 activations shifted by +128), group 4, 16 lanes (this module's
  intrinsic: TVM 0.27's ``dot_16x4_vnni`` passes i32 vectors, which LLVM 22's declaration, taking
  ``<64 x i8>``, rejects).
- ``arm_sdot``: ``sdot`` (s8 x s8, 4 products into each of 4 int32 lanes; Armv8.2 dot product):
  ``x'`` int8 (uint8 activations shifted by -128), group 4, 4 lanes (TVM's ``dot_4x4_i8i8s32_sdot``).

Layout: weights packed at compile time as ``[N/lanes panels, K/group, lanes, group]`` (one vector
load is the instruction's weight operand; zero padded to whole groups and panels), rows in ``mo``
(symbolic) blocks of ``mb`` (a divisor of the static row count), a tile of ``mb`` rows x ``panels``
panels of int32 accumulators held in registers over the k loop, then the correction and scale.
Tiles run in parallel over (column block, row block).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ISA", "ISAS", "MB", "int8_dense_func", "pack_weight", "column_sums", "packed_shape", "reference"]

MB = 4  # rows per tile (fewer when the static row count is not a multiple)

AVX2_DOT_8x2_I16 = "hwcompile_dot_8x2_i16i16i32_avx2"
VNNI_DOT_16x4_U8I8 = "hwcompile_dot_16x4_u8i8i32_vnni"


@dataclass(frozen=True)
class ISA:
    """One dot-product instruction and the operand layout it wants."""

    name: str
    lanes: int        # int32 outputs per instruction
    group: int        # adjacent k's summed into each lane
    x_dtype: str      # activation operand type (after the shift)
    w_dtype: str      # packed weight type
    intrin: str       # registered TensorIntrin name
    panels: int       # lane groups per tile (accumulators = MB * panels)
    instruction: str  # mnemonic, for reports and the assembly check

    def shift(self, x_dtype: str) -> int:
        """What is added to activations of ``x_dtype`` to bring them into ``self.x_dtype``."""
        if self.x_dtype == "uint8" and x_dtype == "int8":
            return 128
        if self.x_dtype == "int8" and x_dtype == "uint8":
            return -128
        return 0


ISAS = {
    "avx2": ISA("avx2", 8, 2, "int16", "int16", AVX2_DOT_8x2_I16, 2, "vpmaddwd"),
    "avx512_vnni": ISA("avx512_vnni", 16, 4, "uint8", "int8", VNNI_DOT_16x4_U8I8, 2, "vpdpbusd"),
    "arm_sdot": ISA("arm_sdot", 4, 4, "int8", "int8", "dot_4x4_i8i8s32_sdot", 4, "sdot"),
}


def packed_shape(isa: ISA, k: int, n: int) -> tuple[int, int, int, int]:
    """Shape of ``pack_weight``'s result for a [k, n] weight."""
    nb = -(-n // (isa.lanes * isa.panels)) * isa.panels
    return nb, -(-k // isa.group), isa.lanes, isa.group


def pack_weight(isa: ISA, w: np.ndarray) -> np.ndarray:
    """[K, N] int8 -> [Nb, Kg, lanes, group]: panels of ``lanes`` columns, ``group`` k's adjacent, zero padded."""
    k, n = w.shape
    nb, kg, lanes, group = packed_shape(isa, k, n)
    full = np.zeros((kg * group, nb * lanes), isa.w_dtype)
    full[:k, :n] = w
    return np.ascontiguousarray(full.reshape(kg, group, nb, lanes).transpose(2, 0, 3, 1))


def column_sums(w: np.ndarray) -> np.ndarray:
    """``colsum[n] = sum_k w[k, n]`` in int32 (the zero-point correction's constant)."""
    return w.astype(np.int64).sum(axis=0).astype(np.int32)


def reference(x: np.ndarray, x_zero_point: int, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """What every variant computes, in numpy: exact integer accumulation, then one float scale."""
    acc = (x.astype(np.int64) - int(x_zero_point)) @ w.astype(np.int64)
    assert np.abs(acc).max(initial=0) < 2**31
    return (acc.astype(np.int32).astype(np.float32) * scale.astype(np.float32)).astype(np.float32)


def _register_avx2_intrin() -> None:
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


def _register_vnni_intrin() -> None:
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            for i, k in T.grid(16, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), c.vload([0], "int32x16"),
                T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "uint8x4"), dtype="int32"), 16), dtype="int8x64"),
                b.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    TensorIntrin.register(VNNI_DOT_16x4_U8I8, desc, impl, override=True)


def _register(isa: ISA) -> None:
    if isa.name == "avx2":
        _register_avx2_intrin()
    elif isa.name == "avx512_vnni":
        _register_vnni_intrin()
    else:
        import tvm.s_tir.tensor_intrin.arm_cpu  # noqa: F401  (registers dot_4x4_i8i8s32_sdot)


def _compute(isa: ISA, k: int, n: int, x_dtype: str, mb: int):
    from tvm import te, tirx

    nb, kg, lanes, group = packed_shape(isa, k, n)
    shift = isa.shift(x_dtype)
    mo = tirx.Var("mo", "int64")
    x = te.placeholder((mo, mb, k), x_dtype, name="x")
    zx = te.placeholder((1,), "int32", name="x_zero_point")
    w = te.placeholder((nb, kg, lanes, group), isa.w_dtype, name="w_packed")
    colsum = te.placeholder((n,), "int32", name="colsum")
    scale = te.placeholder((n,), "float32", name="scale")

    def shifted(io, ii, kk):
        if kg * group == k:
            return (x[io, ii, kk].astype("int32") + shift).astype(isa.x_dtype)
        val = x[io, ii, tirx.if_then_else(kk < k, kk, 0)].astype("int32") + shift
        return tirx.if_then_else(kk < k, val, 0).astype(isa.x_dtype)  # padded k's meet zero weights

    xs = te.compute((mo, mb, kg * group), shifted, name="xs")
    kp = te.reduce_axis((0, kg), name="kp")
    kq = te.reduce_axis((0, group), name="kq")
    acc = te.compute((mo, mb, nb, lanes), lambda io, ii, jo, ji: te.sum(
        xs[io, ii, kp * group + kq].astype("int32") * w[jo, kp, ji, kq].astype("int32"), axis=[kp, kq]), name="acc")
    y = te.compute((mo, mb, n), lambda io, ii, j: (acc[io, ii, j // lanes, j % lanes] - (zx[0] + shift) * colsum[j])
                   .astype("float32") * scale[j], name="y")
    return [x, zx, w, colsum, scale, y]


def int8_dense_func(isa: ISA, k: int, n: int, x_dtype: str = "uint8", mb: int = MB):
    """Scheduled PrimFunc ``(x[mo, mb, k], x_zero_point[1] i32, w_packed, colsum[n] i32, scale[n] f32) -> y[mo, mb, n]``."""
    from tvm import te
    from tvm.s_tir import Schedule

    if x_dtype not in ("uint8", "int8"):
        raise ValueError(f"x dtype must be uint8 or int8, got {x_dtype}")
    _register(isa)
    func = te.create_prim_func(_compute(isa, k, n, x_dtype, mb)).with_attr("global_symbol", "int8_dense")
    sch = Schedule(func)
    xs, acc, y = sch.get_sblock("xs"), sch.get_sblock("acc"), sch.get_sblock("y")
    io, ii, kk = sch.get_loops(xs)
    sch.parallel(sch.fuse(io, ii))
    sch.vectorize(sch.split(kk, [None, 16])[1])
    io, ii, jo, ji, kp, kq = sch.get_loops(acc)
    joo, joi = sch.split(jo, [None, isa.panels])
    sch.reorder(joo, io, kp, ii, joi, ji, kq)
    tile = sch.fuse(joo, io)
    sch.parallel(tile)
    sch.reverse_compute_at(y, tile)
    init = sch.decompose_reduction(acc, kp)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(ji, isa.intrin)
    sch.unroll(ii)
    sch.unroll(joi)
    sch.set_scope(init, 0, "local")
    return sch.mod["main"]

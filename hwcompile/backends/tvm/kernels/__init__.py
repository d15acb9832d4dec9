"""The TVM backend's hand-scheduled kernels, as one table of (pattern, check, kernel).

``TABLE`` lists every kernel in order of preference. A kernel serves one ``pattern`` (the Relax
rewrite that finds its call sites: ``"int8_dense"`` is ``matmul(dequantize(x_q), dequantize(W_int8))``,
``dense.py``), its ``check`` says why it cannot run on a target (None when it can), and ``kernel``
is what it builds (the ISA variant of ``int8_dense``). ``choose`` picks, per pattern, the first kernel
whose check passes, and says why the others were passed over; ``apply`` rewrites a module with the
chosen kernels and reports which layers used which kernel. ``identity`` names every kernel with a
hash of this package's sources (part of the backend's versions, so tuning caches and reports change
when a kernel does).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .int8_dense import ISAS, ISA

__all__ = ["Kernel", "TABLE", "choose", "apply", "identity", "x86_features", "arm_features"]


@dataclass(frozen=True)
class Kernel:
    name: str
    pattern: str
    check: Callable[[Any], str | None]   # tvm Target -> why not (None: usable)
    kernel: ISA


def _llvm_features(target, triples: tuple[str, ...], features: tuple[str, ...], what: str) -> str | None:
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return f"target kind {target.kind.name} is not llvm"
    triple = str(target.attrs.get("mtriple", "") or "") or codegen.llvm_get_system_triple()
    if not triple.startswith(triples):
        return f"target triple {triple} is not {what}"
    try:
        missing = [f for f in features if not codegen.llvm_cpu_has_features(f, target)]
    except Exception as e:  # a CPU name LLVM does not know
        return f"LLVM cannot tell the CPU's features: {e}"
    return f"CPU {target.attrs.get('mcpu', '(generic)')} lacks {'+'.join(missing)}" if missing else None


def x86_features(*features: str) -> Callable[[Any], str | None]:
    return lambda target: _llvm_features(target, ("x86_64", "i686", "i386"), features, "x86")


def arm_features(*features: str) -> Callable[[Any], str | None]:
    return lambda target: _llvm_features(target, ("aarch64", "arm64"), features, "aarch64")


TABLE: tuple[Kernel, ...] = (
    Kernel("int8_dense_vnni", "int8_dense", x86_features("avx512vnni", "avx512bw"), ISAS["avx512_vnni"]),
    Kernel("int8_dense_avx2", "int8_dense", x86_features("avx2"), ISAS["avx2"]),
    Kernel("int8_dense_sdot", "int8_dense", arm_features("dotprod"), ISAS["arm_sdot"]),
)


def choose(pattern: str, target, *, only: str | None = None) -> tuple[Kernel | None, dict[str, str]]:
    """(first kernel for ``pattern`` whose check passes on ``target``, {passed-over kernel: why})."""
    why: dict[str, str] = {}
    for k in TABLE:
        if k.pattern != pattern:
            continue
        reason = "not the requested kernel" if only and k.name != only else k.check(target)
        if reason is None:
            return k, why
        why[k.name] = reason
    return None, why


def apply(mod, target) -> tuple[Any, dict[str, Any]]:
    """(module, report): every pattern rewritten with its chosen kernel; ``report[pattern]`` says what ran where."""
    from .dense import use_int8_dense

    report: dict[str, Any] = {}
    kernel, passed = choose("int8_dense", target)
    if kernel is None:
        report["int8_dense"] = {"used": [], "declined": [], "skipped": f"no kernel for this target: {passed}"}
        return mod, report
    mod, report["int8_dense"] = use_int8_dense(mod, kernel)
    if passed:
        report["int8_dense"]["passed_over"] = passed
    return mod, report


def identity() -> str:
    """'name, name, ... @ sha256[:12] of the kernel sources' (what a build may link)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{', '.join(k.name for k in TABLE)} @ {digest.hexdigest()[:12]}"

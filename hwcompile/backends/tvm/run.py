"""Running a TVM artifact: a Relax VM on this CPU or on a device over TVM RPC, timing, per-layer times.

End to end: inputs are bound once (``vm.set_input``) and ``invoke_stateful("main")`` is timed by
TVM's own ``time_evaluator`` (one run per sample, on the device, so RPC latency is not counted);
the median and interquartile range come from those samples.

Per layer (this CPU only): TVM 0.27 has no VM profiler (``VirtualMachine(profile=True)`` and
``vm.profile`` were removed), so a VM instrument records the wall time around every ``Call``
instruction. Fused kernels are named after their ops (``fused_conv2d_add_relu``); a kernel whose
name contains a head op (conv, conv_transpose, matmul) is charged to the next layer of that
class in graph order, which is the order the Relax frontend emits and FuseOps keeps, provided
the counts per class agree; everything else (Q/DQ kernels, pooling, reshapes, or all kernels when
the counts disagree) is reported unmapped under its kernel name. The instrument's own cost (a few
microseconds: the median time it measures around a no-op VM builtin) is subtracted from every kernel.
"""
from __future__ import annotations

import os
import re
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendUnavailable
from ...contract import Feeds, Timing, summarize
from .build import TVMSettings, import_tvm

__all__ = ["Session", "open_session", "time_vm", "layer_times", "kernel_class", "default_threads"]


@dataclass
class Session:
    """A loaded library: the VM, the device it runs on, and where that is."""

    vm: Any
    device: Any
    where: str
    remote: Any = None

    def tensors(self, feeds: Feeds, names: list[str]) -> list:
        tvm = import_tvm()
        return [tvm.runtime.tensor(np.ascontiguousarray(feeds[n]), self.device) for n in names]

    def run(self, feeds: Feeds, names: list[str], static_batch: dict[str, int] | None = None) -> list[np.ndarray]:
        """Outputs for ``feeds``. A library compiled for a fixed batch ``b`` (``static_batch``: input ->
        b) runs larger batches in slices of ``b``, the last one zero-padded, and concatenates."""
        n = next((len(feeds[k]) for k in names if static_batch and k in static_batch), None)
        b = min(static_batch.values()) if static_batch else None
        if b is None or n == b:
            return _flatten(self.vm["main"](*self.tensors(feeds, names)))
        parts: list[list[np.ndarray]] = []
        for lo in range(0, n, b):
            chunk = {}
            for k in names:
                x = feeds[k][lo:lo + b] if k in static_batch else feeds[k]
                if k in static_batch and len(x) < b:
                    x = np.concatenate([x, np.zeros((b - len(x), *x.shape[1:]), x.dtype)])
                chunk[k] = x
            parts.append(_flatten(self.vm["main"](*self.tensors(chunk, names))))
        return [np.concatenate(outs)[:n] for outs in zip(*parts)]


def open_session(library: Path, settings: TVMSettings) -> Session:
    """Load ``library`` into a Relax VM here, or upload it to the RPC device named in the settings."""
    tvm = import_tvm()
    from tvm import relax

    if settings.rpc is not None:
        host, port = settings.rpc
        try:
            if settings.rpc_key:
                remote = tvm.rpc.connect_tracker(host, port).request(settings.rpc_key, session_timeout=settings.rpc_timeout_s)
            else:
                remote = tvm.rpc.connect(host, port, session_timeout=settings.rpc_timeout_s)
        except Exception as e:
            raise BackendUnavailable(f"cannot reach the TVM RPC {'tracker' if settings.rpc_key else 'server'} "
                                     f"{host}:{port}: {e}", where="backend_settings.rpc_host") from None
        remote.upload(str(library))
        dev = remote.cpu()
        vm = relax.VirtualMachine(remote.load_module(library.name), dev)
        return Session(vm, dev, f"rpc {settings.rpc_key or 'server'}@{host}:{port}", remote)
    if settings.is_cross:
        raise BackendUnavailable("the library is for another machine and no device is configured",
                                 where="backend_settings.rpc_host",
                                 hint="start tvm.exec.rpc_server on the device and set rpc_host (and rpc_key for a tracker)")
    dev = tvm.cpu()
    return Session(relax.VirtualMachine(tvm.runtime.load_module(str(library)), dev), dev, "local cpu")


def time_vm(session: Session, feeds: Feeds, names: list[str], *, repeats: int, warmup: int, threads: int) -> Timing:
    """Median and IQR of ``repeats`` single runs of ``main`` timed on the device."""
    vm = session.vm
    vm.set_input("main", *session.tensors(feeds, names))
    for _ in range(warmup):
        vm.invoke_stateful("main")
    res = vm.time_evaluator("invoke_stateful", session.device, number=1, repeat=repeats)("main")
    samples = [float(s) * 1e3 for s in res.results]
    return summarize(samples, warmup=warmup, threads=threads)


def kernel_class(symbol: str) -> str | None:
    """'conv_transpose' | 'conv' | 'matmul' for kernels containing such an op, else None."""
    if re.search(r"conv[123]d_transpose", symbol):
        return "conv_transpose"
    if re.search(r"conv[123]d", symbol):
        return "conv"
    if "matmul" in symbol or "dense" in symbol:
        return "matmul"
    return None


def layer_times(session: Session, feeds: Feeds, names: list[str], heads: list[list[str]], runs: int
              ) -> tuple[dict[str, float], dict[str, float], list[dict], str]:
    """(layer id -> ms, kernel -> ms unmapped, kernel table, how it was mapped) from instrumented runs."""
    calls: list[tuple[str, float]] = []
    stack: list[float] = []

    def instrument(func, symbol, before, ret, *args):
        if before:
            stack.append(time.perf_counter())
        else:
            calls.append((str(symbol), time.perf_counter() - stack.pop()))
        return 0

    vm = session.vm
    tensors = session.tensors(feeds, names)
    vm["main"](*tensors)  # warm-up, uninstrumented
    vm.set_instrument(instrument)
    per_run: list[list[tuple[str, float]]] = []
    try:
        for _ in range(runs):
            calls.clear()
            vm["main"](*tensors)
            per_run.append(list(calls))
    finally:
        vm.set_instrument(_noop)
    # the instrument's own cost: what a no-op builtin call measures; subtracted from every kernel
    noop = [d for r in per_run for s, d in r if s == "vm.builtin.null_value"]
    overhead = float(np.median(noop)) if noop else 0.0
    per_run = [[c for c in r if not c[0].startswith("vm.builtin.")] for r in per_run]
    kernels = [(sym, max(0.0, float(np.median([r[i][1] for r in per_run])) - overhead) * 1e3)
               for i, (sym, _) in enumerate(per_run[0])]
    wanted: dict[str, list[str]] = defaultdict(list)
    for cls, lid in heads:
        wanted[cls].append(lid)
    found: dict[str, int] = defaultdict(int)
    for sym, _ in kernels:
        if (cls := kernel_class(sym)) is not None:
            found[cls] += 1
    aligned = all(found[c] == len(wanted[c]) for c in set(found) | set(wanted))
    layers: dict[str, float] = defaultdict(float)
    unmapped: dict[str, float] = defaultdict(float)
    table, taken = [], defaultdict(int)
    for sym, ms in kernels:
        cls = kernel_class(sym)
        lid = None
        if aligned and cls is not None:
            lid = wanted[cls][taken[cls]]
            taken[cls] += 1
            layers[lid] += ms
        else:
            unmapped[sym] += ms
        table.append({"kernel": sym, "op": cls or "", "layer": lid, "ms": ms})
    how = (f"VM instrument around every kernel call (minus its own {overhead * 1e6:.1f} us per call); "
           "head kernels matched to layers in graph order" if aligned else
           f"VM instrument; kernel counts per class {dict(found)} differ from the graph's {dict((c, len(v)) for c, v in wanted.items())}, "
           "so no kernel was mapped to a layer")
    return dict(layers), dict(unmapped), sorted(table, key=lambda k: -k["ms"]), how


def _noop(func, symbol, before, ret, *args):
    return 0


def _flatten(out) -> list[np.ndarray]:
    if hasattr(out, "numpy"):
        return [out.numpy()]
    result: list[np.ndarray] = []
    for item in out:
        result.extend(_flatten(item))
    return result


def default_threads(settings: TVMSettings) -> int:
    env = os.environ.get("TVM_NUM_THREADS")
    return int(env) if env else int(settings.target.get("num-cores", 0) or os.cpu_count() or 1)

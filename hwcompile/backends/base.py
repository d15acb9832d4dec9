"""The backend interface: a capability table plus ``lower``, ``load`` and ``profile``.

A backend (onnxruntime, TVM, TensorRT) says what it supports for a target, how Q/DQ must be
shaped for it (``QDQStyle``, read by the quantize pass: passes never read targets), lowers a
Graph + PrecisionPlan to an Artifact folder, runs an Artifact, and profiles it end to end and per
layer with times mapped back to layer ids. Backends are found through the ``hwcompile.backends``
entry-point group, so a third party can add one by installing a package.
"""
from __future__ import annotations

import statistics
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import ConfigError
from ..ir import Graph
from ..plan import PrecisionPlan
from ..targets import Target

__all__ = ["QDQStyle", "Artifact", "Timing", "Profile", "Backend", "Runner", "get_backend",
           "backend_names", "time_runs"]

Feeds = Mapping[str, np.ndarray]
Runner = Callable[[Feeds], list[np.ndarray]]


@dataclass(frozen=True)
class QDQStyle:
    """How the quantize pass must shape Q/DQ for a backend."""

    activation_dtype: str = "uint8"      # "uint8" (asymmetric allowed) or "int8"
    weight_dtype: str = "int8"           # Conv weights
    gemm_weight_dtype: str = "int8"      # MatMul/Gemm weights ("uint8": x86 without VNNI saturates u8*s8)
    reduce_range_conv: bool = False      # 7-bit Conv weights in int8: u8*s8 pair sums stay below 2^15
    symmetric_activations: bool = False  # TensorRT: zero points must be 0
    quantize_residual_add: bool = True   # Q/DQ on both Add inputs so Conv+Add fuse
    quantize_bias: bool = True           # INT32 bias DQ (onnxruntime's integer groups); TensorRT: float
    quantize_outputs_of: tuple[str, ...] = ("Add", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool",
                                            "Relu", "Clip", "Sigmoid", "Mul", "HardSigmoid", "Resize")
    allow_dynamic: bool = True           # DynamicQuantizeLinear / MatMulInteger (not on TensorRT)
    allow_contrib_ops: bool = True       # com.microsoft ops (MatMulNBits)
    int8_embeddings: bool = True         # INT8 Gather tables + Cast (TensorRT: INT8 only through Q/DQ)
    min_opset: int = 13


@dataclass
class Artifact:
    """The lowered, deployable result: a folder with the backend's files."""

    directory: Path
    backend: str
    target: str
    files: dict[str, str] = field(default_factory=dict)  # role -> file name in directory
    info: dict[str, Any] = field(default_factory=dict)

    def path(self, role: str) -> Path:
        return self.directory / self.files[role]


@dataclass
class Timing:
    latency_ms: float
    latency_ms_spread: float       # interquartile range of the per-run latencies
    p10_ms: float
    p90_ms: float
    repeats: int
    warmup: int
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Profile:
    timing: Timing
    layers_ms: dict[str, float] = field(default_factory=dict)     # layer id -> ms per run
    unmapped_ms: dict[str, float] = field(default_factory=dict)   # backend kernels we could not map
    info: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    name: str = ""

    @abstractmethod
    def status(self, target: Target) -> tuple[bool, str]:
        """(can build here, reason if not)."""

    def qdq_style(self, target: Target) -> QDQStyle:
        return QDQStyle()

    @abstractmethod
    def lower(self, graph: Graph, plan: PrecisionPlan, target: Target, out_dir: Path) -> Artifact:
        """Write the deployable files for ``graph`` (already quantized/pruned as ``plan`` says)."""

    @abstractmethod
    def load(self, artifact: Artifact, target: Target) -> Runner:
        """A callable running the artifact on feeds, for accuracy evaluation."""

    @abstractmethod
    def profile(self, artifact: Artifact, target: Target, feeds: Feeds, *, repeats: int = 50,
                warmup: int = 10, per_layer: bool = True) -> Profile:
        """Measure end-to-end latency, and per-layer latency mapped back to layer ids."""

    def graph_runner(self, graph: Graph, target: Target):
        """Run an un-lowered graph in memory with this backend's numerics, for scoring a layer's
        sensitivity without writing an artifact: an object whose ``run(dataset)`` returns the outputs.
        The default runs onnxruntime's CPU provider with its default session settings."""
        from ..analysis.sensitivity import InMemoryRunner

        return InMemoryRunner(graph, {})

    def versions(self) -> dict[str, str]:
        return {}


def backend_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group="hwcompile.backends")) or ["onnxruntime"]


def get_backend(name: str) -> Backend:
    for ep in entry_points(group="hwcompile.backends"):
        if ep.name == name:
            return ep.load()()
    builtin = {"onnxruntime": ("onnxruntime", "OnnxRuntimeBackend"), "tensorrt": ("tensorrt", "TensorRTBackend"),
               "tvm": ("tvm", "TVMBackend")}
    if name in builtin:  # running from a source tree without an installed entry point
        import importlib

        mod, cls = builtin[name]
        return getattr(importlib.import_module(f"hwcompile.backends.{mod}"), cls)()
    raise ConfigError(f"unknown backend {name!r}", where="target.backend", hint=f"installed: {backend_names()}")


def time_runs(run: Callable[[], Any], *, repeats: int, warmup: int, threads: int,
              progress: Callable[[int], None] | None = None) -> Timing:
    """Warm up, then time ``repeats`` runs; median and interquartile spread in ms."""
    for _ in range(warmup):
        run()
    samples = []
    for i in range(repeats):
        t0 = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t0) * 1e3)
        if progress:
            progress(i)
    q = np.percentile(samples, [10, 25, 75, 90])
    return Timing(latency_ms=float(statistics.median(samples)), latency_ms_spread=float(q[2] - q[1]),
                  p10_ms=float(q[0]), p90_ms=float(q[3]), repeats=repeats, warmup=warmup, threads=threads)

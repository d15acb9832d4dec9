"""The backend interface: typed settings and capabilities, then ``lower``, ``load`` and ``profile``.

A backend (onnxruntime, TVM, TensorRT, or a third party's through the ``hwcompile.backends``
entry-point group) parses a target's ``[backend_settings]`` with its ``Settings`` class (a closed,
typed ``BackendSettings``), says what it can do for the target (``capabilities``: precisions,
sparsity, Q/DQ style, whether it can build/run/profile here), lowers a Graph + PrecisionPlan to an
Artifact folder, runs an Artifact, and profiles it end to end and per layer with times mapped back
to layer ids.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from ..errors import HwcompileError
from ..ir import Graph
from ..ort_session import InMemoryRunner
from .capabilities import Capabilities
from .plan import PrecisionPlan
from .qdq import QDQStyle
from .settings import BackendSettings, NoSettings
from .timing import Timing

__all__ = ["Artifact", "Profile", "Backend", "Runner", "Feeds"]

Feeds = Mapping[str, np.ndarray]
Runner = Callable[[Feeds], list[np.ndarray]]


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

    def size_bytes(self) -> int:
        """Bytes of the deployable file (the engine where there is one, else the model) and its external data."""
        p = self.path("engine" if "engine" in self.files else "model")
        data = p.with_name(p.name + ".data")
        return p.stat().st_size + (data.stat().st_size if data.exists() else 0)


@dataclass
class Profile:
    timing: Timing
    layers_ms: dict[str, float] = field(default_factory=dict)     # layer id -> ms per run
    unmapped_ms: dict[str, float] = field(default_factory=dict)   # backend kernels we could not map
    info: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    name: ClassVar[str] = ""
    #: the closed, typed ``[backend_settings]`` of this backend's targets
    Settings: ClassVar[type[BackendSettings]] = NoSettings

    def settings(self, target) -> BackendSettings:
        """The target's ``[backend_settings]``, checked (ConfigError naming file and field)."""
        return self.Settings.from_target(target)

    @abstractmethod
    def capabilities(self, target) -> Capabilities:
        """What this backend can do for ``target`` here (parses the settings first)."""

    def status(self, target) -> tuple[bool, str]:
        """(can build here, reason if not); a settings error is a reason too."""
        try:
            caps = self.capabilities(target)
        except HwcompileError as e:
            return False, e.render()
        return caps.can_build, caps.why_not("build")

    def qdq_style(self, target) -> QDQStyle:
        """How the quantize passes must shape Q/DQ for this backend on ``target``."""
        return self.capabilities(target).qdq

    @abstractmethod
    def lower(self, graph: Graph, plan: PrecisionPlan, target, out_dir: Path) -> Artifact:
        """Write the deployable files for ``graph`` (already quantized/pruned as ``plan`` says)."""

    @abstractmethod
    def load(self, artifact: Artifact, target) -> Runner:
        """A callable running the artifact on feeds, for accuracy evaluation."""

    @abstractmethod
    def profile(self, artifact: Artifact, target, feeds: Feeds, *, repeats: int = 50,
                warmup: int = 10, per_layer: bool = True) -> Profile:
        """Measure end-to-end latency, and per-layer latency mapped back to layer ids."""

    def graph_runner(self, graph: Graph, target) -> InMemoryRunner:
        """Run an un-lowered graph in memory with this backend's numerics, for scoring a layer's
        sensitivity without writing an artifact: an object whose ``run(dataset)`` returns the outputs.
        The default runs onnxruntime's CPU provider with its default session settings."""
        return InMemoryRunner(graph, {})

    def versions(self) -> dict[str, str]:
        return {}

    def check_deployment(self, model, *, sparsity: str | None = None) -> list | None:
        """Violations of this backend's deployment rules in an ONNX ``model`` (objects with ``node``,
        ``rule``, ``message``), or None when the backend has no such rules."""
        return None

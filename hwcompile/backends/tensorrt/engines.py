"""What the TensorRT backend asks of a GPU: status, build, run and profile an engine.

``TensorRTEngines`` does it with TensorRT and CUDA; the backend takes any object with the same
four methods (``EngineService``), which is how the backend's lowering, profiling and the planner's
latency table are tested on machines without a GPU (with a deterministic double).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from ...errors import BackendUnavailable
from .build import EngineBuildResult, build_engine
from .profiler import profile_engine
from .runtime import gpu_capability, load_engine, tensorrt_status
from .settings import TensorRTSettings

__all__ = ["EngineService", "TensorRTEngines"]

Feeds = Mapping[str, np.ndarray]


class EngineService(Protocol):
    def status(self) -> tuple[bool, str]: ...

    def build(self, onnx_path: os.PathLike, plan_path: os.PathLike, settings: TensorRTSettings,
              sparse: bool) -> EngineBuildResult: ...

    def load(self, plan_path: os.PathLike) -> Callable[[Feeds], list[np.ndarray]]: ...

    def profile(self, plan_path: os.PathLike, feeds: Feeds, repeats: int, warmup: int,
                per_layer: bool) -> dict[str, Any]: ...


class TensorRTEngines:
    """The real thing: TensorRT's builder and runtime on CUDA device 0."""

    def status(self) -> tuple[bool, str]:
        return tensorrt_status()

    def build(self, onnx_path, plan_path, settings: TensorRTSettings, sparse: bool) -> EngineBuildResult:
        gpu = gpu_capability()
        why = settings.check_gpu(gpu)
        if why:
            raise BackendUnavailable(why, where="backend_settings.compute_capabilities",
                                     hint="compile for the target of this GPU (hwcompile targets)")
        res = build_engine(onnx_path, plan_path, timing_cache_path=settings.timing_cache_path(),
                           sparse_weights=settings.sparse_weights and sparse, profiles=settings.profiles,
                           max_batch=settings.max_batch, workspace_mb=settings.workspace_mb)
        res.gpu = gpu
        return res

    def load(self, plan_path):
        return load_engine(plan_path)

    def profile(self, plan_path, feeds, repeats, warmup, per_layer):
        return profile_engine(plan_path, feeds, repeats, warmup=warmup, per_layer=per_layer)

"""Building a TensorRT engine from explicitly quantized (Q/DQ) ONNX.

The network is strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` on 10.x; always on
11.x, where the flag is gone): every tensor has the type the ONNX gives it, so layers run
INT8/FP8/INT4 exactly where Q/DQ put them, FP16 where the model casts, FP32 elsewhere. No precision
flags, no calibrator. ``SPARSE_WEIGHTS`` lets TensorRT choose 2:4 sparse kernels where the weights
allow; whether it did is read back from the inspector. The timing cache (``timing_cache``) is
attached before the build and saved after it; the plan file is written atomically.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ModelLoadError, UnsupportedError
from . import timing_cache
from .files import write_bytes_atomic
from .inspector import engine_summary, summarize_layers
from .runtime import builder, import_trt, logger
from .shapes import Profiles, default_profiles, validate_profiles

__all__ = ["EngineBuildResult", "build_engine", "parser_errors"]


@dataclass
class EngineBuildResult:
    plan_path: Path
    layers: list[dict[str, Any]] = field(default_factory=list)  # {name, type, precision, weights, sparse, ...}
    build_seconds: float = 0.0
    tensorrt_version: str = ""
    timing_cache: str = "off"          # "off" | "new" | "loaded" | "dropped (...)"
    gpu: str = ""                      # compute capability the engine was built on

    def summary(self) -> dict[str, Any]:
        """Counts for the report: how many layers run INT8 (and other types) and how many chose sparse kernels."""
        return engine_summary(self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "plan_path": str(self.plan_path), "summary": self.summary()}


def build_engine(onnx_path: str | os.PathLike, plan_path: str | os.PathLike, *,
                 timing_cache_path: str | os.PathLike | None = None, sparse_weights: bool = False,
                 profiles: Profiles | None = None, max_batch: int = 1, workspace_mb: int = 2048) -> EngineBuildResult:
    """Parse ``onnx_path``, build a strongly typed engine, write it to ``plan_path`` atomically.

    ``profiles`` gives (min, opt, max) shapes per input; inputs with a dynamic dimension and no
    profile get ``default_profiles(..., max_batch)``. Raises UnsupportedError listing the parser's
    errors by ONNX node, ConfigError for bad profiles, BackendUnavailable without TensorRT.
    """
    trt = import_trt()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise ModelLoadError("ONNX file not found", where=str(onnx_path))
    log = logger(trt)
    b = builder(trt, log)
    network = b.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        raise UnsupportedError("TensorRT's ONNX parser rejected the model:\n" + "\n".join(parser_errors(parser)),
                               where=str(onnx_path),
                               hint="check the model with hwcompile.backends.tensorrt.rules.check_model")
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    profiles = default_profiles(inputs, profiles, max_batch=max_batch)
    validate_profiles(inputs, profiles)

    config = b.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector then reports types/tactics
    if sparse_weights:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if profiles:
        profile = b.create_optimization_profile()
        for name, (lo, opt, hi) in profiles.items():
            profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        config.add_optimization_profile(profile)
    cache_state = timing_cache.attach(config, timing_cache_path)

    start = time.perf_counter()
    serialized = b.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise UnsupportedError("TensorRT could not build an engine: " + (log.errors() or "no error was logged"),
                               where=str(onnx_path), hint=f"raise workspace_mb (now {workspace_mb}) if it mentions memory")
    plan = memoryview(serialized).tobytes()
    write_bytes_atomic(plan_path, plan)
    timing_cache.save(config, timing_cache_path)
    engine = trt.Runtime(log).deserialize_cuda_engine(plan)
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return EngineBuildResult(plan_path=plan_path, layers=summarize_layers(info), build_seconds=seconds,
                             tensorrt_version=trt.__version__, timing_cache=cache_state)


def _network_flags(trt) -> int:
    """STRONGLY_TYPED on 10.x; 0 on 11.x, where every network is strongly typed and the flag is deprecated."""
    strong = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    if strong is None or int(str(trt.__version__).split(".")[0]) >= 11:
        return 0
    return 1 << int(strong)


def parser_errors(parser) -> list[str]:
    """One line per TensorRT ONNX-parser error, naming the ONNX node and operator where it has them."""
    lines = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = e.node_name() if hasattr(e, "node_name") else ""
        op = e.node_operator() if hasattr(e, "node_operator") else ""
        where = f"node '{node}' ({op})" if node else f"node #{e.node()}"
        lines.append(f"  {where}: {e.desc()} [{e.code()}]")
    return lines or ["  (the parser recorded no error)"]

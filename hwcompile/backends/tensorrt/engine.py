"""Build, inspect, run and profile TensorRT engines from explicitly quantized (Q/DQ) ONNX.

Uses the TensorRT 10/11 Python API, imported lazily so the rest of hwcompile works without it.
The network is strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` on 10.x; always
on 11.x, where the flag is ignored): every tensor has the type the ONNX gives it, so layers run
INT8/FP8/INT4 exactly where Q/DQ put them, FP16 where the model casts, FP32 elsewhere. No
precision flags, no calibrator.

Dynamic shapes: every input with a -1 dimension needs an optimization profile (min, opt, max).
``default_profiles`` gives a dynamic batch axis 0 the profile (1, 1, ``max_batch``); any other
dynamic dimension must be given explicitly (``backend_settings.profiles`` in the target file).

Timing: end-to-end latency is measured with CUDA events on the engine's stream (device time of
``execute_async_v3``; ``with_copies`` adds the host<->device copies); per-layer time comes from an
``IProfiler`` attached to the same execution context only after the timed runs, so profiling does
not perturb the end-to-end numbers (a second context would need its own optimization profile when
shapes are dynamic). Layer names are TensorRT's; ``layer_nodes`` maps each to the ONNX nodes it
fused (from the inspector's ``Metadata``), which is how times go back to layer ids.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ...errors import BackendUnavailable, ConfigError, DataError, ModelLoadError, UnsupportedError

__all__ = ["EngineBuildResult", "tensorrt_status", "build_engine", "load_engine", "profile_engine",
           "summarize_layers", "default_profiles", "validate_profiles", "write_atomic"]

Shape = tuple[int, ...]
Profiles = Mapping[str, tuple[Shape, Shape, Shape]]


@dataclass
class EngineBuildResult:
    plan_path: Path
    layers: list[dict[str, Any]] = field(default_factory=list)  # {name, type, precision, weights, sparse, ...}
    build_seconds: float = 0.0
    tensorrt_version: str = ""

    def summary(self) -> dict[str, Any]:
        """Counts for the report: how many layers run INT8 (and other types) and how many chose sparse kernels."""
        by_precision: dict[str, int] = {}
        for lay in self.layers:
            by_precision[lay["precision"]] = by_precision.get(lay["precision"], 0) + 1
        return {"layers": len(self.layers), "by_precision": by_precision,
                "int8_layers": [lay["name"] for lay in self.layers if lay["precision"] == "int8"],
                "sparse_layers": [lay["name"] for lay in self.layers if lay["sparse"]]}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "plan_path": str(self.plan_path), "summary": self.summary()}


def tensorrt_status() -> tuple[bool, str]:
    """(True, version) if ``import tensorrt`` works and a Builder can be made on a GPU, else (False, the real error)."""
    try:
        trt = _import_trt()
        _builder(trt, _logger(trt))
    except BackendUnavailable as e:
        return False, e.message
    return True, f"TensorRT {trt.__version__}: builder created on the GPU"


def build_engine(onnx_path: str | os.PathLike, plan_path: str | os.PathLike, *,
                 timing_cache_path: str | os.PathLike | None = None, sparse_weights: bool = False,
                 profiles: Profiles | None = None, max_batch: int = 1, workspace_mb: int = 2048) -> EngineBuildResult:
    """Parse ``onnx_path``, build a strongly typed engine, write it to ``plan_path`` atomically.

    ``timing_cache_path`` is loaded if it exists (a cache from another GPU or TensorRT version
    is dropped) and saved after the build. ``profiles`` gives (min, opt, max) shapes per input;
    inputs with a dynamic dimension and no profile get ``default_profiles(..., max_batch)``.
    Raises UnsupportedError listing the parser's errors by ONNX node, ConfigError for bad
    profiles, BackendUnavailable without TensorRT.
    """
    trt = _import_trt()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise ModelLoadError("ONNX file not found", where=str(onnx_path))
    log = _logger(trt)
    builder = _builder(trt, log)
    strong = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strong is None else 1 << int(strong))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        raise UnsupportedError("TensorRT's ONNX parser rejected the model:\n" + "\n".join(_parser_errors(parser)),
                               where=str(onnx_path),
                               hint="check the model with hwcompile.backends.tensorrt.rules.check_model")
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    profiles = default_profiles(inputs, profiles, max_batch=max_batch)
    validate_profiles(inputs, profiles)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector then reports types/tactics
    if sparse_weights:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profiles.items():
            profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        config.add_optimization_profile(profile)
    if timing_cache_path is not None:
        cache_file = Path(timing_cache_path)
        blob = cache_file.read_bytes() if cache_file.is_file() else b""
        cache = config.create_timing_cache(blob) if blob else None  # None: unreadable (another version)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):  # or another GPU
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise UnsupportedError("TensorRT could not build an engine: " + (log.errors() or "no error was logged"),
                               where=str(onnx_path), hint=f"raise workspace_mb (now {workspace_mb}) if it mentions memory")
    plan = memoryview(serialized).tobytes()
    write_atomic(plan_path, plan)
    if timing_cache_path is not None:
        write_atomic(timing_cache_path, memoryview(config.get_timing_cache().serialize()).tobytes())
    engine = trt.Runtime(log).deserialize_cuda_engine(plan)
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return EngineBuildResult(plan_path=plan_path, layers=summarize_layers(info), build_seconds=seconds,
                             tensorrt_version=trt.__version__)


def load_engine(plan_path: str | os.PathLike) -> Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]:
    """A callable running the engine on feeds (name -> array), returning outputs in engine order."""
    session = _Session(plan_path)

    def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        session.bind(session.context, feeds)
        session.copy_in()
        session.enqueue(session.context)
        session.copy_out()
        session.sync()
        return [session.host[n].copy() for n in session.outputs]

    run.session = session  # type: ignore[attr-defined]  # keeps buffers alive with the callable
    return run


def profile_engine(plan_path: str | os.PathLike, feeds: Mapping[str, np.ndarray], repeats: int = 50, *,
                   warmup: int = 10) -> dict[str, Any]:
    """End-to-end latency from CUDA events and mean per-layer time from an IProfiler, in ms."""
    s = _Session(plan_path)
    rt, trt = s.cudart, s.trt
    s.bind(s.context, feeds)
    for _ in range(warmup):
        s.copy_in()
        s.enqueue(s.context)
        s.copy_out()
    s.sync()
    ev = [_cuda(rt, rt.cudaEventCreate()) for _ in range(4)]
    compute, total = [], []
    for _ in range(repeats):
        _cuda(rt, rt.cudaEventRecord(ev[0], s.stream))
        s.copy_in()
        _cuda(rt, rt.cudaEventRecord(ev[1], s.stream))
        s.enqueue(s.context)
        _cuda(rt, rt.cudaEventRecord(ev[2], s.stream))
        s.copy_out()
        _cuda(rt, rt.cudaEventRecord(ev[3], s.stream))
        _cuda(rt, rt.cudaEventSynchronize(ev[3]))
        compute.append(_cuda(rt, rt.cudaEventElapsedTime(ev[1], ev[2])))
        total.append(_cuda(rt, rt.cudaEventElapsedTime(ev[0], ev[3])))
    for e in ev:
        _cuda(rt, rt.cudaEventDestroy(e))

    times: dict[str, list[float]] = {}

    class _Profiler(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            times.setdefault(layer_name, []).append(ms)

    profiler = _Profiler()  # a reference kept here: the context holds only a raw pointer to it
    s.context.profiler = profiler  # after the timed runs: per-layer reporting adds overhead
    for _ in range(max(1, repeats)):
        s.enqueue(s.context)
        s.sync()
    s.context.profiler = None
    info = s.engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    q = np.percentile(compute, [10, 25, 75, 90])
    return {
        "latency_ms": float(statistics.median(compute)), "latency_ms_spread": float(q[2] - q[1]),
        "p10_ms": float(q[0]), "p90_ms": float(q[3]), "with_copies_ms": float(statistics.median(total)),
        "samples_ms": [float(x) for x in compute], "repeats": repeats, "warmup": warmup,
        "layers_ms": {k: float(np.mean(v)) for k, v in times.items()},
        "layer_nodes": {lay["name"]: lay["onnx_nodes"] for lay in summarize_layers(info)},
        "timer": "CUDA events around execute_async_v3 (device time); IProfiler per layer",
        "tensorrt_version": trt.__version__,
    }


# -- pure helpers (tested without a GPU) -------------------------------------------------------------
_DTYPES = (("bfloat16", "bf16"), ("uint8", "uint8"), ("int8", "int8"), ("int4", "int4"), ("fp8", "fp8"),
           ("fp4", "fp4"), ("fp16", "fp16"), ("half", "fp16"), ("int32", "int32"), ("int64", "int64"),
           ("bool", "bool"), ("fp32", "fp32"), ("float", "fp32"))
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")


def _dtype(text: str) -> str:
    low = text.lower()
    return next((name for key, name in _DTYPES if key in low), "unknown" if text else "")


def summarize_layers(info_json: str) -> list[dict[str, Any]]:
    """Per-layer summary of ``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)``.

    ``precision`` is the data type of the layer's first input (its compute type; the first output
    if it has no inputs), ``weights`` the type of its constant weights, ``sparse`` whether TensorRT
    chose a structured-sparse kernel (the tactic name says "sparse"), ``onnx_nodes`` the ONNX nodes
    fused into it. Engines built without DETAILED verbosity list names only.
    """
    data = json.loads(info_json)
    out = []
    for layer in data.get("Layers", []) if isinstance(data, dict) else data:
        if isinstance(layer, str):
            out.append({"name": layer, "type": "", "precision": "unknown", "weights": "", "sparse": False,
                        "tactic": "", "onnx_nodes": []})
            continue
        tensors = layer.get("Inputs") or layer.get("Outputs") or [{}]
        tactic = str(layer.get("TacticName", ""))
        weights = layer.get("Weights")
        out.append({
            "name": str(layer.get("Name", "")),
            "type": str(layer.get("LayerType", "")),
            "precision": _dtype(str(tensors[0].get("Format/Datatype", ""))),
            "weights": _dtype(str(weights.get("Type", ""))) if isinstance(weights, dict) else "",
            "sparse": "sparse" in tactic.lower(),
            "tactic": tactic,
            "onnx_nodes": _ONNX_LAYER.findall(str(layer.get("Metadata", ""))),
        })
    return out


def default_profiles(inputs: Mapping[str, Shape], profiles: Profiles | None = None, *,
                     max_batch: int = 1) -> dict[str, tuple[Shape, Shape, Shape]]:
    """``profiles`` plus (1, 1, ``max_batch``) on axis 0 for every dynamic input without one.

    Only a dynamic batch (axis 0) is filled in; an input with another dynamic dimension is left
    without a profile, which ``validate_profiles`` then reports naming the input.
    """
    out = {k: tuple(tuple(int(d) for d in s) for s in v) for k, v in (profiles or {}).items()}
    if max_batch < 1:
        raise ConfigError(f"max_batch must be >= 1, got {max_batch}", where="backend_settings.max_batch")
    for name, dims in inputs.items():
        if name in out or not dims or any(d < 0 for d in dims[1:]) or dims[0] >= 0:
            continue
        rest = tuple(int(d) for d in dims[1:])
        out[name] = ((1, *rest), (1, *rest), (int(max_batch), *rest))
    return out  # type: ignore[return-value]


def validate_profiles(inputs: Mapping[str, Shape], profiles: Profiles | None) -> None:
    """Raise ConfigError unless every dynamic input (a -1 dim) has a (min, opt, max) profile that fits."""
    profiles = profiles or {}
    for name in profiles:
        if name not in inputs:
            raise ConfigError(f"profile for unknown input {name!r}", where=f"profiles.{name}",
                              hint=f"network inputs: {sorted(inputs)}")
    for name, dims in inputs.items():
        if name not in profiles:
            if any(d < 0 for d in dims):
                raise ConfigError(f"input {name!r} has dynamic shape {list(dims)} and no profile",
                                  where=f"profiles.{name}",
                                  hint="give (min, opt, max) shapes for it in backend_settings.profiles")
            continue
        lo, opt, hi = (tuple(int(d) for d in s) for s in profiles[name])
        if not len(lo) == len(opt) == len(hi) == len(dims):
            raise ConfigError(f"profile ranks {len(lo)}/{len(opt)}/{len(hi)} differ from the input's {len(dims)}",
                              where=f"profiles.{name}")
        for i, (d, a, b, c) in enumerate(zip(dims, lo, opt, hi)):
            if not 0 < a <= b <= c or (d >= 0 and not a == b == c == d):
                raise ConfigError(f"dim {i}: min/opt/max {a}/{b}/{c} do not fit input dim {d} "
                                  "(need 0 < min <= opt <= max, all equal to a static dim)", where=f"profiles.{name}")


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- TensorRT and CUDA plumbing -------------------------------------------------------------------
def _import_trt():
    try:
        return importlib.import_module("tensorrt")
    except Exception as e:  # ImportError, or OSError when libnvinfer is missing
        reason = f"import tensorrt failed: {type(e).__name__}: {e}"
    raise BackendUnavailable(reason, where="tensorrt", hint="TensorRT 10/11 for this Python and an NVIDIA GPU")


def _logger(trt):
    class _Log(trt.ILogger):
        """Keeps TensorRT's errors and warnings so failures can say what TensorRT said."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[int, str]] = []

        def log(self, severity, msg) -> None:
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.messages.append((int(severity), str(msg)))

        def errors(self) -> str:
            worst = int(trt.ILogger.Severity.ERROR)
            return "; ".join(m for s, m in self.messages if s <= worst)

    return _Log()


def _builder(trt, log):
    try:
        builder = trt.Builder(log)
    except Exception as e:  # pybind raises when the factory returns nullptr (no GPU / driver)
        raise BackendUnavailable(f"TensorRT {trt.__version__}: trt.Builder failed: {e}. {log.errors()}".strip(),
                                 where="tensorrt", hint="needs an NVIDIA GPU with a working driver") from None
    if builder is None:
        raise BackendUnavailable(f"TensorRT {trt.__version__}: trt.Builder returned None. {log.errors()}".strip(),
                                 where="tensorrt")
    return builder


def _parser_errors(parser) -> list[str]:
    lines = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = e.node_name() if hasattr(e, "node_name") else ""
        op = e.node_operator() if hasattr(e, "node_operator") else ""
        where = f"node '{node}' ({op})" if node else f"node #{e.node()}"
        lines.append(f"  {where}: {e.desc()} [{e.code()}]")
    return lines or ["  (the parser recorded no error)"]


def _import_cudart():
    err: Exception | None = None
    for mod in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(mod)
        except ImportError as e:
            err = e
    raise BackendUnavailable(f"cuda-python is needed to run TensorRT engines: {err}", where="cuda-python",
                             hint="pip install cuda-python")


def _cuda(rt, result):
    err, *vals = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendUnavailable(f"CUDA error {int(err)}: {rt.cudaGetErrorName(err)[1]}", where="cuda")
    return vals[0] if len(vals) == 1 else (vals or None)


class _Session:
    """One deserialized engine, its stream and device buffers; ``bind`` sets shapes and addresses."""

    def __init__(self, plan_path: str | os.PathLike):
        self.trt, self.cudart = _import_trt(), _import_cudart()
        trt, self.log = self.trt, _logger(self.trt)
        self.runtime = trt.Runtime(self.log)
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"cannot deserialize the engine: {self.log.errors()}", where=str(plan_path),
                                     hint="engines only load on the GPU and TensorRT version that built them")
        self.context = self.engine.create_execution_context()
        self.stream = _cuda(self.cudart, self.cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_in = [self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
        self.inputs = [n for n, i in zip(names, is_in) if i]
        self.outputs = [n for n, i in zip(names, is_in) if not i]
        self.host: dict[str, np.ndarray] = {}
        self.device: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)

    def bind(self, ctx, feeds: Mapping[str, np.ndarray]) -> None:
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise DataError(f"missing feeds {missing}", where="feeds", hint=f"engine inputs: {self.inputs}")
        for n in self.inputs:
            arr = np.ascontiguousarray(feeds[n], dtype=self.trt.nptype(self.engine.get_tensor_dtype(n)))
            if not ctx.set_input_shape(n, arr.shape):
                raise DataError(f"input {n!r} shape {list(arr.shape)} is outside the engine's optimization profile",
                                where="feeds", hint=f"{self.log.errors() or 'rebuild with a wider profile'}")
            self.host[n] = arr
        for n in self.outputs:
            self.host[n] = np.empty(tuple(ctx.get_tensor_shape(n)), self.trt.nptype(self.engine.get_tensor_dtype(n)))
        for n, arr in self.host.items():
            ptr, size = self.device.get(n, (0, -1))
            if size < arr.nbytes:
                if ptr:
                    _cuda(self.cudart, self.cudart.cudaFree(ptr))
                ptr, size = _cuda(self.cudart, self.cudart.cudaMalloc(max(arr.nbytes, 1))), max(arr.nbytes, 1)
                self.device[n] = (ptr, size)
            ctx.set_tensor_address(n, int(ptr))

    def copy_in(self) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for n in self.inputs:
            arr = self.host[n]
            _cuda(self.cudart, self.cudart.cudaMemcpyAsync(self.device[n][0], arr.ctypes.data, arr.nbytes, kind,
                                                           self.stream))

    def copy_out(self) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for n in self.outputs:
            arr = self.host[n]
            _cuda(self.cudart, self.cudart.cudaMemcpyAsync(arr.ctypes.data, self.device[n][0], arr.nbytes, kind,
                                                           self.stream))

    def enqueue(self, ctx) -> None:
        if not ctx.execute_async_v3(int(self.stream)):
            raise UnsupportedError(f"execute_async_v3 failed: {self.log.errors()}", where="tensorrt")

    def sync(self) -> None:
        _cuda(self.cudart, self.cudart.cudaStreamSynchronize(self.stream))

    def __del__(self) -> None:
        try:
            for ptr, _ in self.device.values():
                self.cudart.cudaFree(ptr)
            self.cudart.cudaStreamDestroy(self.stream)
        except Exception:
            pass

"""TensorRT and CUDA plumbing: lazy imports, the logger, the builder, and running a built engine.

TensorRT (``tensorrt``) and the CUDA runtime bindings (``cuda.bindings.runtime`` from
cuda-python 12.6+/13, or the older ``cuda.cudart``) are imported only here and only when called,
so the rest of hwcompile works without them; every failure becomes a BackendUnavailable that
quotes the real error. ``Session`` holds one deserialized engine, its execution context, a
CUDA stream and device buffers.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ...errors import BackendUnavailable, DataError, UnsupportedError

__all__ = ["import_trt", "import_cudart", "logger", "builder", "cuda_call", "tensorrt_status", "gpu_capability",
           "Session", "load_engine"]


def import_trt():
    try:
        return importlib.import_module("tensorrt")
    except Exception as e:  # ImportError, or OSError when libnvinfer is missing
        reason = f"import tensorrt failed: {type(e).__name__}: {e}"
    raise BackendUnavailable(reason, where="tensorrt", hint="TensorRT 10/11 for this Python and an NVIDIA GPU")


def import_cudart():
    err: Exception | None = None
    for mod in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(mod)
        except ImportError as e:
            err = e
    raise BackendUnavailable(f"cuda-python is needed to run TensorRT engines: {err}", where="cuda-python",
                             hint="pip install 'hwcompile[tensorrt]'")


def logger(trt):
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


def builder(trt, log):
    try:
        b = trt.Builder(log)
    except Exception as e:  # pybind raises when the factory returns nullptr (no GPU / driver)
        raise BackendUnavailable(f"TensorRT {trt.__version__}: trt.Builder failed: {e}. {log.errors()}".strip(),
                                 where="tensorrt", hint="needs an NVIDIA GPU with a working driver") from None
    if b is None:
        raise BackendUnavailable(f"TensorRT {trt.__version__}: trt.Builder returned None. {log.errors()}".strip(),
                                 where="tensorrt")
    return b


def cuda_call(rt, result):
    """The values of a cuda-python call's ``(err, *values)`` tuple; BackendUnavailable on an error."""
    err, *vals = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendUnavailable(f"CUDA error {int(err)}: {rt.cudaGetErrorName(err)[1]}", where="cuda")
    return vals[0] if len(vals) == 1 else (vals or None)


def tensorrt_status() -> tuple[bool, str]:
    """(True, version) if ``import tensorrt`` works and a Builder can be made on a GPU, else (False, the real error)."""
    try:
        trt = import_trt()
        builder(trt, logger(trt))
    except BackendUnavailable as e:
        return False, e.message
    return True, f"TensorRT {trt.__version__}: builder created on the GPU"


def gpu_capability(device: int = 0) -> str:
    """The compute capability of CUDA device ``device`` as "major.minor" (e.g. "9.0")."""
    rt = import_cudart()
    attr = rt.cudaDeviceAttr
    major = cuda_call(rt, rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device))
    minor = cuda_call(rt, rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device))
    return f"{int(major)}.{int(minor)}"


def load_engine(plan_path: str | os.PathLike) -> Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]:
    """A callable running the engine on feeds (name -> array), returning outputs in engine order."""
    session = Session(plan_path)

    def run(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        session.bind(feeds)
        session.copy_in()
        session.enqueue()
        session.copy_out()
        session.sync()
        return [session.host[n].copy() for n in session.outputs]

    run.session = session  # type: ignore[attr-defined]  # keeps buffers alive with the callable
    return run


class Session:
    """One deserialized engine, its context, stream and device buffers; ``bind`` sets shapes and addresses."""

    def __init__(self, plan_path: str | os.PathLike):
        self.trt, self.cudart = import_trt(), import_cudart()
        trt, self.log = self.trt, logger(self.trt)
        self.runtime = trt.Runtime(self.log)
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"cannot deserialize the engine: {self.log.errors()}", where=str(plan_path),
                                     hint="engines only load on the GPU and TensorRT version that built them")
        self.context = self.engine.create_execution_context()
        self.stream = cuda_call(self.cudart, self.cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_in = [self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
        self.inputs = [n for n, i in zip(names, is_in) if i]
        self.outputs = [n for n, i in zip(names, is_in) if not i]
        self.host: dict[str, np.ndarray] = {}
        self.device: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)

    def bind(self, feeds: Mapping[str, np.ndarray]) -> None:
        ctx = self.context
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
                    cuda_call(self.cudart, self.cudart.cudaFree(ptr))
                ptr, size = cuda_call(self.cudart, self.cudart.cudaMalloc(max(arr.nbytes, 1))), max(arr.nbytes, 1)
                self.device[n] = (ptr, size)
            ctx.set_tensor_address(n, int(ptr))

    def copy_in(self) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for n in self.inputs:
            arr = self.host[n]
            cuda_call(self.cudart, self.cudart.cudaMemcpyAsync(self.device[n][0], arr.ctypes.data, arr.nbytes, kind,
                                                               self.stream))

    def copy_out(self) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for n in self.outputs:
            arr = self.host[n]
            cuda_call(self.cudart, self.cudart.cudaMemcpyAsync(arr.ctypes.data, self.device[n][0], arr.nbytes, kind,
                                                               self.stream))

    def enqueue(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise UnsupportedError(f"execute_async_v3 failed: {self.log.errors()}", where="tensorrt")

    def sync(self) -> None:
        cuda_call(self.cudart, self.cudart.cudaStreamSynchronize(self.stream))

    def engine_information(self) -> str:
        """The inspector's JSON for the whole engine (layers, types, tactics, fused ONNX nodes)."""
        inspector = self.engine.create_engine_inspector()
        return inspector.get_engine_information(self.trt.LayerInformationFormat.JSON)

    def __del__(self) -> None:
        try:
            for ptr, _ in self.device.values():
                self.cudart.cudaFree(ptr)
            self.cudart.cudaStreamDestroy(self.stream)
        except Exception:
            pass

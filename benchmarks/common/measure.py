"""Side-by-side measurement helpers: every configuration is an ONNX model run by onnxruntime with
the same session options in the same process; latencies are interleaved over rounds so drift on the
machine hits all configurations alike. Results go to JSON with the machine noted."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import onnxruntime as ort

RESULTS = Path(__file__).resolve().parents[1] / "results"


def session(model: str | Path | bytes, threads: int = 0) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    data = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def interleaved_latency(sessions: Mapping[str, ort.InferenceSession], feeds: Mapping[str, np.ndarray], *,
                        rounds: int = 5, repeats: int = 40, warmup: int = 10) -> dict[str, dict]:
    """Median over all timed runs (ms) and IQR per configuration, runs interleaved by round."""
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for name, s in sessions.items():
        f = {i.name: feeds[i.name] for i in s.get_inputs()}
        for _ in range(warmup):
            s.run(None, f)
    for _ in range(rounds):
        for name, s in sessions.items():
            f = {i.name: feeds[i.name] for i in s.get_inputs()}
            for _ in range(repeats):
                t0 = time.perf_counter()
                s.run(None, f)
                samples[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name, xs in samples.items():
        q1, q3 = np.percentile(xs, [25, 75])
        out[name] = {"latency_ms": statistics.median(xs), "iqr_ms": float(q3 - q1), "runs": len(xs)}
    return out


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text()
        isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in flags]
    except OSError:
        isa = []
    return {"cpu": cpu, "isa": isa, "cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "onnxruntime": ort.__version__}


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"), **result}, indent=2,
                              default=float) + "\n")
    os.replace(tmp, path)
    return path


def file_size(path: str | Path) -> int:
    p = Path(path)
    extra = p.with_name(p.name + ".data")
    return p.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


Timer = Callable[[], float]

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

from hwcompile.atomic import write_text_atomic

RESULTS = Path(__file__).resolve().parents[1] / "results"


def session(model: str | Path | bytes, threads: int = 0) -> ort.InferenceSession:
    """Every model, peers included, runs with the session options hwcompile's onnxruntime artifacts
    carry (optimizations "all", intra-op spinning off: otherwise the idle pools of the other
    interleaved sessions spin on the cores of the one being timed; EfficientNet FP32 6.6 ms -> 10.3 ms,
    IQR 0.2 -> 7 ms)."""
    data = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(data, _options(threads), providers=["CPUExecutionProvider"])


def _options(threads: int) -> ort.SessionOptions:
    from hwcompile.backends.onnxruntime import session_options

    return session_options({"intra_op_num_threads": threads})


def interleaved_calls(calls: Mapping[str, Callable[[], object]], *, rounds: int = 5, repeats: int = 40,
                      warmup: int = 10) -> dict[str, dict]:
    """Median over all timed calls (ms) and IQR per configuration, calls interleaved by round."""
    samples: dict[str, list[float]] = {k: [] for k in calls}
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    for _ in range(rounds):
        for name, fn in calls.items():
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name, xs in samples.items():
        q1, q3 = np.percentile(xs, [25, 75])
        out[name] = {"latency_ms": statistics.median(xs), "iqr_ms": float(q3 - q1), "runs": len(xs)}
    return out


def interleaved_latency(sessions: Mapping[str, ort.InferenceSession], feeds: Mapping[str, np.ndarray], *,
                        rounds: int = 5, repeats: int = 40, warmup: int = 10) -> dict[str, dict]:
    """:func:`interleaved_calls` of ``session.run`` on ``feeds`` (each session takes its own inputs)."""
    def call(s: ort.InferenceSession) -> Callable[[], object]:
        f = {i.name: feeds[i.name] for i in s.get_inputs()}
        return lambda: s.run(None, f)

    return interleaved_calls({k: call(s) for k, s in sessions.items()}, rounds=rounds, repeats=repeats, warmup=warmup)


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
    write_text_atomic(path, json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"), **result}, indent=2,
                                       default=float) + "\n")
    return path


def file_size(path: str | Path) -> int:
    p = Path(path)
    extra = p.with_name(p.name + ".data")
    return p.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


Timer = Callable[[], float]



def kernel_time_by_op(models: Mapping[str, str | Path], feeds: Mapping[str, np.ndarray], *, rounds: int = 6,
                      runs: int = 10, warmup: int = 3, threads: int = 1) -> dict[str, dict]:
    """onnxruntime's profiler, models interleaved round by round (a fresh profiled session per model
    and round): per model, the summed kernel time per run (ms), by op type and in total, and its ratio
    to the first model's in the same round (median over rounds).

    Kernel times leave out the Python call and session overhead, and pairing by round cancels most
    of the drift of a shared machine; two models running the same kernels come out near 1.0."""
    import collections
    import tempfile

    tmp = tempfile.mkdtemp(prefix="kprof-")
    per_round: dict[str, list[float]] = {k: [] for k in models}
    by_op_total = {k: collections.Counter() for k in models}
    for _ in range(rounds):
        for name, path in models.items():
            so = _options(threads)
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tmp, "p")
            s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            f = {i.name: feeds[i.name] for i in s.get_inputs()}
            for _ in range(warmup + runs):
                s.run(None, f)
            prof = Path(s.end_profiling())
            events = json.loads(prof.read_text())
            prof.unlink()
            starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
            cut = starts[warmup] if len(starts) > warmup else 0   # kernels of the warm-up runs are left out
            by_op: collections.Counter = collections.Counter()
            for e in events:
                if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= cut:
                    by_op[e["args"]["op_name"]] += e["dur"]
            per_round[name].append(sum(by_op.values()) / runs / 1e3)
            for op, us in by_op.items():
                by_op_total[name][op] += us / runs / 1e3 / rounds
    first = next(iter(models))
    out = {}
    for name in models:
        ratios = [a / b for a, b in zip(per_round[name], per_round[first])]
        out[name] = {"kernel_ms_median": statistics.median(per_round[name]), "threads": threads,
                     "rounds": rounds, "runs_per_round": runs,
                     f"ratio_to_{first}_median": statistics.median(ratios),
                     "lower_than_first_in_rounds": sum(r < 1.0 for r in ratios) / len(ratios),
                     "by_op_ms": {op: round(ms, 4) for op, ms in by_op_total[name].most_common()}}
    return out

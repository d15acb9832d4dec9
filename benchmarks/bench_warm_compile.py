"""Cold vs warm compile of EfficientNet-Lite0 (INT8 and a mixed search) through the CLI, same cache.

Each round uses a fresh ``HWCOMPILE_CACHE_DIR``: the first compile (cold) fills it, the second
(warm, identical command) replays it. Both are whole ``hwcompile compile`` processes timed wall
clock (Python start-up and imports included, as a pipeline step pays them). The warm output must be
byte-identical (model.onnx, plan.json, report.json, latency.json). Calibration: 100 even-class
ImageNet sample images; evaluation: the first 100 odd-class ones. Results:
benchmarks/results/warm_compile.json.

    flock /tmp/hwc-bench.lock python benchmarks/bench_warm_compile.py [--rounds 1] [--only int8|mixed]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common.data import imagenet_calib_eval  # noqa: E402
from benchmarks.common.export import cached_efficientnet_lite0  # noqa: E402
from benchmarks.common.measure import log, save  # noqa: E402

SAME = ("model.onnx", "plan.json", "report.json", "latency.json")


def cpu_info() -> dict:
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(),
            "isa": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "f16c"))}


def compile_once(args: list[str], cache: Path) -> tuple[float, dict, list[float]]:
    env = {**os.environ, "HWCOMPILE_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "hwcompile.cli", "compile", *args], env=env, capture_output=True,
                       text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"compile failed ({r.returncode}): {r.stderr[-2000:]}")
    out = Path(args[args.index("-o") + 1])
    times = json.loads((out / "timings.json").read_text())
    return wall, times.get("measurements", {}), [*load0, *os.getloadavg()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", choices=["int8", "mixed"])
    opt = ap.parse_args()
    model = cached_efficientnet_lite0()
    calib, xe, ye = imagenet_calib_eval(quick=True)
    result: dict = {"model": "EfficientNet-Lite0 (benchmarks/.cache/efficientnet_lite0.onnx), batch 1, 224x224",
                    "cpu": cpu_info(), "calibration": "100 even-class ImageNet samples",
                    "evaluation": "first 100 odd-class ImageNet samples", "runs": {},
                    "note": "wall time of whole `hwcompile compile` processes; loadavg = (1, 5, 15 min) before "
                            "and after each run: other helpers' tests shared the machine"}
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "calib.npz", input=calib.inputs["input"])
        np.savez(tmp / "eval.npz", input=xe, label=ye)
        base = [str(model), "--calib", str(tmp / "calib.npz"), "--eval", str(tmp / "eval.npz"), "--labels", "label"]
        for precision in ([opt.only] if opt.only else ["int8", "mixed"]):
            rows = []
            for k in range(opt.rounds):
                cache = tmp / f"cache-{precision}-{k}"
                cold_dir, warm_dir = tmp / f"{precision}-{k}-cold", tmp / f"{precision}-{k}-warm"
                log(f"{precision} round {k}: cold")
                cold, m_cold, load_cold = compile_once(base + ["--precision", precision, "-o", str(cold_dir)], cache)
                log(f"{precision} round {k}: warm")
                warm, m_warm, load_warm = compile_once(base + ["--precision", precision, "-o", str(warm_dir)], cache)
                same = {f: (cold_dir / f).read_bytes() == (warm_dir / f).read_bytes() for f in SAME}
                rows.append({"cold_s": cold, "warm_s": warm, "speedup": cold / warm, "identical": same,
                             "profiles_cold": m_cold, "profiles_warm": m_warm, "loadavg_cold": load_cold,
                             "loadavg_warm": load_warm})
                log(f"{precision}: cold {cold:.1f} s, warm {warm:.1f} s ({cold / warm:.1f}x), identical {same}")
            speed = [r["speedup"] for r in rows]
            result["runs"][precision] = {"rounds": rows, "speedup_min": min(speed), "speedup_max": max(speed)}
            save("warm_compile", result)     # after each configuration: a cut-short run keeps what it measured


if __name__ == "__main__":
    main()

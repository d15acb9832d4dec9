"""Calibration memory at 1x and 10x samples: EfficientNet-Lite0 (ImageNet images) and MiniLM (STS-B
sentences).

Each point runs in its own process: load the model (hwcompile import + clean-up), build the
calibration Dataset (its arrays are the user's data and grow with the sample count; they are in
memory before the measurement starts), reset the kernel's peak-RSS mark (``/proc/self/clear_refs``),
run ``quant.calibration.calibrate`` over every sample (histograms of every float activation and the
per-channel input means), and read the new peak (VmHWM). Reported: the peak RSS *added* by
calibration, and the ratio 10x / 1x (the claim: calibration memory does not grow with samples).

    PYTHONPATH=. flock /tmp/hwc-bench.lock python benchmarks/bench_calib_memory.py
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "calib_memory.json"


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def point(model: str, n: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from benchmarks.common import data as bdata
    from benchmarks.common import export
    from hwcompile.data import Dataset
    from hwcompile.ir import load
    from hwcompile.passes import cleanup
    from hwcompile.plan import QuantSettings
    from hwcompile.quant.calibration import calibrate

    if model == "efficientnet_lite0":
        graph = cleanup(load(export.cached_efficientnet_lite0()))
        x, _ = bdata.imagenet_samples("even", limit=n)
        ds = Dataset({graph.main.inputs[0].name: np.ascontiguousarray(x[:n])}, source=f"imagenet-even-{n}")
    else:
        graph = cleanup(load(export.cached_minilm()))
        pairs = bdata.stsb_test()
        sentences = [s for a, b, _ in pairs for s in (a, b)][:n]
        ds = Dataset(export.minilm_tokenize(sentences), source=f"stsb-{n}")
    assert len(ds) == n, (len(ds), n)
    data_bytes = sum(v.nbytes for v in ds.inputs.values())
    before = _kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
    cal = calibrate(graph, ds, [], [], QuantSettings(), limit=None)
    peak = _kib("VmHWM")
    return {"model": model, "samples": n, "data_mib": round(data_bytes / 2 ** 20, 1),
            "rss_before_mib": round(before / 1024, 1), "peak_mib": round(peak / 1024, 1),
            "calibration_added_mib": round((peak - before) / 1024, 1), "tensors": len(cal.stats)}


def main() -> None:
    if len(sys.argv) == 3:
        print(json.dumps(point(sys.argv[1], int(sys.argv[2]))))
        return
    load0 = os.getloadavg()
    rows = []
    for model, base in (("efficientnet_lite0", 32), ("minilm", 32)):
        for n in (base, 10 * base):
            r = subprocess.run([sys.executable, __file__, model, str(n)], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    ratios = {}
    for model in ("efficientnet_lite0", "minilm"):
        a, b = [r for r in rows if r["model"] == model]
        ratios[model] = round(b["calibration_added_mib"] / a["calibration_added_mib"], 3)
    flags = Path("/proc/cpuinfo").read_text()
    cpu = next(ln.split(":", 1)[1].strip() for ln in flags.splitlines() if ln.startswith("model name"))
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni") if f" {f} " in flags]
    OUT.write_text(json.dumps({"benchmark": "calibration peak RSS, 1x vs 10x samples", "rows": rows,
                               "ratio_10x_over_1x": ratios, "cpu": cpu, "isa": isa,
                               "python": platform.python_version(), "load_before": load0,
                               "load_after": os.getloadavg(),
                               "note": "other helpers' tests and benchmarks shared the 2 cores"}, indent=1) + "\n")
    print(ratios)


if __name__ == "__main__":
    main()

"""EfficientNet-Lite0 on this CPU: hwcompile's TVM backend (x86-tvm) vs onnxruntime, same process.

Configurations, all on the BN-folded, cleaned graph hwcompile compiles (the ORT peer runs the same
graph with ORT_ENABLE_ALL, its own fusions and MLAS kernels):

- ``ort_fp32``: onnxruntime CPU EP.
- ``tvm_fp32``: TVM Relax, LLVM for the host CPU, default (untuned) schedules.
- ``tvm_fp32_tuned`` (``--tune N``): after N MetaSchedule trials; the records persist under the cache.
- ``tvm_int8`` (``--int8``): hwcompile's INT8 Q/DQ plan lowered by TVM. TVM's LLVM path runs Q/DQ as
  float fake-quantization (weights pre-dequantized, activations quantize->dequantize in float), so
  this is an accuracy emulation and is expected to be *slower* than FP32, not faster.

Latency: every configuration is called through the same Python loop (perf_counter around one
batch-1 run; TVM inputs are bound as device tensors once, ORT gets the numpy array), rounds
interleaved so machine drift hits all alike. Agreement: top-1 of TVM vs ORT on ImageNet samples
(odd classes; calibration for INT8 uses even classes). Results: benchmarks/results/tvm.json.

    python benchmarks/bench_tvm.py [--int8] [--tune N] [--images 100]

Builds (and tuning) run unlocked; the script takes the shared benchmark lock (``--lock``, default
/tmp/hwc-bench.lock, flock) only around the accuracy and latency measurements.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common.data import imagenet_samples  # noqa: E402
from benchmarks.common.export import cached_efficientnet_lite0  # noqa: E402
from benchmarks.common.measure import interleaved_calls, log, save, session  # noqa: E402
from hwcompile.backends.base import get_backend  # noqa: E402
from hwcompile.backends.tvm.run import default_threads, open_session  # noqa: E402
from hwcompile.backends.tvm import TVMSettings  # noqa: E402
from hwcompile.data import Dataset  # noqa: E402
from hwcompile.ir import load  # noqa: E402
from hwcompile.ir import save as save_onnx  # noqa: E402
from hwcompile.passes import cleanup  # noqa: E402
from hwcompile.contract import PrecisionPlan  # noqa: E402
from hwcompile.targets import load_target  # noqa: E402
from hwcompile.passes.plan import apply_plan  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--int8", action="store_true", help="also the INT8 (fake-quant under TVM) plan")
    ap.add_argument("--tune", type=int, default=0, help="MetaSchedule trials for a tuned TVM build (0: skip)")
    ap.add_argument("--images", type=int, default=100, help="evaluation images for top-1 agreement")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--name", default="tvm")
    ap.add_argument("--lock", default="/tmp/hwc-bench.lock", help="flock file held while measuring")
    args = ap.parse_args()

    backend = get_backend("tvm")
    target = load_target("x86-tvm")
    graph = cleanup(load(cached_efficientnet_lite0()))
    x_eval, y_eval = imagenet_samples("odd", limit=args.images)
    feed = {"input": x_eval[:1]}
    result: dict = {"model": "EfficientNet-Lite0 (benchmarks/.cache/efficientnet_lite0.onnx), batch 1, 224x224",
                    "tvm_versions": backend.versions(), "tvm_threads": default_threads(TVMSettings.from_target(target)),
                    "ort_threads": "onnxruntime default (intra_op_num_threads=0: physical cores)",
                    "timer": "python perf_counter around one run, same loop for all, rounds interleaved",
                    "notes": []}
    with tempfile.TemporaryDirectory(prefix="bench-tvm-") as tmp:
        tmp = Path(tmp)
        save_onnx(graph, tmp / "clean.onnx")
        ort_sess = session(tmp / "clean.onnx")
        runs = {"ort_fp32": lambda: ort_sess.run(None, feed)}
        builds: dict[str, tuple] = {}

        def lower(name, g, plan, tgt):
            t0 = time.perf_counter()
            art = backend.lower(g, plan, tgt, tmp / name)
            builds[name] = (art, tgt)
            result.setdefault("build_s", {})[name] = round(time.perf_counter() - t0, 1)
            result.setdefault("tuning", {})[name] = art.info["tuning"]
            log(f"{name}: built in {result['build_s'][name]} s, tuning {art.info['tuning']}")

        lower("tvm_fp32", graph, PrecisionPlan.uniform("fp32"), target)
        if args.tune:
            tuned = dataclasses.replace(target, settings={**target.settings, "tune_trials": args.tune})
            try:
                lower("tvm_fp32_tuned", graph, PrecisionPlan.uniform("fp32"), tuned)
            except Exception as e:  # recorded, not hidden: e.g. a MetaSchedule crash in the child
                result["notes"].append(f"tuned build failed: {e}")
                log(f"tuned build failed: {e}")
        if args.int8:
            x_cal, _ = imagenet_samples("even", limit=32)
            calib = Dataset({"input": x_cal}, None, "imagenet even classes (32)")
            g8 = apply_plan(graph.clone(), PrecisionPlan.uniform("int8"), backend.qdq_style(target), calib)
            lower("tvm_int8", g8, PrecisionPlan.uniform("int8"), target)
            result["notes"].append("tvm_int8 is fake quantization under TVM's LLVM path (relax.quantize/dequantize "
                                   "in float, constant weights pre-dequantized); only the classifier Gemm runs the integer kernel (backends/tvm/kernels/): no speed-up expected")
        agree = {}
        log(f"waiting for {args.lock}")
        lock = contextlib.ExitStack()
        fd = lock.enter_context(open(args.lock, "a"))
        fcntl.flock(fd, fcntl.LOCK_EX)
        lock.callback(fcntl.flock, fd, fcntl.LOCK_UN)
        log("lock held")
        for name, (art, tgt) in builds.items():
            s = open_session(art.path("engine"), TVMSettings.from_target(tgt))
            tensors = s.tensors(feed, ["input"])
            runs[name] = (lambda vm, t: (lambda: vm["main"](*t)))(s.vm, tensors)
            hits = 0
            top1_ort = top1_tvm = 0
            for i in range(len(x_eval)):
                f = {"input": x_eval[i:i + 1]}
                a = int(np.argmax(ort_sess.run(None, f)[0]))
                b = int(np.argmax(s.run(f, ["input"])[0]))
                hits += a == b
                top1_ort += a == y_eval[i]
                top1_tvm += b == y_eval[i]
            agree[name] = {"top1_agreement_with_ort_fp32": hits / len(x_eval), "top1": top1_tvm / len(x_eval),
                           "ort_fp32_top1": top1_ort / len(x_eval), "images": len(x_eval)}
            log(f"{name}: {agree[name]}")
        log("latency, interleaved")
        lat = interleaved_calls(runs, rounds=args.rounds, repeats=args.repeats, warmup=5)
        lock.close()
    base = lat["ort_fp32"]["latency_ms"]
    for name, r in lat.items():
        r["speedup_vs_ort_fp32"] = base / r["latency_ms"]
        log(f"{name}: {r['latency_ms']:.2f} ms (IQR {r['iqr_ms']:.2f}), x{r['speedup_vs_ort_fp32']:.2f} vs ORT FP32")
    result.update(latency=lat, accuracy=agree)
    if not args.tune:
        result["notes"].append("no tuned TVM build in this run (--tune 0)")
    print(save(args.name, result))


if __name__ == "__main__":
    main()

"""The integer dense kernel (the TVM kernel table, hwcompile/backends/tvm/kernels/) against the stock paths, on MiniLM's GEMM shapes.

One ONNX model per shape (M=128 rows, as one MiniLM sequence of 128 tokens):

- fp32: ``y = x @ W`` (W a float constant [K, N]);
- int8: ``y = DQ(Q(x)) @ DQ(W_int8, per output channel)`` with a float output, the dense layer of
  hwcompile's INT8 Q/DQ plans (uint8 activations, symmetric int8 weights);

run as

- ``tvm_fp32``: TVM, stock lowering (untuned default schedules, as hwcompile's x86-tvm target builds);
- ``tvm_int8_stock``: TVM, the int8 model with ``int8_kernels = false``: float fake-quantization;
- ``tvm_int8_kernel``: TVM, the int8 model with the integer kernel (the default);
- ``ort_fp32`` / ``ort_int8``: onnxruntime CPU EP, ORT_ENABLE_ALL, same models (for the int8 model ORT
  fuses DQ->MatMul into its integer kernels, MatMulIntegerToFloat on x86).

Builds run unlocked; the script takes the shared benchmark lock (``--lock``, flock) only around the
measurements. All configurations are called through the same Python loop (perf_counter around one call, inputs bound
once), rounds interleaved. TVM runs on every core (TVM_NUM_THREADS unset), onnxruntime with its default
(intra_op_num_threads=0: physical cores). Results: benchmarks/results/tvm_int8_kernel.json.

    python benchmarks/bench_tvm_int8_kernel.py [--rounds 5 --repeats 10] [--lock /tmp/hwc-bench.lock --lock-wait 2400]
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common.measure import interleaved_calls, log, save, session  # noqa: E402
from hwcompile.backends.base import get_backend  # noqa: E402
from hwcompile.backends.tvm import TVMSettings  # noqa: E402
from hwcompile.backends.tvm.run import default_threads, open_session  # noqa: E402
from hwcompile.ir import from_proto  # noqa: E402
from hwcompile.contract import PrecisionPlan  # noqa: E402
from hwcompile.targets import load_target  # noqa: E402

SHAPES = [(128, 384, 1536), (128, 1536, 384), (128, 384, 384)]  # MiniLM FFN up, FFN down, attention projections


def models(m: int, k: int, n: int, seed: int = 0) -> tuple[onnx.ModelProto, onnx.ModelProto, dict]:
    """(fp32 model, int8 Q/DQ model, feeds) for one GEMM shape."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    io = ([helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])])
    opset = [helper.make_opsetid("", 19)]
    fp32 = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "fp32", *io,
                                               [numpy_helper.from_array(w, "w")]), opset_imports=opset)
    sw = np.abs(w).max(0) / 127
    wq = np.clip(np.round(w / sw), -127, 127).astype(np.int8)
    lo, hi = float(x.min()), float(x.max())
    sx = (hi - lo) / 255
    zx = np.uint8(np.clip(round(-lo / sx), 0, 255))
    t = numpy_helper.from_array
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    inits = [t(np.float32(sx), "sx"), t(zx, "zx"), t(wq, "wq"), t(sw.astype(np.float32), "sw"), t(np.zeros(n, np.int8), "zw")]
    int8 = helper.make_model(helper.make_graph(nodes, "int8", *io, inits), opset_imports=opset)
    return fp32, int8, {"x": x}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--name", default="tvm_int8_kernel")
    ap.add_argument("--lock", default="/tmp/hwc-bench.lock", help="flock file held while measuring (builds run unlocked)")
    ap.add_argument("--lock-wait", type=int, default=2400, help="seconds to wait for the lock before giving up")
    args = ap.parse_args()

    backend = get_backend("tvm")
    target = load_target("x86-tvm")
    stock = dataclasses.replace(target, settings={**target.settings, "int8_kernels": False})
    result: dict = {"what": "one dense layer, M=128 rows (one MiniLM sequence), fp32 vs INT8 Q/DQ, TVM and onnxruntime",
                    "tvm_versions": backend.versions(), "tvm_threads": default_threads(TVMSettings.from_target(target)),
                    "ort_threads": "onnxruntime default (intra_op_num_threads=0: physical cores)",
                    "timer": "python perf_counter around one call, same loop for all, rounds interleaved",
                    "rounds": args.rounds, "repeats": args.repeats, "shapes": {}}
    with tempfile.TemporaryDirectory(prefix="bench-int8k-") as tmp:
        prepared = {}
        for m, k, n in SHAPES:  # build everything first, unlocked
            key = f"M{m}_K{k}_N{n}"
            fp32, int8, feeds = models(m, k, n)
            runs, outs, kernel_info = {}, {}, {}
            for name, model, tgt in (("tvm_fp32", fp32, target), ("tvm_int8_stock", int8, stock),
                                     ("tvm_int8_kernel", int8, target)):
                art = backend.lower(from_proto(model), PrecisionPlan.uniform("int8"), tgt, Path(tmp) / key / name)
                kernel_info[name] = art.info["tuning"]["kernels"]
                s = open_session(art.path("engine"), TVMSettings.from_target(tgt))
                tensors = s.tensors(feeds, ["x"])
                runs[name] = (lambda vm, t: (lambda: vm["main"](*t)))(s.vm, tensors)
                outs[name] = s.run(feeds, ["x"])[0]
            for name, model in (("ort_fp32", fp32), ("ort_int8", int8)):
                sess = session(model.SerializeToString())
                runs[name] = (lambda se, f: (lambda: se.run(None, f)))(sess, feeds)
                outs[name] = sess.run(None, feeds)[0]
            assert kernel_info["tvm_int8_kernel"]["used"] and not kernel_info["tvm_int8_stock"].get("used")
            prepared[(m, k, n)] = (runs, outs, kernel_info)
            log(f"{key}: built")
        log(f"waiting for {args.lock}")
        with open(args.lock, "a") as fd:
            def give_up(*_):
                raise SystemExit(f"{args.lock} still held after {args.lock_wait} s; nothing measured")

            signal.signal(signal.SIGALRM, give_up)
            signal.alarm(args.lock_wait)  # a blocking flock (queued like the others), with a time limit
            fcntl.flock(fd, fcntl.LOCK_EX)
            signal.alarm(0)
            log("lock held")
            try:
                for (m, k, n), (runs, outs, kernel_info) in prepared.items():
                    key = f"M{m}_K{k}_N{n}"
                    lat = interleaved_calls(runs, rounds=args.rounds, repeats=args.repeats, warmup=5)
                    ref = outs["tvm_int8_stock"]
                    scale = float(np.abs(ref).max())
                    ms = {k2: v["latency_ms"] for k2, v in lat.items()}
                    result["shapes"][key] = {
                        "latency": lat,
                        "speedup_kernel_vs_tvm_fp32": ms["tvm_fp32"] / ms["tvm_int8_kernel"],
                        "speedup_kernel_vs_tvm_int8_stock": ms["tvm_int8_stock"] / ms["tvm_int8_kernel"],
                        "ratio_kernel_vs_ort_int8": ms["tvm_int8_kernel"] / ms["ort_int8"],
                        "ratio_kernel_vs_ort_fp32": ms["tvm_int8_kernel"] / ms["ort_fp32"],
                        "gops_kernel": 2 * m * k * n / ms["tvm_int8_kernel"] / 1e6,
                        "max_rel_diff_vs_tvm_int8_stock": {k2: float(np.abs(outs[k2] - ref).max()) / scale
                                                           for k2 in ("tvm_int8_kernel", "ort_int8", "tvm_fp32")},
                        "kernel_used": kernel_info["tvm_int8_kernel"]["used"],
                    }
                    log(f"{key}: " + ", ".join(f"{k2} {v:.3f} ms" for k2, v in ms.items()))
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
    result["notes"] = [
        "ratios: speedup_* = other / kernel (>1: kernel faster); ratio_kernel_vs_ort_* = kernel / ort (>1: ORT faster)",
        "tvm_fp32 and tvm_int8_stock are TVM's untuned default schedules (hwcompile's x86-tvm default, tune_trials = 0)",
        "max_rel_diff: max |out - tvm_int8_stock| / max |tvm_int8_stock|; the kernel is exact int32 accumulation, "
        "ORT's AVX2 u8s8 path may saturate int16 pairs",
    ]
    path = save(args.name, result)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()

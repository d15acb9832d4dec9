"""Recovery training on real models, host CPU: each compression without and with recovery.

Parts (each merges its section into benchmarks/results/recover.json, machine and load noted):

- ``effnet24``: EfficientNet-Lite0, 2:4 on the pointwise/Gemm layers (SparseGPT masks + least-squares
  refit, the best one-shot configuration of bench_pruning), then distillation against the FP32 model.
- ``channels``: channel pruning removing 30 % of the prunable FLOPs (refit-error allocation + refit, as in
  bench_pruning), then distillation; latency against FP32 interleaved in one process.
- ``int8ch``: the same channel pruning + static INT8 (host-cpu Q/DQ), then quantization-aware distillation
  (fake-quant Q/DQ, straight-through); latency against FP32.
- ``minilm24``: all-MiniLM-L6-v2, 2:4 on its 36 weight MatMuls (SparseGPT + refit), then distillation of
  the last hidden state (relative MSE over the non-padding tokens).

Data: ImageNet: calibration and training on the 500 even-class samples and their mirror images,
top-1/5 on the 500 odd-class ones. STS-B: calibration and training on the sentences of the first 500
pairs, Spearman on the other 879. The EfficientNet export with a dynamic batch is used (the same
weights; the static one reshapes to [1, -1]), so training runs batches.

    python benchmarks/bench_recover.py [--parts effnet24,channels,int8ch,minilm24] [--minutes M] [--mode distill|block]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common.data import imagenet_samples, stsb_test  # noqa: E402
from benchmarks.common.export import (CACHE_DIR, cached_minilm, eval_imagenet_top1_top5,  # noqa: E402
                                      eval_stsb_spearman, export_efficientnet_lite0, minilm_tokenize)
from benchmarks.common.measure import RESULTS, interleaved_latency, log, machine, session  # noqa: E402
from hwcompile.analysis.stats import model_summary  # noqa: E402
from hwcompile.backends.base import get_backend  # noqa: E402
from hwcompile.data import Dataset  # noqa: E402
from hwcompile.ir import Graph, load, to_bytes  # noqa: E402
from hwcompile.passes import cleanup  # noqa: E402
from hwcompile.plan import PrecisionPlan  # noqa: E402
from hwcompile.recover import RecoverSettings, recover_compiled  # noqa: E402
from hwcompile.targets import load_target  # noqa: E402
from hwcompile.transform import apply_plan  # noqa: E402

PARTS = ("effnet24", "channels", "int8ch", "minilm24")
SEQ = 128
RECON = dict(prune_refit_prior="weight", prune_ridge=1e-2)
CHANNELS = dict(prune_channel_importance="activation", prune_ridge=1e-2, prune_channel_max_ratio=0.5,
                prune_channel_multiple=8)


def effnet_graph() -> Graph:
    path = CACHE_DIR / "efficientnet_lite0_dynbatch.onnx"
    if not path.is_file():
        export_efficientnet_lite0(path, dynamic_batch=True)
    return cleanup(load(path))


def imagenet(n_calib: int | None = None):
    xc, _ = imagenet_samples("even")
    if n_calib:
        xc = xc[:: max(1, len(xc) // n_calib)][:n_calib]
    xc = np.ascontiguousarray(np.concatenate([xc, xc[..., ::-1]]))
    xe, ye = imagenet_samples("odd")
    return Dataset({"input": xc}, source=f"imagenet-even-{len(xc) // 2}+flips"), xe, ye


def plan_with(precision: str, sparsity: str, **notes) -> PrecisionPlan:
    plan = PrecisionPlan.uniform(precision, sparsity)
    plan.notes.update(notes)
    return plan


def top1(g: Graph, xe, ye) -> dict:
    s = session(to_bytes(g))
    t1, t5 = eval_imagenet_top1_top5(lambda f: s.run(None, f), xe, ye, batch=25, input_name="input")
    return {"top1": t1, "top5": t5}


def compress(graph, plan, calib):
    style = get_backend("onnxruntime").qdq_style(load_target("host-cpu"))
    t0 = time.perf_counter()
    g = apply_plan(graph.clone(), plan, style, calib)
    return g, time.perf_counter() - t0


def recovered(graph, g, plan, data, settings):
    import copy

    meta, g = g.meta, g.clone()
    g.meta = copy.deepcopy(meta)         # prune_skipped: the layers left dense carry no mask
    t0 = time.perf_counter()
    recover_compiled(g, graph, plan, settings, data, progress=_ticker())
    rep = g.meta["recovery"]
    return g, time.perf_counter() - t0, rep


def _ticker():
    last = [0.0]

    def tick(msg: str) -> None:
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            log(f"    {msg}")
    return tick


def latency(models: dict[str, Graph], feeds) -> dict:
    import fcntl

    with open("/tmp/hwc-bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        load0 = os.getloadavg()
        res = interleaved_latency({k: session(to_bytes(g)) for k, g in models.items()}, feeds, rounds=5, repeats=40)
        res["_load"] = {"before": load0, "after": os.getloadavg()}
    return res


def image_part(name: str, plan: PrecisionPlan, settings: RecoverSettings, n_calib: int | None, timed: bool) -> dict:
    graph = effnet_graph()
    calib, xe, ye = imagenet(n_calib)
    train, _, _ = imagenet(None)
    plan.notes.setdefault("prune_calib_samples", len(calib))
    log(f"{name}: compress ({plan.default.candidate}, {plan.default.sparsity})")
    g0, secs = compress(graph, plan, calib)
    out = {"fp32": top1(graph, xe, ye)}
    out["compressed"] = {**top1(g0, xe, ye), "compress_seconds": round(secs, 1)}
    log(f"  fp32 {out['fp32']['top1']:.3f}; without recovery top1 {out['compressed']['top1']:.3f} ({secs:.0f} s)")
    g1, rsecs, rep = recovered(graph, g0, plan, train, settings)
    out["recovered"] = {**top1(g1, xe, ye), "recover_minutes": round(rsecs / 60, 2), "recovery": rep}
    log(f"  with recovery top1 {out['recovered']['top1']:.3f} ({rsecs / 60:.1f} min, {rep['steps']} steps)")
    f0 = model_summary(graph)["flops"]
    out["compressed"]["flops_removed"] = 1 - model_summary(g0)["flops"] / f0
    if timed:
        feeds = {"input": xe[:1]}
        lat = latency({"fp32": graph, "compressed": g0, "recovered": g1}, feeds)
        for k in ("compressed", "recovered"):
            out[k]["latency_ms"] = lat[k]["latency_ms"]
            out[k]["speedup_vs_fp32"] = lat["fp32"]["latency_ms"] / lat[k]["latency_ms"]
        out["fp32"]["latency_ms"] = lat["fp32"]["latency_ms"]
        out["latency"] = lat
        log(f"  speed-up vs fp32: {out['recovered']['speedup_vs_fp32']:.2f}x")
    return {"model": "EfficientNet-Lite0", "plan": {"precision": plan.default.candidate,
                                                     "sparsity": plan.default.sparsity, "notes": dict(plan.notes)},
            "calibration": calib.source, "training": train.source, "evaluation": f"{len(xe)} odd-class samples",
            "settings": _settings(settings), "results": out}


def part_minilm24(settings: RecoverSettings) -> dict:
    pairs = stsb_test()
    fit_pairs, eval_pairs = pairs[:500], pairs[500:]
    graph = cleanup(load(cached_minilm(SEQ)))
    sentences = [s for p in fit_pairs for s in p[:2]]
    data = Dataset(dict(minilm_tokenize(sentences, SEQ)), source="stsb-first-500-pairs")
    plan = plan_with("fp32", "2:4", prune_importance="sparsegpt", prune_token_mask="attention_mask",
                     prune_calib_samples=len(sentences), **RECON)

    def rho(g):
        s = session(to_bytes(g))
        names = {i.name for i in s.get_inputs()}
        return eval_stsb_spearman(lambda f: s.run(None, {k: v for k, v in f.items() if k in names}), eval_pairs,
                                  seq_len=SEQ, batch=32)

    log("minilm24: compress")
    g0, secs = compress(graph, plan, data)
    out = {"fp32": {"spearman": rho(graph)}, "compressed": {"spearman": rho(g0), "compress_seconds": round(secs, 1)}}
    log(f"  dense {out['fp32']['spearman']:.4f}; without recovery {out['compressed']['spearman']:.4f}")
    g1, rsecs, rep = recovered(graph, g0, plan, data, settings)
    out["recovered"] = {"spearman": rho(g1), "recover_minutes": round(rsecs / 60, 2), "recovery": rep}
    log(f"  with recovery {out['recovered']['spearman']:.4f} ({rsecs / 60:.1f} min, {rep['steps']} steps)")
    return {"model": "all-MiniLM-L6-v2", "plan": {"sparsity": "2:4", "notes": dict(plan.notes)},
            "calibration": data.source, "training": data.source, "evaluation": f"STS-B test pairs 500.. ({len(eval_pairs)})",
            "settings": _settings(settings), "results": out}


def _settings(s: RecoverSettings) -> dict:
    import dataclasses

    return dataclasses.asdict(s)


def merge(section: str, result: dict) -> None:
    path = RESULTS / "recover.json"
    data = json.loads(path.read_text()) if path.is_file() else {"sections": {}}
    data["machine"] = machine()
    data["date"] = time.strftime("%Y-%m-%d")
    data["sections"][section] = result
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--mode", default="distill")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    settings = RecoverSettings(minutes=args.minutes, mode=args.mode, lr=args.lr, batch_size=args.batch,
                               val_fraction=0.04, eval_every=10)
    for part in args.parts.split(","):
        t0 = time.perf_counter()
        load0 = os.getloadavg()
        if part == "effnet24":
            res = image_part(part, plan_with("fp32", "2:4", prune_importance="sparsegpt", **RECON), settings, None, False)
        elif part == "channels":
            res = image_part(part, plan_with("fp32", "channels=0.3", **CHANNELS), settings, 64, True)
        elif part == "int8ch":
            res = image_part(part, plan_with("int8", "channels=0.3", **CHANNELS), settings, 64, True)
        elif part == "minilm24":
            res = part_minilm24(settings)
        else:
            raise SystemExit(f"unknown part {part!r} (parts: {PARTS})")
        res["part_seconds"] = round(time.perf_counter() - t0, 1)
        res["load"] = {"before": load0, "after": os.getloadavg()}
        merge(part + (f"_{args.tag}" if args.tag else ""), res)


if __name__ == "__main__":
    main()

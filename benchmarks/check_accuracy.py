"""Accuracy figures of benchmarks/RESULTS.md, recomputed (no latency): EfficientNet-Lite0 INT8 top-1
and all-MiniLM-L6-v2 int8dyn STS-B Spearman, through the same helpers as bench_efficientnet_int8.py
and bench_minilm.py.

Each figure is computed twice: with the Q/DQ style the onnxruntime backend picks on this CPU, and
with the style it picks on an x86 CPU without int8 dot products (the AVX2 machine RESULTS.md was
measured on: 7-bit Conv weights, uint8 GEMM weights). The integer kernels are exact in both
cases, so the second one reproduces RESULTS.md's figures whatever this CPU is.

    python benchmarks/check_accuracy.py            # writes benchmarks/results/check_accuracy.json
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hwcompile.backends.onnxruntime as ortb  # noqa: E402
from benchmarks.bench_efficientnet_int8 import top1_top5  # noqa: E402
from benchmarks.bench_minilm import SEQ, embed_all, spearman  # noqa: E402
from benchmarks.common.build import lower_host_cpu  # noqa: E402
from benchmarks.common.data import imagenet_calib_eval, stsb_test  # noqa: E402
from benchmarks.common.export import cached_efficientnet_lite0, cached_minilm  # noqa: E402
from benchmarks.common.measure import log, save, session  # noqa: E402
from hwcompile.contract import PrecisionPlan  # noqa: E402
from hwcompile.ir import load  # noqa: E402
from hwcompile.passes import cleanup  # noqa: E402
from hwcompile.passes.plan import apply_plan  # noqa: E402
from hwcompile.targets import load_target  # noqa: E402

RESULTS_MD = {"efficientnet_int8_top1": 0.878, "minilm_int8dyn_spearman": 0.8185}


def style(int8_dot: bool | None):
    """The onnxruntime backend's QDQStyle for host-cpu; ``int8_dot`` overrides the CPU probe."""
    if int8_dot is None:
        return ortb.OnnxRuntimeBackend().qdq_style(load_target("host-cpu"))
    real = ortb.cpu_has_int8_dot
    ortb.cpu_has_int8_dot = lambda: int8_dot
    try:
        return ortb.OnnxRuntimeBackend().qdq_style(load_target("host-cpu"))
    finally:
        ortb.cpu_has_int8_dot = real


def efficientnet(styles: dict, work: Path) -> dict:
    calib, xe, ye = imagenet_calib_eval(False)
    graph = cleanup(load(cached_efficientnet_lite0()))
    plan = PrecisionPlan.uniform("int8", calib_method="minmax", compensation="bias")
    out, cache = {}, {}
    for name, st in styles.items():
        log(f"EfficientNet-Lite0 int8 minmax/bias, {name}")
        g = apply_plan(graph.clone(), plan, st, calib, cache=cache)
        top1, top5 = top1_top5(session(lower_host_cpu(g, work / f"effnet-{len(out)}", plan)), xe, ye)
        out[name] = {"top1": top1, "top5": top5, "eval_images": len(xe)}
    return out


def minilm(styles: dict, work: Path) -> dict:
    pairs = stsb_test()
    sentences = sorted({s for p in pairs for s in p[:2]})
    index = {s: i for i, s in enumerate(sentences)}
    graph = cleanup(load(cached_minilm(SEQ)))
    plan = PrecisionPlan.uniform("int8dyn")
    out = {}
    for name, st in styles.items():
        log(f"MiniLM int8dyn, {name}")
        g = apply_plan(graph.clone(), plan, st, None)
        emb = embed_all(session(lower_host_cpu(g, work / f"minilm-{len(out)}", plan)), sentences)
        out[name] = {"spearman": spearman(emb, index, pairs), "spearman_eval": spearman(emb, index, pairs[200:]),
                     "pairs": len(pairs)}
    return out


def main() -> None:
    styles = {"this CPU's style": style(None), "style without int8 dot products (AVX2)": style(False)}
    work = Path(tempfile.mkdtemp(prefix="check-accuracy-"))
    load_before = os.getloadavg()
    res = {"efficientnet_int8_minmax_bias": efficientnet(styles, work), "minilm_int8dyn": minilm(styles, work)}
    path = save("check_accuracy", {"results": res, "results_md": RESULTS_MD,
                                   "styles": {k: v.__dict__ for k, v in styles.items()},
                                   "load_average": {"before": load_before, "after": os.getloadavg()}})
    log(f"wrote {path}")
    for model, rows in res.items():
        for name, r in rows.items():
            print(model, name, r)


if __name__ == "__main__":
    main()

"""What a precision boundary costs on onnxruntime's CPU provider (EfficientNet-Lite0, INT8 vs FP32).

The mixed-precision planner predicts a plan's latency from per-layer times measured in uniform
builds plus ``t * (summed weight of the boundaries)``, a boundary weighing the elements of the tensor
crossing it, with ``t`` fitted from measured mixed plans (hwcompile/search/driver.py). This script
measures how well that holds: uniform FP32 and INT8 and five mixed plans (alternating INT8/FP32 from
the first and from the second layer, every depthwise conv FP32, the first 4 layers FP32, six FP32
islands), each profiled per layer by the backend (median of 3 profiles), and reports

- per plan: end-to-end latency, the prediction without boundary cost, the residual, the number and
  weight of its boundaries;
- the error of the boundary model with ``t`` fitted on one alternating plan (what the search's
  boundary probe does) and with ``t`` fitted on all mixed plans at once (least squares);
- per plan, the layers whose time changed most against their uniform build (conversions inserted
  for a layer are charged to it) and the unmapped time (layout changes onnxruntime inserts).

End-to-end latencies are measured with all seven models interleaved round by round (a first
version timed each plan on its own and, with other jobs on the VM, saw 2-3x swings).

    flock /tmp/hwc-bench.lock python benchmarks/boundary_costs.py      -> results/boundary_costs.json
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common.data import imagenet_calib_eval  # noqa: E402
from benchmarks.common.export import cached_efficientnet_lite0  # noqa: E402
from benchmarks.common.measure import interleaved_latency, log, save, session  # noqa: E402
from hwcompile.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from hwcompile.ir import load  # noqa: E402
from hwcompile.passes import cleanup  # noqa: E402
from hwcompile.contract import LayerChoice, PrecisionPlan  # noqa: E402
from hwcompile.search.driver import _layer_edges  # noqa: E402
from hwcompile.targets import load_target  # noqa: E402
from hwcompile.passes.plan import apply_plan  # noqa: E402


ROUNDS = 10


def plans(ids: list[str], depthwise: set[str]) -> dict[str, dict[str, str]]:
    return {
        "fp32": {l: "fp32" for l in ids},
        "int8": {l: "int8" for l in ids},
        "alternating from int8": {l: ("int8" if i % 2 == 0 else "fp32") for i, l in enumerate(ids)},
        "alternating from fp32": {l: ("fp32" if i % 2 == 0 else "int8") for i, l in enumerate(ids)},
        "depthwise fp32": {l: ("fp32" if l in depthwise else "int8") for l in ids},
        "first 4 layers fp32": {l: ("fp32" if i < 4 else "int8") for i, l in enumerate(ids)},
        "six fp32 islands": {l: ("fp32" if i in (0, 5, 11, 20, 30, 45) else "int8") for i, l in enumerate(ids)},
    }


def main() -> None:
    calib, _, _ = imagenet_calib_eval(quick=True)
    graph = cleanup(load(cached_efficientnet_lite0()))
    target, backend = load_target("host-cpu"), OnnxRuntimeBackend()
    style = backend.qdq_style(target)
    layers = graph.layers()
    ids = [n.name for n in layers]
    depthwise = {n.name for n in layers if n.op_type == "Conv" and "group" in n.attributes
                 and n.attributes["group"].as_int() > 1}
    edges, weight = _layer_edges(graph)
    feeds = {"input": next(iter(calib.batches(1)))["input"].astype(np.float32)}
    cache: dict = {}
    prof: dict[str, dict] = {}
    work = Path(tempfile.mkdtemp(prefix="boundary-costs-"))
    assignments = plans(ids, depthwise)
    arts = {}
    for name, a in assignments.items():
        log(f"build + per-layer profile: {name}")
        plan = PrecisionPlan(layers={l: LayerChoice.from_candidate(c) for l, c in a.items()})
        arts[name] = art = backend.lower(apply_plan(graph.clone(), plan, style, calib, cache=cache), plan, target,
                                         work / name.replace(" ", "_"))
        runs = [backend.profile(art, target, feeds, repeats=60, warmup=10, per_layer=True) for _ in range(3)]
        prof[name] = {"layers": {l: float(np.median([r.layers_ms.get(l, 0.0) for r in runs])) for l in ids},
                      "unmapped": float(np.median([sum(r.unmapped_ms.values()) for r in runs]))}
    # End to end: all plans interleaved round by round, so load that comes and goes hits them alike.
    log("end to end, interleaved")
    e2e = interleaved_latency({k: session(a.path("model")) for k, a in arts.items()}, feeds, rounds=ROUNDS,
                              repeats=40)
    for name in arts:
        prof[name]["e2e"] = e2e[name]["latency_ms"]

    # the planner's per-layer model (hwcompile/search/latency.py): scaled kernel times + remainder share
    scaled, remainder = {}, {}
    for c in ("fp32", "int8"):
        p = prof[c]
        s = min(1.0, p["e2e"] / (sum(p["layers"].values()) + p["unmapped"]))
        scaled[c] = {l: p["layers"][l] * s for l in ids}
        remainder[c] = p["e2e"] - sum(scaled[c].values())
    share = np.array([scaled["fp32"][l] for l in ids])
    share = share / share.sum()

    def base(a):
        return float(sum(scaled[a[l]][l] + share[i] * remainder[a[l]] for i, l in enumerate(ids)))

    def boundaries(a):
        mixed = [k for k, (i, j) in enumerate(edges) if a[ids[i]] != a[ids[j]]]
        return len(mixed), float(weight[mixed].sum()) if mixed else 0.0

    rows = {}
    for name, a in assignments.items():
        n, w = boundaries(a)
        rows[name] = {"latency_ms": prof[name]["e2e"], "predicted_without_boundaries_ms": base(a),
                      "residual_ms": prof[name]["e2e"] - base(a), "boundaries": n, "boundary_weight": w,
                      "unmapped_ms": prof[name]["unmapped"]}
        if name not in ("fp32", "int8"):
            change = sorted(((l, a[l], prof[name]["layers"][l] - prof[a[l]]["layers"][l]) for l in ids),
                            key=lambda t: -abs(t[2]))
            rows[name]["layer_time_change_ms"] = {f"{l} ({c})": round(d, 3) for l, c, d in change[:6]}
            rows[name]["residual_per_boundary_weight_ms"] = rows[name]["residual_ms"] / w if w else None
    mixed = [k for k in rows if k not in ("fp32", "int8")]
    fits = {}
    for probe in ("alternating from int8", "alternating from fp32"):
        t = rows[probe]["residual_ms"] / rows[probe]["boundary_weight"]
        fits[f"t fitted on '{probe}'"] = {"t_ms": t, "error_pct": {
            k: 100.0 * ((rows[k]["predicted_without_boundaries_ms"] + t * rows[k]["boundary_weight"])
                        / rows[k]["latency_ms"] - 1.0) for k in mixed}}
    b = np.array([rows[k]["boundary_weight"] for k in mixed])
    r = np.array([rows[k]["residual_ms"] for k in mixed])
    (t_all, c_all), *_ = np.linalg.lstsq(np.stack([b, np.ones_like(b)], 1), r, rcond=None)
    fits["t and offset fitted on all five (in-sample)"] = {"t_ms": float(t_all), "offset_ms": float(c_all), "error_pct": {
        k: 100.0 * ((rows[k]["predicted_without_boundaries_ms"] + c_all + t_all * rows[k]["boundary_weight"])
                    / rows[k]["latency_ms"] - 1.0) for k in mixed}}
    for name, f in fits.items():
        log(f"{name}: " + ", ".join(f"{k} {v:+.1f}%" for k, v in f["error_pct"].items()))
    save("boundary_costs", {
        "model": "EfficientNet-Lite0", "target": "host-cpu (onnxruntime CPU EP)", "batch": 1,
        "method": "per-layer times: backend.profile, median of 3 profiles of 60 runs; end to end: every plan "
                  f"interleaved round by round ({ROUNDS} rounds x 40 runs, median); per-layer model of "
                  "hwcompile/search/latency.py; boundary weight = elements crossing the edge / mean over edges",
        "plans": rows, "fits": fits})


if __name__ == "__main__":
    main()

"""Mixed precision on the host CPU: does hwcompile's measured Pareto front beat the uniform configurations?

For each model the mixed-precision search (``hwcompile.search.plan_mixed``, what ``--precision
mixed`` runs) is run on ``host-cpu``; then, in the same process, every plan on its Pareto front and
every uniform configuration is built, timed interleaved (same onnxruntime session options, 20 short
rounds cycling through every configuration, per-round medians kept for paired comparisons) and
scored with the same accuracy metric on held-out data:

- **EfficientNet-Lite0**: calibration = 100 ImageNet samples of even class index; the search scores
  its plans by top-1 on other even-class images (``--search-eval``, disjoint from the calibration
  set) so that it never sees the reported evaluation set: top-1 on the 500 odd-class images.
  Uniform: FP32, FP16, INT8 (hwcompile), onnxruntime ``quantize_static`` (QDQ, per-channel,
  MinMax, U8 activations / S8 weights, after ``quant_pre_process``).
- **all-MiniLM-L6-v2** (batch 1, sequence 128): the planner's metric is the output SNR against
  FP32 on calibration sentences (those of STS-B test pairs 0..199); each plan is then scored by
  the STS-B Spearman correlation on pairs 200.. . Candidates fp32/fp16/int8dyn/int4w. Uniform: FP32,
  FP16, INT8 dynamic and INT4 weight-only (hwcompile), onnxruntime ``quantize_dynamic`` (defaults).

Every plan the search measured (its uniform builds, feedback iterations and sweep) is rebuilt and
re-measured here. Outputs ``benchmarks/results/mixed_<model>[_quick].json`` (machine noted) and
``.png``: per configuration latency / accuracy / size; ``dominance``: for each uniform
configuration, the points of the search's Pareto front (other than itself) at least as fast with
better accuracy or at least as accurate and faster (the issue's wording), with a paired per-round
latency ratio saying how often the covering plan was faster; ``dominance_remeasured_front``: the same against the front the search would
have drawn from the same plans and the same accuracy evidence (its own metric on its own data)
with this benchmark's interleaved latencies, which separates what the search explored from how
noisily it measured; the feedback loop's predicted vs measured latency (the search's measurement
and this one); ``search_vs_bench_latency`` per plan; and ``machine_load``: CPU time other
processes and the hypervisor took during each stage (the machine is shared). A uniform
configuration on the front never covers itself (``status`` says "on_front_only_itself" then);
``by_mixed`` lists the genuinely mixed plans that cover it. ``prediction_check``: the search's
latency predictions made before each plan was measured, against the measurement, before and
after feedback (and ``prediction_check_vs_bench`` against this benchmark's interleaved figure).

    flock /tmp/hwc-bench.lock python benchmarks/bench_mixed.py --model efficientnet [--quick]
    flock /tmp/hwc-bench.lock python benchmarks/bench_mixed.py --model minilm [--quick]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common.measure import RESULTS, file_size, log, save, session  # noqa: E402
from hwcompile.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from hwcompile.data import Dataset  # noqa: E402
from hwcompile.ir import Graph, load  # noqa: E402
from hwcompile.passes import cleanup  # noqa: E402
from hwcompile.pipeline import CompileOptions, build, make_plan  # noqa: E402
from hwcompile.contract import PrecisionPlan, QuantSettings  # noqa: E402
from hwcompile.search.candidates import parse_candidate  # noqa: E402
from hwcompile.search.driver import SearchOptions, plan_mixed  # noqa: E402
from hwcompile.search.milp import pareto_front  # noqa: E402
from hwcompile.targets import load_target  # noqa: E402

SEQ = 128


@dataclass
class Case:
    """One model: data, the search's settings, the uniform peers and the final accuracy metric."""

    name: str
    src: Path
    calib: Dataset
    search_eval: Dataset
    options: CompileOptions
    search: SearchOptions
    hwc_uniform: list[str]                          # uniform hwcompile precisions to measure
    peers: dict[str, Callable[[Path], Path]]        # name -> writes an onnxruntime-quantized model
    accuracy: Callable[[object], dict[str, float]]  # session -> {metric: value, ...}
    metric: str                                     # the key of ``accuracy`` the front is judged by
    latency_feeds: dict[str, np.ndarray]
    repeats: int                                    # timed runs per configuration and round
    rounds: int                                     # interleaved rounds
    notes: dict = field(default_factory=dict)


class PerSampleOrtBackend(OnnxRuntimeBackend):
    """onnxruntime backend whose ``load`` runs a batch sample by sample when the model's batch is static.

    ``hwcompile.pipeline.evaluate`` feeds batches of 64; EfficientNet-Lite0 is exported with a
    static batch of 1, which onnxruntime rejects for any other batch size. Profiling is unchanged.
    """

    def load(self, artifact, target):
        sess = self._session(artifact, target)
        inputs = sess.get_inputs()
        static = any(i.shape and isinstance(i.shape[0], int) for i in inputs)

        def run(feeds):
            f = {i.name: feeds[i.name] for i in inputs}
            n = len(next(iter(f.values())))
            if not static or n <= 1:
                return sess.run(None, f)
            outs = [sess.run(None, {k: v[s:s + 1] for k, v in f.items()}) for s in range(n)]
            return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]

        return run


# -- cases ---------------------------------------------------------------------------------------
def efficientnet_case(quick: bool) -> Case:
    from benchmarks.common.data import imagenet_samples
    from benchmarks.common.export import cached_efficientnet_lite0

    xeven, yeven = imagenet_samples("even")
    idx = np.arange(len(xeven))
    calib_idx, held = idx[::5][:100], idx[idx % 5 != 0][: 100 if quick else 400]
    xe, ye = imagenet_samples("odd")
    if quick:
        xe, ye = xe[:200], ye[:200]
    xc = xeven[calib_idx]

    def peer_static(dst: Path) -> Path:
        from benchmarks.bench_efficientnet_int8 import ort_quantize_static  # the INT8 benchmark's recipe

        return ort_quantize_static(cached_efficientnet_lite0(), dst, xc, "MinMax")

    def accuracy(sess) -> dict:
        hit1, hit5 = [], []
        for i in range(len(xe)):
            top = np.argsort(-sess.run(None, {"input": xe[i:i + 1]})[0].reshape(-1))[:5]
            hit1.append(int(top[0] == ye[i]))
            hit5.append(int(ye[i] in top))
        # per-image hits: paired bootstrap of accuracy differences (``metric_difference``)
        return {"top1": float(np.mean(hit1)), "top5": float(np.mean(hit5)), "_per_sample": np.array(hit1, float)}

    return Case(
        name="efficientnet", src=cached_efficientnet_lite0(),
        calib=Dataset({"input": xc}, source="imagenet-even-100"),
        search_eval=Dataset({"input": xeven[held]}, yeven[held], source=f"imagenet-even-heldout-{len(held)}"),
        options=CompileOptions(precision="mixed", metric="top1", repeats=50, warmup=10),
        search=SearchOptions(samples=16 if quick else 32, sweep=2 if quick else 3, use_cache=False),
        hwc_uniform=["fp32", "fp16", "int8"],
        peers={"onnxruntime quantize_static (QDQ, per-channel, MinMax)": peer_static},
        accuracy=accuracy, metric="top1", latency_feeds={"input": xe[:1]}, repeats=10, rounds=20,
        notes={"calibration": "100 even-class images (every 5th)",
               "search_evaluation": f"{len(held)} other even-class images (top1, labels)",
               "evaluation": f"{len(xe)} odd-class images (top1)"})


def minilm_case(quick: bool) -> Case:
    from benchmarks.common.data import stsb_test
    from benchmarks.common.export import cached_minilm, eval_stsb_spearman, minilm_tokenize

    pairs = stsb_test()
    eval_pairs = pairs[200:500] if quick else pairs[200:]
    sentences = [s for p in pairs[:200] for s in p[:2]]
    calib = Dataset(dict(minilm_tokenize(sentences, SEQ)), source="stsb-first-200-pairs")
    src = cached_minilm(SEQ)

    def peer_dynamic(dst: Path) -> Path:
        from onnxruntime.quantization import quantize_dynamic

        quantize_dynamic(str(src), str(dst))
        return dst

    gold = np.array([p[2] for p in eval_pairs], float)

    def accuracy(sess) -> dict:
        names = {i.name for i in sess.get_inputs()}
        run = lambda f: sess.run(None, {k: v for k, v in f.items() if k in names})
        cos: list[float] = []
        rho = eval_stsb_spearman(run, eval_pairs, seq_len=SEQ, batch=32, scores=cos)
        return {"spearman": rho, "_per_sample": np.array(cos, float), "_gold": gold}

    n_eval = 64 if quick else 128
    return Case(
        name="minilm", src=src, calib=calib, search_eval=calib.take(n_eval),
        options=CompileOptions(precision="mixed", metric="snr", repeats=30 if quick else 50, warmup=5),
        search=SearchOptions(samples=16 if quick else 32, sweep=2 if quick else 3, use_cache=False,
                             candidates=("fp32", "fp16", "int8dyn", "int4w")),
        hwc_uniform=["fp32", "fp16", "int8dyn", "int4w"],
        peers={"onnxruntime quantize_dynamic": peer_dynamic},
        accuracy=accuracy, metric="spearman", latency_feeds=minilm_tokenize([pairs[0][0]], SEQ), repeats=5, rounds=20,
        notes={"batch": 1, "seq_len": SEQ, "calibration": "sentences of STS-B test pairs 0..199 (400)",
               "search_evaluation": f"output SNR vs FP32 on the first {n_eval} calibration sentences",
               "evaluation": f"STS-B Spearman on pairs 200..{200 + len(eval_pairs) - 1} ({len(eval_pairs)})"})


# -- the benchmark --------------------------------------------------------------------------------
def plan_from(assignment: dict[str, str], quant: QuantSettings) -> PrecisionPlan:
    return PrecisionPlan(layers={l: parse_candidate(c).choice("bench_mixed") for l, c in assignment.items()},
                         quant=quant)


def dominance(uniform: dict[str, dict], front: dict[str, dict], metric: str, rounds: dict[str, list[float]]) -> list[dict]:
    """Per uniform u, the issue's test: front points p other than u itself with (lat_p <= lat_u and
    acc_p > acc_u) or (acc_p >= acc_u and lat_p < lat_u), latencies the interleaved medians.

    ``status``: "dominated" when such a p exists; "on_front_only_itself" when u is itself on the
    front and nothing else qualifies (the issue's wording does not count that); else
    "not_dominated". For each qualifying p, ``paired``: the median over interleaved rounds of
    lat_p / lat_u and the fraction of rounds in which p was faster (how much to trust "faster").
    For a u nothing covers, ``more_accurate_front_point_paired``: :func:`paired_ratio` of the fastest
    front point more accurate than u against u: whether the rounds resolve it as slower or as a tie.
    """
    rows = []
    for name, u in uniform.items():
        lu, au = u["latency_ms"], u[metric]
        better = lambda p: (p["latency_ms"] <= lu and p[metric] > au) or (p[metric] >= au and p["latency_ms"] < lu)
        cover = [k for k, p in front.items() if k != name and better(p)]
        acc_ok = [k for k, p in front.items() if k != name and p[metric] >= au]
        fast_ok = [k for k, p in front.items() if k != name and p["latency_ms"] <= lu]
        fastest = min(acc_ok, key=lambda k: front[k]["latency_ms"]) if acc_ok else None
        best = max(fast_ok, key=lambda k: front[k][metric]) if fast_ok else None
        status = "dominated" if cover else ("on_front_only_itself" if name in front else "not_dominated")
        paired = {k: {**paired_ratio(rounds[k], rounds[name]), "metric_gain": front[k][metric] - au} for k in cover}
        closest = None
        if not cover and fastest is not None and front[fastest][metric] > au:
            closest = paired_ratio(rounds[fastest], rounds[name])
            closest.update({"point": fastest, "metric_gain": front[fastest][metric] - au})
        rows.append({
            "uniform": name, "latency_ms": lu, metric: au, "status": status, "dominated": bool(cover), "by": cover,
            "more_accurate_front_point_paired": closest,
            "by_mixed": [k for k in cover if front[k]["mixed"]], "paired": paired,
            "fastest_front_at_least_as_accurate": None if fastest is None else {
                "point": fastest, "latency_ms": front[fastest]["latency_ms"],
                "latency_vs_uniform_pct": 100 * (front[fastest]["latency_ms"] / lu - 1), metric: front[fastest][metric]},
            "most_accurate_front_at_least_as_fast": None if best is None else {
                "point": best, "latency_ms": front[best]["latency_ms"], metric: front[best][metric],
                "metric_gap": front[best][metric] - au}})
    return rows


def paired_ratio(a: list[float], b: list[float], *, resamples: int = 4000, seed: int = 0) -> dict:
    """Per-round latency ratio a/b (rounds interleaved, so each pair shares the machine's state): median,
    a bootstrap 95 % interval of the median, the fraction of rounds a was faster, and ``resolved``:
    "faster" / "slower" when the interval excludes 1, else "tie" (the rounds cannot tell them apart)."""
    r = np.asarray(a, dtype=float) / np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    meds = np.median(r[rng.integers(0, len(r), size=(resamples, len(r)))], axis=1)
    lo, hi = (float(x) for x in np.percentile(meds, [2.5, 97.5]))
    return {"latency_ratio_median": float(np.median(r)), "ci95": [lo, hi], "faster_in_rounds": float(np.mean(r < 1.0)),
            "rounds": len(r), "resolved": "faster" if hi < 1.0 else ("slower" if lo > 1.0 else "tie")}


def metric_difference(a: dict, b: dict, *, resamples: int = 2000, seed: int = 0) -> dict:
    """Accuracy of model a minus model b, paired bootstrap over the evaluation samples (both models
    scored on the same resampled images / sentence pairs): difference, 95 % interval, and
    ``resolved`` "better" / "worse" when the interval excludes 0, else "tie"."""
    from scipy.stats import rankdata

    x, y = a["_per_sample"], b["_per_sample"]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(resamples, len(x)))
    if "_gold" in a:     # Spearman: Pearson correlation of ranks, per resample
        g = a["_gold"]

        def rho(s: np.ndarray) -> np.ndarray:
            rs, rg = np.apply_along_axis(rankdata, 1, s[idx]), np.apply_along_axis(rankdata, 1, g[idx])
            rs, rg = rs - rs.mean(1, keepdims=True), rg - rg.mean(1, keepdims=True)
            return np.sum(rs * rg, 1) / np.sqrt(np.sum(rs ** 2, 1) * np.sum(rg ** 2, 1))

        d = rho(x) - rho(y)
    else:                # top-1: mean of per-image hits
        d = x[idx].mean(1) - y[idx].mean(1)
    lo, hi = (float(v) for v in np.percentile(d, [2.5, 97.5]))
    return {"ci95": [lo, hi], "resolved": "better" if lo > 0 else ("worse" if hi < 0 else "tie")}


def dominance_statistical(uniform: dict[str, dict], front: dict[str, dict], rounds: dict[str, list[float]],
                          samples: dict[str, dict]) -> list[dict]:
    """The issue's test with differences the measurements cannot resolve counted as ties: p covers u
    when its latency is not resolved slower (:func:`paired_ratio` over the interleaved rounds), its
    accuracy not resolved worse (:func:`metric_difference`, paired bootstrap over the evaluation set),
    and at least one of the two is resolved better. The strict test (``dominance``) stays reported."""
    rows = []
    for name in uniform:
        cover = {}
        for k in front:
            if k == name:
                continue
            lat = paired_ratio(rounds[k], rounds[name])
            acc = metric_difference(samples[k], samples[name])
            ok = lat["resolved"] != "slower" and acc["resolved"] != "worse"
            if ok and (lat["resolved"] == "faster" or acc["resolved"] == "better"):
                cover[k] = {"latency": lat, "accuracy": acc}
        rows.append({"uniform": name, "dominated": bool(cover), "by": cover})
    return rows


def interleaved_rounds(sessions: dict, feeds: dict[str, np.ndarray], *, rounds: int, repeats: int,
                       warmup: int = 5) -> tuple[dict[str, dict], dict[str, list[float]]]:
    """``benchmarks.common.measure.interleaved_latency`` with the per-round medians kept (paired comparisons between configurations).

    Many short rounds rather than a few long ones: on a shared machine load changes within seconds.
    """
    per_round: dict[str, list[float]] = {k: [] for k in sessions}
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    fs = {k: {i.name: feeds[i.name] for i in s.get_inputs()} for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(warmup):
            s.run(None, fs[k])
    for _ in range(rounds):
        for k, s in sessions.items():
            xs = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                s.run(None, fs[k])
                xs.append((time.perf_counter() - t0) * 1e3)
            per_round[k].append(float(np.median(xs)))
            samples[k] += xs
    out = {}
    for k, xs in samples.items():
        q1, q3 = np.percentile(xs, [25, 75])
        out[k] = {"latency_ms": float(np.median(xs)), "iqr_ms": float(q3 - q1), "runs": len(xs), "rounds": rounds}
    return out, per_round


def run(case: Case, quick: bool, monitor: "CpuMonitor") -> dict:
    t0 = time.perf_counter()
    target = load_target("host-cpu")
    backend = PerSampleOrtBackend()
    work = Path(tempfile.mkdtemp(prefix=f"bench-mixed-{case.name}-"))
    log(f"{case.name}: import + clean-up")
    graph: Graph = cleanup(load(case.src))
    base = make_plan(graph, case.options, target)
    log(f"{case.name}: mixed-precision search ({len(graph.layers())} layers)")

    def progress(msg: str) -> None:  # every 10th sensitivity layer, every other stage
        if not msg.startswith("sensitivity ") or int(msg.split()[1].split("/")[0]) % 10 == 1:
            log(f"  {msg}")

    monitor.stage("search")
    plan, info = plan_mixed(graph, base, target, backend, case.calib, case.search_eval, case.options, None, None,
                            work, progress=progress, search=case.search)
    t_search = time.perf_counter() - t0
    log(f"{case.name}: search done in {t_search:.0f} s; {len(info['measured'])} plans measured, "
        f"{len(info['pareto'])} on its front")

    # Every configuration as an ONNX file: uniform hwcompile builds, the onnxruntime peers, every plan the search measured.
    monitor.stage("build")
    cache: dict = {}
    models: dict[str, Path] = {"fp32 (exported)": case.src}
    uniform_names = ["fp32 (exported)"]

    def build_file(plan_: PrecisionPlan, name: str, folder: str) -> None:
        log(f"build {name}")
        _, art = build(graph, plan_, target, backend, work / folder, case.calib, cache=cache)
        models[name] = art.path("model")

    for prec in case.hwc_uniform:
        build_file(dataclasses.replace(PrecisionPlan.uniform(prec), quant=base.quant), f"hwcompile {prec}", f"u-{prec}")
        uniform_names.append(f"hwcompile {prec}")
    for name, make in case.peers.items():
        log(f"build {name}")
        models[name] = make(work / f"peer-{len(models)}.onnx")
        uniform_names.append(name)
    on_front = {p["source"] for p in info["pareto"]}
    searched: dict[str, dict] = {}       # bench name -> the search's record of that plan
    for k, m in enumerate(info["measured"]):
        src = m["source"]
        name = f"hwcompile {src[8:]}" if src.startswith("uniform:") else f"search {src}"
        if name not in models:
            build_file(plan_from(m["assignment"], base.quant), name, f"m-{k}")
        searched[name] = {"source": src, "mixed": not src.startswith("uniform:"), "on_search_front": src in on_front,
                          "plan_summary": m["plan_summary"], "search_latency_ms": m["latency_ms"],
                          "search_latency_spread_ms": m["latency_ms_spread"], "search_metrics": m["metrics"],
                          "assignment": m["assignment"]}

    sessions = {k: session(v) for k, v in models.items()}
    results: dict[str, dict] = {}
    samples: dict[str, dict] = {}
    monitor.stage("accuracy")
    for name, s in sessions.items():
        log(f"accuracy {name}")
        acc = case.accuracy(s)
        samples[name] = {k: acc.pop(k) for k in list(acc) if k.startswith("_")}
        results[name] = {**acc, "size_bytes": file_size(models[name])}
    log(f"latency (interleaved, {len(sessions)} configurations)")
    monitor.stage("latency")
    lat, per_round = interleaved_rounds(sessions, case.latency_feeds, rounds=case.rounds, repeats=case.repeats)
    monitor.stage("report")
    for name in results:
        results[name].update(lat[name])
        results[name]["speedup_vs_fp32"] = lat["fp32 (exported)"]["latency_ms"] / lat[name]["latency_ms"]
        if name in searched:
            results[name]["search"] = {k: v for k, v in searched[name].items() if k != "assignment"}
    sm = info["accuracy_metric"]
    plans = {n: {**results[n], "mixed": meta["mixed"], "search_metric": meta["search_metrics"].get(sm)}
             for n, meta in searched.items()}
    search_front = {n: plans[n] for n, meta in searched.items() if meta["on_search_front"]}
    # What the front would be with the same plans and accuracy evidence but interleaved latencies.
    refront = pareto_front([{"name": n, **p} for n, p in plans.items()], y="search_metric")
    remeasured_front = {p["name"]: plans[p["name"]] for p in refront}
    uniform = {n: results[n] for n in uniform_names}

    feedback = []
    for f in info["feedback"]:
        name = next((n for n, meta in searched.items() if meta["assignment"] == f["assignment"]), None)
        row = {k: f[k] for k in ("iteration", "predicted_latency_ms", "measured_latency_ms", "repeated", "boundaries",
                                 "plan_summary", "predicted_snr_db", "metrics")}
        row["error_pct"] = 100 * (f["predicted_latency_ms"] / f["measured_latency_ms"] - 1)
        row["plan"] = name
        if name is not None:
            row["bench_latency_ms"] = results[name]["latency_ms"]
            row["error_vs_bench_pct"] = 100 * (f["predicted_latency_ms"] / results[name]["latency_ms"] - 1)
        feedback.append(row)
    final = None
    if feedback:
        f = feedback[-1]
        final = {"iteration": f["iteration"], "plan": f["plan"], "repeated": f["repeated"],
                 "predicted_latency_ms": f["predicted_latency_ms"], "search_measured_latency_ms": f["measured_latency_ms"],
                 "error_vs_search_measurement_pct": f["error_pct"],
                 "bench_interleaved_latency_ms": f.get("bench_latency_ms"),
                 "error_vs_bench_measurement_pct": f.get("error_vs_bench_pct"),
                 "within_10pct": abs(f["error_pct"]) <= 10.0,
                 "note": "a repeated plan's prediction already uses corrections fitted on its own measurement "
                         "(in-sample); prediction_check.after_feedback holds the out-of-sample predictions"}
    dom = dominance(uniform, search_front, case.metric, per_round)
    dom_stat = dominance_statistical(uniform, search_front, per_round, samples)
    pc = info["search"].get("prediction_check") or {}
    issue_check = {"front_dominates_every_uniform": all(d["status"] == "dominated" for d in dom),
                   "not_dominated": {d["uniform"]: d["status"] for d in dom if d["status"] != "dominated"},
                   "not_dominated_but_more_accurate_and_tied": {
                       d["uniform"]: d["more_accurate_front_point_paired"] for d in dom
                       if d["status"] == "not_dominated" and (d["more_accurate_front_point_paired"] or {}).get("resolved") == "tie"},
                   "front_dominates_every_uniform_statistically": all(d["dominated"] for d in dom_stat),
                   "not_dominated_statistically": [d["uniform"] for d in dom_stat if not d["dominated"]],
                   "after_feedback_within_10pct": pc.get("after_feedback_within_10pct"),
                   "after_feedback_max_abs_error_pct": pc.get("after_feedback_max_abs_error_pct")}
    drift = {n: {"search_ms": meta["search_latency_ms"], "bench_ms": results[n]["latency_ms"],
                 "search_over_bench": meta["search_latency_ms"] / results[n]["latency_ms"]}
             for n, meta in searched.items()}
    return {"model": case.name, "quick": quick, "target": "host-cpu", **case.notes,
            "metric": case.metric, "search_metric": sm,
            "search_options": dict(case.search.__dict__),
            "compile_options": {"metric": case.options.metric, "repeats": case.options.repeats,
                                "warmup": case.options.warmup, "quant": dict(base.quant.__dict__)},
            "results": results, "round_medians_ms": per_round, "uniform": uniform_names, "search_front": list(search_front),
            "remeasured_front": list(remeasured_front),
            "issue_check": issue_check, "dominance": dom, "dominance_statistical": dom_stat,
            "dominance_remeasured_front": dominance(uniform, remeasured_front, case.metric, per_round),
            "prediction_check": info["search"].get("prediction_check"),
            "prediction_check_vs_bench": [
                {**r, "bench_latency_ms": results[n]["latency_ms"],
                 "error_vs_bench_pct": 100 * (r["predicted_latency_ms"] / results[n]["latency_ms"] - 1)}
                for r in (info["search"].get("prediction_check") or {}).get("after_feedback", [])
                for n, meta in searched.items() if meta["source"] == r["source"]],
            "feedback": feedback, "final_feedback": final, "search_vs_bench_latency": drift,
            "search": info["search"], "search_uniform": info["uniform"],
            "search_pareto": [{k: v for k, v in p.items() if k != "assignment"} for p in info["pareto"]],
            "chosen_plan_summary": _summary(plan), "sensitivity_top": info["sensitivity"].get("rows", [])[:10],
            "seconds": {"search": round(t_search, 1), "total": round(time.perf_counter() - t0, 1)}}


def _summary(plan: PrecisionPlan) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in plan.layers.values():
        out[c.candidate] = out.get(c.candidate, 0) + 1
    return dict(sorted(out.items()))


class CpuMonitor:
    """Samples /proc/stat every ``period`` s in a thread: CPU time of *other* processes and hypervisor steal.

    Over an interval, ``other = (busy_jiffies / HZ - our CPU seconds) / wall seconds`` in cores (busy
    = all but idle and iowait) and ``steal = steal_jiffies / HZ / wall``. This machine is shared, so
    the figures say how much of the timing noise others caused; summarised per benchmark stage.
    """

    def __init__(self, period: float = 2.0):
        import threading

        self.period, self.label, self.rows = period, "start", []
        self.hz = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stage(self, label: str) -> None:
        self.label = label

    def _read(self) -> tuple[float, float, float, float]:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = sum(f) - f[3] - f[4] - (f[7] if len(f) > 7 else 0)
        t = os.times()
        return time.monotonic(), busy / self.hz, (f[7] if len(f) > 7 else 0) / self.hz, t.user + t.system

    def _loop(self) -> None:
        prev = self._read()
        while not self._stop.wait(self.period):
            cur = self._read()
            dt = cur[0] - prev[0]
            self.rows.append((self.label, max(0.0, (cur[1] - prev[1] - (cur[3] - prev[3])) / dt),
                              (cur[2] - prev[2]) / dt))
            prev = cur

    def summary(self) -> dict:
        self._stop.set()
        out = {}
        for label in dict.fromkeys(r[0] for r in self.rows):
            other = [r[1] for r in self.rows if r[0] == label]
            steal = [r[2] for r in self.rows if r[0] == label]
            out[label] = {"other_processes_cores_mean": float(np.mean(other)), "other_processes_cores_p90":
                          float(np.percentile(other, 90)), "steal_cores_mean": float(np.mean(steal)),
                          "samples": len(other)}
        return {"period_s": self.period, "cores": os.cpu_count(), "by_stage": out}


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, res = out["metric"], out["results"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 5.5))
    searched = [n for n, r in res.items() if "search" in r]
    a.plot([res[n]["latency_ms"] for n in searched], [res[n][m] for n in searched], ".", color="0.6", ms=8,
           label="every plan the search measured")
    for names, style, label in ((out["search_front"], "o-", "search's Pareto front"),
                                (out["remeasured_front"], "D--", "front with interleaved latencies")):
        fr = sorted(names, key=lambda n: res[n]["latency_ms"])
        a.plot([res[n]["latency_ms"] for n in fr], [res[n][m] for n in fr], style, mfc="none", label=label,
               color="tab:blue" if style == "o-" else "tab:purple")
    for n in out["uniform"]:
        r = res[n]
        a.plot(r["latency_ms"], r[m], "s" if n.startswith("hwcompile") else "^", ms=10, mfc="none",
               color="tab:orange" if n.startswith("hwcompile") else "tab:red")
        a.annotate("fp32 exported" if "exported" in n else n.replace("onnxruntime ", "ort ").split(" (")[0],
                   (r["latency_ms"], r[m]), textcoords="offset points", xytext=(5, -12), fontsize=8)
    a.set_xlabel("latency, batch 1 (ms, interleaved median, same process)")
    a.set_ylabel(f"{m} (held-out evaluation)")
    a.set_title(f"{out['model']}: uniform configurations (squares/triangles) vs the search")
    a.legend(fontsize=8, loc="lower right")
    a.grid(alpha=0.3)
    sm = out["search_metric"]
    for n in searched:
        r = res[n]["search"]
        b.plot(r["search_latency_ms"], r["search_metrics"].get(sm), "o" if r["on_search_front"] else ".",
               color="tab:blue" if r["on_search_front"] else "0.5", ms=8)
        b.annotate(r["source"].replace("uniform:", ""), (r["search_latency_ms"], r["search_metrics"].get(sm)),
                   textcoords="offset points", xytext=(4, 4), fontsize=7)
    for f in out["feedback"]:
        b.plot(f["predicted_latency_ms"], f["metrics"].get(sm), "+", color="tab:green", ms=10)
        b.annotate("", xy=(f["measured_latency_ms"], f["metrics"].get(sm)),
                   xytext=(f["predicted_latency_ms"], f["metrics"].get(sm)),
                   arrowprops={"arrowstyle": "->", "color": "tab:green", "lw": 0.8})
    b.plot([], [], "o", color="tab:blue", label="on the search's front")
    b.plot([], [], "+", color="tab:green", label="feedback: predicted -> measured latency")
    b.set_xlabel("latency (ms, the search's measurement: ratio to FP32 x FP32 median)")
    b.set_ylabel(f"{sm} (search data)")
    b.set_title("inside the search")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["efficientnet", "minilm", "all"], default="all")
    ap.add_argument("--quick", action="store_true", help="fewer evaluation samples, sensitivity samples and sweeps")
    args = ap.parse_args()
    for name in (["efficientnet", "minilm"] if args.model == "all" else [args.model]):
        monitor = CpuMonitor()
        case = (efficientnet_case if name == "efficientnet" else minilm_case)(args.quick)
        out = run(case, args.quick, monitor)
        out["machine_load"] = monitor.summary()
        stem = f"mixed_{name}" + ("_quick" if args.quick else "")
        RESULTS.mkdir(parents=True, exist_ok=True)
        plot(out, RESULTS / f"{stem}.png")
        out["plot"] = f"{stem}.png"
        log(f"wrote {save(stem, out)}")
        report(out)


def report(out: dict) -> None:
    m = out["metric"]
    for n, r in out["results"].items():
        print(f"{n[:58]:58s} {m} {r[m]:.4f} {r['latency_ms']:7.2f} ms (iqr {r['iqr_ms']:.2f}) "
              f"x{r['speedup_vs_fp32']:.2f} {r['size_bytes'] / 1e6:6.1f} MB")
    for key in ("dominance", "dominance_remeasured_front"):
        print(key)
        for d in out[key]:
            pr = {k: (round(v["latency_ratio_median"], 3), v["faster_in_rounds"]) for k, v in d["paired"].items()}
            print(f"  {d['status']:22s} {d['uniform'][:50]:50s} by {d['by'][:3]} paired {list(pr.items())[:3]}")
    f = out["final_feedback"]
    if f:
        print(f"final feedback iteration {f['iteration']}: predicted {f['predicted_latency_ms']:.2f} ms, search measured "
              f"{f['search_measured_latency_ms']:.2f} ms ({f['error_vs_search_measurement_pct']:+.1f}%), bench "
              f"{f['bench_interleaved_latency_ms']} ms ({f['error_vs_bench_measurement_pct']})")
    pc = out.get("prediction_check") or {}
    for r in pc.get("after_feedback", []):
        print(f"after feedback {r['source']:14s} predicted {r['predicted_latency_ms']:.2f} measured "
              f"{r['measured_latency_ms']:.2f} ({r['error_pct']:+.1f}%)")
    print(json.dumps(out["machine_load"]["by_stage"], indent=0))


if __name__ == "__main__":
    main()

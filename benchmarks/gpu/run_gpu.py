"""The GPU run: compile, build TensorRT engines cold and warm, run, profile, check accuracy, build the peer.

``benchmarks/gpu/run.sh`` installs the ``tensorrt`` extra and calls this; ``--dry-run`` runs every
CPU-side step (exports, TensorRT-ready ONNX, rule checks, CPU reference accuracy, the peer's Q/DQ
export) and records each engine step as skipped with the reason. Steps, in this order so that a
timeout keeps what finished (the JSON is rewritten after every step):

1. ``env``: GPU, compute capability, TensorRT / CUDA / onnxruntime versions, CPU and load.
2. ``gpu_tests``: ``pytest -m gpu`` (counts, failures, skip reasons).
3. ``planner``: ``--precision mixed`` on the default model for the GPU's target: the latency table
   from the engines' per-layer profiles (engines needed: skipped without them).
4. per model (``--models``), per target (the bundled target listing this GPU's compute capability;
   every NVIDIA target in a dry run), per configuration (fp16, int8, int8+2:4):
   ``compile`` (TensorRT-ready ONNX, rules, CPU fake-quant accuracy), ``engine`` (cold build with an
   empty timing cache, warm rebuild with it, inspector: types and 2:4 kernels, accuracy on the GPU,
   agreement with the CPU reference, per-layer profile mapped to layer ids);
   ``peer`` (onnxruntime quantize_static INT8 and FP16 exports, built by Polygraphy, accuracy);
   ``latency``: every engine of the model timed in interleaved rounds (CUDA events), per-round ratios
   INT8/FP16, INT8+2:4/INT8 and hwcompile/peer with a bootstrap interval.
5. last, as time allows: the compile steps for the NVIDIA targets this GPU is not (their engine
   steps skipped: an engine is built only on a GPU its target's ``compute_capabilities`` list).

A step whose estimated cost no longer fits ``--budget-s`` is skipped, saying so.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.common.measure import log, machine  # noqa: E402
from benchmarks.gpu import peer  # noqa: E402
from benchmarks.gpu.models import ModelSpec, load_model  # noqa: E402
from hwcompile.backends.base import Artifact  # noqa: E402
from hwcompile.backends.tensorrt import TensorRTBackend  # noqa: E402
from hwcompile.backends.tensorrt.cpu import cpu_runner  # noqa: E402
from hwcompile.backends.tensorrt.rules import check_model  # noqa: E402
from hwcompile.backends.tensorrt.runtime import tensorrt_status  # noqa: E402
from hwcompile.backends.tensorrt.settings import TensorRTSettings  # noqa: E402
from hwcompile.pipeline import CompileOptions, build, make_plan, prepare  # noqa: E402
from hwcompile.targets import load_target  # noqa: E402

CONFIGS = {"fp16": ("fp16", "dense"), "int8": ("int8", "dense"), "int8+2:4": ("int8", "2:4")}
NVIDIA_TARGETS = ("nvidia-ampere", "nvidia-hopper")


class NoEngines:
    """The backend's engine service during compilation: engines are built by this script, timed."""

    def __init__(self, why: str):
        self.why = why

    def status(self):
        return False, self.why


class Run:
    """The result JSON, rewritten atomically after every step; steps record ok / skipped / failed."""

    def __init__(self, path: Path, budget_s: float, dry_run: bool):
        self.path, self.budget_s, self.dry_run, self.t0 = path, budget_s, dry_run, time.monotonic()
        self.data: dict = {"format": "hwcompile.gpu-run/1", "dry_run": dry_run, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "machine": machine(), "load_before": os.getloadavg(), "steps": {}}
        self.save()

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def save(self) -> None:
        self.data["elapsed_s"] = time.monotonic() - self.t0
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_jsonable) + "\n")
        os.replace(tmp, self.path)

    def step(self, name: str, fn, *, needs_engines: bool = False, cost_s: float = 0.0, why_no_engines: str = ""):
        """Run ``fn()`` as step ``name``; its dict (or the reason it was skipped / the error) goes to the JSON."""
        t = time.monotonic()
        if needs_engines and why_no_engines:
            rec = {"status": "skipped", "reason": why_no_engines}
        elif cost_s and cost_s > self.left():
            rec = {"status": "skipped", "reason": f"time budget: needs ~{cost_s:.0f} s, {self.left():.0f} s left"}
        else:
            log(name)
            try:
                rec = {"status": "ok", **(fn() or {})}
            except Exception as e:  # one failed step must not lose the others
                rec = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000],
                       "traceback": traceback.format_exc()[-3000:]}
                log(f"  FAILED: {rec['error'][:300]}")
        rec["seconds"] = time.monotonic() - t
        self.data["steps"][name] = rec
        self.save()
        return rec


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, (Path, tuple, set)):
        return str(x) if isinstance(x, Path) else list(x)
    return str(x)


# -- steps ------------------------------------------------------------------------------------------
def env_step() -> dict:
    ok, why = tensorrt_status()
    out: dict = {"python": platform.python_version(), "tensorrt": {"available": ok, "status": why}}
    smi = _cmd(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version,memory.total,clocks.sm,clocks.max.sm",
                "--format=csv,noheader"])
    out["nvidia_smi"] = smi
    if ok:
        from hwcompile.backends.tensorrt.runtime import gpu_capability

        out["compute_capability"] = gpu_capability()
    from importlib.metadata import PackageNotFoundError, version

    out["versions"] = {}
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "cuda-python", "cuda-bindings", "polygraphy",
                 "onnxruntime", "onnx", "torch", "transformers"):
        try:
            out["versions"][dist] = version(dist)
        except PackageNotFoundError:
            out["versions"][dist] = None
    return out


def gpu_tests_step(work: Path) -> dict:
    xml = work / "gpu-tests.xml"
    r = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
                        f"--junitxml={xml}", str(ROOT / "tests")], capture_output=True, text=True, timeout=420,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = {"exit_code": r.returncode, "tail": (r.stdout + r.stderr)[-2500:]}
    if xml.is_file():
        import xml.etree.ElementTree as ET

        cases = ET.parse(xml).getroot().iter("testcase")
        rows = {}
        for c in cases:
            kind = next((ch.tag for ch in c if ch.tag in ("failure", "error", "skipped")), "passed")
            msg = next((ch.get("message", "") for ch in c if ch.tag in ("failure", "error", "skipped")), "")
            rows[f"{c.get('classname')}::{c.get('name')}"] = {"result": kind, "message": msg[:400]}
        out["tests"] = rows
        out["counts"] = {k: sum(1 for v in rows.values() if v["result"] == k)
                         for k in ("passed", "failed", "error", "skipped")}
    return out


def planner_step(target: str, work: Path) -> dict:
    """``--precision mixed`` on the default model: uniform builds profiled per layer on the engines."""
    from hwcompile.pipeline import compile_model

    os.environ["HWCOMPILE_CACHE_DIR"] = str(work / "planner-cache")
    compile_model(None, target, work / "planner", CompileOptions(precision="mixed", repeats=30, warmup=5))
    rep = json.loads((work / "planner" / "report.json").read_text())
    choices: dict[str, int] = {}
    for lay in rep.get("layers", {}).values():
        if "choice" in lay:
            choices[lay["choice"]] = choices.get(lay["choice"], 0) + 1
    return {"target": target, "engine_built": rep.get("artifact", {}).get("engine_built"),
            "engine_reason": rep.get("artifact", {}).get("engine_reason"),
            "uniform": [{k: u.get(k) for k in ("name", "latency_ms", "ratio_to_fp32", "metrics")}
                        for u in rep.get("uniform", [])],
            "feedback": [{k: f.get(k) for k in ("plan_summary", "predicted_latency_ms", "measured_latency_ms")}
                         for f in rep.get("feedback", [])],
            "chosen": choices, "compiled": {k: rep.get("compiled", {}).get(k) for k in ("latency_ms", "metrics")},
            "per_layer_ms": {lid: lay["latency_ms"] for lid, lay in rep.get("layers", {}).items()
                             if "latency_ms" in lay}}


def compile_step(spec: ModelSpec, target: str, config: str, out: Path, acc_batch: int) -> tuple[dict, Artifact]:
    precision, sparsity = CONFIGS[config]
    t = load_target(target)
    backend = TensorRTBackend(NoEngines("engines are built by benchmarks/gpu/run_gpu.py, timed"))
    options = CompileOptions(precision=precision, sparsity=sparsity, calib=spec.calib, baseline=False)
    t0 = time.perf_counter()
    graph, _, calib, _ = prepare(spec.onnx, options)
    plan = make_plan(graph, options, t)
    _, art = build(graph, plan, t, backend, out, calib)
    secs = time.perf_counter() - t0
    model = art.path("model")
    found = check_model(__import__("onnx").load(str(model)), sparsity="2:4" if art.info["sparse_layers"] else None,
                        sparse_nodes=art.info["sparse_layers"])
    t1 = time.perf_counter()
    acc = spec.accuracy(cpu_runner(model), acc_batch)
    return ({"compile_seconds": secs, "onnx_bytes": model.stat().st_size, "rules_pass": not found,
             "violations": [v.__dict__ for v in found[:5]], "sparse_layers": len(art.info["sparse_layers"]),
             "dense_despite_plan": len(art.info["dense_despite_plan"]),
             "cpu_reference": {spec.metric: acc, "runner": "onnxruntime CPU, graph optimizations off (fake-quant)",
                               "seconds": time.perf_counter() - t1}}, art)


def engine_step(spec: ModelSpec, target: str, art: Artifact, acc_batch: int, cpu_outputs: list) -> dict:
    from hwcompile.backends.tensorrt.build import build_engine
    from hwcompile.backends.tensorrt.inspector import engine_summary

    settings = TensorRTSettings.from_target(load_target(target))
    model, plan = art.path("model"), art.directory / "model.plan"
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=art.directory)) / "timing.cache"
    kw = dict(sparse_weights=settings.sparse_weights and bool(art.info["sparse_layers"]), profiles=settings.profiles,
              max_batch=settings.max_batch, workspace_mb=settings.workspace_mb)
    cold = build_engine(model, plan, timing_cache_path=cache, **kw)
    warm = build_engine(model, art.directory / "model.warm.plan", timing_cache_path=cache, **kw)
    art.files["engine"] = "model.plan"
    art.info.update(engine_built=True, engine=cold.to_dict())
    backend, t = TensorRTBackend(), load_target(target)
    run = backend.load(art, t)
    acc = spec.accuracy(run, acc_batch)
    got = spec.outputs(run, len(cpu_outputs))
    feeds = spec.samples(1)[0]
    prof = backend.profile(art, t, feeds, repeats=50, warmup=10)
    top = sorted(prof.layers_ms.items(), key=lambda kv: -kv[1])[:15]
    return {"build_seconds": {"cold": cold.build_seconds, "warm": warm.build_seconds,
                              "timing_cache": [cold.timing_cache, warm.timing_cache]},
            "summary": engine_summary(cold.layers, art.info["node_layers"]),
            "sparse_kernels_chosen": bool(engine_summary(cold.layers)["sparse_layers"]),
            spec.metric: acc, "agreement_with_cpu_reference": _agreement(got, cpu_outputs),
            "latency_ms": prof.timing.latency_ms, "latency_ms_spread": prof.timing.latency_ms_spread,
            "with_copies_ms": prof.info.get("with_copies_ms"),
            "per_layer": {"mapped_ms_total": sum(prof.layers_ms.values()),
                          "unmapped_ms_total": sum(prof.unmapped_ms.values()), "layers_mapped": len(prof.layers_ms),
                          "top_layers_ms": dict(top), "unmapped_top_ms": dict(sorted(prof.unmapped_ms.items(),
                                                                                     key=lambda kv: -kv[1])[:8])},
            "plan": str(plan)}


def peer_export_step(spec: ModelSpec, work: Path) -> dict:
    out = {"int8": peer.export_int8(spec.onnx, spec.calib, work / "peer_int8.onnx"),
           "fp16": peer.export_fp16(spec.onnx, work / "peer_fp16.onnx")}
    m = __import__("onnx").load(str(work / "peer_int8.onnx"))
    out["int8"]["tensorrt_rules"] = sorted({v.rule for v in check_model(m)}) or "pass"
    return out


def peer_engine_step(spec: ModelSpec, work: Path, acc_batch: int, cpu_outputs: list) -> dict:
    from hwcompile.backends.tensorrt.runtime import load_engine

    out = {}
    for kind in ("int8", "fp16"):
        plan = work / f"peer_{kind}.plan"
        rec = peer.polygraphy_build(work / f"peer_{kind}.onnx", plan)
        run = load_engine(plan)
        rec[spec.metric] = spec.accuracy(run, acc_batch)
        if kind == "int8":
            rec["agreement_with_hwcompile_cpu_reference"] = _agreement(spec.outputs(run, len(cpu_outputs)),
                                                                       cpu_outputs)
        rec["plan"] = str(plan)
        out[kind] = rec
    return out


def latency_step(spec: ModelSpec, plans: dict[str, str], rounds: int, repeats: int) -> dict:
    from benchmarks.bench_mixed import paired_ratio
    from hwcompile.backends.tensorrt.profiler import profile_engine

    feeds = spec.samples(1)[0]
    per: dict[str, list[float]] = {k: [] for k in plans}
    for _ in range(rounds):
        for name, plan in plans.items():
            per[name].append(profile_engine(plan, feeds, repeats, warmup=5, per_layer=False)["latency_ms"])
    out = {"timer": "CUDA events around execute_async_v3, median per round", "rounds": rounds,
           "repeats_per_round": repeats,
           "engines": {k: {"latency_ms": float(np.median(v)), "round_medians_ms": v} for k, v in per.items()}}
    pairs = {"int8_vs_fp16": ("int8", "fp16"), "int8_2_4_vs_int8": ("int8+2:4", "int8"),
             "int8_vs_peer_int8": ("int8", "peer int8"), "fp16_vs_peer_fp16": ("fp16", "peer fp16")}
    out["ratios"] = {k: paired_ratio(per[a], per[b]) for k, (a, b) in pairs.items() if a in per and b in per}
    return out


def _agreement(got: list, ref: list) -> dict:
    if not got:
        return {}
    rel = [float(np.max(np.abs(g.astype(np.float64) - r)) / (np.max(np.abs(r)) or 1.0)) for g, r in zip(got, ref)]
    flat = lambda a: a.reshape(a.shape[0], -1) if a.ndim > 1 else a[None]
    same = [bool(np.argmax(flat(g)[0]) == np.argmax(flat(r)[0])) for g, r in zip(got, ref)]
    return {"samples": len(got), "max_rel_err": max(rel), "median_rel_err": float(np.median(rel)),
            "argmax_agreement": float(np.mean(same))}


def _cmd(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (r.stdout or r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable: {e}"


def gpu_targets(capability: str | None) -> list[str]:
    """Targets whose engines can be built here: the ones listing the GPU's capability (all of them in a dry run)."""
    if capability is None:
        return list(NVIDIA_TARGETS)
    return [t for t in NVIDIA_TARGETS
            if TensorRTSettings.from_target(load_target(t)).check_gpu(capability) is None]


# -- main -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="default benchmarks/results/tensorrt_gpu.json (tensorrt_gpu_dry_run.json with --dry-run)")
    ap.add_argument("--install-log", type=Path, default=None, help="run.sh's install log (its tail goes to the JSON)")
    ap.add_argument("--install-seconds", type=float, default=None)
    ap.add_argument("--work", type=Path, default=None, help="folder for builds (default: a temporary one)")
    ap.add_argument("--dry-run", action="store_true", help="CPU steps only; engine steps skipped with the reason")
    ap.add_argument("--models", default="efficientnet,minilm", help="comma list of efficientnet, minilm, default")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--targets", default="", help="comma list: only these of the buildable NVIDIA targets")
    ap.add_argument("--budget-s", type=float, default=450.0)
    ap.add_argument("--quick", action="store_true", help="100 images / 200 pairs")
    ap.add_argument("--stsb-pairs", type=int, default=500)
    ap.add_argument("--agreement-samples", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--skip", default="", help="comma list of steps to leave out: gpu_tests, planner, peer")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = ROOT / "benchmarks" / "results" / f"tensorrt_gpu{'_dry_run' if args.dry_run else ''}.json"
    work = args.work or Path(tempfile.mkdtemp(prefix="hwc-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run = Run(args.out, args.budget_s, args.dry_run)
    skip = set(filter(None, args.skip.split(",")))
    if args.install_log is not None:
        run.data["install"] = {"seconds": args.install_seconds,
                               "log_tail": args.install_log.read_text()[-3000:] if args.install_log.is_file() else ""}
    env = run.step("env", env_step)
    ok = env.get("tensorrt", {}).get("available", False)
    status = env.get("tensorrt", {}).get("status")
    no_engines = (f"dry run: engine steps not run (TensorRT here: {status})" if args.dry_run else
                  "" if ok else f"no TensorRT engine can be built here: {status}")
    cap = env.get("compute_capability") if not no_engines else None
    targets = [t for t in gpu_targets(cap) if not args.targets or t in args.targets.split(",")]
    run.data["targets"] = targets
    if not targets:
        run.data["targets_note"] = f"no bundled NVIDIA target lists compute capability {cap}"
    if "gpu_tests" not in skip:
        run.step("gpu_tests", lambda: gpu_tests_step(work), cost_s=60)
    if "planner" not in skip:
        run.step("planner", lambda: planner_step(targets[0], work), needs_engines=True, cost_s=90,
                 why_no_engines=no_engines or ("" if targets else run.data.get("targets_note", "")))
    for key in filter(None, args.models.split(",")):
        if run.step(f"{key}/prepare", lambda: {"spec": _spec_info(key, args)})["status"] == "ok":
            model_steps(run, _SPECS[key], targets, args, work, no_engines, skip)
    others = [t for t in NVIDIA_TARGETS if t not in targets and (not args.targets or t in args.targets.split(","))]
    for target in others:  # last, as time allows: the TensorRT-ready ONNX for targets this GPU is not
        why = TensorRTSettings.from_target(load_target(target)).check_gpu(cap) if cap else no_engines
        for key, spec in _SPECS.items():
            for config in filter(None, args.configs.split(",")):
                name = f"{key}/{target}/{config}"
                out = work / name.replace("/", "_").replace(":", "_")
                run.step(f"{name}/compile", lambda: compile_step(spec, target, config, out, 8)[0], cost_s=30)
                run.step(f"{name}/engine", lambda: {}, needs_engines=True, why_no_engines=why or "not buildable")
    run.data["load_after"] = os.getloadavg()
    run.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run.save()
    log(f"wrote {args.out}")
    return args.out


def model_steps(run: Run, spec: ModelSpec, targets: list[str], args, work: Path, no_engines: str,
                skip: set[str]) -> None:
    """Steps 4 of the module docstring for one model."""
    key, acc_batch = spec.key, 8
    run.step(f"{key}/fp32_reference", lambda: {spec.metric: spec.accuracy(cpu_runner(spec.onnx), acc_batch)})
    plans: dict[str, str] = {}
    refs: dict[str, list] = {}   # config -> CPU fake-quant outputs on the agreement samples (first target)
    for target in targets:
        for config in filter(None, args.configs.split(",")):
            name = f"{key}/{target}/{config}"
            held: dict = {}

            def do_compile(name=name, target=target, config=config, held=held):
                rec, art = compile_step(spec, target, config, work / name.replace("/", "_").replace(":", "_"),
                                        acc_batch)
                held["art"] = art
                held["ref"] = spec.outputs(cpu_runner(art.path("model")), args.agreement_samples)
                return rec

            if run.step(f"{name}/compile", do_compile, cost_s=30)["status"] != "ok":
                continue
            if target == targets[0]:
                refs[config] = held["ref"]
            e = run.step(f"{name}/engine", lambda: engine_step(spec, target, held["art"], acc_batch, held["ref"]),
                         needs_engines=True, cost_s=60, why_no_engines=no_engines)
            if e["status"] == "ok" and target == targets[0]:
                plans[config] = e["plan"]
    if "peer" not in skip:
        pwork = work / f"{key}_peer"
        pwork.mkdir(exist_ok=True)
        if run.step(f"{key}/peer_export", lambda: peer_export_step(spec, pwork), cost_s=40)["status"] == "ok":
            pg = run.step(f"{key}/peer_engine", lambda: peer_engine_step(spec, pwork, acc_batch, refs.get("int8", [])),
                          needs_engines=True, cost_s=60, why_no_engines=no_engines)
            if pg["status"] == "ok":
                plans.update({f"peer {k}": pg[k]["plan"] for k in ("int8", "fp16")})
    run.step(f"{key}/latency", lambda: latency_step(spec, plans, args.rounds, args.repeats), needs_engines=True,
             cost_s=30, why_no_engines=no_engines or ("" if plans else "no engine was built"))


_SPECS: dict[str, ModelSpec] = {}


def _spec_info(key: str, args) -> dict:
    spec = load_model(key, quick=args.quick, stsb_pairs=args.stsb_pairs)
    _SPECS[key] = spec
    return {"model": spec.description, "onnx": str(spec.onnx), "calibration": spec.calib.source,
            "calibration_samples": len(spec.calib), "evaluation": spec.evaluation, "metric": spec.metric}


if __name__ == "__main__":
    main()

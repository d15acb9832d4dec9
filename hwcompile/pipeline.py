"""The one place that strings the steps together: import, passes, plan, lower, profile, report.

Data flows one way; the only loop is the mixed-precision planner's (plan, lower, measure,
re-plan), which lives in ``hwcompile.search`` and calls back into ``build`` below. The output
folder is assembled in a temporary sibling and renamed into place only when complete, so a
failure never leaves a half-written artifact, and the input model is only ever read.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from . import __version__
from .analysis.stats import layer_stats, model_summary
from .backends.base import Artifact, Backend, Profile, get_backend
from .data import Dataset, as_feeds, load_npz
from .errors import ConfigError, DataError
from .ir import Graph, load, to_bytes
from .output import Staging, check_out_dir
from .metrics import output_weights, snr_db, spearman, topk
from .passes import cleanup, deployment_shapes, specialize_and_fold
from .plan import CANDIDATES, PrecisionPlan, QuantSettings, parse_sparsity
from .recover.settings import RecoverSettings
from .targets import Target, load_target

__all__ = ["CompileOptions", "CompileResult", "compile_model", "build", "evaluate", "prepare"]

Progress = Callable[[str], None]


@dataclass
class CompileOptions:
    precision: str = "fp32"              # fp32 | fp16 | int8 | int8dyn | int4w | mixed
    sparsity: str = "dense"              # dense | N:M | unstructured=R | channels=R
    prune_schedule: str = "one-shot"     # one-shot | gradual | iterative
    quant: QuantSettings = field(default_factory=QuantSettings)
    quant_given: frozenset[str] = frozenset()   # QuantSettings fields the user set (a target's [quant] yields to them)
    calib: str | Path | Dataset | None = None
    calib_samples: int = 256
    eval: str | Path | Dataset | None = None
    labels: str | None = None
    metric: str | None = None            # top1 | top5 | snr (default: top1 with labels, else snr)
    plan_file: str | Path | None = None
    latency_budget_ms: float | None = None
    size_budget_mb: float | None = None
    max_accuracy_drop: float | None = None
    repeats: int = 50
    warmup: int = 10
    per_layer_profile: bool = True
    baseline: bool = True
    input_shapes: dict[str, list[int]] = field(default_factory=dict)  # concrete shapes for dynamic inputs
    latency_table: str | Path | None = None  # a latency.json to replay (hwcompile.latency_table)
    remeasure: bool = False              # measure every latency again instead of replaying
    use_cache: bool = True               # False: no cache read or written (--no-cache)
    calib_batch_size: int = 4            # samples per calibration run (memory only: results do not depend on it)
    recover: RecoverSettings = field(default_factory=RecoverSettings)   # recovery training (off by default)
    recover_data: str | Path | Dataset | None = None                    # default: the calibration data

    def validate(self) -> None:
        if self.precision not in CANDIDATES and self.precision != "mixed":
            raise ConfigError(f"unknown precision {self.precision!r}", where="--precision",
                              hint=f"one of {sorted(CANDIDATES) + ['mixed']}")
        parse_sparsity(self.sparsity)
        if self.prune_schedule not in ("one-shot", "gradual", "iterative"):
            raise ConfigError(f"unknown schedule {self.prune_schedule!r}", where="--prune-schedule")
        if self.repeats < 1 or self.warmup < 0:
            raise ConfigError("repeats must be >= 1 and warmup >= 0", where="--repeats")
        if self.metric is not None and self.metric not in ("top1", "top5", "snr", "spearman"):
            raise ConfigError(f"unknown metric {self.metric!r}", where="--metric", hint="top1, top5, spearman or snr")
        budgets = [b for b in (self.latency_budget_ms, self.size_budget_mb) if b is not None]
        if any(b <= 0 for b in budgets):
            raise ConfigError("budgets must be positive", where="--latency-budget/--size-budget")
        if self.calib_batch_size < 1:
            raise ConfigError("must be >= 1", where="--calib-batch-size")


@dataclass
class CompileResult:
    out_dir: Path
    report: dict[str, Any]
    plan: PrecisionPlan


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare(model_path: str | Path, options: CompileOptions, progress: Progress = lambda s: None):
    """Import and clean up; load data. Returns (graph, pass_log, calib, eval)."""
    progress("import")
    graph = load(model_path)
    log: dict = {}
    progress("clean-up and BN folding")
    graph = cleanup(graph, log=log)
    calib = _dataset(options.calib, graph, None, "--calib")
    evald = _dataset(options.eval, graph, options.labels, "--eval")
    progress("shape specialization, attention-mask and NaN-guard folding")
    data = calib or evald
    graph = specialize_and_fold(graph, deployment_shapes(graph, options.input_shapes, data.inputs if data else None),
                                log=log)
    return graph, log, calib, evald


def _dataset(spec, graph: Graph, labels: str | None, field: str) -> Dataset | None:
    """The data in content order (``Dataset.canonical``): results never depend on the file's sample order."""
    if spec is None:
        return None
    return (spec if isinstance(spec, Dataset) else load_npz(spec, graph, labels=labels, field=field)).canonical()


def make_plan(graph: Graph, options: CompileOptions, target: Target) -> PrecisionPlan:
    if options.plan_file:
        plan = PrecisionPlan.load(options.plan_file)
    else:
        if not target.supports_precision(options.precision):
            raise ConfigError(f"target {target.name} does not support precision {options.precision!r}",
                              where="--precision", hint=f"it supports {list(target.precisions)}")
        if not target.supports_sparsity(options.sparsity):
            raise ConfigError(f"target {target.name} does not support sparsity {options.sparsity!r}",
                              where="--sparsity", hint=f"it supports {list(target.sparsity)}")
        base = "fp32" if options.precision == "mixed" else options.precision
        plan = PrecisionPlan.uniform(base, options.sparsity)
        # the target's [quant] defaults (e.g. TensorRT: entropy calibration), unless given on the command line
        device = {k: v for k, v in target.quant.items() if k not in options.quant_given}
        plan = dataclasses.replace(plan, quant=dataclasses.replace(options.quant, **device))
        if options.sparsity != "dense":
            plan.notes["prune_schedule"] = options.prune_schedule
    plan.target = target.name
    return plan


def needs_calibration(plan: PrecisionPlan, graph: Graph) -> bool:
    choices = [plan.choice(n.name) for n in graph.layers()] + [plan.default]
    return any(c.activation == "int8" or (c.weight in ("int8", "int4") and plan.quant.compensation == "gptq")
               or parse_sparsity(c.sparsity)[0] == "channels" for c in choices)


def build(graph: Graph, plan: PrecisionPlan, target: Target, backend: Backend, out_dir: Path,
          calib: Dataset | None, progress: Progress = lambda s: None, cache: dict | None = None,
          recovery: tuple[RecoverSettings, Dataset] | None = None) -> tuple[Graph, Artifact]:
    """Apply the plan's pruning and quantization passes to a copy of ``graph``, train it back toward
    ``graph`` when ``recovery`` = (settings, data) is given, and lower it."""
    from .transform import apply_plan

    progress("apply plan")
    g = apply_plan(graph.clone(), plan, backend.qdq_style(target), calib, cache=cache)
    if recovery is not None and recovery[0].enabled:
        from .recover import recover_compiled

        g = recover_compiled(g, graph, plan, recovery[0], recovery[1], progress)
    progress(f"lower ({backend.name})")
    return g, backend.lower(g, plan, target, out_dir)


def evaluate(backend: Backend, artifact: Artifact, target: Target, data: Dataset, graph: Graph,
             reference: list[np.ndarray] | None = None, metric: str | None = None) -> tuple[dict, list[np.ndarray]]:
    """Run ``data`` through the artifact; metrics against labels and/or reference outputs."""
    run = backend.load(artifact, target)
    outs: list[list[np.ndarray]] = []
    for batch in data.batches(batch_size=graph.fixed_batch() or 64):  # a fixed-batch export takes its own
        outs.append(run(as_feeds(batch, graph)))
    merged = [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]
    metrics: dict[str, float] = {}
    if data.labels is not None and metric == "spearman":
        # one score per sample (e.g. a similarity head): rank correlation with the labels
        metrics["spearman"] = spearman(merged[0].reshape(len(data.labels), -1)[:, 0], data.labels)
    elif data.labels is not None and metric != "snr":
        metrics["top1"] = topk(merged[0], data.labels, 1)
        if merged[0].reshape(len(data.labels), -1).shape[1] >= 5:
            metrics["top5"] = topk(merged[0], data.labels, 5)
    if reference is not None:
        n = len(merged[0])
        metrics["snr_db"] = snr_db(reference, merged, output_weights({k: v[:n] for k, v in data.inputs.items()}, merged))
    return metrics, merged


def compile_model(model_path: str | Path | None, target_name: str, out_dir: str | Path,
                  options: CompileOptions | None = None, progress: Progress = lambda s: None,
                  force: bool = False) -> CompileResult:
    """Compile ``model_path`` (None: the embedded default) for a target into ``out_dir``.

    An existing ``out_dir`` is replaced only if it is an hwcompile output (or with ``force``).
    Every latency goes through a ``LatencyTable`` (replayed from ``options.latency_table`` or the
    cache unless ``options.remeasure``) and is written to ``latency.json``; see
    ``hwcompile.latency_table``. With ``options.use_cache`` False no cache is read or written."""
    from . import cache
    from .quant.calibration import calibration_batch

    options = options or CompileOptions()
    options.validate()
    with cache.disabled(not options.use_cache), calibration_batch(options.calib_batch_size):
        return _compile_model(model_path, target_name, out_dir, options, progress, force)


def _compile_model(model_path, target_name, out_dir, options: CompileOptions, progress: Progress,
                   force: bool) -> CompileResult:
    from .latency_table import LatencyTable, MeasuredBackend
    from .report.versions import tool_versions
    from .report.writer import write_outputs

    t_start = time.perf_counter()
    if model_path is None:
        from .models import default_model

        d = default_model()
        model_path = d.model
        options = dataclasses.replace(options, calib=options.calib or d.calib,
                                      eval=options.eval or d.eval, labels=options.labels or d.labels)
    model_path = Path(model_path)
    check_out_dir(out_dir, [model_path], force=force)  # before any work
    target = load_target(target_name)
    backend = get_backend(target.backend)
    fingerprint = target.fingerprint(tool_versions(backend))
    table = (LatencyTable.load(options.latency_table, fingerprint, remeasure=options.remeasure)
             if options.latency_table else LatencyTable(fingerprint, remeasure=options.remeasure))
    backend = MeasuredBackend(backend, table)
    input_hash = file_sha256(model_path) if model_path.is_file() else None
    graph, pass_log, calib, evald = prepare(model_path, options, progress)
    plan = make_plan(graph, options, target)
    plan.model = input_hash or ""
    if needs_calibration(plan, graph) or options.precision == "mixed":
        if calib is None:
            raise DataError("this precision/sparsity needs calibration data", where="--calib",
                            hint="pass --calib DATA.npz with one array per model input")
    recovery = _recovery(graph, options, calib)
    stage = Staging(out_dir, [model_path], force=force)
    out_dir, tmp = stage.out, stage.path
    try:
        eval_set = evald or (calib.take(min(len(calib), 64)) if calib is not None else None)
        sample = _profile_feeds(graph, eval_set, options.input_shapes)
        baseline = None
        reference = None
        if options.baseline:
            progress("baseline (fp32)")
            base_dir = Path(tempfile.mkdtemp(prefix="baseline-", dir=tmp))
            base_art = backend.lower(graph, PrecisionPlan.uniform("fp32"), target, base_dir)
            baseline = _measure(backend, base_art, target, graph, sample, eval_set, None, options, progress)
            reference = baseline.pop("_outputs", None)
            shutil.rmtree(base_dir)
        if options.precision == "mixed":
            from .search.driver import SearchOptions, plan_mixed

            # its per-candidate latency file cache is off: the latency table replays every profile instead
            plan, search_info = plan_mixed(graph, plan, target, backend, calib, eval_set, options, baseline,
                                           reference, tmp, progress, search=SearchOptions(use_cache=False))
        else:
            search_info = None
        compiled_graph, artifact = build(graph, plan, target, backend, tmp, calib, progress, recovery=recovery)
        compiled = _measure(backend, artifact, target, graph, sample, eval_set, reference, options, progress)
        compiled.pop("_outputs", None)
        profile = compiled.pop("_profile")
        if baseline:
            baseline.pop("_profile", None)
        progress("report")
        report = _report(model_path, input_hash, target, backend, graph, compiled_graph, plan, baseline, compiled,
                         profile, pass_log, artifact, search_info, time.perf_counter() - t_start)
        if "recovery" in compiled_graph.meta:
            report["recovery"] = compiled_graph.meta["recovery"]
        report["measurements"] = dict(table.counts)
        if table.pinned_fingerprint not in (None, fingerprint):
            report.setdefault("notes", []).append(
                f"the pinned latency table was measured on target fingerprint {table.pinned_fingerprint}, "
                f"this one is {fingerprint}: its figures are another setup's")
        write_outputs(tmp, artifact, plan, report, profile, table=table, options=options, model_path=model_path,
                      target=target)
        stage.publish()
    except BaseException:
        progress_file = tmp / "search" / "progress.json"
        if progress_file.exists():  # an interrupted search still leaves its best plan and front
            os.replace(progress_file, out_dir.parent / f"{out_dir.name}.search-progress.json")
        stage.discard()
        raise
    return CompileResult(out_dir=out_dir, report=report, plan=plan)


def _recovery(graph: Graph, options: CompileOptions, calib: Dataset | None):
    """(settings, data) for recovery training, or None when it is off. Checked before any output is
    written: torch importable, data present and matching the model's inputs (labels from the array
    ``--labels`` names, when the recovery file has one)."""
    if not options.recover.enabled:
        return None
    from .recover import require_torch

    require_torch()
    data = options.recover_data
    if data is not None and not isinstance(data, Dataset):
        p = Path(data)
        labels = None
        if options.labels and p.is_file():
            try:
                with np.load(p, allow_pickle=False) as z:
                    labels = options.labels if options.labels in z.files else None
            except Exception:
                labels = None                      # load_npz below names the file it cannot read
        data = load_npz(p, graph, labels=labels, field="--recover-data")
    data = data if data is not None else calib
    if data is None:
        raise DataError("recovery training needs data", where="--recover-data",
                        hint="pass --recover-data DATA.npz (model inputs) or --calib")
    return options.recover, data


def _profile_feeds(graph: Graph, data: Dataset | None, shapes: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
    """One batch-1 input for latency measurement: a real sample when there is data, else seeded
    random data of the given ``shapes`` (dynamic dimensions default to 1)."""
    if data is not None:
        return as_feeds(next(data.batches(1)), graph)
    from .data import input_specs

    rng = np.random.default_rng(0)
    feeds = {}
    specs = input_specs(graph)
    for name in shapes or {}:
        if name not in specs:
            raise ConfigError(f"model has no input {name!r} (inputs: {sorted(specs)})", where="--shape")
    for name, (dims, dtype) in specs.items():
        if dims is None and name not in (shapes or {}):
            raise DataError(f"input '{name}' has unknown rank; give --shape or --eval/--calib data", where="profile")
        shape = list((shapes or {}).get(name) or [d if isinstance(d, int) and d > 0 else 1 for d in dims])
        if dims is not None and (len(shape) != len(dims) or any(isinstance(d, int) and d >= 0 and d != s for d, s in zip(dims, shape))):
            raise ConfigError(f"shape {shape} does not fit input '{name}' {dims}", where="--shape")
        feeds[name] = (rng.standard_normal(shape) if np.issubdtype(dtype, np.floating)
                       else np.zeros(shape)).astype(dtype)
    return feeds


def _measure(backend, artifact, target, graph, sample, eval_set, reference, options, progress) -> dict:
    progress(f"profile {artifact.directory.name}")
    prof: Profile = backend.profile(artifact, target, sample, repeats=options.repeats, warmup=options.warmup,
                                    per_layer=options.per_layer_profile)
    out = {"latency_ms": prof.timing.latency_ms, "latency_ms_spread": prof.timing.latency_ms_spread,
           "timing": prof.timing.to_dict(), "size_bytes": _artifact_size(artifact), "metrics": {}, "_profile": prof}
    if eval_set is not None:
        progress(f"evaluate {artifact.directory.name}")
        metrics, outputs = evaluate(backend, artifact, target, eval_set, graph, reference, options.metric)
        out["metrics"] = metrics
        out["_outputs"] = outputs
    return out


def _artifact_size(artifact: Artifact) -> int:
    role = "engine" if "engine" in artifact.files else "model"
    p = artifact.path(role)
    size = p.stat().st_size
    data = p.with_name(p.name + ".data")
    return size + (data.stat().st_size if data.exists() else 0)


def _report(model_path, input_hash, target, backend, graph, compiled_graph, plan, baseline, compiled, profile,
            pass_log, artifact, search_info, seconds) -> dict[str, Any]:
    from .report.versions import tool_versions

    stats = layer_stats(graph)
    layers = {}
    for lid, s in stats.items():
        entry = dict(s)
        if lid in profile.layers_ms:
            entry["latency_ms"] = profile.layers_ms[lid]
        if s["flops"] or s["params"]:
            entry["choice"] = plan.choice(lid).candidate
            entry["sparsity"] = plan.choice(lid).sparsity
        layers[lid] = entry
    for lid, ms in profile.layers_ms.items():  # layers our passes introduced (e.g. folded-bias Add)
        layers.setdefault(lid, {"op": "?", "params": 0, "flops": 0})["latency_ms"] = ms
    report = {
        "format": "hwcompile.report/1",
        "model": {"path": str(model_path), "sha256": input_hash, **model_summary(graph)},
        "target": {"name": target.name, "backend": target.backend, "path": target.path,
                   "fingerprint": target.fingerprint(tool_versions(backend))},
        "backend": backend.name,
        "precision": plan.default.candidate if not plan.layers else "mixed",
        "baseline": baseline,
        "compiled": compiled,
        "speedup": (baseline["latency_ms"] / compiled["latency_ms"]) if baseline else None,
        "layers": layers,
        "unmapped_kernels_ms": profile.unmapped_ms,
        "kernels": profile.info.get("kernels", [])[:50],
        "passes": pass_log,
        "specialization": {"shapes": graph.meta.get("shape_specialization"),
                           "attention_masks": graph.meta.get("attention_masks"),
                           "nan_guards_declined": graph.meta.get("nan_guards_declined") or {}},
        "artifact": {"files": artifact.files, **{k: v for k, v in artifact.info.items() if k != "session"}},
        "compiled_ops": model_summary(compiled_graph)["ops"],
        "versions": {"hwcompile": __version__, **tool_versions(backend)},
        "seconds": round(seconds, 2),
    }
    if search_info:
        report.update(search_info)
    report["notes"] = _notes(artifact, profile, compiled_graph)
    return report


def _notes(artifact: Artifact, profile: Profile, graph: Graph) -> list[str]:
    notes = []
    if artifact.info.get("engine_built") is False:
        notes.append(f"no engine was built: {artifact.info.get('engine_reason')}; the deployable ONNX was written "
                     "and validated, and latency/accuracy were measured with onnxruntime on this CPU")
    if graph.meta.get("int8_embeddings"):
        notes.append("INT8 embedding tables (per-row scales; plan.quant.embeddings = 'float' keeps them float): "
                     + ", ".join(graph.meta["int8_embeddings"]))
    for key, what in (("dynamic_skipped", "dynamic INT8"), ("int4_skipped", "INT4"), ("prune_skipped", "pruning"),
                      ("channel_prune_skipped", "channel pruning")):
        skipped = graph.meta.get(key) or {}
        if skipped:
            notes.append(f"{what} not applied to {len(skipped)} layer(s), e.g. "
                         + "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3]))
    return notes

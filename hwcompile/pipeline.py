"""The one place that strings the steps together: import, passes, plan, lower, profile, report.

Data flows one way; the only loop is the mixed-precision planner's (plan, lower, measure,
re-plan), which lives in ``hwcompile.search`` and calls back into ``build`` below. The output
folder is assembled in a temporary sibling and renamed into place only when complete, so a
failure never leaves a half-written artifact, and the input model is only ever read.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .backends.base import open_target
from .cache import file_digest
from .contract import CANDIDATES, FP32, LayerChoice, PrecisionPlan, PruneSettings, QuantSettings, check_input_shapes
from .contract import parse_sparsity
from .data import Dataset, load_npz
from .errors import ConfigError, DataError
from .gates import Gates
from .ir import Graph, load
from .measure import METRICS, build, evaluate, measure, needs_calibration, profile_feeds
from .output import Staging, check_out_dir
from .passes import cleanup, deployment_shapes, specialize_and_fold
from .recover.settings import RecoverSettings
from .targets import Target

__all__ = ["CompileOptions", "CompileResult", "compile_model", "build", "evaluate", "prepare"]

Progress = Callable[[str], None]


@dataclass
class CompileOptions:
    precision: str = "fp32"              # fp32 | fp16 | int8 | int8dyn | int4w | mixed
    sparsity: str = "dense"              # dense | N:M | unstructured=R | channels=R
    prune: PruneSettings = field(default_factory=PruneSettings)   # how sparsity is applied (schedule, ...)
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
    gates: Gates = field(default_factory=Gates)   # release gates (hwcompile.gates), checked at the end
    config_file: str | None = None       # the hwcompile.toml / pyproject.toml these options came from

    def validate(self) -> None:
        if self.precision not in CANDIDATES and self.precision != "mixed":
            raise ConfigError(f"unknown precision {self.precision!r}", where="--precision",
                              hint=f"one of {sorted(CANDIDATES) + ['mixed']}")
        parse_sparsity(self.sparsity)
        check_input_shapes(self.input_shapes, "--shape")
        if self.repeats < 1 or self.warmup < 0:
            raise ConfigError("repeats must be >= 1 and warmup >= 0", where="--repeats")
        if self.metric is not None and self.metric not in METRICS:
            raise ConfigError(f"unknown metric {self.metric!r}", where="--metric", hint="top1, top5, spearman or snr")
        budgets = [b for b in (self.latency_budget_ms, self.size_budget_mb) if b is not None]
        if any(b <= 0 for b in budgets):
            raise ConfigError("budgets must be positive", where="--latency-budget/--size-budget")
        if self.calib_batch_size < 1:
            raise ConfigError("must be >= 1", where="--calib-batch-size")
        self.gates.validate()


@dataclass
class CompileResult:
    """The output folder, the full report (``report.json`` + ``timings.json``) and the plan."""

    out_dir: Path
    report: dict[str, Any]
    plan: PrecisionPlan

    @property
    def gates(self) -> list[dict[str, Any]]:
        """One row per release gate asked for (``hwcompile.gates.check``)."""
        return list(self.report.get("gates") or [])

    @property
    def ok(self) -> bool:
        """False when a release gate failed."""
        return all(g["passed"] for g in self.gates)


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
    """The plan to build: the plan file, or a uniform plan from the options and the target's [quant] defaults;
    ``--shape`` input shapes (given) replace the plan's."""
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
        # the target's [quant] defaults (e.g. TensorRT: entropy calibration), unless given on the command line
        device = {k: v for k, v in target.quant.items() if k not in options.quant_given}
        plan = PrecisionPlan(default=LayerChoice.from_candidate(base, options.sparsity, reason="uniform"),
                             quant=dataclasses.replace(options.quant, **device), prune=_prune_settings(options))
    shapes = options.input_shapes or plan.input_shapes
    return dataclasses.replace(plan, target=target.name, input_shapes=shapes)


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
    with cache.scope(options.use_cache), calibration_batch(options.calib_batch_size):
        return _compile_model(model_path, target_name, out_dir, options, progress, force)


def _compile_model(model_path, target_name, out_dir, options: CompileOptions, progress: Progress,
                   force: bool) -> CompileResult:
    from .latency_table import LatencyTable, MeasuredBackend
    from .report.assemble import assemble_report
    from .report.writer import write_outputs
    from .versions import tool_versions

    t_start = time.perf_counter()
    if model_path is None:
        from .models import default_model

        d = default_model()
        model_path = d.model
        options = dataclasses.replace(options, calib=options.calib or d.calib,
                                      eval=options.eval or d.eval, labels=options.labels or d.labels)
    model_path = Path(model_path)
    check_out_dir(out_dir, [model_path], force=force)  # before any work
    opened = open_target(target_name)
    target, backend = opened.target, opened.backend
    fingerprint = target.fingerprint(tool_versions(backend))
    table = (LatencyTable.load(options.latency_table, fingerprint, remeasure=options.remeasure)
             if options.latency_table else LatencyTable(fingerprint, remeasure=options.remeasure))
    backend = MeasuredBackend(backend, table)
    input_hash = file_digest(model_path) if model_path.is_file() else None
    graph, pass_log, calib, evald = prepare(model_path, options, progress)
    plan = dataclasses.replace(make_plan(graph, options, target), model=input_hash or "")
    if needs_calibration(plan, graph) or options.precision == "mixed":
        if calib is None:
            raise DataError("this precision/sparsity needs calibration data", where="--calib",
                            hint="pass --calib DATA.npz with one array per model input")
    recovery = _recovery(graph, options, calib)
    stage = Staging(out_dir, [model_path], force=force)
    out_dir, tmp = stage.out, stage.path
    try:
        eval_set = evald or (calib.take(min(len(calib), 64)) if calib is not None else None)
        sample = profile_feeds(graph, eval_set, plan.input_shapes)
        timing = dict(repeats=options.repeats, warmup=options.warmup, per_layer=options.per_layer_profile,
                      metric=options.metric, progress=progress)
        baseline = reference = base_profile = None
        if options.baseline:
            progress("baseline (fp32)")
            base_dir = Path(tempfile.mkdtemp(prefix="baseline-", dir=tmp))
            base_art = backend.lower(graph, FP32.uniform_plan(plan), target, base_dir)
            measured = measure(backend, base_art, target, graph, sample, eval_set, None, **timing)
            baseline, reference = measured.to_dict(), measured.outputs
            base_profile = measured.profile
        if options.precision == "mixed":
            from .search.driver import SearchOptions, plan_mixed

            # its per-candidate latency file cache is off: the latency table replays every profile instead
            plan, search_info = plan_mixed(graph, plan, target, backend, calib, eval_set, options, baseline,
                                           reference, tmp, progress, search=SearchOptions(use_cache=False))
        else:
            search_info = None
        compiled_graph, artifact = build(graph, plan, target, backend, tmp, calib, progress, recovery=recovery)
        measured = measure(backend, artifact, target, graph, sample, eval_set, reference, **timing)
        compiled_graph, artifact, measured, variants = _attention_variants(
            graph, compiled_graph, artifact, measured, plan, target, backend, tmp, sample, eval_set, reference,
            options, timing, progress)
        compiled, profile = measured.to_dict(), measured.profile
        compiled["input_shapes"] = {k: list(np.shape(v)) for k, v in sample.items()}  # what was measured
        paired = None
        if baseline:
            progress("paired timing against fp32")
            paired = _paired(backend, base_art, artifact, target, sample)
            shutil.rmtree(base_dir)
        progress("report")
        report = assemble_report(model_path, input_hash, target, backend, graph, compiled_graph, plan, baseline, compiled,
                         profile, pass_log, artifact, search_info, time.perf_counter() - t_start)
        if variants is not None:
            report["attention_variants"] = variants
        if "recovery" in compiled_graph.meta:
            report["recovery"] = compiled_graph.meta["recovery"]
        from .report.graphmap import outline

        report["graph"] = outline(graph)             # the precision map's nodes and edges
        if baseline:
            report["baseline_layers_ms"] = dict(base_profile.layers_ms) if base_profile else {}
        report["measurements"] = dict(table.counts)
        if paired is not None:
            from .paired import slower_note

            report["speedup_paired"] = paired
            note = slower_note(paired, report["precision"])
            if note:
                report["slower_than_fp32"] = note
        if options.gates.any:
            from .gates import check

            report["gates"] = check(options.gates, report)
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


def _paired(backend, base_art, artifact, target, sample) -> dict:
    """``paired.paired_speedup`` of the compiled artifact against the FP32 one (live runners, not the
    output cache), through the latency table like every other timing (replayed where it replays)."""
    from .cache import array_digest
    from .latency_table import artifact_digest
    from .paired import paired_speedup

    inner = getattr(backend, "inner", backend)

    def measure() -> dict:
        run_b, run_c = inner.load(base_art, target), inner.load(artifact, target)
        return paired_speedup(lambda: run_b(sample), lambda: run_c(sample))

    table = getattr(backend, "table", None)
    if table is None:
        return measure()
    what = {"backend": inner.name, "paired": [artifact_digest(base_art), artifact_digest(artifact)],
            "feeds": array_digest({k: np.asarray(v) for k, v in sample.items()})}
    return table.measured(what, measure)


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
    return _cycle_share(options) or options.recover, data


def _cycle_share(options: CompileOptions) -> RecoverSettings | None:
    """With recovery on and a gradual/iterative schedule, the budget of each of its ``steps`` prune ->
    recover cycles (the last one is the recovery after the passes); None otherwise."""
    if not options.recover.enabled or options.prune.schedule == "one-shot" or options.sparsity == "dense":
        return None
    k, r = options.prune.steps, options.recover
    return dataclasses.replace(r, steps=-(-r.steps // k) if r.steps else 0, minutes=r.minutes / k)


def _prune_settings(options: CompileOptions) -> PruneSettings:
    """The plan's prune settings: with prune -> recover cycles, each cycle's training budget in them."""
    cycle = _cycle_share(options)
    if cycle is None:
        return options.prune
    return dataclasses.replace(options.prune, recover_steps=cycle.steps, recover_minutes=cycle.minutes,
                               recover_lr=cycle.lr)


def _attention_variants(graph, compiled_graph, artifact, measured, plan, target, backend, tmp, sample, eval_set,
                        reference, options, timing, progress):
    """A quantized build with attention: its INT8-attention variants measured (search.variants); the
    chosen one replaces the build. Returns (graph, artifact, measurement, record or None)."""
    from .passes.quantize_attention import attention_matmuls

    if options.precision not in ("int8", "int8dyn", "mixed") or eval_set is None \
            or not attention_matmuls(compiled_graph)["qk"]:
        return compiled_graph, artifact, measured, None
    from .search.variants import try_attention_variants

    progress("attention variants")
    work = Path(tempfile.mkdtemp(prefix="variants-", dir=tmp))
    taken: dict[int, object] = {}

    def measure_one(art):
        m = measure(backend, art, target, graph, sample, eval_set, reference, **timing)
        taken[id(art)] = m
        return m.to_dict()

    try:
        g, art, _, record = try_attention_variants(
            compiled_graph, measured.to_dict(), lambda gr, d: backend.lower(gr, plan, target, d), measure_one,
            work, max_drop=options.max_accuracy_drop)
        if art is None:
            return compiled_graph, artifact, measured, record
        return g, backend.lower(g, plan, target, tmp), taken[id(art)], record
    finally:
        shutil.rmtree(work, ignore_errors=True)

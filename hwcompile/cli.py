"""Command line: parse, call the pipeline, print. Errors are one line and exit code 2."""
from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import HwcompileError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="hwcompile: hardware-aware deployment compiler for ONNX models.")
console = Console()
err = Console(stderr=True)
_STATE = {"verbose": False}


@app.callback()
def _main(ctx: typer.Context, verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks on errors."),
          config: Optional[Path] = typer.Option(
              None, "--config", help="Compile options from this TOML file (default: ./hwcompile.toml, else "
                                     "[tool.hwcompile] in ./pyproject.toml); command-line options override it.")):
    """Exit codes: 0 success, 1 internal error, 2 bad input or configuration, 3 a gate, comparison or
    verification failed, 4 the target cannot build here."""
    _STATE["verbose"] = verbose
    _STATE["config_file"] = None
    if ctx.invoked_subcommand == "compile":
        from .config import compile_defaults, find_config

        found = _guard(lambda: find_config(config))
        if found:
            path, table = found
            cmd = ctx.command.get_command(ctx, "compile")
            ctx.default_map = {"compile": _guard(lambda: compile_defaults(table, cmd, path.parent))}
            _STATE["config_file"] = str(path)


@contextlib.contextmanager
def _progress(enabled: bool = True):
    """A spinner with the current step and elapsed time (on stderr, so --json stays clean)."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True, disable=not enabled) as prog:
        task = prog.add_task("starting", total=None)
        yield lambda step: prog.update(task, description=step)


def _print_json(data) -> None:
    from .report.writer import json_default

    sys.stdout.write(json.dumps(data, indent=2, default=json_default) + "\n")


@app.command()
def compile(
    model: Optional[Path] = typer.Argument(None, help="ONNX model; omit for the embedded default (digits CNN)."),
    target: str = typer.Option("host-cpu", "--target", "-t", help="Target name or .toml path."),
    out: Path = typer.Option(Path("hwcompile-out"), "--out", "-o", help="Output folder."),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | int8 | int8dyn | int4w | mixed"),
    sparsity: str = typer.Option("dense", help="dense | 2:4 | N:M | unstructured=R | channels=R"),
    prune_schedule: str = typer.Option("one-shot", help="one-shot | gradual | iterative"),
    prune_criterion: str = typer.Option(
        "auto", help="auto | magnitude | wanda | sparsegpt | fisher | snip | grasp (gradients: needs hwcompile[train])"),
    calib: Optional[Path] = typer.Option(None, help=".npz: one array per model input (axis 0 = samples)."),
    calib_method: Optional[str] = typer.Option(
        None, help="minmax | percentile | entropy | mse (default: the target's [quant], else minmax)"),
    compensation: str = typer.Option("bias", help="none | bias | gptq (weight rounding error compensation)"),
    per_tensor: bool = typer.Option(False, help="Per-tensor instead of per-channel weight scales."),
    embeddings: str = typer.Option("int8", help="int8 | float: large Gather (embedding) tables when quantizing."),
    eval: Optional[Path] = typer.Option(None, "--eval", help=".npz with model inputs (+ labels) for accuracy."),
    labels: Optional[str] = typer.Option(None, help="Name of the label array in --eval."),
    metric: Optional[str] = typer.Option(None, help="top1 | top5 | spearman | snr"),
    plan: Optional[Path] = typer.Option(None, help="Use this plan.json instead of planning."),
    latency_budget: Optional[float] = typer.Option(None, help="Mixed: latency budget in ms."),
    size_budget: Optional[float] = typer.Option(None, help="Mixed: size budget in MB."),
    max_accuracy_drop: Optional[float] = typer.Option(None, help="Mixed: largest allowed metric drop."),
    repeats: int = typer.Option(50, help="Timed runs per latency measurement."),
    shape: list[str] = typer.Option([], "--shape", help="Concrete shape for a dynamic input, e.g. x=1,3,48,192."),
    latency_table: Optional[Path] = typer.Option(
        None, help="Replay this latency.json (from an earlier output) instead of measuring: same plan, same bytes."),
    remeasure: bool = typer.Option(False, help="Measure every latency again (no replay from the cache or a table)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Read and write no cache (HWCOMPILE_CACHE_DIR)."),
    calib_batch_size: int = typer.Option(4, help="Calibration samples per run (memory only; results do not change)."),
    recover_steps: int = typer.Option(0, help="Recovery training steps after the passes (0 = off; needs hwcompile[train])."),
    recover_minutes: float = typer.Option(0.0, help="Recovery training time budget in minutes (0 = none)."),
    recover_data: Optional[Path] = typer.Option(None, help=".npz of model inputs to train on (default: --calib); "
                                                           "labels from the --labels array when it has one."),
    recover: str = typer.Option("distill", "--recover", help="distill | block (recovery mode)"),
    recover_lr: float = typer.Option(1e-4, help="Recovery learning rate (Adam)."),
    fail_if_accuracy_drop: Optional[float] = typer.Option(
        None, help="Gate: exit 3 when the metric drops more than this (points for top1/top5/spearman; for snr, "
                   "relative RMS output error in %)."),
    fail_if_slower_than: Optional[float] = typer.Option(
        None, help="Gate: exit 3 when latency / reference > this (reference: FP32, or --baseline's)."),
    fail_if_larger_than: Optional[int] = typer.Option(None, help="Gate: exit 3 when the artifact exceeds this many bytes."),
    baseline: Optional[Path] = typer.Option(None, help="OLD/report.json (or its folder): --fail-if-slower-than's reference."),
    as_json: bool = typer.Option(False, "--json", help="Print report.json instead of the table."),
    force: bool = typer.Option(False, "--force", help="Replace --out even if it is not an hwcompile output."),
):
    """Compile MODEL for a target: writes model + plan.json + report.json (+ report.html) to --out."""
    from .gates import Gates
    from .pipeline import CompileOptions, compile_model
    from .contract import PruneSettings, QuantSettings
    from .recover.settings import RecoverSettings
    from .report.writer import summary_rows

    def run():
        opts = CompileOptions(
            recover=RecoverSettings(steps=recover_steps, minutes=recover_minutes, mode=recover, lr=recover_lr),
            recover_data=recover_data,
            precision=precision, sparsity=sparsity, prune=PruneSettings(schedule=prune_schedule, importance=prune_criterion),
            quant=QuantSettings(calib_method=calib_method or "minmax", compensation=compensation,
                                per_channel=not per_tensor, embeddings=embeddings),
            quant_given=frozenset({"calib_method"} if calib_method else ()),
            calib=calib, eval=eval, labels=labels, metric=metric, plan_file=plan, latency_budget_ms=latency_budget,
            size_budget_mb=size_budget, max_accuracy_drop=max_accuracy_drop, repeats=repeats,
            input_shapes=_parse_shapes(shape), latency_table=latency_table, remeasure=remeasure,
            use_cache=not no_cache, calib_batch_size=calib_batch_size, config_file=_STATE.get("config_file"),
            gates=Gates(fail_if_accuracy_drop=fail_if_accuracy_drop, fail_if_slower_than=fail_if_slower_than,
                        fail_if_larger_than=fail_if_larger_than, baseline=baseline))
        with _progress(not as_json) as step:
            return compile_model(model, target, out, opts, progress=step, force=force)

    result = _guard(run)
    rep = result.report
    failed = [g for g in result.gates if not g["passed"]]
    if as_json:
        _print_json(rep)
        if failed:
            raise typer.Exit(3)
        return
    table = Table(title=f"{Path(rep['model']['path']).name} -> {rep['target']['name']} ({rep['backend']}), "
                        f"precision {rep['precision']}")
    table.add_column("")
    table.add_column("baseline fp32", justify="right")
    table.add_column("compiled", justify="right")
    for row in summary_rows(rep):
        table.add_row(*(escape(str(c)) for c in row))
    console.print(table)
    if rep.get("slower_than_fp32"):
        console.print(f"[red]warning:[/] {escape(rep['slower_than_fp32'])}")
    for note in rep.get("notes", []):
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(escape(f"wrote {result.out_dir}/ ({', '.join(sorted(rep['artifact']['files'].values()))}, plan.json, "
                         "report.json, report.html)"))
    for g in result.gates:
        console.print(f"gate {g['gate'].replace('_', '-')}: {'passed' if g['passed'] else '[red]FAILED[/]'}: "
                      f"{escape(g['detail'])}")
    if failed:
        err.print(f"[red]error:[/] {len(failed)} release gate(s) failed (the output was written)")
        raise typer.Exit(3)


@app.command()
def inspect(model: Path, as_json: bool = typer.Option(False, "--json")):
    """Op histogram, parameters, FLOPs, BN count, input/output shapes."""
    from .analysis.stats import model_summary

    def run():
        g, lifted = _load_lifted(model)
        return {**model_summary(g), "constant_nodes_lifted": lifted}

    summary = _guard(run)
    if as_json:
        _print_json(summary)
        return
    console.print(f"[bold]{escape(str(model))}[/]  opset {summary['opset']}, {summary['nodes']} nodes, "
                  f"{summary['params']:,} parameters, {summary['flops']:,} FLOPs, {summary['batchnorm']} BatchNorm"
                  + (f" ({summary['constant_nodes_lifted']} Constant nodes counted as weights)"
                     if summary["constant_nodes_lifted"] else ""))
    for kind in ("inputs", "outputs"):
        for v in summary[kind]:
            console.print(escape(f"  {kind[:-1]} {v['name']}: {v['dtype']} {v['shape']}"))
    t = Table("op", "count")
    for op, n in summary["ops"].items():
        t.add_row(op, str(n))
    console.print(t)


@app.command()
def profile(
    model_or_dir: Path = typer.Argument(..., help="An ONNX model, or a folder written by `compile`."),
    target: str = typer.Option("host-cpu", "--target", "-t"),
    repeats: int = typer.Option(50),
    shape: list[str] = typer.Option([], "--shape", help="Concrete shape for a dynamic input, e.g. x=1,3,48,192."),
    as_json: bool = typer.Option(False, "--json"),
):
    """End-to-end and per-layer latency on the target, per layer id."""
    from .profiling import profile_path

    def run():
        shapes = _parse_shapes(shape)
        with _progress(not as_json) as step:
            return profile_path(model_or_dir, target, repeats=repeats, progress=step, shapes=shapes)

    res = _guard(run)
    if as_json:
        _print_json(res)
        return
    console.print("inputs: " + escape(", ".join(f"{k} {v}" for k, v in res["input_shapes"].items())))
    console.print(f"median {res['latency_ms']:.3f} ms (IQR {res['latency_ms_spread']:.3f} ms, "
                  f"{res['repeats']} runs, {res['threads']} threads)")
    t = Table("layer", "op", "ms", "%")
    total = sum(v["ms"] for v in res["layers"]) or 1.0
    for row in res["layers"]:
        t.add_row(escape(row["layer"]), row["op"], f"{row['ms']:.4f}", f"{100 * row['ms'] / total:.1f}")
    console.print(t)


@app.command()
def targets(as_json: bool = typer.Option(False, "--json")):
    """List targets and whether each can build on this machine (and why not)."""
    from .backends.base import open_target
    from .targets import list_targets

    rows = []
    for t in _guard(list_targets):
        row = {"name": t.name, "backend": t.backend, "description": t.description}
        try:
            caps = open_target(t).capabilities
            row.update(caps.to_dict(), reason=caps.why_not("build"))
        except HwcompileError as e:
            row.update(can_build=False, can_run=False, can_profile=False, reason=e.render())
        except ImportError as e:
            row.update(can_build=False, can_run=False, can_profile=False, reason=f"backend module not importable: {e}")
        row["backend"] = t.backend
        rows.append(row)
    if as_json:
        _print_json(rows)
        return
    table = Table("target", "backend", "builds here", "why not", "description")
    for r in rows:
        table.add_row(*(escape(str(c)) for c in (r["name"], r["backend"], "yes" if r["can_build"] else "no",
                                                  r["reason"], r["description"])))
    console.print(table)


@app.command()
def debug(
    model: Optional[Path] = typer.Argument(None, help="ONNX model; omit for the embedded default."),
    calib: Optional[Path] = typer.Option(None, help=".npz calibration data (one array per model input)."),
    target: str = typer.Option("host-cpu", "--target", "-t"),
    precision: str = typer.Option("int8", help="The candidate to rank layers by: int8 | int8dyn | int4w | fp16"),
    calib_method: str = typer.Option("minmax", help="minmax | percentile | entropy | mse"),
    samples: int = typer.Option(32, help="Calibration samples used to score each layer."),
    top: int = typer.Option(10),
    verify: bool = typer.Option(True, help="Measure the whole build; rank by leave-one-out builds where the "
                                           "additive prediction misses it."),
    loo_limit: int = typer.Option(48, help="Most layers to rebuild one at a time in leave-one-out ranking."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Which layer breaks accuracy at PRECISION? Each layer quantized alone, ranked by output damage,
    checked against the measured whole build."""
    from .analysis.sensitivity import debug_report, layer_sensitivity
    from .backends.base import open_target
    from .contract import QuantSettings
    from .errors import DataError
    from .pipeline import CompileOptions, prepare

    def run():
        m, c = model, calib
        if m is None:
            from .models import default_model

            d = default_model()
            m, c = d.model, c or d.calib
        if c is None:
            raise DataError("debug needs calibration data", where="--calib", hint="pass --calib DATA.npz")
        opened = open_target(target)
        with _progress(not as_json) as step:
            graph, _, cal, _ = prepare(m, CompileOptions(calib=c), step)
            quant = QuantSettings(calib_method=calib_method)
            t, backend, cache = opened.target, opened.backend, {}
            table = layer_sensitivity(graph, t, backend, cal, candidates=[precision], samples=samples,
                                      progress=step, quant=quant, cache=cache)
            verified = None
            if verify and table.ranked(precision):
                from .analysis.verify import verify_ranking

                verified = verify_ranking(graph, t, backend, cal, table, precision, samples=samples, quant=quant,
                                          max_layers=loo_limit, progress=step, cache=cache)
        return debug_report(table, candidate=precision, top=top, verified=verified)

    rep = _guard(run)
    if as_json:
        _print_json(rep)
        return
    by_loo = bool(rep.get("verified") and rep["verified"].get("ranking_by") == "leave-one-out")
    t = Table("rank", "layer", "op", "output SNR alone (dB)",
              "build SNR with it fp32 (dB)" if by_loo else "share of noise",
              title=f"layers ranked by {precision} damage" + (" (measured, leave-one-out)" if by_loo else ""))
    for i, row in enumerate(rep["ranking"], 1):
        last = f"{row['loo_snr_db']:.1f}" if by_loo else f"{100 * row['share_of_noise']:.0f}%"
        t.add_row(str(i), escape(row["layer"]), row["op"], f"{row['snr_db']:.1f}", last)
    console.print(t)
    console.print(rep["advice"], highlight=False, markup=False)


@app.command()
def analyze(model: Path, as_json: bool = typer.Option(False, "--json"),
            min_size: int = typer.Option(1024, help="Skip weight tensors with fewer elements.")):
    """Quantize or prune? Per weight tensor: kurtosis, and quantization vs pruning SNR at 8/4/3/2 bits."""
    from .analysis.quant_vs_prune import analyze_model_weights

    def run():
        g, _ = _load_lifted(model)
        return analyze_model_weights(((n, v.const_value.numpy()) for n, v in g.main.initializers.items()
                                      if v.const_value is not None), min_size=min_size)

    res = _guard(run)
    if as_json:
        _print_json(res)
        return
    t = Table("tensor", "shape", "kurtosis", *[f"{b} bits: quant/prune dB" for b in ("8", "4", "3", "2")])
    for row in res["tensors"]:
        cells = [f"{row['bits'][b]['quant_snr_db']:.1f}/{row['bits'][b]['prune_snr_db']:.1f} "
                 f"{'Q' if row['bits'][b]['better'] == 'quantize' else 'P'}" for b in ("8", "4", "3", "2")]
        k = row["kurtosis"]
        t.add_row(escape(row["name"]), escape(str(row["shape"])), "-" if k is None else f"{k:.1f}", *cells)
    console.print(t)


@app.command()
def check(model: Path, target: str = typer.Option("nvidia-ampere", "--target", "-t"),
          sparsity: Optional[str] = typer.Option(None, help="Also check N:M sparsity, e.g. 2:4."),
          as_json: bool = typer.Option(False, "--json")):
    """Validate an ONNX model against a target's deployment rules (TensorRT explicit quantization)."""
    import onnx

    from .backends.base import open_target
    from .errors import ConfigError

    def run():
        opened = open_target(target)
        load(model)  # the same safety and validity checks as compile
        found = opened.backend.check_deployment(onnx.load(str(model), load_external_data=False), sparsity=sparsity)
        if found is None:
            t = opened.target
            raise ConfigError(f"target {t.name} ({t.backend}) has no deployment rules to check", where="--target")
        return found

    from .ir import load

    violations = _guard(run)
    if as_json:
        _print_json({"model": str(model), "target": target, "ok": not violations,
                     "violations": [v.__dict__ for v in violations]})
    elif violations:
        for v in violations:
            console.print(f"node '{v.node}': [{v.rule}] {v.message}", highlight=False, markup=False)
    else:
        console.print(f"{model}: passes every {target} rule")
    if violations:
        raise typer.Exit(3)   # a check failed (exit 1 is kept for internal errors)


@app.command()
def verify(folder: Path = typer.Argument(..., help="An output folder written by `compile`."),
           as_json: bool = typer.Option(False, "--json")):
    """Re-hash an output folder against its manifest.json; exit 3 when a file changed, is missing or was added."""
    from .report.manifest import verify as verify_folder

    res = _guard(lambda: verify_folder(folder))
    if as_json:
        _print_json(res)
    else:
        for name, state in res["files"].items():
            if state != "ok":
                console.print(f"{name}: {state}", highlight=False, markup=False)
        for name in res["extra"]:
            console.print(f"{name}: not in the manifest", highlight=False, markup=False)
        for name, state in res["inputs"].items():
            if state != "same":
                console.print(f"input {name}: {state} since the build", highlight=False, markup=False)
        console.print(f"{folder}: {'every file matches its manifest' if res['ok'] else 'DOES NOT match its manifest'}",
                      highlight=False, markup=False)
    if not res["ok"]:
        raise typer.Exit(3)


@app.command()
def compare(old: Path = typer.Argument(..., help="The earlier output folder."),
            new: Path = typer.Argument(..., help="The new output folder."),
            max_accuracy_drop: float = typer.Option(0.0, help="Allowed metric drop (points; dB for snr_db)."),
            max_slowdown: float = typer.Option(0.05, help="Allowed relative slowdown (beyond the IQR as well)."),
            max_size_growth: float = typer.Option(0.0, help="Allowed relative size growth."),
            as_json: bool = typer.Option(False, "--json")):
    """Differences of two output folders (plan, accuracy, latency with spread, size); exit 3 on a regression."""
    from .report.compare import Tolerances, compare as compare_folders

    res = _guard(lambda: compare_folders(old, new, Tolerances(max_accuracy_drop, max_slowdown, max_size_growth)))
    if as_json:
        _print_json(res)
    else:
        p = res["plan"]
        console.print(f"plan: {p['old_precision']} {p['old_counts']} -> {p['new_precision']} {p['new_counts']}, "
                      f"{len(p['changed_layers'])} layer(s) changed", highlight=False, markup=False)
        for lid, c in list(p["changed_layers"].items())[:20]:
            console.print(f"  {lid}: {c['old']} -> {c['new']}", highlight=False, markup=False)
        for k, m in res["metrics"].items():
            console.print(f"{k}: {m['old']:.4g} -> {m['new']:.4g} ({m['change']:+.3f} {m['unit']})", highlight=False,
                          markup=False)
        if "latency" in res:
            lat = res["latency"]
            console.print(f"latency: {lat['old_ms']:.4g} ms (IQR {lat['old_iqr_ms'] or 0:.3g}) -> {lat['new_ms']:.4g} ms "
                          f"(IQR {lat['new_iqr_ms'] or 0:.3g}), {lat['ratio']:.3f}x", highlight=False, markup=False)
        if "size" in res:
            console.print(f"size: {res['size']['old_bytes']:,} -> {res['size']['new_bytes']:,} bytes", highlight=False)
        for r in res["regressions"]:
            console.print(f"REGRESSION: {r}", highlight=False, markup=False)
        console.print("no regression" if res["ok"] else f"{len(res['regressions'])} regression(s)")
    if not res["ok"]:
        raise typer.Exit(3)


cache_app = typer.Typer(no_args_is_help=True, help="The content-addressed cache (HWCOMPILE_CACHE_DIR).")
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info(as_json: bool = typer.Option(False, "--json")):
    """Where the cache is and what each kind of result takes."""
    from . import cache

    res = _guard(cache.info)
    if as_json:
        _print_json(res)
        return
    t = Table("kind", "files", "bytes", title=f"cache at {res['root']}")
    for kind, v in res["kinds"].items():
        t.add_row(kind, str(v["files"]), f"{v['bytes']:,}")
    console.print(t)


@cache_app.command("clear")
def cache_clear(kind: Optional[str] = typer.Option(None, help="Only this kind (e.g. timings, calibration, tvm)."),
                as_json: bool = typer.Option(False, "--json")):
    """Remove cached results (all kinds, or one)."""
    from . import cache

    res = _guard(lambda: cache.clear(kind))
    if as_json:
        _print_json(res)
        return
    console.print(f"removed {res['files']} file(s), {res['bytes']:,} bytes from {res['root']}", highlight=False)


def _parse_shapes(items: list[str]) -> dict[str, list[int]]:
    from .errors import ConfigError

    out = {}
    for item in items:
        name, _, dims = item.rpartition("=")
        try:
            out[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise ConfigError(f"cannot parse {item!r}", where="--shape", hint="use NAME=1,3,224,224") from None
        if not name or any(d <= 0 for d in out[name]):
            raise ConfigError(f"cannot parse {item!r}", where="--shape", hint="use NAME=1,3,224,224")
    return out


def _load_lifted(model: Path):
    """The model with its Constant nodes as initializers (how compile sees its weights), and how many."""
    from .ir import load
    from .passes.lift_constants import lift_constants

    g = load(model)
    return g, lift_constants(g).details["constants_lifted"]


def _guard(fn):
    """Run ``fn``; a HwcompileError becomes one line on stderr and exit code 2."""
    try:
        return fn()
    except HwcompileError as e:
        if _STATE["verbose"]:
            traceback.print_exc()
        err.print(f"[red]error:[/] {escape(e.render())}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        raise typer.Exit(130)
    except Exception as e:  # a bug: still one line unless --verbose
        if _STATE["verbose"]:
            traceback.print_exc()
        err.print(f"[red]internal error:[/] {escape(f'{type(e).__name__}: {e}')} (run with --verbose for the traceback)",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

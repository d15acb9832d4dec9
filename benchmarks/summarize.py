"""benchmarks/results/*.json -> benchmarks/RESULTS.md: the measured numbers as tables, nothing typed by hand.

    python benchmarks/summarize.py

A missing results file is listed as not run. Latency ratios come from runs interleaved in one
process on the machine each file notes; see each benchmark's docstring for what was measured.
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
OUT = Path(__file__).resolve().parent / "RESULTS.md"


def _load(name: str) -> dict | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _f(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def _machine(d: dict) -> str:
    m = d.get("machine", {})
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {'/'.join(m.get('isa', []))}; {d.get('date', '')}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def fp32_equivalence(lines: list[str]) -> None:
    d = _load("fp32_equivalence")
    lines.append("## FP32 round trip (issue 2)\n")
    if d is None:
        lines.append("not run\n")
        return
    lines.append(f"Criterion: {d['criterion']}. Machine: {_machine(d)}.\n")
    lines += _table(["model", "BN before", "BN after", "max rel diff", "equal"],
                    [[m["model"], str(m.get("bn_before")), str(m.get("bn_after")), _f(m["max_rel_diff"], ".2e"),
                      str(m["equal"])] for m in d["models"]])
    lines.append("")


def efficientnet_int8(lines: list[str]) -> None:
    d = _load("efficientnet_int8")
    lines.append("## EfficientNet-Lite0 INT8, host CPU (issue 3)\n")
    if d is None:
        lines.append("not run\n")
        return
    lines.append(f"{d['evaluation']}, calibration {d['calibration']}. Machine: {_machine(d)}; load average before "
                 f"latency {d.get('load_average_before_latency')}.\n")
    lines += _table(["config", "top-1", "top-5", "MB", "ms (2 thr)", "x FP32", "ms (1 thr)", "x FP32 (1 thr)"],
                    [[k, _f(v["top1"]), _f(v["top5"]), _f(v["size_bytes"] / 1e6, ".1f"), _f(v["latency_ms"], ".2f"),
                      _f(v["speedup_vs_fp32"], ".2f"), _f(v.get("latency_ms_1thread"), ".2f"),
                      _f(v.get("speedup_vs_fp32_1thread"), ".2f")] for k, v in d["results"].items()])
    kt = d.get("kernel_time_vs_onnxruntime")
    if kt:
        lines.append("\nSummed kernel time (onnxruntime profiler), paired by round against hwcompile's best INT8:\n")
        rows = []
        for threads, models in kt.items():
            for name, v in models.items():
                ratio = next((x for k, x in v.items() if k.startswith("ratio_to_")), None)
                rows.append([threads, name, _f(v["kernel_ms_median"], ".2f"), _f(ratio, ".3f")])
        lines += _table(["threads", "model", "kernel ms", "ratio to hwcompile"], rows)
    lines.append("")


def minilm(lines: list[str]) -> None:
    d = _load("minilm")
    lines.append("## all-MiniLM-L6-v2 dynamic INT8 and INT4, host CPU (issue 3)\n")
    if d is None:
        lines.append("not run\n")
        return
    lines.append(f"{d['evaluation']}; batch {d['batch']}, sequence {d['seq_len']}. Machine: {_machine(d)}.\n")
    lines += _table(["config", "Spearman", "Spearman (eval)", "MB", "ms", "x FP32", "x FP32 (1 thr)"],
                    [[k, _f(v["spearman"], ".4f"), _f(v["spearman_eval"], ".4f"), _f(v["size_bytes"] / 1e6, ".1f"),
                      _f(v["latency_ms"], ".2f"), _f(v["speedup_vs_fp32"], ".2f"),
                      _f(v.get("speedup_vs_fp32_1thread"), ".2f")] for k, v in d["results"].items()])
    lines.append("\nGoals checked on these numbers: `" + json.dumps(d.get("goals", {})) + "`\n")


def mixed(lines: list[str]) -> None:
    lines.append("## Mixed precision: front vs uniform configurations (issue 4)\n")
    for model in ("efficientnet", "minilm"):
        d, quick = _load(f"mixed_{model}"), False
        if d is None:
            d, quick = _load(f"mixed_{model}_quick"), True
        if d is None:
            lines.append(f"- {model}: not run\n")
            continue
        metric = d.get("metric", "metric")
        lines.append(f"### {model}{' (--quick run)' if quick else ''} (machine: {_machine(d)})\n")
        lines.append(f"Accuracy: {d.get('evaluation', '')}.\n")
        rows = []
        for u in d.get("dominance", []):
            best = u.get("fastest_front_at_least_as_accurate") or {}
            rows.append([u["uniform"], _f(u.get(metric)), u["status"], ", ".join(u.get("by_mixed") or []) or "-",
                         str(best.get("point", "-")), _f(best.get("latency_vs_uniform_pct"), ".1f")])
        lines += _table(["uniform config", metric, "status", "dominated by mixed plans", "fastest front point at least "
                         "as accurate", "latency vs uniform %"], rows)
        stat = d.get("dominance_statistical")
        if stat:
            lines.append("\nWith differences the measurements cannot resolve counted as ties (paired rounds for "
                         "latency, paired bootstrap over the evaluation set for accuracy; `dominance_statistical`):\n")
            srows = []
            for u in stat:
                by = u.get("by") or {}
                k = min(by, key=lambda p: by[p]["latency"]["latency_ratio_median"]) if by else None
                srows.append([u["uniform"], "dominated" if u["dominated"] else "not dominated", str(len(by)),
                              k or "-", _f(by[k]["latency"]["latency_ratio_median"], ".3f") if k else "-",
                              by[k]["latency"]["resolved"] if k else "-", by[k]["accuracy"]["resolved"] if k else "-"])
            lines += _table(["uniform config", "status", "covering points", "fastest covering point", "latency ratio",
                             "latency", "accuracy"], srows)
        pc = d.get("prediction_check", {})
        lines.append(f"\nAfter feedback, predicted vs measured end-to-end latency: max |error| "
                     f"{_f(pc.get('after_feedback_max_abs_error_pct'), '.1f')} %, within 10 %: "
                     f"{pc.get('after_feedback_within_10pct')}. Plot: `benchmarks/results/{Path(d.get('plot', '')).name}`\n")


def pruning(lines: list[str]) -> None:
    d = _load("pruning")
    lines.append("## Pruning (issue 5)\n")
    if d is None:
        lines.append("not run\n")
        return
    for part, sec in d.get("sections", {}).items():
        lines.append(f"### {part} (machine: {_machine(sec)})\n")
        res = sec.get("results", {})
        keys = ["top1", "top5", "spearman", "flops_removed", "speedup_vs_dense", "latency_ms"]
        present = [k for k in keys if any(k in v for v in res.values() if isinstance(v, dict))]
        lines += _table(["config", *present], [[k, *[_f(v.get(c)) if isinstance(v.get(c), (int, float)) else
                                                       str(v.get(c, "-")) for c in present]]
                                              for k, v in res.items() if isinstance(v, dict)])
        lines.append("")


def tensorrt(lines: list[str]) -> None:
    d = _load("tensorrt")
    lines.append("## TensorRT-ready ONNX, checked on the CPU (issue 6)\n")
    if d is None:
        lines.append("not run\n")
        return
    lines.append(f"TensorRT here: {d.get('tensorrt_status')}. Machine: {_machine(d)}.\n")
    rows = []
    for model, sec in d.items():
        if not isinstance(sec, dict) or "int8" not in sec:
            continue
        for cfg in ("int8", "int8+2:4"):
            v = sec.get(cfg)
            if not isinstance(v, dict):
                continue
            acc = v.get("accuracy", {})
            num = v.get("numerics", {})
            rows.append([model, cfg, str(v.get("validator", {}).get("passes")), _f(num.get("mean_abs_err_rel"), ".2e"),
                         json.dumps({k: round(x, 4) for k, x in acc.items() if isinstance(x, float)}),
                         str(v.get("engine_built"))])
    lines += _table(["model", "plan", "validator passes", "mean rel. error vs numpy reference", "accuracy",
                     "engine built"], rows)
    lines.append("")


def tensorrt_gpu(lines: list[str]) -> None:
    """benchmarks/gpu/run.sh: the GPU run if one exists, else its CPU-side dry run."""
    d, kind = _load("tensorrt_gpu"), "GPU run"
    if d is None:
        d, kind = _load("tensorrt_gpu_dry_run"), "dry run on the CPU (no GPU)"
    lines.append("## TensorRT engines on a GPU (issue 16)\n")
    if d is None:
        lines.append("not run\n")
        return
    env = d["steps"].get("env", {})
    m = d.get("machine", {})
    lines.append(f"{kind}, {d.get('started', '')}: {m.get('cpu', '?')}, {m.get('cores', '?')} cores; GPU: "
                 f"{env.get('nvidia_smi', '?')}; TensorRT: {env.get('tensorrt', {}).get('status', '?')}; load "
                 f"{_f((d.get('load_before') or [None])[0], '.1f')} -> {_f((d.get('load_after') or [None])[0], '.1f')}.\n")
    rows = []
    for name, st in d["steps"].items():
        parts = name.split("/")
        if len(parts) != 4 or parts[3] != "compile":
            continue
        eng = d["steps"].get("/".join(parts[:3] + ["engine"]), {})
        ref = (st.get("cpu_reference") or {})
        metric = next((k for k in ref if k not in ("runner", "seconds")), None)
        build = eng.get("build_seconds", {})
        rows.append([parts[0], parts[1], parts[2], st["status"], str(st.get("rules_pass", "-")),
                     _f(ref.get(metric), ".4f") if metric else "-",
                     eng.get("status", "-") if eng.get("status") != "skipped" else "skipped",
                     _f(eng.get(metric), ".4f") if metric and metric in eng else "-",
                     f"{_f(build.get('cold'), '.1f')} / {_f(build.get('warm'), '.1f')}" if build else "-",
                     f"{_f(eng.get('latency_ms'), '.3f')} ± {_f(eng.get('latency_ms_spread'), '.3f')}"
                     if "latency_ms" in eng else "-", str(eng.get("sparse_kernels_chosen", "-"))])
    lines += _table(["model", "target", "config", "compile", "rules pass", "CPU reference", "engine", "GPU accuracy",
                     "build s cold / warm", "latency ms (IQR)", "2:4 kernels"], rows)
    lines.append("")
    for key in sorted({n.split("/")[0] for n in d["steps"] if n.endswith("/latency")}):
        fp = d["steps"].get(f"{key}/fp32_reference", {})
        lines.append(f"- {key} FP32 on the CPU: " + ", ".join(f"{k} {_f(v, '.4f')}" for k, v in fp.items()
                                                          if isinstance(v, float) and k != "seconds"))
        pe, pg = d["steps"].get(f"{key}/peer_export", {}), d["steps"].get(f"{key}/peer_engine", {})
        rules = (pe.get("int8") or {}).get("tensorrt_rules")
        lines.append(f"- {key} peer (onnxruntime quantize_static Q/DQ, Polygraphy): export {pe.get('status', '-')}"
                     f" (TensorRT rules on the INT8 export: {rules}); engines {pg.get('status', '-')}"
                     + "".join(f"; {k} " + ", ".join(f"{m} {_f(x, '.4f')}" for m, x in v.items()
                                                     if m in ("top1", "spearman"))
                               for k, v in pg.items() if isinstance(v, dict)))
        lat = d["steps"][f"{key}/latency"]
        if lat.get("status") == "ok":
            for pair, r in lat.get("ratios", {}).items():
                lines.append(f"- {key} {pair}: {_f(r['latency_ratio_median'])} (95 % interval "
                             f"{_f(r['ci95'][0])}-{_f(r['ci95'][1])}, {r['rounds']} rounds)")
        else:
            lines.append(f"- {key} latency: {lat.get('status')} ({lat.get('reason', lat.get('error', ''))})")
    tests = d["steps"].get("gpu_tests", {})
    lines.append(f"- pytest -m gpu: {tests.get('counts', tests.get('status', 'not run'))}")
    skipped = sorted({st.get("reason", "") for st in d["steps"].values() if st.get("status") == "skipped"})
    if skipped:
        lines.append("- skipped steps said: " + "; ".join(skipped))
    lines.append("")


def tvm(lines: list[str]) -> None:
    lines.append("## TVM backend, host CPU\n")
    for name in ("tvm", "tvm_int8_kernel"):
        d = _load(name)
        if d is None:
            lines.append(f"- {name}: not run\n")
            continue
        lines.append(f"### {name} (machine: {_machine(d)})\n")
        lines.append("```json\n" + json.dumps({k: v for k, v in d.items() if k not in ("machine",)}, indent=1)[:3000]
                     + "\n```\n")


def main() -> None:
    lines = ["# Measured results\n", "Generated by `python benchmarks/summarize.py` from `benchmarks/results/*.json`; "
             "every number below was produced by the benchmark named in its section on the machine noted. The "
             "machine is a shared 2-core VM: absolute milliseconds drift between runs, ratios measured side by side "
             "in one process are what to read.\n"]
    for section in (fp32_equivalence, efficientnet_int8, minilm, mixed, pruning, tensorrt, tensorrt_gpu, tvm):
        section(lines)
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT)


if __name__ == "__main__":
    main()

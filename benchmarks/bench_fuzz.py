"""Fuzz run: N mutated real models through load -> check -> every precision -> export.

Cases come from tests/fuzz/harness.py (recipes: seed model + mutation level + rng seed). A worker
process runs the cases; the parent kills and restarts it when a case runs past ``--cap`` seconds
(a hang). Cases whose ``shape_class`` (structure + value class of the weights) already ran the
whole chain run load -> inspect -> check only ("shallow"), so the run spends its time on new
behaviour. Results (counts, cases per second, every crash class and hang with its recipe) go to
benchmarks/results/fuzz.json, rewritten every 30 s so a stopped run still reports.

    PYTHONPATH=. nice -n 19 python benchmarks/bench_fuzz.py --cases 100000
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

import harness  # noqa: E402


def _worker(conn, cap: float) -> None:
    import logging

    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    logging.disable(logging.WARNING)
    seen: set = set()
    with tempfile.TemporaryDirectory(prefix="hwc-fuzz-") as d:
        while True:
            recipe = conn.recv()
            if recipe is None:
                return
            try:
                data = harness.mutate(recipe)
            except Exception as e:  # the mutation itself failed (e.g. serializing a broken field)
                conn.send(("skipped", f"{type(e).__name__}: {e}"))
                continue
            conn.send(harness.run_case(data, Path(d), cap_s=cap, deep_seen=seen))


def _cpu() -> dict:
    info = {"machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["model"] = next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name"))
        flags = next(ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags"))
        info["isa"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    except (OSError, StopIteration):
        pass
    return info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--cap", type=float, default=20.0, help="seconds before a case counts as a hang")
    ap.add_argument("--bytes-share", type=float, default=0.99)
    ap.add_argument("--bytes-seeds", default="digits_cnn", help="comma-separated seeds for bytes-level cases")
    ap.add_argument("--field-seeds", default="digits_cnn,light_squeezenet,ppocr_cls",
                    help="comma-separated seeds for field-level cases (the onnx light models build their "
                         "weights with ConstantOfShape at full size: seconds per session)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz.json")
    args = ap.parse_args()

    paths = harness.seed_paths()
    seeds = [k for k in args.field_seeds.split(",") if k in paths]
    small = [k for k in args.bytes_seeds.split(",") if k in paths]
    rng = random.Random(args.seed)
    counts: collections.Counter = collections.Counter()
    errors: collections.Counter = collections.Counter()
    crashes: dict[str, dict] = {}
    hangs: list[dict] = []
    per_seed: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    last = 0.0
    ctx = mp.get_context("fork")

    def start():
        a, b = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(b, args.cap), daemon=True)
        p.start()
        return p, a

    proc, conn = start()

    def report(done: int, final: bool) -> None:
        secs = time.perf_counter() - t0
        out = {"benchmark": "fuzz", "final": final, "cases": done, "seconds": round(secs, 1),
               "cases_per_second": round(done / secs, 2) if secs else None, "counts": dict(counts),
               "crash_classes": len(crashes), "crashes": crashes, "hangs": hangs[:50], "hang_count": len(hangs),
               "top_errors": errors.most_common(40), "per_seed": {k: dict(v) for k, v in per_seed.items()},
               "seeds": {k: str(v.relative_to(v.parents[3])) if len(v.parents) > 3 else str(v)
                         for k, v in harness.seed_paths().items()},
               "settings": {"cap_s": args.cap, "bytes_share": args.bytes_share, "seed": args.seed, "bytes_seeds": small,
                            "precisions": list(harness.PRECISIONS)},
               "cpu": _cpu(), "load_before": load0, "load_now": os.getloadavg(),
               "note": "run under nice 19 while other helpers' tests and benchmarks ran on the 2 cores"}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(out, indent=1) + "\n")
        os.replace(tmp, args.out)

    for i in range(args.cases):
        recipe = harness.random_recipe(rng, seeds, args.bytes_share, small)
        conn.send(recipe)
        if conn.poll(args.cap + 15):
            status, msg = conn.recv()
        else:
            proc.kill()
            proc.join()
            status, msg = "hang", f"no answer within {args.cap + 15} s (worker killed)"
            proc, conn = start()
        counts[status] += 1
        per_seed[recipe["seed"]][status] += 1
        if status == "error":
            errors[msg.split(":")[0] + ": " + msg.split(": ", 2)[-1][:70]] += 1
        elif status == "crash":
            key = harness.crash_key(msg)
            entry = crashes.setdefault(key, {"count": 0, "recipe": recipe, "traceback": msg[-2500:]})
            entry["count"] += 1
        elif status == "hang":
            hangs.append({"recipe": recipe, "message": msg})
        if time.perf_counter() - last > 30:
            last = time.perf_counter()
            report(i + 1, False)
    conn.send(None)
    proc.join(timeout=10)
    report(args.cases, True)


if __name__ == "__main__":
    main()

"""Compile every corpus model at every precision the target supports and sort what happens into
built / clear error (a ``HwcompileError``: one line, exit 2 on the CLI) / internal error.

    python -m benchmarks.corpus.sweep [--target host-cpu] [--only NAME ...] [--precisions ...]

Writes ``benchmarks/results/corpus_sweep.json``. Latency here is a short check (10 runs), not a
benchmark: ``bench_corpus`` measures.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

from hwcompile.errors import HwcompileError

from .data import make_npz
from .fetch import CACHE, model_path
from .models import MODELS

__all__ = ["sweep_one"]

RESULTS = Path(__file__).resolve().parents[1] / "results"


def sweep_one(name: str, data: str, precision: str, target: str, work: Path, repeats: int = 10) -> dict:
    from hwcompile.pipeline import CompileOptions, compile_model
    from hwcompile.targets import load_target

    folder = CACHE / "data" / data
    calib, evald = (folder / "calib.npz", folder / "eval.npz")
    if not calib.is_file():
        make_npz(data, folder)
    opts = CompileOptions(precision=precision, calib=calib, eval=evald, metric="snr", repeats=repeats)
    t0 = time.perf_counter()
    row = {"model": name, "precision": precision, "target": load_target(target).name}
    try:
        res = compile_model(model_path(name), target, work / f"{name}-{precision}", opts)
        rep = res.report
        row.update(status="built", snr_db=rep["compiled"]["metrics"].get("snr_db"),
                   speedup=rep.get("speedup"), notes=rep.get("notes", []))
    except HwcompileError as e:
        row.update(status="error", message=str(e))
    except Exception as e:  # noqa: BLE001  (what this sweep exists to find)
        row.update(status="internal", message=f"{type(e).__name__}: {e}",
                   where=traceback.format_exc().strip().splitlines()[-3:])
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="host-cpu")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--precisions", nargs="*")
    ap.add_argument("--out", type=Path, default=RESULTS / "corpus_sweep.json")
    args = ap.parse_args(argv)
    from hwcompile.targets import load_target

    precisions = args.precisions or list(load_target(args.target).precisions)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hwc-sweep-") as tmp:
        for spec in MODELS:
            if args.only and spec.name not in args.only:
                continue
            for p in precisions:
                row = sweep_one(spec.name, spec.data, p, args.target, Path(tmp))
                rows.append(row)
                print(json.dumps({k: row.get(k) for k in ("model", "precision", "status", "snr_db", "speedup",
                                                          "message", "seconds")}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

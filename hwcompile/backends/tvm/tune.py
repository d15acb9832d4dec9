"""MetaSchedule tuning in a child process, so a crash never loses the records measured so far.

Every measured candidate is committed to the JSON database under ``db_dir`` as soon as it is
measured (MetaSchedule's ``AddToDatabase`` callback appends a line per record). Tuning runs in a
child Python (``python -m hwcompile.backends.tvm.tune``) that re-imports the ONNX graph, so a
native crash (seen: SIGSEGV when tuning with apache-tvm 0.27.0.post1 on apache-tvm-ffi
0.1.15.post2; 0.1.14.post0 works) or a kill ends the child only: the parent reports the signal
and how many records the database already holds, and a rebuild with ``tune_trials = 0`` applies
them. The cost model is MetaSchedule's XGBoost model when ``xgboost`` is importable, else
``random`` (recorded in ``tvm.json``).
"""
from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ...errors import BackendUnavailable
from .build import TVMSettings, count_records

__all__ = ["tune_in_child"]


def tune_in_child(onnx_path: Path, input_shapes: dict[str, list[int]], settings: TVMSettings,
                  db_dir: Path, log: Path) -> dict[str, Any]:
    """Tune the graph in ``onnx_path`` into ``db_dir``, the child's output appended to ``log``; the child's
    summary (trials, cost model, new records)."""
    db_dir.mkdir(parents=True, exist_ok=True)
    before = count_records(db_dir)
    job = {"onnx": str(onnx_path), "shapes": input_shapes, "settings": dataclasses.asdict(settings),
           "db_dir": str(db_dir)}
    start = log.stat().st_size if log.exists() else 0
    with open(log, "a") as err:
        proc = subprocess.run([sys.executable, "-m", __name__, json.dumps(job)], stdout=subprocess.PIPE,
                              stderr=err, text=True)
    saved = count_records(db_dir)
    if proc.returncode != 0:
        how = (f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
               else f"exit code {proc.returncode}")
        with open(log, errors="replace") as f:
            f.seek(start)
            tail = f.read()
        last = next((ln for ln in reversed(tail.strip().splitlines())
                     if ln.strip() and not ln.startswith("  File")), "")
        raise BackendUnavailable(
            f"MetaSchedule tuning {how}: {last[-300:]}; the database keeps {saved} records "
            f"({saved - before} from this run) in {db_dir}; TVM's output is in {log}", where="backend_settings.tune_trials",
            hint="rebuild with tune_trials = 0 to apply the saved records; if it was SIGSEGV, "
                 "pip install 'apache-tvm-ffi==0.1.14.post0' (0.1.15.post2 crashes MetaSchedule in tvm 0.27.0.post1)")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["new_records"] = saved - before
    if saved == before:  # every candidate failed to build or run: say so instead of a silent untuned build
        summary["warning"] = (f"tuning ran but saved no record; see {db_dir / 'logs'} (build/run errors, "
                              "e.g. timeouts: raise backend_settings.tune_timeout_s)")
    return summary


def _main(job: dict[str, Any]) -> dict[str, Any]:
    import onnx
    from tvm.s_tir import meta_schedule as ms

    from .build import database, prepare_relax, to_relax, tuning_runner, tvm_target

    settings = TVMSettings(**job["settings"])
    target = tvm_target(settings, for_tuning=True)
    mod = prepare_relax(to_relax(onnx.load(job["onnx"]), job["shapes"], static=True), target)
    try:
        import xgboost  # noqa: F401
        cost_model = "xgb"
    except ImportError:  # MetaSchedule's learned cost model needs xgboost; without it, rank at random
        cost_model = "random"
    try:
        import psutil  # noqa: F401  (MetaSchedule counts cores with it)
    except ImportError:
        raise SystemExit("MetaSchedule needs psutil: pip install psutil") from None
    trials = settings.tune_trials
    ms.relax_integration.tune_relax(
        mod, params={}, target=target, work_dir=job["db_dir"], max_trials_global=trials,
        max_trials_per_task=settings.tune_trials_per_task, num_trials_per_iter=min(64, trials),
        builder=ms.builder.LocalBuilder(timeout_sec=settings.tune_timeout_s), runner=tuning_runner(settings),
        database=database(Path(job["db_dir"])), cost_model=cost_model)
    return {"cost_model": cost_model, "tuned_in": "child process"}


if __name__ == "__main__":
    print(json.dumps(_main(json.loads(sys.argv[1]))))

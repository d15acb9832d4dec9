"""The output folder: artifact files, ``plan.json``, ``report.json``, ``timings.json``, ``latency.json``,
``config.json``, ``report.html`` and ``manifest.json``. Every file is written atomically."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..contract import PrecisionPlan
from .html import render, summary_rows

__all__ = ["write_outputs", "render_html", "summary_rows", "json_default"]


def json_default(o: Any):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def write_outputs(out: Path, artifact, plan: PrecisionPlan, report: dict, profile, *, table=None, options=None,
                  model_path: Path | None = None, target=None) -> None:
    """plan.json, report.json (no measured times), timings.json, latency.json, config.json, report.html and
    manifest.json (inputs, tools, target, the sha256 of every file), each written atomically."""
    from .manifest import input_entry, model_entry, write_manifest
    from .timings import split

    plan.save(out / "plan.json")
    stable, times = split(report)
    write_text_atomic(out / "report.json", json.dumps(stable, indent=2, default=json_default) + "\n")
    write_text_atomic(out / "timings.json", json.dumps(times, indent=2, default=json_default) + "\n")
    if table is not None:
        write_text_atomic(out / "latency.json", table.to_json())
    inputs: dict = {}
    if options is not None:
        from ..config import effective_config

        write_text_atomic(out / "config.json", json.dumps(effective_config(options), indent=2, sort_keys=True) + "\n")
        inputs = {"calib": input_entry(options.calib), "eval": input_entry(options.eval),
                  "config": {"file": "config.json", "sha256": input_entry(out / "config.json")["sha256"]},
                  "latency_table": input_entry(options.latency_table),
                  "recover_data": input_entry(getattr(options, "recover_data", None)),
                  "config_file": input_entry(getattr(options, "config_file", None))}
    if model_path is not None:
        inputs["model"] = model_entry(Path(model_path))
    if target is not None:
        inputs["target"] = input_entry(target.path) if target.path else None
    write_text_atomic(out / "report.html", render_html(report, plan))
    write_manifest(out, inputs={k: v for k, v in inputs.items() if v is not None}, tools=report.get("versions", {}),
                   target={"name": report["target"]["name"], "fingerprint": report["target"].get("fingerprint")})


def render_html(report: dict, plan: PrecisionPlan | None = None) -> str:
    """The self-contained human report (``report.html``; see ``report.html``'s module)."""
    return render(report, plan)

"""``hwcompile.compile(...)``: the Python entry point, the same compile as the CLI's.

Keywords are ``CompileOptions`` fields (``precision``, ``calib``, ``eval``, ``labels``,
``max_accuracy_drop``, ``latency_table``, ``remeasure``, ``use_cache``, ...), plus the gates
(``fail_if_accuracy_drop``, ``fail_if_slower_than``, ``fail_if_larger_than``, ``baseline``) and
``quant`` settings by name (``calib_method``, ``compensation``, ...). The result holds the
output folder, the full report (``report.json`` with ``timings.json`` merged), the plan and the
gate results; a failed gate does not raise (check ``result.ok``), bad input raises a
``HwcompileError`` naming the option.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError

__all__ = ["compile"]


def compile(model: str | Path | None = None, target: str = "host-cpu", out: str | Path = "hwcompile-out", *,
            progress: Callable[[str], None] | None = None, force: bool = False, **options: Any):
    """Compile ``model`` (None: the embedded default) for ``target`` into ``out``; returns a ``CompileResult``."""
    from .gates import Gates
    from .pipeline import CompileOptions, compile_model
    from .plan import QuantSettings

    fields = {f.name for f in dataclasses.fields(CompileOptions)}
    gate_fields = {f.name for f in dataclasses.fields(Gates)}
    quant_fields = {f.name for f in dataclasses.fields(QuantSettings)}
    opts, gates, quant = {}, {}, {}
    for key, value in options.items():
        if key in gate_fields:
            gates[key] = value
        elif key in fields:
            opts[key] = value
        elif key in quant_fields:
            quant[key] = value
        else:
            raise ConfigError(f"unknown option {key!r}", where="hwcompile.compile",
                              hint="CompileOptions fields, gate names or QuantSettings fields")
    if gates:
        opts["gates"] = Gates(**gates)
    if quant:
        opts["quant"] = dataclasses.replace(opts.get("quant") or QuantSettings(), **quant)
        opts["quant_given"] = frozenset(quant) | opts.get("quant_given", frozenset())
    return compile_model(model, target, out, CompileOptions(**opts), progress=progress or (lambda s: None),
                         force=force)

"""The effective configuration of a compile, as plain JSON (``config.json`` in the output)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

__all__ = ["effective_config"]


def _plain(value: Any) -> Any:
    if hasattr(value, "inputs") and hasattr(value, "batches"):   # an in-memory Dataset: its digest
        from .report.manifest import input_entry

        return input_entry(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def effective_config(options) -> dict[str, Any]:
    """Every ``CompileOptions`` field with the value this compile used."""
    return {"format": "hwcompile.config/1", "compile": _plain(options)}

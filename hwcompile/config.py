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


# -- the config file ------------------------------------------------------------------------------
FILE_NAMES = ("hwcompile.toml", "pyproject.toml")


def find_config(explicit: str | Path | None, cwd: Path | None = None) -> tuple[Path, dict] | None:
    """(path, table): ``explicit``, else ``hwcompile.toml``, else ``[tool.hwcompile]`` of ``pyproject.toml``
    in ``cwd``; None when there is none. A bad file is a ConfigError naming it."""
    import tomllib

    from .errors import ConfigError

    cwd = Path(cwd or Path.cwd())
    candidates = [Path(explicit)] if explicit else [cwd / n for n in FILE_NAMES]
    for path in candidates:
        if not path.is_file():
            if explicit:
                raise ConfigError("config file not found", where=f"--config {path}")
            continue
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"not valid TOML: {e}", where=str(path)) from None
        if path.name == "pyproject.toml" and not explicit:
            table = data.get("tool", {}).get("hwcompile")
            if table is None:
                continue
            return path, _table(table, f"{path} [tool.hwcompile]")
        if path.name == "pyproject.toml":
            return path, _table(data.get("tool", {}).get("hwcompile", {}), f"{path} [tool.hwcompile]")
        return path, _table(data, str(path))
    return None


def _table(table: Any, where: str) -> dict:
    from .errors import ConfigError

    if not isinstance(table, dict):
        raise ConfigError("must be a table of compile options", where=where)
    return {"__where__": where, **table}


def compile_defaults(table: dict, command, base: Path | None = None) -> dict[str, Any]:
    """The config table as click defaults for ``command`` (the ``compile`` command): keys are its option
    names (``latency-budget`` or ``latency_budget``; ``model`` for the argument), values checked against
    each option's type; relative paths are taken from ``base`` (the file's folder). A ConfigError names
    the file and the key."""
    import difflib

    from .errors import ConfigError

    where = table.get("__where__", "config")
    by_key: dict[str, Any] = {}
    for p in command.params:
        names = [o.lstrip("-") for o in getattr(p, "opts", [])] + [p.name]
        for n in names:
            by_key[n.replace("-", "_")] = p
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key == "__where__":
            continue
        param = by_key.get(key.replace("-", "_"))
        if param is None or param.name in ("as_json",):
            close = difflib.get_close_matches(key.replace("-", "_"), list(by_key), n=1)
            raise ConfigError(f"unknown key {key!r}", where=where,
                              hint=f"did you mean {close[0]!r}?" if close else "keys are the compile options")
        value = _checked(value, param, f"{where}: {key}")
        if _annotation(param) is Path and isinstance(value, str) and base is not None:
            value = str(base / value) if not Path(value).is_absolute() else value   # relative to the file
        out[param.name] = value
    return out


def _annotation(param) -> Any:
    """The Python type typer built the option from (``Optional`` removed; ``list[str]`` for repeatable)."""
    td = getattr(param, "type_descriptor", None)
    return getattr(td, "annotation", str)


def _checked(value: Any, param, where: str) -> Any:
    from .errors import ConfigError

    ann = _annotation(param)
    multiple = getattr(param, "multiple", False)
    if multiple and not isinstance(value, list):
        raise ConfigError(f"must be a list, got {value!r}", where=where)
    inner = getattr(ann, "__args__", (str,))[0] if multiple else ann
    for v in value if multiple else [value]:
        if inner is bool:
            ok, want = isinstance(v, bool), "true or false"
        elif inner is int:
            ok, want = isinstance(v, int) and not isinstance(v, bool), "an integer"
        elif inner is float:
            ok, want = isinstance(v, (int, float)) and not isinstance(v, bool), "a number"
        else:
            ok, want = isinstance(v, str), "a string"
        if not ok:
            raise ConfigError(f"must be {want}, got {v!r}", where=where)
    return value

"""Backend settings: a target's ``[backend_settings]`` table parsed into a closed, typed dataclass.

A backend declares its settings as a frozen dataclass deriving from ``BackendSettings``; its
``from_target`` refuses unknown keys and values of the wrong type (``"false"`` is not a boolean,
``true`` is not an integer) with a ConfigError naming the target file and the field, then runs the
class's ``check`` for value ranges. Field types understood: bool, int, float (an int is accepted),
str, None, ``Literal[...]``, unions of these, ``dict[str, Any]`` and ``tuple[str, ...]`` (a TOML
array).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from ..errors import ConfigError

__all__ = ["BackendSettings", "NoSettings", "settings_where"]


def settings_where(target, key: str | None = None) -> str:
    """'<target file> [backend_settings].<key>': how errors name a setting."""
    base = f"{getattr(target, 'path', '') or getattr(target, 'name', 'target')} [backend_settings]"
    return f"{base}.{key}" if key else base


@dataclasses.dataclass(frozen=True)
class BackendSettings:
    """Base of every backend's settings dataclass (see the module docstring)."""

    @classmethod
    def from_target(cls, target) -> "BackendSettings":
        raw = dict(target.settings)
        hints = typing.get_type_hints(cls)
        known = [f.name for f in dataclasses.fields(cls)]
        extra = sorted(set(raw) - set(known))
        if extra:
            raise ConfigError(f"unknown setting(s) {extra} for the {getattr(target, 'backend', '')} backend",
                              where=settings_where(target, extra[0]), hint=f"allowed: {sorted(known)}")
        values = {}
        for key, value in raw.items():
            ok, converted = _conform(value, hints[key])
            if not ok:
                raise ConfigError(f"expected {_describe(hints[key])}, got {value!r}", where=settings_where(target, key))
            values[key] = converted
        settings = cls(**values)
        problem = settings.check()
        if problem is not None:
            key, why = problem
            raise ConfigError(why, where=settings_where(target, key))
        return settings

    def check(self) -> tuple[str, str] | None:
        """(field, why) for a value out of range, else None. Subclasses override."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class NoSettings(BackendSettings):
    """A backend without settings: any key is refused."""


def _conform(value: Any, hint: Any) -> tuple[bool, Any]:
    origin = get_origin(hint)
    if hint is Any:
        return True, value
    if origin in (Union, types.UnionType):
        for arm in get_args(hint):
            ok, v = _conform(value, arm)
            if ok:
                return True, v
        return False, value
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in get_args(hint)), value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), float(value) if isinstance(
            value, (int, float)) else value
    if hint is str:
        return isinstance(value, str), value
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    if origin is tuple:
        args = get_args(hint)
        if not isinstance(value, (list, tuple)):
            return False, value
        item = args[0] if args else Any
        conv = [_conform(v, item) for v in value]
        return all(ok for ok, _ in conv), tuple(v for _, v in conv)
    raise TypeError(f"BackendSettings cannot check fields of type {hint!r}")


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(hint))
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(hint))
    if hint is type(None):
        return "nothing (leave it out)"
    if hint is bool:
        return "true or false"
    if origin is dict or hint is dict:
        return "a table"
    if origin is tuple:
        return "an array"
    return {int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))

"""Optimization profiles: the (min, opt, max) shape TensorRT builds for, per dynamic input.

Every input with a -1 dimension needs a profile. ``default_profiles`` gives a dynamic batch axis 0
the profile (1, 1, ``max_batch``); any other dynamic dimension must be given explicitly
(``profiles`` in the target's ``[backend_settings]``), and ``validate_profiles`` names the input
that lacks one or whose profile does not fit.
"""
from __future__ import annotations

from typing import Mapping

from ...errors import ConfigError
from .settings import Shape, ShapeProfile

__all__ = ["default_profiles", "validate_profiles"]

Profiles = Mapping[str, ShapeProfile]


def default_profiles(inputs: Mapping[str, Shape], profiles: Profiles | None = None, *,
                     max_batch: int = 1) -> dict[str, tuple[Shape, Shape, Shape]]:
    """``profiles`` plus (1, 1, ``max_batch``) on axis 0 for every dynamic input without one.

    Only a dynamic batch (axis 0) is filled in; an input with another dynamic dimension is left
    without a profile, which ``validate_profiles`` then reports naming the input.
    """
    out = {k: tuple(tuple(int(d) for d in s) for s in v) for k, v in (profiles or {}).items()}
    if max_batch < 1:
        raise ConfigError(f"max_batch must be >= 1, got {max_batch}", where="backend_settings.max_batch")
    for name, dims in inputs.items():
        if name in out or not dims or any(d < 0 for d in dims[1:]) or dims[0] >= 0:
            continue
        rest = tuple(int(d) for d in dims[1:])
        out[name] = ((1, *rest), (1, *rest), (int(max_batch), *rest))
    return out  # type: ignore[return-value]


def validate_profiles(inputs: Mapping[str, Shape], profiles: Profiles | None) -> None:
    """Raise ConfigError unless every dynamic input (a -1 dim) has a (min, opt, max) profile that fits."""
    profiles = profiles or {}
    for name in profiles:
        if name not in inputs:
            raise ConfigError(f"profile for unknown input {name!r}", where=f"profiles.{name}",
                              hint=f"network inputs: {sorted(inputs)}")
    for name, dims in inputs.items():
        if name not in profiles:
            if any(d < 0 for d in dims):
                raise ConfigError(f"input {name!r} has dynamic shape {list(dims)} and no profile",
                                  where=f"profiles.{name}",
                                  hint="give (min, opt, max) shapes for it in backend_settings.profiles")
            continue
        lo, opt, hi = (tuple(int(d) for d in s) for s in profiles[name])
        if not len(lo) == len(opt) == len(hi) == len(dims):
            raise ConfigError(f"profile ranks {len(lo)}/{len(opt)}/{len(hi)} differ from the input's {len(dims)}",
                              where=f"profiles.{name}")
        for i, (d, a, b, c) in enumerate(zip(dims, lo, opt, hi)):
            if not 0 < a <= b <= c or (d >= 0 and not a == b == c == d):
                raise ConfigError(f"dim {i}: min/opt/max {a}/{b}/{c} do not fit input dim {d} "
                                  "(need 0 < min <= opt <= max, all equal to a static dim)", where=f"profiles.{name}")

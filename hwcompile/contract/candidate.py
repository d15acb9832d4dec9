"""Candidate: a named precision (a key of ``CANDIDATES``) plus a sparsity pattern.

Its name is the precision, with ``+N:M`` appended when sparse (``fp32+2:4``, ``int8+2:4``).
``FP32`` (dense) is the reference every damage and latency figure is measured against.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import ConfigError
from .plan import CANDIDATES, LayerChoice, PrecisionPlan

__all__ = ["Candidate", "FP32", "parse_candidate"]


@dataclass(frozen=True)
class Candidate:
    """A precision (key of ``CANDIDATES``) and a sparsity pattern, named ``prec`` or ``prec+N:M``."""

    precision: str
    sparsity: str = "dense"

    def __post_init__(self) -> None:
        if self.precision not in CANDIDATES:
            raise ConfigError(f"unknown precision {self.precision!r}", where="candidate",
                              hint=f"one of {sorted(CANDIDATES)}")

    @property
    def name(self) -> str:
        return self.precision if self.sparsity == "dense" else f"{self.precision}+{self.sparsity}"

    def choice(self, reason: str = "") -> LayerChoice:
        return LayerChoice.from_candidate(self.precision, self.sparsity, reason=reason)

    def uniform_plan(self, base: PrecisionPlan | None = None) -> PrecisionPlan:
        """Every layer takes this candidate; numerics, pruning settings and input shapes from ``base``."""
        base = base or PrecisionPlan()
        return dataclasses.replace(base, default=self.choice("uniform"), layers={})


FP32 = Candidate("fp32")


def parse_candidate(name: str) -> Candidate:
    """'int8' -> Candidate('int8'); 'fp32+2:4' -> Candidate('fp32', '2:4')."""
    prec, _, sparsity = name.partition("+")
    return Candidate(prec, sparsity or "dense")

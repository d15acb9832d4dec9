"""Capabilities: what a backend can do for a target, read by the planner, the CLI and ``hwcompile targets``.

A backend returns one from ``Backend.capabilities(target)`` after parsing the target's settings.
Nothing outside a backend branches on a backend's name: it reads these fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .plan import CANDIDATES
from .qdq import QDQStyle

__all__ = ["Capabilities", "sparsity_family"]


def sparsity_family(pattern: str) -> str:
    """The family a sparsity pattern belongs to, as targets and capabilities list them:
    'dense', '2:4' (exactly), 'N:M' (any other N:M), 'unstructured', 'channels'."""
    if pattern in ("dense", "2:4"):
        return pattern
    if ":" in pattern:
        return "N:M"
    return pattern.split("=")[0]


@dataclass(frozen=True)
class Capabilities:
    backend: str
    precisions: tuple[str, ...]                 # candidate names (keys of CANDIDATES) it can lower
    sparsity: tuple[str, ...] = ("dense",)      # sparsity families it can lower (see ``sparsity_family``)
    sparse_kernels: tuple[str, ...] = ()        # families it runs with sparse kernels and stores compressed
    qdq: QDQStyle = field(default_factory=QDQStyle)
    can_build: bool = True
    can_run: bool = True
    can_profile: bool = True
    per_layer_profile: bool = True              # profiles map kernel times back to layer ids
    reasons: Mapping[str, str] = field(default_factory=dict)   # 'build' | 'run' | 'profile' -> why not / caveat

    def __post_init__(self) -> None:
        unknown = [p for p in self.precisions if p not in CANDIDATES]
        if unknown:
            raise ValueError(f"capabilities of {self.backend}: unknown precisions {unknown}")

    def supports_sparsity(self, pattern: str) -> bool:
        return sparsity_family(pattern) in ("dense", *self.sparsity)

    def sparse_kernel_for(self, pattern: str) -> bool:
        return pattern != "dense" and sparsity_family(pattern) in self.sparse_kernels

    def why_not(self, what: str = "build") -> str:
        return self.reasons.get(what, "")

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "precisions": list(self.precisions), "sparsity": list(self.sparsity),
                "sparse_kernels": list(self.sparse_kernels), "can_build": self.can_build, "can_run": self.can_run,
                "can_profile": self.can_profile, "per_layer_profile": self.per_layer_profile,
                "reasons": dict(self.reasons)}

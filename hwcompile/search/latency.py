"""Measured latency of every layer under every candidate: one uniform build per candidate.

For each candidate ``c`` the uniform plan (every layer takes ``c``) is applied, lowered and profiled
once by the backend; ``Profile.layers_ms`` gives each layer's kernel time (Q/DQ, casts and fused
activations a pass inserted for a layer are charged to it). Profilers add per-kernel overhead, so
when the kernel times sum to more than the measured end-to-end latency ``T_c`` they are scaled by
``s_c = min(1, T_c / sum(kernels))``; what is left is the non-layer remainder

    R_c = T_c - sum_i s_c * k_ic          (pooling, reshapes, session overhead, ...)

A mixed plan's latency is predicted by giving each layer its measured time and its share of the
remainder, the share being the layer's fraction of the FP32 layer time (``w_i``):

    cost_ic = s_c * k_ic + w_i * R_c      predicted(plan) = sum_i cost_{i, plan(i)}

which is exact for every uniform plan and linear in the choice (so the MILP can use it). What it
misses (conversions at boundaries between precisions, fusion changes) is corrected from measured
builds by the driver.

Results are cached as JSON at ``<cache>/latency/<target fingerprint>-<model sha>.json`` where
``<cache>`` is ``hwcompile.cache.cache_root()``; the fingerprint covers the device,
its settings and tool versions, so a cached figure is only reused on the same setup. Writes are
atomic; an unreadable cache file is ignored and rewritten.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..contract import Artifact, Backend, Profile
from ..data import Dataset
from ..errors import HwcompileError
from ..ir import Graph, to_bytes
from ..atomic import write_text_atomic
from ..contract import PrecisionPlan
from ..measure import build
from ..targets import Target
from .candidates import Candidate

__all__ = ["LatencyTable", "measure_latency", "cache_path", "record_from_profile", "rescaled", "CACHE_FORMAT"]

CACHE_FORMAT = "hwcompile.latency/1"
Visit = Callable[[Candidate, Artifact, Profile], None]


@dataclass
class LatencyTable:
    """Per candidate: scaled layer times, remainder, end-to-end latency and its spread (ms)."""

    layers: dict[str, dict[str, float]] = field(default_factory=dict)   # candidate -> layer id -> ms
    remainder: dict[str, float] = field(default_factory=dict)
    end_to_end: dict[str, float] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)                     # candidates read from the cache
    failed: dict[str, str] = field(default_factory=dict)                # candidate -> why it did not build
    path: str = ""

    def costs(self, layer_ids: list[str], candidates: list[str]) -> np.ndarray:
        """cost[i, c] = s_c k_ic + w_i R_c (see the module docstring); NaN where c was not measured."""
        base = np.array([self.layers.get("fp32", {}).get(l, 0.0) for l in layer_ids])
        w = base / base.sum() if base.sum() > 0 else np.full(len(layer_ids), 1.0 / max(len(layer_ids), 1))
        out = np.full((len(layer_ids), len(candidates)), np.nan)
        for j, c in enumerate(candidates):
            if c in self.layers:
                out[:, j] = [self.layers[c].get(l, 0.0) for l in layer_ids] + w * self.remainder[c]
        return out

    def record(self, cand: str) -> dict:
        return {"layers_ms": self.layers[cand], "remainder_ms": self.remainder[cand],
                "end_to_end_ms": self.end_to_end[cand], "spread_ms": self.spread[cand]}

    def add(self, cand: str, rec: dict) -> None:
        self.layers[cand] = {k: float(v) for k, v in rec["layers_ms"].items()}
        self.remainder[cand] = float(rec["remainder_ms"])
        self.end_to_end[cand] = float(rec["end_to_end_ms"])
        self.spread[cand] = float(rec.get("spread_ms", 0.0))

    def to_dict(self) -> dict:
        return {"candidates": {c: self.record(c) for c in self.layers}, "cached": self.cached,
                "failed": self.failed, "path": self.path}


def cache_path(target: Target, backend: Backend, graph: Graph) -> Path:
    from ..versions import tool_versions

    from ..cache import kind_dir

    model = hashlib.sha256(to_bytes(graph)).hexdigest()[:16]
    return kind_dir("latency") / f"{target.fingerprint(tool_versions(backend))}-{model}.json"


def record_from_profile(graph: Graph, profile: Profile) -> dict:
    """Scaled per-layer times and the remainder from one profile (module docstring)."""
    total = sum(profile.layers_ms.values()) + sum(profile.unmapped_ms.values())
    e2e = profile.timing.latency_ms
    scale = min(1.0, e2e / total) if total > 0 else 1.0
    layers = {n.name: float(profile.layers_ms.get(n.name, 0.0) * scale) for n in graph.layers()}
    return {"layers_ms": layers, "remainder_ms": float(e2e - sum(layers.values())), "end_to_end_ms": float(e2e),
            "spread_ms": float(profile.timing.latency_ms_spread), "scale": scale}


def measure_latency(graph: Graph, target: Target, backend: Backend, candidates: list[Candidate],
                    feeds: dict[str, np.ndarray], workdir: Path, *, calib: Dataset | None = None,
                    base: PrecisionPlan | None = None, repeats: int = 20, warmup: int = 5,
                    cache: dict | None = None, use_cache: bool = True, visit: Visit | None = None, rounds: int = 3,
                    progress: Callable[[str], None] = lambda s: None) -> LatencyTable:
    """One uniform build per candidate, profiled per layer (or read from the JSON cache).

    With ``visit`` every candidate is built even when cached (per-layer profiling is then
    skipped) and ``visit(candidate, artifact, profile)`` is called, so the caller can measure
    accuracy and size on the same artifact. Uniform plans take ``base``'s numerics, pruning settings
    and input shapes. Per-layer times are the element-wise median of
    ``rounds`` profiles: on a shared machine one preempted kernel run can otherwise double a layer.
    """
    path = cache_path(target, backend, graph)
    stored = _read(path) if use_cache else {}
    table = LatencyTable(path=str(path))
    for cand in candidates:
        hit = stored.get(cand.name)
        if hit is not None:
            table.add(cand.name, hit)
            table.cached.append(cand.name)
            if visit is None:
                continue
        progress(f"latency: uniform {cand.name}")
        out = Path(tempfile.mkdtemp(prefix=f"uniform-{cand.name.replace(':', '_')}-", dir=workdir))
        try:
            _, art = build(graph, cand.uniform_plan(base), target, backend, out, calib, cache=cache)
            prof = backend.profile(art, target, feeds, repeats=repeats, warmup=warmup, per_layer=hit is None)
            if hit is None and rounds > 1:
                prof = _median_layers(prof, [backend.profile(art, target, feeds, repeats=1, warmup=0, per_layer=True)
                                             for _ in range(rounds - 1)])
        except HwcompileError as e:  # a candidate this backend cannot build: leave it out of the search
            table.failed[cand.name] = e.render()
            table.layers.pop(cand.name, None)
            continue
        if hit is None:
            rec = record_from_profile(graph, prof)
            table.add(cand.name, rec)
            stored[cand.name] = rec
            if use_cache:  # the pipeline turns this file cache off (its latency table replays every profile)
                _write(path, stored)
        else:  # keep the cached split, rescaled to today's end-to-end measurement
            table.add(cand.name, rescaled(hit, prof.timing.latency_ms, prof.timing.latency_ms_spread))
        if visit is not None:
            visit(cand, art, prof)
    return table


def _median_layers(first: Profile, more: list[Profile]) -> Profile:
    """``first`` (its end-to-end timing) with per-layer and unmapped times the median over all profiles."""
    profs = [first] + more
    med = lambda key, attr: float(np.median([getattr(p, attr).get(key, 0.0) for p in profs]))
    layers = {k: med(k, "layers_ms") for k in sorted(set().union(*(p.layers_ms for p in profs)))}
    unmapped = {k: med(k, "unmapped_ms") for k in sorted(set().union(*(p.unmapped_ms for p in profs)))}
    return Profile(timing=first.timing, layers_ms=layers, unmapped_ms=unmapped, info=first.info)


def rescaled(rec: dict, e2e: float, spread: float) -> dict:
    """A latency record with every time scaled so its end-to-end figure is ``e2e``."""
    f = e2e / rec["end_to_end_ms"] if rec["end_to_end_ms"] > 0 else 1.0
    return {"layers_ms": {k: v * f for k, v in rec["layers_ms"].items()}, "remainder_ms": rec["remainder_ms"] * f,
            "end_to_end_ms": e2e, "spread_ms": spread}


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return {}
    return {k: v for k, v in data.get("candidates", {}).items() if isinstance(v, dict) and "layers_ms" in v}


def _write(path: Path, records: dict) -> None:
    try:
        write_text_atomic(path, json.dumps({"format": CACHE_FORMAT, "candidates": records}, indent=1) + "\n")
    except OSError:  # a read-only cache must not fail the compile
        pass

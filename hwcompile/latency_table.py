"""The latency table: every profile a compile took, keyed by what was profiled, replayable.

A plan that follows measured latency is only reproducible if the measurements are. Every call to
``backend.profile`` in a compile (baseline, uniform builds, boundary probe, feedback rounds,
the final build) goes through ``MeasuredBackend``, which keys it by *what* was measured:

    entry = sha256(backend, sha256 of each artifact file, sha256 of the feeds, repeats, warmup, per_layer)

and counts calls per entry (the mixed search times the same FP32 build once per round). The n-th
call of an entry returns, in this order: the n-th profile of a pinned table (``--latency-table
FILE``), the n-th profile stored in the cache for this target fingerprint, or a new measurement
(then stored). Since the search is deterministic given its measurements, and an artifact's bytes
are deterministic given its plan, a compile that replays a table makes the same decisions and
writes the same bytes. ``--remeasure`` skips both sources and measures every call.

The table a compile used (only its entries, in call order) is written to the output as
``latency.json``; pinning that file reproduces the compile on any machine. Identical artifact
bytes on an identical target setup (the fingerprint covers device, settings, CPU model and tool
versions) are not re-timed unless asked: a warm compile reports the times first measured.

``MeasuredBackend.load`` also caches what a build computes on evaluation data (outputs per
batch, ``.npz`` keyed by the artifact and input digests): running the same bytes on the same
inputs on the same setup is deterministic, so accuracy is not recomputed either.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .contract import Artifact, Profile, Timing
from .cache import Store, array_digest, content_key, file_digest
from .errors import ConfigError

__all__ = ["FORMAT", "LatencyTable", "MeasuredBackend", "artifact_digest"]

FORMAT = "hwcompile.latency-table/1"


def artifact_digest(artifact: Artifact) -> dict[str, str]:
    """sha256 of each file of an artifact (by role; external ``.data`` files included)."""
    out = {}
    for role, name in sorted(artifact.files.items()):
        p = artifact.directory / name
        if p.is_file():
            out[role] = file_digest(p)
            data = p.with_name(p.name + ".data")
            if data.is_file():
                out[f"{role}.data"] = file_digest(data)
    return out


def profile_to_dict(p: Profile) -> dict:
    return {"timing": p.timing.to_dict(), "layers_ms": dict(p.layers_ms), "unmapped_ms": dict(p.unmapped_ms),
            "info": json.loads(json.dumps(p.info, default=_plain))}


def profile_from_dict(d: Mapping) -> Profile:
    return Profile(timing=Timing(**d["timing"]), layers_ms=dict(d.get("layers_ms", {})),
                   unmapped_ms=dict(d.get("unmapped_ms", {})), info=dict(d.get("info", {})))


def _plain(o: Any):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


class LatencyTable:
    """Profiles by entry key, in call order (module docstring)."""

    def __init__(self, fingerprint: str, pinned: Mapping[str, list[dict]] | None = None, *,
                 remeasure: bool = False, store: Store | None = None, pinned_fingerprint: str | None = None):
        self.fingerprint = fingerprint
        self.pinned = {k: list(v) for k, v in (pinned or {}).items()}
        self.pinned_fingerprint = pinned_fingerprint
        self.remeasure = remeasure
        self.store = store if store is not None else Store("timings")
        self.used: dict[str, dict] = {}       # entry -> {"what": ..., "profiles": [...]} in call order
        self.counts = {"measured": 0, "pinned": 0, "cached": 0}

    @classmethod
    def load(cls, path: str | Path, fingerprint: str, **kw) -> "LatencyTable":
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError("latency table not found", where=f"--latency-table {p}") from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"not a readable JSON latency table: {e}", where=f"--latency-table {p}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
            raise ConfigError(f"not a latency table (format must be {FORMAT!r})", where=f"--latency-table {p}",
                              hint="pass the latency.json of an earlier compile's output folder")
        entries = {}
        for k, v in data["entries"].items():
            if not isinstance(v, dict) or not isinstance(v.get("profiles"), list):
                raise ConfigError(f"entry {k!r} has no profiles list", where=f"--latency-table {p}")
            entries[k] = v["profiles"]
        return cls(fingerprint, entries, pinned_fingerprint=data.get("fingerprint"), **kw)

    def profile(self, backend, artifact: Artifact, target, feeds, *, repeats: int, warmup: int,
                per_layer: bool) -> Profile:
        what = {"backend": backend.name, "artifact": artifact_digest(artifact),
                "feeds": array_digest({k: np.asarray(v) for k, v in feeds.items()}),
                "repeats": int(repeats), "warmup": int(warmup), "per_layer": bool(per_layer)}
        return profile_from_dict(self.measured(what, lambda: profile_to_dict(
            backend.profile(artifact, target, feeds, repeats=repeats, warmup=warmup, per_layer=per_layer))))

    def measured(self, what: dict, measure) -> dict:
        """The n-th record of entry ``what`` (pinned, cached, else ``measure()``, a JSON-able dict, stored):
        the replay rule of ``profile`` for any measurement (e.g. a paired timing of two artifacts)."""
        key = content_key(what)
        slot = self.used.setdefault(key, {"what": what, "profiles": []})
        n = len(slot["profiles"])
        rec, source = None, "measured"
        if not self.remeasure:
            if n < len(self.pinned.get(key, [])):
                rec, source = self.pinned[key][n], "pinned"
            else:
                stored = self.store.get(self._store_key(key)) or {}
                profiles = stored.get("profiles", []) if isinstance(stored, dict) else []
                if n < len(profiles):
                    rec, source = profiles[n], "cached"
        if rec is None:
            rec = measure()
            self._remember(key, n, rec)
        self.counts[source] += 1
        slot["profiles"].append(rec)
        return rec

    def _store_key(self, key: str) -> str:
        return content_key(self.fingerprint, key)

    def _remember(self, key: str, n: int, rec: dict) -> None:
        skey = self._store_key(key)
        stored = self.store.get(skey)
        profiles = list(stored.get("profiles", [])) if isinstance(stored, dict) else []
        if self.remeasure:
            profiles = profiles[:n]    # a re-measured call replaces what was cached from this call on
        if len(profiles) == n:
            self.store.put(skey, {"profiles": profiles + [rec]})

    def to_dict(self) -> dict:
        """What ``latency.json`` holds: the fingerprint and the entries this compile used."""
        return {"format": FORMAT, "fingerprint": self.fingerprint,
                "entries": {k: self.used[k] for k in sorted(self.used)}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, default=_plain) + "\n"


class MeasuredBackend:
    """A backend whose ``profile`` goes through a ``LatencyTable`` and whose runner's outputs are cached
    (module docstring); everything else is the wrapped backend's."""

    def __init__(self, inner, table: LatencyTable, outputs: Store | None = None):
        self.inner = inner
        self.table = table
        self.outputs = outputs if outputs is not None else Store("outputs")

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def profile(self, artifact: Artifact, target, feeds, *, repeats: int = 50, warmup: int = 10,
                per_layer: bool = True) -> Profile:
        return self.table.profile(self.inner, artifact, target, feeds, repeats=repeats, warmup=warmup,
                                  per_layer=per_layer)

    def load(self, artifact: Artifact, target):
        inner_load = self.inner.load
        digest = artifact_digest(artifact)
        state: dict = {}

        def run(feeds):
            key = content_key(self.inner.name, digest, self.table.fingerprint,
                              array_digest({k: np.asarray(v) for k, v in feeds.items()}))
            hit = self.outputs.get_arrays(key)
            if hit is not None and len(hit) and all(f"o{i}" in hit for i in range(len(hit))):
                return [hit[f"o{i}"] for i in range(len(hit))]
            if "run" not in state:
                state["run"] = inner_load(artifact, target)
            outs = state["run"](feeds)
            self.outputs.put_arrays(key, {f"o{i}": np.asarray(o) for i, o in enumerate(outs)})
            return outs

        return run

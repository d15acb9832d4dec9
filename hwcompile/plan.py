"""PrecisionPlan: per-layer weight bits, activation bits and sparsity, as plain JSON.

The plan is the contract between the planner, the passes and the backends. It is keyed by
layer id (the stable node name the importer gives every node), holds a default for layers it
does not name, and the global numerics settings (calibration method, symmetry, granularity,
error compensation). It saves atomically and loads with field-level errors.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "WEIGHT_FORMATS",
    "ACTIVATION_FORMATS",
    "LayerChoice",
    "QuantSettings",
    "PrecisionPlan",
    "parse_sparsity",
    "CANDIDATES",
]

WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4")
ACTIVATION_FORMATS = ("fp32", "fp16", "int8", "dynamic")
CALIB_METHODS = ("minmax", "percentile", "entropy", "mse")
COMPENSATION = ("none", "bias", "gptq")

#: Named candidates a layer can take: name -> (weight, activation).
#: "int8" is static W8A8; "int8dyn" is W8 with dynamically quantized activations;
#: "int4w" is block-wise INT4 weight-only with float activations.
CANDIDATES: dict[str, tuple[str, str]] = {
    "fp32": ("fp32", "fp32"),
    "fp16": ("fp16", "fp16"),
    "int8": ("int8", "int8"),
    "int8dyn": ("int8", "dynamic"),
    "int4w": ("int4", "fp32"),
}

_NM = re.compile(r"^(\d+):(\d+)$")
_RATIO = re.compile(r"^(unstructured|channels)=(0(\.\d+)?|1(\.0+)?)$")


def parse_sparsity(text: str) -> tuple[str, float | tuple[int, int] | None]:
    """'dense' | 'N:M' | 'unstructured=R' | 'channels=R' -> (kind, parameter). Raises ConfigError."""
    text = text.strip()
    if text in ("dense", "", "none"):
        return "dense", None
    m = _NM.match(text)
    if m:
        n, mm = int(m.group(1)), int(m.group(2))
        if not 0 < n < mm:
            raise ConfigError(f"N:M sparsity needs 0 < N < M, got {text!r}", where="sparsity")
        return "nm", (n, mm)
    m = _RATIO.match(text)
    if m:
        ratio = float(m.group(2))
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(f"ratio must be in [0, 1), got {text!r}", where="sparsity")
        return m.group(1), ratio
    raise ConfigError(
        f"unknown sparsity {text!r}",
        where="sparsity",
        hint="use dense, 2:4, N:M, unstructured=0.5 or channels=0.3",
    )


@dataclass(frozen=True)
class LayerChoice:
    """What one layer runs as. ``reason`` says why the planner chose it (shown in reports)."""

    weight: str = "fp32"
    activation: str = "fp32"
    sparsity: str = "dense"
    reason: str = ""

    def __post_init__(self) -> None:
        if self.weight not in WEIGHT_FORMATS:
            raise ConfigError(f"weight format {self.weight!r} not in {WEIGHT_FORMATS}", where="weight")
        if self.activation not in ACTIVATION_FORMATS:
            raise ConfigError(
                f"activation format {self.activation!r} not in {ACTIVATION_FORMATS}", where="activation"
            )
        parse_sparsity(self.sparsity)

    @classmethod
    def from_candidate(cls, name: str, sparsity: str = "dense", reason: str = "") -> "LayerChoice":
        if name not in CANDIDATES:
            raise ConfigError(f"unknown precision {name!r}", where="precision", hint=f"one of {sorted(CANDIDATES)}")
        w, a = CANDIDATES[name]
        return cls(weight=w, activation=a, sparsity=sparsity, reason=reason)

    @property
    def candidate(self) -> str:
        for name, pair in CANDIDATES.items():
            if pair == (self.weight, self.activation):
                return name
        return f"{self.weight}/{self.activation}"

    @property
    def is_float(self) -> bool:
        return self.weight in ("fp32", "fp16") and self.activation in ("fp32", "fp16")


@dataclass(frozen=True)
class QuantSettings:
    """Global numerics: how scales are found and how rounding error is compensated."""

    calib_method: str = "minmax"
    percentile: float = 99.99
    symmetric_activations: bool = False
    symmetric_weights: bool = True
    per_channel: bool = True
    int4_block_size: int = 32
    compensation: str = "bias"
    histogram_bins: int = 2048
    embeddings: str = "int8"     # large Gather tables when the plan quantizes: "int8" (per row) | "float"

    def __post_init__(self) -> None:
        if self.calib_method not in CALIB_METHODS:
            raise ConfigError(f"{self.calib_method!r} not in {CALIB_METHODS}", where="calib_method")
        if self.compensation not in COMPENSATION:
            raise ConfigError(f"{self.compensation!r} not in {COMPENSATION}", where="compensation")
        if self.embeddings not in ("int8", "float"):
            raise ConfigError(f"{self.embeddings!r} not in ('int8', 'float')", where="embeddings")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}", where="percentile")
        if self.int4_block_size < 8 or self.int4_block_size & (self.int4_block_size - 1):
            raise ConfigError("int4_block_size must be a power of two >= 8", where="int4_block_size")


@dataclass
class PrecisionPlan:
    """Per-layer choices plus a default. Layers not named take ``default``."""

    default: LayerChoice = field(default_factory=LayerChoice)
    layers: dict[str, LayerChoice] = field(default_factory=dict)
    quant: QuantSettings = field(default_factory=QuantSettings)
    model: str = ""
    target: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    # -- queries -------------------------------------------------------------------------
    def choice(self, layer_id: str) -> LayerChoice:
        return self.layers.get(layer_id, self.default)

    def with_layer(self, layer_id: str, choice: LayerChoice) -> "PrecisionPlan":
        layers = dict(self.layers)
        layers[layer_id] = choice
        return dataclasses.replace(self, layers=layers)

    @classmethod
    def uniform(cls, precision: str = "fp32", sparsity: str = "dense", **quant: Any) -> "PrecisionPlan":
        return cls(default=LayerChoice.from_candidate(precision, sparsity, reason="uniform"), quant=QuantSettings(**quant))

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "hwcompile.plan/1",
            "model": self.model,
            "target": self.target,
            "default": dataclasses.asdict(self.default),
            "quant": dataclasses.asdict(self.quant),
            "layers": {k: dataclasses.asdict(v) for k, v in sorted(self.layers.items())},
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrecisionPlan":
        if not isinstance(data, dict) or data.get("format") != "hwcompile.plan/1":
            raise ConfigError("not a hwcompile plan (missing format 'hwcompile.plan/1')", where="plan.format")
        try:
            default = LayerChoice(**data.get("default", {}))
            quant = QuantSettings(**data.get("quant", {}))
            layers = {}
            for k, v in data.get("layers", {}).items():
                try:
                    layers[k] = LayerChoice(**v)
                except TypeError as e:
                    raise ConfigError(str(e), where=f"plan.layers.{k}") from None
        except TypeError as e:
            raise ConfigError(str(e), where="plan") from None
        return cls(default=default, layers=layers, quant=quant, model=data.get("model", ""),
                   target=data.get("target", ""), notes=data.get("notes", {}))

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PrecisionPlan":
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError("plan file not found", where=str(p)) from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"invalid JSON: {e}", where=str(p)) from None
        return cls.from_dict(data)


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

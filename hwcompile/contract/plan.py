"""PrecisionPlan: what every layer runs as, plus the numerics, pruning and input shapes, as plain JSON.

The plan is the contract between the planner, the passes and the backends. It is keyed by layer
id (the stable node name the importer gives every node) and holds a default for layers it does
not name. Behaviour lives in typed fields only: ``quant`` (calibration, rounding compensation),
``prune`` (how sparsity is applied) and ``input_shapes`` (concrete shapes for dynamic inputs,
read by every backend and by profiling); ``notes`` are for people and nothing reads them.

Plans are frozen: derive a new one with ``dataclasses.replace`` / ``with_layer``. On disk a plan
is JSON with ``"format": "hwcompile.plan/2"``. A ``hwcompile.plan/1`` file still loads: its
``notes.prune_<field>`` options become ``prune`` and ``notes.input_shapes`` becomes
``input_shapes``; a field this version cannot honour is refused naming it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from ..atomic import write_text_atomic
from ..errors import ConfigError

__all__ = ["PLAN_FORMAT", "WEIGHT_FORMATS", "ACTIVATION_FORMATS", "CALIB_METHODS", "COMPENSATION", "SCHEDULES",
           "CANDIDATES", "LayerChoice", "QuantSettings", "PruneSettings", "PrecisionPlan", "parse_sparsity",
           "check_input_shapes"]

PLAN_FORMAT = "hwcompile.plan/2"
_LEGACY_FORMAT = "hwcompile.plan/1"

WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4")
ACTIVATION_FORMATS = ("fp32", "fp16", "int8", "dynamic")
CALIB_METHODS = ("minmax", "percentile", "entropy", "mse")
COMPENSATION = ("none", "bias", "gptq")
SCHEDULES = ("one-shot", "gradual", "iterative")

#: Named candidates a layer can take: name -> (weight, activation).
#: "int8" is static W8A8; "int8dyn" is W8 with dynamically quantized activations;
#: "int4w" is block-wise INT4 weight-only with float activations.
CANDIDATES: Mapping[str, tuple[str, str]] = MappingProxyType({
    "fp32": ("fp32", "fp32"),
    "fp16": ("fp16", "fp16"),
    "int8": ("int8", "int8"),
    "int8dyn": ("int8", "dynamic"),
    "int4w": ("int4", "fp32"),
})

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

    @property
    def sparsity_kind(self) -> str:
        """'dense' | 'nm' | 'unstructured' | 'channels'."""
        return parse_sparsity(self.sparsity)[0]


@dataclass(frozen=True)
class QuantSettings:
    """Global numerics: how scales are found and how rounding error is compensated.

    Weights are always quantized symmetrically (zero point 0); ``per_channel`` picks one scale per
    output channel (else one per tensor)."""

    calib_method: str = "minmax"
    percentile: float = 99.99
    symmetric_activations: bool = False
    per_channel: bool = True
    int4_block_size: int = 32
    compensation: str = "bias"
    histogram_bins: int = 2048
    embeddings: str = "int8"     # large Gather tables when the plan quantizes: "int8" (per row) | "float"

    def __post_init__(self) -> None:
        _check_types(self, "quant")
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
        if self.histogram_bins < 16:
            raise ConfigError(f"histogram_bins must be >= 16, got {self.histogram_bins}", where="histogram_bins")


@dataclass(frozen=True)
class PruneSettings:
    """How the plan's sparsity is applied (read by the pruning pass; errors name ``plan.prune.<field>``)."""

    schedule: str = "one-shot"           # one-shot | gradual | iterative
    steps: int = 3                       # gradual: number of steps
    global_: bool = False                # unstructured: one threshold over all layers (JSON key 'global')
    importance: str = "auto"             # auto | magnitude | wanda | sparsegpt | fisher | snip | grasp
                                         # (auto: wanda with calibration data; the last three: recover.criteria)
    channel_importance: str = "auto"     # auto | l1 | l2 | activation (auto: activation with data)
    reconstruct: bool = True             # least-squares refit when calibration data is given
    ridge: float = 1e-3                  # refit damping, relative to mean diag(X^T X)
    refit_prior: str = "zero"            # zero | weight: the refit's ridge pulls toward 0 or toward the current weight
    percdamp: float = 0.01               # sparsegpt: Hessian damping, relative to mean diag(X^T X)
    sparsegpt_refit: bool = True         # sparsegpt: exact least-squares refit on the mask it chose
    refit_rounds: int = 0                # after the schedule: passes refitting every pruned layer (fixed masks) on
                                         # the pruned model's inputs against the dense model's outputs
    refit_unpruned: bool = False         # also refit (dense) the layers whose inputs pruning shifted (depthwise)
    refit_bias: bool = True              # the refit also corrects the layer's bias (intercept)
    token_mask: str = ""                 # graph input [N, S] (e.g. attention_mask): padding rows not fit
    max_rows: int = 2048                 # rows sampled per layer and batch
    calib_samples: int = 256
    batch_size: int = 8
    channel_multiple: int = 1            # kept channel counts are rounded up to a multiple of this
    channel_allocation: str = "global"   # global (R = fraction of prunable FLOPs) | uniform (R per group)
    channel_max_ratio: float = 0.75      # global: no group loses more than this fraction of its channels
    channel_min_group: int = 16          # global: groups with at most this many channels stay dense
    channel_protect_ends: bool = True    # global: the stem and head groups stay dense
    recover_steps: int = 0               # gradual/iterative: training steps of each prune -> recover cycle
    recover_minutes: float = 0.0         # ... and its time budget (0 and 0: no cycles; hwcompile.recover)
    recover_lr: float = 1e-4

    def __post_init__(self) -> None:
        _check_types(self, "plan.prune")
        checks = {"schedule": self.schedule in SCHEDULES, "steps": self.steps >= 1,
                  "importance": self.importance in ("auto", "magnitude", "wanda", "sparsegpt", "fisher", "snip",
                                                    "grasp"),
                  "refit_prior": self.refit_prior in ("zero", "weight"), "percdamp": self.percdamp > 0,
                  "refit_rounds": self.refit_rounds >= 0,
                  "channel_importance": self.channel_importance in ("auto", "l1", "l2", "activation"),
                  "ridge": self.ridge >= 0, "max_rows": self.max_rows >= 1,
                  "calib_samples": self.calib_samples >= 1, "batch_size": self.batch_size >= 1,
                  "channel_multiple": self.channel_multiple >= 1,
                  "channel_allocation": self.channel_allocation in ("global", "uniform"),
                  "channel_max_ratio": 0.0 < self.channel_max_ratio <= 1.0,
                  "channel_min_group": self.channel_min_group >= 0, "recover_steps": self.recover_steps >= 0,
                  "recover_minutes": self.recover_minutes >= 0, "recover_lr": self.recover_lr > 0}
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"invalid value {getattr(self, key)!r}", where=f"plan.prune.{_json_key(key)}",
                                  hint=f"schedules: {SCHEDULES}" if key == "schedule" else None)

    def weight_method(self, calib) -> str:
        return ("wanda" if calib is not None else "magnitude") if self.importance == "auto" else self.importance

    def channel_method(self, calib) -> str:
        if self.channel_importance == "auto":
            return "activation" if calib is not None else "l1"
        return self.channel_importance

    def to_dict(self) -> dict[str, Any]:
        return {_json_key(f.name): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "plan.prune") -> "PruneSettings":
        if not isinstance(data, Mapping):
            raise ConfigError("must be an object", where=where)
        names = {_json_key(f.name): f.name for f in fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"unknown pruning option(s) {unknown}", where=where, hint=f"known: {sorted(names)}")
        try:
            return cls(**{names[k]: _widen(v, type(getattr(cls, names[k]))) for k, v in data.items()})
        except ConfigError as e:
            raise ConfigError(e.message, where=f"{where}.{e.where.rsplit('.', 1)[-1]}", hint=e.hint) from None


def _json_key(name: str) -> str:
    return name.rstrip("_")


def _widen(value: Any, want: type) -> Any:
    """An integer where a float is wanted becomes that float (JSON and TOML write 1 for 1.0)."""
    return float(value) if want is float and isinstance(value, int) and not isinstance(value, bool) else value


def _check_types(obj: Any, where: str) -> None:
    """Every field holds a value of its default's type (bool is not an int; an int is a float)."""
    for f in fields(obj):
        default = f.default
        if default is dataclasses.MISSING:
            continue
        v, want = getattr(obj, f.name), type(default)
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            object.__setattr__(obj, f.name, float(v))
            continue
        if not isinstance(v, want) or (want is not bool and isinstance(v, bool)):
            raise ConfigError(f"expected {want.__name__}, got {v!r}", where=f"{where}.{_json_key(f.name)}")


def check_input_shapes(shapes: Mapping[str, Any], where: str = "input_shapes") -> dict[str, tuple[int, ...]]:
    """``{input: [dims]}`` with positive integer dims, as tuples. Raises ConfigError naming the input."""
    if not isinstance(shapes, Mapping):
        raise ConfigError("must map input names to lists of dimensions", where=where)
    out = {}
    for name, dims in shapes.items():
        if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                          for d in dims):
            raise ConfigError(f"shape {dims!r} is not a list of positive integers", where=f"{where}.{name}")
        out[str(name)] = tuple(int(d) for d in dims)
    return out


@dataclass(frozen=True)
class PrecisionPlan:
    """Per-layer choices plus a default (layers not named take ``default``); frozen."""

    default: LayerChoice = field(default_factory=LayerChoice)
    layers: Mapping[str, LayerChoice] = field(default_factory=dict)
    quant: QuantSettings = field(default_factory=QuantSettings)
    prune: PruneSettings = field(default_factory=PruneSettings)
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    model: str = ""
    target: str = ""
    notes: Mapping[str, Any] = field(default_factory=dict)   # for people; nothing reads behaviour from it

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", MappingProxyType(dict(self.layers)))
        object.__setattr__(self, "input_shapes", MappingProxyType(check_input_shapes(self.input_shapes)))
        object.__setattr__(self, "notes", MappingProxyType(dict(self.notes)))

    def __deepcopy__(self, memo) -> "PrecisionPlan":
        return self     # immutable all the way down: a copy is the plan itself

    def __copy__(self) -> "PrecisionPlan":
        return self

    # -- queries -------------------------------------------------------------------------
    def choice(self, layer_id: str) -> LayerChoice:
        return self.layers.get(layer_id, self.default)

    def with_layer(self, layer_id: str, choice: LayerChoice) -> "PrecisionPlan":
        return dataclasses.replace(self, layers={**self.layers, layer_id: choice})

    def with_notes(self, **notes: Any) -> "PrecisionPlan":
        return dataclasses.replace(self, notes={**self.notes, **notes})

    @classmethod
    def uniform(cls, precision: str = "fp32", sparsity: str = "dense", *, prune: PruneSettings | None = None,
                input_shapes: Mapping[str, Any] | None = None, **quant: Any) -> "PrecisionPlan":
        return cls(default=LayerChoice.from_candidate(precision, sparsity, reason="uniform"),
                   quant=QuantSettings(**quant), prune=prune or PruneSettings(), input_shapes=input_shapes or {})

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "model": self.model,
            "target": self.target,
            "default": dataclasses.asdict(self.default),
            "quant": dataclasses.asdict(self.quant),
            "prune": self.prune.to_dict(),
            "input_shapes": {k: list(v) for k, v in sorted(self.input_shapes.items())},
            "layers": {k: dataclasses.asdict(v) for k, v in sorted(self.layers.items())},
            "notes": dict(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = "plan") -> "PrecisionPlan":
        if not isinstance(data, dict) or data.get("format") not in (PLAN_FORMAT, _LEGACY_FORMAT):
            found = data.get("format") if isinstance(data, dict) else None
            raise ConfigError(f"not a hwcompile plan (format {found!r}, expected {PLAN_FORMAT!r})",
                              where=f"{where}.format")
        data = _upgrade(dict(data), where) if data["format"] == _LEGACY_FORMAT else data
        known = {"format", "model", "target", "default", "quant", "prune", "input_shapes", "layers", "notes"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown}", where=where, hint=f"known: {sorted(known)}")
        quant = _build(QuantSettings, data.get("quant", {}), f"{where}.quant")
        default = _build(LayerChoice, data.get("default", {}), f"{where}.default")
        layers = {k: _build(LayerChoice, v, f"{where}.layers.{k}") for k, v in _obj(data, "layers", where).items()}
        prune = PruneSettings.from_dict(data.get("prune", {}), f"{where}.prune")
        shapes = check_input_shapes(data.get("input_shapes", {}), f"{where}.input_shapes")
        for key in ("model", "target"):
            if not isinstance(data.get(key, ""), str):
                raise ConfigError("must be a string", where=f"{where}.{key}")
        return cls(default=default, layers=layers, quant=quant, prune=prune, input_shapes=shapes,
                   model=data.get("model", ""), target=data.get("target", ""), notes=_obj(data, "notes", where))

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PrecisionPlan":
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError("plan file not found", where=str(p)) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"invalid JSON: {e}", where=str(p)) from None
        return cls.from_dict(data, where=str(p))


def _obj(data: Mapping, key: str, where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError("must be an object", where=f"{where}.{key}")
    return value


def _build(cls, values: Any, where: str):
    """``cls(**values)`` with every error naming ``where`` and the field."""
    if not isinstance(values, dict):
        raise ConfigError("must be an object", where=where)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown}", where=where, hint=f"known: {sorted(names)}")
    try:
        return cls(**values)
    except ConfigError as e:
        field_name = e.where.rsplit(".", 1)[-1] if e.where else ""
        raise ConfigError(e.message, where=f"{where}.{field_name}" if field_name else where) from None


def _upgrade(data: dict, where: str) -> dict:
    """A ``hwcompile.plan/1`` dict in the current layout (module docstring)."""
    notes = dict(_obj(data, "notes", where))
    prune = {k[len("prune_"):]: notes.pop(k) for k in list(notes) if k.startswith("prune_")}
    known = {_json_key(f.name) for f in fields(PruneSettings)}
    unknown = sorted(set(prune) - known)
    if unknown:
        raise ConfigError("unknown pruning option", where=f"{where}.notes.prune_{unknown[0]}",
                          hint=f"known: {sorted('prune_' + k for k in known)}")
    try:
        PruneSettings.from_dict(prune, f"{where}.notes")
    except ConfigError as e:   # name the old key: notes.prune_<field>
        raise ConfigError(e.message, where=f"{where}.notes.prune_{e.where.rsplit('.', 1)[-1]}", hint=e.hint) from None
    data["prune"] = prune
    if "input_shapes" in notes:
        data["input_shapes"] = notes.pop("input_shapes")
    quant = dict(_obj(data, "quant", where))
    if quant.pop("symmetric_weights", True) is not True:
        raise ConfigError("asymmetric weights are no longer supported (weights are quantized symmetrically)",
                          where=f"{where}.quant.symmetric_weights", hint="remove the field or set it to true")
    data.update(format=PLAN_FORMAT, notes=notes, quant=quant)
    return data

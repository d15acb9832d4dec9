"""The embedded default model: a small residual CNN with BatchNorm trained on real digits.

``default_model()`` reads ``default.json`` shipped beside the model and returns the paths of the
ONNX file, the calibration ``.npz`` (``{"input": float32 [n,1,8,8]}``) and the held-out
evaluation ``.npz`` (``{"input": ..., "label": int64 [n]}``), plus the label key, the metric name
and the FP32 reference score measured with onnxruntime when the files were made
(``tools/train_default_model.py`` regenerates all of them deterministically).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import ModelLoadError

__all__ = ["DefaultModel", "default_model"]

_META = "default.json"


@dataclass(frozen=True)
class DefaultModel:
    """Where the default model and its data live, and its FP32 reference score."""

    model: Path
    calib: Path
    eval: Path
    labels: str
    metric: str
    fp32_score: float
    source: str


def _package_dir() -> Path:
    return Path(str(resources.files(__name__)))


def default_model() -> DefaultModel:
    """Describe the shipped default model; raises ModelLoadError if a shipped file is missing."""
    base = _package_dir()
    meta_path = base / _META
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read the default model description: {e}", where=str(meta_path),
                             hint="reinstall hwcompile or run tools/train_default_model.py") from e
    try:
        d = DefaultModel(model=base / meta["model"], calib=base / meta["calib"], eval=base / meta["eval"],
                         labels=str(meta["labels"]), metric=str(meta["metric"]),
                         fp32_score=float(meta[f"fp32_{meta['metric']}"]), source=str(meta.get("source", "")))
    except KeyError as e:
        raise ModelLoadError(f"missing key {e}", where=str(meta_path),
                             hint="run tools/train_default_model.py to regenerate it") from e
    for p in (d.model, d.calib, d.eval):
        if not p.is_file():
            raise ModelLoadError("shipped file is missing", where=str(p),
                                 hint="reinstall hwcompile or run tools/train_default_model.py")
    return d

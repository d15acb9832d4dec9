"""Profile a model or a compiled output folder on a target, per layer id."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from .backends.base import open_target
from .contract import Artifact, PrecisionPlan, check_input_shapes
from .errors import ConfigError
from .ir import load
from .measure import profile_feeds

__all__ = ["profile_path"]


def profile_path(path: Path, target_name: str, *, repeats: int = 50, progress: Callable[[str], None] = lambda s: None,
                 shapes: Mapping[str, Any] | None = None) -> dict:
    """Profile an ONNX file (lowered as FP32) or an hwcompile output folder; ``shapes`` fixes dynamic
    input dimensions for the lowering (as ``--shape`` does for compile) and the profiling input; for a
    folder, the shapes its compile measured (its report.json) unless given. A dynamic dimension no
    one fixes is a ConfigError naming the input, the dimension and ``--shape``."""
    shapes = check_input_shapes(shapes or {}, "--shape")
    opened = open_target(target_name)
    target, backend = opened.target, opened.backend
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="hwc-profile-") as tmp:
        if path.is_dir():
            artifact = _artifact_from_dir(path, backend.name, target.name)
            graph = load(artifact.path("model"))
            shapes = shapes or check_input_shapes(_compiled_shapes(path) or {}, "report.json input_shapes")
        else:
            progress("import")
            graph = load(path)
            artifact = backend.lower(graph, PrecisionPlan(input_shapes=shapes), target, Path(tmp))
        progress(f"profile on {target.name}")
        feeds = profile_feeds(graph, None, shapes)
        prof = backend.profile(artifact, target, feeds, repeats=repeats, warmup=max(3, repeats // 5))
    ops = {n.name: n.op_type for n in graph.main}
    layers = [{"layer": k, "op": ops.get(k, "?"), "ms": v} for k, v in sorted(prof.layers_ms.items(), key=lambda kv: -kv[1])]
    layers += [{"layer": f"(unmapped) {k}", "op": "?", "ms": v} for k, v in prof.unmapped_ms.items()]
    return {"target": target.name, "backend": backend.name, "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
            **prof.timing.to_dict(), "layers": layers,
            "kernels": prof.info.get("kernels", [])}


def _compiled_shapes(d: Path) -> dict | None:
    report = d / "report.json"
    if not report.is_file():
        return None
    try:
        return json.loads(report.read_text()).get("compiled", {}).get("input_shapes") or None
    except (ValueError, AttributeError):
        return None


def _artifact_from_dir(d: Path, backend: str, target: str) -> Artifact:
    report = d / "report.json"
    files = {"model": "model.onnx", "session": "session.json"}
    if report.is_file():
        files = json.loads(report.read_text()).get("artifact", {}).get("files", files)
    if not (d / files.get("model", "model.onnx")).is_file():
        raise ConfigError("folder has no model.onnx: not an hwcompile output", where=str(d))
    return Artifact(directory=d, backend=backend, target=target, files=files)

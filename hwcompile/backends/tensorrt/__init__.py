"""TensorRT backend (NVIDIA Ampere and later): explicit Q/DQ ONNX, validated, then an engine.

Lowering always writes ``model.onnx``, the TensorRT-ready ONNX: symmetric INT8 Q/DQ (zero points
0), activation scales per tensor, weight scales per output channel, weights as
``initializer -> DequantizeLinear -> op``, float biases, no QLinear*/Integer/contrib ops, 2:4
sparse weights where the plan prunes. The rules in ``rules.py`` are checked on that file before
anything else; a violation is a compiler bug and stops the build naming node and rule. Golden
inputs and outputs (onnxruntime on the CPU) are saved beside it for comparison on the device.
Where TensorRT and a GPU exist the engine is built (``model.plan``) with a persisted timing
cache; elsewhere the build says exactly why not, and running or profiling falls back to
onnxruntime on the CPU, labelled as such in the profile. The CPU fallback runs with every graph
optimization off, so the model runs exactly as written: Q/DQ stay float fake-quantization (the
arithmetic TensorRT's INT8 kernels implement) instead of onnxruntime's x86 s8*s8 kernels, which
saturate on CPUs without VNNI, and the float biases stay float. (Even onnxruntime's *basic* level
rewrites a float bias after DQ -> Conv into int32 with scale s_x * s_w; with a near-zero weight
scale that saturates int32 and changed EfficientNet-Lite0's stem output by up to 7.0 in 1.32.)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import PassError
from ...ir import Graph, save, to_proto
from ...atomic import write_text_atomic
from ...contract import Artifact, Backend, Capabilities, Feeds, PrecisionPlan, Profile, QDQStyle, Runner, Timing
from ...contract import parse_sparsity
from ...targets import Target
from .engine import build_engine, load_engine, profile_engine, tensorrt_status
from .rules import check_model, render

__all__ = ["TensorRTBackend", "fake_quant_session_options"]


class TensorRTBackend(Backend):
    name = "tensorrt"

    def capabilities(self, target: Target) -> Capabilities:
        ok, why = tensorrt_status()
        reasons = {} if ok else {"build": why, "run": f"onnxruntime CPU emulation: {why}",
                                 "profile": f"onnxruntime CPU emulation: {why}"}
        qdq = QDQStyle(activation_dtype="int8", weight_dtype="int8", symmetric_activations=True, quantize_bias=False,
                       int8_embeddings=False, allow_dynamic=False, allow_contrib_ops=False)
        sparse = ("2:4",) if target.settings.get("sparse_weights", True) is True else ()
        return Capabilities(backend=self.name, precisions=("fp32", "fp16", "int8", "int4w"),
                            sparsity=("2:4", "unstructured", "channels"), sparse_kernels=sparse, qdq=qdq,
                            can_build=ok, reasons=reasons)

    def check_deployment(self, model, *, sparsity: str | None = None) -> list:
        return check_model(model, sparsity=sparsity)

    def versions(self) -> dict[str, str]:
        ok, msg = tensorrt_status()
        return {"tensorrt": msg if ok else "unavailable"}

    def lower(self, graph: Graph, plan: PrecisionPlan, target: Target, out_dir: Path) -> Artifact:
        out_dir.mkdir(parents=True, exist_ok=True)
        proto = to_proto(graph)
        sparse_nodes = _sparse_layers(graph, plan)
        sparse = bool(sparse_nodes)
        violations = check_model(proto, sparsity="2:4" if sparse else None, sparse_nodes=sparse_nodes)
        if violations:
            raise PassError("the TensorRT-ready ONNX breaks TensorRT's explicit-quantization rules:\n"
                            + render(violations), where="tensorrt lower")
        save(proto, out_dir / "model.onnx")
        files = {"model": "model.onnx", "golden": "golden.npz"}
        _write_golden(proto, out_dir / "golden.npz")
        info: dict = {"tensorrt_ready_onnx": True, "rules_checked": True, "sparse_layers": sorted(sparse_nodes)}
        ok, why = tensorrt_status()
        if ok:
            s = target.settings
            result = build_engine(out_dir / "model.onnx", out_dir / "model.plan",
                                  timing_cache_path=_cache_path(s.get("timing_cache")),
                                  sparse_weights=bool(s.get("sparse_weights", True)) and sparse,
                                  profiles=s.get("profiles"), max_batch=int(s.get("max_batch", 1)),
                                  workspace_mb=int(s.get("workspace_mb", 2048)))
            files["engine"] = "model.plan"
            info.update(engine_built=True, engine_summary=result.summary(), engine=result.to_dict())
        else:
            info.update(engine_built=False, engine_reason=why)
        write_text_atomic(out_dir / "tensorrt.json", json.dumps(info, indent=2, default=str) + "\n")
        files["info"] = "tensorrt.json"
        return Artifact(directory=out_dir, backend=self.name, target=target.name, files=files, info=info)

    def load(self, artifact: Artifact, target: Target) -> Runner:
        if "engine" in artifact.files:
            return load_engine(artifact.path("engine"))
        return _cpu_runner(artifact.path("model"))

    def profile(self, artifact: Artifact, target: Target, feeds: Feeds, *, repeats: int = 50, warmup: int = 10,
                per_layer: bool = True) -> Profile:
        if "engine" in artifact.files:
            res = profile_engine(artifact.path("engine"), feeds, repeats, warmup=warmup)
            timing = Timing(latency_ms=res["latency_ms"], latency_ms_spread=res.get("latency_ms_spread", 0.0),
                            p10_ms=res.get("p10_ms", 0.0), p90_ms=res.get("p90_ms", 0.0), repeats=repeats,
                            warmup=warmup, threads=1)
            layers: dict[str, float] = {}
            unmapped: dict[str, float] = {}
            for layer, ms in res.get("layers_ms", {}).items():
                nodes = res.get("layer_nodes", {}).get(layer) or []
                if nodes:
                    for n in nodes:  # a fused TensorRT layer is charged to its ONNX nodes evenly
                        layers[n] = layers.get(n, 0.0) + ms / len(nodes)
                else:
                    unmapped[layer] = ms
            return Profile(timing=timing, layers_ms=layers, unmapped_ms=unmapped, info={"device": "gpu"})
        from ..onnxruntime import OnnxRuntimeBackend

        ort_art = Artifact(directory=artifact.directory, backend="onnxruntime", target=target.name,
                           files={"model": artifact.files["model"]},
                           info={"session": {"execution_provider": "CPUExecutionProvider",
                                             "graph_optimization_level": "disable", "intra_op_num_threads": 0}})
        prof = OnnxRuntimeBackend().profile(ort_art, target, feeds, repeats=repeats, warmup=warmup, per_layer=per_layer)
        prof.info["device"] = ("cpu-emulation: no TensorRT engine was built ("
                               + artifact.info.get("engine_reason", "unknown") + "); these are onnxruntime CPU times")
        return prof


def _sparse_layers(graph: Graph, plan: PrecisionPlan) -> set[str]:
    """Layers the pruning pass made N:M sparse (``meta['prune']['layers']``; declined ones are not there)."""
    pruned = (graph.meta.get("prune") or {}).get("layers") or {}
    return {name for name in pruned if parse_sparsity(plan.choice(name).sparsity)[0] == "nm"}


def _cache_path(name: str | None) -> Path | None:
    if not name:
        return None
    from ...cache import kind_dir

    base = kind_dir("tensorrt")
    base.mkdir(parents=True, exist_ok=True)
    return base / name


def fake_quant_session_options():
    from ..onnxruntime import session_options

    return session_options({"graph_optimization_level": "disable"})  # the model exactly as written


def _cpu_runner(model_path: Path) -> Runner:
    import onnxruntime as ort

    so = fake_quant_session_options()
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return lambda feeds: sess.run(None, {k: feeds[k] for k in names})


def _write_golden(proto, path: Path) -> None:
    """Seeded inputs and onnxruntime-CPU outputs, to compare an engine against on the device."""
    import os
    import tempfile

    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), fake_quant_session_options(),
                                providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
             "tensor(float16)": np.float16}
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        dt = types.get(i.type, np.float32)
        feeds[i.name] = (rng.standard_normal(shape) if np.issubdtype(dt, np.floating)
                         else rng.integers(0, 2, shape)).astype(dt)
    outs = sess.run(None, feeds)
    arrays = {f"input:{k}": v for k, v in feeds.items()}
    arrays.update({f"output:{o.name}": v for o, v in zip(sess.get_outputs(), outs)})
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

"""TVM backend (Apache TVM >= 0.27, Relax): LLVM CPUs here or, cross-compiled, over TVM RPC.

Lowering writes ``model.so`` (the Relax VM executable with its kernels and constant weights,
linked by the target's cross compiler when it has one), ``model.onnx`` (the graph that was
lowered, for reference: shape computations on static shapes folded to constants, ``shapes.py``),
``tvm.json`` (target, tuning database, versions, the layer order used to map kernel times) and
``tvm.log`` (everything TVM printed or logged while building; nothing of it reaches the terminal).
A node the Relax frontend cannot convert is refused naming the node and its op. Q/DQ pass through: the Relax ONNX frontend converts per-tensor and
per-channel QuantizeLinear/DequantizeLinear to ``relax.quantize``/``dequantize``, which LLVM
runs as float fake-quantization (FoldConstant pre-dequantizes constant weights), except where a
kernel of the backend's kernel table (``kernels/``: pattern, check, kernel) serves the layer: INT8
MatMul/Gemm with symmetric weights run an exact integer kernel chosen by the target's CPU features
(AVX-512 VNNI ``vpdpbusd``, AVX2 ``vpmaddwd``, Arm ``sdot``; ``int8_kernels = false`` turns them
off). ``tvm.json`` and the report list, per pattern, the kernel and the layers that used it and
those declined, with the reason; ``versions()`` names the kernel table and its source hash.
Block-wise (INT4) Q/DQ and contrib ops are
refused naming the node. Dynamic INT8 (DynamicQuantizeLinear -> MatMulInteger) runs in exact
int32 arithmetic, so INT8 GEMM weights stay signed (no u8*s8 int16 saturation as in onnxruntime's
AVX2 kernels: there, with int8 weights, onnxruntime was the one off by ~12% when checked).

Settings (``[backend_settings]``, see ``build.TVMSettings``): ``target`` (a TVM target table,
``mcpu = "host"`` for this CPU), ``cc``, ``int8_kernels``, ``tune_trials``, ``tune_trials_per_task``, ``tune_timeout_s``,
``rpc_host``, ``rpc_key``, ``rpc_timeout_s``. Static shapes for dynamic inputs may be given as
``plan.input_shapes`` ({input: dims}, from ``--shape``); otherwise dynamic dimensions stay symbolic, except
when tuning, where a dynamic batch becomes 1. A library built for a fixed batch runs larger batches
in slices. Tuning runs in a child process (``tune.py``) so a crash keeps the records measured so far.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ...errors import BackendUnavailable, HwcompileError
from ...ir import SERVES, Graph, save, to_proto
from ...atomic import write_text_atomic
from ...contract import Artifact, Backend, Capabilities, Feeds, PrecisionPlan, Profile, QDQStyle, Runner
from ...targets import Target
from . import kernels
from .build import (HEAD_OPS, TVMSettings, batch_one, check_importable, compile_relax, export, import_tvm, to_relax,
                    tuning_dir, tvm_target)
from .logs import LOG_NAME, to_log
from .run import default_threads, layer_times, open_session, time_vm
from .shapes import fold_shapes
from .tune import tune_in_child

__all__ = ["TVMBackend", "TVMSettings"]

_LIBRARY, _ONNX, _INFO = "model.so", "model.onnx", "tvm.json"


class TVMBackend(Backend):
    name = "tvm"

    Settings = TVMSettings

    def capabilities(self, target: Target) -> Capabilities:
        settings = TVMSettings.from_target(target)   # settings errors are the target's, whatever is installed
        reasons: dict[str, str] = {}
        can_build = can_run = True
        try:
            import_tvm()
            tvm_target(settings)
        except HwcompileError as e:
            reasons = {k: e.render() for k in ("build", "run", "profile")}
            can_build = can_run = False
        rpc_note = ("running and profiling need the device over TVM RPC: set backend_settings.rpc_host "
                    "('tracker-host:port' with rpc_key, or an RPC server's host:port)")
        if can_build and settings.cc and shutil.which(settings.cc) is None:
            why = f"cross compiler '{settings.cc}' (backend_settings.cc) not found on PATH"
            reasons["build"] = why + ("" if settings.rpc else f"; then {rpc_note}")
            can_build = False
        if can_run and settings.is_cross and settings.rpc is None:
            reasons["run"] = reasons["profile"] = rpc_note
            reasons.setdefault("build", f"builds here; {rpc_note}")
            can_run = False
        # relax.quantize/dequantize take uint8/int8 with any zero point, per tensor or per channel;
        # integer ops accumulate in int32 (no saturation), so no reduced range or uint8 GEMM weights;
        # no com.microsoft ops (MatMulNBits): INT4 becomes block-wise DQ, which lower() refuses by name
        qdq = QDQStyle(gemm_weight_dtype="int8", reduce_range_conv=False, allow_contrib_ops=False)
        return Capabilities(backend=self.name, precisions=("fp32", "fp16", "int8", "int8dyn"),
                            sparsity=("2:4", "N:M", "unstructured", "channels"), qdq=qdq, can_build=can_build,
                            can_run=can_run, can_profile=can_run,
                            per_layer_profile=settings.rpc is None, reasons=reasons)

    def versions(self) -> dict[str, str]:
        try:
            tvm = import_tvm()
        except BackendUnavailable:
            return {"tvm": "unavailable"}
        llvm = tvm.target.codegen.llvm_version_major() if hasattr(tvm.target, "codegen") else "?"
        return {"tvm": str(tvm.__version__), "llvm": str(llvm), "tvm_kernels": kernels.identity()}

    def lower(self, graph: Graph, plan: PrecisionPlan, target: Target, out_dir: Path) -> Artifact:
        import_tvm()
        settings = TVMSettings.from_target(target)
        out_dir.mkdir(parents=True, exist_ok=True)
        proto = to_proto(graph)
        check_importable(proto)
        shapes = {k: list(v) for k, v in plan.input_shapes.items()}
        if settings.tune_trials > 0:  # MetaSchedule tunes static shapes: a dynamic batch becomes 1
            shapes = batch_one(proto, shapes)
        log = out_dir / LOG_NAME
        with to_log(log):
            proto, folded = fold_shapes(proto, shapes)
            mod = to_relax(proto, shapes, static=settings.tune_trials > 0)
            db_dir = tuning_dir(target, self.versions())
            save(proto, out_dir / _ONNX)
            tune = lambda: tune_in_child(out_dir / _ONNX, shapes, settings, db_dir, log)  # noqa: E731
            executable, tuning = compile_relax(mod, settings, db_dir, tune)
            export(executable, settings, out_dir / _LIBRARY)
        inits = {t.name for t in proto.graph.initializer}
        info = {
            "target": json.loads(str(tvm_target(settings))), "cross": settings.is_cross, "cc": settings.cc,
            "inputs": [i.name for i in proto.graph.input if i.name not in inits],
            "input_shapes": shapes, "shape_nodes_folded": len(folded), "tuning": tuning, "heads": _heads(proto),
            "versions": self.versions(), "kernels_used": _kernels_used(tuning.get("kernels", {})),
        }
        write_text_atomic(out_dir / _INFO, json.dumps(info, indent=2) + "\n")
        return Artifact(directory=out_dir, backend=self.name, target=target.name,
                        files={"engine": _LIBRARY, "model": _ONNX, "info": _INFO, "log": LOG_NAME}, info=info)

    def load(self, artifact: Artifact, target: Target) -> Runner:
        info = _info(artifact)
        session = open_session(artifact.path("engine"), TVMSettings.from_target(target))
        names = info["inputs"]
        static = {n: s[0] for n, s in (info.get("input_shapes") or {}).items() if s}
        return lambda feeds: session.run(feeds, names, static_batch=static)

    def profile(self, artifact: Artifact, target: Target, feeds: Feeds, *, repeats: int = 50,
                warmup: int = 10, per_layer: bool = True) -> Profile:
        info = _info(artifact)
        settings = TVMSettings.from_target(target)
        session = open_session(artifact.path("engine"), settings)
        names = info["inputs"]
        timing = time_vm(session, feeds, names, repeats=repeats, warmup=warmup, threads=default_threads(settings))
        prof = Profile(timing=timing, info={"device": session.where, "timer": "tvm time_evaluator (number=1)"})
        if not per_layer:
            return prof
        if session.remote is not None:
            prof.info["per_layer"] = ("not measured: the VM instrument is a Python callback and cannot run on "
                                      "an RPC device; layers_ms is empty")
            return prof
        layers, unmapped, kernels, how = layer_times(session, feeds, names, info["heads"], max(5, repeats // 5))
        prof.layers_ms, prof.unmapped_ms = layers, unmapped
        prof.info.update(kernels=kernels, per_layer=how)
        return prof



def _heads(proto) -> list[list[str]]:
    """[[kernel class, layer id], ...] for head ops in graph order (the ids our passes' Q/DQ serve)."""
    out = []
    for node in proto.graph.node:
        cls = next((c for c, ops in HEAD_OPS.items() if node.op_type in ops), None)
        if cls is not None:
            props = {p.key: p.value for p in node.metadata_props}
            out.append([cls, props.get(SERVES, node.name)])
    return out


def _kernels_used(report: dict) -> list[str]:
    """Names of the table's kernels that at least one layer of this build runs."""
    return sorted({r["kernel"] for r in report.values() if isinstance(r, dict) and r.get("used")})


def _info(artifact: Artifact) -> dict:
    return artifact.info if "heads" in artifact.info else json.loads(artifact.path("info").read_text())

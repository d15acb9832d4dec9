"""Lowering to TVM: ONNX -> Relax -> (optional MetaSchedule tuning) -> LLVM -> shared library.

Steps: ``relax.frontend.onnx.from_onnx`` with the weights as constants (``keep_params_in_input=
False``), the kernel table's integer kernels (``kernels/``), ``DecomposeOpsForInference``, the ``zero`` pipeline (legalize every op to TIR, fold
constants, fuse elementwise tails into their producer: Conv+Add+Relu is one kernel), optional
tuning, then ``tvm.compile`` for the target dict and ``export_library`` (with the target's cross
compiler when it has one). Dynamic input dimensions stay symbolic (Relax compiles shape-generic
kernels), so one library serves every batch size; tuning needs static shapes.

Tuning (``tune_trials > 0``) runs MetaSchedule on the fused kernels and commits every measured
record to a JSON database under ``<hwcompile cache root>/tvm/<fingerprint>/`` as it goes, so an
interrupted or finished run is never lost and later builds (any model, same device and tools)
reuse it: the database is applied whenever it exists, with or without new trials.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx

from ...errors import BackendUnavailable, ConfigError, UnsupportedError
from ...targets import Target

__all__ = ["TVMSettings", "import_tvm", "tvm_target", "check_importable", "batch_one", "to_relax", "prepare_relax",
           "compile_relax", "count_records", "database", "tuning_runner", "export", "tuning_dir", "HEAD_OPS"]

#: ONNX ops whose kernels carry a layer's time: kernel-name fragment class -> ONNX op types.
HEAD_OPS = {"conv_transpose": ("ConvTranspose",), "conv": ("Conv", "ConvInteger"),
            "matmul": ("Gemm", "MatMul", "MatMulInteger")}

_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "x64": "x86_64"}


@dataclass(frozen=True)
class TVMSettings:
    """``[backend_settings]`` of a TVM target, checked field by field."""

    target: dict[str, Any] = field(default_factory=lambda: {"kind": "llvm"})
    cc: str | None = None                 # cross compiler linking model.so, e.g. aarch64-linux-gnu-g++
    tune_trials: int = 0                  # MetaSchedule measurements in total; 0: no tuning
    tune_trials_per_task: int | None = None
    tune_timeout_s: int = 120             # per candidate build and per measurement (MetaSchedule's default 30 s
                                          # times out on a loaded 2-core machine: every candidate failed)
    rpc_host: str | None = None           # "host:port" of an RPC tracker (with rpc_key) or an RPC server
    rpc_key: str | None = None            # device key registered at the tracker
    rpc_timeout_s: int = 120
    int8_kernels: bool = True             # layers matching a kernel-table pattern run its kernel (see kernels/)

    @classmethod
    def from_target(cls, target: Target) -> "TVMSettings":
        s = dict(target.settings)
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(s) - known)
        if extra:
            raise ConfigError(f"unknown TVM settings {extra}", where=f"{target.path or target.name} backend_settings",
                              hint=f"allowed: {sorted(known)}")
        if not isinstance(s.get("target", {"kind": "llvm"}), dict):
            raise ConfigError("must be a table such as {kind = \"llvm\", mcpu = \"host\"}",
                              where=f"{target.name} backend_settings.target")
        for key in ("tune_trials", "tune_trials_per_task", "tune_timeout_s", "rpc_timeout_s"):
            if key in s and s[key] is not None and (not isinstance(s[key], int) or s[key] < 0):
                raise ConfigError(f"must be a non-negative integer, got {s[key]!r}",
                                  where=f"{target.name} backend_settings.{key}")
        if not isinstance(s.get("int8_kernels", True), bool):
            raise ConfigError(f"must be true or false, got {s['int8_kernels']!r}", where=f"{target.name} backend_settings.int8_kernels")
        if s.get("rpc_host") is not None and ":" not in str(s["rpc_host"]):
            raise ConfigError(f"must be 'host:port', got {s['rpc_host']!r}", where=f"{target.name} backend_settings.rpc_host")
        return cls(**s)

    @property
    def triple_arch(self) -> str | None:
        triple = self.target.get("mtriple")
        return _ARCH_ALIASES.get(triple.split("-")[0], triple.split("-")[0]) if triple else None

    @property
    def is_cross(self) -> bool:
        """True when the library runs on another machine than this one (a cross compiler or a foreign triple)."""
        host = _ARCH_ALIASES.get(platform.machine().lower(), platform.machine().lower())
        return self.cc is not None or (self.triple_arch is not None and self.triple_arch != host)

    @property
    def rpc(self) -> tuple[str, int] | None:
        if not self.rpc_host:
            return None
        host, port = self.rpc_host.rsplit(":", 1)
        return host, int(port)


def import_tvm():
    """The ``tvm`` module, or BackendUnavailable carrying the real ImportError text."""
    try:
        import tvm
        from tvm import relax  # noqa: F401  (the Relax frontend/VM must import too)
    except Exception as e:  # ImportError, or a broken libtvm raising OSError/RuntimeError
        raise BackendUnavailable(f"apache-tvm is not importable: {type(e).__name__}: {e}", where="tvm",
                                 hint="pip install 'hwcompile[tvm]' (apache-tvm>=0.27)") from None
    return tvm


def tvm_target(settings: TVMSettings, *, for_tuning: bool = False):
    """``tvm.target.Target`` from the settings dict; ``mcpu = "host"`` means this machine's CPU."""
    tvm = import_tvm()
    spec = dict(settings.target)
    spec.setdefault("kind", "llvm")
    if spec.get("mcpu") == "host":
        if settings.is_cross:
            raise ConfigError("mcpu = 'host' names this machine's CPU, not the device's", where="backend_settings.target.mcpu",
                              hint="name the device CPU, e.g. mcpu = 'cortex-a76'")
        spec["mcpu"] = tvm.target.codegen.llvm_get_system_cpu()
    if for_tuning and "num-cores" not in spec:
        if settings.is_cross:
            raise ConfigError("tuning a remote device needs its core count", where="backend_settings.target",
                              hint="add \"num-cores\" = N to the target table")
        spec["num-cores"] = os.cpu_count() or 1
    try:
        return tvm.target.Target(spec)
    except Exception as e:
        raise ConfigError(f"TVM rejects the target {spec}: {e}", where="backend_settings.target") from None


def check_importable(proto: onnx.ModelProto) -> None:
    """UnsupportedError naming the first node the Relax ONNX frontend cannot convert.

    The frontend converts per-tensor and per-axis QuantizeLinear/DequantizeLinear (to
    ``relax.quantize``/``dequantize``), but not block-wise ones (``block_size``) nor any
    ``com.microsoft`` op, and it ignores domains, so both are checked here by name.
    """
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = _get_convert_map()
    for node in proto.graph.node:
        where = f"node '{node.name}' ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedError(f"TVM's ONNX frontend has no {node.domain} ops", where=where,
                                   hint="this target's QDQStyle disables contrib ops; was the graph quantized for another backend?")
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            block = next((a.i for a in node.attribute if a.name == "block_size"), 0)
            if block:
                raise UnsupportedError(f"block-wise Q/DQ (block_size={block}) is not supported by TVM's ONNX frontend",
                                       where=where, hint="use int8 (per-channel) or fp16 for this layer on TVM targets")
        elif node.op_type not in known and node.op_type not in ("Constant", "If"):
            raise UnsupportedError("op not supported by TVM's Relax ONNX frontend", where=where)


def batch_one(proto: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """``input_shapes`` plus batch 1 for every input whose only dynamic dimension is the first."""
    shapes = dict(input_shapes)
    inits = {t.name for t in proto.graph.initializer}
    for vi in proto.graph.input:
        tt = vi.type.tensor_type
        if vi.name in inits or vi.name in shapes or not tt.HasField("shape") or not tt.shape.dim:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if dims[0] is None and all(d is not None for d in dims[1:]):
            shapes[vi.name] = [1, *dims[1:]]
    return shapes


def to_relax(proto: onnx.ModelProto, input_shapes: dict[str, list[int]], *, static: bool):
    """Relax IRModule of ``proto`` with the weights as constants.

    ``input_shapes`` fixes dimensions; other dynamic dimensions stay symbolic unless ``static``,
    when they are a ConfigError naming the input.
    """
    from tvm.relax.frontend.onnx import from_onnx

    init_names = {t.name for t in proto.graph.initializer}
    shapes, dtypes = {}, {}
    for vi in proto.graph.input:
        if vi.name in init_names:
            continue
        tt = vi.type.tensor_type
        dtypes[vi.name] = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        if vi.name in input_shapes:
            shapes[vi.name] = [int(d) for d in input_shapes[vi.name]]
            continue
        if not tt.HasField("shape"):
            raise ConfigError(f"input '{vi.name}' has unknown rank", where="--shape",
                              hint=f"give its shape, e.g. --shape {vi.name}=1,3,224,224")
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        if static and any(isinstance(d, str) for d in dims):
            raise ConfigError(f"input '{vi.name}' has dynamic dimensions {dims}; MetaSchedule tunes static shapes",
                              where="--shape", hint=f"give a concrete shape, e.g. --shape {vi.name}="
                              + ",".join(str(d) if isinstance(d, int) else "1" for d in dims))
    try:  # inputs not in ``shapes`` keep the graph's shape (dim_param names become symbolic dims)
        return from_onnx(proto, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False)
    except Exception as e:
        node = _failing_node(e)
        what = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
    # raised outside the handler, so the frontend's frames (its BlockBuilder) are freed now, while TVM's
    # output still goes to the log, instead of living on in the error's __context__
    gc.collect()
    where = f"node '{node.name}' ({node.op_type})" if node is not None else "relax.frontend.onnx"
    dynamic = [vi.name for vi in proto.graph.input if vi.name not in init_names and vi.name not in shapes
               and any(not d.HasField("dim_value") or d.dim_value < 0 for d in vi.type.tensor_type.shape.dim)]
    hint = (f"TVM's frontend handles fewer ops on symbolic shapes; give static shapes with --shape "
            f"({', '.join(dynamic)})" if dynamic else "this op or its attributes are not supported by TVM 0.27's frontend")
    raise UnsupportedError(f"TVM's ONNX frontend cannot convert it: {what}", where=where, hint=hint)


def _failing_node(error: Exception):
    """The ONNX node the Relax frontend was converting when ``error`` was raised (its loop's ``node``), or None."""
    tb, node = error.__traceback__, None
    while tb is not None:
        local = tb.tb_frame.f_locals
        if "onnx_frontend" in tb.tb_frame.f_code.co_filename and isinstance(local.get("node"), onnx.NodeProto):
            node = local["node"]
        tb = tb.tb_next
    return node


def tuning_dir(target: Target, versions: dict[str, str]) -> Path:
    """Where this device's tuning database lives; the trial budget is not part of the key."""
    settings = {k: v for k, v in target.settings.items() if not k.startswith("tune_") and not k.startswith("rpc_")}
    fp = dataclasses.replace(target, settings=settings).fingerprint(versions)
    from ...cache import kind_dir

    return kind_dir("tvm") / fp


def prepare_relax(mod, target, *, int8_kernels: bool = False, report: dict | None = None):
    """The kernel table's kernels (``kernels/``, when asked, for the patterns and CPU features they
    serve), then decompose inference ops, canonicalize, and run the ``zero`` pipeline (legalize, fold,
    fuse). ``report`` receives, per pattern, which layers use which kernel. Off by default: MetaSchedule
    cannot take the hand-scheduled kernels as tasks (serializing them fails), so the tuning child
    prepares the stock module."""
    from tvm import relax

    from . import kernels

    if int8_kernels:
        mod, used = kernels.apply(mod, target)
        if report is not None:
            report.update(used)
    with target:
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.CanonicalizeBindings()(mod)
        return relax.get_pipeline("zero")(mod)


def compile_relax(mod, settings: TVMSettings, db_dir: Path, tune: Callable[[], dict] | None = None
                  ) -> tuple[Any, dict[str, Any]]:
    """(executable, tuning info): the zero pipeline, ``tune()`` when trials are asked, then ``tvm.compile``.

    ``tune`` runs MetaSchedule (in a child process: see ``tune.py``) and fills ``db_dir``; whatever
    the database holds, from this run or earlier ones, is applied.
    """
    tvm = import_tvm()
    from tvm import relax

    trials = settings.tune_trials
    target = tvm_target(settings, for_tuning=trials > 0)
    kernels: dict[str, Any] = {} if settings.int8_kernels else {"skipped": "backend_settings.int8_kernels = false"}
    mod = prepare_relax(mod, target, int8_kernels=settings.int8_kernels, report=kernels)
    info: dict[str, Any] = {"trials": trials, "database": str(db_dir), "kernels": kernels}
    if trials > 0 and tune is not None:
        info.update(tune())
    info["records"] = count_records(db_dir)
    if info["records"]:
        with target, database(db_dir):
            mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    info["applied"] = bool(info["records"])
    return tvm.compile(mod, target=target), info


def count_records(db_dir: Path) -> int:
    records = db_dir / "database_tuning_record.json"
    return sum(1 for line in records.open() if line.strip()) if records.is_file() else 0


def database(db_dir: Path):
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(work_dir=str(db_dir), module_equality="structural")


def tuning_runner(settings: TVMSettings):
    """MetaSchedule measures on this CPU, or on the device through the RPC tracker."""
    from tvm.s_tir import meta_schedule as ms

    if not settings.is_cross:
        return ms.runner.LocalRunner(timeout_sec=settings.tune_timeout_s)
    if settings.rpc is None or not settings.rpc_key:
        raise ConfigError("tuning a cross target measures on the device through an RPC tracker",
                          where="backend_settings.rpc_host/rpc_key", hint="set both, or tune_trials = 0")
    host, port = settings.rpc
    return ms.runner.RPCRunner(ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=settings.rpc_key,
                                                   session_timeout_sec=settings.rpc_timeout_s),
                                 timeout_sec=settings.tune_timeout_s)


def export(executable, settings: TVMSettings, path: Path) -> None:
    """``export_library`` to ``path`` (atomically), linked by the cross compiler when there is one."""
    kwargs = {}
    if settings.cc:
        cc = shutil.which(settings.cc)
        if cc is None:
            raise BackendUnavailable(f"cross compiler '{settings.cc}' not found on PATH", where="backend_settings.cc",
                                     hint=f"install it (e.g. apt-get install g++-{settings.triple_arch or 'aarch64'}-linux-gnu)")
        from tvm.support import cc as tvm_cc

        kwargs["fcompile"] = tvm_cc.cross_compiler(cc)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        executable.export_library(str(tmp), **kwargs)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()

"""The TensorRT-ready ONNX on the CPU: a fake-quant runner, its profile, and golden input/output.

Where no engine exists the model runs in onnxruntime with every graph optimization off, so it
runs exactly as written: Q/DQ stay float fake-quantization (the arithmetic TensorRT's INT8
kernels implement) instead of onnxruntime's x86 s8*s8 kernels, which saturate on CPUs without
VNNI, and float biases stay float. (Even onnxruntime's *basic* level rewrites a float bias after
DQ -> Conv into int32 with scale s_x * s_w; with a near-zero weight scale that saturates int32.)
Golden inputs and outputs are saved beside the model so an engine can be compared on the device.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...contract import Feeds, Profile, Runner
from ..onnxruntime import profile_model, session_options

__all__ = ["FAKE_QUANT_SESSION", "fake_quant_session_options", "cpu_runner", "cpu_profile", "write_golden"]

#: onnxruntime session settings under which the model runs as written (see the module docstring).
FAKE_QUANT_SESSION = {"execution_provider": "CPUExecutionProvider", "graph_optimization_level": "disable",
                      "intra_op_num_threads": 0, "allow_spinning": False}


def fake_quant_session_options():
    return session_options(FAKE_QUANT_SESSION)


def cpu_runner(model_path: Path) -> Runner:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), fake_quant_session_options(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return lambda feeds: sess.run(None, {k: feeds[k] for k in names})


def cpu_profile(model_path: Path, feeds: Feeds, *, repeats: int, warmup: int, per_layer: bool, why: str) -> Profile:
    """onnxruntime CPU times of the fake-quant model, labelled as such (``why``: no engine)."""
    prof = profile_model(model_path, FAKE_QUANT_SESSION, feeds, repeats=repeats, warmup=warmup, per_layer=per_layer)
    prof.info["device"] = f"cpu-emulation: no TensorRT engine was built ({why}); these are onnxruntime CPU times"
    return prof


def write_golden(proto, path: Path) -> None:
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

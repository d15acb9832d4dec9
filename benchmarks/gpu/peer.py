"""The peer: the same FP32 models quantized by onnxruntime's ``quantize_static`` and built by Polygraphy.

INT8: ``onnxruntime.quantization.quantize_static`` in QDQ format with what TensorRT needs
(symmetric INT8 activations and weights, weights per channel, float biases, entropy calibration on
the same calibration data hwcompile uses), after onnxruntime's ``quant_pre_process`` (shape
inference and ONNX clean-up). FP16: ``onnxruntime.transformers.float16.convert_float_to_float16``
with float32 inputs and outputs. Both are built into engines by ``polygraphy convert`` (NVIDIA's
tool, on top of the same TensorRT), strongly typed like hwcompile's builds, so only the exporters differ.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import onnx

from hwcompile.data import Dataset

__all__ = ["export_int8", "export_fp16", "polygraphy_build"]


def export_int8(src: Path, calib: Dataset, out: Path, *, samples: int = 100) -> dict:
    """Write the onnxruntime Q/DQ INT8 export of ``src`` to ``out``; returns what was done and how long it took."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = calib.batches(1, limit=samples)

        def get_next(self):
            return next(self.it, None)

    t0 = time.perf_counter()
    pre = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.Entropy,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    pre.unlink(missing_ok=True)
    return {"exporter": "onnxruntime.quantization.quantize_static (QDQ, symmetric int8, per-channel, entropy, "
                        "float bias)", "calibration_samples": min(samples, len(calib)),
            "seconds": time.perf_counter() - t0, "path": str(out)}


def export_fp16(src: Path, out: Path) -> dict:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    t0 = time.perf_counter()
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(out))
    return {"exporter": "onnxruntime.transformers.float16.convert_float_to_float16 (keep_io_types)",
            "seconds": time.perf_counter() - t0, "path": str(out)}


def polygraphy_build(onnx_path: Path, plan_path: Path, *, timeout_s: int = 240, max_batch: int = 8) -> dict:
    """``polygraphy convert`` the model to an engine (strongly typed); seconds and the command's tail."""
    exe = shutil.which("polygraphy")
    cmd = [exe] if exe else [sys.executable, "-m", "polygraphy"]
    cmd += ["convert", str(onnx_path), "--convert-to", "trt", "-o", str(plan_path), "--strongly-typed"]
    dyn = [i for i in onnx.load(str(onnx_path), load_external_data=False).graph.input
           if i.type.tensor_type.shape.dim and not i.type.tensor_type.shape.dim[0].dim_value]
    if dyn:  # one optimization profile, as hwcompile's default: batch (1, 1, max_batch); each flag once
        rest = {i.name: ",".join(str(d.dim_value) for d in i.type.tensor_type.shape.dim[1:]) for i in dyn}
        for flag, batch in (("--trt-min-shapes", 1), ("--trt-opt-shapes", 1), ("--trt-max-shapes", max_batch)):
            cmd += [flag, *(f"{n}:[{batch},{r}]" for n, r in rest.items())]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    out = {"command": " ".join(cmd), "seconds": time.perf_counter() - t0, "exit_code": r.returncode,
           "log_tail": (r.stdout + r.stderr)[-1500:]}
    if r.returncode != 0 or not plan_path.is_file():
        raise RuntimeError(f"polygraphy convert failed ({r.returncode}): {(r.stdout + r.stderr)[-600:]}")
    return out

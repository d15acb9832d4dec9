"""The shipped default model: its recorded FP32 accuracy is reproducible with onnxruntime, it
keeps BatchNormalization and a residual Add, and its calibration and evaluation sets are
disjoint real digits."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from hwcompile.errors import ModelLoadError
from hwcompile.models import DefaultModel, default_model


@pytest.fixture(scope="module")
def dm() -> DefaultModel:
    return default_model()


def _load(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_description_matches_json(dm):
    meta = json.loads((dm.model.parent / "default.json").read_text())
    assert dm.model.name == meta["model"] and dm.calib.name == meta["calib"] and dm.eval.name == meta["eval"]
    assert dm.labels == "label" and dm.metric == "top1"
    assert dm.fp32_score == meta["fp32_top1"]
    assert meta["trained_by"] == "tools/train_default_model.py"
    total = sum(p.stat().st_size for p in (dm.model, dm.calib, dm.eval))
    assert total < 1_000_000


def test_holdout_top1_matches_recorded(dm):
    ev = _load(dm.eval)
    x, y = ev["input"], ev[dm.labels]
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1] == 1
    assert y.dtype == np.int64 and y.shape == (len(x),) and len(x) >= 400
    assert set(np.unique(y)) == set(range(10))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(dm.model), so, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    # batch of 7 then the rest: the batch dim is dynamic, and results do not depend on batching
    logits = np.concatenate([sess.run(["logits"], {"input": x[:7]})[0], sess.run(["logits"], {"input": x[7:]})[0]])
    assert logits.shape == (len(x), 10)
    top1 = float(np.mean(np.argmax(logits, axis=1) == y))
    assert abs(top1 - dm.fp32_score) <= 1e-9
    assert top1 >= 0.95


def test_graph_keeps_batchnorm_and_residual_add(dm):
    m = onnx.load(str(dm.model))
    onnx.checker.check_model(m)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("BatchNormalization") >= 3
    assert "Add" in ops and "Gemm" in ops and ops.count("Conv") >= 4
    assert {o.domain or "": o.version for o in m.opset_import}[""] == 17
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    for n in m.graph.node:
        if n.op_type == "BatchNormalization":
            mode = [a.i for a in n.attribute if a.name == "training_mode"]
            assert mode in ([], [0]), n.name


def test_calib_and_holdout_disjoint(dm):
    calib = _load(dm.calib)["input"]
    hold = _load(dm.eval)["input"]
    assert calib.dtype == np.float32 and calib.shape[1:] == hold.shape[1:] and 100 <= len(calib) <= 400
    assert set(_load(dm.calib)) == {"input"}
    rows = lambda a: {r.tobytes() for r in a.reshape(len(a), -1)}
    rc, rh = rows(calib), rows(hold)
    assert len(rc) == len(calib) and len(rh) == len(hold)  # no duplicates within a set either
    assert not (rc & rh)
    # real images: pixel values are the dataset's 17 grey levels scaled by 1/16
    assert np.all(np.isin(np.round(calib * 16), np.arange(17))) and calib.max() == 1.0


def test_missing_description_is_a_model_load_error(monkeypatch, tmp_path):
    import hwcompile.models as models

    monkeypatch.setattr(models, "_package_dir", lambda: tmp_path)
    with pytest.raises(ModelLoadError, match="default.json"):
        default_model()
    (tmp_path / "default.json").write_text(json.dumps({"model": "m.onnx", "calib": "c.npz", "eval": "e.npz",
                                                        "labels": "label", "metric": "top1", "fp32_top1": 0.5}))
    with pytest.raises(ModelLoadError, match="m.onnx"):
        default_model()

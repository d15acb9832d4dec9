"""Shared fixtures: real models shipped inside pip packages, small hand-built models, and an
onnxruntime reference to compare outputs against."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def zoo_models() -> list[Path]:
    d = package_dir("onnx")
    return sorted((d / "backend" / "test" / "data" / "light").glob("*.onnx")) if d else []


def rapidocr_models() -> list[Path]:
    d = package_dir("rapidocr_onnxruntime")
    return sorted((d / "models").glob("*.onnx")) if d else []


def session(model) -> ort.InferenceSession:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def random_feeds(sess: ort.InferenceSession, seed: int = 0, dims: dict | None = None) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else (dims or {}).get(d, 1) for d in i.shape]
        dt = types[i.type]
        feeds[i.name] = (rng.standard_normal(shape) if dt == np.float32 else rng.integers(0, 10, shape)).astype(dt)
    return feeds


def assert_close(ref: list, out: list, rel: float = 1e-4) -> None:
    """max |ref - out| <= rel * max |ref| for every output."""
    assert len(ref) == len(out)
    for r, o in zip(ref, out):
        assert r.shape == o.shape
        scale = max(float(np.max(np.abs(r))), 1e-12)
        assert float(np.max(np.abs(r.astype(np.float64) - o.astype(np.float64)))) <= rel * scale


def conv_bn_model(shared_weight: bool = False, extra_use: bool = False, opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """x -> Conv -> BN -> Relu -> Conv(+bias) -> BN -> y  (variations for the decline cases)."""
    rng = np.random.default_rng(seed)
    init = lambda name, shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
    pos = lambda name, shape: numpy_helper.from_array(rng.uniform(0.5, 2.0, shape).astype(np.float32), name)
    inits = [init("w1", (8, 3, 3, 3)), init("w2", (4, 8, 1, 1)), init("b2", (4,))]
    for i, c in ((1, 8), (2, 4)):
        inits += [pos(f"g{i}", (c,)), init(f"be{i}", (c,)), init(f"m{i}", (c,)), pos(f"v{i}", (c,))]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g1", "be1", "m1", "v1"], ["n1"], name="bn1", epsilon=1e-3),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("BatchNormalization", ["c2", "g2", "be2", "m2", "v2"], ["y"], name="bn2"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])]
    if shared_weight:
        nodes.append(helper.make_node("Conv", ["r1", "w2"], ["z"], name="conv_shared"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8, 8]))
    if extra_use:
        outputs.append(helper.make_tensor_value_info("c1", TensorProto.FLOAT, [1, 8, 8, 8]))
    graph = helper.make_graph(nodes, "convbn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Every test (and every CLI it starts) uses a fresh cache root, never the user's."""
    import os

    old = os.environ.get("HWCOMPILE_CACHE_DIR")
    os.environ["HWCOMPILE_CACHE_DIR"] = str(tmp_path_factory.mktemp("hwcompile-cache"))
    yield
    if old is None:
        os.environ.pop("HWCOMPILE_CACHE_DIR", None)
    else:
        os.environ["HWCOMPILE_CACHE_DIR"] = old

"""The TensorRT backend's engine profile feeding the planner, on the CPU through a deterministic engine double.

``FakeEngines`` stands in for ``TensorRTEngines`` (the backend's GPU service). Its "engine" is the
inspector JSON a real build would give: each layer fused with the Q/DQ and casts a pass inserted
for it (``hwcompile.serves``) and the Relu after it, typed by what the ONNX says (INT8 where the
layer's inputs are dequantized, FP16 where casts feed it). Its profile reports a fixed time per
engine layer by type, so the tests assert exactly which numbers reach the latency table and the
search, independent of this machine.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from hwcompile.backends.tensorrt import TensorRTBackend
from hwcompile.backends.tensorrt.build import EngineBuildResult
from hwcompile.backends.tensorrt.cpu import cpu_runner
from hwcompile.backends.tensorrt.inspector import summarize_layers
from hwcompile.data import Dataset
from hwcompile.ir import SERVES, from_proto
from hwcompile.pipeline import CompileOptions, build
from hwcompile.plan import PrecisionPlan
from hwcompile.search.candidates import Candidate
from hwcompile.search.driver import SearchOptions, plan_mixed
from hwcompile.search.latency import measure_latency
from hwcompile.targets import load_target
from test_sensitivity import fragile_model

TARGET = load_target("nvidia-ampere")
LAYERS = ["conv_a", "conv_b", "conv_c"]
LAYER_MS = {"fp32": 1.0, "fp16": 0.5, "int8": 0.2}   # per fused conv layer
OTHER_MS = 0.0                                        # any engine layer holding no conv (Q/DQ of the input, casts)
LAUNCH_MS = 0.1                                       # end to end = sum of engine layers + this


class FakeEngines:
    """A deterministic engine service (see the module docstring)."""

    def __init__(self):
        self.builds = 0

    def status(self):
        return True, "fake engine service (test double)"

    def build(self, onnx_path, plan_path, settings, sparse) -> EngineBuildResult:
        model = onnx.load(str(onnx_path))
        groups: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            served = next((p.value for p in n.metadata_props if p.key == SERVES), None)
            key = served or n.name
            if n.op_type == "Relu" and n.input[0] in {o for g in groups.values() for m in g for o in m.output
                                                      if m.op_type == "Conv"}:
                key = next(k for k, g in groups.items() if any(n.input[0] in m.output for m in g))
            groups.setdefault(key, []).append(n)
        layers = []
        for key, nodes in groups.items():
            ops = {n.op_type for n in nodes}
            kind = ("int8" if "DequantizeLinear" in ops else "fp16" if "Cast" in ops else "fp32") \
                if "Conv" in ops else "fp32"
            fmt = {"int8": "Int8", "fp16": "Half", "fp32": "Float"}[kind]
            layers.append({"Name": f"fused {key}", "LayerType": "Conv" if "Conv" in ops else "Other",
                           "Inputs": [{"Format/Datatype": f"Row major linear {fmt}"}], "TacticName": "fake",
                           "Metadata": "\x1f".join(f"[ONNX Layer: {n.name}]" for n in nodes)})
        info = json.dumps({"Layers": layers})
        Path(plan_path).write_text(info)
        self.builds += 1
        return EngineBuildResult(plan_path=Path(plan_path), layers=summarize_layers(info), build_seconds=0.0,
                                 tensorrt_version="fake", timing_cache="off", gpu="8.6")

    def load(self, plan_path):
        return cpu_runner(Path(plan_path).with_name("model.onnx"))

    def profile(self, plan_path, feeds, repeats, warmup, per_layer):
        layers = summarize_layers(Path(plan_path).read_text())
        ms = {lay["name"]: (LAYER_MS[lay["precision"]] if lay["type"] == "Conv" else OTHER_MS) for lay in layers}
        e2e = sum(ms.values()) + LAUNCH_MS
        return {"latency_ms": e2e, "latency_ms_spread": 0.0, "p10_ms": e2e, "p90_ms": e2e, "with_copies_ms": e2e,
                "layers_ms": ms if per_layer else {}, "layer_nodes": {lay["name"]: lay["onnx_nodes"] for lay in layers},
                "timer": "fake"}


X = np.random.default_rng(1).standard_normal((64, 3, 8, 8)).astype(np.float32)
FEEDS = {"x": X[:1]}


def _calib() -> Dataset:
    return Dataset({"x": X}, source="r")


def test_engine_profile_reaches_layer_ids(tmp_path):
    """Engine-layer times are charged to the layer ids of the ONNX nodes fused into them; the rest is unmapped."""
    graph, calib = from_proto(fragile_model()), _calib()
    backend = TensorRTBackend(FakeEngines())
    plan = PrecisionPlan.uniform("int8")
    _, art = build(graph, plan, TARGET, backend, tmp_path / "int8", calib)
    info = json.loads((tmp_path / "int8" / "tensorrt.json").read_text())
    assert info["engine_built"] is True and "engine" in art.files
    assert info["engine_summary"]["by_precision"]["int8"] == 3
    prof = backend.profile(art, TARGET, FEEDS, repeats=3, warmup=0)
    assert prof.info["device"] == "gpu"
    assert prof.layers_ms == pytest.approx({lid: LAYER_MS["int8"] for lid in LAYERS})
    assert set(prof.unmapped_ms) == set(prof.info["engine_layers_ms"]) - {f"fused {lid}" for lid in LAYERS}
    assert prof.timing.latency_ms == pytest.approx(sum(prof.info["engine_layers_ms"].values()) + LAUNCH_MS)
    assert backend.load(art, TARGET)(FEEDS)[0].shape == (1, 4, 8, 8)


def test_latency_table_comes_from_the_engine_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("HWCOMPILE_CACHE_DIR", str(tmp_path / "cache"))
    graph, calib = from_proto(fragile_model()), _calib()
    engines = FakeEngines()
    cands = [Candidate("fp32"), Candidate("fp16"), Candidate("int8")]
    table = measure_latency(graph, TARGET, TensorRTBackend(engines), cands, FEEDS, tmp_path,
                            calib=calib, repeats=2, warmup=0, use_cache=False)
    assert engines.builds == 3 and not table.failed
    for c in ("fp32", "fp16", "int8"):
        assert table.layers[c] == pytest.approx({lid: LAYER_MS[c] for lid in LAYERS}), c
        assert table.end_to_end[c] == pytest.approx(3 * LAYER_MS[c] + table.remainder[c])
        assert table.remainder[c] >= LAUNCH_MS - 1e-9   # launch + engine layers holding no conv


def test_mixed_search_plans_from_the_engine_profile(tmp_path, monkeypatch):
    """The whole search against nvidia-ampere with the double: uniform points, predictions and the chosen
    plan all priced by the engine's per-layer profile; conv_b (fragile under INT8) is never INT8."""
    monkeypatch.setenv("HWCOMPILE_CACHE_DIR", str(tmp_path / "cache"))
    graph = from_proto(fragile_model())
    base = dataclasses.replace(PrecisionPlan.uniform("fp32"), target=TARGET.name)
    options = CompileOptions(precision="mixed", repeats=1, warmup=0)
    plan, info = plan_mixed(graph, base, TARGET, TensorRTBackend(FakeEngines()), _calib(), None, options, None,
                            None, tmp_path, lambda s: None,
                            SearchOptions(use_cache=False, boundary_probe=False, candidates=("fp32", "fp16", "int8")))
    uni = {u["name"]: u for u in info["uniform"]}
    assert set(uni) == {"fp32", "fp16", "int8"}
    fixed = LAUNCH_MS
    for c in ("fp32", "fp16", "int8"):   # end to end as the engine double reports it
        assert uni[c]["latency_ms"] == pytest.approx(3 * LAYER_MS[c] + fixed)
    # INT8 on conv_a / conv_c keeps SNR ~36 dB (default floor 30); conv_b under INT8 is at ~3 dB
    assert {lid: plan.choice(lid).candidate for lid in LAYERS} == {"conv_a": "int8", "conv_b": "fp16",
                                                                   "conv_c": "int8"}
    measured = info["feedback"][-1]
    expected = sum(LAYER_MS[c] for c in measured["plan_summary"] for _ in range(measured["plan_summary"][c])) + fixed
    assert measured["measured_latency_ms"] == pytest.approx(expected)
    assert measured["predicted_latency_ms"] == pytest.approx(expected)

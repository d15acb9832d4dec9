"""The contract: the frozen plan and its JSON (with the old format), typed backend settings,
capabilities checked when a target loads, and input shapes reaching every backend and the search."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from hwcompile.backends.base import check_target, get_backend, open_target
from hwcompile.backends.onnxruntime import OnnxRuntimeBackend
from hwcompile.cli import app
from hwcompile.contract import (PLAN_FORMAT, BackendSettings, Capabilities, LayerChoice, PrecisionPlan,
                                PruneSettings, QDQStyle, QuantSettings)
from hwcompile.data import Dataset
from hwcompile.errors import ConfigError
from hwcompile.ir import from_proto
from hwcompile.passes.candidates import target_candidates
from hwcompile.targets import Target, load_target


def _plan() -> PrecisionPlan:
    return PrecisionPlan(default=LayerChoice.from_candidate("int8"),
                         layers={"fc2": LayerChoice.from_candidate("fp32", reason="sensitive")},
                         quant=QuantSettings(calib_method="entropy"), prune=PruneSettings(schedule="gradual", global_=True),
                         input_shapes={"x": [4, 16]}, model="abc", target="host-cpu", notes={"who": "a test"})


# -- the plan ----------------------------------------------------------------------------------
def test_plan_is_frozen_and_round_trips_through_json(tmp_path):
    plan = _plan()
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.target = "other"
    with pytest.raises(TypeError):
        plan.layers["fc1"] = LayerChoice()
    with pytest.raises(TypeError):
        plan.notes["prune_schedule"] = "iterative"
    plan.save(tmp_path / "plan.json")
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["format"] == PLAN_FORMAT == "hwcompile.plan/2"
    assert data["prune"]["global"] is True and data["input_shapes"] == {"x": [4, 16]}
    again = PrecisionPlan.load(tmp_path / "plan.json")
    assert again == plan and again.input_shapes == {"x": (4, 16)} and again.prune.schedule == "gradual"
    assert again.with_layer("fc1", LayerChoice()).choice("fc1") == LayerChoice() and plan.choice("fc1").weight == "int8"


def test_old_plan_loads_with_its_notes_options_typed(tmp_path):
    old = {"format": "hwcompile.plan/1", "model": "", "target": "x86-tvm",
           "default": {"weight": "fp32", "activation": "fp32", "sparsity": "2:4", "reason": ""},
           "quant": {"calib_method": "minmax", "symmetric_weights": True}, "layers": {},
           "notes": {"prune_schedule": "iterative", "prune_steps": 2, "prune_ridge": 1, "input_shapes": {"x": [1, 16]},
                     "search": "mixed"}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    plan = PrecisionPlan.load(tmp_path / "old.json")
    assert plan.prune == PruneSettings(schedule="iterative", steps=2, ridge=1.0)
    assert plan.input_shapes == {"x": (1, 16)} and dict(plan.notes) == {"search": "mixed"}
    assert json.loads(plan.to_json())["format"] == "hwcompile.plan/2"


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.update(format="hwcompile.plan/9"), "format"),
    (lambda d: d["notes"].update(prune_bogus=1), "notes.prune_bogus"),
    (lambda d: d["notes"].update(prune_steps="3"), "notes.prune_steps"),
    (lambda d: d["notes"].update(prune_reconstruct="false"), "notes.prune_reconstruct"),
    (lambda d: d["quant"].update(symmetric_weights=False), "quant.symmetric_weights"),
    (lambda d: d["quant"].update(per_channel="yes"), "quant.per_channel"),
    (lambda d: d["layers"].update(fc1={"weight": "int3"}), "layers.fc1.weight"),
    (lambda d: d["notes"].update(input_shapes={"x": [1, -1]}), "input_shapes.x"),
    (lambda d: d.update(extra=1), "p.json"),
])
def test_bad_plan_refused_naming_the_field(tmp_path, edit, field):
    data = {"format": "hwcompile.plan/1", "default": {}, "quant": {}, "layers": {}, "notes": {}}
    edit(data)
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError) as e:
        PrecisionPlan.load(tmp_path / "p.json")
    assert e.value.where.endswith(field) and str(tmp_path / "p.json") in e.value.where, e.value.render()


def test_bad_new_plan_field_named(tmp_path):
    data = json.loads(_plan().to_json())
    data["prune"]["steps"] = True
    with pytest.raises(ConfigError) as e:
        PrecisionPlan.from_dict(data)
    assert e.value.where == "plan.prune.steps"


# -- backend settings ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Demo(BackendSettings):
    flag: bool = False
    count: int = 1
    ratio: float = 0.5
    mode: str | None = None
    level: bool | str = "auto"
    names: tuple[str, ...] = ()


def _target(**settings) -> Target:
    return Target(name="demo", backend="demo", settings=settings, path="/x/demo.toml")


def test_settings_typed_and_closed():
    s = _Demo.from_target(_target(flag=True, count=3, ratio=2, names=["a", "b"]))
    assert s == _Demo(flag=True, count=3, ratio=2.0, names=("a", "b")) and isinstance(s.ratio, float)
    for bad, field in (({"flag": "false"}, "flag"), ({"count": True}, "count"), ({"count": 1.5}, "count"),
                       ({"names": [1]}, "names"), ({"mode": 3}, "mode"), ({"cont": 1}, "cont")):
        with pytest.raises(ConfigError) as e:
            _Demo.from_target(_target(**bad))
        assert e.value.where == f"/x/demo.toml [backend_settings].{field}", e.value.render()


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("line, field", [
    ('allow_spinning = "false"', "allow_spinning"),          # a string where a boolean belongs
    ("unfuse_slow_skip_layernorm = 0", "unfuse_slow_skip_layernorm"),
    ('intra_op_num_threads = "2"', "intra_op_num_threads"),  # wrong type
    ('reduce_range_conv = "sometimes"', "reduce_range_conv"),
    ("allow_spining = false", "allow_spining"),              # unknown key (a typo)
])
def test_onnxruntime_settings_exit_2_naming_file_and_field(tmp_path, line, field):
    t = tmp_path / "dev.toml"
    t.write_text(f'name = "dev"\nbackend = "onnxruntime"\nprecisions = ["fp32"]\n\n[backend_settings]\n{line}\n')
    r = _run("compile", "--target", t, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "dev.toml" in r.output and field in r.output, r.output
    assert not (tmp_path / "o").exists()


# -- capabilities ----------------------------------------------------------------------------
def test_target_checked_against_its_backends_capabilities(tmp_path):
    t = tmp_path / "tvmx.toml"
    t.write_text('name = "tvmx"\nbackend = "tvm"\nprecisions = ["fp32", "int4w"]\n\n[backend_settings]\n'
                 'target = { kind = "llvm" }\n')
    with pytest.raises(ConfigError) as e:
        open_target(str(t))
    assert e.value.where == f"{t} precisions" and "int4w" in e.value.message
    t.write_text('name = "x"\nbackend = "onnxruntime"\nprecisions = ["fp32", "fp8"]\n')
    with pytest.raises(ConfigError) as e:     # no candidate is called fp8
        load_target(str(t))
    assert e.value.where == f"{t} precisions" and "fp8" in e.value.message
    for name in ("host-cpu", "x86-tvm", "arm64-tvm", "nvidia-ampere", "nvidia-hopper"):   # the bundled ones fit
        opened = open_target(name)
        check_target(opened.target, opened.capabilities)


def test_sparse_candidates_and_sizes_follow_capabilities_not_names():
    ampere, host = open_target("nvidia-ampere"), open_target("host-cpu")
    assert ampere.capabilities.sparse_kernel_for("2:4") and not host.capabilities.sparse_kernel_for("2:4")
    assert "int8+2:4" in {c.name for c in target_candidates(ampere.target, ampere.capabilities)}
    off = dataclasses.replace(ampere.target, settings={**ampere.target.settings, "sparse_weights": False})
    assert not any("+" in c.name for c in target_candidates(off, get_backend("tensorrt").capabilities(off)))


def test_capabilities_feed_the_qdq_style():
    caps = OnnxRuntimeBackend().capabilities(load_target("host-cpu"))
    assert isinstance(caps, Capabilities) and caps.qdq == OnnxRuntimeBackend().qdq_style(load_target("host-cpu"))
    assert set(caps.precisions) == {"fp32", "fp16", "int8", "int8dyn", "int4w"}
    assert get_backend("tensorrt").qdq_style(load_target("nvidia-ampere")) == QDQStyle(
        activation_dtype="int8", symmetric_activations=True, quantize_bias=False, int8_embeddings=False,
        allow_dynamic=False, allow_contrib_ops=False)


# -- input shapes ----------------------------------------------------------------------------
def _dynamic_mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w1, w2])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_shape_reaches_the_tvm_backend(tmp_path):
    """``--shape`` becomes the plan's input_shapes; TVM lowers the model with them (its tvm.json)."""
    pytest.importorskip("tvm")
    model = tmp_path / "mlp.onnx"
    onnx.save(_dynamic_mlp(), model)
    r = _run("compile", model, "--target", "x86-tvm", "--shape", "x=3,16", "--repeats", "2", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "tvm.json").read_text())["input_shapes"] == {"x": [3, 16]}
    assert json.loads((tmp_path / "o" / "plan.json").read_text())["input_shapes"] == {"x": [3, 16]}
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["target"]["capabilities"]["precisions"] == ["fp32", "fp16", "int8", "int8dyn"]


def test_report_says_what_the_plan_passes_declined(tmp_path):
    """int8dyn: the layer the dynamic rewrite cannot take is named in report.json with its reason."""
    model = tmp_path / "mlp.onnx"
    m = _dynamic_mlp()
    m.graph.node[2].op_type = "Gemm"          # alpha != 1: the dynamic rewrite declines it
    m.graph.node[2].attribute.append(helper.make_attribute("alpha", 0.5))
    onnx.save(m, model)
    r = _run("compile", model, "--precision", "int8dyn", "--repeats", "2", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    q = report["plan_passes"]["quantize"]
    assert q["dynamic_int8"] == 1 and q["runs"] == 1 and list(q["declined"]) == ["fc2"] and "Gemm" in q["declined"]["fc2"]
    assert report["target"]["capabilities"]["backend"] == "onnxruntime"


def test_profile_path_lowers_with_the_given_shapes(tmp_path, monkeypatch):
    from hwcompile.profiling import profile_path

    model = tmp_path / "mlp.onnx"
    onnx.save(_dynamic_mlp(), model)
    seen = []
    real = OnnxRuntimeBackend.lower

    def lower(self, graph, plan, target, out_dir):
        seen.append(dict(plan.input_shapes))
        return real(self, graph, plan, target, out_dir)

    monkeypatch.setattr(OnnxRuntimeBackend, "lower", lower)
    res = profile_path(model, "host-cpu", repeats=2, shapes={"x": [5, 16]})
    assert seen == [{"x": (5, 16)}] and res["latency_ms"] > 0
    with pytest.raises(ConfigError, match="no input"):
        profile_path(model, "host-cpu", repeats=2, shapes={"nope": [1, 16]})


class _Recording(OnnxRuntimeBackend):
    """The onnxruntime backend, recording the input shapes of every plan it lowers."""

    def __init__(self):
        self.seen: list[dict] = []

    def lower(self, graph, plan, target, out_dir):
        self.seen.append(dict(plan.input_shapes))
        return super().lower(graph, plan, target, out_dir)


def test_shape_reaches_every_build_of_the_search(tmp_path, monkeypatch):
    from hwcompile.pipeline import CompileOptions
    from hwcompile.search.driver import SearchOptions, plan_mixed

    monkeypatch.setenv("HWCOMPILE_CACHE", str(tmp_path / "cache"))
    graph = from_proto(_dynamic_mlp())
    calib = Dataset({"x": np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32)}, source="r")
    base = PrecisionPlan(input_shapes={"x": [2, 16]}, target="host-cpu")
    backend = _Recording()
    plan, _ = plan_mixed(graph, base, load_target("host-cpu"), backend, calib, None,
                         CompileOptions(precision="mixed", repeats=1, warmup=0), None, None, tmp_path,
                         search=SearchOptions(use_cache=False, boundary_probe=False, sweep=0, max_iterations=1,
                                              candidates=("int8dyn",), rounds=1))
    assert len(backend.seen) >= 2 and all(s == {"x": (2, 16)} for s in backend.seen)
    assert plan.input_shapes == {"x": (2, 16)}


def test_graph_clone_keeps_meta_and_is_independent():
    g = from_proto(_dynamic_mlp())
    g.meta["prune"] = {"layers": {"fc1": {"target": "2:4"}}}
    c = g.clone()
    assert c.meta == g.meta and c.meta is not g.meta
    w = c.weight_of(c.node("fc1"))
    c.replace_initializer(w, np.zeros((16, 32), np.float32))
    assert np.abs(g.weight_of(g.node("fc1")).const_value.numpy()).sum() > 0
    assert c.node("fc2").name == "fc2" and [n.name for n in c.nodes()] == [n.name for n in g.nodes()]

"""The pass runner checks what its docstring promises, and the plan passes run through it."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from conftest import conv_bn_model
from hwcompile.backends.onnxruntime import OnnxRuntimeBackend
from hwcompile.contract import LayerChoice, PrecisionPlan
from hwcompile.errors import PassError
from hwcompile.ir import from_proto
from hwcompile.passes import cleanup
from hwcompile.passes.base import PassResult, run_passes
from hwcompile.passes.plan import apply_plan
from hwcompile.targets import load_target

STYLE = OnnxRuntimeBackend().qdq_style(load_target("host-cpu"))


def _graph():
    return from_proto(conv_bn_model())


def _named(fn, name, in_place=True):
    fn.name, fn.in_place = name, in_place
    return fn


def test_in_place_pass_must_return_its_graph():
    p = _named(lambda g: PassResult(g.clone(), False), "swapper")
    with pytest.raises(PassError, match="in_place") as e:
        run_passes(_graph(), [p])
    assert e.value.where == "pass swapper"


def test_functional_pass_must_leave_its_input_alone():
    def edits(g):
        copy = g.clone()
        g.replace_initializer(g.weight_of(g.layers()[0]), np.zeros((8, 3, 3, 3), np.float32))
        return PassResult(copy, True)

    with pytest.raises(PassError, match="functional") as e:
        run_passes(_graph(), [_named(edits, "sneaky", in_place=False)])
    assert e.value.where == "pass sneaky"
    ok = _named(lambda g: PassResult(g.clone(), False), "copier", in_place=False)
    assert run_passes(_graph(), [ok]) is not None


def test_pass_reporting_no_change_must_not_change():
    def liar(g):
        w = g.weight_of(g.layers()[0])
        g.replace_initializer(w, np.zeros(tuple(w.shape.numpy()), np.float32))
        return PassResult(g, False)

    with pytest.raises(PassError, match="modified=False") as e:
        run_passes(_graph(), [_named(liar, "liar")])
    assert e.value.where == "pass liar"


def test_lint_after_every_pass_names_the_pass():
    def breaks(g):
        n = g.layers()[1]
        n.name = g.layers()[0].name          # two nodes with one layer id
        return PassResult(g, True)

    with pytest.raises(PassError, match="after pass breaker"):
        run_passes(_graph(), [_named(breaks, "breaker")])
    with pytest.raises(PassError, match="not a PassResult"):
        run_passes(_graph(), [_named(lambda g: g, "bare")])


def test_fixpoint_and_log():
    calls = {"n": 0}

    def twice(g):                             # modifies in its first two runs only
        calls["n"] += 1
        if calls["n"] > 2:
            return PassResult(g, False, declined={"x": "nothing left to do"})
        g.add_initializer("extra", np.zeros(1, np.float32))
        return PassResult(g, True, {"added": 1})

    log: dict = {}
    run_passes(_graph(), [_named(twice, "twice")], log=log)
    assert calls["n"] == 3 and log["twice"]["runs"] == 2 and log["twice"]["added"] == 2
    assert log["twice"]["declined"] == {"x": "nothing left to do"} and log["_rounds"] == {"rounds": 3, "converged": True}
    calls["n"], log = 0, {}
    run_passes(_graph(), [_named(twice, "twice")], max_rounds=2, log=log)
    assert log["_rounds"] == {"rounds": 2, "converged": False}


def test_plan_passes_run_through_the_runner_and_say_what_they_declined():
    g = cleanup(_graph())
    log: dict = {}
    plan = PrecisionPlan.uniform("int8dyn")   # dynamic INT8 does not apply to a Conv
    apply_plan(g, plan, STYLE, None, log=log)
    assert set(log["quantize"]["declined"]) == {n.name for n in g.layers()}
    assert "MatMul/Gemm" in next(iter(log["quantize"]["declined"].values()))
    assert log["quantize"]["runs"] == 0 and g.meta["plan"] is plan and g.meta["plan_passes"] is log
    g2 = cleanup(_graph())
    first = g2.layers()[0].name
    plan2 = PrecisionPlan(layers={first: LayerChoice(sparsity="2:4")})   # 3 input channels: no 2:4 groups
    apply_plan(g2, plan2, STYLE, None, log=(log2 := {}))
    assert first in log2["prune"]["declined"]


def test_layer_lookup_by_id_follows_edits():
    g = _graph()
    first, second = (n.name for n in g.layers()[:2])
    assert g.node(first).name == first
    g.node(first).name = "renamed"
    assert g.node("renamed").op_type == "Conv"
    with pytest.raises(KeyError):
        g.node(first)
    node = g.new_node("Relu", [g.node(second).outputs[0]], name=first)
    g.insert_after(g.node(second), node)
    assert g.node(first) is node and isinstance(g.node(second), ir.Node)

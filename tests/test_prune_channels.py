"""Channel pruning: shapes, propagation (BN, depthwise, residual Add, Concat, GAP->Flatten->Gemm),
declines with reasons, FLOPs, and least-squares reconstruction of the next layer.

The main numerical reference: removing channels ``R`` must compute exactly what the *original*
model computes with the input columns ``R`` of every layer reading them (the sinks) set to zero.
That reference is built from the original ONNX proto by numpy edits, independent of the pass.
"""
from __future__ import annotations

import dataclasses
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcompile.analysis.stats import model_summary
from hwcompile.data import Dataset
from hwcompile.ir import from_proto, to_proto
from hwcompile.contract import LayerChoice, PrecisionPlan, PruneSettings
from hwcompile.passes.prune import prune
from hwcompile.prune.channels import analyze_channels

from conftest import assert_close, session



def _t(name, a):
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def _conv(rng, name, x, w, y, inits, shape, bias=True, **attrs):
    inits.append(_t(w, rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))))
    ins = [x, w]
    if bias:
        inits.append(_t(w + "_b", rng.standard_normal(shape[0]) * 0.1))
        ins.append(w + "_b")
    return helper.make_node("Conv", ins, [y], name=name, **attrs)


def _bn(rng, name, x, y, c, inits):
    inits += [_t(f"{name}_g", rng.uniform(0.5, 2, c)), _t(f"{name}_be", rng.standard_normal(c) * 0.2),
              _t(f"{name}_m", rng.standard_normal(c) * 0.1), _t(f"{name}_v", rng.uniform(0.5, 2, c))]
    return helper.make_node("BatchNormalization", [x] + [f"{name}_{s}" for s in ("g", "be", "m", "v")], [y], name=name)


def _model(nodes, inits, out_shape, in_ch=3, extra_outputs=()):
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)]
    outs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 8, 8, 8]) for n in extra_outputs]
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_ch, 8, 8])],
                          outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def chain_model():
    """conv1(3->16)+BN+Relu -> conv2(16->16)+BN+Relu -> conv3(16->8) = y."""
    rng = np.random.default_rng(0)
    i = []
    nodes = [_conv(rng, "conv1", "x", "w1", "c1", i, (16, 3, 3, 3), pads=[1, 1, 1, 1]), _bn(rng, "bn1", "c1", "n1", 16, i),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             _conv(rng, "conv2", "r1", "w2", "c2", i, (16, 16, 3, 3), pads=[1, 1, 1, 1]), _bn(rng, "bn2", "c2", "n2", 16, i),
             helper.make_node("Relu", ["n2"], ["r2"], name="relu2"),
             _conv(rng, "conv3", "r2", "w3", "y", i, (8, 16, 1, 1))]
    return _model(nodes, i, ["N", 8, 8, 8])


def residual_model(head="gemm_nt"):
    """stem -> Relu -> [conv_a -> Relu -> conv_b] + skip -> Relu -> conv_c -> Relu -> GAP -> Flatten -> head
    (head: Gemm transB=1, Gemm transB=0 or MatMul)."""
    rng = np.random.default_rng(0)
    fc = rng.standard_normal((10, 12)) / 3
    i = [_t("fc_w", fc if head == "gemm_nt" else fc.T), _t("fc_b", rng.standard_normal(10))]
    head_node = (helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc", transB=1) if head == "gemm_nt"
                 else helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc") if head == "gemm"
                 else helper.make_node("MatMul", ["flat", "fc_w"], ["y"], name="fc"))
    nodes = [_conv(rng, "stem", "x", "ws", "s", i, (8, 3, 3, 3), pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["s"], ["rs"], name="relu_s"),
             _conv(rng, "conv_a", "rs", "wa", "a", i, (8, 8, 3, 3), pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
             _conv(rng, "conv_b", "ra", "wb", "b", i, (8, 8, 3, 3), pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["b", "rs"], ["sum"], name="add"),
             helper.make_node("Relu", ["sum"], ["rsum"], name="relu_sum"),
             _conv(rng, "conv_c", "rsum", "wc", "c", i, (12, 8, 3, 3), pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["rc"], name="relu_c"),
             helper.make_node("GlobalAveragePool", ["rc"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"), head_node]
    return _model(nodes, i, ["N", 10])


def dw_concat_model():
    """pw1 -> Relu -> depthwise(+scale Mul) -> Relu ; conv_b -> Relu ; Concat -> conv_c = y."""
    rng = np.random.default_rng(0)
    i = [_t("scale", rng.uniform(0.5, 1.5, (1, 16, 1, 1)))]
    nodes = [_conv(rng, "pw1", "x", "wp", "p", i, (16, 3, 1, 1)),
             helper.make_node("Relu", ["p"], ["rp"], name="relu_p"),
             _conv(rng, "dw", "rp", "wd", "d", i, (16, 1, 3, 3), pads=[1, 1, 1, 1], group=16),
             helper.make_node("Mul", ["d", "scale"], ["ds"], name="mul_scale"),
             helper.make_node("Relu", ["ds"], ["rd"], name="relu_d"),
             _conv(rng, "conv_b", "x", "wb", "cb", i, (8, 3, 3, 3), pads=[1, 1, 1, 1], bias=False),
             helper.make_node("Relu", ["cb"], ["rb"], name="relu_b"),
             helper.make_node("Concat", ["rd", "rb"], ["cat"], name="concat", axis=1),
             _conv(rng, "conv_c", "cat", "wc", "y", i, (4, 24, 1, 1))]
    return _model(nodes, i, ["N", 4, 8, 8])


def _prune(**options):
    """PruneSettings from ``prune_<field>=value`` keyword arguments."""
    return PruneSettings.from_dict({k.removeprefix("prune_"): v for k, v in options.items()})


def _plan(ratio, **notes):
    """channels=R with the uniform allocation (R of every group's channels): these tests check the
    propagation of one group's removal; the global allocation is tested in test_prune_flops.py."""
    return PrecisionPlan.uniform("fp32", f"channels={ratio}", prune=_prune(prune_channel_allocation="uniform", **notes))


def _zeroed_reference(proto, sink_cols: dict[str, tuple[int, np.ndarray]]):
    """The original model with columns ``idx`` along ``axis`` of each named weight set to 0."""
    ref = type(proto)()
    ref.CopyFrom(proto)
    for t in ref.graph.initializer:
        if t.name in sink_cols:
            axis, idx = sink_cols[t.name]
            a = numpy_helper.to_array(t).copy()
            np.moveaxis(a, axis, 0)[idx] = 0
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    return ref


def _removed(graph, key, c):
    kept = graph.meta["prune"]["channels"]["groups"][key]["kept_channels"]
    return np.setdiff1d(np.arange(c), kept)


def _x(n=4, seed=3, c=3):
    return np.random.default_rng(seed).standard_normal((n, c, 8, 8)).astype(np.float32)


def test_chain_removes_channels_bn_and_declines_output_group():
    proto = chain_model()
    g = from_proto(proto)
    before = model_summary(g)
    prune(g, _plan(0.5), None)
    g.lint()
    w = {v.name: v.const_value.numpy() for v in g.main.initializers.values()}
    assert w["w1"].shape == (8, 3, 3, 3) and w["w1_b"].shape == (8,) and w["bn1_g"].shape == (8,)
    assert w["w2"].shape == (8, 8, 3, 3) and w["bn2_v"].shape == (8,) and w["w3"].shape == (8, 8, 1, 1)
    assert "graph output 'y'" in g.meta["channel_prune_skipped"]["conv3"]
    after = model_summary(g)
    conv_flops = lambda k, c, kk: 2 * k * c * kk * 64           # 2 * K * C * kernel * (8 x 8 outputs)
    assert before["flops"] == conv_flops(16, 3, 9) + conv_flops(16, 16, 9) + conv_flops(8, 16, 1)
    assert after["flops"] == conv_flops(8, 3, 9) + conv_flops(8, 8, 9) + conv_flops(8, 8, 1)
    assert after["params"] < before["params"]
    assert list(g.node("conv2").outputs[0].shape.dims)[1:] == [8, 8, 8]   # value shapes re-inferred
    # filters kept are the L1-largest ones of the original weight
    orig = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    l1 = np.abs(orig["w1"]).reshape(16, -1).sum(1)
    assert sorted(np.argsort(-l1)[:8]) == g.meta["prune"]["channels"]["groups"]["conv1"]["kept_channels"]
    r1, r2 = _removed(g, "conv1", 16), _removed(g, "conv2", 16)
    ref = _zeroed_reference(proto, {"w2": (1, r1), "w3": (1, r2)})
    x = _x()
    out = session(to_proto(g)).run(None, {"x": x})
    assert out[0].shape == (4, 8, 8, 8)
    assert_close(session(ref).run(None, {"x": x}), out, rel=1e-5)


@pytest.mark.parametrize("head", ["gemm_nt", "gemm", "matmul"])
def test_residual_group_shares_indices_and_gemm_columns_follow(head):
    proto = residual_model(head)
    fc_axis = 1 if head == "gemm_nt" else 0
    g = from_proto(proto)
    ana = analyze_channels(g)
    groups = {grp.key: grp for grp in ana.groups.values()}
    assert set(groups) == {("conv_b", "stem"), ("conv_a",), ("conv_c",)}
    assert sorted(groups[("conv_b", "stem")].sinks) == ["conv_a", "conv_c"]
    assert groups[("conv_c",)].sinks == ["fc"] and all(grp.safe for grp in groups.values())
    before = model_summary(g)
    prune(g, _plan(0.5), None)
    g.lint()
    w = {v.name: v.const_value.numpy() for v in g.main.initializers.values()}
    orig = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    kept = g.meta["prune"]["channels"]["groups"]["conv_b,stem"]["kept_channels"]
    np.testing.assert_array_equal(w["ws"], orig["ws"][kept])        # same indices in both producers
    np.testing.assert_array_equal(w["wb"][:, :, 0, 0], orig["wb"][kept][:, _kept(g, "conv_a", 8), 0, 0])
    assert w["fc_w"].shape[fc_axis] == 6 and w["fc_w"].shape[1 - fc_axis] == 10 and w["wc"].shape == (6, 4, 3, 3)
    ref = _zeroed_reference(proto, {"wa": (1, _removed(g, "conv_b,stem", 8)), "wc": (1, _removed(g, "conv_b,stem", 8)),
                                    "wb": (1, _removed(g, "conv_a", 8)), "fc_w": (fc_axis, _removed(g, "conv_c", 12))})
    x = _x()
    out = session(to_proto(g)).run(None, {"x": x})
    assert out[0].shape == (4, 10)
    assert_close(session(ref).run(None, {"x": x}), out, rel=1e-5)
    assert model_summary(g)["flops"] < 0.5 * before["flops"]


def _kept(g, key, c):
    return g.meta["prune"]["channels"]["groups"][key]["kept_channels"]


def test_depthwise_and_concat_offsets():
    proto = dw_concat_model()
    g = from_proto(proto)
    prune(g, _plan(0.25), None)
    g.lint()
    dw = g.node("dw")
    assert dw.attributes["group"].as_int() == 12 and dw.inputs[1].const_value.numpy().shape == (12, 1, 3, 3)
    w = {v.name: v.const_value.numpy() for v in g.main.initializers.values()}
    assert w["scale"].shape == (1, 12, 1, 1) and w["wc"].shape == (4, 18, 1, 1)
    orig = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    kp, kb = _kept(g, "pw1", 16), _kept(g, "conv_b", 8)
    np.testing.assert_array_equal(w["wc"], orig["wc"][:, list(kp) + [16 + k for k in kb]])
    ref = _zeroed_reference(proto, {"wc": (1, np.concatenate([_removed(g, "pw1", 16), 16 + _removed(g, "conv_b", 8)]))})
    x = _x()
    assert_close(session(ref).run(None, {"x": x}), session(to_proto(g)).run(None, {"x": x}), rel=1e-5)


def test_declines_with_reasons_leave_model_unchanged():
    rng = np.random.default_rng(0)
    i = [numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "shape"), _t("wm", rng.standard_normal((512, 4)))]
    nodes = [_conv(rng, "conv1", "x", "w1", "c1", i, (8, 3, 3, 3), pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Reshape", ["r1", "shape"], ["flat"], name="reshape"),
             helper.make_node("MatMul", ["flat", "wm"], ["y"], name="fc"),
             _conv(rng, "conv2", "x", "w2", "c2", i, (8, 3, 3, 3), pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "x8"], ["z"], name="add_input")]
    proto = _model(nodes, i, ["N", 4], extra_outputs=("z",))
    proto.graph.input.append(helper.make_tensor_value_info("x8", TensorProto.FLOAT, ["N", 8, 8, 8]))
    g = from_proto(proto)
    before = to_proto(g).SerializeToString()
    prune(g, _plan(0.5), None)
    skipped = g.meta["channel_prune_skipped"]
    assert "Reshape" in skipped["conv1"]
    assert "'x8', which is not a constant" in skipped["conv2"]
    assert "MatMul" in skipped["fc"]
    assert to_proto(g).SerializeToString() == before


def test_ratio_zero_is_identity():
    proto = residual_model()
    g = from_proto(proto)
    before = to_proto(g).SerializeToString()
    calib = Dataset({"x": _x(16, seed=1)})
    prune(g, _plan(0.0), calib)
    assert to_proto(g).SerializeToString() == before


def _redundant_chain():
    """conv1's filters 8..15 are positive multiples of 0..7 (plus noise): ReLU outputs are redundant,
    so a refit of conv2 can recover most of what the removed channels carried."""
    proto = chain_model()
    rng = np.random.default_rng(7)
    for t in proto.graph.initializer:
        a = numpy_helper.to_array(t).copy()
        if t.name == "w1":
            a[8:] = a[:8] * rng.uniform(0.8, 1.2, (8, 1, 1, 1)) + 0.05 * rng.standard_normal((8, 3, 3, 3))
        if t.name in ("w1_b", "bn1_be", "bn1_m"):
            a[8:] = a[:8]
        if t.name in ("bn1_g", "bn1_v"):
            a[8:] = a[:8]
        t.CopyFrom(numpy_helper.from_array(a, t.name))
    return proto


def _rel_err(ref, out):
    return float(np.sum((out - ref) ** 2) / np.sum(ref ** 2))


def test_reconstruction_of_next_layer_reduces_error():
    proto = _redundant_chain()
    x_cal, x_test = _x(64, seed=1), _x(32, seed=2)
    ref = session(proto).run(None, {"x": x_test})[0]
    plan = PrecisionPlan(default=LayerChoice(), layers={"conv1": LayerChoice(sparsity="channels=0.5")})
    errs = {}
    for name, notes in {"plain": {"prune_reconstruct": False, "prune_channel_importance": "l1"},
                        "refit": {"prune_channel_importance": "l1"}}.items():
        g = from_proto(proto)
        prune(g, dataclasses.replace(plan, prune=_prune(prune_channel_allocation="uniform", **notes)),
              Dataset({"x": x_cal}))
        g.lint()
        assert g.node("conv2").inputs[1].const_value.numpy().shape == (16, 8, 3, 3)
        errs[name] = _rel_err(ref, session(to_proto(g)).run(None, {"x": x_test})[0])
        if name == "refit":
            rep = g.meta["prune"]["channels"]["refit"]["conv2"]
            assert rep["error_refit"] < rep["error_sliced"]
    print("channel refit errors", errs)
    assert errs["refit"] <= 0.7 * errs["plain"]


@pytest.mark.parametrize("schedule", ["gradual", "iterative"])
def test_schedules_give_valid_smaller_models(schedule):
    proto = residual_model()
    calib = Dataset({"x": _x(32, seed=1)})
    x_test = _x(16, seed=2)
    ref = session(proto).run(None, {"x": x_test})[0]
    errs = {}
    for sched in ("one-shot", schedule):
        g = from_proto(proto)
        prune(g, _plan(0.5, prune_schedule=sched, prune_steps=2), calib)
        g.lint()
        shapes = {v.name: v.const_value.numpy().shape for v in g.main.initializers.values()}
        assert shapes["ws"][0] == shapes["wb"][0] == 4 and shapes["wa"][0] == 4 and shapes["wc"][0] == 6
        out = session(to_proto(g)).run(None, {"x": x_test})[0]
        assert out.shape == (16, 10)
        errs[sched] = _rel_err(ref, out)
    print("channel schedule errors", errs)
    assert all(np.isfinite(list(errs.values())))


def test_channel_multiple_and_nm_checked_on_final_channels():
    g = from_proto(residual_model())
    prune(g, _plan(0.5, prune_channel_multiple=4), None)
    assert g.node("conv_c").inputs[1].const_value.numpy().shape[0] == 8      # 12 -> 6, rounded up to 8
    plan = PrecisionPlan(default=LayerChoice(), layers={"conv1": LayerChoice(sparsity="channels=0.375"),
                                                        "conv2": LayerChoice(sparsity="2:4")},
                         prune=_prune(prune_channel_allocation="uniform"))
    g = from_proto(chain_model())
    prune(g, plan, None)
    assert g.node("conv2").inputs[1].const_value.numpy().shape == (16, 10, 3, 3)
    assert "length 10, not a multiple of M=4" in g.meta["prune_skipped"]["conv2"]
    assert "depthwise" not in g.meta["prune_skipped"]["conv2"]

"""FLOPs after channel pruning, and the global (FLOP-budget) channel allocation.

The FLOP references are hand counts from the pruned weights' shapes (``2 * K * C/g * kh * kw *
Ho * Wo`` per Conv, ``2 * in * out`` per Gemm, batch 1), independent of ``analysis.stats`` and of
the shapes stored on the graph. The refit-error curve is checked against numpy least squares.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcompile.analysis.stats import model_summary
from hwcompile.data import Dataset
from hwcompile.ir import from_proto, to_proto
from hwcompile.passes.prune import prune
from hwcompile.contract import PrecisionPlan, PruneSettings
from hwcompile.prune.channels import refit_curve

from conftest import session

HW = 16


def _t(name, a):
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def block_model(duplicate: bool = False):
    """stem Conv(3->24, BN folded into weight + bias) -> Relu -> expand 1x1 (24->48) -> BN -> Relu
    -> depthwise 3x3 (48) -> Relu -> pointwise 1x1 (48->24) -> Add(stem) -> head 1x1 (24->32) -> Relu
    -> GAP -> Flatten -> Gemm(32->10). ``duplicate``: expand channels 24..47 (filter, BN, depthwise
    filter) copy channels 0..23, so the pointwise conv reads 24 pairs of identical channels."""
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s) / np.sqrt(np.prod(s[1:]) if len(s) > 1 else 1)
    we, dw, dw_b = r(48, 24, 1, 1), r(48, 1, 3, 3), rng.standard_normal(48) * 0.1
    bn = [rng.uniform(0.5, 2, 48), rng.standard_normal(48) * 0.2, rng.standard_normal(48) * 0.1,
          rng.uniform(0.5, 2, 48)]
    if duplicate:
        we[24:], dw[24:], dw_b[24:] = we[:24], dw[:24], dw_b[:24]
        bn = [np.concatenate([p[:24], p[:24]]) for p in bn]
    inits = [_t("ws", r(24, 3, 3, 3)), _t("ws_b", rng.standard_normal(24) * 0.1), _t("we", we),
             _t("bn_g", bn[0]), _t("bn_b", bn[1]), _t("bn_m", bn[2]), _t("bn_v", bn[3]),
             _t("wd", dw), _t("wd_b", dw_b), _t("wp", r(24, 48, 1, 1)),
             _t("wh", r(32, 24, 1, 1)), _t("wh_b", rng.standard_normal(32) * 0.1),
             _t("fc_w", r(10, 32)), _t("fc_b", rng.standard_normal(10))]
    n = helper.make_node
    nodes = [n("Conv", ["x", "ws", "ws_b"], ["s"], name="stem", pads=[1, 1, 1, 1]),
             n("Relu", ["s"], ["rs"], name="relu_s"),
             n("Conv", ["rs", "we"], ["e"], name="expand"),
             n("BatchNormalization", ["e", "bn_g", "bn_b", "bn_m", "bn_v"], ["eb"], name="bn"),
             n("Relu", ["eb"], ["re"], name="relu_e"),
             n("Conv", ["re", "wd", "wd_b"], ["d"], name="dw", pads=[1, 1, 1, 1], group=48),
             n("Relu", ["d"], ["rd"], name="relu_d"),
             n("Conv", ["rd", "wp"], ["p"], name="pw"),
             n("Add", ["p", "rs"], ["sum"], name="add"),
             n("Conv", ["sum", "wh", "wh_b"], ["h"], name="head"),
             n("Relu", ["h"], ["rh"], name="relu_h"),
             n("GlobalAveragePool", ["rh"], ["gap"], name="gap"),
             n("Flatten", ["gap"], ["flat"], name="flatten"),
             n("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, HW, HW])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def hand_flops(graph) -> int:
    """FLOPs from the weights' shapes alone: every Conv here keeps the 16 x 16 resolution."""
    total = 0
    for node in graph.main:
        if node.op_type in ("Conv", "Gemm"):
            w = node.inputs[1].const_value.numpy().shape
            total += 2 * int(np.prod(w)) * (HW * HW if node.op_type == "Conv" else 1)
    return total


def _prune(**options):
    """PruneSettings from ``prune_<field>=value`` keyword arguments."""
    return PruneSettings.from_dict({k.removeprefix("prune_"): v for k, v in options.items()})


def _plan(ratio, **notes):
    return PrecisionPlan.uniform("fp32", f"channels={ratio}", prune=_prune(**notes))


def _x(n, seed):
    return np.random.default_rng(seed).standard_normal((n, 3, HW, HW)).astype(np.float32)


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_flops_after_pruning_equal_hand_count(allocation):
    g = from_proto(block_model())
    dense = model_summary(g)
    assert dense["flops"] == hand_flops(g) == 2 * HW * HW * (24 * 27 + 48 * 24 + 48 * 9 + 24 * 48 + 32 * 24) + 2 * 320
    prune(g, _plan(0.5, prune_channel_allocation=allocation, prune_channel_importance="l1"), None)
    g.lint()
    shapes = {v.name: v.const_value.numpy().shape for v in g.main.initializers.values()}
    assert shapes["wd"][0] == shapes["we"][0] < 48 and g.node("dw").attributes["group"].as_int() == shapes["wd"][0]
    if allocation == "uniform":
        assert shapes["ws"][0] == shapes["wp"][0] == shapes["wh"][1] == 12 and shapes["fc_w"][1] == 16
    after = model_summary(g)
    assert after["flops"] == hand_flops(g) < dense["flops"] and not after["flops_unknown"]


def test_flops_do_not_trust_stale_stored_shapes():
    """The stored value shapes can be stale (e.g. symbolic after constant folding); the count re-infers."""
    g = from_proto(block_model())
    prune(g, _plan(0.5, prune_channel_allocation="uniform", prune_channel_importance="l1"), None)
    want = hand_flops(g)
    import onnx_ir as ir
    for node in g.main:
        for out in node.outputs:
            if out.shape is not None:
                out.shape = ir.Shape([f"stale{i}" for i in range(len(out.shape))])
    assert model_summary(g)["flops"] == want


def test_unknown_spatial_dims_are_reported_not_counted_as_one():
    proto = block_model()
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    summary = model_summary(from_proto(proto))
    assert "stem" in summary["flops_unknown"] and "fc" not in summary["flops_unknown"]


def test_global_allocation_meets_the_flop_budget_exactly_as_planned():
    g = from_proto(block_model())
    dense = model_summary(g)["flops"]
    notes = dict(prune_channel_importance="l1", prune_channel_protect_ends=False, prune_channel_min_group=0)
    prune(g, _plan(0.4, **notes), None)
    g.lint()
    alloc = g.meta["prune"]["channels"]["allocation"]
    removed = dense - model_summary(g)["flops"]
    assert alloc["flops_prunable"] == dense and alloc["flops_budget"] == pytest.approx(0.4 * dense)
    assert removed == alloc["flops_removed_planned"] >= alloc["flops_budget"]
    assert removed < alloc["flops_budget"] + 2 * HW * HW * 48 * 24      # stops after the step that reaches it
    kept = {k: v["kept"] / v["channels"] for k, v in g.meta["prune"]["channels"]["groups"].items()}
    assert len(set(kept.values())) > 1                                   # not uniform
    again = from_proto(block_model())
    prune(again, _plan(0.4, **notes), None)
    assert again.meta["prune"]["channels"]["groups"] == g.meta["prune"]["channels"]["groups"]   # deterministic


def test_protected_groups_stay_dense_with_a_reason():
    g = from_proto(block_model())
    prune(g, _plan(0.3, prune_channel_importance="l1"), None)
    shapes = {v.name: v.const_value.numpy().shape for v in g.main.initializers.values()}
    assert shapes["ws"][0] == 24 and shapes["wh"][0] == 32 and shapes["we"][0] < 48
    skipped = g.meta["channel_prune_skipped"]
    assert "stem" in skipped["stem"] and "stem" in skipped["pw"] and "head" in skipped["head"]


def test_refit_error_allocation_removes_redundant_channels_first():
    """Channels 24..47 of the expand group duplicate 0..23: removing one of a pair and refitting the
    pointwise conv loses nothing, so the refit-error allocation removes (almost) only such channels
    (channel 12 is nearly dead: both copies may go) and the pruned model matches the dense one; the
    FLOP budget (30 % of the model) needs 22 channels. The L1-mass allocation, blind to redundancy,
    removes both copies of the smallest filters and loses far more."""
    proto = block_model(duplicate=True)
    x_test = _x(8, 2)
    ref = session(proto).run(None, {"x": x_test})[0]
    g = from_proto(proto)
    dense = model_summary(g)["flops"]
    prune(g, _plan(0.3, prune_channel_importance="activation"), Dataset({"x": _x(32, 1)}))
    g.lint()
    grp = g.meta["prune"]["channels"]["groups"]["expand"]
    kept = np.asarray(grp["kept_channels"])
    assert len(kept) == 26 and len(set(kept % 24)) >= 23
    assert g.meta["prune"]["channels"]["allocation"]["criterion"] == "refit error"
    assert dense - model_summary(g)["flops"] >= 0.3 * dense
    out = session(to_proto(g)).run(None, {"x": x_test})[0]
    err = float(np.sum((out - ref) ** 2) / np.sum(ref ** 2))
    l1 = from_proto(proto)
    prune(l1, _plan(0.3, prune_channel_importance="l1"), Dataset({"x": _x(32, 1)}))
    out_l1 = session(to_proto(l1)).run(None, {"x": x_test})[0]
    err_l1 = float(np.sum((out_l1 - ref) ** 2) / np.sum(ref ** 2))
    print("duplicate-channel model, rel. output error: refit-error allocation", err, "L1 mass", err_l1)
    assert err < 1e-4 and err_l1 > 100 * err


def test_refit_curve_matches_least_squares():
    """D(r): the relative error of the layer after removing the first r channels of the order and
    refitting the rest (numpy lstsq on the rows)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    w = rng.standard_normal((5, 6))
    y = x @ w.T
    energy = float(np.sum(y * y))
    order, curve = refit_curve([(w, x.T @ x, np.arange(6)[:, None], energy)], 6, 4, ridge=0.0)
    assert len(order) == 4 and len(set(order.tolist())) == 4
    for r in range(1, 5):
        keep = np.setdiff1d(np.arange(6), order[:r])
        coef = np.linalg.lstsq(x[:, keep], y, rcond=None)[0]
        assert curve[r] == pytest.approx(float(np.sum((x[:, keep] @ coef - y) ** 2)) / energy, rel=1e-6, abs=1e-10)
    first = [float(np.sum((x[:, np.setdiff1d(np.arange(6), [q])] @ np.linalg.lstsq(
        x[:, np.setdiff1d(np.arange(6), [q])], y, rcond=None)[0] - y) ** 2)) for q in range(6)]
    assert order[0] == int(np.argmin(first))                               # greedy: cheapest first step


def test_refit_curve_blocks_of_a_kxk_sink():
    """A 3x3 sink reads each channel through 9 columns; removing a channel removes the block."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 4 * 9))
    w = rng.standard_normal((3, 36))
    y = x @ w.T
    cols = np.arange(36).reshape(4, 9)
    order, curve = refit_curve([(w, x.T @ x, cols, float(np.sum(y * y)))], 4, 2, ridge=0.0)
    keep = cols[np.setdiff1d(np.arange(4), order[:2])].ravel()
    coef = np.linalg.lstsq(x[:, keep], y, rcond=None)[0]
    assert curve[2] == pytest.approx(float(np.sum((x[:, keep] @ coef - y) ** 2) / np.sum(y * y)), rel=1e-6)

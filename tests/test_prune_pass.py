"""Weight pruning pass: N:M validity, skips with reasons, Wanda, global masks, least-squares
reconstruction (against a closed form and against plain magnitude pruning) and schedules."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcompile.data import Dataset
from hwcompile.errors import ConfigError
from hwcompile.ir import from_proto, to_proto
from hwcompile.passes.prune import prune, prune_pass
from hwcompile.contract import LayerChoice, PrecisionPlan, PruneSettings
from hwcompile.prune.masks import check_nm
from hwcompile.passes.plan import apply_plan

from conftest import assert_close, session


def _t(name, a):
    return numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)


def _model(nodes, inits, x_shape, y_shape):
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def mlp(seed=0):
    """MatMul(16->32)+Add+Relu -> Gemm(transB=1, 32->32)+Relu -> MatMul(32->8): a 3-layer chain."""
    rng = np.random.default_rng(seed)
    inits = [_t("w1", rng.standard_normal((16, 32)) / 4), _t("b1", rng.standard_normal(32) * 0.1),
             _t("w2", rng.standard_normal((32, 32)) / 6), _t("b2", rng.standard_normal(32) * 0.1),
             _t("w3", rng.standard_normal((32, 8)) / 6)]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
             helper.make_node("Add", ["h1", "b1"], ["a1"], name="add1"),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
             helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"], name="fc2", transB=1),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("MatMul", ["r2", "w3"], ["y"], name="fc3")]
    return _model(nodes, inits, ["N", 16], ["N", 8])


def conv_net(seed=0):
    """conv1(3->8)+BN+Relu -> depthwise(8) -> Relu -> conv2 1x1 (8->16) -> Relu -> conv3 (group 2)
    -> Relu -> conv4 (16->8) = y."""
    rng = np.random.default_rng(seed)
    w = lambda name, shape: _t(name, rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:])))
    inits = [w("w1", (8, 3, 3, 3)), w("wd", (8, 1, 3, 3)), w("w2", (16, 8, 1, 1)), _t("b2", rng.standard_normal(16) * .1),
             w("w3", (16, 8, 3, 3)), w("w4", (8, 16, 3, 3)),
             _t("g", rng.uniform(0.5, 2, 8)), _t("be", rng.standard_normal(8) * .1), _t("mu", rng.standard_normal(8) * .1),
             _t("var", rng.uniform(0.5, 2, 8))]
    p = dict(pads=[1, 1, 1, 1])
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", **p),
             helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["n1"], name="bn1"),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "wd"], ["d"], name="dw", group=8, **p),
             helper.make_node("Relu", ["d"], ["rd"], name="relu_d"),
             helper.make_node("Conv", ["rd", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3", group=2, **p),
             helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
             helper.make_node("Conv", ["r3", "w4"], ["y"], name="conv4", **p)]
    return _model(nodes, inits, ["N", 3, 8, 8], ["N", 8, 8, 8])


def correlated(n, seed):
    """Features driven by 4 latent factors (a fixed mixing) plus a little noise."""
    a = np.random.default_rng(0).standard_normal((4, 16))
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 4)) @ a + 0.05 * rng.standard_normal((n, 16))).astype(np.float32)


def smooth_images(n, seed):
    """Spatially smooth images (4x4 upsampled to 8x8) whose 3 channels are mixtures of one field."""
    rng = np.random.default_rng(seed)
    base = np.kron(rng.standard_normal((n, 1, 4, 4)), np.ones((1, 1, 2, 2)))
    mix = np.array([1.0, 0.8, -0.5]).reshape(1, 3, 1, 1)
    return (base * mix + 0.05 * rng.standard_normal((n, 3, 8, 8))).astype(np.float32)


def _prune(**options):
    """PruneSettings from ``prune_<field>=value`` keyword arguments."""
    return PruneSettings.from_dict({k.removeprefix("prune_"): v for k, v in options.items()})


def _plan(sparsity, **notes):
    return PrecisionPlan.uniform("fp32", sparsity, prune=_prune(**notes))


def _weights(g):
    return {v.name: v.const_value.numpy() for v in g.main.initializers.values()}


def _rel_err(proto, g, x):
    ref = session(proto).run(None, {"x": x})[0]
    out = session(to_proto(g)).run(None, {"x": x})[0]
    return float(np.sum((out - ref) ** 2) / np.sum(ref ** 2))


def test_nm_masks_valid_and_skipped_layers_untouched():
    proto = conv_net()
    g = from_proto(proto)
    before = _weights(g)
    prune(g, _plan("2:4"), None)
    g.lint()
    w = _weights(g)
    for name in ("w2", "w3", "w4"):
        assert check_nm(w[name], 2, 4, axis=1, name=name) == []
        assert (w[name] != 0).mean() == 0.5
        np.testing.assert_array_equal(w[name][w[name] != 0], before[name][w[name] != 0])   # kept values as they were
    skipped = g.meta["prune_skipped"]
    assert "length 3, not a multiple of M=4" in skipped["conv1"]
    assert "depthwise" in skipped["dw"]
    for name in ("w1", "wd"):
        np.testing.assert_array_equal(w[name], before[name])
    x = smooth_images(2, 5)
    assert session(to_proto(g)).run(None, {"x": x})[0].shape == (2, 8, 8, 8)


def test_nm_axes_of_matmul_and_gemm():
    g = from_proto(mlp())
    prune(g, _plan("2:4"), None)
    w = _weights(g)
    assert check_nm(w["w1"], 2, 4, axis=0) == [] and check_nm(w["w3"], 2, 4, axis=0) == []   # MatMul [K, N]
    assert check_nm(w["w2"], 2, 4, axis=1) == []                                            # Gemm transB [N, K]
    assert check_nm(w["w1"], 2, 4, axis=1) != []        # along the wrong axis it is not 2:4


def test_refit_matches_least_squares_closed_form():
    """One Conv: the refit weights equal per-row lstsq on explicitly built patches (loops, not im2col)."""
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    proto = _model([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])],
                   [_t("w", w0), _t("b", rng.standard_normal(6))], ["N", 4, 5, 5], ["N", 6, 5, 5])
    x = rng.standard_normal((12, 4, 5, 5)).astype(np.float32)
    g = from_proto(proto)
    prune(g, _plan("unstructured=0.5", prune_importance="magnitude", prune_ridge=0.0, prune_max_rows=10 ** 6,
                   prune_refit_bias=False), Dataset({"x": x}))
    w = _weights(g)["w"].astype(np.float64)
    np.testing.assert_array_equal(_weights(g)["b"], numpy_helper.to_array(proto.graph.initializer[1]))
    keep = np.zeros(w0.size, bool)
    keep[np.argsort(-np.abs(w0).ravel())[: w0.size // 2]] = True
    keep = keep.reshape(w0.shape)
    np.testing.assert_array_equal(w != 0, keep)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.array([xp[n, :, i:i + 3, j:j + 3].ravel() for n in range(12) for i in range(5) for j in range(5)])
    rows0 = w0.reshape(6, -1).astype(np.float64)
    y = patches @ rows0.T
    for k in range(6):
        kk = keep[k].ravel()
        sol = np.linalg.lstsq(patches[:, kk], y[:, k], rcond=None)[0]
        np.testing.assert_allclose(w.reshape(6, -1)[k, kk], sol, rtol=1e-4, atol=1e-5)


def test_refit_with_bias_matches_least_squares_with_intercept():
    """Conv with and without a bias input, and a MatMul whose bias sits in the following Add: weights
    and the bias change equal per-row lstsq on [patches, 1] (inputs with a nonzero mean)."""
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    b0 = rng.standard_normal(6).astype(np.float32)
    x = (rng.standard_normal((12, 4, 5, 5)) + 1.5).astype(np.float32)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.array([xp[n, :, i:i + 3, j:j + 3].ravel() for n in range(12) for i in range(5) for j in range(5)])
    keep = np.zeros(w0.size, bool)
    keep[np.argsort(-np.abs(w0).ravel())[: w0.size // 2]] = True
    keep = keep.reshape(6, -1)
    y = patches @ w0.reshape(6, -1).astype(np.float64).T
    aug = np.hstack([patches, np.ones((len(patches), 1))])
    notes = dict(prune_importance="magnitude", prune_ridge=0.0, prune_max_rows=10 ** 6)
    for with_bias in (True, False):
        inputs, inits = (["x", "w", "b"], [_t("w", w0), _t("b", b0)]) if with_bias else (["x", "w"], [_t("w", w0)])
        proto = _model([helper.make_node("Conv", inputs, ["y"], name="conv", pads=[1, 1, 1, 1])], inits,
                       ["N", 4, 5, 5], ["N", 6, 5, 5])
        g = from_proto(proto)
        prune(g, _plan("unstructured=0.5", **notes), Dataset({"x": x}))
        g.lint()
        conv = g.node("conv")
        w = conv.inputs[1].const_value.numpy().reshape(6, -1).astype(np.float64)
        b = conv.inputs[2].const_value.numpy().astype(np.float64)      # added when missing
        for k in range(6):
            sol = np.linalg.lstsq(aug[:, np.append(keep[k], True)], y[:, k], rcond=None)[0]
            np.testing.assert_allclose(w[k, keep[k]], sol[:-1], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(b[k] - (b0[k] if with_bias else 0.0), sol[-1], rtol=1e-4, atol=1e-5)
    # MatMul -> Add(b1): the Add's constant takes the change
    proto = mlp()
    xm = correlated(256, 1) + 2.0
    g = from_proto(proto)
    prune(g, PrecisionPlan(default=LayerChoice(), layers={"fc1": LayerChoice(sparsity="2:4")},
                           prune=_prune(**notes)), Dataset({"x": xm}))
    w1 = numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == "w1")).astype(np.float64)
    b1 = numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == "b1")).astype(np.float64)
    got_w, got_b = _weights(g)["w1"].astype(np.float64), _weights(g)["b1"].astype(np.float64)
    X = np.hstack([xm.astype(np.float64), np.ones((len(xm), 1))])
    for n in range(w1.shape[1]):
        kk = np.append(got_w[:, n] != 0, True)
        sol = np.linalg.lstsq(X[:, kk], xm.astype(np.float64) @ w1[:, n], rcond=None)[0]
        np.testing.assert_allclose(got_w[kk[:-1], n], sol[:-1], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(got_b[n] - b1[n], sol[-1], rtol=1e-3, atol=1e-4)
    assert not np.allclose(got_b, b1)


def test_wanda_ranks_by_weight_times_input_norm():
    x = correlated(128, 1)
    x[:, :4] *= 30.0
    proto = mlp()
    g = from_proto(proto)
    plan = PrecisionPlan(default=LayerChoice(), layers={"fc1": LayerChoice(sparsity="unstructured=0.5")},
                         prune=_prune(prune_importance="wanda"))
    prune(g, plan, Dataset({"x": x}))
    w1 = numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == "w1")).astype(np.float64)
    score = np.abs(w1) * np.sqrt((x.astype(np.float64) ** 2).sum(0))[:, None]
    expect = np.zeros(w1.size, bool)
    expect[np.argsort(-score.ravel(), kind="stable")[: w1.size // 2]] = True
    got = _weights(g)["w1"] != 0
    np.testing.assert_array_equal(got, expect.reshape(w1.shape))
    magnitude = np.abs(w1).ravel() >= np.sort(np.abs(w1).ravel())[w1.size // 2]
    assert (got.ravel() != magnitude).sum() > 20          # Wanda chose differently from |W|
    assert got[:4].mean() > 0.9                           # the loud inputs keep their weights


def test_reconstruction_beats_magnitude_and_keeps_masks():
    proto = mlp()
    calib, x_test = Dataset({"x": correlated(256, 1)}), correlated(128, 2)
    errs, masks = {}, {}
    for name, notes, data in (("magnitude", {}, None),
                              ("magnitude+refit", {"prune_importance": "magnitude"}, calib),
                              ("wanda+refit", {}, calib)):
        g = from_proto(proto)
        prune(g, _plan("2:4", **notes), data)
        g.lint()
        w = _weights(g)
        assert check_nm(w["w1"], 2, 4, axis=0) == [] and check_nm(w["w2"], 2, 4, axis=1) == []
        assert check_nm(w["w3"], 2, 4, axis=0) == []
        masks[name] = {k: w[k] != 0 for k in ("w1", "w2", "w3")}
        errs[name] = _rel_err(proto, g, x_test)
    print("MLP 2:4 output error", errs)
    for k in masks["magnitude"]:       # same mask with and without the refit: refit only moves kept weights
        np.testing.assert_array_equal(masks["magnitude"][k], masks["magnitude+refit"][k])
    assert errs["magnitude+refit"] <= 0.7 * errs["magnitude"]
    assert errs["wanda+refit"] <= 0.7 * errs["magnitude"]


def test_conv_reconstruction_beats_magnitude():
    proto = conv_net()
    calib, x_test = Dataset({"x": smooth_images(32, 1)}), smooth_images(16, 2)
    errs = {}
    for name, data in (("magnitude", None), ("refit", calib)):
        g = from_proto(proto)
        prune(g, _plan("2:4", prune_importance="magnitude"), data)
        w = _weights(g)
        assert all(check_nm(w[k], 2, 4, axis=1) == [] for k in ("w2", "w3", "w4"))
        errs[name] = _rel_err(proto, g, x_test)
    print("conv 2:4 output error", errs)
    assert errs["refit"] <= 0.7 * errs["magnitude"]


def test_ratio_zero_is_identity():
    proto = conv_net()
    g = from_proto(proto)
    before = to_proto(g).SerializeToString()
    prune(g, _plan("unstructured=0.0"), Dataset({"x": smooth_images(8, 1)}))
    assert to_proto(g).SerializeToString() == before
    x = smooth_images(4, 2)
    assert_close(session(proto).run(None, {"x": x}), session(to_proto(g)).run(None, {"x": x}), rel=0.0)


def test_iterative_and_gradual_at_least_as_good_as_one_shot():
    proto = mlp()
    calib, x_test = Dataset({"x": correlated(256, 1)}), correlated(128, 2)
    errs = {}
    for sched in ("one-shot", "gradual", "iterative"):
        g = from_proto(proto)
        prune(g, _plan("unstructured=0.6", prune_schedule=sched, prune_steps=3), calib)
        g.lint()
        w = _weights(g)
        for k in ("w1", "w2", "w3"):
            assert abs((w[k] == 0).mean() - 0.6) < 0.01
        errs[sched] = _rel_err(proto, g, x_test)
    print("MLP unstructured=0.6 output error by schedule", errs)
    assert errs["iterative"] <= errs["one-shot"]
    assert errs["gradual"] <= 1.05 * errs["one-shot"]


def test_gradual_nm_steps_through_3_of_4():
    g = from_proto(mlp())
    prune(g, _plan("2:4", prune_schedule="gradual", prune_steps=2), Dataset({"x": correlated(64, 1)}))
    w = _weights(g)
    assert check_nm(w["w2"], 2, 4, axis=1) == [] and (w["w2"] == 0).mean() == 0.5


def test_global_unstructured_uses_one_threshold():
    proto = mlp()
    g = from_proto(proto)
    prune(g, _plan("unstructured=0.5", prune_global=True), None)
    orig = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer if t.name in ("w1", "w2", "w3")}
    allw = np.concatenate([np.abs(a).ravel() for a in orig.values()])
    thr = np.sort(allw)[allw.size // 2]
    w = _weights(g)
    for k, a in orig.items():
        np.testing.assert_array_equal(w[k] != 0, np.abs(a) >= thr)
    total = sum((w[k] == 0).sum() for k in orig)
    assert total == allw.size // 2
    ratios = {k: (w[k] == 0).mean() for k in orig}
    assert max(ratios.values()) - min(ratios.values()) > 0.05, ratios


def test_declines_shared_weight_and_conv_transpose():
    rng = np.random.default_rng(0)
    shared = _model([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
                     helper.make_node("MatMul", ["h", "w"], ["y"], name="mm2")],
                    [_t("w", rng.standard_normal((16, 16)))], ["N", 16], ["N", 16])
    g = from_proto(shared)
    prune(g, _plan("2:4"), None)
    assert "shared" in g.meta["prune_skipped"]["mm1"] and "shared" in g.meta["prune_skipped"]["mm2"]
    convt = _model([helper.make_node("ConvTranspose", ["x", "wt"], ["y"], name="convt")],
                   [_t("wt", rng.standard_normal((4, 3, 2, 2)))], ["N", 4, 4, 4], ["N", 3, 5, 5])
    g = from_proto(convt)
    prune(g, _plan("2:4"), None)
    assert "ConvTranspose" in g.meta["prune_skipped"]["convt"]
    g = from_proto(convt)
    prune(g, _plan("unstructured=0.5"), Dataset({"x": rng.standard_normal((4, 4, 4, 4)).astype(np.float32)}))
    assert (_weights(g)["wt"] == 0).mean() == 0.5         # magnitude only: no refit for ConvTranspose
    assert g.meta["prune"]["layers"]["convt"]["reconstructed"] is False


def test_cache_hit_gives_same_model_and_apply_plan_integration():
    proto = mlp()
    calib = Dataset({"x": correlated(64, 1)})
    cache: dict = {}
    g1 = from_proto(proto)
    r1 = prune_pass(g1, _plan("2:4"), calib, cache=cache)
    g2 = from_proto(proto)
    r2 = prune_pass(g2, _plan("2:4"), calib, cache=cache)
    assert r2.details == {"cached": 1} and "cached" not in r1.details
    p1, p2 = to_proto(g1), to_proto(g2)
    assert p1.graph.node == p2.graph.node and p1.graph.initializer == p2.graph.initializer
    assert g2.meta["prune"] == g1.meta["prune"]
    g3 = apply_plan(from_proto(proto), _plan("2:4"), None, calib)
    g3.lint()
    assert check_nm(_weights(g3)["w2"], 2, 4, axis=1) == []


def test_bad_options_raise_config_error():
    with pytest.raises(ConfigError, match="schedule"):
        prune(from_proto(mlp()), _plan("2:4", prune_schedule="sometimes"), None)
    with pytest.raises(ConfigError, match="bogus"):
        prune(from_proto(mlp()), _plan("2:4", prune_bogus=1), None)

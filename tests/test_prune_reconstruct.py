"""SparseGPT N:M (OBS with every group pattern tried), the refit's ridge toward a prior, and the
refit rounds (fixed masks, pruned model's inputs vs dense outputs) against closed forms."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwcompile.data import Dataset
from hwcompile.errors import ConfigError
from hwcompile.ir import from_proto, to_proto
from hwcompile.passes.prune import prune
from hwcompile.contract import PrecisionPlan, PruneSettings
from hwcompile.prune.masks import check_nm, nm_mask
from hwcompile.prune.reconstruct import LayerGram, nm_columns, sparsegpt_weight, refit_weight_bias
from hwcompile.quant.compensate import refit_from_gram, sparsegpt_prune

from conftest import session


def _problem(seed=0, n=400, d=12, out=5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))       # correlated inputs
    return rng.standard_normal((out, d)), X.T @ X


def _err(W, w0, G):
    D = W - w0
    return float(np.einsum("ij,jk,ik->", D, G, D))


def _best_mask_error(w0, G, group, rest_free=True):
    """Brute force: the least error over every 2:4 choice in ``group`` (other columns free), per row."""
    total = 0.0
    d = w0.shape[1]
    for r in range(len(w0)):
        best = np.inf
        for kept in itertools.combinations(group, 2):
            m = np.ones(d, bool)
            m[[c for c in group if c not in kept]] = False
            W = refit_from_gram(G, G @ w0[r:r + 1].T, m[None], 1e-13)
            best = min(best, _err(W, w0[r:r + 1], G))
        total += best
    return total


def test_sparsegpt_one_group_equals_brute_force_over_all_2_4_masks():
    w0, G = _problem()
    W, keep = sparsegpt_prune(w0, G, np.array([[0, 1, 2, 3]]), 2, percdamp=1e-10)
    assert keep[:, :4].sum(axis=1).tolist() == [2] * 5 and keep[:, 4:].all()
    assert np.all(W[~keep] == 0)
    assert _err(W, w0, G) == pytest.approx(_best_mask_error(w0, G, [0, 1, 2, 3]), rel=1e-6)


def test_sparsegpt_group_not_first_still_exact_for_its_group():
    """The group's columns are visited first whatever their index; the others stay free."""
    w0, G = _problem(seed=1)
    group = [3, 7, 8, 11]
    W, keep = sparsegpt_prune(w0, G, np.array([group]), 2, percdamp=1e-10)
    assert _err(W, w0, G) == pytest.approx(_best_mask_error(w0, G, group), rel=1e-6)


def test_sparsegpt_diagonal_hessian_keeps_largest_w2_h_and_leaves_kept_weights():
    rng = np.random.default_rng(2)
    w0 = rng.standard_normal((6, 16))
    h = rng.uniform(0.2, 3.0, 16)
    W, keep = sparsegpt_prune(w0, np.diag(h), np.arange(16).reshape(4, 4), 2, percdamp=1e-12)
    np.testing.assert_array_equal(keep, nm_mask(w0, 2, 4, 1, score=w0 ** 2 * h))
    np.testing.assert_allclose(W, np.where(keep, w0, 0.0), atol=1e-9)


def test_sparsegpt_forced_mask_pruned_first_equals_damped_refit_toward_weight():
    """Pruned columns visited before every kept one: the OBS sweep is the exact optimum of
    (w - w0)^T (H + lambda I) (w - w0) with the pruned entries 0 = the refit with prior w0."""
    w0, G = _problem(seed=3)
    prev = np.ones(w0.shape, bool)
    prev[:, [0, 1]] = False
    W, keep = sparsegpt_prune(w0, G, np.array([[0, 1, 2, 3]]), 2, prev=prev, percdamp=0.05)
    np.testing.assert_array_equal(keep, prev)
    ref = refit_from_gram(G, G @ w0.T, prev, 0.05, prior=w0)
    np.testing.assert_allclose(W, ref, rtol=1e-7, atol=1e-9)


def test_sparsegpt_prev_mask_nests_and_validates_groups():
    w0, G = _problem(seed=4, d=8)
    prev = np.ones(w0.shape, bool)
    prev[:, 2] = False                                    # a 3:4 step before
    W, keep = sparsegpt_prune(w0, G, np.arange(8).reshape(2, 4), 2, prev=prev)
    assert not keep[:, 2].any() and np.all(keep <= prev)
    assert check_nm(np.where(keep, 1.0, 0.0), 2, 4, axis=1) == []
    with pytest.raises(ConfigError):
        sparsegpt_prune(w0, G, np.array([[0, 1, 2, 2]]), 2)


def test_refit_prior_equals_augmented_least_squares():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((30, 6))
    Y = rng.standard_normal((30, 3))
    w0 = rng.standard_normal((3, 6))
    mask = rng.random((3, 6)) > 0.4
    G, C = X.T @ X, X.T @ Y
    ridge = 0.3
    lam = ridge * np.mean(np.diag(G))
    W = refit_from_gram(G, C, mask, ridge, prior=w0)
    for r in range(3):
        f = np.nonzero(mask[r])[0]
        A = np.vstack([X[:, f], np.sqrt(lam) * np.eye(len(f))])
        b = np.concatenate([Y[:, r], np.sqrt(lam) * w0[r, f]])
        np.testing.assert_allclose(W[r, f], np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e-8, atol=1e-10)
        assert np.all(W[r, ~mask[r]] == 0)


def test_nm_columns_of_a_conv_form_groups_along_input_channels():
    shape = (3, 8, 3, 3)
    cols = nm_columns("conv", shape, 1, 4)
    assert cols.shape == (2 * 9, 4)
    rng = np.random.default_rng(6)
    rows = rng.standard_normal((3, 72))
    keep = np.ones(rows.shape, bool)
    for g in cols:                                         # drop the 2 smallest of every group
        small = g[np.argsort(np.abs(rows[:, g]), axis=1)[:, :2]]
        np.put_along_axis(keep, small, False, axis=1)
    w = np.where(keep, rows, 0).reshape(shape)
    assert check_nm(w, 2, 4, axis=1) == []
    np.testing.assert_array_equal(nm_columns("matmul", (8, 5), 1, 4), [[0, 1, 2, 3], [4, 5, 6, 7]])


def test_sparsegpt_weight_with_intercept_matches_refit_weight_bias_when_pruned_first():
    """1x1 conv with 4 inputs: the only group is visited first, the intercept last, so SparseGPT with
    the pruned set forced equals the closed-form refit with intercept (ridge toward the weight)."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((200, 4)) @ rng.standard_normal((4, 4)) + 0.7
    w = rng.standard_normal((3, 4, 1, 1))
    rows = w.reshape(3, 4)
    gram = LayerGram("conv", 1, (X.T @ X)[None], (X.T @ X @ rows.T)[None], float(np.sum((X @ rows.T) ** 2)),
                     len(X), X.sum(0)[None], (X @ rows.T).sum(0)[None])
    prev = np.ones(w.shape, bool)
    prev[:, :2] = False
    new, keep, delta = sparsegpt_weight(w, gram, 2, 4, prev=prev, percdamp=0.02, bias=True)
    ref, ref_delta = refit_weight_bias(w, gram, prev, ridge=0.02, prior=w)
    np.testing.assert_array_equal(keep, prev)
    np.testing.assert_allclose(new, ref, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(delta, ref_delta, rtol=1e-7, atol=1e-9)


# -- through the pass --------------------------------------------------------------------------
def _linear(seed=0):
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"), helper.make_node("Add", ["h", "b"], ["y"])]
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _data(n=300, seed=1):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((4, 16))
    return (rng.standard_normal((n, 4)) @ a + 0.1 * rng.standard_normal((n, 16)) + 0.5).astype(np.float32)


def _prune(**options):
    """PruneSettings from ``prune_<field>=value`` keyword arguments."""
    return PruneSettings.from_dict({k.removeprefix("prune_"): v for k, v in options.items()})


def _plan(sparsity, **notes):
    return PrecisionPlan.uniform("fp32", sparsity, prune=_prune(**notes))


def _rel(proto, g, x):
    ref = session(proto).run(None, {"x": x})[0]
    out = session(to_proto(g)).run(None, {"x": x})[0]
    return float(np.sum((out - ref) ** 2) / np.sum(ref ** 2))


def test_refit_round_on_a_single_layer_changes_nothing_and_bias_is_not_added_twice():
    """One layer: its inputs do not depend on pruning, so a refit round reproduces the one-shot refit
    exactly; the bias change is relative to the dense bias (not stacked round over round)."""
    proto, x = _linear(), _data()
    outs = []
    for rounds in (0, 2):
        g = from_proto(proto)
        prune(g, _plan("2:4", prune_importance="magnitude", prune_refit_rounds=rounds), Dataset({"x": x}))
        outs.append({v.name: v.const_value.numpy() for v in g.main.initializers.values()})
    np.testing.assert_allclose(outs[1]["w"], outs[0]["w"], rtol=1e-4, atol=1e-4)   # float32 batch products
    np.testing.assert_allclose(outs[1]["b"], outs[0]["b"], rtol=1e-4, atol=1e-4)
    assert np.abs(outs[0]["b"] - numpy_helper.to_array(_linear().graph.initializer[1])).max() > 0.05   # a real change


def test_sparsegpt_through_the_pass_is_valid_2_4_and_its_refit_lowers_the_calibration_error():
    """On the calibration rows the refit on SparseGPT's mask can only lower SparseGPT's error (it is
    the least-squares optimum for that mask); both results are valid 2:4."""
    proto, x = _linear(3), _data(seed=2)
    errs = {}
    for name, notes in (("sparsegpt", {"prune_importance": "sparsegpt", "prune_ridge": 1e-6}),
                        ("sparsegpt-no-refit", {"prune_importance": "sparsegpt", "prune_sparsegpt_refit": False})):
        g = from_proto(proto)
        prune(g, _plan("2:4", **notes), Dataset({"x": x}))
        g.lint()
        w = {v.name: v.const_value.numpy() for v in g.main.initializers.values()}["w"]
        assert check_nm(w, 2, 4, axis=0) == [] and (w != 0).mean() == 0.5
        rep = g.meta["prune"]["layers"]["fc"]
        assert rep["mask"] == "sparsegpt"
        errs[name] = _rel(proto, g, x)
        if name == "sparsegpt":
            assert rep["error_refit"] <= rep["error_sparsegpt"] + 1e-9
    assert errs["sparsegpt"] <= errs["sparsegpt-no-refit"] + 1e-7
    assert errs["sparsegpt-no-refit"] < 0.5


def test_sparsegpt_needs_calibration_data():
    g = from_proto(_linear())
    with pytest.raises(ConfigError):
        prune(g, _plan("2:4", prune_importance="sparsegpt"), None)

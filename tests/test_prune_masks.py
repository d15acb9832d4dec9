"""Pruning masks: hand-made cases, loop references and hypothesis properties."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hwcompile.errors import ConfigError, DataError, UnsupportedError
from hwcompile.prune.masks import (
    NMViolation,
    check_nm,
    global_magnitude_masks,
    magnitude_mask,
    nm_mask,
    reduction_axis,
    wanda_scores,
)


def _nm_reference(score: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """Plain loops: for each group, keep the n largest, ties toward the lower index."""
    s = np.moveaxis(score, axis, -1)
    keep = np.zeros(s.shape, dtype=bool)
    for idx in itertools.product(*(range(d) for d in s.shape[:-1])):
        for g in range(0, s.shape[-1], m):
            group = list(s[idx][g:g + m])
            order = sorted(range(len(group)), key=lambda j: (-group[j], j))[:n]
            for j in order:
                keep[idx + (g + j,)] = True
    return np.moveaxis(keep, -1, axis)


def test_nm_mask_hand_made():
    w = np.array([[1.0, -4.0, 3.0, 2.0, 0.5, 0.1, -0.2, 0.3]])
    np.testing.assert_array_equal(nm_mask(w, 2, 4, axis=1), [[0, 1, 1, 0, 1, 0, 0, 1]])
    np.testing.assert_array_equal(nm_mask(w, 1, 4, axis=1), [[0, 1, 0, 0, 1, 0, 0, 0]])
    np.testing.assert_array_equal(nm_mask(np.ones((1, 4)), 2, 4, axis=1), [[1, 1, 0, 0]])  # ties
    # along axis 0 the groups are columns
    np.testing.assert_array_equal(nm_mask(w.reshape(2, 4).T, 2, 4, axis=0),
                                  [[0, 1], [1, 0], [1, 0], [0, 1]])


def test_nm_mask_conv_groups_input_channels_at_each_position():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 8, 2, 2)).astype(np.float32)
    ax = reduction_axis("Conv", w.shape, {})
    assert ax == 1
    mask = nm_mask(w, 2, 4, axis=ax)
    for k, r, s in itertools.product(range(3), range(2), range(2)):
        for g in (0, 4):
            chans = np.abs(w[k, g:g + 4, r, s])
            assert set(np.nonzero(mask[k, g:g + 4, r, s])[0]) == set(np.argsort(-chans)[:2])
    assert check_nm(w * mask, 2, 4, axis=1) == []
    assert check_nm(w, 2, 4, axis=1) != []


def test_nm_mask_length_not_multiple_of_m():
    w = np.arange(1.0, 7.0).reshape(1, 6)
    with pytest.raises(ConfigError, match="layer3.weight"):
        nm_mask(w, 2, 4, axis=1, name="layer3.weight")
    np.testing.assert_array_equal(nm_mask(w, 2, 4, axis=1, pad=True), [[0, 0, 1, 1, 1, 1]])
    w5 = np.array([[5.0, 1, 2, 3, -9]])
    np.testing.assert_array_equal(nm_mask(w5, 2, 4, axis=1, pad=True), [[1, 0, 0, 1, 1]])
    np.testing.assert_array_equal(nm_mask(w5, 3, 4, axis=1, pad=True), [[1, 0, 1, 1, 1]])


def test_nm_mask_with_wanda_scores():
    w = np.array([[1.0, 2.0, 3.0, 4.0]])
    scores = wanda_scores(w, np.array([10.0, 1.0, 1.0, 1.0]), axis=1)
    np.testing.assert_allclose(scores, [[10.0, 2.0, 3.0, 4.0]])
    np.testing.assert_array_equal(nm_mask(w, 2, 4, axis=1, score=scores), [[1, 0, 0, 1]])
    # MatMul B [K, N]: the norms index K (axis 0)
    b = np.array([[1.0, -1.0], [2.0, 0.5]])
    np.testing.assert_allclose(wanda_scores(b, np.array([3.0, 0.5]), axis=0), [[3.0, 3.0], [1.0, 0.25]])
    with pytest.raises(ConfigError, match="fc"):
        wanda_scores(b, np.ones(3), axis=0, name="fc")
    with pytest.raises(DataError):
        wanda_scores(b, np.array([1.0, np.nan]), axis=0)


def test_nm_mask_bad_args():
    w = np.ones((2, 8))
    with pytest.raises(ConfigError):
        nm_mask(w, 4, 4, axis=1)
    with pytest.raises(ConfigError):
        nm_mask(w, 2, 4, axis=2)
    with pytest.raises(ConfigError, match="score shape"):
        nm_mask(w, 2, 4, axis=1, score=np.ones((8, 2)))
    with pytest.raises(DataError):
        nm_mask(np.array([[1.0, np.nan, 0, 0]]), 2, 4, axis=1)


def test_check_nm_int8_reports_positions():
    q = np.array([[1, 0, 0, 2, 3, 4, 0, 5],
                  [0, 0, 7, 0, -1, -1, -1, 0]], dtype=np.int8)
    assert check_nm(q, 2, 4, axis=1) == [NMViolation((0, 4), 3), NMViolation((1, 4), 3)]
    assert check_nm(q.T, 2, 4, axis=0) == [NMViolation((4, 0), 3), NMViolation((4, 1), 3)]
    assert check_nm(q, 3, 4, axis=1) == []
    # a trailing partial group is checked as zero-padded
    assert check_nm(np.array([0, 0, 0, 0, 1, 1, 1], dtype=np.int8), 2, 4) == [NMViolation((4,), 3)]


def test_magnitude_mask_exact_count_and_ties():
    w = np.array([[0.1, -5.0, 2.0], [-0.3, 0.0, 4.0]])
    np.testing.assert_array_equal(magnitude_mask(w, 0.5), [[0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(magnitude_mask(np.ones(4), 0.5), [1, 1, 0, 0])
    assert magnitude_mask(w, 0.0).all() and not magnitude_mask(w, 1.0).any()
    assert magnitude_mask(np.ones(10), 0.25).sum() == 7  # round(2.5) -> 3 pruned (half up)
    with pytest.raises(ConfigError, match="sparsity"):
        magnitude_mask(w, 1.5)


def test_global_magnitude_masks_share_one_threshold():
    rng = np.random.default_rng(1)
    ws = {"a": rng.standard_normal((8, 8)), "b": 0.1 * rng.standard_normal(50)}
    masks = global_magnitude_masks(ws, 0.6)
    assert sum(int(m.sum()) for m in masks.values()) == 114 - round(0.6 * 114)
    kept = np.concatenate([np.abs(ws[k])[masks[k]] for k in ws])
    pruned = np.concatenate([np.abs(ws[k])[~masks[k]] for k in ws])
    assert kept.min() >= pruned.max()
    assert masks["b"].mean() < masks["a"].mean()  # small-weight layer loses more
    assert masks["a"].shape == (8, 8)


def test_reduction_axis():
    assert reduction_axis("Conv", (64, 32, 3, 3), {}) == 1
    assert reduction_axis("Conv", (64, 32, 3), {"group": 1}) == 1
    assert reduction_axis("MatMul", (128, 256), {}) == 0
    assert reduction_axis("MatMul", (4, 128, 256), {}) == 1
    assert reduction_axis("Gemm", (256, 128), {"transB": 1}) == 1
    assert reduction_axis("Gemm", (128, 256), {"transB": 0}) == 0
    assert reduction_axis("Gemm", (128, 256), {}) == 0
    with pytest.raises(UnsupportedError, match="Relu"):
        reduction_axis("Relu", (4,), {})
    with pytest.raises(ConfigError, match="c1.weight"):
        reduction_axis("Conv", (4, 4), {}, name="c1.weight")


@st.composite
def _nm_case(draw):
    n, m = draw(st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (2, 8), (4, 8)]))
    groups = draw(st.integers(1, 3))
    other = draw(st.integers(1, 3))
    axis = draw(st.integers(0, 1))
    shape = (groups * m, other) if axis == 0 else (other, groups * m)
    elems = draw(st.sampled_from([st.floats(-100, 100, allow_nan=False, width=32), st.integers(-3, 3)]))
    w = draw(hnp.arrays(np.float32, shape, elements=elems))
    return w, n, m, axis


@settings(max_examples=150, deadline=None)
@given(_nm_case())
def test_nm_mask_properties(case):
    w, n, m, axis = case
    mask = nm_mask(w, n, m, axis=axis)
    assert mask.shape == w.shape and mask.dtype == bool
    assert check_nm(np.where(mask, w, 0), n, m, axis=axis) == []
    assert check_nm(mask.astype(np.int8), n, m, axis=axis) == []  # exactly n kept -> also <= n
    counts = np.moveaxis(mask, axis, -1).reshape(-1, m).sum(axis=1)
    assert (counts == n).all()
    a = np.moveaxis(np.abs(w.astype(np.float64)), axis, -1).reshape(-1, m)
    k = np.moveaxis(mask, axis, -1).reshape(-1, m)
    for row, keep in zip(a, k):
        assert row[keep].min() >= row[~keep].max()
    np.testing.assert_array_equal(mask, _nm_reference(np.abs(w.astype(np.float64)), n, m, axis))


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 40), elements=st.floats(-10, 10, allow_nan=False)),
       st.floats(0, 1))
def test_magnitude_mask_properties(w, sparsity):
    mask = magnitude_mask(w, sparsity)
    assert mask.sum() == w.size - int(np.floor(sparsity * w.size + 0.5))
    if mask.any() and (~mask).any():
        assert np.abs(w[mask]).min() >= np.abs(w[~mask]).max()

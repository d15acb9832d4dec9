"""Streaming activation statistics and the observers that turn them into a clipping range.

``TensorStats`` keeps the count, min, max and an int64 histogram of ``x`` over ``[-R, R)`` with a
fixed number ``B`` of equal bins (``B`` a power of two, default 2048). Its memory never grows with
the number of samples, and it is *exactly mergeable*: the result is identical, bit for bit, however
the samples are ordered, batched, chunked or split across workers, because

* ``R = 2**e`` is the smallest power of two strictly above the largest ``|x|`` seen so far (i.e.
  ``2**ceil(log2 max|x|)``, doubled when ``max|x|`` is itself a power of two, so no value sits on the
  open top edge), a function of the global max alone; when a batch exceeds it, ``R`` doubles (repeatedly) and
  adjacent bin pairs are added: bin ``i`` of range ``R`` lies exactly inside bin ``B/4 + i//2`` of
  range ``2R`` (grids nest), so regridding loses nothing a direct binning at ``2R`` would keep;
* a value's bin is ``B/2 + floor(x * (B/2) / R)``, computed as a multiplication by a power of two,
  which is exact in floating point, so the same value always lands in the same bin;
* counts are integers, so adding histograms is associative and commutative; min/max/count too.

Observers (all read only the statistics): ``minmax``; ``percentile`` (on ``|x|`` when symmetric,
per side otherwise, linear inside a bin); ``entropy`` (TensorRT-style KL-divergence calibration
with ``2**(bits-1)`` levels on ``|x|``, or ``2**bits`` for one-signed data quantized asymmetrically);
``mse`` (range minimizing the expected squared error of the real saturating quantizer, with
the density taken uniform inside each bin so every bin's error integral is exact). Each returns a
range containing 0. Entry point: :func:`calibrate_range`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["TensorStats", "calibrate_range", "minmax", "percentile", "entropy", "mse", "METHODS"]

METHODS = ("minmax", "percentile", "entropy", "mse")


@dataclass
class TensorStats:
    """Mergeable statistics of one tensor: count, min, max, histogram of x on ``[-2**exponent, 2**exponent)``.

    ``exponent`` is None while only zeros were seen (zeros sit in bin ``B/2`` on every grid).
    """

    bins: int = 2048
    name: str = ""
    count: int = 0
    min: float = math.inf
    max: float = -math.inf
    exponent: int | None = None
    hist: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    nonfinite: int = 0  # inf/NaN values seen (left out of every other statistic)

    def __post_init__(self) -> None:
        if self.bins < 4 or self.bins & (self.bins - 1):
            raise ConfigError(f"histogram bins must be a power of two >= 4, got {self.bins}",
                              where="histogram_bins", hint="use e.g. 2048")
        if self.hist is None:
            self.hist = np.zeros(self.bins, dtype=np.int64)
        self.hist = np.asarray(self.hist, dtype=np.int64)
        if self.hist.shape != (self.bins,):
            raise ConfigError(f"histogram has {self.hist.shape} bins, expected {self.bins}", where=self.name or "hist")

    # -- grid ----------------------------------------------------------------------------
    @property
    def R(self) -> float:
        """Half-width of the histogram range (0 while only zeros were seen)."""
        return 0.0 if self.exponent is None else math.ldexp(1.0, self.exponent)

    @property
    def bin_width(self) -> float:
        return 2.0 * self.R / self.bins

    def edges(self) -> np.ndarray:
        """The ``bins + 1`` bin edges, from ``-R`` to ``R``."""
        return np.linspace(-self.R, self.R, self.bins + 1)

    def abs_hist(self) -> tuple[np.ndarray, np.ndarray]:
        """Histogram of ``|x|``: (counts [B/2], edges [B/2 + 1] from 0 to R); folds bin pairs ±."""
        h = self.bins // 2
        return self.hist[h:] + self.hist[h - 1::-1], np.linspace(0.0, self.R, h + 1)

    @property
    def absmax(self) -> float:
        return max(-self.min, self.max) if self.count else 0.0

    # -- streaming -----------------------------------------------------------------------
    def update(self, x: Any) -> "TensorStats":
        """Fold a batch of values (any shape) into the statistics. Returns self."""
        x = np.asarray(x, dtype=np.float64).ravel()
        finite = np.isfinite(x)
        if not finite.all():  # counted, not binned: the quantize pass keeps such a tensor float
            self.nonfinite += int(x.size - finite.sum())
            x = x[finite]
        if x.size == 0:
            return self
        lo, hi = float(x.min()), float(x.max())
        amax = max(-lo, hi)
        half = self.bins // 2
        if amax > 0.0:
            self._grow(math.frexp(amax)[1])  # 2**e > amax >= 2**(e-1)
            t = np.floor(np.ldexp(x, int(math.log2(half)) - self.exponent))  # exact power-of-two scaling
            self.hist += np.bincount((t + half).astype(np.int64), minlength=self.bins)
        else:
            self.hist[half] += x.size
        self.count += int(x.size)
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        return self

    def merge(self, other: "TensorStats") -> "TensorStats":
        """Add ``other``'s statistics into self (other is unchanged). Returns self."""
        if other.bins != self.bins:
            raise ConfigError(f"cannot merge histograms of {self.bins} and {other.bins} bins",
                              where=self.name or "merge", hint="collect both with the same histogram_bins")
        self.nonfinite += other.nonfinite
        if other.count == 0:
            return self
        other = other.copy()
        if other.exponent is not None:
            self._grow(other.exponent)
        if self.exponent is not None:
            other._grow(self.exponent)
        self.hist += other.hist
        self.count += other.count
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        return self

    def _grow(self, exponent: int) -> None:
        if self.exponent is None:
            self.exponent = exponent  # only the zero bin can be non-empty: it maps to itself
            return
        q = self.bins // 4
        while self.exponent < exponent:
            pairs = self.hist.reshape(-1, 2).sum(axis=1)
            self.hist = np.zeros(self.bins, dtype=np.int64)
            self.hist[q:3 * q] = pairs
            self.exponent += 1

    def copy(self) -> "TensorStats":
        return TensorStats(self.bins, self.name, self.count, self.min, self.max, self.exponent, self.hist.copy(),
                           self.nonfinite)

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (bins stored as a list of ints)."""
        return {"format": "hwcompile.tensorstats/1", "bins": self.bins, "name": self.name, "count": self.count,
                "min": self.min if self.count else None, "max": self.max if self.count else None,
                "exponent": self.exponent, "hist": [int(v) for v in self.hist], "nonfinite": self.nonfinite}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TensorStats":
        if not isinstance(d, dict) or d.get("format") != "hwcompile.tensorstats/1":
            raise ConfigError("not TensorStats data (format 'hwcompile.tensorstats/1')", where="stats.format")
        try:
            hist = np.asarray(d["hist"], dtype=np.int64)
            count = int(d["count"])
            st = cls(int(d["bins"]), str(d.get("name", "")), count,
                     math.inf if d["min"] is None else float(d["min"]),
                     -math.inf if d["max"] is None else float(d["max"]),
                     None if d["exponent"] is None else int(d["exponent"]), hist, int(d.get("nonfinite", 0)))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"bad TensorStats data: {e}", where=str(d.get("name", "stats"))) from None
        if int(hist.sum()) != count or np.any(hist < 0):
            raise ConfigError("histogram counts do not add up to count", where=st.name or "stats.hist")
        return st


# -- observers ----------------------------------------------------------------------------------

def _nonempty(stats: TensorStats) -> None:
    if stats.count == 0:
        raise DataError("no calibration values were seen", where=stats.name or "tensor",
                        hint="feed calibration data that reaches this tensor")


def minmax(stats: TensorStats, symmetric: bool = False) -> tuple[float, float]:
    """Observed range (widened to contain 0); symmetric: ``±max|x|``."""
    _nonempty(stats)
    if symmetric:
        return -stats.absmax, stats.absmax
    return min(stats.min, 0.0), max(stats.max, 0.0)


def _quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """Value below which a fraction ``q`` of the mass lies, linear inside the bin."""
    cum = np.cumsum(counts)
    target = q * cum[-1]
    i = int(np.searchsorted(cum, target, side="left"))
    i = min(i, len(counts) - 1)
    prev = cum[i - 1] if i else 0
    frac = (target - prev) / counts[i] if counts[i] else 0.0
    return float(edges[i] + frac * (edges[i + 1] - edges[i]))


def percentile(stats: TensorStats, p: float = 99.99, symmetric: bool = False) -> tuple[float, float]:
    """Clip at the ``p``-th percentile of ``|x|`` (symmetric) or at ``100-p`` / ``p`` of ``x``."""
    _nonempty(stats)
    if not 50.0 < p <= 100.0:
        raise ConfigError(f"percentile must be in (50, 100], got {p}", where="percentile")
    if stats.exponent is None:
        return 0.0, 0.0
    if symmetric:
        counts, edges = stats.abs_hist()
        t = min(_quantile(counts, edges, p / 100.0), stats.absmax)
        return -t, t
    edges = stats.edges()
    lo = max(_quantile(stats.hist, edges, 1.0 - p / 100.0), stats.min)
    hi = min(_quantile(stats.hist, edges, p / 100.0), stats.max)
    return min(lo, 0.0), max(hi, 0.0)


_percentile_range = percentile  # calibrate_range's argument shadows the name


def _kl_threshold(hist: np.ndarray, edges: np.ndarray, levels: int) -> float:
    """TensorRT's KL calibration on a histogram of |x|: the edge i minimizing KL(P_i || Q_i)."""
    hist = hist.astype(np.float64)
    nz = np.nonzero(hist)[0]
    last = int(nz[-1]) + 1
    if last <= levels:
        return float(edges[last])
    suffix = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # suffix[i] = sum(hist[i:])
    best_kl, best_i = math.inf, last
    for i in range(levels, last + 1):
        ref = hist[:i]
        p = ref.copy()
        p[-1] += suffix[i]
        chunk = np.minimum(np.arange(i) // (i // levels), levels - 1)
        used = (p != 0).astype(np.float64)
        qsum = np.bincount(chunk, weights=ref, minlength=levels)
        norm = np.bincount(chunk, weights=used, minlength=levels)
        q = np.where(used > 0, qsum[chunk] / np.maximum(norm[chunk], 1.0), 0.0)
        kl = _kl(p, q)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(edges[best_i])


def _kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    """KL(P||Q) of unnormalized histograms, with onnxruntime/TensorRT eps smoothing of empty Q bins."""
    p = p / p.sum()
    qs = q.sum()
    if qs == 0:
        return math.inf
    q = q / qs
    zeros = (q == 0) & (p > 0)
    if zeros.any():  # move eps mass onto empty bins, taken proportionally from the others
        n0, n1 = int(zeros.sum()), int((q > 0).sum())
        q = np.where(q == 0, eps, q - eps * n0 / n1)
        q = np.maximum(q, 1e-12)
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def entropy(stats: TensorStats, bits: int = 8, symmetric: bool = False) -> tuple[float, float]:
    """KL-divergence calibration (TensorRT style) on the |x| histogram.

    Levels are ``2**(bits-1)`` (one sign's share of the grid), or ``2**bits`` when the data has one
    sign and is quantized asymmetrically (the whole grid then covers ``[0, T]``). Asymmetric mixed-sign
    data gets the symmetric threshold intersected with the observed range.
    """
    _nonempty(stats)
    if stats.exponent is None:
        return 0.0, 0.0
    one_sided = stats.min >= 0.0 or stats.max <= 0.0
    levels = 2**bits if (not symmetric and one_sided) else 2 ** (bits - 1)
    counts, edges = stats.abs_hist()
    t = min(_kl_threshold(counts, edges, levels), stats.absmax)
    if symmetric:
        return -t, t
    return min(max(-t, stats.min), 0.0), max(min(t, stats.max), 0.0)


def _saw_integral(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Antiderivative of (x - s*round(x/s))**2: s^3 * (n/12 + (r^3 + 1/8)/3), u=x/s, n=floor(u+1/2), r=u-n."""
    u = x / s
    n = np.floor(u + 0.5)
    r = u - n
    return s**3 * (n / 12.0 + (r**3 + 0.125) / 3.0)


def _expected_sq_error(edges: np.ndarray, counts: np.ndarray, s: np.ndarray, kmin: np.ndarray,
                       kmax: np.ndarray) -> np.ndarray:
    """Mean squared error of quantizing to ``s * [kmin..kmax]`` (saturating), density uniform per bin.

    edges [m+1] and counts [m] of contiguous bins; s, kmin, kmax: candidates [ncand, 1]. Returns [ncand].
    Below ``kmin*s`` and above ``kmax*s`` the error is the squared distance to the end point.
    """
    lo_b, hi_b = kmin * s, kmax * s
    x = edges[None, :]
    F = (_saw_integral(np.clip(x, lo_b, hi_b), s) - _saw_integral(lo_b, s)
         + np.minimum(x - lo_b, 0.0) ** 3 / 3.0 + np.maximum(x - hi_b, 0.0) ** 3 / 3.0)
    return (np.diff(F, axis=1) * (counts / np.diff(edges))).sum(axis=1) / counts.sum()


def _argmin_coarse_fine(cand: np.ndarray, cost: Callable[[np.ndarray], np.ndarray]) -> float:
    """Minimize ``cost`` over sorted candidates: every k-th (k ~ sqrt(n)), then all within k of the best."""
    k = max(1, int(math.isqrt(len(cand))))
    coarse = np.unique(np.append(np.arange(0, len(cand), k), len(cand) - 1))
    best = int(coarse[int(np.argmin(cost(cand[coarse][:, None])))])
    fine = np.arange(max(0, best - k), min(len(cand), best + k + 1))
    return float(cand[fine[int(np.argmin(cost(cand[fine][:, None])))]])


def mse(stats: TensorStats, bits: int = 8, symmetric: bool = False, rounds: int = 4) -> tuple[float, float]:
    """Range minimizing the expected quantization MSE of the deployed quantizer.

    Symmetric (signed, ``s = T / (2**(b-1)-1)``, saturation at ``-2**(b-1)`` and ``2**(b-1)-1``):
    ``T`` over the |x| bin edges up to ``max|x|``. Asymmetric (``[0, 2**b - 1]``, zero point rounded
    as in ``qparams_from_range``): coordinate descent over ``hi`` then ``lo`` on bin edges, ``rounds``
    times. Each 1-D search is coarse-to-fine (every ~sqrt(n)-th edge, then every edge near the best).
    """
    _nonempty(stats)
    if stats.exponent is None:
        return 0.0, 0.0
    e = stats.edges()
    nz = np.nonzero(stats.hist)[0]
    i0, i1 = int(nz[0]), int(nz[-1]) + 1
    edges, counts = e[i0:i1 + 1], stats.hist[i0:i1].astype(np.float64)
    if symmetric:
        half = 2 ** (bits - 1) - 1
        amax = stats.absmax
        cand = np.unique(np.append(e[(e > 0) & (e < amax)], amax))
        t = _argmin_coarse_fine(cand, lambda t: _expected_sq_error(
            edges, counts, t / half, np.full_like(t, -half - 1.0), np.full_like(t, float(half))))
        return -t, t
    levels = 2**bits - 1

    def cost(los: np.ndarray, his: np.ndarray) -> np.ndarray:
        s = np.maximum(his - los, 1e-30) / levels
        zp = np.clip(np.rint(-los / s), 0, levels)
        return _expected_sq_error(edges, counts, s, -zp, levels - zp)

    lo, hi = min(stats.min, 0.0), max(stats.max, 0.0)
    hi_cand = np.append(e[(e > 0) & (e < hi)], hi) if hi > 0 else None
    lo_cand = np.append(e[(e < 0) & (e > lo)], lo) if lo < 0 else None
    for _ in range(rounds):
        prev = (lo, hi)
        if hi_cand is not None:
            hi = _argmin_coarse_fine(hi_cand, lambda h: cost(np.full_like(h, lo), h))
        if lo_cand is not None:
            lo = _argmin_coarse_fine(lo_cand, lambda l: cost(l, np.full_like(l, hi)))
        if (lo, hi) == prev:
            break
    return lo, hi


def calibrate_range(stats: TensorStats, method: str, bits: int = 8, symmetric: bool = False,
                    percentile: float = 99.99) -> tuple[float, float]:
    """Clipping range ``(lo, hi)`` (always ``lo <= 0 <= hi``; ``lo == -hi`` when symmetric)."""
    if stats.nonfinite:
        raise DataError(f"activation has {stats.nonfinite} inf/NaN value(s) in calibration; it cannot be "
                        "quantized", where=stats.name or "tensor", hint="keep this tensor in float")
    if method == "minmax":
        return minmax(stats, symmetric)
    if method == "percentile":
        return _percentile_range(stats, percentile, symmetric)
    if method == "entropy":
        return entropy(stats, bits, symmetric)
    if method == "mse":
        return mse(stats, bits, symmetric)
    raise ConfigError(f"unknown calibration method {method!r}", where="calib_method", hint=f"one of {METHODS}")

"""Loaders for the real evaluation data in ``../shared/data`` (read-only, never copied).

The folder is ``<repo>/../shared/data`` unless the environment variable ``HWCOMPILE_DATA`` names
another one. Layout (see its README.md):

- ``imagenet-1k-samples/``: 1000 RGB JPEGs, 224x224, one per class; ``labels.tsv`` has
  ``file, class_index, synset, name``.
- ``mnist/t10k-{images-idx3,labels-idx1}-ubyte.gz``: the MNIST test set in IDX format.
- ``stsb/sts-test.csv``: tab-separated ``genre, file, year, id, score, sentence1, sentence2[, ...]``.

Only numpy and pillow are needed.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from hwcompile.errors import DataError

__all__ = ["data_dir", "imagenet_samples", "stsb_test", "mnist_test"]

_SPLITS = ("even", "odd", "all")
_NORMALIZE = ("halfhalf", "imagenet", "none")
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def data_dir() -> Path:
    """``$HWCOMPILE_DATA`` if set, else ``<repo root>/../shared/data``."""
    env = os.environ.get("HWCOMPILE_DATA")
    d = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not d.is_dir():
        raise DataError("evaluation data folder not found", where=str(d),
                        hint="set HWCOMPILE_DATA to the folder holding imagenet-1k-samples/, mnist/, stsb/")
    return d


def _need(path: Path) -> Path:
    if not path.exists():
        raise DataError("data file not found", where=str(path), hint="check HWCOMPILE_DATA / ../shared/data")
    return path


def imagenet_samples(split: str = "all", normalize: str = "halfhalf",
                     limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 NCHW [n, 3, 224, 224] and labels int64 [n], in class-index order.

    ``split``: 'even' / 'odd' keep images whose class index is even / odd (use one to calibrate,
    the other to evaluate), 'all' keeps all 1000. ``normalize``: 'halfhalf' gives
    ``(x/255 - 0.5) / 0.5`` in [-1, 1] (what EfficientNet-Lite wants), 'imagenet' gives
    ``(x/255 - mean) / std`` with the usual ImageNet statistics, 'none' gives ``x/255``.
    ``limit`` keeps the first ``limit`` images of the split.
    """
    if split not in _SPLITS:
        raise DataError(f"unknown split {split!r}", where="split", hint=f"use one of {_SPLITS}")
    if normalize not in _NORMALIZE:
        raise DataError(f"unknown normalisation {normalize!r}", where="normalize", hint=f"use one of {_NORMALIZE}")
    from PIL import Image

    root = data_dir() / "imagenet-1k-samples"
    rows = []
    for line in _need(root / "labels.tsv").read_text().splitlines()[1:]:
        if line.strip():
            name, idx = line.split("\t")[:2]
            rows.append((name, int(idx)))
    rows.sort(key=lambda r: r[1])
    if split != "all":
        rows = [r for r in rows if r[1] % 2 == (0 if split == "even" else 1)]
    rows = rows[:limit] if limit is not None else rows
    x = np.empty((len(rows), 3, 224, 224), dtype=np.float32)
    for i, (name, _) in enumerate(rows):
        with Image.open(_need(root / name)) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        if a.shape != (224, 224, 3):
            raise DataError(f"expected a 224x224 RGB image, got {a.shape}", where=str(root / name))
        if normalize == "halfhalf":
            a = (a - 0.5) / 0.5
        elif normalize == "imagenet":
            a = (a - _IMAGENET_MEAN) / _IMAGENET_STD
        x[i] = a.transpose(2, 0, 1)
    y = np.array([r[1] for r in rows], dtype=np.int64)
    return x, y


def imagenet_calib_eval(quick: bool = False):
    """The EfficientNet benchmarks' split: (calibration Dataset of 100 even-class images, every
    fifth; odd-class eval images, labels; the first 100 of them when ``quick``)."""
    from hwcompile.data import Dataset

    xc, _ = imagenet_samples("even")
    xe, ye = imagenet_samples("odd")
    if quick:
        xe, ye = xe[:100], ye[:100]
    return Dataset({"input": xc[::5][:100]}, source="imagenet-even-100"), xe, ye


def stsb_test() -> list[tuple[str, str, float]]:
    """STS Benchmark test pairs ``(sentence1, sentence2, score in [0, 5])``, 1,379 of them.

    Split on tabs only: sentences contain quotes, so no CSV quoting is applied.
    """
    path = _need(data_dir() / "stsb" / "sts-test.csv")
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) < 7:
            raise DataError(f"expected >= 7 tab-separated fields, got {len(f)}", where=f"{path}:{n}")
        pairs.append((f[5], f[6], float(f[4])))
    return pairs


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """IDX: big-endian int32 magic (0x0000_08_NN: ubyte, NN dims), NN int32 sizes, then uint8 data."""
    raw = gzip.decompress(_need(path).read_bytes())
    head = np.frombuffer(raw[: 4 * (1 + ndim)], dtype=">i4")
    if int(head[0]) != magic:
        raise DataError(f"bad IDX magic {int(head[0]):#x}, expected {magic:#x}", where=str(path))
    shape = tuple(int(s) for s in head[1:])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + ndim))
    if data.size != int(np.prod(shape)):
        raise DataError(f"IDX payload has {data.size} bytes, header says {shape}", where=str(path))
    return data.reshape(shape)


def mnist_test(n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST test images float32 [n, 1, 28, 28] scaled to [0, 1] and labels int64 [n] (first ``n``)."""
    root = data_dir() / "mnist"
    x = _read_idx(root / "t10k-images-idx3-ubyte.gz", 0x0803, 3)
    y = _read_idx(root / "t10k-labels-idx1-ubyte.gz", 0x0801, 1)
    if len(x) != len(y):
        raise DataError(f"{len(x)} images but {len(y)} labels", where=str(root))
    if n is not None:
        x, y = x[:n], y[:n]
    return (x.astype(np.float32) / 255.0)[:, None], y.astype(np.int64)

"""Feeds: calibration and evaluation data checked against the model's inputs.

On the CLI data is an ``.npz`` with one array per model input name (first axis = samples) plus
optional label arrays; in the API any iterable of feed dicts works. Batches are yielded lazily so
calibration streams over data that need not fit in memory at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from .errors import DataError
from .ir import Graph

__all__ = ["Dataset", "load_npz", "check_feeds", "input_specs"]

_NP_DTYPES = {"FLOAT": np.float32, "FLOAT16": np.float16, "INT64": np.int64, "INT32": np.int32,
              "DOUBLE": np.float64, "BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8}


def input_specs(graph: Graph) -> dict[str, tuple[list, type]]:
    specs = {}
    for v in graph.main.inputs:
        dims = list(v.shape.dims) if v.shape is not None else None
        specs[v.name] = (dims, _NP_DTYPES.get(v.dtype.name if v.dtype else "FLOAT", np.float32))
    return specs


@dataclass
class Dataset:
    """Arrays keyed by input name (axis 0 = samples) plus optional labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, batch_size: int = 1, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        n = len(self) if limit is None else min(limit, len(self))
        for s in range(0, n, batch_size):
            yield {k: v[s:min(s + batch_size, n)] for k, v in self.inputs.items()}

    def canonical(self) -> "Dataset":
        """The same samples in an order fixed by their content (sha256 of each sample's arrays and
        label), so nothing downstream depends on the order of the samples in the file."""
        import hashlib

        def digest(i: int) -> bytes:
            h = hashlib.sha256()
            for k in sorted(self.inputs):
                h.update(np.ascontiguousarray(self.inputs[k][i]).tobytes())
            if self.labels is not None:
                h.update(np.ascontiguousarray(self.labels[i]).tobytes())
            return h.digest()

        order = sorted(range(len(self)), key=digest)
        return Dataset({k: v[order] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[order], self.source)

    def take(self, n: int) -> "Dataset":
        return Dataset({k: v[:n] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[:n], self.source)


def load_npz(path: str | Path, graph: Graph, *, labels: str | None = None, field: str = "--calib") -> Dataset:
    p = Path(path)
    if not p.is_file():
        raise DataError("data file not found", where=f"{field} {p}")
    arrays = _read_npz(p, field)
    label_arr = None
    if labels is not None:
        if labels not in arrays:
            raise DataError(f"no array named {labels!r} (has {sorted(arrays)})", where=f"--labels")
        label_arr = arrays.pop(labels)
    specs = input_specs(graph)
    missing = [k for k in specs if k not in arrays]
    if missing:  # name what the file holds, not what matched
        raise DataError(f"no data for model input(s) {missing} (the file has {sorted(arrays)})",
                        where=f"{field} {p.name}")
    inputs = {k: arrays[k] for k in specs if k in arrays}
    ds = Dataset(inputs, label_arr, str(p))
    check_feeds(ds.inputs, graph, field=f"{field} {p.name}", batched=True)
    return ds


def _read_npz(p: Path, field: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz archive, never unpickling: a DataError says what the file is instead."""
    where = f"{field} {p}"
    hint = "save one array per model input with numpy.savez(path, INPUT_NAME=array)"
    with open(p, "rb") as f:
        head = f.read(6)
    if head.startswith(b"\x93NUMPY"):
        raise DataError("is a single .npy array, not an .npz archive", where=where, hint=hint)
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        kind = "is empty" if not head else "is not an .npz archive (a zip of .npy arrays)"
        raise DataError(kind, where=where, hint=hint)
    arrays = {}
    try:
        with np.load(p, allow_pickle=False) as z:
            for k in z.files:
                try:
                    arrays[k] = z[k]
                except ValueError as e:
                    if "allow_pickle" in str(e):
                        raise DataError(f"array {k!r} holds Python objects; only numeric arrays are read",
                                        where=where, hint=hint) from None
                    raise
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"corrupt .npz archive: {e}", where=where, hint=hint) from None
    return arrays


def check_feeds(feeds: Mapping[str, np.ndarray], graph: Graph, *, field: str, batched: bool) -> None:
    """DataError naming the input whose data is missing or has the wrong rank, shape or dtype."""
    specs = input_specs(graph)
    missing = [k for k in specs if k not in feeds]
    if missing:
        raise DataError(f"no data for model input(s) {missing} (has {sorted(feeds)})", where=field)
    n = None
    for name, (dims, dtype) in specs.items():
        arr = np.asarray(feeds[name])
        if dims is not None:
            if arr.ndim != len(dims):
                raise DataError(f"input '{name}' has rank {arr.ndim}, the model expects {len(dims)} "
                                f"(shape {dims})", where=field)
            for i, (got, want) in enumerate(zip(arr.shape, dims)):
                if isinstance(want, int) and got != want and not (batched and i == 0):
                    raise DataError(f"input '{name}' has shape {list(arr.shape)}, the model expects {dims} "
                                    f"(dimension {i})", where=field)
        if batched:
            n = len(arr) if n is None else n
            if len(arr) != n:
                raise DataError(f"input '{name}' has {len(arr)} samples, others have {n}", where=field)
        if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
            raise DataError(f"input '{name}' has dtype {arr.dtype}, the model expects {np.dtype(dtype)}", where=field)


def as_feeds(batch: Mapping[str, np.ndarray], graph: Graph) -> dict[str, np.ndarray]:
    specs = input_specs(graph)
    return {k: np.ascontiguousarray(batch[k], dtype=specs[k][1]) for k in specs}


def iterate(data: Dataset | Iterable[Mapping[str, np.ndarray]], batch_size: int = 1) -> Iterator[dict]:
    if isinstance(data, Dataset):
        yield from data.batches(batch_size)
    else:
        for feeds in data:
            yield dict(feeds)

"""onnxruntime sessions and runs with its failures as HwcompileErrors and a time limit.

onnxruntime raises its own exception classes (``Fail``, ``InvalidGraph``, ``InvalidArgument``, ...)
when it rejects a model or a run fails; here they become a ``ModelLoadError`` (the session cannot
be created) or a ``DeviceError`` (a run failed), with onnxruntime's message, which names the node.
Every run gets a deadline: a timer sets the run's ``terminate`` flag, onnxruntime stops between
kernels and the run ends in ``RunTimeout``. The limit is ``HWCOMPILE_RUN_TIMEOUT_S`` seconds
(default 600) per run, or per timed loop of runs.
"""
from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _state

from .errors import ConfigError, DeviceError, ModelLoadError, RunTimeout

__all__ = ["ORT_ERRORS", "run_timeout_s", "session", "deadline", "run", "failures"]

ORT_ERRORS = tuple(c for c in vars(_state).values() if isinstance(c, type) and issubclass(c, Exception)
                   and c.__module__ == _state.__name__)
DEFAULT_TIMEOUT_S = 600.0


def run_timeout_s() -> float:
    raw = os.environ.get("HWCOMPILE_RUN_TIMEOUT_S", "")
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"must be a number of seconds > 0, not {raw!r}", where="HWCOMPILE_RUN_TIMEOUT_S")
    return value


def _message(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)


def session(model: str | bytes, options: ort.SessionOptions, providers: Sequence[str], *,
            where: str) -> ort.InferenceSession:
    """``ort.InferenceSession``; a model onnxruntime rejects is a ModelLoadError naming ``where``."""
    try:
        return ort.InferenceSession(model, options, providers=list(providers))
    except ORT_ERRORS as e:
        raise ModelLoadError(f"onnxruntime cannot load the model: {_message(e)}", where=where) from None


@contextmanager
def deadline(where: str, seconds: float | None = None) -> Iterator[ort.RunOptions]:
    """RunOptions for the runs inside the block; past ``seconds`` they stop with RunTimeout, and any
    other onnxruntime failure in the block is a DeviceError naming ``where``."""
    limit = run_timeout_s() if seconds is None else seconds
    ro = ort.RunOptions()
    fired = threading.Event()

    def stop():
        fired.set()
        ro.terminate = True

    timer = threading.Timer(limit, stop)
    timer.daemon = True
    timer.start()
    try:
        yield ro
    except ORT_ERRORS as e:
        if fired.is_set():
            raise RunTimeout(f"a run took longer than {limit:g} s and was stopped", where=where,
                             hint="raise HWCOMPILE_RUN_TIMEOUT_S if the model is this slow") from None
        raise DeviceError(f"onnxruntime failed running the model: {_message(e)}", where=where) from None
    finally:
        timer.cancel()


def run(sess: ort.InferenceSession, names: Sequence[str] | None, feeds: Mapping[str, np.ndarray], *,
        where: str, seconds: float | None = None) -> list[np.ndarray]:
    """One ``sess.run`` under a deadline (see ``deadline``)."""
    with deadline(where, seconds) as ro:
        return sess.run(names, dict(feeds), ro)


@contextmanager
def failures(where: str) -> Iterator[None]:
    """onnxruntime failures outside a run (e.g. ``end_profiling``) as DeviceError naming ``where``."""
    try:
        yield
    except ORT_ERRORS as e:
        raise DeviceError(f"onnxruntime failed: {_message(e)}", where=where) from None

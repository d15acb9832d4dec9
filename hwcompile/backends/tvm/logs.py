"""TVM's own output (C++ ``LOG`` lines, frontend ``print``s, Python loggers, warnings) into a log file.

``to_log(path)`` appends everything TVM writes while the block runs to ``path`` instead of the
terminal: file descriptors 1 and 2 are pointed at the file (TVM's C++ logging writes to fd 2
directly), ``sys.stdout``/``sys.stderr`` too (the frontend ``print``s the op it failed on), and the
``tvm`` loggers and Python warnings are sent there. Everything is restored on exit, also on error.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Iterator

__all__ = ["to_log", "LOG_NAME"]

LOG_NAME = "tvm.log"


@contextlib.contextmanager
def to_log(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with open(path, "a", buffering=1) as log:
        saved = [os.dup(1), os.dup(2)]
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        loggers = [logging.getLogger(n) for n in ("tvm", "tvm_ffi", "tvm.s_tir.meta_schedule")]
        old = [(lg.handlers[:], lg.propagate) for lg in loggers]
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            for lg in loggers:
                lg.handlers, lg.propagate = [handler], False
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), warnings.catch_warnings():
                warnings.showwarning = lambda m, c, f, n, file=None, line=None: log.write(
                    warnings.formatwarning(m, c, f, n, line))
                yield
        finally:
            log.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            for lg, (handlers, propagate) in zip(loggers, old):
                lg.handlers, lg.propagate = handlers, propagate

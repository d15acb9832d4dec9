"""Errors a user can act on: each names the node, value, file or config key at fault."""
from __future__ import annotations


class HwcompileError(Exception):
    """Base error. ``where`` names the node / field / file; ``hint`` says what would fix it."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class ModelLoadError(HwcompileError):
    """The model file is missing, truncated, not ONNX, or unsafe to load."""


class UnsupportedError(HwcompileError):
    """An op, opset, dtype or feature the compiler or a backend does not support."""


class ConfigError(HwcompileError):
    """A bad option, target file, plan file or budget."""


class DataError(HwcompileError):
    """Calibration or evaluation data that is missing or does not match the model's inputs."""


class PassError(HwcompileError):
    """A pass broke an invariant of the graph (names the pass and the node)."""


class BackendUnavailable(HwcompileError):
    """A backend's toolchain or device is not present on this machine (says exactly why)."""

    exit_code = 4   # the target cannot build here


class DeviceError(HwcompileError):
    """A device or runtime failed, hung or went away while running or profiling a model."""


class RunTimeout(DeviceError):
    """A run or profile took longer than its time limit (``HWCOMPILE_RUN_TIMEOUT_S``)."""

"""Graph -> Graph passes. ``cleanup()`` is the standard clean-up pipeline."""
from .base import Pass, PassResult, run_passes
from .dead_code import eliminate_dead_code, eliminate_identity
from .fold_bn import check_fold_bn, fold_bn
from .fold_constants import fold_constants
from .fuse_pad import fuse_pad_into_conv
from .lift_constants import lift_constants

__all__ = ["PassResult", "Pass", "run_passes", "lift_constants", "fold_constants", "eliminate_dead_code",
           "eliminate_identity", "fold_bn", "fuse_pad_into_conv", "check_fold_bn", "CLEANUP", "cleanup"]

CLEANUP = (lift_constants, fold_constants, eliminate_identity, eliminate_dead_code, fuse_pad_into_conv)


def cleanup(graph, *, fold_batchnorm: bool = True, log: dict | None = None):
    """Constant lifting and folding, Identity and dead-code removal, zero-Pad fusion, then BN folding, to a fixpoint."""
    passes = CLEANUP + ((fold_bn,) if fold_batchnorm else ())
    return run_passes(graph, passes, log=log)

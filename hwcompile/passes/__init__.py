"""Graph -> Graph passes. ``cleanup()`` is the standard clean-up pipeline."""
from .base import Pass, PassResult, run_passes
from .dead_code import eliminate_dead_code, eliminate_identity
from .fold_bn import check_fold_bn, fold_bn
from .fold_constants import fold_constants
from .fuse_pad import fuse_pad_into_conv
from .lift_constants import lift_constants
from .specialize_shapes import deployment_shapes, specialize_shapes

__all__ = ["PassResult", "Pass", "run_passes", "lift_constants", "fold_constants", "eliminate_dead_code",
           "eliminate_identity", "fold_bn", "fuse_pad_into_conv", "check_fold_bn", "CLEANUP", "cleanup",
           "specialize_shapes", "deployment_shapes", "specialize_and_fold"]

CLEANUP = (lift_constants, fold_constants, eliminate_identity, eliminate_dead_code, fuse_pad_into_conv)


def cleanup(graph, *, fold_batchnorm: bool = True, log: dict | None = None):
    """Constant lifting and folding, Identity and dead-code removal, zero-Pad fusion, then BN folding, to a fixpoint."""
    passes = CLEANUP + ((fold_bn,) if fold_batchnorm else ())
    return run_passes(graph, passes, log=log)


def specialize_and_fold(graph, shapes=None, *, log: dict | None = None):
    """Shape specialization (when ``shapes`` fix every dynamic input), then attention-mask and
    NaN-guard folding and the clean-up again; ``graph.meta["shape_specialization"]`` says which build."""
    from .fold_attention_mask import fold_attention_mask
    from .fold_nan_guards import fold_nan_guards

    result = specialize_shapes(graph, shapes)
    graph.lint()
    if log is not None and result.modified:
        log["specialize_shapes"] = {"runs": 1, **result.details}
    return run_passes(graph, (fold_attention_mask, fold_nan_guards) + CLEANUP, log=log)

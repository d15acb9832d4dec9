"""The contract between planner, passes and backends: plain, typed data importing nothing above ``ir``.

- ``plan``: ``PrecisionPlan`` (frozen; per-layer ``LayerChoice``, ``QuantSettings``, ``PruneSettings``,
  input shapes; JSON with a format version), ``CANDIDATES``, ``parse_sparsity``;
- ``candidate``: ``Candidate`` (a precision and a sparsity pattern);
- ``qdq``: ``QDQStyle`` (how Q/DQ must look for a backend);
- ``capabilities``: ``Capabilities`` (what a backend can do for a target);
- ``settings``: ``BackendSettings`` (closed, typed ``[backend_settings]`` parsing);
- ``timing``: ``Timing`` and the one implementation of timing statistics;
- ``backend``: the ``Backend`` interface, ``Artifact``, ``Profile``.
"""
from .backend import Artifact, Backend, Feeds, Profile, Runner
from .candidate import FP32, Candidate, parse_candidate
from .capabilities import Capabilities, sparsity_family
from .plan import (ACTIVATION_FORMATS, CALIB_METHODS, CANDIDATES, COMPENSATION, PLAN_FORMAT, SCHEDULES,
                   WEIGHT_FORMATS, LayerChoice, PrecisionPlan, PruneSettings, QuantSettings, check_input_shapes,
                   parse_sparsity)
from .qdq import QDQStyle
from .settings import BackendSettings, NoSettings, settings_where
from .timing import Timing, iqr, summarize, time_runs

__all__ = ["Artifact", "Backend", "Feeds", "Profile", "Runner", "FP32", "Candidate", "parse_candidate",
           "Capabilities", "sparsity_family", "ACTIVATION_FORMATS", "CALIB_METHODS", "CANDIDATES", "COMPENSATION",
           "PLAN_FORMAT", "SCHEDULES", "WEIGHT_FORMATS", "LayerChoice", "PrecisionPlan", "PruneSettings",
           "QuantSettings", "check_input_shapes", "parse_sparsity", "QDQStyle", "BackendSettings", "NoSettings",
           "settings_where", "Timing", "iqr", "summarize", "time_runs"]

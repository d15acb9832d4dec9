"""Mixed-precision search: candidates, measured latency tables, the MILP planner and the driver.

``plan_mixed`` (driver) is what ``--precision mixed`` runs; ``solve`` / ``pareto_front`` (milp)
and ``measure_latency`` (latency) are usable on their own. Imports are lazy so that importing the
package (e.g. for ``hwcompile.search.candidates`` from the sensitivity analysis) stays cheap.
"""
from __future__ import annotations

__all__ = ["plan_mixed", "SearchOptions", "solve", "pareto_front", "Problem", "Solution", "measure_latency",
           "LatencyTable", "Candidate", "target_candidates"]

_WHERE = {"plan_mixed": "driver", "SearchOptions": "driver", "solve": "milp", "pareto_front": "milp",
          "Problem": "milp", "Solution": "milp", "measure_latency": "latency", "LatencyTable": "latency",
          "Candidate": "candidates", "target_candidates": "candidates"}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(name)

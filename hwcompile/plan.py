"""Old import path of the plan: everything here lives in ``hwcompile.contract`` (import it from there)."""
from .atomic import write_text_atomic
from .contract.plan import (ACTIVATION_FORMATS, CANDIDATES, WEIGHT_FORMATS, LayerChoice, PrecisionPlan,
                            PruneSettings, QuantSettings, parse_sparsity)

__all__ = ["WEIGHT_FORMATS", "ACTIVATION_FORMATS", "LayerChoice", "QuantSettings", "PruneSettings", "PrecisionPlan",
           "parse_sparsity", "CANDIDATES", "write_text_atomic"]

"""Old import path: ``apply_plan`` lives in ``hwcompile.passes.plan``."""
from .passes.plan import apply_plan

__all__ = ["apply_plan"]

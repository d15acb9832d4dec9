"""Old import path: ``tool_versions`` lives in ``hwcompile.versions``."""
from ..versions import tool_versions

__all__ = ["tool_versions"]

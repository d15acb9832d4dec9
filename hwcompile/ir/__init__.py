"""The compiler's graph IR: import, the Graph, export."""
from .exporter import save, to_bytes, to_proto
from .graph import SERVES, WEIGHTED_OPS, Graph, const_array, is_constant, layer_id
from .importer import from_proto, load

__all__ = ["Graph", "load", "from_proto", "to_proto", "to_bytes", "save", "layer_id", "const_array",
           "is_constant", "SERVES", "WEIGHTED_OPS"]

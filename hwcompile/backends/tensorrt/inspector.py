"""What TensorRT built, read from ``IEngineInspector`` JSON: each engine layer's types, tactic and ONNX nodes.

Engines are built with ``ProfilingVerbosity.DETAILED``, so the inspector lists every layer with its
input/output formats, weight type, chosen tactic and ``Metadata`` naming the ONNX nodes fused into
it (``[ONNX Layer: <node>]``, one per node). Structured-sparse (2:4) kernels are told by the tactic
name ("sparse"). ``node_layers`` maps the ONNX nodes of the TensorRT-ready model to hwcompile layer
ids (a layer's own node, or a node a pass inserted for it: ``hwcompile.serves``), which is how
engine-layer times go back to layer ids.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping

import onnx

from ...ir import SERVES

__all__ = ["summarize_layers", "engine_summary", "node_layers"]

_DTYPES = (("bfloat16", "bf16"), ("uint8", "uint8"), ("int8", "int8"), ("int4", "int4"), ("fp8", "fp8"),
           ("fp4", "fp4"), ("fp16", "fp16"), ("half", "fp16"), ("int32", "int32"), ("int64", "int64"),
           ("bool", "bool"), ("fp32", "fp32"), ("float", "fp32"))
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")


def _dtype(text: str) -> str:
    low = text.lower()
    return next((name for key, name in _DTYPES if key in low), "unknown" if text else "")


def summarize_layers(info_json: str) -> list[dict[str, Any]]:
    """Per-layer summary of ``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)``.

    ``precision`` is the data type of the layer's first input (its compute type; the first output
    if it has no inputs), ``weights`` the type of its constant weights, ``sparse`` whether TensorRT
    chose a structured-sparse kernel (the tactic name says "sparse"), ``onnx_nodes`` the ONNX nodes
    fused into it. Engines built without DETAILED verbosity list names only. Reads the 10.x schema
    (``Format/Datatype`` per tensor) and the 11.x one (``DataType`` and ``Format`` apart).
    """
    data = json.loads(info_json)
    out = []
    for layer in data.get("Layers", []) if isinstance(data, dict) else data:
        if isinstance(layer, str):
            out.append({"name": layer, "type": "", "precision": "unknown", "weights": "", "sparse": False,
                        "tactic": "", "onnx_nodes": []})
            continue
        tensors = layer.get("Inputs") or layer.get("Outputs") or [{}]
        tactic = str(layer.get("TacticName", ""))
        weights = layer.get("Weights")
        out.append({
            "name": str(layer.get("Name", "")),
            "type": str(layer.get("LayerType", "")),
            "precision": _dtype(_tensor_type(tensors[0])),
            "weights": _dtype(str(weights.get("Type", ""))) if isinstance(weights, dict) else "",
            "sparse": "sparse" in tactic.lower(),
            "tactic": tactic,
            "onnx_nodes": _ONNX_LAYER.findall(str(layer.get("Metadata", ""))),
        })
    return out


def _tensor_type(tensor: Mapping[str, Any]) -> str:
    """A layer tensor's data type: ``DataType`` (TensorRT 11) or the combined ``Format/Datatype`` (10.x)."""
    return str(tensor.get("DataType") or tensor.get("Format/Datatype") or tensor.get("Format/DataType") or "")


def engine_summary(layers: Iterable[Mapping[str, Any]], node_layer: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Counts for the report: engine layers by precision, the INT8 ones, and which layer ids got sparse kernels."""
    layers = list(layers)
    by_precision: dict[str, int] = {}
    for lay in layers:
        by_precision[lay["precision"]] = by_precision.get(lay["precision"], 0) + 1
    out = {"layers": len(layers), "by_precision": by_precision,
           "int8_layers": [lay["name"] for lay in layers if lay["precision"] == "int8"],
           "sparse_layers": [lay["name"] for lay in layers if lay["sparse"]]}
    if node_layer is not None:
        out["sparse_layer_ids"] = sorted({node_layer[n] for lay in layers if lay["sparse"]
                                          for n in lay["onnx_nodes"] if n in node_layer})
    return out


def node_layers(model: onnx.ModelProto, layer_ids: Iterable[str]) -> dict[str, str]:
    """ONNX node name -> the layer id it belongs to: the layer itself, or the layer it serves (Q/DQ, casts)."""
    ids = set(layer_ids)
    out = {}
    for n in model.graph.node:
        if n.name in ids:
            out[n.name] = n.name
            continue
        served = next((p.value for p in n.metadata_props if p.key == SERVES), None)
        if served in ids:
            out[n.name] = served
    return out

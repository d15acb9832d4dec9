"""Channel (filter) pruning: remove Conv output channels and every slice that reads them.

Analysis is one topological sweep. Each value with a channel axis (axis 1) gets a *channel space*:
a list of segments ``(group, length)``; a Conv (group=1) output opens a new group; BN, unary ops,
pooling, depthwise convs (group = C, one filter per channel) and Flatten of a ``[N, C, 1, 1]``
value pass the space on; Concat on axis 1 concatenates spaces (the second input's channels sit at
an offset); an elementwise op on two spaced values unions their groups segment by segment (a
residual Add makes every Conv meeting there drop the same indices: union-find over groups).
Readers that lose input channels are *sinks*: Conv (group=1) ``W[:, keep]``, Gemm/MatMul input
features. Anything else that reads a group (a graph output, Reshape, a grouped conv, an op with a
non-constant or non-broadcastable partner, an unknown op) makes the group unsafe, with a reason.

Removing channels ``keep`` of a group slices, for every value whose space contains the group at
offset ``o``, the indices ``o + keep``: producer filters and bias, BN parameters, depthwise
filters (and ``group``), per-channel constants of elementwise ops, sink input columns. The result
computes exactly what the original computes with the removed channels' sink weights set to 0.

Importance per channel: the L1 or L2 norm of the group's producer filters, summed over producers;
or activation-aware (with calibration): ``sum over sinks of rms(x_c) * ||W_sink[:, c]||_2``, the
size of what the channel contributes to the next layers.

**Global allocation** (how many channels each group loses). The FLOPs of a Conv (group 1) are
``F * (C_in'/C_in) * (K'/K)``, of a depthwise conv ``F * C'/C``, of a Gemm/MatMul sink
``F * C_in'/C_in`` (``flop_terms``: bilinear in the kept counts, so ``flops_at`` is exact).
Each group has a *damage curve* ``D_g(r)``: the damage of removing its ``r`` least useful
channels. ``allocate_global`` removes channels greedily (a step of ``multiple`` channels at a
time), always from the group whose next step costs the least damage per FLOP saved at the current
counts, until the FLOPs removed reach the budget. Damage curves: ``score_curve`` (the fraction of
the group's importance mass removed: normalized L1/L2/activation scores), or ``refit_curve``
(sum over the group's sinks of the relative output error left *after* the least-squares refit of
the sink, from the sink's input Gram: optimal brain surgeon on input-channel blocks, channels
removed one at a time, the remaining weights and the inverse Gram updated after each removal).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import onnx
import onnx_ir as ir

from ..ir import Graph, const_array, is_constant, to_proto
from ..quant.collect import run_with_outputs

__all__ = ["ChannelGroup", "ChannelAnalysis", "analyze_channels", "channel_importance", "channel_rms",
           "apply_channel_keep", "refresh_shapes", "set_const", "FlopTerm", "flop_terms", "flops_at",
           "score_curve", "refit_curve", "allocate_global"]

_UNARY = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus",
          "Identity", "Clip", "Dropout", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
_BINARY = ("Add", "Sub", "Mul", "Div", "PRelu")
Seg = tuple[int | None, int]


@dataclass
class ChannelGroup:
    """Conv layers whose output channels must be removed together (``key``: their sorted ids)."""

    gid: int
    producers: list[str]
    channels: int
    sinks: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, ...]:
        return tuple(sorted(self.producers))

    @property
    def safe(self) -> bool:
        return not self.reasons


@dataclass
class _Edit:
    node: ir.Node
    value: ir.Value                 # whose channel space decides which indices stay
    slots: list[tuple[int, int]]    # (input index, axis) of constants to slice
    set_group: bool = False


@dataclass
class ChannelAnalysis:
    groups: dict[int, ChannelGroup]           # by union-find root
    spaces: dict[int, list[Seg]]              # id(value) -> segments (raw group ids)
    edits: list[_Edit]
    parent: list[int]

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def segments(self, value: ir.Value) -> list[tuple[int | None, int, int]]:
        """(root or None, offset, length) of each segment of ``value``'s channel space."""
        out, off = [], 0
        for g, n in self.spaces.get(id(value), []):
            out.append((None if g is None else self.find(g), off, n))
            off += n
        return out


def _rank(v: ir.Value) -> int | None:
    return len(v.shape) if v is not None and v.shape is not None else None


def _attr(node: ir.Node, name: str, default: int) -> int:
    a = node.attributes.get(name)
    return a.as_int() if a is not None else default


def _unused(node: ir.Node, start: int = 1) -> bool:
    return all(not o.uses() and not o.is_graph_output() for o in node.outputs[start:])


def analyze_channels(graph: Graph) -> ChannelAnalysis:
    """Groups, channel spaces and the slicing edits of the whole graph (nothing is changed)."""
    parent: list[int] = []
    info: dict[int, ChannelGroup] = {}
    spaces: dict[int, list[Seg]] = {}
    edits: list[_Edit] = []
    reasons: dict[int, list[str]] = {}
    sinks: dict[int, list[str]] = {}

    def new_group(node: ir.Node, k: int) -> int:
        parent.append(len(parent))
        info[len(parent) - 1] = ChannelGroup(len(parent) - 1, [node.name], k)
        return len(parent) - 1

    def gids(*spcs) -> set[int]:
        return {g for s in spcs if s for g, _ in s if g is not None}

    def refuse(groups: Iterable[int], why: str) -> None:
        for g in groups:
            reasons.setdefault(g, []).append(why)

    control = [n.name for n in graph.main if n.op_type in ("If", "Loop", "Scan")]
    for node in graph.main:
        ins = [spaces.get(id(v)) if v is not None else None for v in node.inputs]
        touched = gids(*ins)
        where = f"{node.op_type} '{node.name}'"
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        why = None
        if op == "Conv":
            why = _conv(graph, node, ins[0], spaces, edits, new_group, refuse, sinks)
        elif op == "BatchNormalization" and ins[0]:
            if not all(is_constant(v) for v in node.inputs[1:5]) or not _unused(node):
                why = f"{where} has non-constant statistics or training outputs"
            else:
                spaces[id(node.outputs[0])] = ins[0]
                edits.append(_Edit(node, node.inputs[0], [(1, 0), (2, 0), (3, 0), (4, 0)]))
        elif op in _UNARY and ins[0]:
            extra = [v for v in node.inputs[1:] if v is not None]
            if any(not is_constant(v) or const_array(v).size != 1 for v in extra) or not _unused(node):
                why = f"{where} has non-scalar parameters or uses a second output"
            else:
                spaces[id(node.outputs[0])] = ins[0]
        elif op in _BINARY and (ins[0] or ins[1]):
            why = _binary(node, ins, spaces, edits, parent, refuse)
        elif op == "Concat" and touched:
            rank = _rank(node.outputs[0])
            axis = _attr(node, "axis", 1)
            segs: list[Seg] = []
            for v, s in zip(node.inputs, ins):
                c = v.shape[1] if v is not None and v.shape is not None and len(v.shape) > 1 else None
                if s is None and not isinstance(c, int):
                    why = f"{where} joins an input of unknown channel count"
                segs += s if s else [(None, c)]
            if rank is None or axis % rank != 1:
                why = f"{where} concatenates along axis {axis}, not the channel axis"
            if why is None:
                spaces[id(node.outputs[0])] = segs
        elif op == "Flatten" and ins[0]:
            x = node.inputs[0]
            ok = _rank(x) is not None and _attr(node, "axis", 1) == 1 and all(d == 1 for d in x.shape.dims[2:])
            if ok:
                spaces[id(node.outputs[0])] = ins[0]
            else:
                why = f"{where} mixes channels with spatial positions (only [N, C, 1, 1] inputs are followed)"
        elif op in ("Gemm", "MatMul") and ins[0]:
            w = graph.weight_of(node)
            if w is None or _rank(node.inputs[0]) != 2 or const_array(w).ndim != 2 or _attr(node, "transA", 0):
                why = f"{where} has no constant 2-D weight or a transposed / non-2-D input"
            else:
                axis = 1 if op == "Gemm" and _attr(node, "transB", 0) else 0
                edits.append(_Edit(node, node.inputs[0], [(1, axis)]))
                for g in touched:
                    sinks.setdefault(g, []).append(node.name)
        elif touched:
            why = f"{where} reads the channels and channel pruning does not handle {op}"
        if why is None and op not in _BINARY + ("Concat",) and gids(*ins[1:]):
            why = f"{where} reads the channels through a parameter input"
        if why:
            refuse(touched, why)
    for out in graph.main.outputs:
        refuse(gids(spaces.get(id(out))), f"reaches graph output '{out.name}'")
    if control:
        refuse(range(len(parent)), f"graph has control flow ({', '.join(control)})")
    ana = ChannelAnalysis({}, spaces, edits, parent)
    for g, grp in info.items():
        r = ana.find(g)
        root = ana.groups.setdefault(r, ChannelGroup(r, [], grp.channels))
        root.producers += grp.producers
        for why in reasons.get(g, []):
            if why not in root.reasons:
                root.reasons.append(why)
        root.sinks += [s for s in sinks.get(g, []) if s not in root.sinks]
    return ana


def _conv(graph, node, space, spaces, edits, new_group, refuse, sinks) -> str | None:
    where = f"Conv '{node.name}'"
    w = graph.weight_of(node)
    touched = {g for g, _ in space or [] if g is not None}
    if w is None or const_array(w).ndim != 4:
        return f"{where} has a non-constant or non-2-D-conv weight" if touched else None
    k, cg = const_array(w).shape[:2]
    group = _attr(node, "group", 1)
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if group == 1:
        if touched:
            edits.append(_Edit(node, node.inputs[0], [(1, 1)]))
            for g in touched:
                sinks.setdefault(g, []).append(node.name)
        gid = new_group(node, k)
        spaces[id(node.outputs[0])] = [(gid, k)]
        edits.append(_Edit(node, node.outputs[0], [(1, 0), (2, 0)]))
        if bias is not None and not is_constant(bias):
            refuse([gid], f"{where} has a non-constant bias")
        return None
    if cg == 1 and k == group and space is not None:   # depthwise, one filter per channel
        spaces[id(node.outputs[0])] = space
        edits.append(_Edit(node, node.outputs[0], [(1, 0), (2, 0)], set_group=True))
        return f"{where} has a non-constant bias" if bias is not None and not is_constant(bias) else None
    return f"{where} is a grouped conv (group={group}, {cg} channels per group)" if touched else None


def _binary(node, ins, spaces, edits, parent, refuse) -> str | None:
    where = f"{node.op_type} '{node.name}'"
    a, b = node.inputs[0], node.inputs[1]
    sa, sb = ins[0], ins[1]
    if sa and sb:
        if _rank(a) is None or _rank(a) != _rank(b) or [n for _, n in sa] != [n for _, n in sb]:
            return f"{where} joins values of different rank or channel layout"
        for (ga, _), (gb, _) in zip(sa, sb):
            if (ga is None) != (gb is None):
                refuse([ga if ga is not None else gb], f"{where} adds fixed (unprunable) channels")
            elif ga is not None:
                ra, rb = _root(parent, ga), _root(parent, gb)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
        spaces[id(node.outputs[0])] = sa
        return None
    idx = 0 if sa else 1
    s, v, other = (sa, a, b) if sa else (sb, b, a)
    if not is_constant(other):
        return f"{where} combines the channels with '{other.name}', which is not a constant"
    c, r = const_array(other), _rank(v)
    if r is None or c.ndim > r:
        return f"{where} broadcasts to a higher rank or has an unknown rank"
    ax = 1 - (r - c.ndim)
    if ax >= 0 and c.shape[ax] != 1:
        if c.shape[ax] != sum(n for _, n in s):
            return f"{where} has a constant of shape {list(c.shape)} that does not match the channels"
        edits.append(_Edit(node, node.outputs[0], [(1 - idx, ax)]))
    spaces[id(node.outputs[0])] = s
    return None


def _root(parent: list[int], g: int) -> int:
    while parent[g] != g:
        g = parent[g]
    return g


def channel_importance(graph: Graph, ana: ChannelAnalysis, group: ChannelGroup, method: str = "l1",
                       rms: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Score per channel of ``group`` (higher = more important). ``rms`` (value name -> per-channel
    RMS over calibration data) is needed by ``method='activation'``."""
    score = np.zeros(group.channels)
    if method in ("l1", "l2"):
        for name in group.producers:
            w = const_array(graph.node(name).inputs[1]).astype(np.float64).reshape(group.channels, -1)
            score += np.abs(w).sum(axis=1) if method == "l1" else np.sqrt((w * w).sum(axis=1))
        return score
    for name in group.sinks:
        node = graph.node(name)
        x = node.inputs[0]
        w = const_array(node.inputs[1]).astype(np.float64)
        axis = 1 if node.op_type == "Conv" or (node.op_type == "Gemm" and _attr(node, "transB", 0)) else 0
        wn = np.sqrt((np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1) ** 2).sum(axis=1))
        contrib = wn * rms[x.name]
        for root, off, n in ana.segments(x):
            if root == group.gid:
                score += contrib[off:off + n]
    return score


def channel_rms(graph: Graph, values: list[str], data, *, batch_size: int = 8,
                limit: int | None = 256) -> dict[str, np.ndarray]:
    """Per-channel (axis 1) RMS of each named value over the calibration data, streamed."""
    graph_inputs = {v.name for v in graph.main.inputs}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def visit(vals) -> None:
        for name in values:
            x = np.asarray(vals[name], dtype=np.float64)
            red = tuple(i for i in range(x.ndim) if i != 1)
            sums[name] = sums.get(name, 0.0) + (x * x).sum(axis=red)
            counts[name] = counts.get(name, 0) + x.size // x.shape[1]

    run_with_outputs(graph, data, [v for v in values if v not in graph_inputs], visit,
                     batch_size=batch_size, limit=limit)
    return {k: np.sqrt(sums[k] / counts[k]) for k in values}


def apply_channel_keep(graph: Graph, ana: ChannelAnalysis, keep: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Remove every channel of group ``root`` not in ``keep[root]`` (sorted indices). Returns the
    kept output channels of each Conv whose outputs shrank (producers and depthwise convs)."""
    out_keep: dict[str, np.ndarray] = {}
    for e in ana.edits:
        parts, total = [], 0
        for root, off, n in ana.segments(e.value):
            parts.append(off + (keep[root] if root in keep else np.arange(n)))
            total += n
        idx = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if len(idx) == total:
            continue
        for i, axis in e.slots:
            if i < len(e.node.inputs) and e.node.inputs[i] is not None:
                set_const(graph, e.node, i, np.take(const_array(e.node.inputs[i]), idx, axis=axis))
        if e.set_group:
            e.node.attributes["group"] = ir.AttrInt64("group", len(idx))
        if e.value is e.node.outputs[0] and e.node.op_type == "Conv":
            out_keep[e.node.name] = idx
    refresh_shapes(graph)
    return out_keep


def set_const(graph: Graph, node: ir.Node, i: int, array: np.ndarray) -> None:
    """Give input ``i`` of ``node`` a new constant; a shared initializer is copied, not changed."""
    v = node.inputs[i]
    if graph.uses_count(v) == 1:
        graph.replace_initializer(v, array)
    else:
        node.replace_input_with(i, graph.add_initializer(v.name, array))


def refresh_shapes(graph: Graph) -> None:
    """Re-infer every node output's shape with ONNX shape inference (stale shapes are dropped)."""
    proto = to_proto(graph)
    del proto.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    shapes = {vi.name: vi.type.tensor_type.shape for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
              if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")}
    for node in graph.main:
        for out in node.outputs:
            sp = shapes.get(out.name)
            out.shape = None if sp is None else ir.Shape(
                [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in sp.dim])


# -- global allocation ---------------------------------------------------------------------------
@dataclass
class FlopTerm:
    """A layer whose FLOPs scale with the product of its factors' channel counts (segments ``(root, n)``)."""

    layer: str
    flops: float
    factors: list[list[tuple[int | None, int]]]

    def groups(self) -> set[int]:
        return {r for f in self.factors for r, _ in f if r is not None}


def flop_terms(graph: Graph, ana: ChannelAnalysis, layer_flops: Mapping[str, float]) -> list[FlopTerm]:
    """One term per Conv/Gemm/MatMul whose FLOPs (``layer_flops``, dense) depend on a channel group."""
    terms = []
    for node in graph.main:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or not layer_flops.get(node.name):
            continue
        seg = lambda v: [(r, n) for r, _, n in ana.segments(v)] if v is not None else []
        if node.op_type == "Conv":
            factors = [seg(node.outputs[0])] + ([seg(node.inputs[0])] if _attr(node, "group", 1) == 1 else [])
        else:
            factors = [seg(node.inputs[0])]
        factors = [f for f in factors if any(r is not None for r, _ in f)]
        if factors:
            terms.append(FlopTerm(node.name, float(layer_flops[node.name]), factors))
    return terms


def flops_at(terms: Iterable[FlopTerm], kept: Mapping[int, int], channels: Mapping[int, int]) -> float:
    """FLOPs of ``terms`` when group ``root`` keeps ``kept[root]`` of its ``channels[root]`` channels."""
    total = 0.0
    for t in terms:
        f = t.flops
        for segs in t.factors:
            n0 = sum(n for _, n in segs)
            f *= sum(kept.get(r, n) if r is not None else n for r, n in segs) / n0
        total += f
    return total


def score_curve(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(removal order, damage curve) from per-channel importance: the least important go first and
    ``D(r)`` is the fraction of the group's importance mass they carry."""
    order = np.argsort(score, kind="stable")
    mass = np.maximum(score[order], 0.0)
    return order, np.concatenate([[0.0], np.cumsum(mass) / max(float(mass.sum()), 1e-300)])


def refit_curve(sinks: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]], channels: int, r_max: int,
                ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """(removal order of the first ``r_max`` channels, damage curve ``D(0..r_max)``) of one group.

    ``sinks``: per layer reading the group, ``(W [k, d], G [d, d], cols [channels, b], E)``: the
    weight as rows, the Gram of its input rows (centred when the refit has an intercept), the input
    columns of every group channel (``b`` = kernel size) and the output energy ``E = ||Y||^2``.
    Removing channel ``q`` (columns ``B``) and refitting the rest increases the error by
    ``tr(W_B [H^-1]_BB^-1 W_B^T)`` with ``H = G + lambda I``; the step with the smallest sum of
    ``increase / E`` over sinks is taken, then ``W -= W_B [H^-1]_BB^-1 [H^-1]_B.`` and
    ``H^-1 -= [H^-1]_.B [H^-1]_BB^-1 [H^-1]_B.`` (the refit of the rest and the Gram without ``B``).
    """
    state = []
    for w, g, cols, e in sinks:
        lam = ridge * max(float(np.mean(np.diag(g))), 1e-12)
        hinv = np.linalg.inv(g + lam * np.eye(len(g)))
        state.append([w.astype(np.float64).copy(), hinv, cols, max(e, 1e-300)])
    alive = np.ones(channels, dtype=bool)
    order, damage = [], [0.0]
    for _ in range(min(r_max, channels)):
        score = np.zeros(channels)
        for w, hinv, cols, e in state:
            if cols.shape[1] == 1:
                c = cols[:, 0]
                score += (w[:, c] ** 2).sum(axis=0) / np.maximum(np.diag(hinv)[c], 1e-300) / e
            else:
                hb = hinv[cols[:, :, None], cols[:, None, :]]                    # [channels, b, b]
                wb = w[:, cols]                                                  # [k, channels, b]
                score += np.einsum("kcb,cbe,kce->c", wb, np.linalg.pinv(hb), wb) / e
        score[~alive] = np.inf
        q = int(np.argmin(score))
        alive[q] = False
        order.append(q)
        damage.append(damage[-1] + float(score[q]))
        for st in state:
            w, hinv, cols, _ = st
            b = cols[q]
            m = np.linalg.pinv(hinv[np.ix_(b, b)])
            hrow = m @ hinv[b, :]                                                # [b, d]
            st[0] = w - w[:, b] @ hrow
            st[0][:, b] = 0.0
            st[1] = hinv - hinv[:, b] @ hrow
    return np.asarray(order, dtype=np.int64), np.asarray(damage)


def allocate_global(terms: list[FlopTerm], channels: Mapping[int, int], curves: Mapping[int, np.ndarray],
                    min_keep: Mapping[int, int], multiple: int, budget: float) -> dict[int, int]:
    """Kept channel count per group (keys of ``curves``): greedy, cheapest damage per FLOP saved first,
    until ``budget`` FLOPs are removed or no group can shrink. Deterministic (ties: the lower root)."""
    kept = {g: channels[g] for g in curves}
    by_group: dict[int, list[FlopTerm]] = {g: [] for g in curves}
    for t in terms:
        for g in t.groups() & set(curves):
            by_group[g].append(t)
    dense = flops_at(terms, {}, channels)

    def step(g: int) -> int:
        k = kept[g]
        nxt = k - (k % multiple or multiple)
        return nxt if nxt >= max(min_keep[g], 1) else k

    def price(g: int) -> float:
        nxt = step(g)
        if nxt == kept[g]:
            return np.inf
        saved = flops_at(by_group[g], kept, channels) - flops_at(by_group[g], {**kept, g: nxt}, channels)
        if saved <= 0:
            return np.inf
        c0 = channels[g]
        return (curves[g][c0 - nxt] - curves[g][c0 - kept[g]]) / saved

    prices = {g: price(g) for g in sorted(curves)}
    removed = 0.0
    while removed < budget and prices:
        g = min(sorted(prices), key=lambda x: prices[x])
        if not np.isfinite(prices[g]):
            break
        kept[g] = step(g)
        removed = dense - flops_at(terms, kept, channels)
        touched = {h for t in by_group[g] for h in t.groups()} & set(curves)
        for h in touched:
            prices[h] = price(h)
    return kept

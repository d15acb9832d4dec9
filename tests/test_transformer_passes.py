"""Shape specialization, attention-mask folding and NaN-guard folding on small encoders, each
compared with onnxruntime on the unmodified model on padded, unpadded and fully padded batches."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from hwcompile.errors import ConfigError
from hwcompile.ir import from_proto, to_bytes
from hwcompile.passes import cleanup, run_passes
from hwcompile.passes.fold_attention_mask import fold_attention_mask
from hwcompile.passes.fold_nan_guards import fold_nan_guards
from hwcompile.passes.specialize_shapes import specialize_shapes

H, HEADS, LAYERS = 16, 2, 3


def tiny_encoder(*, guard: bool = True, mask_fill: float = float("-inf"), nan_value: float = 0.0,
                 mask_from_activation: bool = False, seed: int = 0) -> onnx.ModelProto:
    """A BERT-like encoder on ``x`` [N, T, H] and ``mask`` [N, T] (int64, 1 = token), both dims
    dynamic: per layer the reshapes are sized by Shape/Gather/Concat chains and the additive mask
    ``Where(mask, 0, fill)`` is rebuilt with its own constants, as exporters write them."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(name, arr):
        inits.append(helper.make_tensor(name, helper.np_dtype_to_tensor_dtype(np.asarray(arr).dtype),
                                        np.asarray(arr).shape, np.asarray(arr).flatten().tolist()))
        return name

    def node(op, ins, name, **attrs):
        nodes.append(helper.make_node(op, ins, [name], name=f"n_{name}", **attrs))
        return name

    dh = H // HEADS
    x = "x"
    for i in range(LAYERS):
        p = f"l{i}_"
        shp = node("Shape", [x], p + "shape")
        n_ = node("Unsqueeze", [node("Gather", [shp, const(p + "i0", np.array(0, np.int64))], p + "n"),
                                const(p + "ax0", np.array([0], np.int64))], p + "n1")
        t_ = node("Unsqueeze", [node("Gather", [shp, const(p + "i1", np.array(1, np.int64))], p + "t"),
                                const(p + "ax0b", np.array([0], np.int64))], p + "t1")
        heads = node("Concat", [n_, t_, const(p + "hd", np.array([HEADS, dh], np.int64))], p + "heads", axis=0)
        merged = node("Concat", [n_, t_, const(p + "hm", np.array([H], np.int64))], p + "merged", axis=0)
        qkv = []
        for k in "qkv":
            w = const(p + "w" + k, (rng.standard_normal((H, H)) * 0.3).astype(np.float32))
            y = node("Reshape", [node("MatMul", [x, w], p + k), heads], p + k + "r")
            qkv.append(node("Transpose", [y], p + k + "t", perm=[0, 2, 3, 1] if k == "k" else [0, 2, 1, 3]))
        s = node("MatMul", [qkv[0], qkv[1]], p + "scores")
        s = node("Mul", [s, const(p + "scale", np.array(1 / np.sqrt(dh), np.float32))], p + "scaled")
        if mask_from_activation:
            m = node("ReduceMean", [s], p + "mask", axes=[-1], keepdims=1)
        else:
            b = node("Cast", ["mask"], p + "maskb", to=TensorProto.BOOL)
            b = node("Unsqueeze", [b, const(p + "ax12", np.array([1, 2], np.int64))], p + "mask4")
            m = node("Where", [b, const(p + "zero", np.array(0.0, np.float32)),
                               const(p + "fill", np.array(mask_fill, np.float32))], p + "mask")
        prob = node("Softmax", [node("Add", [s, m], p + "masked")], p + "prob", axis=-1)
        if guard:
            prob = node("Where", [node("IsNaN", [prob], p + "isnan"),
                                  const(p + "nanv", np.array(nan_value, np.float32)), prob], p + "guarded")
        ctx = node("Transpose", [node("MatMul", [prob, qkv[2]], p + "ctx")], p + "ctxt", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merged], p + "ctxr")
        o = node("MatMul", [ctx, const(p + "wo", (rng.standard_normal((H, H)) * 0.3).astype(np.float32))], p + "o")
        x = node("LayerNormalization", [node("Add", [o, x], p + "res"), const(p + "g", np.ones(H, np.float32)),
                                        const(p + "b", np.zeros(H, np.float32))], p + "ln", axis=-1)
    graph = helper.make_graph(
        nodes, "tiny_encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", H]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", "T"])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", "T", H])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def batches(n: int = 2, t: int = 8, seed: int = 1):
    """Unpadded, padded (last sample half padding) and fully padded (last sample all padding)."""
    rng = np.random.default_rng(seed)
    out = []
    for keep in (t, t // 2, 0):
        mask = np.ones((n, t), np.int64)
        mask[-1, keep:] = 0
        out.append({"x": rng.standard_normal((n, t, H)).astype(np.float32), "mask": mask})
    return out


def run(model: bytes, feeds: dict) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def assert_same(reference: bytes, graph, feeds_list, atol: float = 1e-5) -> None:
    for feeds in feeds_list:
        feeds = {k: v for k, v in feeds.items() if k in {i.name for i in graph.main.inputs}}
        a, b = run(reference, feeds), run(to_bytes(graph), feeds)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(np.nan_to_num(b), np.nan_to_num(a), atol=atol, rtol=1e-5)


def ops(graph) -> list[str]:
    return [n.op_type for n in graph.main]


def transformer_passes(graph):
    return run_passes(graph, [fold_attention_mask, fold_nan_guards])


# -- shape specialization ----------------------------------------------------------------------

def test_specialize_folds_every_shape_chain_and_keeps_numerics():
    proto = tiny_encoder()
    graph = cleanup(from_proto(proto))
    assert "Shape" in ops(graph) and "Concat" in ops(graph)
    result = specialize_shapes(graph, {"x": [2, 8, H], "mask": [2, 8]})
    graph.lint()
    assert result.modified
    assert not {"Shape", "Gather", "Concat"} & set(ops(graph))   # the Unsqueeze left reshapes the mask values
    rec = graph.meta["shape_specialization"]
    assert rec["build"] == "specialized" and rec["values_left_symbolic"] == []
    assert all(isinstance(d, int) for v in graph.main.outputs for d in v.shape.dims)
    assert_same(proto.SerializeToString(), graph, batches(2, 8))


def test_specialize_without_shapes_keeps_the_dynamic_build_and_says_why():
    graph = cleanup(from_proto(tiny_encoder()))
    n = len(ops(graph))
    result = specialize_shapes(graph, {"x": [2, 8, H]})
    assert not result.modified and len(ops(graph)) == n
    rec = graph.meta["shape_specialization"]
    assert rec["build"] == "dynamic" and "mask" in rec["reason"]


@pytest.mark.parametrize("shapes, named", [({"x": [2, 8]}, "x"), ({"mask": [2, 8], "x": [2, 8, H + 1]}, "x"),
                                           ({"nope": [1]}, "nope")])
def test_specialize_refuses_shapes_that_do_not_fit(shapes, named):
    graph = cleanup(from_proto(tiny_encoder()))
    with pytest.raises(ConfigError, match=named):
        specialize_shapes(graph, shapes)


# -- mask folding --------------------------------------------------------------------------------

def test_mask_rebuilt_per_layer_is_computed_once():
    proto = tiny_encoder(guard=False)
    graph = cleanup(from_proto(proto))
    wheres = ops(graph).count("Where")
    graph = transformer_passes(graph)
    graph.lint()
    rec = graph.meta["attention_masks"]
    assert rec["distinct_before"] == LAYERS and rec["distinct_after"] == 1 and rec["sites"] == LAYERS
    assert wheres == LAYERS and ops(graph).count("Where") == 1
    assert_same(proto.SerializeToString(), graph, batches())


def test_mask_folding_names_a_mask_computed_from_activations():
    graph = cleanup(from_proto(tiny_encoder(guard=False, mask_from_activation=True)))
    graph = transformer_passes(graph)
    declined = graph.meta["attention_masks"]["declined"]
    assert len(declined) == LAYERS and all("activations" in r for r in declined.values())


# -- NaN guards ----------------------------------------------------------------------------------

@pytest.mark.parametrize("specialize", [False, True])
def test_guard_on_neg_inf_mask_becomes_row_factor(specialize):
    proto = tiny_encoder(guard=True, mask_fill=float("-inf"))
    graph = cleanup(from_proto(proto))
    if specialize:
        specialize_shapes(graph, {"x": [2, 8, H], "mask": [2, 8]})
    reference = run(proto.SerializeToString(), batches()[2])
    assert np.isnan(reference).sum() == 0    # the guard is what keeps the fully padded sample finite
    graph = transformer_passes(graph)
    graph.lint()
    assert "IsNaN" not in ops(graph)
    assert ops(graph).count("ReduceMax") == 1   # one row factor, shared by every layer
    assert graph.meta["nan_guards_declined"] == {}
    assert_same(proto.SerializeToString(), graph, batches())


def test_guard_without_it_the_fully_masked_row_is_nan():
    """The property the rewrite relies on: the unguarded graph with a -inf mask does produce NaN."""
    proto = tiny_encoder(guard=False, mask_fill=float("-inf"))
    assert np.isnan(run(proto.SerializeToString(), batches()[2])).any()


def test_guard_on_finite_mask_is_removed():
    proto = tiny_encoder(guard=True, mask_fill=float(np.finfo(np.float32).min))
    graph = transformer_passes(cleanup(from_proto(proto)))
    graph.lint()
    assert "IsNaN" not in ops(graph) and "ReduceMax" not in ops(graph)
    assert ops(graph).count("Where") == 1    # the shared mask only
    assert_same(proto.SerializeToString(), graph, batches())


@pytest.mark.parametrize("kw, reason", [({"nan_value": 1.0}, "other than a constant 0"),
                                        ({"mask_from_activation": True}, "cannot bound")])
def test_guard_kept_where_it_may_fire(kw, reason):
    proto = tiny_encoder(guard=True, **kw)
    graph = transformer_passes(cleanup(from_proto(proto)))
    assert ops(graph).count("IsNaN") == LAYERS
    declined = graph.meta["nan_guards_declined"]
    assert len(declined) == LAYERS and all(reason in r for r in declined.values())
    assert_same(proto.SerializeToString(), graph, batches())


# -- exported transformers BertModel (legacy and dynamo exporters) -----------------------------

def _export_bert(tmp_path, attn: str, dynamo: bool):
    torch = pytest.importorskip("torch", reason="torch is not installed (the bench extra)")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (the bench extra)")
    if dynamo:
        pytest.importorskip("onnxscript", reason="onnxscript is not installed (the dynamo exporter needs it)")
    import warnings

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, attn_implementation=attn)
    bert = transformers.BertModel(cfg).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids, mask):
            return self.inner(input_ids=ids, attention_mask=mask).last_hidden_state

    ids = torch.randint(0, 64, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.int64)
    path = tmp_path / f"bert_{attn}_{'dynamo' if dynamo else 'legacy'}.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(Wrapper(bert), (ids, mask), str(path), dynamo=True, input_names=["ids", "mask"],
                              output_names=["h"], opset_version=18,
                              dynamic_shapes={"ids": {0: "N", 1: "T"}, "mask": {0: "N", 1: "T"}})
        else:
            torch.onnx.export(Wrapper(bert), (ids, mask), str(path), dynamo=False, input_names=["ids", "mask"],
                              output_names=["h"], opset_version=17,
                              dynamic_axes={"ids": {0: "N", 1: "T"}, "mask": {0: "N", 1: "T"}})
    return onnx.load(str(path))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_exported_bert_specialized_and_folded_matches_onnxruntime(tmp_path, attn, dynamo):
    proto = _export_bert(tmp_path, attn, dynamo)
    graph = cleanup(from_proto(proto))
    had_guards = "IsNaN" in ops(graph)
    specialize_shapes(graph, {"ids": [2, 8], "mask": [2, 8]})
    assert graph.meta["shape_specialization"]["build"] == "specialized"
    assert "Shape" not in ops(graph) and "Range" not in ops(graph)
    graph = transformer_passes(graph)
    graph.lint()
    assert "IsNaN" not in ops(graph), graph.meta.get("nan_guards_declined")
    assert graph.meta["attention_masks"]["distinct_after"] == 1
    assert had_guards == (attn == "sdpa")
    from hwcompile.passes import eliminate_dead_code
    from hwcompile.passes.merge_parallel_matmuls import merge_parallel_matmuls

    graph = run_passes(graph, [merge_parallel_matmuls, eliminate_dead_code])
    assert ops(graph).count("Split") == 2                        # one QKV GEMM (bias merged) per layer
    assert all(len(v) == 3 for v in graph.meta["merged_matmuls"].values())
    rng = np.random.default_rng(0)
    feeds = []
    for keep in (8, 3, 0):
        mask = np.ones((2, 8), np.int64)
        mask[-1, keep:] = 0
        feeds.append({"ids": rng.integers(0, 64, (2, 8)).astype(np.int64), "mask": mask})
    assert_same(proto.SerializeToString(), graph, feeds, atol=1e-4)


# -- the pipeline ----------------------------------------------------------------------------

def _compile(tmp_path, shapes):
    from hwcompile.data import Dataset
    from hwcompile.pipeline import CompileOptions, compile_model

    model = tmp_path / "enc.onnx"
    onnx.save(tiny_encoder(), str(model))
    data = batches(4, 8)
    calib = Dataset({k: np.concatenate([b[k] for b in data]) for k in ("x", "mask")}, source="test")
    opts = CompileOptions(precision="fp32", calib=calib, input_shapes=shapes, repeats=3, warmup=1,
                          per_layer_profile=False)
    return compile_model(model, "host-cpu", tmp_path / "out", opts).report


def test_pipeline_specializes_with_shape_and_data_and_says_so(tmp_path):
    report = _compile(tmp_path, {"x": [1, 8, H]})      # the mask's shape comes from the data, batch from --shape
    spec = report["specialization"]
    assert spec["shapes"]["build"] == "specialized"
    assert spec["shapes"]["input_shapes"] == {"x": [1, 8, H], "mask": [1, 8]}
    assert spec["attention_masks"]["distinct_after"] == 1
    assert report["passes"]["fold_nan_guards"]["nan_guards_rewritten"] == LAYERS
    assert "IsNaN" not in report["compiled_ops"] and "Shape" not in report["compiled_ops"]
    assert report["compiled"]["metrics"]["snr_db"] > 100    # the FP32 build of the specialized graph runs


def test_pipeline_without_shapes_keeps_the_dynamic_build(tmp_path):
    spec = _compile(tmp_path, {})["specialization"]
    assert spec["shapes"]["build"] == "dynamic" and "x" in spec["shapes"]["reason"]


# -- INT8 attention products -------------------------------------------------------------------

@pytest.mark.parametrize("which", [("qk",), ("qk", "pv")])
def test_attention_products_in_dynamic_int8(which):
    from hwcompile.passes.quantize_attention import attention_matmuls, quantize_attention

    proto = tiny_encoder(guard=False)
    graph = cleanup(from_proto(proto))
    sites = attention_matmuls(graph)
    assert len(sites["qk"]) == len(sites["pv"]) == LAYERS
    assert all(m.inputs[1].producer().op_type == "Transpose" for m in sites["qk"])     # K^T, not a weight
    graph = run_passes(graph, [lambda g: quantize_attention(g, which)], max_rounds=1)
    graph.lint()
    assert ops(graph).count("MatMulInteger") == LAYERS * len(which)
    assert ops(graph).count("MatMul") == 4 * LAYERS + 2 * LAYERS - LAYERS * len(which)   # weight GEMMs untouched
    for feeds in batches()[:2]:
        ref = run(proto.SerializeToString(), feeds)
        out = run(to_bytes(graph), feeds)
        snr = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - out) ** 2))
        assert 20 < snr < 200, snr       # quantized (not exact), and close


def test_attention_int8_declines_a_weight_matmul():
    from hwcompile.passes.quantize_attention import check_attention_matmul

    graph = cleanup(from_proto(tiny_encoder()))
    weight_mm = graph.layers()[0]
    assert "constant" in check_attention_matmul(weight_mm)


# -- INT8 attention as a measured variant ------------------------------------------------------

def _m(ms, spread=0.01, **metrics):
    return {"latency_ms": ms, "latency_ms_spread": spread, "metrics": metrics}


@pytest.mark.parametrize("measured, chosen, why", [
    ({"a": _m(0.8, snr_db=20.0), "b": _m(0.7, snr_db=20.5)}, "b", "accurate enough"),
    ({"a": _m(0.8, snr_db=20.0), "b": _m(0.7, snr_db=18.0)}, "a", "SNR 2.50 dB below"),
    ({"a": _m(0.99, snr_db=30.0)}, None, "not resolved faster"),
    ({"a": _m(0.9, spread=0.2, snr_db=30.0)}, None, "not resolved faster"),
])
def test_choose_variant_needs_resolved_speed_and_accuracy(measured, chosen, why):
    from hwcompile.search.variants import choose_variant

    got, reasons = choose_variant(_m(1.0, snr_db=20.5), measured)
    assert got == chosen
    assert any(why in r for r in reasons.values()), reasons


def test_choose_variant_prefers_the_task_metric():
    from hwcompile.search.variants import choose_variant

    base = _m(1.0, spearman=0.80, snr_db=20.0)
    got, why = choose_variant(base, {"a": _m(0.5, spearman=0.795, snr_db=25.0)})
    assert got is None and "spearman 0.0050 below" in why["a"]
    got, _ = choose_variant(base, {"a": _m(0.5, spearman=0.795, snr_db=10.0)}, max_drop=0.01)
    assert got == "a"


def test_pipeline_measures_the_attention_variants_of_an_int8dyn_build(tmp_path):
    from hwcompile.data import Dataset
    from hwcompile.pipeline import CompileOptions, compile_model

    model = tmp_path / "enc.onnx"
    onnx.save(tiny_encoder(), str(model))
    data = batches(4, 8)
    calib = Dataset({k: np.concatenate([b[k] for b in data]) for k in ("x", "mask")}, source="test")
    opts = CompileOptions(precision="int8dyn", calib=calib, input_shapes={"x": [1, 8, H]}, repeats=3, warmup=1,
                          per_layer_profile=False)
    report = compile_model(model, "host-cpu", tmp_path / "out", opts).report
    rec = report["attention_variants"]
    assert rec["attention_products"] == {"qk": LAYERS, "pv": LAYERS}
    assert set(rec["measured"]) == {"attention int8 QK^T", "attention int8 QK^T+PV"}
    assert all("snr_db" in m["metrics"] for m in rec["measured"].values())
    n_int = report["compiled_ops"].get("MatMulInteger", 0) - 4 * LAYERS   # less the weight GEMMs' (int8dyn)
    if rec["chosen"] is None:          # whichever way the measurement went, the build says so
        assert n_int == 0 and not any("accurate enough" in w for w in rec["why"].values())
    else:
        assert n_int == LAYERS * (2 if "PV" in rec["chosen"] else 1) and "accurate enough" in rec["why"][rec["chosen"]]


# -- sibling projections merged ------------------------------------------------------------------

def test_qkv_projections_merge_into_one_gemm():
    from hwcompile.passes import eliminate_dead_code
    from hwcompile.passes.merge_parallel_matmuls import merge_parallel_matmuls

    proto = tiny_encoder()
    graph = cleanup(from_proto(proto))
    graph = run_passes(graph, [merge_parallel_matmuls, eliminate_dead_code])
    graph.lint()
    assert ops(graph).count("Split") == LAYERS
    assert ops(graph).count("MatMul") == (2 + 2) * LAYERS     # merged QKV + out projection + 2 attention
    assert all(len(v) == 3 for v in graph.meta["merged_matmuls"].values())
    assert_same(proto.SerializeToString(), graph, batches(), atol=1e-6)


def test_merge_declines_a_shared_weight():
    from hwcompile.passes.merge_parallel_matmuls import check_merge

    graph = cleanup(from_proto(tiny_encoder()))
    q, k = [n for n in graph.main if n.op_type == "MatMul"][:2]
    k.replace_input_with(1, q.inputs[1])
    assert "shared" in check_merge(graph, [q, k])


def test_a_classifier_softmax_is_not_attention():
    from hwcompile.passes.quantize_attention import attention_matmuls

    w = helper.make_tensor("w", TensorProto.FLOAT, [H, 4], np.ones(H * 4, np.float32).tolist())
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["l"], name="fc"),
                           helper.make_node("Softmax", ["l"], ["p"], name="sm", axis=-1)], "clf",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, H])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 4])], [w])
    graph = cleanup(from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])))
    assert attention_matmuls(graph) == {"qk": [], "pv": []}

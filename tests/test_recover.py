"""Recovery training (hwcompile.recover): the torch interpreter agrees with onnxruntime, training
lowers the distillation loss, masks and layer ids stay, trained weights go back into the graph, and
bad input exits 2 with nothing written. Small models built here; CPU-independent assertions."""
from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

torch = pytest.importorskip("torch", reason="recovery needs the train extra (torch==2.13.0)")

from hwcompile.backends.base import get_backend  # noqa: E402
from hwcompile.cli import app  # noqa: E402
from hwcompile.data import Dataset  # noqa: E402
from hwcompile.errors import BackendUnavailable, DataError, UnsupportedError  # noqa: E402
from hwcompile.ir import from_proto, to_bytes  # noqa: E402
from hwcompile.passes import cleanup  # noqa: E402
from hwcompile.pipeline import build  # noqa: E402
from hwcompile.contract import PrecisionPlan, PruneSettings  # noqa: E402
from hwcompile.prune.masks import check_nm, reduction_axis  # noqa: E402
from hwcompile.recover import RecoverSettings, recover, recover_compiled  # noqa: E402
from hwcompile.recover.module import GraphModule  # noqa: E402
from hwcompile.targets import load_target  # noqa: E402

from conftest import assert_close, session  # noqa: E402

runner = CliRunner()


def _f(rng, name, shape, scale=0.3):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def tiny_cnn(seed: int = 0, extra_op: str | None = None) -> onnx.ModelProto:
    """x [N,3,8,8] -> Conv3x3 -> Clip -> Conv1x1(+b) -> Relu -> GAP -> Flatten -> Gemm -> logits [N,10]."""
    rng = np.random.default_rng(seed)
    inits = [_f(rng, "w1", (8, 3, 3, 3)), _f(rng, "b1", (8,)), _f(rng, "w2", (16, 8, 1, 1)), _f(rng, "b2", (16,)),
             _f(rng, "wg", (10, 16)), _f(rng, "bg", (10,)),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="clip1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wg", "bg"], ["logits"], name="fc", transB=1)]
    if extra_op == "Einsum":
        nodes[-1] = helper.make_node("Einsum", ["f", "wg"], ["logits"], name="fc_einsum", equation="nk,ck->nc")
    graph = helper.make_graph(nodes, "tiny_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def tiny_encoder(seed: int = 0, seq: int = 6, hidden: int = 16) -> onnx.ModelProto:
    """input_ids, attention_mask [N,S] -> embedding Gather -> LayerNorm -> one attention head with a
    mask bias (Shape/Gather/Concat/Reshape shape ops) -> Erf-GELU MLP -> last_hidden_state [N,S,H]."""
    rng = np.random.default_rng(seed)
    h = hidden
    c = lambda name, arr: numpy_helper.from_array(np.asarray(arr), name)
    inits = [_f(rng, "emb", (50, h), 1.0), c("ln_s", np.ones(h, np.float32)), c("ln_b", np.zeros(h, np.float32)),
             _f(rng, "wq", (h, h)), _f(rng, "wk", (h, h)), _f(rng, "wv", (h, h)), _f(rng, "bq", (h,)),
             _f(rng, "w1", (h, 2 * h)), _f(rng, "w2", (2 * h, h)), _f(rng, "b2", (h,)),
             c("one", np.array(1.0, np.float32)), c("neg", np.array(-1e4, np.float32)),
             c("half", np.array(0.5, np.float32)), c("rs2", np.array(1 / np.sqrt(2), np.float32)),
             c("rsh", np.array(1 / np.sqrt(h), np.float32)), c("ax1", np.array([1], np.int64)),
             c("i0", np.array([0], np.int64)), c("i1", np.array([1], np.int64)), c("hdim", np.array([h], np.int64))]
    n = helper.make_node
    nodes = [n("Gather", ["emb", "input_ids"], ["e"], name="embed"),
             n("LayerNormalization", ["e", "ln_s", "ln_b"], ["x"], name="ln", axis=-1, epsilon=1e-5),
             n("MatMul", ["x", "wq"], ["q0"], name="q_proj"), n("Add", ["q0", "bq"], ["q"], name="q_bias"),
             n("MatMul", ["x", "wk"], ["k"], name="k_proj"), n("MatMul", ["x", "wv"], ["v"], name="v_proj"),
             n("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
             n("MatMul", ["q", "kt"], ["s0"], name="scores"), n("Mul", ["s0", "rsh"], ["s1"], name="scale"),
             n("Unsqueeze", ["attention_mask", "ax1"], ["m1"], name="m_unsq"),
             n("Cast", ["m1"], ["m2"], name="m_cast", to=TensorProto.FLOAT),
             n("Sub", ["one", "m2"], ["m3"], name="m_inv"), n("Mul", ["m3", "neg"], ["m4"], name="m_big"),
             n("Add", ["s1", "m4"], ["s2"], name="m_add"), n("Softmax", ["s2"], ["a"], name="softmax", axis=-1),
             n("MatMul", ["a", "v"], ["o"], name="attn_out"), n("Add", ["o", "x"], ["r"], name="resid"),
             n("MatMul", ["r", "w1"], ["u"], name="mlp_in"), n("Mul", ["u", "rs2"], ["u1"], name="g_div"),
             n("Erf", ["u1"], ["u2"], name="g_erf"), n("Add", ["u2", "one"], ["u3"], name="g_add"),
             n("Mul", ["u", "u3"], ["u4"], name="g_mul"), n("Mul", ["u4", "half"], ["u5"], name="g_half"),
             n("MatMul", ["u5", "w2"], ["d0"], name="mlp_out"), n("Add", ["d0", "b2"], ["d"], name="mlp_bias"),
             n("Shape", ["d"], ["sh"], name="shape"), n("Gather", ["sh", "i0"], ["nb"], name="g_n", axis=0),
             n("Slice", ["sh", "i1", "hdim"], ["sl"], name="slice_s"),
             n("Concat", ["nb", "sl"], ["shp"], name="concat", axis=0),
             n("Reshape", ["d", "shp"], ["last_hidden_state"], name="reshape")]
    ins = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", seq]),
           helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", seq])]
    outs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["N", seq, h])]
    graph = helper.make_graph(nodes, "tiny_encoder", ins, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def cnn_data(n=48, seed=1) -> Dataset:
    return Dataset({"x": np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)})


def encoder_data(n=32, seq=6, seed=1) -> Dataset:
    rng = np.random.default_rng(seed)
    mask = (np.arange(seq)[None, :] < rng.integers(2, seq + 1, (n, 1))).astype(np.int64)
    return Dataset({"input_ids": rng.integers(0, 50, (n, seq)).astype(np.int64), "attention_mask": mask})


def graph_of(proto):
    return cleanup(from_proto(proto), log={})


def compiled(graph, precision="fp32", sparsity="dense", calib=None, tmp=None):
    target = load_target("host-cpu")
    backend = get_backend(target.backend)
    g, _ = build(graph, PrecisionPlan.uniform(precision, sparsity), target, backend, tmp, calib)
    return g


def interpret(graph, feeds) -> list[np.ndarray]:
    with torch.no_grad():
        out = GraphModule(graph)({k: torch.from_numpy(v) for k, v in feeds.items()})
    return [out[v.name].numpy() for v in graph.main.outputs]


def ort_run(graph, feeds) -> list[np.ndarray]:
    return session(onnx.ModelProto.FromString(to_bytes(graph))).run(None, feeds)


@pytest.mark.parametrize("make,data", [(tiny_cnn, cnn_data), (tiny_encoder, encoder_data)])
def test_interpreter_matches_onnxruntime_float(make, data):
    g = graph_of(make())
    feeds = next(data(4).batches(4))
    assert_close(ort_run(g, feeds), interpret(g, feeds), rel=1e-5)


def test_interpreter_matches_onnxruntime_int8_and_int4(tmp_path):
    """Fake quantization (Q/DQ) and MatMulNBits: the interpreter's output is onnxruntime's up to one
    quantization step of the output (ORT requantizes in integer arithmetic)."""
    g8 = compiled(graph_of(tiny_cnn()), "int8", calib=cnn_data(), tmp=tmp_path / "a")
    feeds = next(cnn_data(4, seed=2).batches(4))
    assert any(n.op_type == "QuantizeLinear" for n in g8.main)
    assert_close(ort_run(g8, feeds), interpret(g8, feeds), rel=0.03)
    g4 = compiled(graph_of(tiny_encoder(hidden=32)), "int4w", tmp=tmp_path / "b")
    assert any(n.op_type == "MatMulNBits" for n in g4.main)
    feeds = next(encoder_data(4).batches(4))
    assert_close(ort_run(g4, feeds), interpret(g4, feeds), rel=1e-4)


def _sparse_layers(g, teacher):
    return [n.name for n in teacher.layers() if n.name not in g.meta.get("prune_skipped", {})]


def _weights(g, names):
    out = {}
    for lid in names:
        w = g.node(lid).inputs[1]
        prod = w.producer()
        out[lid] = (prod.inputs[0] if prod is not None else w).const_value.numpy().copy()
    return out


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_recovery_lowers_the_loss_keeps_masks_and_ids(tmp_path, precision):
    teacher = graph_of(tiny_cnn())
    student = compiled(teacher, precision, "2:4", calib=cnn_data(), tmp=tmp_path)
    masked = _sparse_layers(student, teacher)
    assert masked, "the 2:4 pass pruned no layer"
    before = _weights(student, masked)
    names = [n.name for n in student.main]
    inits = sorted(student.main.initializers)
    settings = RecoverSettings(steps=40, lr=3e-3, batch_size=8, eval_every=10)
    plan = PrecisionPlan.uniform(precision, "2:4")
    recover_compiled(student, teacher, plan, settings, cnn_data())
    rep = student.meta["recovery"]
    assert rep["steps"] == 40 and rep["losses"] == {"logits": "kl"}
    assert rep["loss_best"] < rep["loss_start"]
    assert rep["masked_layers"] == len(masked)
    assert [n.name for n in student.main] == names and sorted(student.main.initializers) == inits
    student.lint()
    after = _weights(student, masked)
    changed = False
    for lid in masked:
        assert np.all(after[lid][before[lid] == 0] == 0), f"{lid}: a pruned weight came back"
        node = teacher.node(lid)
        tb = node.attributes.get("transB")
        ax = reduction_axis(node.op_type, after[lid].shape, {"transB": tb.as_int() if tb is not None else 0})
        assert not check_nm(after[lid], 2, 4, ax), f"{lid}: no longer 2:4"
        changed |= not np.array_equal(after[lid], before[lid])
    assert changed, "training changed no pruned weight"


def test_written_back_int8_weights_are_what_training_saw(tmp_path):
    """After write-back, onnxruntime on the graph agrees with the interpreter (latent weights were
    re-quantized with their own scales), and the student's loss on the data is the reported best."""
    teacher = graph_of(tiny_cnn())
    student = compiled(teacher, "int8", calib=cnn_data(), tmp=tmp_path)
    rep = recover(student, teacher, cnn_data(), RecoverSettings(steps=20, lr=3e-3, batch_size=8, eval_every=5))
    assert rep["weights_trained"] > 0
    feeds = next(cnn_data(4, seed=3).batches(4))
    assert_close(ort_run(student, feeds), interpret(student, feeds), rel=0.03)


def test_embedding_recovery_with_token_mask(tmp_path):
    teacher = graph_of(tiny_encoder())
    student = compiled(teacher, "fp32", "2:4", calib=encoder_data(), tmp=tmp_path)
    rep = recover(student, teacher, encoder_data(), RecoverSettings(steps=30, lr=3e-3, batch_size=8, eval_every=10),
                  masked_layers=_sparse_layers(student, teacher))
    assert rep["losses"] == {"last_hidden_state": "mse"}
    assert rep["loss_best"] < rep["loss_start"]


def test_recovery_is_deterministic(tmp_path):
    teacher = graph_of(tiny_cnn())
    outs = []
    for i in range(2):
        student = compiled(teacher, "fp32", "2:4", calib=cnn_data(), tmp=tmp_path / str(i))
        recover(student, teacher, cnn_data(), RecoverSettings(steps=15, lr=3e-3, batch_size=8),
                masked_layers=_sparse_layers(student, teacher))
        outs.append(to_bytes(student))
    assert outs[0] == outs[1]


def test_best_checkpoint_is_kept_and_time_budget_stops():
    teacher = graph_of(tiny_cnn())
    student = graph_of(tiny_cnn(seed=5))           # a different network: large loss to start with
    rep = recover(student, teacher, cnn_data(), RecoverSettings(steps=10 ** 6, minutes=0.002, batch_size=8))
    assert rep["steps"] < 10 ** 6
    assert rep["loss_best"] == min(v for _, v in rep["held_out"])
    # a learning rate that wrecks the student: the checkpoint kept is the untrained one
    student = graph_of(tiny_cnn(seed=5))
    ref = to_bytes(student)
    rep = recover(student, teacher, cnn_data(), RecoverSettings(steps=5, lr=50.0, batch_size=8, eval_every=1))
    assert rep["best_step"] == 0 and rep["loss_best"] == rep["loss_start"]
    assert to_bytes(student) == ref


def test_task_loss_when_labels_are_given():
    teacher = graph_of(tiny_cnn())
    data = cnn_data()
    data.labels = np.arange(len(data)) % 10
    rep = recover(graph_of(tiny_cnn()), teacher, data, RecoverSettings(steps=2, batch_size=8))
    assert rep["task_loss"] is True


# -- bad input through the CLI: exit 2, one line naming the culprit, nothing written ----------------
def _files(tmp_path, proto):
    model = tmp_path / "m.onnx"
    onnx.save(proto, model)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=cnn_data().inputs["x"])
    return model, calib


def test_cli_recovery_op_missing_names_the_op(tmp_path):
    model, calib = _files(tmp_path, tiny_cnn(extra_op="Einsum"))
    out = tmp_path / "out"
    r = runner.invoke(app, ["compile", str(model), "--calib", str(calib), "--recover-steps", "3", "-o", str(out),
                            "--repeats", "2"])
    assert r.exit_code == 2, r.output
    assert "Einsum" in r.output and "fc_einsum" in r.output
    assert not out.exists()


def test_cli_recovery_wrong_data_names_the_input(tmp_path):
    model, calib = _files(tmp_path, tiny_cnn())
    bad = tmp_path / "bad.npz"
    np.savez(bad, y=np.zeros((4, 3, 8, 8), np.float32))
    out = tmp_path / "out"
    r = runner.invoke(app, ["compile", str(model), "--calib", str(calib), "--recover-steps", "3", "--recover-data",
                            str(bad), "-o", str(out)])
    assert r.exit_code == 2 and "--recover-data" in r.output and "'x'" in r.output, r.output
    assert not out.exists()
    r = runner.invoke(app, ["compile", str(model), "--recover-steps", "3", "-o", str(out)])
    assert r.exit_code == 2 and "--recover-data" in r.output, r.output
    assert not out.exists()


def test_cli_recovery_without_torch_names_the_extra(tmp_path, monkeypatch):
    model, calib = _files(tmp_path, tiny_cnn())
    monkeypatch.setitem(sys.modules, "torch", None)
    out = tmp_path / "out"
    r = runner.invoke(app, ["compile", str(model), "--calib", str(calib), "--recover-steps", "3", "-o", str(out)])
    assert r.exit_code == 4 and "hwcompile[train]" in r.output, r.output   # a missing toolchain: exit 4
    assert not out.exists()


def test_cli_recovery_end_to_end(tmp_path):
    import json

    model, calib = _files(tmp_path, tiny_cnn())
    out = tmp_path / "out"
    r = runner.invoke(app, ["compile", str(model), "--calib", str(calib), "--sparsity", "2:4", "--recover-steps", "5",
                            "-o", str(out), "--repeats", "2"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["recovery"]["steps"] == 5 and rep["recovery"]["masked_layers"] >= 1


def test_bad_settings_name_the_option():
    from hwcompile.errors import ConfigError

    with pytest.raises(ConfigError, match="--recover-mode"):
        RecoverSettings(steps=1, mode="bogus")
    with pytest.raises(UnsupportedError, match="Einsum"):
        GraphModule(graph_of(tiny_cnn(extra_op="Einsum")))
    assert DataError and BackendUnavailable


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_block_reconstruction_lowers_each_block_loss(tmp_path, precision):
    from hwcompile.recover.block import cut_blocks

    teacher = graph_of(tiny_cnn())
    student = compiled(teacher, precision, "2:4", calib=cnn_data(), tmp=tmp_path)
    masked = _sparse_layers(student, teacher)
    before = _weights(student, masked)
    blocks = cut_blocks(GraphModule(student), GraphModule(teacher, trainable=False))
    assert [n.name for bl, _ in blocks for n in bl] == [n.name for n in student.main]
    rep = recover(student, teacher, cnn_data(), RecoverSettings(steps=60, lr=3e-3, batch_size=8, mode="block"),
                  masked_layers=masked)
    assert rep["mode"] == "block" and len(rep["blocks"]) >= 2
    assert all(e["loss_best"] <= e["loss_start"] for e in rep["blocks"])
    assert rep["loss_best"] < rep["loss_start"]
    after = _weights(student, masked)
    assert all(np.all(after[k][before[k] == 0] == 0) for k in masked)


# -- gradient criteria against their closed forms ----------------------------------------------
def _linear_classifier(seed=0, d=12, c=5):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((c, d)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32) * 0.1
    node = helper.make_node("Gemm", ["x", "w", "b"], ["logits"], name="fc", transB=1)
    graph = helper.make_graph([node], "lin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", c])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    x = rng.standard_normal((16, d)).astype(np.float32)
    y = rng.integers(0, c, 16)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w, b, x, y


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("criterion", ["snip", "fisher", "grasp"])
def test_gradient_criteria_match_their_closed_form(criterion):
    """Softmax regression logits = x W^T + b with labels: per batch of 8, G_b = (P - Y)^T X / 8;
    snip |W * mean G_b|, fisher W^2 * mean G_b^2, grasp W * mean_b H_b g with g = mean G_b and
    H_b g = sum_n (diag p_n - p_n p_n^T) g x_n x_n^T / 8."""
    from hwcompile.recover.criteria import gradient_importance

    proto, w, b, x, y = _linear_classifier()
    graph = graph_of(proto)
    got = gradient_importance(graph, ["fc"], Dataset({"x": x}, labels=y), criterion, batch_size=8)["fc"]
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    gs, hs = [], []
    for s in (0, 8):
        xb, yb = x64[s:s + 8], y[s:s + 8]
        p = _softmax(xb @ w64.T + b)
        gs.append((p - np.eye(w.shape[0])[yb]).T @ xb / 8)
    g = np.mean(gs, axis=0)
    for s in (0, 8):
        xb = x64[s:s + 8]
        p = _softmax(xb @ w64.T + b)
        hg = np.zeros_like(w64)
        for pn, xn in zip(p, xb):
            hg += np.outer((np.diag(pn) - np.outer(pn, pn)) @ (g @ xn), xn) / 8
        hs.append(hg)
    want = {"snip": np.abs(w64 * g), "fisher": w64 ** 2 * np.mean(np.square(gs), axis=0),
            "grasp": w64 * np.mean(hs, axis=0)}[criterion]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7 * np.abs(want).max())


def test_gradient_criterion_through_the_prune_pass(tmp_path):
    """prune_importance = snip: the 2:4 mask keeps, in each group of 4, the 2 largest SNIP scores."""
    from hwcompile.passes.prune import prune
    from hwcompile.recover.criteria import gradient_importance

    proto, w, b, x, y = _linear_classifier(d=16)
    graph = graph_of(proto)
    data = Dataset({"x": x})
    scores = gradient_importance(graph, ["fc"], data, "snip")["fc"]
    plan = PrecisionPlan.uniform("fp32", "2:4", prune=PruneSettings(importance="snip", reconstruct=False))
    pruned = prune(graph.clone(), plan, data)
    kept = pruned.node("fc").inputs[1].const_value.numpy() != 0
    want = np.zeros_like(kept)
    groups = scores.reshape(scores.shape[0], -1, 4)
    top = np.argsort(-groups, axis=2, kind="stable")[:, :, :2]
    np.put_along_axis(want.reshape(groups.shape), top, True, axis=2)
    assert np.array_equal(kept, want)
    assert pruned.meta["prune"]["layers"]["fc"]["mask"] == "snip"


@pytest.mark.parametrize("schedule", ["gradual", "iterative"])
def test_schedules_train_between_pruning_steps(schedule):
    """gradual / iterative with a recovery budget: steps - 1 prune -> recover cycles inside the pass (the
    last one is the pipeline's recovery); 2:4 holds at the end and every layer id is kept."""
    from hwcompile.passes.prune import prune

    teacher = graph_of(tiny_cnn())
    plan = PrecisionPlan.uniform("fp32", "2:4", prune=PruneSettings(schedule=schedule, recover_steps=4,
                                                                     recover_lr=3e-3))
    g = prune(teacher.clone(), plan, cnn_data())
    layers = g.meta["prune"]["layers"]
    cycles = next(v["recover_cycles"] for v in layers.values() if "recover_cycles" in v)
    assert len(cycles) == 2 and all(c["steps"] == 4 for c in cycles)
    assert [n.name for n in g.main] == [n.name for n in teacher.main]
    for lid in layers:
        w = g.node(lid).inputs[1].const_value.numpy()
        assert not check_nm(w, 2, 4, 1), lid


def test_cli_gradual_recovery_splits_the_budget(tmp_path):
    import json

    model, calib = _files(tmp_path, tiny_cnn())
    out = tmp_path / "out"
    r = runner.invoke(app, ["compile", str(model), "--calib", str(calib), "--sparsity", "2:4", "--prune-schedule",
                            "gradual", "--recover-steps", "6", "--prune-criterion", "snip", "-o", str(out),
                            "--repeats", "2"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "report.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert rep["recovery"]["steps"] == 2
    assert plan["prune"]["recover_steps"] == 2 and plan["prune"]["importance"] == "snip"
    r = runner.invoke(app, ["compile", str(model), "--calib", str(calib), "--sparsity", "2:4", "--prune-criterion",
                            "bogus", "-o", str(out)])
    assert r.exit_code == 2 and "importance" in r.output and "bogus" in r.output, r.output

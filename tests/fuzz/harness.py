"""Fuzzing the loader and the compile steps with mutated real models.

A case is a recipe ``{"seed": NAME, "level": "bytes" | "field", "rng": INT, "n": K}``: the seed model's
bytes with K random mutations drawn from ``random.Random(rng)``, either on the protobuf bytes or on
parsed fields (shapes, dtypes, attributes, opsets, wiring, initializers, external-data locations).
Recipes are tiny and rebuild the same bytes, so the corpus in ``corpus.jsonl`` stays small.

``run_case`` writes the case into a folder (beside a ``data.bin`` it may point its external data at,
and a ``secret.bin`` outside it), then runs load -> inspect -> check (deployment rules) -> clean-up ->
every uniform precision (plan, passes, lowering, export, one inference). The only acceptable
outcomes are success and an ``HwcompileError``; anything else is a crash.
"""
from __future__ import annotations

import hashlib
import importlib.util
import random
import signal
import traceback
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PRECISIONS = ("fp32", "fp16", "int8", "int8dyn", "int4w")
HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus.jsonl"


def _site(pkg: str) -> Path | None:
    spec = importlib.util.find_spec(pkg)
    return Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None


def seed_paths() -> dict[str, Path]:
    """Real models: the embedded default, onnx's light backend-test models, rapidocr's classifier."""
    from hwcompile.models import default_model

    seeds = {"digits_cnn": default_model().model}
    onnx_dir = _site("onnx")
    if onnx_dir:
        for p in sorted((onnx_dir / "backend" / "test" / "data" / "light").glob("*.onnx")):
            seeds[p.stem] = p
    ocr = _site("rapidocr_onnxruntime")
    if ocr and (ocr / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx").exists():
        seeds["ppocr_cls"] = ocr / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    return seeds


_SEED_BYTES: dict[str, bytes] = {}


def seed_bytes(name: str) -> bytes:
    if name not in _SEED_BYTES:
        _SEED_BYTES[name] = seed_paths()[name].read_bytes()
    return _SEED_BYTES[name]


# ---- mutations -------------------------------------------------------------------------------

_INTS = (0, 1, -1, 2, 3, 7, 255, 256, -2 ** 31, 2 ** 31 - 1, 2 ** 40, 2 ** 63 - 1, -2 ** 63)


def _byte_mutation(data: bytearray, rng: random.Random) -> None:
    k = rng.randrange(7)
    i = rng.randrange(len(data)) if data else 0
    if k == 0:
        data[i] ^= 1 << rng.randrange(8)
    elif k == 1:
        data[i] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    elif k == 2:
        del data[i:i + rng.randint(1, 64)]
    elif k == 3:
        data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif k == 4:
        del data[rng.randrange(len(data) + 1):]
    elif k == 5:
        j = rng.randrange(len(data)) if data else 0
        data[i:i] = data[j:j + rng.randint(1, 256)]
    else:  # a varint-looking run: long lengths and field numbers
        data[i:i + 1] = bytes([0xFF] * rng.randint(1, 10) + [0x01])


def _values(m: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    return [*m.graph.input, *m.graph.output, *m.graph.value_info]


def _shape(m, rng):
    vals = [v for v in _values(m) if v.type.HasField("tensor_type")]
    if not vals:
        return
    t = rng.choice(vals).type.tensor_type
    dims = t.shape.dim
    k = rng.randrange(4)
    if k == 0 and dims:
        rng.choice(dims).dim_value = rng.choice(_INTS[:9] + (1 << 20,))
    elif k == 1 and dims:
        rng.choice(dims).dim_param = rng.choice(("N", "batch", "", "x y"))
    elif k == 2:
        t.shape.dim.add().dim_value = rng.randint(0, 4)
    elif dims:
        del dims[rng.randrange(len(dims))]


def _dtype(m, rng):
    k = rng.randrange(2)
    if k == 0 and _values(m):
        rng.choice(_values(m)).type.tensor_type.elem_type = rng.randrange(0, 27)
    elif m.graph.initializer:
        rng.choice(m.graph.initializer).data_type = rng.randrange(0, 27)


def _attribute(m, rng):
    nodes = [n for n in m.graph.node if n.attribute]
    if not nodes:
        return
    node = rng.choice(nodes)
    a = rng.choice(node.attribute)
    k = rng.randrange(5)
    if k == 0:
        node.attribute.remove(a)
    elif a.type == onnx.AttributeProto.INT:
        a.i = rng.choice(_INTS)
    elif a.type == onnx.AttributeProto.INTS:
        if a.ints and k < 3:
            a.ints[rng.randrange(len(a.ints))] = rng.choice(_INTS)
        elif k == 3:
            a.ints.append(rng.choice(_INTS))
        elif a.ints:
            del a.ints[-1]
    elif a.type == onnx.AttributeProto.FLOAT:
        a.f = rng.choice((0.0, -1.0, float("nan"), float("inf"), 1e30))
    elif a.type == onnx.AttributeProto.STRING:
        a.s = rng.choice((b"", b"NOTSET", b"SAME_UPPER", b"\xff\xfe", b"x" * 100))
    elif a.type == onnx.AttributeProto.TENSOR:
        a.t.dims.append(rng.randint(0, 3))
    else:
        a.type = rng.randrange(0, 15)


def _opset(m, rng):
    k = rng.randrange(4)
    if k == 0 and m.opset_import:
        rng.choice(m.opset_import).version = rng.choice((1, 5, 7, 9, 11, 12, 13, 17, 21, 23, 25, 99, 0, -1))
    elif k == 1:
        m.ir_version = rng.choice((0, 1, 3, 4, 7, 9, 10, 11, 99))
    elif k == 2 and m.opset_import:
        del m.opset_import[:]
    else:
        m.opset_import.add(domain=rng.choice(("ai.onnx.ml", "com.microsoft", "x.custom", "")), version=rng.randint(1, 5))


def _wiring(m, rng):
    g = m.graph
    if not g.node:
        return
    names = [x for n in g.node for x in (*n.input, *n.output)] + [i.name for i in g.input] + ["", "nowhere"]
    node = rng.choice(g.node)
    k = rng.randrange(8)
    if k == 0 and node.input:
        node.input[rng.randrange(len(node.input))] = rng.choice(names)
    elif k == 1 and node.output:
        node.output[rng.randrange(len(node.output))] = rng.choice(names)
    elif k == 2:
        g.node.remove(node)
    elif k == 3:
        g.node.append(node)
    elif k == 4 and len(g.node) > 1:
        i, j = rng.randrange(len(g.node)), rng.randrange(len(g.node))
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(g.node[i]), b.CopyFrom(g.node[j])
        g.node[i].CopyFrom(b), g.node[j].CopyFrom(a)
    elif k == 5:
        node.op_type = rng.choice(("Conv", "MatMul", "Gemm", "Relu", "Add", "Reshape", "Loop", "If", "Nope",
                                   "QuantizeLinear", "BatchNormalization", "Gather", "Softmax"))
    elif k == 6 and g.output:
        g.output[rng.randrange(len(g.output))].name = rng.choice(names)
    elif node.input:
        del node.input[rng.randrange(len(node.input))]


def _initializer(m, rng):
    inits = list(m.graph.initializer)
    if not inits:
        return
    t = rng.choice(inits)
    k = rng.randrange(6)
    if k == 0 and t.dims:
        t.dims[rng.randrange(len(t.dims))] = rng.choice((0, 1, 2, 3, 1 << 20, -1))
    elif k == 1 and t.raw_data:
        t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data))]
    elif k == 2 and t.data_type == TensorProto.FLOAT and 0 < len(t.raw_data) <= 1 << 24:
        a = numpy_helper.to_array(t).copy()
        a.reshape(-1)[rng.randrange(a.size)] = rng.choice((np.nan, np.inf, -np.inf, 1e38))
        t.raw_data = a.tobytes()
    elif k == 3:
        m.graph.initializer.remove(t)
    elif k == 4:
        t.dims.append(rng.randint(1, 3))
    else:
        t.name = rng.choice([n for n in m.graph.node[0].input] or ["x"])


def _external(m, rng):
    inits = [t for t in m.graph.initializer if t.raw_data or t.data_location == TensorProto.EXTERNAL]
    if not inits:
        return
    t = rng.choice(inits)
    loc = rng.choice(("data.bin", "data.bin", "../secret.bin", "/etc/passwd", "missing.bin", "sub/../data.bin",
                      "./data.bin", "", "/dev/zero", "C:\\x.bin", "data.bin\\..\\..\\secret.bin"))
    n = len(t.raw_data)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    t.external_data.add(key="location", value=loc)
    if rng.random() < 0.7:
        t.external_data.add(key="offset", value=str(rng.choice((0, 0, 4, 4096, -8, 1 << 40))))
    if rng.random() < 0.7:
        t.external_data.add(key="length", value=rng.choice((str(n), str(n), "0", "abc", str(1 << 40), "-1")))


FIELD_MUTATIONS = (_shape, _dtype, _attribute, _opset, _wiring, _initializer, _external)


def mutate(recipe: dict) -> bytes:
    """The bytes of a case (deterministic for a recipe and the installed onnx/protobuf)."""
    rng = random.Random(recipe["rng"])
    data = seed_bytes(recipe["seed"])
    if recipe["level"] == "bytes":
        buf = bytearray(data)
        for _ in range(recipe["n"]):
            _byte_mutation(buf, rng)
        return bytes(buf)
    m = onnx.ModelProto()
    m.ParseFromString(data)
    for _ in range(recipe["n"]):
        rng.choice(FIELD_MUTATIONS)(m, rng)
    return m.SerializeToString(deterministic=True)


def random_recipe(rng: random.Random, seeds: list[str], bytes_share: float = 0.5,
                  bytes_seeds: list[str] | None = None) -> dict:
    """A random case; bytes-level ones from ``bytes_seeds`` (default: all seeds)."""
    level = "bytes" if rng.random() < bytes_share else "field"
    pool = (bytes_seeds or seeds) if level == "bytes" else seeds
    return {"seed": rng.choice(pool), "level": level, "rng": rng.getrandbits(48), "n": rng.choice((1, 1, 1, 2, 3, 5))}


# ---- running a case --------------------------------------------------------------------------

class CaseTimeout(BaseException):
    """Past the time cap (a BaseException, so no ``except Exception`` in a library wraps it)."""


@contextmanager
def time_cap(seconds: float):
    def on_alarm(signum, frame):
        raise CaseTimeout(f"case ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def write_case(data: bytes, folder: Path) -> Path:
    """``folder``/case/model.onnx beside data.bin (4 KiB), and folder/secret.bin outside it."""
    case = folder / "case"
    case.mkdir(parents=True, exist_ok=True)
    if not (case / "data.bin").exists():
        (folder / "secret.bin").write_bytes(b"S" * 4096)
        (case / "data.bin").write_bytes(bytes(range(256)) * 16)
    p = case / "model.onnx"
    p.write_bytes(data)
    return p


def _feeds(graph, n: int):
    from hwcompile.data import Dataset, input_specs

    rng = np.random.default_rng(0)
    inputs = {}
    for name, (dims, dtype) in input_specs(graph).items():
        shape = [d if isinstance(d, int) and 0 < d <= 512 else 1 for d in (dims or [])]
        if int(np.prod(shape)) > 1 << 22:
            shape = [1] * len(shape)
        arr = rng.standard_normal([n, *shape[1:]] if shape else [n]) if np.issubdtype(dtype, np.floating) \
            else rng.integers(0, 2, [n, *shape[1:]] if shape else [n])
        inputs[name] = arr.astype(dtype)
    return Dataset(inputs)


def shape_class(data: bytes) -> str:
    """Digest of a model with each initializer's values replaced by their class (finite or not, and
    whether any magnitude exceeds 1e4): cases alike in it take the same path through the compile steps."""
    m = onnx.ModelProto()
    m.ParseFromString(data)
    for t in m.graph.initializer:
        cls = "?"
        if t.data_type == TensorProto.FLOAT and t.raw_data and len(t.raw_data) % 4 == 0:
            a = np.frombuffer(t.raw_data, np.float32)
            fin = np.isfinite(a)
            big = float(np.max(np.abs(a[fin]))) if fin.any() else 0.0
            cls = f"{int(fin.all())}:{int(big > 1e4)}"
        t.ClearField("raw_data")
        t.doc_string = cls
    return hashlib.sha256(m.SerializeToString(deterministic=True)).hexdigest()


def run_pipeline(path: Path, work: Path, precisions=PRECISIONS, deep_seen: set | None = None) -> str:
    """load -> inspect -> check -> clean-up -> each precision built, exported and run once
    (with ``deep_seen``: only load -> inspect -> check when a case of the same ``shape_class`` ran
    the whole chain before; returns "shallow" then)."""
    from hwcompile.analysis.stats import model_summary
    from hwcompile.backends.base import get_backend
    from hwcompile.backends.tensorrt.rules import check_model
    from hwcompile.ir import load
    from hwcompile.passes import cleanup
    from hwcompile.pipeline import CompileOptions, build, make_plan
    from hwcompile.data import as_feeds
    from hwcompile.targets import load_target

    graph = load(path)
    model_summary(graph)
    check_model(onnx.load(str(path), load_external_data=False))
    if deep_seen is not None:
        key = shape_class(path.read_bytes())
        if key in deep_seen:
            return "shallow"
        deep_seen.add(key)
    graph = cleanup(graph)
    target = load_target("host-cpu")
    backend = get_backend(target.backend)
    calib = _feeds(graph, 4)
    for prec in precisions:
        plan = make_plan(graph, CompileOptions(precision=prec), target)
        g, art = build(graph, plan, target, backend, work / prec, calib)
        backend.load(art, target)(as_feeds(next(calib.batches(1)), g))
    return "ok"


def run_case(data: bytes, work: Path, cap_s: float = 60.0, precisions=PRECISIONS,
             deep_seen: set | None = None) -> tuple[str, str]:
    """("ok" | "shallow", "") | ("error", one-line message of the HwcompileError) |
    ("crash", traceback) | ("hang", message)."""
    from hwcompile.errors import HwcompileError

    path = write_case(data, work)
    try:
        with time_cap(cap_s):
            return run_pipeline(path, work / "out", precisions, deep_seen), ""
    except HwcompileError as e:
        return "error", f"{type(e).__name__}: {e.render()}"
    except CaseTimeout as e:
        return "hang", str(e)
    except Exception as e:
        cause = e
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__
            if isinstance(cause, CaseTimeout):  # wrapped by a library's ``except BaseException`` re-raise
                return "hang", str(cause)
        return "crash", traceback.format_exc(limit=-6)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def crash_key(tb: str) -> str:
    """Crashes grouped by exception type and the innermost hwcompile frame."""
    lines = [ln.strip() for ln in tb.strip().splitlines()]
    frames = [ln for ln in lines if ln.startswith("File ") and "hwcompile" in ln]
    where = frames[-1].split(", in ")[-1] if frames else "?"
    where_file = frames[-1].split('"')[1].split("hwcompile/")[-1] if frames else "?"
    return f"{lines[-1].split(':')[0]} @ {where_file}:{where}"

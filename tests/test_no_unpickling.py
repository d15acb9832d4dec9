"""Nothing hwcompile reads is unpickled: data files that are not plain .npz archives are refused
with a message saying what they are, and the source never calls an unpickling loader."""
from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hwcompile.cli import app

PKG = Path(__file__).resolve().parents[1] / "hwcompile"
runner = CliRunner()


def _calib(tmp_path, name, write):
    p = tmp_path / name
    write(p)
    r = runner.invoke(app, ["compile", "--out", str(tmp_path / "out"), "--precision", "int8", "--calib", str(p)])
    assert r.exit_code == 2, r.output
    assert "internal error" not in r.output and not (tmp_path / "out").exists()
    assert name in r.output
    return r.output


@pytest.mark.parametrize("name, write, expect", [
    ("notes.txt", lambda p: p.write_text("just text\n"), "not an .npz archive"),
    ("empty.npz", lambda p: p.write_bytes(b""), "is empty"),
    ("single.npy", lambda p: np.save(p, np.zeros(3)), "single .npy array"),
    ("objects.npz", lambda p: np.savez(p, x=np.array([{"a": 1}], dtype=object)), "holds Python objects"),
    ("pickle.npz", lambda p: p.write_bytes(pickle.dumps({"x": 1})), "not an .npz archive"),
    ("broken.npz", lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 40), "corrupt .npz"),
])
def test_bad_data_files_are_named_and_never_unpickled(tmp_path, name, write, expect):
    out = _calib(tmp_path, name, write)
    assert expect in out and "pickled" not in out


def test_source_has_no_unpickling_loader():
    bad = []
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal") for n in names):
                    bad.append(f"{path.name}:{node.lineno} imports an unpickler")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                owner = ast.unparse(node.func.value)
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                if owner in ("np", "numpy") and kw.get("allow_pickle") != "False":
                    bad.append(f"{path.name}:{node.lineno} np.load without allow_pickle=False")
                if owner == "torch" and kw.get("weights_only") != "True":
                    bad.append(f"{path.name}:{node.lineno} torch.load without weights_only=True")
    assert bad == []

"""--out never destroys what is not an hwcompile output; a killed compile leaves the previous complete
output (or none) and no leftovers after the next run; modes follow the umask."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hwcompile import output
from hwcompile.cli import app
from hwcompile.errors import ConfigError
from hwcompile.models import default_model

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _compile(out, *extra):
    return _run("compile", "--out", out, "--repeats", 2, *extra)


def _strays(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _complete(out: Path) -> bool:
    """Every file listed with its sha256, nothing else: a complete, unmixed output."""
    ok, why = output.is_hwcompile_output(out)
    if not ok:
        return False
    files = json.loads((out / "manifest.json").read_text())["files"]
    return all(hashlib.sha256((out / k).read_bytes()).hexdigest() == v for k, v in files.items()) and \
        "model.onnx" in files and "report.json" in files


def test_existing_folder_with_user_files_is_kept(tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("important\n")
    r = _compile(out)
    assert r.exit_code == 2, r.output
    assert "existing" in r.output and "not an hwcompile output" in r.output and "--force" in r.output
    assert (out / "notes.txt").read_text() == "important\n"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert _strays(out) == []


def test_force_replaces_a_foreign_folder(tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("x")
    r = _compile(out, "--force")
    assert r.exit_code == 0, r.output
    assert not (out / "notes.txt").exists() and _complete(out)
    assert _strays(out) == []


def test_hwcompile_output_is_replaced_but_not_with_an_unlisted_file(tmp_path):
    out = tmp_path / "out"
    assert _compile(out).exit_code == 0
    first = (out / "report.json").read_text()
    r = _compile(out, "--precision", "fp16")
    assert r.exit_code == 0, r.output
    assert _complete(out) and (out / "report.json").read_text() != first
    (out / "mine.txt").write_text("keep")
    r = _compile(out)
    assert r.exit_code == 2 and "mine.txt is not listed" in r.output
    assert (out / "mine.txt").read_text() == "keep" and _complete(out) is False
    assert _strays(out) == []


def test_empty_existing_folder_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert _compile(out).exit_code == 0 and _complete(out)


@pytest.mark.parametrize("where", [".", "/", "..", "cwd-abs"])
def test_dot_root_and_working_folder_are_refused(tmp_path, monkeypatch, where):
    work = tmp_path / "w"
    work.mkdir()
    (work / "keep.txt").write_text("x")
    monkeypatch.chdir(work)
    r = _compile(str(work) if where == "cwd-abs" else where)
    assert r.exit_code == 2, r.output
    assert "--out" in r.output and "internal error" not in r.output
    assert (work / "keep.txt").read_text() == "x"


def test_out_equal_to_or_containing_the_input_is_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    model = folder / "model.onnx"
    shutil.copy(default_model().model, model)
    before = model.read_bytes()
    for out in (folder, model, tmp_path):
        r = _run("compile", model, "--out", out, "--repeats", 2)
        assert r.exit_code == 2, r.output
        assert "would replace the input" in r.output or "not a folder" in r.output or \
            "not an hwcompile output" in r.output
    assert model.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["model.onnx"]
    with pytest.raises(ConfigError, match="would replace the input"):
        output.check_out_dir(folder, [model], force=True)  # --force never overrides this


def test_out_below_a_file_is_refused(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    r = _compile(f / "sub")
    assert r.exit_code == 2 and "is not a folder" in r.output
    assert f.read_text() == "x"
    r = _compile(f)
    assert r.exit_code == 2 and "not a folder" in r.output and f.read_text() == "x"


def test_unwritable_parent_is_a_clear_error(tmp_path, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    if os.geteuid() != 0:
        parent.chmod(0o555)
    else:  # root writes anywhere: make the folder creation fail as it would for a user
        real_mkdir = os.mkdir

        def deny(path, *a, **k):
            if Path(path).parent == parent:
                raise PermissionError(13, "Permission denied", str(path))
            return real_mkdir(path, *a, **k)

        monkeypatch.setattr(output.os, "mkdir", deny)
    try:
        r = _compile(parent / "out")
    finally:
        parent.chmod(0o755)
    assert r.exit_code == 2, r.output
    assert "cannot create the output folder" in r.output and "Permission denied" in r.output
    assert [p.name for p in parent.iterdir()] == []


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_modes_follow_the_umask(tmp_path, mask):
    out = tmp_path / "out"
    code = ("import os, sys; os.umask(int(sys.argv[1], 8)); from hwcompile.cli import main; "
            "sys.argv = ['hwcompile', 'compile', '--out', sys.argv[2], '--repeats', '2']; main()")
    r = subprocess.run([sys.executable, "-c", code, oct(mask)[2:], str(out)], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    for p in out.rglob("*"):
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(p.stat().st_mode) == want, p


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_are_removed_only_when_provably_ours(tmp_path):
    out = tmp_path / "out"
    dead = _dead_pid()

    def leftover(pid, marker=True, name_out="out"):
        stage = tmp_path / f".out.hwcompile-{pid}-{random.getrandbits(32):08x}"
        stage.mkdir()
        (stage / "model.onnx").write_text("partial")
        if marker:
            stage.with_name(stage.name + ".marker").write_text(
                json.dumps({"format": "hwcompile.staging/1", "pid": pid, "out": name_out}))
        return stage

    ours = leftover(dead)
    no_marker = leftover(dead, marker=False)
    running = leftover(os.getppid())
    other = leftover(dead, name_out="elsewhere")
    assert output.clean_stale(out) == [ours]
    assert not ours.exists() and not ours.with_name(ours.name + ".marker").exists()
    assert no_marker.exists() and running.exists() and other.exists()


def test_kill_at_random_moments_leaves_old_or_new_complete_output(tmp_path):
    """A few kill -9s (benchmarks/bench_kill.py runs the long loop): the folder is always a complete
    output (the previous one or the new one), and the next run leaves no leftovers."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hwcompile.cli", "compile", "--out", str(out), "--repeats", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    t0 = time.perf_counter()
    assert subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    full = time.perf_counter() - t0
    rng = random.Random(14)
    for _ in range(6):
        p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.0) * full)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert _complete(out)
    assert subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    assert _complete(out) and _strays(out) == []

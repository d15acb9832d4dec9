"""Release use: the config file, gates, `compare`, every documented exit code and `--json` everywhere.

Nothing here depends on this CPU's speed: latency gates use limits every machine passes or fails
(or a ratio of a build to its own replayed measurement, exactly 1)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hwcompile.cli import app
from hwcompile.models import default_model

runner = CliRunner()


def run(*args, cwd: Path | None = None):
    if cwd is None:
        return runner.invoke(app, [str(a) for a in args])
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def int8_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gates") / "int8"
    r = run("compile", "--precision", "int8", "--repeats", 5, "-o", out)
    assert r.exit_code == 0, r.output
    return out


def test_config_file_mirrors_options_cli_overrides_and_effective_config(tmp_path):
    d = default_model()
    (tmp_path / "hwcompile.toml").write_text(
        f'precision = "int8"\nrepeats = 3\ncalib = "{d.calib}"\nout = "build/hwc"\ncalib-method = "percentile"\n'
        "fail_if_larger_than = 100000000\n")
    r = run("compile", "--repeats", 4, cwd=tmp_path)               # the CLI overrides the file
    assert r.exit_code == 0, r.output
    out = tmp_path / "build" / "hwc"                                # a relative path is the file's folder's
    cfg = json.loads((out / "config.json").read_text())["compile"]
    assert cfg["precision"] == "int8" and cfg["repeats"] == 4 and cfg["quant"]["calib_method"] == "percentile"
    assert cfg["config_file"] == str(tmp_path / "hwcompile.toml") and cfg["gates"]["fail_if_larger_than"] == 100000000
    man = json.loads((out / "manifest.json").read_text())
    assert man["inputs"]["config_file"]["sha256"] and man["inputs"]["config"]["file"] == "config.json"
    plan = json.loads((out / "plan.json").read_text())
    assert plan["default"]["weight"] == "int8"


def test_pyproject_table_and_bad_config_named(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.hwcompile]\nprecison = "int8"\n')
    r = run("compile", cwd=tmp_path)
    assert r.exit_code == 2 and "unknown key 'precison'" in r.output and "did you mean 'precision'" in r.output
    assert "[tool.hwcompile]" in r.output and not (tmp_path / "hwcompile-out").exists()
    (tmp_path / "bad.toml").write_text('repeats = "many"\n')
    r = run("--config", tmp_path / "bad.toml", "compile", cwd=tmp_path)
    assert r.exit_code == 2 and "bad.toml: repeats: must be an integer" in r.output
    (tmp_path / "broken.toml").write_text('repeats = \n')
    r = run("--config", tmp_path / "broken.toml", "compile")
    assert r.exit_code == 2 and "not valid TOML" in r.output
    r = run("--config", tmp_path / "missing.toml", "compile")
    assert r.exit_code == 2 and "config file not found" in r.output


def test_gates_pass_fail_and_exit_3_with_output_written(int8_out, tmp_path):
    base = ["compile", "--precision", "int8", "--repeats", 5]
    ok = run(*base, "-o", tmp_path / "ok", "--fail-if-accuracy-drop", 100, "--fail-if-slower-than", 1e6,
             "--fail-if-larger-than", 10**9)
    assert ok.exit_code == 0, ok.output
    assert ok.output.count("passed") == 3
    size = json.loads((int8_out / "report.json").read_text())["compiled"]["size_bytes"]
    bad = run(*base, "-o", tmp_path / "bad", "--fail-if-larger-than", size - 1, "--fail-if-slower-than", 1e-9)
    assert bad.exit_code == 3 and "gate fail-if-larger-than: FAILED" in bad.output
    assert "gate fail-if-slower-than: FAILED" in bad.output
    assert (tmp_path / "bad" / "model.onnx").is_file()               # the output is there to look at
    gates = json.loads((tmp_path / "bad" / "timings.json").read_text())["gates"]
    assert {g["gate"]: g["passed"] for g in gates} == {"fail_if_slower_than": False, "fail_if_larger_than": False}
    # against an earlier release: the same build replays the same measurement, so the ratio is exactly 1
    same = run(*base, "-o", tmp_path / "same", "--baseline", int8_out / "report.json", "--fail-if-slower-than", 1.0,
               "--json")
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["gates"][0]["value"] == 1.0
    r = run(*base, "-o", tmp_path / "x", "--baseline", tmp_path / "nowhere.json", "--fail-if-slower-than", 1)
    assert r.exit_code == 2 and "--baseline" in r.output
    # a negative limit is refused before any work
    acc = run(*base, "-o", tmp_path / "acc", "--fail-if-accuracy-drop", -1)
    assert acc.exit_code == 2 and "--fail-if-accuracy-drop" in acc.output


def test_compare_reports_differences_and_exits_3_on_regression(int8_out, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(int8_out, twin)
    same = run("compare", int8_out, twin, "--json")
    assert same.exit_code == 0, same.output
    res = json.loads(same.stdout)
    assert res["ok"] and res["plan"]["changed_layers"] == {} and res["latency"]["ratio"] == 1.0
    fp32 = tmp_path / "fp32"
    assert run("compile", "--repeats", 5, "-o", fp32).exit_code == 0
    worse = run("compare", int8_out, fp32)                      # FP32 is 2-3x the size of INT8 on any machine
    assert worse.exit_code == 3 and "REGRESSION: size" in worse.output and "layer(s) changed" in worse.output
    assert run("compare", fp32, int8_out, "--max-accuracy-drop", 1000, "--max-slowdown", 1e6).exit_code == 0  # SNR in dB
    assert run("compare", int8_out, tmp_path / "nothing").exit_code == 2


def test_every_exit_code(tmp_path, monkeypatch, int8_out):
    assert run("verify", int8_out).exit_code == 0                                     # 0 success
    assert run("compile", "--precision", "int9", "-o", tmp_path / "a").exit_code == 2  # 2 bad input
    r = run("compile", "--repeats", 3, "-o", tmp_path / "b", "--fail-if-larger-than", 1)
    assert r.exit_code == 3                                                           # 3 a gate failed
    # 4: the target cannot build here (its cross compiler is not installed)
    pytest.importorskip("tvm")
    target = (Path(__import__("hwcompile").__file__).parent / "targets" / "arm64-tvm.toml").read_text()
    custom = tmp_path / "board.toml"
    custom.write_text(target.replace('name = "arm64-tvm"', 'name = "board"')
                      .replace('cc = "aarch64-linux-gnu-g++"', 'cc = "no-such-cross-g++"'))
    r = run("compile", "--target", custom, "--repeats", 3, "-o", tmp_path / "c")
    assert r.exit_code == 4 and "no-such-cross-g++" in r.output, r.output
    # 1: an internal error (a bug) is one line, exit 1
    import hwcompile.pipeline as pipeline

    monkeypatch.setattr(pipeline, "make_plan", lambda *a, **k: 1 / 0)
    r = run("compile", "-o", tmp_path / "d")
    assert r.exit_code == 1 and "internal error: ZeroDivisionError" in r.output


def test_json_for_every_subcommand(int8_out, tmp_path):
    d = default_model()
    model = int8_out / "model.onnx"
    cmds = {"compile": ["compile", "--repeats", 3, "-o", tmp_path / "j"], "inspect": ["inspect", d.model],
            "profile": ["profile", d.model, "--repeats", 3], "targets": ["targets"],
            "debug": ["debug", "--samples", 8, "--top", 3], "analyze": ["analyze", d.model],
            "check": ["check", model], "verify": ["verify", int8_out], "compare": ["compare", int8_out, int8_out],
            "cache info": ["cache", "info"], "cache clear": ["cache", "clear", "--kind", "nothing-here"]}
    from typer.main import get_command

    listed = set()
    for name, c in get_command(app).commands.items():
        listed |= {f"{name} {s}" for s in c.commands} if hasattr(c, "commands") else {name}
    assert listed <= set(cmds), listed - set(cmds)          # a new subcommand must join this test
    for name, args in cmds.items():
        r = run(*args, "--json")
        assert r.exit_code in ((0, 3) if name == "check" else (0,)), (name, r.output)
        json.loads(r.stdout)

"""The Python API: README's example runs as written; options are checked by name."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_api_example_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("**Python API.**"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)
    finally:
        os.chdir(old)
    result = scope["result"]
    assert result.ok and result.gates[0]["gate"] == "fail_if_accuracy_drop"
    assert (tmp_path / "build" / "digits-int8" / "model.onnx").is_file()
    assert result.plan.default.candidate == "int8" and result.report["compiled"]["latency_ms"] > 0


def test_api_options_by_name(tmp_path):
    import hwcompile
    from hwcompile.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown option 'precison'"):
        hwcompile.compile(None, "host-cpu", tmp_path / "x", precison="int8")
    r = hwcompile.compile(None, "host-cpu", tmp_path / "y", precision="int8", calib_method="percentile", repeats=3,
                          fail_if_larger_than=1)
    assert not r.ok and r.gates[0]["passed"] is False and r.plan.quant.calib_method == "percentile"
    assert isinstance(r, hwcompile.CompileResult) and (tmp_path / "y" / "report.html").is_file()

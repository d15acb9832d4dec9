"""The TensorRT targets' [backend_settings]: closed and typed, refused through the CLI naming file and field."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hwcompile.backends.tensorrt import engines as engines_mod
from hwcompile.backends.tensorrt.settings import TensorRTSettings
from hwcompile.cli import app
from hwcompile.errors import BackendUnavailable, ConfigError
from hwcompile.targets import load_target

GOOD = 'name = "gpu"\nbackend = "tensorrt"\nprecisions = ["fp32", "int8"]\n\n[backend_settings]\n'


@pytest.mark.parametrize("line, field", [
    ('sparse_weights = "false"', "sparse_weights"),          # bool("false") was True
    ("workspace_mb = 2.5", "workspace_mb"),                 # int(2.5) was 2
    ('max_batch = "8"', "max_batch"),
    ("max_batch = 0", "max_batch"),
    ('compute_capabilities = "8.0"', "compute_capabilities"),
    ('compute_capabilities = ["sm_80"]', "compute_capabilities"),
    ('timing_cache = "../elsewhere.cache"', "timing_cache"),
    ("profiles = { input = [[1, 3], [1, 3]] }", "profiles.input"),
    ("opset = 17", "opset"),                                # no longer a setting: unknown key
    ('fp8 = true', "fp8"),
])
def test_bad_tensorrt_setting_exits_2_naming_file_and_field(tmp_path, line, field):
    t = tmp_path / "gpu.toml"
    t.write_text(GOOD + line + "\n")
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["compile", "--target", str(t), "--precision", "int8", "--out", str(out),
                                 "--repeats", "1"])
    assert r.exit_code == 2, r.output
    flat = " ".join(r.output.split())
    assert str(t) in flat.replace("\n", "") or "gpu.toml" in flat, r.output
    assert field in flat and "[backend_settings]" in flat, r.output
    assert not out.exists()
    assert not list(tmp_path.glob(".o.*"))  # no half-written output either


def test_bundled_targets_parse_and_enforce_compute_capability(monkeypatch, tmp_path):
    amp = TensorRTSettings.from_target(load_target("nvidia-ampere"))
    hop = TensorRTSettings.from_target(load_target("nvidia-hopper"))
    assert amp.compute_capabilities == ("8.0", "8.6", "8.7") and hop.compute_capabilities == ("9.0",)
    assert amp.sparse_weights is True and amp.timing_cache == "timing.cache" and amp.max_batch == 8
    assert "fp8" not in load_target("nvidia-hopper").precisions
    assert amp.check_gpu("8.6") is None and hop.check_gpu("9.0") is None
    assert "9.0" in amp.check_gpu("9.0") and "compute_capabilities" in amp.check_gpu("9.0")
    assert TensorRTSettings().check_gpu("12.0") is None  # no list: any GPU

    # the real engine service refuses before TensorRT is asked to build anything
    monkeypatch.setattr(engines_mod, "gpu_capability", lambda: "9.0")
    monkeypatch.setattr(engines_mod, "build_engine", lambda *a, **k: pytest.fail("built on the wrong GPU"))
    with pytest.raises(BackendUnavailable) as e:
        engines_mod.TensorRTEngines().build(tmp_path / "m.onnx", tmp_path / "m.plan", amp, sparse=False)
    assert "9.0" in e.value.message and e.value.where == "backend_settings.compute_capabilities"


def test_settings_values_are_typed(monkeypatch, tmp_path):
    t = tmp_path / "gpu.toml"
    t.write_text(GOOD + 'timing_cache = false\nsparse_weights = false\nprofiles = { ids = [[1, 16], [1, 128], [8, 512]] }\n')
    s = TensorRTSettings.from_target(load_target(str(t)))
    assert s.timing_cache is None and s.timing_cache_path() is None and s.sparse_weights is False
    assert s.profiles == {"ids": ((1, 16), (1, 128), (8, 512))}
    monkeypatch.setenv("HWCOMPILE_CACHE_DIR", str(tmp_path / "root"))
    d = TensorRTSettings.from_target(load_target("nvidia-ampere")).timing_cache_path()
    assert d == tmp_path / "root" / "tensorrt" / "timing.cache"
    with pytest.raises(ConfigError) as e:
        t.write_text(GOOD + "workspace_mb = true\n")
        TensorRTSettings.from_target(load_target(str(t)))
    assert e.value.where.endswith("[backend_settings] workspace_mb")

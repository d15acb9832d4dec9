"""benchmarks/gpu/run_gpu.py --dry-run: every CPU-side step runs, every engine step is skipped saying why."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.gpu.run_gpu import gpu_targets, main  # noqa: E402


def test_dry_run_records_cpu_steps_and_skips_engine_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("HWCOMPILE_CACHE_DIR", str(tmp_path / "cache"))
    out = main(["--dry-run", "--models", "default", "--configs", "fp16,int8", "--targets", "nvidia-ampere",
                "--skip", "gpu_tests", "--out", str(tmp_path / "run.json"), "--work", str(tmp_path / "w")])
    data = json.loads(out.read_text())
    steps = data["steps"]
    assert data["dry_run"] is True and data["targets"] == ["nvidia-ampere"]
    assert steps["env"]["status"] == "ok" and "available" in steps["env"]["tensorrt"]
    for name in ("default/prepare", "default/fp32_reference", "default/nvidia-ampere/fp16/compile",
                 "default/nvidia-ampere/int8/compile", "default/peer_export"):
        assert steps[name]["status"] == "ok", (name, steps[name])
    comp = steps["default/nvidia-ampere/int8/compile"]
    assert comp["rules_pass"] is True and 0.9 <= comp["cpu_reference"]["top1"] <= 1.0
    assert steps["default/fp32_reference"]["top1"] >= comp["cpu_reference"]["top1"] - 0.05
    assert steps["default/peer_export"]["int8"]["tensorrt_rules"] == "pass"  # the peer's Q/DQ suits TensorRT too
    skipped = ["planner", "default/nvidia-ampere/fp16/engine", "default/nvidia-ampere/int8/engine",
               "default/peer_engine", "default/latency"]
    for name in skipped:
        assert steps[name]["status"] == "skipped" and steps[name]["reason"].startswith("dry run"), (name, steps[name])
        assert steps["env"]["tensorrt"]["status"] in steps[name]["reason"]
    assert "gpu_tests" not in steps and "elapsed_s" in data and "finished" in data


def test_engine_targets_follow_the_gpu_compute_capability():
    assert gpu_targets("9.0") == ["nvidia-hopper"]
    assert gpu_targets("8.6") == ["nvidia-ampere"]
    assert gpu_targets("7.5") == []
    assert gpu_targets(None) == ["nvidia-ampere", "nvidia-hopper"]


def test_on_a_hopper_gpu_ampere_is_compiled_last_and_its_engines_refused(tmp_path, monkeypatch):
    """With TensorRT reported present on a 9.0 GPU: nvidia-hopper gets the engine steps (which fail here,
    recorded, the run going on), nvidia-ampere only the compile steps, its engines skipped naming 9.0."""
    import benchmarks.gpu.run_gpu as rg

    monkeypatch.setenv("HWCOMPILE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(rg, "env_step", lambda: {"tensorrt": {"available": True, "status": "pretend"},
                                                 "compute_capability": "9.0"})
    out = main(["--models", "default", "--configs", "int8", "--skip", "gpu_tests,planner,peer",
                "--out", str(tmp_path / "run.json"), "--work", str(tmp_path / "w")])
    data = json.loads(out.read_text())
    steps = data["steps"]
    assert data["targets"] == ["nvidia-hopper"]
    names = list(steps)
    assert names.index("default/nvidia-hopper/int8/engine") < names.index("default/nvidia-ampere/int8/compile")
    assert steps["default/nvidia-hopper/int8/compile"]["status"] == "ok"
    assert steps["default/nvidia-hopper/int8/engine"]["status"] == "failed"      # no TensorRT really
    assert steps["default/nvidia-ampere/int8/compile"]["status"] == "ok"
    amp = steps["default/nvidia-ampere/int8/engine"]
    assert amp["status"] == "skipped" and "9.0" in amp["reason"] and "compute_capabilities" in amp["reason"]
    assert steps["default/latency"]["status"] == "skipped" and steps["default/latency"]["reason"] == "no engine was built"

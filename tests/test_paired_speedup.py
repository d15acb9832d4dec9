"""Never silently slower: the paired speed-up and its interval, and the warning a slower fixed-
precision build gets in the summary and the report (timings deterministic: synthetic rounds or a
patched measurement, never this machine's speed)."""
from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

import hwcompile.pipeline as pipeline
from hwcompile.cli import app
from hwcompile.paired import paired_speedup, slower_note, speedup_from_rounds
from hwcompile.report.timings import read_report


def test_rounds_resolve_faster_slower_and_tie():
    base = [10.0, 11.0, 30.0, 10.5, 10.2, 12.0]  # a disturbed round (30) hits both sides alike
    assert speedup_from_rounds(base, [b / 2 for b in base])["resolved"] == "faster"
    slow = speedup_from_rounds(base, [b * 1.6 for b in base])
    assert slow["resolved"] == "slower" and abs(slow["speedup_median"] - 1 / 1.6) < 1e-9
    assert slow["ci95"][0] <= slow["speedup_median"] <= slow["ci95"][1] < 1.0
    rng = np.random.default_rng(0)
    noisy = [b * f for b, f in zip(base, rng.uniform(0.8, 1.25, len(base)))]
    assert speedup_from_rounds(base, noisy)["resolved"] == "tie"
    note = slower_note(slow, "int8")
    assert "SLOWER" in note and "0.62x" in note and "--precision mixed" in note
    assert slower_note(speedup_from_rounds(base, base), "int8") is None


def test_paired_speedup_alternates_and_counts_rounds():
    calls = []
    r = paired_speedup(lambda: calls.append("b"), lambda: calls.append("c"), rounds=4, runs=2, warmup=1)
    assert r["rounds"] == 4 and calls[:2] == ["b", "c"]
    assert calls[2:6] == ["b", "b", "c", "c"] and calls[6:10] == ["c", "c", "b", "b"]


def test_slower_build_is_flagged_in_summary_and_report(tmp_path, monkeypatch):
    slow = speedup_from_rounds([1.0] * 8, [1.5 + 0.01 * i for i in range(8)])
    monkeypatch.setattr(pipeline, "_paired", lambda *a, **k: slow)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["compile", "--precision", "fp16", "--out", str(out), "--repeats", "3"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "warning: the fp16 build is SLOWER than FP32" in text and "--precision mixed" in text
    assert "speed-up vs fp32 (paired rounds)" in text
    rep = read_report(out)
    assert rep["speedup_paired"]["resolved"] == "slower" and "SLOWER" in rep["slower_than_fp32"]
    assert "slower_than_fp32" not in json.loads((out / "report.json").read_text())  # a measured time

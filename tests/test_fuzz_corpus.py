"""Replay of the fuzz corpus (tests/fuzz/corpus.jsonl: cases found by benchmarks/bench_fuzz.py and
tests/fuzz/grow_corpus.py) through load -> check -> every precision -> export, plus a few fresh
hypothesis-drawn cases: each ends in success or an HwcompileError naming the problem, never another
exception or a hang; on the command line that is exit 2 with one line and no traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))

import harness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CASES = [json.loads(ln) for ln in harness.CORPUS.read_text().splitlines() if ln.strip()]


def test_corpus_is_a_few_hundred_cases():
    assert len(CASES) >= 200
    assert sum(1 for c in CASES if c["why"].startswith("crash found")) >= 1


@pytest.fixture(scope="module")
def quiet():
    import onnxruntime as ort

    ort.set_default_logger_severity(4)


def test_corpus_replays_without_a_crash(tmp_path, quiet):
    bad = []
    for i, case in enumerate(CASES):
        status, msg = harness.run_case(harness.mutate(case["recipe"]), tmp_path / str(i), cap_s=60)
        if status not in ("ok", "error"):
            bad.append((case["recipe"], status, msg[-800:]))
        elif status == "error":
            assert ": " in msg, msg  # "ErrorClass: where: what"
    assert bad == []


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(rng=st.integers(0, 2 ** 48), level=st.sampled_from(["bytes", "field"]), n=st.integers(1, 4))
def test_fresh_mutations_of_the_default_model(tmp_path_factory, quiet, rng, level, n):
    recipe = {"seed": "digits_cnn", "level": level, "rng": rng, "n": n}
    status, msg = harness.run_case(harness.mutate(recipe), tmp_path_factory.mktemp("case"), cap_s=120)
    assert status in ("ok", "error"), (recipe, msg[-800:])


def test_cli_reports_crash_cases_in_one_line(tmp_path):
    found = [c for c in CASES if c["why"].startswith("crash found")][:3]
    for i, case in enumerate(found):
        model = harness.write_case(harness.mutate(case["recipe"]), tmp_path / str(i))
        r = subprocess.run([sys.executable, "-m", "hwcompile.cli", "compile", str(model), "--out",
                            str(tmp_path / f"out{i}"), "--repeats", "2"], capture_output=True, text=True,
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
        assert r.returncode in (0, 2), r.stderr
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr
        if r.returncode == 2:
            assert r.stderr.strip().startswith("error:")
        else:
            assert (tmp_path / f"out{i}" / "manifest.json").exists()

"""report.html: self-contained (no external URL, no script), explains the decision, and loads in a real
headless browser (Debian's chromium) without console errors; the browser takes a screenshot."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.fixture(scope="module")
def mixed_out(tmp_path_factory) -> Path:
    from hwcompile.pipeline import CompileOptions, compile_model

    out = tmp_path_factory.mktemp("html") / "out"
    compile_model(None, "host-cpu", out, CompileOptions(precision="mixed", repeats=4, warmup=1))
    return out


def test_report_is_self_contained_and_explains_the_decision(mixed_out):
    import json

    page = (mixed_out / "report.html").read_text()
    urls = set(re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page)) | set(re.findall(r"url\(([^)]+)\)", page))
    assert not urls                                              # nothing fetched from anywhere
    assert "<script" not in page.lower()
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}   # the SVG namespace only
    for section in ("Precision map", "Sensitivity against latency", "Pareto front", "Feedback iterations",
                    "Where the time goes", "Why each layer got its choice"):
        assert f"<h2>{section}" in page, section
    rep = json.loads((mixed_out / "report.json").read_text())
    plan = json.loads((mixed_out / "plan.json").read_text())
    # every measured build is drawn and numbered, every layer is on the map with its choice and reason
    points = re.findall(r"<circle [^>]*r=\"5\"[^>]*><title>(\d+)\. ", page)
    assert sorted(map(int, points)) == list(range(1, len(rep["measured"]) + 1))
    squares = re.findall(r"<rect [^>]*rx=\"2\"[^>]*><title>([^<]+)</title>", page)
    layers = {lid for lid, v in rep["layers"].items() if "choice" in v}
    assert len(squares) == len(layers)
    import html

    for lid, choice in plan["layers"].items():
        title = next(t for t in map(html.unescape, squares) if t.startswith(f"{lid} ("))
        assert f": {rep['layers'][lid]['choice']} - {choice['reason']}" in title


def _chromium(page: Path, shot: Path | None, tmp: Path) -> subprocess.CompletedProcess:
    args = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp / 'profile'}", "--window-size=1200,2400"]
    args += [f"--screenshot={shot}"] if shot else ["--dump-dom"]
    return subprocess.run(args + [page.as_uri()], capture_output=True, text=True, timeout=120)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(BROWSER is None, reason="no chromium on this machine (.ci/run installs Debian's chromium)")
def test_report_loads_in_headless_chromium_without_console_errors(mixed_out, tmp_path):
    # the check sees console errors: a page that logs one is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><body><script>console.error('deliberate')</script></body></html>")
    assert any("deliberate" in line for line in _console_errors(_chromium(bad, None, tmp_path).stderr))

    page = mixed_out / "report.html"
    dom = _chromium(page, None, tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _console_errors(dom.stderr) == []
    assert dom.stdout.count("<svg") >= 5 and "Pareto front" in dom.stdout
    shot = mixed_out / "report.png"
    r = _chromium(page, shot, tmp_path)
    assert r.returncode == 0 and _console_errors(r.stderr) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

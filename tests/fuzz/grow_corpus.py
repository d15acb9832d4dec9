"""Grow tests/fuzz/corpus.jsonl: every crash and hang a fuzz run found (benchmarks/results/fuzz.json),
plus random cases that end in an error message not yet in the corpus (cheap ones, so the replay in
CI stays under a minute). Each line: {"recipe": ..., "outcome": "ok" | "error", "message": ...}.

    PYTHONPATH=. python tests/fuzz/grow_corpus.py --found benchmarks/results/fuzz.json --target 300
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def save(rows: list[dict]) -> None:
    tmp = harness.CORPUS.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    tmp.replace(harness.CORPUS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--found", type=Path, action="append", default=[])
    ap.add_argument("--target", type=int, default=300)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--max-seconds", type=float, default=0.6)
    ap.add_argument("--seeds", default="digits_cnn,light_squeezenet,ppocr_cls")
    ap.add_argument("--minutes", type=float, default=20.0, help="stop growing after this long")
    args = ap.parse_args()

    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    rows = [json.loads(ln) for ln in harness.CORPUS.read_text().splitlines() if ln.strip()] \
        if harness.CORPUS.exists() else []
    known = {json.dumps(r["recipe"], sort_keys=True) for r in rows}
    messages = {r.get("message", "")[:60] for r in rows}

    def run(recipe):
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            status, msg = harness.run_case(harness.mutate(recipe), Path(d), cap_s=20)
            return status, msg, time.perf_counter() - t

    def add(recipe, status, msg, secs, why):
        key = json.dumps(recipe, sort_keys=True)
        if key in known:
            return
        known.add(key)
        line = msg if status == "error" else msg.strip().splitlines()[-1] if msg else ""
        # the message minus the temporary folder it ran in
        line = line.replace(str(Path(tempfile.gettempdir())), "<tmp>")
        rows.append({"recipe": recipe, "outcome": status, "message": line[:300], "seconds": round(secs, 2),
                     "why": why})
        messages.add(line[:60])

    for found in args.found:
        data = json.loads(found.read_text())
        for key, crash in data.get("crashes", {}).items():
            add(crash["recipe"], *run(crash["recipe"]), f"crash found by the fuzz run: {key}")
        for hang in data.get("hangs", []):
            add(hang["recipe"], *run(hang["recipe"]), "hang found by the fuzz run")
    rng = random.Random(args.seed)
    seeds = [s for s in args.seeds.split(",") if s in harness.seed_paths()]
    tries = 0
    stop = time.monotonic() + 60 * args.minutes
    while len(rows) < args.target and tries < 20 * args.target and time.monotonic() < stop:
        tries += 1
        if tries % 50 == 0:
            save(rows)
        recipe = harness.random_recipe(rng, seeds, 0.5)
        status, msg, secs = run(recipe)
        if status in ("crash", "hang"):
            add(recipe, status, msg, secs, "crash found while growing the corpus")
        elif secs <= args.max_seconds and (msg[:60] not in messages or rng.random() < 0.3):
            add(recipe, status, msg, secs, "new message" if msg[:60] not in messages else "random")
    save(rows)
    bad = [r for r in rows if r["outcome"] in ("crash", "hang")]
    print(f"{len(rows)} cases, {len(bad)} crash/hang, {sum(r['seconds'] for r in rows):.1f} s")


if __name__ == "__main__":
    main()

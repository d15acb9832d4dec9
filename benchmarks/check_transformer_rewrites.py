"""The transformer rewrites on real exports, checked for equal outputs (no timing): shape
specialization at [1, 128], attention-mask and NaN-guard folding, on MiniLM (eager and sdpa exports)
and all-mpnet-base-v2. Per model: what each pass did, op counts before and after, and the largest
|difference| of ``last_hidden_state`` from the exported model's over sentences of several lengths
(short, long, truncated). Results: benchmarks/results/transformer_rewrites.json.

    python benchmarks/check_transformer_rewrites.py
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common.export import cached_minilm, minilm_tokenize  # noqa: E402
from benchmarks.common.measure import log, save, session  # noqa: E402
from hwcompile.ir import load, to_bytes  # noqa: E402
from hwcompile.passes import cleanup, specialize_and_fold  # noqa: E402

SENTENCES = ["A man is playing a guitar.", "ok", "the " * 200, "Two dogs run across a snowy field while "
             "a third one watches them from the porch of the old wooden house."]


def check(name: str, src: Path, tokenize) -> dict:
    log(name)
    graph = cleanup(load(src))
    before = Counter(n.op_type for n in graph.main)
    passes: dict = {}
    spec = specialize_and_fold(graph, {v.name: [1, 128] for v in graph.main.inputs}, log=passes)
    ref, new = session(src), session(to_bytes(spec))
    diff = 0.0
    for s in SENTENCES:
        f = tokenize([s])
        a = ref.run(None, {i.name: f[i.name] for i in ref.get_inputs()})[0]
        b = new.run(None, {i.name: f[i.name] for i in new.get_inputs()})[0]
        diff = max(diff, float(np.max(np.abs(a - b))))
    return {"source": src.name, "passes": passes, "ops_before": dict(before.most_common()),
            "ops_after": dict(Counter(n.op_type for n in spec.main).most_common()),
            "specialization": spec.meta.get("shape_specialization"), "attention_masks": spec.meta.get("attention_masks"),
            "nan_guards_declined": spec.meta.get("nan_guards_declined"), "max_abs_diff_vs_export": diff}


def main() -> None:
    out = {"minilm (eager export)": check("minilm", cached_minilm(128), lambda s: minilm_tokenize(s, 128)),
           "minilm (sdpa export)": check("minilm-sdpa", cached_minilm(128, attn="sdpa"),
                                         lambda s: minilm_tokenize(s, 128))}
    try:
        from benchmarks.common.mpnet import cached_mpnet, mpnet_tokenize

        out["all-mpnet-base-v2"] = check("mpnet", cached_mpnet(128), lambda s: mpnet_tokenize(s, 128))
    except RuntimeError as e:      # its packages are not installed
        out["all-mpnet-base-v2"] = {"skipped": str(e)}
    path = save("transformer_rewrites", {"load_average_after": os.getloadavg(), "results": out})
    log(f"wrote {path}")
    for k, r in out.items():
        print(k, r.get("max_abs_diff_vs_export"), r.get("attention_masks"), (r.get("specialization") or {}).get("nodes_after"))


if __name__ == "__main__":
    main()

"""FP32 compile equivalence on real models: onnx's bundled zoo, RapidOCR's three models,
EfficientNet-Lite0 (49 BatchNorms kept at export) and MiniLM. For each: BatchNorm count before and
after, max |original - compiled| / max |original| over the outputs on seeded inputs (must be
<= 1e-4), and both latencies. Results: benchmarks/results/fp32_equivalence.json.

    python benchmarks/check_fp32_equivalence.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from benchmarks.common.export import cached_efficientnet_lite0, cached_minilm, minilm_tokenize  # noqa: E402
from benchmarks.common.measure import interleaved_latency, log, save, session  # noqa: E402
from conftest import random_feeds, rapidocr_models, zoo_models  # noqa: E402
from hwcompile.pipeline import CompileOptions, compile_model  # noqa: E402


OCR_SHAPES = {"ch_ppocr_mobile_v2.0_cls_infer.onnx": (1, 3, 48, 192), "ch_PP-OCRv4_rec_infer.onnx": (1, 3, 48, 320),
              "ch_PP-OCRv4_det_infer.onnx": (1, 3, 320, 320)}


def bn_count(path: Path) -> int:
    import onnx

    return sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path), load_external_data=False).graph.node)


def main() -> None:
    models = zoo_models() + rapidocr_models() + [cached_efficientnet_lite0(), cached_minilm()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in models:
            log(path.name)
            out = Path(tmp) / path.stem
            a = session(path)
            if "minilm" in path.name:
                feeds = minilm_tokenize(["A man is playing a guitar.", "Stocks fell sharply today."], 128)
            else:
                feeds = random_feeds(a, seed=0, dims={})
                feeds = {k: np.random.default_rng(0).standard_normal(OCR_SHAPES[path.name]).astype(np.float32)
                         if path.name in OCR_SHAPES else v for k, v in feeds.items()}
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            compile_model(path, "host-cpu", out, CompileOptions(repeats=5, warmup=1, per_layer_profile=False,
                                                                baseline=False, input_shapes=shapes))
            b = session(out / "model.onnx")
            names_b = {i.name for i in b.get_inputs()}
            ra = a.run(None, feeds)
            rb = b.run(None, {k: v for k, v in feeds.items() if k in names_b})
            rel = max(float(np.max(np.abs(x.astype(np.float64) - y))) / max(float(np.max(np.abs(x))), 1e-12)
                      for x, y in zip(ra, rb))
            lat = interleaved_latency({"original": a, "compiled": b}, feeds, rounds=2, repeats=10, warmup=3)
            rows.append({"model": path.name, "bn_before": bn_count(path), "bn_after": bn_count(out / "model.onnx"),
                         "max_rel_diff": rel, "equal": rel <= 1e-4,
                         "original_ms": lat["original"]["latency_ms"], "compiled_ms": lat["compiled"]["latency_ms"]})
            log(f"  {rows[-1]}")
    path = save("fp32_equivalence", {"criterion": "max|orig-compiled| <= 1e-4 * max|orig| per output",
                                     "models": rows, "all_equal": all(r["equal"] for r in rows)})
    log(f"wrote {path}")


if __name__ == "__main__":
    main()

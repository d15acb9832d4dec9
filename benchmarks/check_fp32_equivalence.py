"""FP32 compile equivalence on real models: onnx's bundled zoo, RapidOCR's three models,
EfficientNet-Lite0 (49 BatchNorms kept at export) and MiniLM. For each: BatchNorm count before and
after, max |original - compiled| / max |original| over the outputs on seeded inputs (RapidOCR: a rendered text image, see text_image) (must be
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


def text_image(shape: tuple[int, ...]) -> np.ndarray:
    """A rendered text line image, normalised as RapidOCR does: its models' real input domain. On
    seeded noise the detector's sigmoid map is ~6e-5 everywhere (no text), where a relative criterion
    measures float rounding of a saturated sigmoid, so noise results are recorded separately."""
    from PIL import Image, ImageDraw, ImageFont

    _, _, h, w = shape
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(10, min(28, h // 2)))
    lines = ["hwcompile 2026", "INT8 and 2:4", "TensorRT engine", "ONNX graph IR"]
    for i, line in enumerate(lines[: max(1, h // 70)]):
        draw.text((10, 10 + 70 * i), line, fill="black", font=font)
    x = np.asarray(img, dtype=np.float32) / 255
    return ((x - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32)


def max_rel(ra, rb) -> float:
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) / max(float(np.max(np.abs(x))), 1e-12)
               for x, y in zip(ra, rb))


def bn_count(path: Path) -> int:
    import onnx

    return sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path), load_external_data=False).graph.node)


def main() -> None:
    import argparse
    import json

    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="re-check only models whose file name contains this; other rows kept")
    args = ap.parse_args()
    models = zoo_models() + rapidocr_models() + [cached_efficientnet_lite0(), cached_minilm()]
    models = [m for m in models if args.only in m.name]
    old = Path(__file__).parent / "results" / "fp32_equivalence.json"
    kept = [r for r in json.loads(old.read_text())["models"] if args.only not in r["model"]] if args.only and old.exists() else []
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
                feeds = {k: text_image(OCR_SHAPES[path.name]) if path.name in OCR_SHAPES else v
                         for k, v in feeds.items()}
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            compile_model(path, "host-cpu", out, CompileOptions(repeats=5, warmup=1, per_layer_profile=False,
                                                                baseline=False, input_shapes=shapes))
            b = session(out / "model.onnx")
            names_b = {i.name for i in b.get_inputs()}
            ra = a.run(None, feeds)
            rb = b.run(None, {k: v for k, v in feeds.items() if k in names_b})
            rel = max_rel(ra, rb)
            noise = {}
            if path.name in OCR_SHAPES:  # the same on seeded noise, for the record
                fn = {k: np.random.default_rng(0).standard_normal(v.shape).astype(np.float32) for k, v in feeds.items()}
                na = a.run(None, fn)
                noise = {"noise_input_max_rel_diff": max_rel(na, b.run(None, fn)),
                         "noise_input_output_max_abs": max(float(np.max(np.abs(x))) for x in na)}
            lat = interleaved_latency({"original": a, "compiled": b}, feeds, rounds=2, repeats=10, warmup=3)
            rows.append({"model": path.name, "bn_before": bn_count(path), "bn_after": bn_count(out / "model.onnx"),
                         "input": "rendered text image" if path.name in OCR_SHAPES else
                         ("tokenized sentences" if "minilm" in path.name else "seeded random normal"),
                         "max_rel_diff": rel, "equal": rel <= 1e-4, **noise,
                         "original_ms": lat["original"]["latency_ms"], "compiled_ms": lat["compiled"]["latency_ms"]})
            log(f"  {rows[-1]}")
    rows = sorted(kept + rows, key=lambda r: r["model"])
    path = save("fp32_equivalence", {"criterion": "max|orig-compiled| <= 1e-4 * max|orig| per output",
                                     "models": rows, "all_equal": all(r["equal"] for r in rows)})
    log(f"wrote {path}")


if __name__ == "__main__":
    main()

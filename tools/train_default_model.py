"""Train the embedded default model: a small residual CNN with BatchNorm on real handwritten digits.

Data: scikit-learn's bundled ``load_digits`` (1,797 real 8x8 handwritten digits from UCI, values
0..16, no download). Pixels are scaled as ``x / 16`` to [0, 1] and fed as ``[N, 1, 8, 8]``.
Images are de-duplicated (byte-identical images dropped) and then split, with a fixed seed, into
three disjoint parts: train, calibration (200) and held-out evaluation (the rest, ~500).

Network (every conv followed by BatchNorm, kept as separate ``BatchNormalization`` nodes in the
ONNX so that BN folding is the compiler's job, not the exporter's)::

    x -> Conv3x3(1->16)+BN+ReLU -> Conv3x3(16->32, s2)+BN+ReLU          # 8x8 -> 4x4
      -> [Conv3x3(32->32)+BN+ReLU -> Conv3x3(32->32)+BN] + skip -> ReLU  # residual Add
      -> Conv3x3(32->32, s2)+BN+ReLU -> GlobalAvgPool -> Flatten -> Gemm(32->10) = logits

Export: ``torch.onnx.export(dynamo=False, training=TrainingMode.PRESERVE)`` with the module in
eval mode. PRESERVE skips the exporter's eval-mode Conv+BN fusion, so the graph keeps its
BatchNormalization nodes (with running statistics, ``training_mode=0``). Opset 17, input
``input`` [N, 1, 8, 8] with a dynamic batch dim, output ``logits`` [N, 10].

Run: ``python tools/train_default_model.py`` (deterministic, ~10 s on 2 cores). Writes the four
files under ``hwcompile/models/`` and prints the FP32 top-1 measured with onnxruntime.
"""
from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OUT_DIR = Path(__file__).resolve().parents[1] / "hwcompile" / "models"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the shipped files."""

    seed: int = 0
    n_calib: int = 200
    n_holdout: int = 500
    epochs: int = 40
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    opset: int = 17


def load_splits(cfg: TrainConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Dedup then split load_digits into disjoint train / calib / holdout (x float32 NCHW, y int64)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    _, first = np.unique(x.reshape(len(x), -1), axis=0, return_index=True)
    keep = np.sort(first)
    x, y = x[keep], y[keep]
    order = np.random.default_rng(cfg.seed).permutation(len(x))
    calib = order[: cfg.n_calib]
    hold = order[cfg.n_calib: cfg.n_calib + cfg.n_holdout]
    train = order[cfg.n_calib + cfg.n_holdout:]
    return {"train": (x[train], y[train]), "calib": (x[calib], y[calib]), "holdout": (x[hold], y[hold])}


def build_model():
    import torch.nn as nn

    def cbr(cin: int, cout: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
        layers = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(cbr(1, 16), cbr(16, 32, 2))
            self.res = nn.Sequential(cbr(32, 32), cbr(32, 32, relu=False))
            self.relu = nn.ReLU()
            self.down = cbr(32, 32, 2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            h = self.stem(x)
            h = self.relu(self.res(h) + h)
            h = self.pool(self.down(h))
            return self.fc(h.flatten(1))

    return DigitsCNN()


def shift_augment(x, rng: np.random.Generator) -> np.ndarray:
    """Random translation by -1..1 pixel per image (zero fill): cheap, label-preserving."""
    out = np.zeros_like(x)
    dy, dx = rng.integers(-1, 2, size=(2, len(x)))
    for i in range(len(x)):
        src = x[i, :, max(0, -dy[i]): 8 - max(0, dy[i]), max(0, -dx[i]): 8 - max(0, dx[i])]
        out[i, :, max(0, dy[i]): max(0, dy[i]) + src.shape[1], max(0, dx[i]): max(0, dx[i]) + src.shape[2]] = src
    return out


def train(cfg: TrainConfig, x: np.ndarray, y: np.ndarray):
    import torch

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(cfg.seed + 1)
    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * ((len(x) + cfg.batch - 1) // cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(cfg.epochs):
        model.train()
        perm = rng.permutation(len(x))
        xa = shift_augment(x, rng)
        for s in range(0, len(x), cfg.batch):
            idx = perm[s: s + cfg.batch]
            if len(idx) < 2:  # BatchNorm needs >1 sample per batch in training mode
                continue
            opt.zero_grad()
            loss = loss_fn(model(torch.from_numpy(xa[idx])), torch.from_numpy(y[idx]))
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def export_onnx(model, opset: int) -> bytes:
    """Export with BN preserved; returns the serialized ModelProto."""
    import warnings

    import torch

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter is chosen on purpose (it keeps BN); its deprecation and
        # constant-folding notices do not apply to an eval-mode module.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            model, (torch.zeros(1, 1, 8, 8),), buf, dynamo=False, opset_version=opset,
            training=torch.onnx.TrainingMode.PRESERVE, input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, do_constant_folding=True)
    return buf.getvalue()


def ort_top1(model_bytes: bytes, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x})[0]
    return float(np.mean(np.argmax(logits, axis=1) == y))


def main() -> int:
    import onnx

    cfg = TrainConfig()
    splits = load_splits(cfg)
    model = train(cfg, *splits["train"])
    blob = export_onnx(model, cfg.opset)
    proto = onnx.load_from_string(blob)
    n_bn = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
    if n_bn != 5:
        print(f"expected 5 BatchNormalization nodes in the export, found {n_bn}", file=sys.stderr)
        return 1
    onnx.checker.check_model(proto)
    xh, yh = splits["holdout"]
    top1 = ort_top1(blob, xh, yh)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "digits_cnn.onnx").write_bytes(blob)
    np.savez_compressed(OUT_DIR / "digits_calib.npz", input=splits["calib"][0])
    np.savez_compressed(OUT_DIR / "digits_holdout.npz", input=xh, label=yh)
    meta = {
        "model": "digits_cnn.onnx", "calib": "digits_calib.npz", "eval": "digits_holdout.npz",
        "labels": "label", "metric": "top1", "fp32_top1": top1,
        "n_train": len(splits["train"][1]), "n_calib": len(splits["calib"][1]), "n_eval": len(yh),
        "source": "scikit-learn load_digits (UCI optical recognition of handwritten digits, 8x8, "
                  "pixels scaled x/16); de-duplicated, disjoint train/calib/eval split with seed "
                  f"{cfg.seed}",
        "trained_by": "tools/train_default_model.py",
    }
    (OUT_DIR / "default.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"train={len(splits['train'][1])} calib={len(splits['calib'][1])} holdout={len(yh)} "
          f"BN nodes={n_bn} holdout top-1 (onnxruntime) = {top1:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

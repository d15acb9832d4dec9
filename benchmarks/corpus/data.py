"""Calibration and evaluation data for each corpus model, calibration and evaluation kept apart.

Real data where the model was made for it: ImageNet photos (``../shared/data``) for the image
classifiers and detectors (even class indices calibrate, odd ones evaluate), STS-B sentences for
MiniLM (the first 100 pairs calibrate, the next ones evaluate), real files of this Python
installation for magika (stdlib modules calibrate, site-packages files evaluate). Text images
for the OCR models are rendered with PIL (DejaVu fonts) from STS-B sentences with known
rotation labels (calibration sentences disjoint from evaluation ones). Audio (silero VAD, the
speaker encoder) has no real data here: it is synthesized (voiced harmonic bursts in noise, mel
frames computed from them) and only output SNR is reported for it.

``make(kind)`` returns ``(calib, eval, labels)``: dicts {input name: array, first axis =
samples} and an int64 label array or None. ``make_npz`` writes them for the CLI.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from benchmarks.common.data import imagenet_samples, stsb_test
from benchmarks.common.export import minilm_tokenize

__all__ = ["make", "make_npz", "N_CALIB", "N_EVAL"]

N_CALIB = 32
N_EVAL = 96
_FONTS = [Path("/usr/share/fonts/truetype/dejavu") / f for f in
          ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf")]


def _sentences(split: str) -> list[str]:
    pairs = stsb_test()
    rows = pairs[:100] if split == "calib" else pairs[100:]
    return [s for p in rows for s in p[:2]]


def _font(i: int, size: int):
    from PIL import ImageFont

    f = _FONTS[i % len(_FONTS)]
    return ImageFont.truetype(str(f), size) if f.is_file() else ImageFont.load_default(size=size)


def _text_line(text: str, i: int, h: int, w: int, rng) -> np.ndarray:
    """Dark text on a light, slightly noisy background, [h, w, 3] uint8."""
    from PIL import Image, ImageDraw

    bg = int(rng.integers(200, 256))
    img = Image.new("RGB", (w, h), (bg, bg, bg))
    d = ImageDraw.Draw(img)
    font = _font(i, int(h * 0.62))
    d.text((4, h * 0.15), text, fill=tuple(int(c) for c in rng.integers(0, 80, 3)), font=font)
    a = np.asarray(img, dtype=np.float32) + rng.normal(0, 4, (h, w, 3))
    return np.clip(a, 0, 255).astype(np.uint8)


def _page(texts: list[str], i: int, size: int, rng) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (245, 245, 240))
    d = ImageDraw.Draw(img)
    y = 8
    for k, t in enumerate(texts):
        fs = int(rng.integers(14, 26))
        d.text((int(rng.integers(4, 40)), y), t[:40], fill=(20, 20, 20), font=_font(i + k, fs))
        y += fs + int(rng.integers(6, 18))
        if y > size - 30:
            break
    return np.asarray(img, dtype=np.uint8)


def _chw(a: np.ndarray, mean=0.5, std=0.5) -> np.ndarray:
    return ((a.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)


def _orientation(split: str, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """224x224 text crops rotated by 0/90/180/270 (labels 0..3), ImageNet mean/std (PaddleClas)."""
    sents = _sentences(split)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    xs, ys = [], []
    for i in range(n):
        page = _page(sents[i * 3:i * 3 + 8], i, 224, rng)
        k = i % 4
        xs.append(((np.rot90(page, -k).astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))
        ys.append(k)
    return np.stack(xs), np.array(ys, np.int64)


def _ocr_cls(split: str, n: int, rng):
    sents = _sentences(split)
    xs, ys = [], []
    for i in range(n):
        line = _text_line(sents[i][:24], i, 48, 192, rng)
        k = i % 2
        xs.append(_chw(line[::-1, ::-1] if k else line))
        ys.append(k)
    return np.stack(xs), np.array(ys, np.int64)


def _imagenet(split: str, n: int, normalize: str, size: int | None = None) -> np.ndarray:
    x, _ = imagenet_samples("even" if split == "calib" else "odd", normalize=normalize)
    x = x[::3][:n] if split == "calib" else x[:n]
    if size is not None and size != 224:
        import torch.nn.functional as F  # noqa: N812  (bench extra)
        import torch

        x = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _audio(n: int, length: int, rng) -> np.ndarray:
    t = np.arange(length) / 16000.0
    out = np.empty((n, length), np.float32)
    for i in range(n):
        x = rng.normal(0, 0.01 * (1 + i % 3), length)
        if i % 2:  # a voiced burst: harmonics of a pitch with a syllable envelope
            f0 = rng.uniform(90, 260)
            env = np.sin(np.pi * np.clip((t - t[0]) / t[-1], 0, 1)) ** 2
            x += sum(0.3 / h * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.28)) for h in range(1, 8)) * env
        out[i] = x
    return out


def _mels(n: int, rng) -> np.ndarray:
    """40-band log-ish mel frames [n, 160, 40] (25 ms windows, 10 ms hop) of synthesized audio."""
    audio = _audio(n, 160 * 160 + 400, rng)
    fb = _mel_filterbank(40, 512, 16000)
    frames = np.lib.stride_tricks.sliding_window_view(audio, 400, axis=1)[:, ::160][:, :160]
    spec = np.abs(np.fft.rfft(frames * np.hanning(400), n=512)) ** 2
    return (spec @ fb.T).astype(np.float32)


def _mel_filterbank(n_mels: int, n_fft: int, sr: int) -> np.ndarray:
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    pts = hz(np.linspace(mel(0), mel(sr / 2), n_mels + 2))
    bins = np.floor((n_fft + 1) * pts / sr).astype(int)
    fb = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(1, n_mels + 1):
        a, b, c = bins[m - 1], bins[m], bins[m + 1]
        fb[m - 1, a:b] = (np.arange(a, b) - a) / max(b - a, 1)
        fb[m - 1, b:c] = (c - np.arange(b, c)) / max(c - b, 1)
    return fb


def _file_bytes(split: str, n: int) -> np.ndarray:
    """Magika's features of real files: first and last 1024 bytes, padded with token 256."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"]) if split == "calib" else Path(sysconfig.get_paths()["purelib"])
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.stat().st_size > 64)
    step = max(1, len(files) // n)
    out = np.full((n, 2048), 256, np.int32)
    for i, p in enumerate(files[::step][:n]):
        raw = p.read_bytes()
        stripped = raw.strip()
        beg = np.frombuffer(stripped[:1024], np.uint8)
        end = np.frombuffer(stripped[-1024:], np.uint8)
        out[i, :len(beg)] = beg
        out[i, 2048 - len(end):] = end
    return out


def make(kind: str, n_calib: int = N_CALIB, n_eval: int = N_EVAL):
    rng = np.random.default_rng(0 if kind else 1)
    if kind == "imagenet_halfhalf":
        xe, ye = imagenet_samples("odd", normalize="halfhalf")
        return {"input": _imagenet("calib", n_calib, "halfhalf")}, {"input": xe[:n_eval]}, ye[:n_eval]
    if kind == "imagenet_meanstd":
        return {"input": _imagenet("calib", n_calib, "imagenet")}, {"input": _imagenet("eval", n_eval, "imagenet")}, None
    if kind == "photos_320":
        return ({"images": (_imagenet("calib", n_calib, "none", 320))},
                {"images": (_imagenet("eval", n_eval, "none", 320))}, None)
    if kind == "text_orientation":
        xc, _ = _orientation("calib", n_calib, rng)
        xe, ye = _orientation("eval", n_eval, rng)
        return {"x": xc}, {"x": xe}, ye
    if kind == "ocr_cls":
        xc, _ = _ocr_cls("calib", n_calib, rng)
        xe, ye = _ocr_cls("eval", n_eval, rng)
        return {"x": xc}, {"x": xe}, ye
    if kind == "ocr_det":
        mk = lambda split, n: np.stack([_chw(_page(_sentences(split)[i * 5:i * 5 + 12], i, 320, rng))  # noqa: E731
                                        for i in range(n)])
        return {"x": mk("calib", n_calib)}, {"x": mk("eval", n_eval)}, None
    if kind == "ocr_rec":
        mk = lambda split, n: np.stack([_chw(_text_line(_sentences(split)[i][:28], i, 48, 320, rng))  # noqa: E731
                                        for i in range(n)])
        return {"x": mk("calib", n_calib)}, {"x": mk("eval", n_eval)}, None
    if kind == "dddd_ocr":
        mk = lambda split, n: np.stack([  # noqa: E731
            (_text_line(_sentences(split)[i][:8], i, 64, 192, rng).mean(axis=2) / 255.0)[None].astype(np.float32)
            for i in range(n)])
        return {"input1": mk("calib", n_calib)}, {"input1": mk("eval", n_eval)}, None
    if kind == "dddd_det":
        mk = lambda split, n: np.stack([  # noqa: E731
            _page(_sentences(split)[i * 2:i * 2 + 6], i, 416, rng).transpose(2, 0, 1).astype(np.float32)
            for i in range(n)])
        return {"images": mk("calib", n_calib)}, {"images": mk("eval", n_eval)}, None
    if kind == "audio_chunks":
        return {"input": _audio(n_calib, 512, rng)}, {"input": _audio(n_eval, 512, rng)}, None
    if kind == "mel_frames":
        return {"mels": _mels(n_calib, rng)}, {"mels": _mels(n_eval, rng)}, None
    if kind == "file_bytes":
        return {"bytes": _file_bytes("calib", n_calib)}, {"bytes": _file_bytes("eval", n_eval)}, None
    if kind == "stsb":
        return (dict(minilm_tokenize(_sentences("calib")[:n_calib], 128)),
                dict(minilm_tokenize(_sentences("eval")[:n_eval], 128)), None)
    raise KeyError(f"no corpus data maker {kind!r}")


def make_npz(kind: str, folder: Path, n_calib: int = N_CALIB, n_eval: int = N_EVAL) -> tuple[Path, Path]:
    """``folder/calib.npz`` and ``folder/eval.npz`` (labels under ``labels`` in eval when known)."""
    folder.mkdir(parents=True, exist_ok=True)
    c, e, y = make(kind, n_calib, n_eval)
    cp, ep = folder / "calib.npz", folder / "eval.npz"
    np.savez(cp, **c)
    np.savez(ep, **e, **({"labels": y} if y is not None else {}))
    return cp, ep


if __name__ == "__main__":
    for k in sys.argv[1:]:
        c, e, y = make(k)
        print(k, {n: (a.shape, a.dtype) for n, a in c.items()}, {n: a.shape for n, a in e.items()},
              None if y is None else np.bincount(y)[:8])

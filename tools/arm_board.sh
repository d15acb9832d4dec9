#!/usr/bin/env bash
# An emulated aarch64 board for the arm64-tvm target: an arm64 Debian root (debootstrap) run by
# qemu-user-static through binfmt_misc, a Python in it with apache-tvm's aarch64 wheel, and TVM's
# RPC server listening on 127.0.0.1. Cross-compiled libraries then run on it through RPC
# (backend_settings.rpc_host = "127.0.0.1:PORT"); timings under emulation mean nothing, outputs do.
#
#   tools/arm_board.sh setup   [ROOT]        # once (root; apt + debootstrap + wheels; ~10-20 min)
#   tools/arm_board.sh start   [ROOT] [PORT] # RPC server in the background, pid in ROOT/rpc.pid
#   tools/arm_board.sh stop    [ROOT]
#   tools/arm_board.sh check   [ROOT]        # runs `python -c "import tvm"` on the board
#
# ROOT defaults to $HWCOMPILE_ARM_ROOT or /var/tmp/hwcompile-arm64; PORT to 9091. The Debian mirror
# is the host's own (first URIs line of /etc/apt/sources.list.d/debian.sources or sources.list), or
# $DEBIAN_MIRROR. The wheels (the host's apache-tvm and apache-tvm-ffi versions) are downloaded on
# the host with $PYTHON's pip (its index settings), for the board's Python, and installed offline.
set -euo pipefail

CMD=${1:-}
ROOT=${2:-${HWCOMPILE_ARM_ROOT:-/var/tmp/hwcompile-arm64}}
PORT=${3:-9091}
SUITE=${DEBIAN_SUITE:-bookworm}
PY=${PYTHON:-python3}
# the board runs the same TVM runtime as the host compiler that builds its libraries
TVM_PINS=$("$PY" -c "from importlib.metadata import version as v; print(' '.join(p + '==' + v(p) for p in ('apache-tvm', 'apache-tvm-ffi')))" 2>/dev/null || echo apache-tvm)

die() { echo "arm_board: $*" >&2; exit 1; }

mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local m
  m=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -v security | head -1 || true)
  [ -n "$m" ] || m=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$m" ] || die "no Debian mirror in the host's apt sources; set DEBIAN_MIRROR"
  echo "$m"
}

binfmt() {
  [ -d /proc/sys/fs/binfmt_misc ] || die "no /proc/sys/fs/binfmt_misc"
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
    || die "cannot mount binfmt_misc (needs root in a privileged container)"
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    # Debian's rule, with the interpreter path of qemu-user-static and the F flag (opened now, so the
    # interpreter need not exist inside the chroot)
    local rule
    rule=$(sed -e 's#:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:.*#:/usr/bin/qemu-aarch64-static:FP#' \
      /usr/lib/binfmt.d/qemu-aarch64.conf 2>/dev/null) || die "qemu-user-static is not installed"
    printf '%s' "$rule" > /proc/sys/fs/binfmt_misc/register
  fi
}

mounts() {
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
}

setup() {
  [ "$(id -u)" = 0 ] || die "setup needs root (apt-get, debootstrap, binfmt_misc)"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-user-static debootstrap
  binfmt
  if [ ! -x "$ROOT/usr/bin/python3" ]; then
    rm -rf "$ROOT"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,libstdc++6 "$SUITE" "$ROOT" "$(mirror)"
  fi
  mounts
  local pyver
  pyver=$(chroot "$ROOT" /usr/bin/python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  rm -rf "$ROOT/opt/wheels"
  mkdir -p "$ROOT/opt/wheels"
  # shellcheck disable=SC2086
  "$PY" -m pip download --only-binary=:all: --python-version "$pyver" --platform manylinux_2_28_aarch64 \
    --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 -d "$ROOT/opt/wheels" \
    $TVM_PINS numpy ml_dtypes typing_extensions psutil cloudpickle
  chroot "$ROOT" /usr/bin/python3 -m venv /opt/tvm
  chroot "$ROOT" /opt/tvm/bin/pip install --no-index --find-links /opt/wheels $TVM_PINS numpy psutil cloudpickle
  check
}

check() {
  binfmt; mounts
  chroot "$ROOT" /opt/tvm/bin/python -c 'import platform, tvm; print(platform.machine(), "tvm", tvm.__version__)'
}

start() {
  binfmt; mounts
  if [ -f "$ROOT/rpc.pid" ] && kill -0 "$(cat "$ROOT/rpc.pid")" 2>/dev/null; then
    echo "already running: pid $(cat "$ROOT/rpc.pid")"; return
  fi
  nohup chroot "$ROOT" /opt/tvm/bin/python -m tvm.exec.rpc_server --host 127.0.0.1 --port "$PORT" \
    --port-end "$((PORT + 1))" > "$ROOT/rpc.log" 2>&1 &
  echo $! > "$ROOT/rpc.pid"
  for _ in $(seq 120); do
    if grep -q "bind to" "$ROOT/rpc.log" 2>/dev/null; then echo "rpc server on 127.0.0.1:$PORT (pid $(cat "$ROOT/rpc.pid"))"; return; fi
    kill -0 "$(cat "$ROOT/rpc.pid")" 2>/dev/null || { cat "$ROOT/rpc.log" >&2; die "rpc server exited"; }
    sleep 1
  done
  die "rpc server did not report its port within 120 s (see $ROOT/rpc.log)"
}

stop() {
  [ -f "$ROOT/rpc.pid" ] || return 0
  kill "$(cat "$ROOT/rpc.pid")" 2>/dev/null || true
  rm -f "$ROOT/rpc.pid"
}

case "$CMD" in
  setup) setup ;;
  start) start ;;
  stop) stop ;;
  check) check ;;
  *) die "usage: $0 setup|start|stop|check [ROOT] [PORT]" ;;
esac

"""Publishing an output folder without ever destroying anything that is not ours.

A compile writes into a staging folder beside ``--out`` and only a finished folder is put in
place. Rules:

- ``--out`` must name a folder that can be created: not ``.``/``/``, not the working folder or
  one of its parents, not the input model or a folder holding it, not below a file.
- An existing ``--out`` is replaced only if it is an hwcompile output (a ``manifest.json`` that
  lists every file in it, in a folder with no symlinks or special files); otherwise the compile
  stops before doing any work (``force=True`` overrides, the path rules above still hold).
- The staging folder ``.{name}.hwcompile-{pid}-{token}`` is owned by a marker file of the same name
  plus ``.marker`` created *before* it and removed *after* it, so a run killed at any moment leaves
  either nothing or a marker proving which leftovers are ours; the next run into the same
  ``--out`` removes leftovers whose process is gone.
- Replacing is one atomic ``renameat2(RENAME_EXCHANGE)`` where the kernel offers it, so a reader
  (or a ``kill -9``) sees the previous complete output or the new one, never a mix; elsewhere it
  is two renames (a kill between them leaves no output, never a partial one).
- Modes follow the user's umask (temporary files are created 0600 by ``mkstemp``).
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Iterable

from .errors import ConfigError

__all__ = ["Staging", "check_out_dir", "is_hwcompile_output", "clean_stale"]

_TAG = ".hwcompile-"
_RENAME_EXCHANGE = 2


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_hwcompile_output(folder: Path) -> tuple[bool, str]:
    """(True, "") if ``folder`` holds an hwcompile output and nothing else, else (False, why not)."""
    manifest = folder / "manifest.json"
    if not manifest.is_file() or manifest.is_symlink():
        return False, "it has no manifest.json"
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False, "its manifest.json is not readable JSON"
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not _says_hwcompile(folder, data, files):
        return False, "its manifest.json is not an hwcompile manifest"
    for root, dirs, names in os.walk(folder, followlinks=False):
        for name in dirs + names:
            p = Path(root) / name
            rel = p.relative_to(folder).as_posix()
            mode = p.lstat().st_mode
            if stat.S_ISLNK(mode):
                return False, f"it contains a symlink ({rel})"
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                return False, f"it contains a special file ({rel})"
            if rel != "manifest.json" and rel not in files:
                return False, f"{rel} is not listed in its manifest.json"
    return True, ""


def _says_hwcompile(folder: Path, manifest: dict, files: dict) -> bool:
    if str(manifest.get("format", "")).startswith("hwcompile"):
        return True
    if "report.json" not in files:
        return False
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(report, dict) and str(report.get("format", "")).startswith("hwcompile.report")


def check_out_dir(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *, force: bool = False) -> Path:
    """The absolute ``--out`` folder, or a ConfigError naming it and saying why it cannot be used."""
    raw = str(out)
    if not raw.strip():
        raise ConfigError("empty output folder name", where="--out")
    path = Path(os.path.abspath(raw))
    real = Path(os.path.realpath(raw))
    where = f"--out {raw}"
    if real.parent == real or not path.name:
        raise ConfigError("refusing to use the file system root as the output folder", where=where,
                          hint="name a new folder, e.g. --out hwcompile-out")
    cwd = Path(os.path.realpath(os.getcwd()))
    if real == cwd or real in cwd.parents:
        raise ConfigError("refusing to replace the working folder or one of its parents", where=where,
                          hint="name a new folder, e.g. --out hwcompile-out")
    for item in inputs:
        src = Path(os.path.realpath(item))
        if src == real or real in src.parents:
            raise ConfigError(f"the output folder would replace the input {item}", where=where,
                              hint="write the output to another folder")
    for anc in (path, *path.parents):
        if anc.exists() or anc.is_symlink():
            if anc != path and not anc.is_dir():
                raise ConfigError(f"{anc} is not a folder", where=where)
            break
    if path.exists() or path.is_symlink():
        if path.is_symlink() or not path.is_dir():
            raise ConfigError("exists and is not a folder", where=where, hint="choose another --out")
        if not force:
            ok, why = is_hwcompile_output(path)
            if not ok and any(path.iterdir()):
                raise ConfigError(f"exists and is not an hwcompile output ({why}); nothing was written",
                                  where=where, hint="choose another --out, or pass --force to replace it")
    return path


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: Path) -> list[Path]:
    """Remove staging folders of ``out`` left by killed runs (a marker names them; their pid is gone)."""
    removed = []
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return removed
    prefix = f".{out.name}{_TAG}"
    for marker in entries:
        if not (marker.name.startswith(prefix) and marker.name.endswith(".marker") and marker.is_file()):
            continue
        try:
            info = json.loads(marker.read_text())
            pid = int(info["pid"])
            ok = info.get("format") == "hwcompile.staging/1" and info.get("out") == out.name
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not ok or _alive(pid):
            continue
        stage = marker.with_name(marker.name[: -len(".marker")])
        _remove_owned(stage, marker)
        removed.append(stage)
    return removed


def _remove_owned(stage: Path, marker: Path) -> None:
    for p in (stage, stage.with_name(stage.name + ".old")):
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    if not stage.exists() and not stage.with_name(stage.name + ".old").exists():
        marker.unlink(missing_ok=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the kernel or libc cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


class Staging:
    """A staging folder beside ``out``: fill ``path``, then ``publish()``; ``discard()`` on failure."""

    def __init__(self, out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), *, force: bool = False):
        self.out = check_out_dir(out, inputs, force=force)
        self.force = force
        self.marker = None
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            clean_stale(self.out)
            name = f".{self.out.name}{_TAG}{os.getpid()}-{secrets.token_hex(4)}"
            self.path = self.out.parent / name
            self.marker = self.out.parent / f"{name}.marker"
            with open(self.marker, "x") as f:
                json.dump({"format": "hwcompile.staging/1", "pid": os.getpid(), "out": self.out.name}, f)
            os.mkdir(self.path)  # mode 0777 minus the umask, unlike mkdtemp's 0700
        except OSError as e:
            if getattr(self, "marker", None) is not None and not self.path.exists():
                self.marker.unlink(missing_ok=True)
            raise ConfigError(f"cannot create the output folder: {e.strerror or e}", where=f"--out {out}",
                              hint="choose a folder you can write to") from None

    def publish(self) -> Path:
        """Put the finished folder in place of ``out`` (re-checking that ``out`` may be replaced)."""
        check_out_dir(self.out, force=self.force)
        _follow_umask(self.path)
        if self.out.exists():
            if not _exchange(self.path, self.out):
                old = self.path.with_name(self.path.name + ".old")
                os.rename(self.out, old)
                os.rename(self.path, self.out)
                os.rename(old, self.path)
        else:
            os.rename(self.path, self.out)
        self.discard()  # the previous output, now at self.path
        return self.out

    def discard(self) -> None:
        _remove_owned(self.path, self.marker)


def _follow_umask(folder: Path) -> None:
    mask = _umask()
    for root, dirs, names in os.walk(folder):
        for d in dirs:
            os.chmod(Path(root) / d, 0o777 & ~mask)
        for n in names:
            p = Path(root) / n
            if not p.is_symlink():
                os.chmod(p, 0o666 & ~mask | (p.stat().st_mode & 0o111 & ~mask))
    os.chmod(folder, 0o777 & ~mask)

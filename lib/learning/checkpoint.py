"""Atomic publication of checkpoint folders: a reader sees the old folder or the new one, never half of one.

Training writes into a scratch folder; only when it succeeded does the caller ``publish`` it over the
served folder. ``publish`` copies the finished folder into a temporary sibling of the destination (same
file system, so renames are atomic), then swaps it in:

- on Linux with ``renameat2(RENAME_EXCHANGE)`` the two folders trade places in one atomic step, so the
  destination path always exists;
- elsewhere the old folder is renamed aside and the new one renamed in; between those two renames (a few
  microseconds) the destination is missing, which readers see as "no checkpoint yet" and retry.

A crash at any point leaves the old checkpoint in place (or, in the microsecond window, aside under a
``.<name>.old-*`` name that the next ``publish`` restores first). Temporary siblings are removed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import uuid
from pathlib import Path

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2``); False when the system cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _restore_aside(dst: Path) -> None:
    """A crash between the two fallback renames left the old folder aside: put it back."""
    if dst.exists():
        return
    aside = sorted(dst.parent.glob(f".{dst.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if aside:
        os.replace(aside[-1], dst)


def publish(src_dir: str | Path, dst_dir: str | Path) -> Path:
    """Copy the finished checkpoint folder ``src_dir`` to ``dst_dir`` atomically (see the module docstring).

    Args:
        src_dir: a complete checkpoint folder (left untouched).
        dst_dir: the served folder; created when absent, replaced as a whole when present.

    Returns:
        ``dst_dir`` as a Path.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"cannot publish {src}: not a folder (train into a folder first)")
    if src.resolve() == dst.resolve():
        raise ValueError(f"publish needs a scratch folder distinct from the destination, got {src} twice")
    dst.parent.mkdir(parents=True, exist_ok=True)
    _restore_aside(dst)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        # copyfile, not copy2: fresh modification times tell ``checkpoint_mtime`` a new publish happened
        shutil.copytree(src, tmp, copy_function=shutil.copyfile)
        _fsync_tree(tmp)
        if not dst.exists():
            os.replace(tmp, dst)
        elif _exchange(tmp, dst):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old checkpoint
        else:
            aside = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(dst, aside)
            os.replace(tmp, dst)
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def checkpoint_mtime(dst_dir: str | Path) -> float | None:
    """Latest modification time (seconds since the epoch) of a published folder and the files directly in
    it, or None when there is no checkpoint there: poll it to reload after a new ``publish``."""
    dst = Path(dst_dir)
    try:
        times = [dst.stat().st_mtime]
        times += [p.stat().st_mtime for p in dst.iterdir() if p.is_file()]
    except FileNotFoundError:
        return None
    return max(times)

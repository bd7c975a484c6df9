"""Atomic checkpoint publication."""

from __future__ import annotations

import os

import pytest

from lib.learning import checkpoint
from lib.learning.checkpoint import checkpoint_mtime, publish


def _folder(path, text: str):
    path.mkdir(parents=True)
    (path / "policy.pt").write_text(text)
    (path / "policy.json").write_text(text)
    return path


def test_publish_creates_then_replaces_whole_folders(tmp_path):
    dst = tmp_path / "served"
    assert checkpoint_mtime(dst) is None
    publish(_folder(tmp_path / "a", "one"), dst)
    assert (dst / "policy.pt").read_text() == "one"
    t1 = checkpoint_mtime(dst)
    (dst / "stale.txt").write_text("from an old run")
    os.utime(dst / "policy.pt", (t1 - 100, t1 - 100))
    publish(_folder(tmp_path / "b", "two"), dst)
    assert (dst / "policy.json").read_text() == "two" and not (dst / "stale.txt").exists()
    assert checkpoint_mtime(dst) >= t1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "served"]  # no temporary siblings left


def test_fallback_swap_and_failed_copy_keep_the_old_checkpoint(tmp_path, monkeypatch):
    dst = publish(_folder(tmp_path / "a", "one"), tmp_path / "served")
    monkeypatch.setattr(checkpoint, "_exchange", lambda a, b: False)  # e.g. not Linux
    publish(_folder(tmp_path / "b", "two"), dst)
    assert (dst / "policy.pt").read_text() == "two"

    def broken_copy(src, dst_path, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.shutil, "copytree", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        publish(_folder(tmp_path / "c", "three"), dst)
    assert (dst / "policy.pt").read_text() == "two"
    with pytest.raises(FileNotFoundError):
        publish(tmp_path / "missing", dst)


def test_a_crash_between_fallback_renames_is_repaired(tmp_path):
    dst = tmp_path / "served"
    _folder(tmp_path / ".served.old-1234", "old")  # the old checkpoint, renamed aside before the crash
    publish(_folder(tmp_path / "new", "new"), dst)
    assert (dst / "policy.pt").read_text() == "new"
    assert not list(tmp_path.glob(".served.*"))

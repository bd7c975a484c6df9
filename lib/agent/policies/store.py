"""Where a served policy lives: a checkpoint folder that training publishes atomically and that the
server reloads when it changes (no restart).

A checkpoint folder holds ``policy.json`` (config, label set, provenance) next to the weights. Training
writes a complete new folder and swaps it in with one rename (``lib.learning.checkpoint.publish``), so a
reader sees either the old or the new checkpoint, never a mix; a failed or stopped run leaves the old one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from lib.agent.policies.base import Policy

logger = logging.getLogger(__name__)


def checkpoint_stamp(ckpt_dir: Path | str, marker: str = "policy.json") -> tuple | None:
    """Identity of the checkpoint currently published in ``ckpt_dir`` (None when there is none)."""
    meta = Path(ckpt_dir) / marker
    if not meta.is_file():
        return None
    st = meta.stat()
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class PolicyStore:
    """Lazily loads the policy in ``ckpt_dir`` and reloads it when a new checkpoint is published.

    Args:
        ckpt_dir: the published checkpoint folder.
        loader: ``ckpt_dir -> Policy`` (e.g. ``CompactPolicy.load``).
        marker: the file whose presence and identity mark a complete checkpoint (a Hugging Face
            folder has ``config.json``).
    """

    def __init__(self, ckpt_dir: Path | str, loader: Callable[[Path], Policy], marker: str = "policy.json") -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.loader = loader
        self.marker = marker
        self._policy: Policy | None = None
        self._stamp: tuple | None = None
        self._lock = threading.Lock()
        #: serialises episodes of the shared policy object (its per-episode state lives on it)
        self.episode_lock = threading.Lock()

    def exists(self) -> bool:
        return checkpoint_stamp(self.ckpt_dir, self.marker) is not None

    def get(self) -> Policy | None:
        """The current policy, or None when nothing is published yet."""
        with self._lock:
            stamp = checkpoint_stamp(self.ckpt_dir, self.marker)
            if stamp is None:
                self._policy, self._stamp = None, None
            elif stamp != self._stamp:
                self._policy = self.loader(self.ckpt_dir)
                self._stamp = stamp
                logger.info("loaded policy from %s", self.ckpt_dir)
            return self._policy

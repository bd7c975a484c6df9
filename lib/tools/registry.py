"""Backend registry: name -> bundle folder and factory.

Backends are MONAI bundles under ``bundles/<name>/``; ``lib.tools.bundle.load_tool`` builds them
through ``monai.bundle``. Backend modules import their heavy dependencies lazily (inside the
factory), so the app starts even when an optional backend's package or checkpoint is missing.
"""

from __future__ import annotations

from pathlib import Path

#: repository root (the MONAI Label app folder)
APP_ROOT = Path(__file__).resolve().parents[2]
BUNDLES_DIR = APP_ROOT / "bundles"

#: backends known to the project, in the order they are offered
BACKENDS = ("litemedsam", "sam2", "medsam2")


def bundle_dir(name: str, root: Path | str | None = None) -> Path:
    """Folder of a backend's bundle; ValueError for an unknown backend name."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return Path(root or BUNDLES_DIR) / name

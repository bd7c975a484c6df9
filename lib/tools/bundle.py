"""Build a ``Tool`` from its MONAI bundle (``configs/inference.json`` with ``_target_`` into lib.tools)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lib.tools.base import MissingCheckpointError, Tool


def read_metadata(bundle: Path | str) -> dict[str, Any]:
    """The bundle's ``configs/metadata.json`` as a dict."""
    with open(Path(bundle) / "configs" / "metadata.json") as f:
        return json.load(f)


def load_tool(bundle: Path | str, **overrides: Any) -> Tool:
    """Instantiate the ``tool`` item of a bundle's inference config.

    Args:
        bundle: the bundle folder (``bundles/<name>``).
        overrides: config ids to override (e.g. ``checkpoint="/path/model.pt"``, ``device="cpu"``),
            applied with MONAI's ``ConfigParser`` before parsing.

    Raises:
        lib.tools.base.MissingCheckpointError: the checkpoint named by the bundle is not on disk.
    """
    from monai.bundle import ConfigParser

    bundle = Path(bundle).resolve()
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    for key, value in overrides.items():
        if value is not None:
            parser[key] = value
    try:
        return parser.get_parsed_content("tool", instantiate=True)
    except RuntimeError as e:
        # monai.bundle wraps constructor errors; surface the tool's own (it says what to fix)
        cause = e.__cause__
        if isinstance(cause, (MissingCheckpointError, ValueError, FileNotFoundError)):
            raise cause from None
        raise

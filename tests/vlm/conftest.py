"""Fixtures of the VLM tests: a tiny Qwen3-VL built in-process (``tests.vlm.tiny``), synthetic scenes, FakeTool.

Nothing here touches the Hugging Face hub (``HF_HUB_OFFLINE=1``; every model and tokenizer is built from code).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lib.tools.fake import FakeTool  # noqa: E402
from tests.vlm.scenes import two_tone_disk  # noqa: E402


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray]:
    return two_tone_disk()


@pytest.fixture
def fake_tool() -> FakeTool:
    return FakeTool()


@pytest.fixture(scope="session")
def processor():
    from tests.vlm.tiny import tiny_processor

    return tiny_processor()


@pytest.fixture
def tiny_vlm(processor):
    """A fresh tiny model per test (training tests wrap it with LoRA in place)."""
    from tests.vlm.tiny import tiny_model

    return tiny_model(processor)


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory, processor):
    """The tiny model + processor saved as a transformers checkpoint folder (what a user downloads)."""
    from tests.vlm.tiny import tiny_model

    path = tmp_path_factory.mktemp("tiny-qwen3-vl")
    tiny_model(processor).save_pretrained(path)
    processor.save_pretrained(path)
    return path

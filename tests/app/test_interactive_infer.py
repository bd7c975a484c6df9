"""InteractiveInfer without a server: a repeated prompt set is answered from the history without
opening (and so possibly re-encoding) the slice's session."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import SimpleITK as sitk

from lib.infers.interactive import InteractiveInfer


class _Provider:
    """Counts the sessions opened; every decode answers a fixed square on the (J, I) = (8, 8) slice."""

    name, weights_stamp, tool = "fake", "w0", SimpleNamespace(weights="fake weights")

    def __init__(self) -> None:
        self.opened = 0

    def checkpoint_problem(self):
        return None

    def session(self, key, make_input):
        self.opened += 1
        assert make_input().shape[:2] == (8, 8)
        mask = np.zeros((8, 8), dtype=bool)
        mask[2:5, 2:6] = True
        out = SimpleNamespace(mask=mask, score=0.9, decoder_ms=1.5)
        return SimpleNamespace(encoder_ms=7.0, predict=lambda **prompts: out), False


def test_repeated_prompts_do_not_open_the_session(tmp_path):
    image = tmp_path / "ct.nii.gz"
    vol = sitk.GetImageFromArray(np.zeros((3, 8, 8), dtype=np.int16))  # (K, J, I)
    sitk.WriteImage(vol, str(image))
    provider = _Provider()
    infer = InteractiveInfer(provider, {"liver": 1})
    request = {"image": str(image), "foreground": [[3, 3, 1]], "roi": [1, 6, 1, 5, 1, 1], "label": "liver"}

    path, first = infer(dict(request))
    assert first["answer"] == "decoded" and first["latencies"]["encoder_ms"] == 7.0 and provider.opened == 1
    label = sitk.GetArrayFromImage(sitk.ReadImage(path))
    assert label.shape == (3, 8, 8) and label[1, 2:5, 2:6].all() and label.sum() == 12
    assert not label[[0, 2]].any()  # only the prompted slice is written

    _, again = infer(dict(request))
    assert again["answer"] == "repeated" and provider.opened == 1
    assert again["latencies"]["encoder_ms"] == 0.0 and again["latencies"]["decoder_ms"] == 0.0

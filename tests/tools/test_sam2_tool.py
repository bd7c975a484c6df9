"""Sam2Tool (sam2 / medsam2 backends) with random hiera-tiny weights: no checkpoint, no download.

The slice is deliberately non-square (H=96, W=130) so a swapped (x, y) or (H, W) shows up.
"""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from lib.tools.base import BOX, MASK_INPUT, POINT, MissingCheckpointError  # noqa: E402
from lib.tools.bundle import load_tool, read_metadata  # noqa: E402
from lib.tools.encoder_runtime import installed_runtimes  # noqa: E402
from lib.tools.sam2_tool import Sam2Tool  # noqa: E402

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
H, W = 96, 130
#: torch encoder in these tests (an export of the 30 M-parameter model per test would take minutes); the
#: exported runtimes are tested once, in test_exported_encoder_matches_torch
TORCH = {"encoder_runtime": "torch"}
RANDOM = {"tool#allow_random_weights": True, **TORCH}


def _image(seed: int) -> np.ndarray:
    """(H, W) float32 in [0, 1]: a bright off-centre ellipse on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    img = 0.2 + 0.6 * (((xx - 80) / 30.0) ** 2 + ((yy - 40) / 18.0) ** 2 < 1)
    return np.clip(img + 0.05 * rng.standard_normal((H, W)), 0, 1).astype(np.float32)


def _cause(exc: BaseException, kind: type) -> BaseException | None:
    """``exc`` or the first exception of type ``kind`` in its chain (MONAI wraps instantiate errors)."""
    while exc is not None:
        if isinstance(exc, kind):
            return exc
        exc = exc.__cause__
    return None


@pytest.fixture(scope="module")
def medsam2(tmp_path_factory):
    """The medsam2 bundle (512² input) with random weights, built through monai.bundle."""
    torch.manual_seed(0)
    missing = tmp_path_factory.mktemp("ckpt") / "MedSAM2_latest.pt"
    return load_tool(BUNDLES / "medsam2", checkpoint=str(missing), **RANDOM)


@pytest.fixture(scope="module")
def session(medsam2):
    return medsam2.start(_image(0))


def test_bundle_builds_tool(medsam2):
    assert isinstance(medsam2, Sam2Tool)
    assert medsam2.name == "medsam2"
    assert medsam2.image_size == 512 and medsam2.lowres_size == 128
    assert medsam2.capabilities == frozenset({BOX, POINT, MASK_INPUT})
    assert medsam2.weights == "random (test only)"
    for name in ("sam2", "medsam2"):
        meta = read_metadata(BUNDLES / name)
        assert meta["required_packages_version"] == {"sam2": "1.1.0"}
        assert meta["network_data_format"]["outputs"]["pred"]["dtype"] == "bool"


def test_encoder_runs_once_per_session(medsam2):
    calls = []
    hook = medsam2.model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        before = medsam2.encoder_calls
        s = medsam2.start(_image(1))
        for _ in range(3):
            s.predict(box=(50, 20, 110, 60))
        s.predict(points=[(80, 40)], labels=[1])
    finally:
        hook.remove()
    assert len(calls) == 1 and medsam2.encoder_calls == before + 1
    assert s.shape == (H, W) and s.encoder_ms > 0
    # 512² input: (1,256,32,32) + (1,32,128,128) + (1,64,64,64) float32
    assert s.nbytes == 4 * (256 * 32 * 32 + 32 * 128 * 128 + 64 * 64 * 64)


@pytest.mark.parametrize(
    "prompt",
    [
        {"box": (50, 20, 110, 60)},
        {"points": [(80, 40), (10, 90)], "labels": [1, 0]},
        {"box": (50, 20, 110, 60), "points": [(80, 40)], "labels": [1], "with_logits": True},
    ],
    ids=["box", "points", "box+points+logits"],
)
def test_predict_shapes(session, prompt):
    prompt = dict(prompt)
    if prompt.pop("with_logits", False):
        prompt["mask_logits"] = session.predict(box=prompt["box"]).logits
    out = session.predict(**prompt)
    assert out.mask.shape == (H, W) and out.mask.dtype == bool
    assert out.logits.shape == (1, 256, 256) and out.logits.dtype == np.float32
    assert np.abs(out.logits).max() <= 32.0
    assert 0.0 <= out.score <= 1.0 and out.decoder_ms > 0


def test_logits_round_trip_is_exact(medsam2, session):
    """At 512² the model's 128² logits are repeated 2×2 to 256² and block-averaged back."""
    logits = session.predict(box=(50, 20, 110, 60)).logits
    back = medsam2._from_contract_logits(logits)
    assert back.shape == (1, 1, 128, 128)
    again = medsam2._to_contract_logits(back)
    np.testing.assert_array_equal(again, logits)


def test_rgb_input_equals_grey_float(medsam2, session):
    img = _image(0)
    rgb = np.repeat(np.round(img * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    a = session.predict(box=(50, 20, 110, 60))
    b = medsam2.start(rgb).predict(box=(50, 20, 110, 60))
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"points": [(W, 10)], "labels": [1]},
        {"points": [(10, -1)], "labels": [1]},
        {"points": [(10, 10)], "labels": [2]},
        {"points": [(10, 10)], "labels": []},
        {"box": (60, 20, 50, 60)},
        {"box": (0, 0, W, H - 1)},
        {"box": (0, 0, 10, 10), "mask_logits": np.zeros((1, 128, 128), np.float32)},
    ],
)
def test_invalid_prompt_raises(session, kwargs):
    with pytest.raises(ValueError):
        session.predict(**kwargs)


def test_invalid_image_raises(medsam2):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        medsam2.start(np.full((H, W), 300.0, np.float32))
    with pytest.raises(ValueError, match="shape"):
        medsam2.start(np.zeros((H, W, 4), np.uint8))


def test_missing_checkpoint_names_file(tmp_path):
    missing = tmp_path / "MedSAM2_latest.pt"
    with pytest.raises(MissingCheckpointError) as info:
        Sam2Tool("medsam2", checkpoint=missing, image_size=512, encoder_runtime="torch")
    assert "MedSAM2_latest.pt" in str(info.value) and str(missing) in str(info.value)
    assert "--conf medsam2_checkpoint" in str(info.value) and "never downloaded" in str(info.value)
    # through the bundle: MONAI's instantiate may wrap it in a RuntimeError; the cause must be ours
    with pytest.raises(Exception) as info:
        load_tool(BUNDLES / "sam2", checkpoint=str(tmp_path / "sam2.1_hiera_tiny.pt"), **TORCH)
    err = _cause(info.value, MissingCheckpointError)
    assert err is not None and "sam2.1_hiera_tiny.pt" in str(err)


def test_checkpoint_round_trip(medsam2, session, tmp_path):
    """A {"model": state_dict} file (the release format) loads strictly and reproduces the model."""
    ckpt = tmp_path / "MedSAM2_latest.pt"
    torch.save({"model": medsam2.model.state_dict()}, ckpt)
    tool = load_tool(BUNDLES / "medsam2", checkpoint=str(ckpt), **TORCH)
    assert tool.weights.startswith("MedSAM2_latest.pt (sha256 ")
    a = session.predict(box=(50, 20, 110, 60))
    b = tool.start(_image(0)).predict(box=(50, 20, 110, 60))
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
    sd = medsam2.model.state_dict()
    sd.pop(next(iter(sd)))
    torch.save({"model": sd}, ckpt)
    with pytest.raises(Exception) as info:
        load_tool(BUNDLES / "medsam2", checkpoint=str(ckpt), **TORCH)
    assert _cause(info.value, ValueError) is not None and "missing keys" in str(_cause(info.value, ValueError))


def test_threads_match_sequential(medsam2):
    """Two threads each encode a slice and decode on it at the same time through one shared tool."""
    images = [_image(2), _image(3)]
    prompts = [
        {"box": (50, 20, 110, 60)},
        {"points": [(80, 40), (20, 80)], "labels": [1, 0]},
        {"box": (10, 10, 60, 90), "points": [(30, 50)], "labels": [1]},
    ]

    def run(img):
        s = medsam2.start(img)
        outs = []
        for p in prompts:
            outs.append(s.predict(**p, mask_logits=outs[-1].logits if outs else None))
        return outs

    sequential = [run(img) for img in images]
    barrier = threading.Barrier(2)

    def run_together(img):
        barrier.wait()
        return run(img)

    with ThreadPoolExecutor(2) as pool:
        concurrent = list(pool.map(run_together, images))
    for seq, con in zip(sequential, concurrent, strict=True):
        for a, b in zip(seq, con, strict=True):
            np.testing.assert_array_equal(a.mask, b.mask)
            np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
            assert a.score == pytest.approx(b.score, abs=1e-6)


def test_matches_sam2_image_predictor():
    """Same numbers as the library's SAM2ImagePredictor (the reference's call path) on a non-square slice.

    Runs the sam2 bundle at image_size 256 to stay fast; the predictor hard-codes 1024-size backbone
    feature sizes, so they are set for 256 here (64, 32, 16), which is what Sam2Tool reads off the backbone.
    """
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    torch.manual_seed(1)
    tool = load_tool(BUNDLES / "sam2", checkpoint="/nonexistent/sam2.1_hiera_tiny.pt", image_size=256, **RANDOM)
    assert tool.lowres_size == 64
    img = _image(4)
    session = tool.start(img)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script deprecation inside SAM2Transforms
        pred = SAM2ImagePredictor(tool.model)
    pred._bb_feat_sizes = [(64, 64), (32, 32), (16, 16)]
    pred.set_image(np.repeat(np.round(img * 255).astype(np.uint8)[:, :, None], 3, axis=2))
    box, pts, labs = (50, 20, 110, 60), [(80, 40), (20, 80)], [1, 0]
    ours = session.predict(box=box, points=pts, labels=labs)
    masks, ious, low = pred.predict(point_coords=np.array(pts), point_labels=np.array(labs), box=np.array(box))
    best = int(np.argmax(ious))
    np.testing.assert_array_equal(ours.mask, masks[best].astype(bool))
    assert ours.score == pytest.approx(float(ious[best]), abs=1e-6)
    # refinement with the previous logits: ours go through the 256² contract frame and back (exact)
    ours2 = session.predict(box=box, mask_logits=ours.logits)
    masks2, ious2, _ = pred.predict(box=np.array(box), mask_input=low[best : best + 1])
    best2 = int(np.argmax(ious2))
    np.testing.assert_array_equal(ours2.mask, masks2[best2].astype(bool))
    assert ours2.score == pytest.approx(float(ious2[best2]), abs=1e-6)


def test_cuda_request_falls_back_to_cpu():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.warns(RuntimeWarning, match="cpu"):
        tool = Sam2Tool("sam2", device="cuda", image_size=256, allow_random_weights=True, encoder_runtime="torch")
    assert tool.device.type == "cpu"


@pytest.mark.skipif(not installed_runtimes(), reason="neither onnxruntime nor openvino is installed")
def test_exported_encoder_matches_torch(tmp_path, monkeypatch):
    """The Hiera image encoder exports to ONNX / OpenVINO IR and gives torch's three feature maps and masks.

    Random weights at image_size 256 to stay fast (the export does not depend on the size or the weights);
    the exports go to a temporary cache.
    """
    monkeypatch.setenv("MEDSAM_AGENT_CACHE", str(tmp_path))
    torch.manual_seed(2)
    ref = Sam2Tool("sam2", image_size=256, allow_random_weights=True, encoder_runtime="torch")
    img = _image(5)
    want = ref.start(img)
    prompts = [{"box": (50, 20, 110, 60)}, {"box": (50, 20, 110, 60), "points": [(80, 40)], "labels": [1]},
               {"points": [(80, 40), (20, 80)], "labels": [1, 0]}]
    # onnxruntime first: OpenVINO then converts its ONNX file instead of exporting from torch again
    for rt in sorted(installed_runtimes(), key=lambda r: r != "onnxruntime"):
        torch.manual_seed(2)  # the same random weights as ``ref``
        tool = Sam2Tool("sam2", image_size=256, allow_random_weights=True, encoder_runtime=rt, block_export=True)
        got = tool.start(img)
        assert tool.encoder_info()["encoder_runtime"] == rt, tool.encoder_info()
        for a, b in zip((*got._high_res_feats, got._image_embed), (*want._high_res_feats, want._image_embed)):
            assert a.shape == b.shape and float((a - b).abs().max()) < 1e-4
        for p in prompts:
            x, y = got.predict(**p), want.predict(**p)
            inter = int((x.mask & y.mask).sum())
            assert 2 * inter / max(1, int(x.mask.sum() + y.mask.sum())) >= 0.999

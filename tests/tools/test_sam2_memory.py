"""Sam2VolumeMemory (lib.tools.sam2_memory): SAM 2's video memory for volume episodes, random hiera-tiny weights.

The tool runs at image_size 128 (the smallest grid the Hiera windows and the memory attention's RoPE take: 8 x 8
at the lowest level) on small non-square slices, so every test takes seconds on a CPU; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from lib.tools.encoder_runtime import installed_runtimes  # noqa: E402
from lib.tools.sam2_memory import SEED, Sam2MemorySession, Sam2VolumeMemory  # noqa: E402
from lib.tools.sam2_tool import Sam2Tool  # noqa: E402

K, H, W = 9, 40, 56
K0 = 4
BOX = (14, 8, 44, 32)


def _volume(seed: int = 0) -> np.ndarray:
    """(K, H, W) float32 in [0, 1]: an ellipsoid whose cross-section shrinks away from slice K0, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    vol = np.empty((K, H, W), np.float32)
    for k in range(K):
        r = max(0.2, 1.0 - abs(k - K0) / 6)
        inside = ((xx - 29) / (14 * r)) ** 2 + ((yy - 20) / (10 * r)) ** 2 < 1
        vol[k] = np.clip(0.2 + 0.6 * inside + 0.05 * rng.standard_normal((H, W)), 0, 1)
    return vol


def _tool(**kwargs) -> Sam2Tool:
    torch.manual_seed(0)
    return Sam2Tool("sam2", image_size=128, allow_random_weights=True, **{"encoder_runtime": "torch", **kwargs})


@pytest.fixture(scope="module")
def tool():
    return _tool()


@pytest.fixture(scope="module")
def vol():
    return _volume()


@pytest.fixture(scope="module")
def sessions(tool, vol):
    return [tool.start(vol[k]) for k in range(K)]


def _seeded(tool, sessions) -> tuple[Sam2VolumeMemory, np.ndarray]:
    memory = tool.volume_memory(K)
    seed = sessions[K0].predict(box=BOX).mask
    memory.remember(K0, SEED, sessions[K0], seed)
    return memory, seed


def test_memory_decode_differs_from_plain_and_is_deterministic(tool, sessions):
    memory, _ = _seeded(tool, sessions)
    wrapped = memory.session(K0 + 1, +1, sessions[K0 + 1])
    assert isinstance(wrapped, Sam2MemorySession) and wrapped.shape == (H, W) and wrapped.nbytes == 0
    assert wrapped.attended == [K0]
    a = wrapped.predict(box=BOX)
    plain = sessions[K0 + 1].predict(box=BOX)
    assert a.mask.shape == (H, W) and a.mask.dtype == bool and a.logits.shape == (1, 256, 256)
    assert float(np.abs(a.logits - plain.logits).max()) > 1e-3  # the memory changed the answer
    assert wrapped.memory_ms > 0 and a.decoder_ms >= wrapped.memory_ms  # the first decode pays the attention
    # the same prompts again, on the same wrapper and on a second wrapper of the same memory: the same numbers
    b = wrapped.predict(box=BOX)
    c = memory.session(K0 + 1, +1, sessions[K0 + 1]).predict(box=BOX)
    for other in (b, c):
        np.testing.assert_array_equal(other.mask, a.mask)
        np.testing.assert_array_equal(other.logits, a.logits)
        assert other.score == a.score
    # corrections on the slice read the memory too (clicks, the previous logits)
    d = wrapped.predict(box=BOX, points=[(29, 20)], labels=[1], mask_logits=a.logits)
    e = sessions[K0 + 1].predict(box=BOX, points=[(29, 20)], labels=[1], mask_logits=a.logits)
    assert float(np.abs(d.logits - e.logits).max()) > 1e-3


def test_cached_sessions_are_never_changed(tool, sessions):
    s = sessions[K0 + 2]
    before = [t.clone() for t in (s._image_embed, *s._high_res_feats)]
    want = s.predict(box=BOX)
    memory, _ = _seeded(tool, sessions)
    memory.remember(K0 + 1, +1, sessions[K0 + 1], sessions[K0 + 1].predict(box=BOX).mask)
    wrapped = memory.session(K0 + 2, +1, s)
    got = wrapped.predict(box=BOX, points=[(29, 20)], labels=[1])
    memory.remember(K0 + 2, +1, s, got.mask)
    for t, b in zip((s._image_embed, *s._high_res_feats), before, strict=True):
        assert torch.equal(t, b)
    again = s.predict(box=BOX)
    np.testing.assert_array_equal(again.logits, want.logits)
    # the un-no_mem_embed features are recovered, not stored: one subtraction off the encoder's own map
    raw = s.vision_features()
    back = raw + tool.model.no_mem_embed.detach().reshape(1, -1, 1, 1)
    np.testing.assert_allclose(back.numpy(), s._image_embed.numpy(), atol=1e-6)


def test_directions_keep_separate_banks(tool, sessions):
    """A backward slice reads the seed and backward memories only, however many forward slices were remembered."""
    memory, _ = _seeded(tool, sessions)
    seed_only, _ = _seeded(tool, sessions)
    for k in (K0 + 1, K0 + 2, K0 + 3):
        memory.remember(k, +1, sessions[k], sessions[k].predict(box=BOX).mask)
    back = memory.session(K0 - 1, -1, sessions[K0 - 1])
    assert back.attended == [K0]
    ref = seed_only.session(K0 - 1, -1, sessions[K0 - 1])
    assert torch.equal(back.conditioned_features(), ref.conditioned_features())
    # and the forward slice K0 + 4 attends the seed and the three forward memories, nearest last
    assert memory.session(K0 + 4, +1, sessions[K0 + 4]).attended == [K0, K0 + 1, K0 + 2, K0 + 3]
    # a backward memory does not change a forward slice's features
    fwd = memory.session(K0 + 4, +1, sessions[K0 + 4]).conditioned_features()
    memory.remember(K0 - 1, -1, sessions[K0 - 1], sessions[K0 - 1].predict(box=BOX).mask)
    assert torch.equal(memory.session(K0 + 4, +1, sessions[K0 + 4]).conditioned_features(), fwd)
    assert memory.attended(K0 - 2, -1) == [K0, K0 - 1]


def test_misuse_raises(tool, sessions):
    memory = tool.volume_memory(K)
    with pytest.raises(RuntimeError, match="seed"):
        memory.session(K0 + 1, +1, sessions[K0 + 1])
    memory.remember(K0, SEED, sessions[K0], np.zeros((H, W), bool))
    with pytest.raises(ValueError, match="side"):
        memory.session(K0 - 1, +1, sessions[K0 - 1])
    with pytest.raises(ValueError, match="side"):
        memory.remember(K0, -1, sessions[K0], np.zeros((H, W), bool))
    with pytest.raises(ValueError, match="outside"):
        memory.session(K, +1, sessions[0])
    with pytest.raises(ValueError, match="shape"):
        memory.remember(K0 + 1, +1, sessions[K0 + 1], np.zeros((H, W + 1), bool))
    with pytest.raises(ValueError, match="second seed"):
        memory.remember(K0 + 1, SEED, sessions[K0 + 1], np.zeros((H, W), bool))
    with pytest.raises(TypeError):
        memory.session(K0 + 1, +1, memory.session(K0 + 1, +1, sessions[K0 + 1]))


def test_bank_keeps_only_what_the_model_reads(tool, sessions):
    memory, _ = _seeded(tool, sessions)
    memory.horizon = 2  # the model reads at most 2 slices back (7 / 16 for the real configs)
    for k in range(K0 + 1, K):
        memory.remember(k, +1, sessions[k], sessions[k].predict(box=BOX).mask)
    assert sorted(memory.banks[+1]) == [K - 3, K - 2, K - 1] and memory.banks[-1] == {}


def test_matches_sam2_video_predictor(tool, sessions, vol, monkeypatch):
    """The seed's memory and the first propagated slice's memory-conditioned features, both directions, equal
    those of the library's SAM2VideoPredictor given the same mask on the seed frame (``add_new_mask``)."""
    import sam2.sam2_video_predictor as svp
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lib.tools.sam2_tool import _POSTPROCESSING, _VIDEO_POSTPROCESSING

    cfg = OmegaConf.load(tool.config_path)
    overrides = {**_POSTPROCESSING, **_VIDEO_POSTPROCESSING,
                 "model._target_": "sam2.sam2_video_predictor.SAM2VideoPredictor",
                 "model.image_size": 128, "model.fill_hole_area": 0,
                 "model.memory_attention.layer.self_attention.feat_sizes": [8, 8],
                 "model.memory_attention.layer.cross_attention.feat_sizes": [8, 8]}
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    ref = instantiate(cfg.model, _recursive_=True)
    ref.load_state_dict(tool.model.state_dict())
    ref.eval()
    images = torch.cat([tool.preprocess(vol[k]) for k in range(K)])
    monkeypatch.setattr(svp, "load_video_frames", lambda **kw: (images, H, W))
    conditioned = {}
    original = ref._prepare_memory_conditioned_features

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        conditioned[(kwargs["frame_idx"], kwargs["track_in_reverse"])] = out.clone()
        return out

    ref._prepare_memory_conditioned_features = spy
    memory, seed_mask = _seeded(tool, sessions)
    for direction in (+1, -1):
        state = ref.init_state("unused")
        ref.add_new_mask(state, frame_idx=K0, obj_id=1, mask=seed_mask)
        for _ in ref.propagate_in_video(state, start_frame_idx=K0, max_frame_num_to_track=1, reverse=direction < 0):
            pass
        cond = state["output_dict_per_obj"][0]["cond_frame_outputs"][K0]
        ours = memory.seed[1]
        assert ours.features.dtype == cond["maskmem_features"].dtype == torch.bfloat16
        # measured: memories identical, pointers within 1.2e-7, features within 1e-6 (of |f| <= 3.6); the one
        # float rounding of recovering the un-no_mem_embed map, bfloat16 storage
        assert float((ours.features.float() - cond["maskmem_features"].float()).abs().max()) < 1e-2
        assert float((ours.obj_ptr - cond["obj_ptr"]).abs().max()) < 1e-5
        want = conditioned[(K0 + direction, direction < 0)]
        got = memory.session(K0 + direction, direction, sessions[K0 + direction]).conditioned_features()
        assert got.shape == want.shape == (1, 256, 8, 8)
        assert float((got - want).abs().max()) < 1e-5


@pytest.mark.slow
@pytest.mark.skipif("onnxruntime" not in installed_runtimes(), reason="onnxruntime is not installed")
def test_memory_with_an_exported_encoder(tmp_path, monkeypatch, vol):
    """The memory reads only the session's feature maps, so an ONNX Runtime encoder serves it as torch does."""
    monkeypatch.setenv("MEDSAM_AGENT_CACHE", str(tmp_path))
    ref, ort = _tool(), _tool(encoder_runtime="onnxruntime", block_export=True)
    answers = []
    for t in (ref, ort):
        sessions = [t.start(vol[k]) for k in range(K)]
        memory, _ = _seeded(t, sessions)
        memory.remember(K0 + 1, +1, sessions[K0 + 1], sessions[K0 + 1].predict(box=BOX).mask)
        answers.append(memory.session(K0 + 2, +1, sessions[K0 + 2]).predict(box=BOX))
    assert ort.encoder_info()["encoder_runtime"] == "onnxruntime", ort.encoder_info()
    a, b = answers
    assert 2 * int((a.mask & b.mask).sum()) / max(1, int(a.mask.sum() + b.mask.sum())) >= 0.99

"""Image encoder in ONNX Runtime / OpenVINO (lib.tools.encoder_runtime): parity with torch, the on-disk
export cache, fallback to torch, and the one encoder path shared by inference and fine-tuning.

The LiteMedSAM exports are made ONCE per test session (session-scoped fixture, temporary cache folder via
``MEDSAM_AGENT_CACHE``); cache mechanics are tested on a tiny conv net that exports in well under a second.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from lib.tools import encoder_runtime as er
from lib.tools.encoder_runtime import EncoderRunner, ensure_exported, export_key, resolve_runtime

EXPORTED = er.installed_runtimes()
#: embedding tolerance vs torch eager: max |difference| over the (1, 256, 64, 64) embedding. Measured
#: ~3e-6 for both runtimes (float32 round-off of reordered sums); the embedding's std is ~0.12.
EMB_ATOL = 1e-4
MIN_DICE = 0.999


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


# -- sample slices: CT and MR phantoms, windowed as the app does ------------------------------------
def phantom_slices() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, (H, W) float32 [0, 1] slice, (H, W) uint8 labels): the slice of a CT and of an MR phantom with the
    most labelled pixels (several organs each)."""
    from lib.data.intensity import Windowing
    from lib.data.phantoms import ct_phantom, mr_phantom

    out = []
    for name, (img, lab), win in (
        ("ct", ct_phantom(3, shape=(12, 160, 160)), Windowing(mode="ct", level=40, width=400)),
        ("mr", mr_phantom(4, shape=(10, 160, 160)), Windowing(mode="percentile")),
    ):
        counts = [(lab[k] > 0).sum() for k in range(lab.shape[0])]
        for k in np.argsort(counts)[::-1][:1]:
            out.append((f"{name}[{k}]", win(img[k].astype(np.float32)), lab[k]))
    return out


@pytest.fixture(scope="session")
def lite(tmp_path_factory):
    """{runtime: LiteMedSAMTool} for torch and each installed exported runtime, exported into a temporary cache."""
    from lib.tools.litemedsam import LiteMedSAMTool

    cache = tmp_path_factory.mktemp("medsam-agent-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDSAM_AGENT_CACHE", str(cache))
        tools = {"torch": LiteMedSAMTool(encoder_runtime="torch")}
        # onnxruntime first: OpenVINO then converts its ONNX file instead of exporting from torch again
        for rt in sorted(EXPORTED, key=lambda r: r != "onnxruntime"):
            tools[rt] = LiteMedSAMTool(encoder_runtime=rt, block_export=True)
            tools[rt].prepare_encoder()
    return tools, cache / "encoders"


@pytest.fixture(scope="session")
def slices():
    return phantom_slices()


@pytest.fixture(scope="session")
def sessions(lite, slices):
    """{runtime: [session of each sample slice]}: every slice encoded once per runtime."""
    tools, _ = lite
    return {rt: [t.start(img) for _, img, _ in slices] for rt, t in tools.items()}


# -- runtime selection ---------------------------------------------------------------------------------
def test_resolve_runtime():
    assert resolve_runtime("torch") == "torch"
    assert resolve_runtime("auto") == (EXPORTED[0] if EXPORTED else "torch")
    assert resolve_runtime("auto", "cuda:0") == "torch"  # exported runtimes run on CPU only
    with pytest.raises(ValueError, match="tensorrt"):
        resolve_runtime("tensorrt")


def test_auto_is_torch_when_no_runtime_is_installed(monkeypatch):
    monkeypatch.setattr(er.importlib.util, "find_spec", lambda name: None)
    assert er.installed_runtimes() == () and resolve_runtime("auto") == "torch"


# -- LiteMedSAM parity -----------------------------------------------------------------------------------
@pytest.mark.skipif(not EXPORTED, reason="neither onnxruntime nor openvino is installed")
def test_litemedsam_exports_are_cached_under_their_key(lite):
    from lib.tools.litemedsam import released_checkpoint

    tools, root = lite
    _, sha = released_checkpoint()
    for rt in EXPORTED:
        info = tools[rt].encoder_info()
        assert info["encoder_runtime"] == rt and info["encoder_state"] == "ready", info
        folder = tools[rt].encoder.folder
        assert folder == root / f"litemedsam-{sha[:16]}-{rt}-256x256-v{er.FORMAT_VERSION}"
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["weights_sha256"] == sha and meta["input_shape"] == [1, 3, 256, 256]
    assert not list(root.glob(".*.tmp"))  # nothing half-written left behind


@pytest.mark.skipif(not EXPORTED, reason="neither onnxruntime nor openvino is installed")
def test_embeddings_match_torch(sessions, slices):
    for i, (name, _, _) in enumerate(slices):
        ref = sessions["torch"][i]
        assert ref.embedding.shape == (1, 256, 64, 64)
        for rt in EXPORTED:
            s = sessions[rt][i]
            assert s.embedding.dtype == torch.float32 and s.embedding.shape == ref.embedding.shape
            assert s.resized == ref.resized
            err = float((s.embedding - ref.embedding).abs().max())
            assert err <= EMB_ATOL, f"{rt} {name}: max |embedding - torch| = {err:.2e}"


@pytest.mark.skipif(not EXPORTED, reason="neither onnxruntime nor openvino is installed")
def test_masks_match_torch(sessions, slices):
    """Box, and box + a positive click inside the object, for every labelled structure of the slices."""
    n = 0
    for i, (name, _, lab) in enumerate(slices):
        for value in np.unique(lab[lab > 0]):
            ys, xs = np.nonzero(lab == value)
            if len(ys) < 20:
                continue
            box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
            mid = len(ys) // 2
            for prompt in ({"box": box}, {"box": box, "points": [(int(xs[mid]), int(ys[mid]))], "labels": [1]}):
                ref = sessions["torch"][i].predict(**prompt)
                for rt in EXPORTED:
                    out = sessions[rt][i].predict(**prompt)
                    d = dice(out.mask, ref.mask)
                    assert d >= MIN_DICE, f"{rt} {name} label {value} {sorted(prompt)}: Dice vs torch {d:.5f}"
                    n += 1
    assert n >= 8 * len(EXPORTED)  # the slices do hold several structures


@pytest.mark.skipif(not EXPORTED, reason="neither onnxruntime nor openvino is installed")
def test_second_tool_loads_the_cached_export_without_exporting(lite, monkeypatch):
    from lib.tools.litemedsam import LiteMedSAMTool

    tools, root = lite
    rt = EXPORTED[0]
    monkeypatch.setenv("MEDSAM_AGENT_CACHE", str(root.parent))
    monkeypatch.setattr(er, "_export", lambda *a, **k: pytest.fail("exported again despite a cached export"))
    tool = LiteMedSAMTool(encoder_runtime=rt)  # background mode: a cached export loads in the caller
    tool.prepare_encoder()
    assert tool.encoder_info()["encoder_state"] == "ready" and tool.encoder.folder == tools[rt].encoder.folder


@pytest.mark.skipif(not EXPORTED, reason="neither onnxruntime nor openvino is installed")
def test_adapted_weights_share_the_released_encoder_export(lite, tmp_path, monkeypatch):
    """Interactive fine-tuning trains the prompt encoder and mask decoder only, so an adapted delta reuses the
    released export; a delta that did touch the image encoder is keyed by its own weights."""
    from lib.tools.litemedsam import LiteMedSAMTool

    tools, root = lite
    rt = EXPORTED[0]
    monkeypatch.setenv("MEDSAM_AGENT_CACHE", str(root.parent))
    head = {k: v for k, v in tools["torch"].net.state_dict().items() if k.startswith("mask_decoder.")}
    torch.save({k: v + 0.01 for k, v in list(head.items())[:2]}, tmp_path / "adapted.pt")
    adapted = LiteMedSAMTool(adapted=str(tmp_path / "adapted.pt"), encoder_runtime=rt)
    assert adapted.encoder.key == tools[rt].encoder.key
    enc = {k: v for k, v in tools["torch"].net.state_dict().items() if k.startswith("image_encoder.")}
    k0 = next(k for k, v in enc.items() if v.is_floating_point())
    torch.save({k0: enc[k0] + 0.01}, tmp_path / "enc.pt")
    touched = LiteMedSAMTool(adapted=str(tmp_path / "enc.pt"), encoder_runtime=rt)
    assert touched.encoder.key != tools[rt].encoder.key


@pytest.mark.skipif(not EXPORTED, reason="neither onnxruntime nor openvino is installed")
def test_finetuning_backend_encodes_through_the_tool(lite, slices, sessions, monkeypatch):
    """One encoder path: the trainable backend's embeddings are the served tool's, cached under the runtime."""
    from lib.learning.segmenter.backends import LiteMedSAMBackend

    tools, root = lite
    rt = EXPORTED[0]
    monkeypatch.setenv("MEDSAM_AGENT_CACHE", str(root.parent))
    backend = LiteMedSAMBackend(encoder_runtime=rt)
    assert set(backend.trainable_modules()) == {"prompt_encoder", "mask_decoder"}  # encoder never trained
    _, img, _ = slices[0]
    entry = backend.encode(img)
    assert torch.equal(entry.embedding, sessions[rt][0].embedding[0]) and entry.resized == sessions[rt][0].resized
    assert backend.tool.encoder.active == rt and backend.encoder_id().endswith(f":{rt}")


# -- cache mechanics on a tiny network ---------------------------------------------------------------------
class Tiny(torch.nn.Module):
    """(1, 3, 32, 32) -> (1, 4, 16, 16) and (1, 8, 8, 8): two outputs, like SAM 2's multi-level features."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return y, self.b(y)


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny().eval()


@pytest.mark.skipif(not EXPORTED, reason="neither onnxruntime nor openvino is installed")
@pytest.mark.parametrize("rt", EXPORTED)
def test_tiny_multi_output_parity(rt, tmp_path):
    net = tiny()
    runner = EncoderRunner(net, name="tiny", input_size=(32, 32), runtime=rt, cache_dir=tmp_path, block=True)
    x = torch.rand(1, 3, 32, 32)
    outs = runner(x)
    assert runner.active == rt
    with torch.no_grad():
        refs = net(x)
    assert len(outs) == 2 and all(torch.allclose(o, r, atol=1e-5) for o, r in zip(outs, refs))
    with pytest.raises(ValueError, match="32, 32"):
        runner(torch.rand(1, 3, 64, 64))


@pytest.mark.skipif(not EXPORTED, reason="neither onnxruntime nor openvino is installed")
def test_key_follows_weights_runtime_and_size(tmp_path):
    a, b = tiny(0), tiny(1)
    ka = EncoderRunner(a, name="tiny", input_size=(32, 32), runtime=EXPORTED[0], cache_dir=tmp_path).key
    assert ka != EncoderRunner(b, name="tiny", input_size=(32, 32), runtime=EXPORTED[0], cache_dir=tmp_path).key
    assert ka != EncoderRunner(a, name="tiny", input_size=(64, 64), runtime=EXPORTED[0], cache_dir=tmp_path).key
    assert export_key("m", "ab" * 32, "openvino", (256, 256)) != export_key("m", "ab" * 32, "onnxruntime", (256, 256))


@pytest.mark.skipif(not EXPORTED, reason="neither onnxruntime nor openvino is installed")
def test_concurrent_exports_leave_one_complete_folder(tmp_path, monkeypatch):
    """Several exporters of one key at once (threads here; the lock is an OS file lock, so processes alike):
    the model is exported once, every caller gets the same complete folder, no temporary folder is left."""
    net, rt = tiny(), EXPORTED[0]
    key = export_key("tiny", er.module_sha256(net), rt, (32, 32))
    calls = []
    real = er._export
    monkeypatch.setattr(er, "_export", lambda *a, **k: (calls.append(1), real(*a, **k)))
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        ensure_exported(net, torch.zeros(1, 3, 32, 32), rt, key, {"weights_sha256": "x"}, tmp_path)))
        for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and (results[0] / "meta.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [key]


@pytest.mark.skipif(not EXPORTED, reason="neither onnxruntime nor openvino is installed")
def test_stale_temporary_folders_are_removed(tmp_path, monkeypatch):
    stale = tmp_path / ".tiny-dead.tmp"
    stale.mkdir()
    monkeypatch.setattr(er, "STALE_TMP_S", -1.0)  # everything counts as stale
    runner = EncoderRunner(tiny(), name="tiny", input_size=(32, 32), runtime=EXPORTED[0], cache_dir=tmp_path)
    runner.prepare(block=True)
    assert not stale.exists()


@pytest.mark.skipif(not EXPORTED, reason="neither onnxruntime nor openvino is installed")
def test_background_export_answers_in_torch_until_ready(tmp_path, monkeypatch):
    net, rt = tiny(), EXPORTED[0]
    gate = threading.Event()
    real = er.ensure_exported

    def slow(*a, **k):
        gate.wait(30)
        return real(*a, **k)

    monkeypatch.setattr(er, "ensure_exported", slow)
    runner = EncoderRunner(net, name="tiny", input_size=(32, 32), runtime=rt, cache_dir=tmp_path)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
    out = runner(x)  # starts the export, answers now
    assert runner.info()["encoder_state"] == "exporting" and runner.active == "torch"
    assert all(torch.equal(o, r) for o, r in zip(out, ref))
    gate.set()
    assert runner.wait(60) and runner.active == rt and runner.info()["encoder_state"] == "ready"
    assert all(torch.allclose(o, r, atol=1e-5) for o, r in zip(runner(x), ref))


@pytest.mark.skipif(not EXPORTED, reason="neither onnxruntime nor openvino is installed")
def test_failed_export_falls_back_to_torch_with_the_reason(tmp_path, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("unsupported operator FancyOp")

    monkeypatch.setattr(er, "_export", broken)
    net = tiny()
    runner = EncoderRunner(net, name="tiny", input_size=(32, 32), runtime=EXPORTED[0], cache_dir=tmp_path, block=True)
    x = torch.rand(1, 3, 32, 32)
    with caplog.at_level("WARNING"):
        out = runner(x)
    info = runner.info()
    assert runner.active == "torch" and info["encoder_state"] == "fallback"
    assert "FancyOp" in info["encoder_fallback_reason"] and "FancyOp" in caplog.text
    with torch.no_grad():
        assert all(torch.equal(o, r) for o, r in zip(out, net(x)))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(not EXPORTED, reason="neither onnxruntime nor openvino is installed")
def test_corrupt_cached_export_falls_back_to_torch(tmp_path):
    net, rt = tiny(), EXPORTED[0]
    runner = EncoderRunner(net, name="tiny", input_size=(32, 32), runtime=rt, cache_dir=tmp_path, block=True)
    folder = tmp_path / runner.key
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"weights_sha256": runner.weights_sha256}))
    for f in ("encoder.onnx", "encoder.xml", "encoder.bin"):
        (folder / f).write_bytes(b"truncated")
    runner(torch.rand(1, 3, 32, 32))
    assert runner.active == "torch" and "cannot load" in runner.info()["encoder_fallback_reason"]


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSAM_AGENT_CACHE", str(tmp_path))
    assert er.cache_root() == tmp_path / "encoders"
    monkeypatch.delenv("MEDSAM_AGENT_CACHE")
    assert er.cache_root() == Path.home() / ".cache" / "medsam-agent" / "encoders"


# -- the app's view ----------------------------------------------------------------------------------------
def test_provider_reports_the_encoder_runtime(tmp_path, monkeypatch):
    from lib.tools.provider import ToolProvider
    from lib.tools.registry import bundle_dir

    monkeypatch.setenv("MEDSAM_AGENT_CACHE", str(tmp_path))
    p = ToolProvider("litemedsam", bundle_dir("litemedsam"), {"encoder_runtime": "torch"},
                     models_dir=tmp_path / "models")
    assert p.weights_info()["encoder_runtime"] == "torch" and p.weights_info()["encoder_state"] == "not loaded"
    auto = ToolProvider("litemedsam", bundle_dir("litemedsam"), models_dir=tmp_path / "models")
    assert auto.weights_info()["encoder_runtime"] == resolve_runtime("auto")
    assert auto.weights_info()["encoder_requested"] == "auto"
    p.tool  # noqa: B018
    info = p.weights_info()
    assert (info["weights"], info["encoder_runtime"], info["encoder_state"]) == ("released", "torch", "ready")

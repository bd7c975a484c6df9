"""Frozen image encoders at inference-runtime speed: export once, cache on disk, run in ONNX Runtime / OpenVINO.

A promptable segmenter spends almost all of a fresh slice's time in its image encoder (LiteMedSAM on
2 CPU cores: ~1.3 s in torch eager vs ~60 ms per decoder call), and the encoder never changes while the
app runs (interactive fine-tuning trains the prompt encoder and mask decoder only). ``EncoderRunner``
wraps one encoder ``torch.nn.Module`` and runs it in the requested runtime:

- ``torch``: the module itself (eager), on the tool's device;
- ``onnxruntime``: ``torch.onnx.export`` once, then an ONNX Runtime CPU session;
- ``openvino``: the same ONNX export converted to OpenVINO IR (``openvino.convert_model``), compiled for
  CPU at f32 (OpenVINO would otherwise pick bf16 on CPUs with AVX512-BF16/AMX, which moves the
  embedding by ~0.03 and is not what parity was measured for);
- ``auto``: the fastest installed runtime in ``AUTO_ORDER`` (measured side by side,
  ``docs/results/encoder_runtime.md``), torch when none is installed or the device is CUDA.

The exported model is cached under ``cache_root()`` (``$MEDSAM_AGENT_CACHE/encoders`` or
``~/.cache/medsam-agent/encoders``), one folder per key = model name + weights SHA-256 + runtime + input
size + export format version, so new weights or another input size export anew and nothing is ever
downloaded. A folder is written complete under a temporary name and renamed into place (a directory
rename is atomic): two processes exporting at once both produce a complete folder and the first rename
wins; an OS file lock beside it makes the second wait and reuse the first one's work instead.

Exporting takes seconds (LiteMedSAM: ~6 s to ONNX, ~4 s more to OpenVINO IR on 2 cores), so by default it
runs in a background thread started on first use, and the encoder keeps answering in torch until the
exported model is loaded; ``block=True`` (training, benchmarks, tests) exports in the caller instead. A process
that ends while exporting waits for the export to finish (the thread is not a daemon), so it neither aborts
inside the exporter nor leaves a half-written folder (a killed process's temporary folder is removed by the
next export after an hour). A runtime that cannot be imported, exported or loaded leaves the runner on torch
with a logged warning that names the reason (also in ``info()``, which ``/info`` shows).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it: ``lib.configs.app_conf`` validates the
# ``encoder_runtime`` conf key against ``RUNTIMES`` and must stay light to import

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
#: exported runtimes ``auto`` prefers, fastest first (LiteMedSAM encoder, 256², 2 cores:
#: docs/results/encoder_runtime.md)
AUTO_ORDER = ("openvino", "onnxruntime")
#: bump when the export recipe changes (opset, converter options): old cache folders are then ignored
FORMAT_VERSION = 1
ONNX_OPSET = 17
#: temporary export folders older than this are left-overs of a killed process and are removed
STALE_TMP_S = 3600.0


def cache_root() -> Path:
    """Folder of exported encoders: ``$MEDSAM_AGENT_CACHE/encoders``, default ``~/.cache/medsam-agent/encoders``."""
    root = os.environ.get("MEDSAM_AGENT_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "medsam-agent") / "encoders"


def installed_runtimes() -> tuple[str, ...]:
    """The exported runtimes whose Python package is importable, in ``AUTO_ORDER``."""
    need = {"openvino": ("openvino", "onnx"), "onnxruntime": ("onnxruntime", "onnx")}
    return tuple(r for r in AUTO_ORDER if all(importlib.util.find_spec(m) is not None for m in need[r]))


def resolve_runtime(requested: str | None, device: torch.device | str = "cpu") -> str:
    """The runtime ``requested`` means on ``device``: ``auto`` becomes the first installed of ``AUTO_ORDER``
    (torch when none is, or when the device is CUDA: the exported runtimes run on CPU only).

    Raises:
        ValueError: ``requested`` is not one of ``RUNTIMES``.
    """
    requested = (requested or "auto").strip().lower()
    if requested not in RUNTIMES:
        raise ValueError(f"encoder_runtime {requested!r}: choose one of {', '.join(RUNTIMES)}")
    if requested != "auto":
        return requested
    if not str(device).startswith("cpu"):
        return "torch"
    installed = installed_runtimes()
    return installed[0] if installed else "torch"


def module_sha256(module: torch.nn.Module) -> str:
    """SHA-256 (hex) of a module's state dict (names, dtypes, shapes and bytes, in key order): identifies
    weights that do not come from one checkpoint file (random init in tests, a delta applied on top)."""
    import torch

    digest = hashlib.sha256()
    for k, v in module.state_dict().items():
        t = v.detach().cpu().contiguous()
        digest.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def export_key(name: str, weights_sha256: str, runtime: str, input_size: Sequence[int]) -> str:
    """Cache folder name: ``<name>-<sha256[:16]>-<runtime>-<H>x<W>-v<FORMAT_VERSION>``."""
    size = "x".join(str(int(s)) for s in input_size)
    return f"{name}-{weights_sha256[:16]}-{runtime}-{size}-v{FORMAT_VERSION}"


# -- loaded models -----------------------------------------------------------------------------------
class _OrtModel:
    """An ONNX Runtime CPU session; ``__call__`` is thread-safe (``InferenceSession.run`` is)."""

    def __init__(self, folder: Path, threads: int) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting after a run: on a shared machine the spinning threads take the cores the torch
        # decoder (which runs right after the encoder) and other processes need
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(folder / "encoder.onnx"), so, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input: x})


class _OvModel:
    """An OpenVINO model compiled for CPU at f32; one infer request per calling thread."""

    def __init__(self, folder: Path, threads: int) -> None:
        import openvino as ov

        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
            # f32 as exported: the bf16 default on AVX512-BF16/AMX CPUs changes the embedding (see module doc)
            "INFERENCE_PRECISION_HINT": "f32",
            # do not pin threads to cores: on a shared machine the pinned cores may be the busy ones
            "ENABLE_CPU_PINNING": False,
        }
        self.compiled = ov.Core().compile_model(str(folder / "encoder.xml"), "CPU", config)
        self._local = threading.local()

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        req.infer({0: x})
        # copies: the request's output buffers are reused by its next inference
        return [np.array(req.get_output_tensor(i).data) for i in range(len(self.compiled.outputs))]


_LOADERS = {"onnxruntime": _OrtModel, "openvino": _OvModel}


# -- export --------------------------------------------------------------------------------------------
def _export_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, n_outputs: int) -> None:
    import torch

    # the TorchScript exporter (dynamo=False): the dynamo exporter needs onnxscript and gives the same graph.
    # Its tracer/constant-folding warnings are about the traced code, not for the person running the app.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=["image"],
                          output_names=[f"out{i}" for i in range(n_outputs)], opset_version=ONNX_OPSET, dynamo=False)


def _export(module: torch.nn.Module, example: torch.Tensor, runtime: str, folder: Path, n_outputs: int,
            onnx_source: Path | None = None) -> None:
    """Write ``runtime``'s model files into ``folder`` (the temporary folder; renamed by the caller).

    ``onnx_source``: an ONNX export of the same module and input size (the onnxruntime cache entry), which
    OpenVINO converts instead of exporting again.
    """
    onnx_path = folder / "encoder.onnx"
    if runtime == "openvino" and onnx_source is not None and onnx_source.is_file():
        onnx_path = onnx_source
    else:
        _export_onnx(module, example, onnx_path, n_outputs)
    if runtime == "openvino":
        import openvino as ov

        # converting the ONNX file is ~5x faster than openvino.convert_model(torch module) and gives the same
        # graph; f32 weights (save_model would compress them to f16 by default)
        ov.save_model(ov.convert_model(str(onnx_path)), str(folder / "encoder.xml"), compress_to_fp16=False)
        if onnx_path.parent == folder:
            onnx_path.unlink()


def _remove_stale_tmp(root: Path) -> None:
    now = time.time()
    for p in root.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive OS lock on ``path`` (released when the process dies); a no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the atomic rename alone keeps the cache consistent
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_exported(module: torch.nn.Module, example: torch.Tensor, runtime: str, key: str, meta: dict[str, Any],
                    root: Path | None = None, onnx_source: Path | None = None) -> Path:
    """The cache folder of ``key``, exporting ``module`` for ``runtime`` first when it is not there.

    Args:
        module: the encoder in eval mode (a deep copy is exported, so concurrent torch inference on
            ``module`` is unaffected).
        example: (1, 3, H, W) float32 input of the size the model is exported for (static shape).
        runtime: "onnxruntime" or "openvino".
        key: ``export_key(...)``.
        meta: JSON-serialisable provenance written to ``meta.json`` (must include ``weights_sha256``).
        root: cache folder (default ``cache_root()``).
        onnx_source: an existing ONNX export of the same weights and size for OpenVINO to convert.

    Returns:
        The folder holding ``encoder.onnx`` (onnxruntime) or ``encoder.xml`` + ``encoder.bin`` (openvino)
        and ``meta.json``.
    """
    import torch

    root = Path(root or cache_root())
    folder = root / key
    if (folder / "meta.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{key}.lock"):
        if (folder / "meta.json").is_file():  # another process exported it while this one waited
            return folder
        _remove_stale_tmp(root)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}.", suffix=".tmp"))
        try:
            t0 = time.perf_counter()
            frozen = copy.deepcopy(module).cpu().eval()
            with torch.no_grad():
                n_outputs = len(_as_tuple(frozen(example)))
            _export(frozen, example.cpu(), runtime, tmp, n_outputs, onnx_source)
            info = {**meta, "runtime": runtime, "key": key, "format_version": FORMAT_VERSION,
                    "input_shape": list(example.shape), "n_outputs": n_outputs, "torch": torch.__version__,
                    "export_s": round(time.perf_counter() - t0, 1), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            (tmp / "meta.json").write_text(json.dumps(info, indent=1) + "\n")
            os.chmod(tmp, 0o755)  # mkdtemp makes 0700; another user's server must read the cache
            try:
                os.rename(tmp, folder)
            except OSError:
                # a complete folder is already there (exported by a process that held no lock): keep it
                if not (folder / "meta.json").is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


# -- the runner ----------------------------------------------------------------------------------------
class EncoderRunner:
    """Runs a frozen image encoder in torch, ONNX Runtime or OpenVINO (see the module doc).

    Args:
        module: the encoder, ``(1, 3, H, W) float32 -> tensor or tuple of tensors``; eval mode, never trained
            while this runner exists (the exported copy would go stale).
        name: model name in the cache key (e.g. "litemedsam").
        input_size: (H, W) the model is exported for; every call must use it.
        runtime: one of ``RUNTIMES``.
        threads: intra-op threads of the exported runtime (None/0: ``torch.get_num_threads()``, i.e. the same
            as the torch encoder uses).
        device: the torch device of ``module``; outputs are returned there.
        weights_sha256: SHA-256 identifying the encoder weights (e.g. the checkpoint file's); None hashes the
            module's state dict.
        cache_dir: cache folder (default ``cache_root()``, read when the export starts).
        block: export in the first caller's thread (True) or in a background thread while torch answers (False).

    Attributes:
        requested: the runtime asked for; ``target``: what it resolved to; ``active``: what answers now.
        reason: why ``active`` is torch when ``target`` is not (fallback), else "".
    """

    def __init__(self, module: torch.nn.Module, *, name: str, input_size: Sequence[int], runtime: str = "auto",
                 threads: int | None = None, device: torch.device | str = "cpu", weights_sha256: str | None = None,
                 cache_dir: str | Path | None = None, block: bool = False) -> None:
        import torch

        self.module = module
        self.name = name
        self.input_size = tuple(int(s) for s in input_size)
        self.device = torch.device(device)
        self.requested = (runtime or "auto").strip().lower()
        self.target = resolve_runtime(self.requested, self.device)
        self.threads = int(threads) if threads else torch.get_num_threads()
        self._weights_sha = weights_sha256
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.block = bool(block)
        self.active = "torch"
        self.reason = ""
        self.folder: Path | None = None
        self._model = None
        self._state = "idle" if self.target != "torch" else "ready"
        self._lock = threading.Lock()
        self._done = threading.Event()
        if self.target == "torch":
            self._done.set()
        elif self.device.type != "cpu":
            self._fallback(f"{self.target} runs on CPU only and the tool's device is {self.device}")

    @property
    def weights_sha256(self) -> str:
        if self._weights_sha is None:
            self._weights_sha = module_sha256(self.module)
        return self._weights_sha

    @property
    def key(self) -> str:
        return export_key(self.name, self.weights_sha256, self.target, self.input_size)

    def info(self) -> dict[str, Any]:
        """``{"encoder_runtime": active runtime, "encoder_state": ready | exporting | idle | fallback, ...}``
        plus the requested runtime, and the fallback reason when there is one."""
        out = {"encoder_runtime": self.active, "encoder_state": self._state, "encoder_requested": self.requested}
        if self.reason:
            out["encoder_fallback_reason"] = self.reason
        if self._state in ("exporting", "idle"):
            out["encoder_target"] = self.target
        return out

    def _fallback(self, reason: str) -> None:
        self.reason = reason
        self.active = "torch"
        self._state = "fallback"
        self._done.set()
        logger.warning("%s image encoder: %s; using torch", self.name, reason)

    # -- preparation ----------------------------------------------------------------------------------
    def prepare(self, block: bool | None = None) -> None:
        """Load the exported model from the cache, or export it (in the background unless ``block``).

        Idempotent and cheap after the first call. Loading a cached model is done in the caller (tenths of
        a second); only a missing export goes to the background thread.
        """
        block = self.block if block is None else block
        export_here = start_thread = False
        with self._lock:
            if self._state == "idle":
                root = Path(self.cache_dir or cache_root())
                if (root / self.key / "meta.json").is_file():
                    self._load(root / self.key)
                    return
                self._state = "exporting"
                export_here, start_thread = block, not block
        if export_here:
            self._export_and_load()
        elif start_thread:
            logger.info("%s image encoder: exporting to %s in the background (first use; torch answers meanwhile)",
                        self.name, self.target)
            # not a daemon: interpreter shutdown waits for the export to finish (a daemon thread frozen inside
            # the exporter's C++ code aborts the process: "terminate called without an active exception")
            threading.Thread(target=self._export_and_load, name=f"export-{self.name}", daemon=False).start()
        elif block:
            self._done.wait()  # another thread is exporting

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the export/load has finished (or fallen back); True when it has."""
        return self._done.wait(timeout)

    def _export_and_load(self) -> None:
        try:
            root = Path(self.cache_dir or cache_root())
            logger.info("%s image encoder: exporting to %s (%s)", self.name, self.target, root / self.key)
            import torch

            t0 = time.perf_counter()
            example = torch.zeros(1, 3, *self.input_size)
            meta = {"name": self.name, "weights_sha256": self.weights_sha256}
            # OpenVINO converts the onnxruntime entry's ONNX file when there is one (saves the torch export)
            onnx = root / export_key(self.name, self.weights_sha256, "onnxruntime", self.input_size) / "encoder.onnx"
            folder = ensure_exported(self.module, example, self.target, self.key, meta, root, onnx_source=onnx)
            logger.info("%s image encoder: %s export ready in %.1fs", self.name, self.target, time.perf_counter() - t0)
            with self._lock:
                self._load(folder)
        except Exception as e:  # noqa: BLE001 — any failure leaves torch answering, with the reason logged
            with self._lock:
                self._fallback(f"{self.target} export failed ({type(e).__name__}: {e})")

    def _load(self, folder: Path) -> None:
        """Load (caller holds ``_lock``); a broken cached model falls back to torch with the reason."""
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta.get("weights_sha256") != self.weights_sha256:
                raise ValueError(f"cached export {folder.name} is for other weights")
            model = _LOADERS[self.target](folder, self.threads)
        except Exception as e:  # noqa: BLE001 — ImportError, a corrupt file, an unsupported CPU ...
            self._fallback(f"cannot load the {self.target} encoder from {folder} ({type(e).__name__}: {e})")
            return
        self._model, self.folder, self.active, self._state = model, folder, self.target, "ready"
        self._done.set()
        logger.info("%s image encoder now runs in %s (%d threads, %s)", self.name, self.target, self.threads, folder)

    # -- inference ------------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Encode a batch.

        Args:
            x: (1, 3, H, W) float32, (H, W) = ``input_size``, on any device.

        Returns:
            The encoder's outputs as a tuple of float32 tensors on ``device`` (LiteMedSAM: one (1, 256, 64, 64)).
        """
        import torch

        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"{self.name} encoder takes {self.input_size} inputs, got {tuple(x.shape)}")
        if self._state == "idle":
            self.prepare()
        model = self._model
        if model is not None:
            outs = model(np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy()))
            return tuple(torch.from_numpy(o).to(self.device) for o in outs)
        with torch.inference_mode():
            return _as_tuple(self.module(x.to(self.device)))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lib.tools.encoder_runtime [--runtime auto] [--backend litemedsam]``: export (or find) the
    backend's image encoder in the cache now and print where it is, so a deployment or CI run pays the export
    before the first request instead of during it. Exit status 1 when it falls back to torch."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--runtime", default="auto", choices=RUNTIMES)
    ap.add_argument("--backend", default="litemedsam", help="a bundle under bundles/ (sam2/medsam2 need a checkpoint)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from lib.tools.bundle import load_tool
    from lib.tools.registry import bundle_dir

    tool = load_tool(bundle_dir(args.backend), encoder_runtime=args.runtime, **{"tool#block_export": True})
    tool.prepare_encoder()
    info = tool.encoder_info()
    print(json.dumps({**info, "folder": str(tool.encoder.folder) if tool.encoder.folder else None}))
    return 0 if info["encoder_state"] == "ready" else 1


if __name__ == "__main__":
    raise SystemExit(main())

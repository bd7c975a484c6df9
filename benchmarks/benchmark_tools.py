"""Benchmark the segmentation tools on this CPU and write the figures into BENCHMARKS.md.

Measures, side by side in one run:
  1. encoder and decoder time per backend and input size (LiteMedSAM with its real weights; SAM 2.1
     hiera-tiny / MedSAM2 with their checkpoint when given, else random weights — latency does not
     depend on the weight values);
  2. LiteMedSAM encoder variants (torch eager, channels-last, 1 vs 2 threads, ONNX Runtime when
     installed), interleaved round by round so machine noise hits every variant alike;
  3. through the real MONAI Label server: first request on a fresh slice vs repeated requests on the
     same slice (the session cache), as the client sees it.

    python benchmarks/benchmark_tools.py [--repeats 5] [--skip-server] [--out BENCHMARKS.md]

With ``--encoder-runtimes`` it measures the image encoder in each runtime of ``lib.tools.encoder_runtime``
instead and writes ``docs/results/encoder_runtime.md``, all side by side in one run:

  a. LiteMedSAM encoder at 256²: torch eager vs ONNX Runtime vs OpenVINO (f32, the served paths), plus two
     benchmark-only variants, ONNX Runtime int8 (dynamic quantization of the MatMuls) and OpenVINO bf16;
     export time of each runtime (cold cache);
  b. parity: masks (box, box + click) of every runtime vs torch's (Dice) and vs the ground truth, on the
     phantom studies and on the real CT/MR samples when they are cached (``scripts/fetch_real_samples.py``);
  c. SAM 2.1 hiera-tiny (random weights) encoder at 512 / 1024: torch vs the exported runtimes, parity;
  d. through the real server: first request on a fresh slice with ``--conf encoder_runtime torch`` vs the
     default (``auto``), two servers side by side, requests alternating.

    source scripts/setup_env.sh   # sets the glibc malloc tuning the app runs under
    python benchmarks/benchmark_tools.py --encoder-runtimes [--repeats 7] [--sam2-sizes 512,1024]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SECTION = "## Tool latency: encoder, decoder and session cache"
SIZES = [(128, 128), (256, 256), (512, 512), (300, 517)]


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, lazy init)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def synthetic_slice(h: int, w: int) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int]]:
    yy, xx = np.mgrid[:h, :w]
    cy, cx, ry, rx = h * 0.5, w * 0.55, h * 0.2, w * 0.18
    disk = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    img = np.where(disk, 0.7, 0.25).astype(np.float32)
    img += np.random.default_rng(0).normal(0, 0.03, img.shape).astype(np.float32)
    box = (int(cx - rx), int(cy - ry), int(cx + rx), int(cy + ry))
    return np.clip(img, 0, 1), box, (int(cx), int(cy))


def load_backends(args) -> dict:
    from lib.tools.litemedsam import LiteMedSAMTool

    # torch eager: this section documents the torch baseline; --encoder-runtimes compares the runtimes
    tools = {"litemedsam": (LiteMedSAMTool(encoder_runtime="torch"), "released weights")}
    try:
        from lib.tools.sam2_tool import Sam2Tool
    except ImportError as e:  # pragma: no cover - sam2 not installed
        print(f"[bench] sam2 backends skipped: {e}")
        return tools
    for name, ckpt, size in (("sam2", args.sam2_checkpoint, 1024), ("medsam2", args.medsam2_checkpoint, 512)):
        tools[name] = (
            Sam2Tool(name=name, checkpoint=ckpt or None, image_size=size, allow_random_weights=not ckpt,
                     encoder_runtime="torch"),
            f"checkpoint {Path(ckpt).name}" if ckpt else f"hiera-tiny @{size}, random weights",
        )
    return tools


def bench_backends(args) -> list[dict]:
    rows = []
    for name, (tool, weights) in load_backends(args).items():
        for h, w in SIZES:
            img, box, (cx, cy) = synthetic_slice(h, w)
            enc = median_ms(lambda: tool.start(img), args.repeats)  # noqa: B023
            sess = tool.start(img)
            first = sess.predict(box=box)
            dec_box = median_ms(lambda: sess.predict(box=box), args.repeats)  # noqa: B023
            dec_all = median_ms(lambda: sess.predict(box=box, points=[(cx, cy)], labels=[1],  # noqa: B023
                                                     mask_logits=first.logits), args.repeats)  # noqa: B023
            rows.append({"backend": name, "weights": weights, "size": f"{h}x{w}", "encoder_ms": enc,
                         "decoder_box_ms": dec_box, "decoder_box_click_logits_ms": dec_all,
                         "embedding_MiB": sess.nbytes / 2**20})
            print(f"[bench] {name:10s} {h}x{w}: encoder {enc:7.1f} ms, decoder {dec_box:6.1f} / {dec_all:6.1f} ms")
    return rows


def encoder_variants(args) -> list[dict]:
    """LiteMedSAM encoder variants, interleaved round-robin so drifting load affects all alike."""
    from lib.tools.litemedsam import LiteMedSAMTool

    net = LiteMedSAMTool(encoder_runtime="torch").net
    enc = net.image_encoder.eval()
    x = torch.rand(1, 3, 256, 256)
    variants = {}

    def eager(threads):
        def run():
            prev = torch.get_num_threads()
            torch.set_num_threads(threads)
            with torch.inference_mode():
                enc(x)
            torch.set_num_threads(prev)
        return run

    variants["torch eager, 2 threads (default)"] = eager(2)
    variants["torch eager, 1 thread"] = eager(1)
    import copy

    enc_cl = copy.deepcopy(enc).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def channels_last():
        with torch.inference_mode():
            enc_cl(x_cl)
    variants["torch eager, channels-last"] = channels_last
    try:
        import onnxruntime as ort

        onnx_path = Path(tempfile.mkdtemp()) / "encoder.onnx"
        torch.onnx.export(enc, (x,), str(onnx_path), input_names=["image"], output_names=["embedding"],
                          opset_version=17, dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        variants["ONNX Runtime (CPU EP, 2 threads)"] = lambda: sess.run(None, {"image": xn})
    except Exception as e:  # noqa: BLE001 - optional path; report why it is absent
        print(f"[bench] ONNX Runtime variant skipped: {type(e).__name__}: {e}")
    times = {k: [] for k in variants}
    for f in variants.values():
        f()
    for _ in range(args.repeats):
        for k, f in variants.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) * 1e3)
    base = statistics.median(times["torch eager, 2 threads (default)"])
    rows = [{"variant": k, "median_ms": statistics.median(v), "speedup_vs_default": base / statistics.median(v)}
            for k, v in times.items()]
    for r in rows:
        print(f"[bench] encoder {r['variant']:36s} {r['median_ms']:7.1f} ms  x{r['speedup_vs_default']:.2f}")
    return rows


def server_cache(args) -> dict:
    from monailabel.client import MONAILabelClient
    from serverproc import Server

    from lib.data.io import load_image

    tmp = Path(tempfile.mkdtemp())
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_sample_studies.py"), "--out", str(tmp / "sd"),
                    "--n-ct", "2", "--n-mr", "1", "--n-2d", "1"], check=True, capture_output=True)
    studies = tmp / "sd" / "studies"
    image_id = "ct_000"
    lab = load_image(studies / "labels" / "final" / "ct_000.nii.gz").array
    firsts, repeats = [], []
    with Server(studies) as srv:
        client = MONAILabelClient(srv.url, tmpdir=str(tmp))
        slices = [k for k in range(lab.shape[0]) if (lab[k] == 1).sum() > 50][: args.server_slices]
        client.infer("litemedsam", image_id, {"foreground": [[80, 80, slices[0]]]})  # load the model first
        for k in slices[1:]:
            jj, ii = np.nonzero(lab[k] == 1)
            roi = [int(ii.min()), int(ii.max()), int(jj.min()), int(jj.max()), k, k]
            t0 = time.perf_counter()
            _, r0 = client.infer("litemedsam", image_id, {"roi": roi, "slice": k})
            firsts.append((time.perf_counter() - t0) * 1e3)
            assert not r0["latencies"]["embedding_cached"]
            for n in range(args.repeats):
                click = [[int(ii[n * 7 % len(ii)]), int(jj[n * 7 % len(jj)]), k]]
                t0 = time.perf_counter()
                _, r = client.infer("litemedsam", image_id, {"roi": roi, "foreground": click, "slice": k})
                repeats.append((time.perf_counter() - t0) * 1e3)
                assert r["latencies"]["embedding_cached"]
    shutil.rmtree(tmp, ignore_errors=True)
    first, rep = statistics.median(firsts), statistics.median(repeats)
    print(f"[bench] server: first request {first:.0f} ms, repeated {rep:.0f} ms, ratio {first / rep:.1f}x")
    return {"first_ms": first, "repeat_ms": rep, "ratio": first / rep, "n_slices": len(firsts),
            "n_repeats": len(repeats)}


def render(backends, variants, server) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [SECTION, "",
             f"Measured by `python benchmarks/benchmark_tools.py` on {time.strftime('%Y-%m-%d')}, "
             f"{torch.get_num_threads()} torch threads, {cpu}, torch {torch.__version__}. Medians; the machine is a "
             "shared 2-core VM, so absolute numbers vary run to run (ratios are measured side by side).", "",
             "### Encoder and decoder per backend and input size", "",
             "| backend | weights | slice (H×W) | encoder ms | decoder ms (box) | decoder ms (box+click+logits) "
             "| embedding MiB |", "|---|---|---|---|---|---|---|"]
    for r in backends:
        lines.append(f"| {r['backend']} | {r['weights']} | {r['size']} | {r['encoder_ms']:.0f} | "
                     f"{r['decoder_box_ms']:.1f} | {r['decoder_box_click_logits_ms']:.1f} | {r['embedding_MiB']:.1f} |")
    lines += ["", "### LiteMedSAM encoder variants (256², interleaved)", "",
              "| variant | median ms | speed-up vs default |", "|---|---|---|"]
    for r in variants:
        lines.append(f"| {r['variant']} | {r['median_ms']:.0f} | {r['speedup_vs_default']:.2f}× |")
    if server:
        lines += ["", "### Through the server: first vs repeated request on the same slice", "",
                  "| first request (encode + decode) ms | repeated request (cached embedding) ms | ratio |",
                  "|---|---|---|",
                  f"| {server['first_ms']:.0f} | {server['repeat_ms']:.0f} | {server['ratio']:.1f}× |", "",
                  f"Client-side wall time of `MONAILabelClient.infer` (HTTP, NIfTI load, label write included), "
                  f"{server['n_slices']} fresh slices, {server['n_repeats']} repeated requests. Target ≥ 10×."]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.S)
    new = pattern.sub(lambda _: text.rstrip("\n"), old) if SECTION in old else old.rstrip("\n") + "\n\n" + text
    path.write_text(new if new.endswith("\n") else new + "\n")


# ---------------------------------------------------------------------------------------------------------
# the image encoder in ONNX Runtime / OpenVINO (--encoder-runtimes)
# ---------------------------------------------------------------------------------------------------------
RESULTS = ROOT / "docs" / "results" / "encoder_runtime.md"
INT8 = "onnxruntime int8 (benchmark only)"
BF16 = "openvino bf16 (benchmark only)"


class _Variant:
    """A benchmark-only encoder with ``EncoderRunner``'s call contract: (1, 3, S, S) tensor -> tuple of tensors."""

    def __init__(self, run) -> None:
        self.run = run

    def __call__(self, x):
        return tuple(torch.from_numpy(np.asarray(o)) for o in self.run(np.ascontiguousarray(x.numpy())))


def _int8_variant(onnx_path: Path, threads: int):
    """ONNX Runtime on a dynamically quantised copy (int8 weights, MatMuls only: quantising the convolutions too
    made it slower and less exact here)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    q = onnx_path.with_name("encoder.int8.onnx")
    quantize_dynamic(str(onnx_path), str(q), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(q), so, providers=["CPUExecutionProvider"])
    return _Variant(lambda x: sess.run(None, {sess.get_inputs()[0].name: x}))


def _bf16_variant(xml: Path, threads: int):
    """OpenVINO at its CPU default precision (bf16 on CPUs with AVX512-BF16 / AMX)."""
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": False}
    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    req = compiled.create_infer_request()

    def run(x):
        req.infer({0: x})
        return [np.array(req.get_output_tensor(i).data) for i in range(len(compiled.outputs))]
    return _Variant(run), precision


def lite_runtimes(cache: Path, threads: int) -> tuple[dict, dict]:
    """{variant: LiteMedSAMTool} (torch, each installed exported runtime, int8 / bf16 variants) and the export
    times of the cold cache ``cache`` (seconds)."""
    import copy

    from lib.tools.encoder_runtime import installed_runtimes
    from lib.tools.litemedsam import LiteMedSAMTool

    tools = {"torch": LiteMedSAMTool(encoder_runtime="torch", threads=threads)}
    export_s = {}
    # onnxruntime first: its ONNX file is what OpenVINO converts (the app does the same when both are used)
    for rt in sorted(installed_runtimes(), key=lambda r: r != "onnxruntime"):
        tool = LiteMedSAMTool(encoder_runtime=rt, threads=threads, block_export=True)
        tool.encoder.cache_dir = cache
        t0 = time.perf_counter()
        tool.prepare_encoder()
        export_s[rt] = time.perf_counter() - t0
        if tool.encoder.active != rt:
            print(f"[bench] {rt} unavailable: {tool.encoder.reason}")
            continue
        tools[rt] = tool
        print(f"[bench] {rt}: exported + loaded in {export_s[rt]:.1f} s ({tool.encoder.folder})")
    base = tools["torch"]
    if "onnxruntime" in tools:
        try:
            v = copy.copy(base)
            v.encoder = _int8_variant(tools["onnxruntime"].encoder.folder / "encoder.onnx", threads)
            tools[INT8] = v
        except Exception as e:  # noqa: BLE001 — benchmark-only variant: report why it is absent
            print(f"[bench] int8 variant skipped: {type(e).__name__}: {e}")
    if "openvino" in tools:
        v = copy.copy(base)
        v.encoder, precision = _bf16_variant(tools["openvino"].encoder.folder / "encoder.xml", threads)
        if "bf16" in precision.lower() or "bfloat16" in precision.lower():
            tools[BF16] = v
        else:
            print(f"[bench] OpenVINO's default CPU precision here is {precision}, not bf16: variant skipped")
    return tools, export_s


def interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Times (ms) of each callable, round-robin: one warm-up each, then ``repeats`` rounds in turn."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return times


def runtime_speed(tools: dict, repeats: int) -> list[dict]:
    """Encoder alone on a (1, 3, 256, 256) input, and ``tool.start`` (preprocess + encoder) on a 512² slice."""
    x = torch.rand(1, 3, 256, 256)
    img, _, _ = synthetic_slice(512, 512)
    fns = {}
    for k, t in tools.items():
        fns[("encoder", k)] = lambda t=t: t.encoder(x)
        fns[("start", k)] = lambda t=t: t.start(img)
    times = interleaved(fns, repeats)
    rows = []
    for k in tools:
        enc, start = statistics.median(times[("encoder", k)]), statistics.median(times[("start", k)])
        rows.append({"variant": k, "encoder_ms": enc, "start_512_ms": start,
                     "encoder_ms_all": [round(v, 1) for v in times[("encoder", k)]]})
    base = rows[0]
    for r in rows:
        r["speedup"] = base["encoder_ms"] / r["encoder_ms"]
        r["start_speedup"] = base["start_512_ms"] / r["start_512_ms"]
        print(f"[bench] encoder {r['variant']:36s} {r['encoder_ms']:7.1f} ms x{r['speedup']:.2f}   "
              f"start(512²) {r['start_512_ms']:7.1f} ms x{r['start_speedup']:.2f}")
    return rows


def parity_studies(tmp: Path) -> list[tuple[str, str, Path, Path]]:
    """(dataset, study, image, label) of the phantom studies, and of the real CT/MR when cached."""
    cmd = [sys.executable, str(ROOT / "scripts" / "make_sample_studies.py"), "--out", str(tmp / "sd"),
           "--n-ct", "2", "--n-mr", "1", "--n-2d", "0", "--real"]
    subprocess.run(cmd, check=True, capture_output=True)
    studies = tmp / "sd" / "studies"
    out = []
    for img in sorted([*studies.glob("*.nii.gz"), *studies.glob("*.nrrd")]):
        name = img.name.split(".")[0]
        lab = next((p for p in (studies / "labels" / "final" / img.name, tmp / "sd" / "groundtruth" / img.name)
                    if p.is_file()), None)
        if lab is not None:
            out.append(("real" if name.startswith("real") else "phantom", name, img, lab))
    local_real = ROOT / "sample-data" / "real"
    if not any(d == "real" for d, *_ in out) and local_real.is_dir():
        spec = json.loads((local_real / "dataset.json").read_text())
        for item in spec.get("training", []) + spec.get("test", []):
            if isinstance(item, dict) and item.get("label"):
                out.append(("real", Path(item["image"]).name.split(".")[0], local_real / item["image"],
                            local_real / item["label"]))
    return out


def runtime_parity(tools: dict, tmp: Path, slices_per_label: int) -> tuple[list[dict], list[str]]:
    """Masks of every variant vs torch's and vs the ground truth, per dataset (phantom / real).

    For each study and label, the ``slices_per_label`` axial slices with the largest area of that label; prompts:
    the label's tight box, and the box + a positive click at the label's interior-most pixel."""
    from scipy import ndimage

    from lib.data.io import load_image
    from lib.data.slices import windowing_for

    def dice(a, b):
        s = int(a.sum()) + int(b.sum())
        return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s

    acc: dict[tuple[str, str], dict[str, list[float]]] = {}
    studies = parity_studies(tmp)
    for dataset, name, img_path, lab_path in studies:
        modality = "CT" if "ct" in name.lower() else "MR"
        vol, lab = load_image(img_path, modality=modality), load_image(lab_path).array
        win = windowing_for(modality)
        todo: dict[int, list[int]] = {}
        for value in np.unique(lab[lab > 0]):
            areas = (lab == value).reshape(lab.shape[0], -1).sum(1)
            for k in np.argsort(areas)[::-1][:slices_per_label]:
                if areas[k] >= 30:
                    todo.setdefault(int(k), []).append(int(value))
        for k, values in sorted(todo.items()):
            pixels = win(vol.array[k].astype(np.float32))
            sessions = {v: t.start(pixels) for v, t in tools.items()}
            for value in values:
                gt = lab[k] == value
                ys, xs = np.nonzero(gt)
                cy, cx = np.unravel_index(np.argmax(ndimage.distance_transform_edt(gt)), gt.shape)
                box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
                for prompt in ({"box": box}, {"box": box, "points": [(int(cx), int(cy))], "labels": [1]}):
                    ref = sessions["torch"].predict(**prompt).mask
                    ref_gt = dice(ref, gt)
                    for v, sess in sessions.items():
                        m = sess.predict(**prompt).mask
                        a = acc.setdefault((dataset, v), {"vs_torch": [], "vs_gt": [], "delta_gt": []})
                        a["vs_torch"].append(dice(m, ref))
                        a["vs_gt"].append(dice(m, gt))
                        a["delta_gt"].append(abs(dice(m, gt) - ref_gt))
        print(f"[bench] parity: {dataset} {name}: {sum(len(v) for v in todo.values())} (slice, label) pairs")
    rows = []
    for (dataset, v), a in acc.items():
        rows.append({"dataset": dataset, "variant": v, "n": len(a["vs_torch"]),
                     "min_dice_vs_torch": min(a["vs_torch"]), "mean_dice_vs_torch": float(np.mean(a["vs_torch"])),
                     "mean_dice_vs_gt": float(np.mean(a["vs_gt"])), "max_abs_delta_dice_gt": max(a["delta_gt"])})
        r = rows[-1]
        print(f"[bench] parity {dataset:8s} {v:36s} n={r['n']:4d} min Dice vs torch {r['min_dice_vs_torch']:.4f} "
              f"mean vs GT {r['mean_dice_vs_gt']:.4f} max |dDice| {r['max_abs_delta_dice_gt']:.4f}")
    return rows, [f"{d}: {n}" for d, n, *_ in studies]


def embedding_parity(tools: dict) -> list[dict]:
    """Max |embedding - torch's| on a random input and on a synthetic slice, per variant."""
    img, _, _ = synthetic_slice(300, 517)
    inputs = {"random": torch.rand(1, 3, 256, 256), "slice": tools["torch"].preprocess(img)[0]}
    rows = []
    for v, t in tools.items():
        errs = {}
        for name, x in inputs.items():
            ref = tools["torch"].encoder(x)[0]
            errs[name] = float((t.encoder(x)[0] - ref).abs().max())
        rows.append({"variant": v, **{f"max_abs_{k}": e for k, e in errs.items()},
                     "embedding_std": float(tools["torch"].encoder(inputs["slice"])[0].std())})
    return rows


def sam2_runtimes(sizes: list[int], repeats: int, cache: Path) -> list[dict]:
    """SAM 2.1 hiera-tiny (random weights, seeded: latency and parity do not depend on the values) encoder per
    runtime and input size: export time, median latency interleaved, max |feature - torch's|, mask Dice."""
    from lib.tools.encoder_runtime import installed_runtimes
    from lib.tools.sam2_tool import Sam2Tool

    rows = []
    img, box, (cx, cy) = synthetic_slice(300, 517)
    for size in sizes:
        torch.manual_seed(0)
        tools = {"torch": Sam2Tool("sam2", image_size=size, allow_random_weights=True, encoder_runtime="torch")}
        export_s = {}
        for rt in sorted(installed_runtimes(), key=lambda r: r != "onnxruntime"):
            torch.manual_seed(0)
            t = Sam2Tool("sam2", image_size=size, allow_random_weights=True, encoder_runtime=rt, block_export=True)
            t.encoder.cache_dir = cache
            t0 = time.perf_counter()
            t.prepare_encoder()
            export_s[rt] = time.perf_counter() - t0
            if t.encoder.active == rt:
                tools[rt] = t
            else:
                rows.append({"size": size, "variant": rt, "error": t.encoder.reason})
                print(f"[bench] sam2 @{size} {rt}: {t.encoder.reason}")
        x = torch.randn(1, 3, size, size)
        times = interleaved({k: (lambda t=t, x=x: t.encoder(x)) for k, t in tools.items()}, repeats)
        ref_feats = tools["torch"].encoder(x)
        ref_sess = tools["torch"].start(img)
        prompts = [{"box": box}, {"box": box, "points": [(cx, cy)], "labels": [1]}]
        ref_masks = [ref_sess.predict(**p).mask for p in prompts]
        base = statistics.median(times["torch"])
        for k, t in tools.items():
            feats = t.encoder(x)
            err = max(float((a - b).abs().max()) for a, b in zip(feats, ref_feats))
            sess = t.start(img)
            dices = []
            for p, ref in zip(prompts, ref_masks):
                m = sess.predict(**p).mask
                dices.append(2 * int((m & ref).sum()) / max(1, int(m.sum() + ref.sum())))
            med = statistics.median(times[k])
            rows.append({"size": size, "variant": k, "encoder_ms": med, "speedup": base / med,
                         "export_s": export_s.get(k), "max_abs_feature_diff": err,
                         "min_mask_dice_vs_torch": min(dices)})
            print(f"[bench] sam2 @{size} {k:12s} {med:8.0f} ms x{base / med:.2f}  max|dfeat| {err:.1e} "
                  f"Dice {min(dices):.4f}")
    return rows


def server_runtimes(args, cache: Path) -> dict:
    """First request on fresh slices (and repeated ones) through two real servers side by side, requests
    alternating: ``--conf encoder_runtime torch`` vs the default (``auto``, its export already in ``cache``)."""
    import requests
    from monailabel.client import MONAILabelClient
    from serverproc import Server

    from lib.data.io import load_image

    tmp = Path(tempfile.mkdtemp())
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_sample_studies.py"), "--out", str(tmp / "sd"),
                    "--n-ct", "2", "--n-mr", "1", "--n-2d", "0"], check=True, capture_output=True)
    studies = tmp / "sd" / "studies"
    lab = load_image(studies / "labels" / "final" / "ct_000.nii.gz").array
    slices = [k for k in range(lab.shape[0]) if (lab[k] == 1).sum() > 50][: args.server_slices + 1]
    env = {"MEDSAM_AGENT_CACHE": str(cache.parent)}
    confs = {"torch": {"encoder_runtime": "torch"}, "auto (default)": {}}
    out: dict = {"first_ms": {}, "repeat_ms": {}, "runtime": {}}
    servers = {k: Server(studies, conf={"backends": "litemedsam", **c}, env=env,
                         log=tmp / f"server-{k.split()[0]}.log") for k, c in confs.items()}
    try:
        for srv in servers.values():
            srv.wait()
        clients = {k: MONAILabelClient(srv.url, tmpdir=str(tmp)) for k, srv in servers.items()}
        for k, c in clients.items():  # load the model (and the cached export) before timing
            c.infer("litemedsam", "ct_000", {"foreground": [[80, 80, slices[0]]]})
            for _ in range(120):
                info = requests.get(f"{servers[k].url}/info/", timeout=30).json()["tools"]["litemedsam"]
                if info.get("encoder_state") in ("ready", "fallback"):
                    break
                time.sleep(1)
            out["runtime"][k] = info
            out["first_ms"][k], out["repeat_ms"][k] = [], []
        for k_slice in slices[1:]:
            jj, ii = np.nonzero(lab[k_slice] == 1)
            roi = [int(ii.min()), int(ii.max()), int(jj.min()), int(jj.max()), k_slice, k_slice]
            for k, c in clients.items():
                t0 = time.perf_counter()
                _, r0 = c.infer("litemedsam", "ct_000", {"roi": roi, "slice": k_slice})
                out["first_ms"][k].append((time.perf_counter() - t0) * 1e3)
                assert not r0["latencies"]["embedding_cached"]
            for n in range(3):
                click = [[int(ii[n * 7 % len(ii)]), int(jj[n * 7 % len(jj)]), k_slice]]
                for k, c in clients.items():
                    t0 = time.perf_counter()
                    _, r = c.infer("litemedsam", "ct_000", {"roi": roi, "foreground": click, "slice": k_slice})
                    out["repeat_ms"][k].append((time.perf_counter() - t0) * 1e3)
    finally:
        for srv in servers.values():
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    for k in confs:
        first, rep = statistics.median(out["first_ms"][k]), statistics.median(out["repeat_ms"][k])
        print(f"[bench] server {k:16s} ({out['runtime'][k].get('encoder_runtime')}): first request {first:.0f} ms, "
              f"repeated {rep:.0f} ms")
    return out


def render_runtimes(env: dict, speed, export_s, emb, parity, parity_sources, sam2, server, cmd: str,
                    slices_per_label: int = 2) -> str:
    med = statistics.median
    lines = ["# Image encoder at inference-runtime speed", "",
             f"Measured by `{cmd}` on {time.strftime('%Y-%m-%d')}: {env['cpu']}, {env['cores']} cores shared with "
             f"other jobs (absolute times vary run to run; every ratio below is measured side by side, interleaved "
             f"round by round in one process), torch {torch.__version__}, {env['versions']}, {env['threads']} "
             f"threads for every runtime, `GLIBC_TUNABLES={env['glibc'] or '(unset)'}`. Load average (1 min) at "
             f"the start / end of the run: {env['load_start']:.1f} / {env['load_end']:.1f} on {env['cores']} cores.",
             "",
             "The served paths are torch eager, ONNX Runtime (CPU EP) and OpenVINO (CPU, f32), all through "
             "`lib.tools.encoder_runtime.EncoderRunner`; `auto` picks the first installed of "
             f"{', '.join(env['auto_order'])} (here: **{env['auto']}**). The int8 and bf16 rows are benchmark-only "
             "variants, not offered by the app.", "",
             "## LiteMedSAM encoder (TinyViT, 256² input)", "",
             "| variant | encoder ms (median) | speed-up vs torch | `tool.start` on a 512² slice, ms | speed-up "
             "| export + load s (cold cache) |", "|---|---|---|---|---|---|"]
    for r in speed:
        ex = export_s.get(r["variant"])
        lines.append(f"| {r['variant']} | {r['encoder_ms']:.0f} | {r['speedup']:.2f}× | {r['start_512_ms']:.0f} | "
                     f"{r['start_speedup']:.2f}× | {'' if ex is None else f'{ex:.1f}'} |")
    lines += ["", f"{len(speed[0]['encoder_ms_all'])} interleaved rounds after one warm-up call each. "
              "`tool.start` = windowed slice → letterbox to 256² → encoder.", "",
              "### Embedding parity (max |embedding − torch's|; the embedding's std is "
              f"{emb[0]['embedding_std']:.3f})", "",
              "| variant | random input | synthetic 300×517 slice |", "|---|---|---|"]
    for r in emb[1:]:
        lines.append(f"| {r['variant']} | {r['max_abs_random']:.1e} | {r['max_abs_slice']:.1e} |")
    lines += ["", "### Mask parity on sample slices", "",
              f"Per study and label, the {slices_per_label} axial slice(s) with the largest area of the label; "
              "prompts: the label's "
              "tight box, and the box + a positive click at its interior-most pixel. Dice vs torch = agreement of "
              "the masks with torch eager's; |ΔDice vs GT| = largest change of a mask's Dice with the ground "
              "truth against torch's on the same prompt. Studies: " + "; ".join(parity_sources) + ".", "",
              "| data | variant | masks | min Dice vs torch | mean Dice vs torch | mean Dice vs GT "
              "| max abs ΔDice vs GT |",
              "|---|---|---|---|---|---|---|"]
    for r in sorted(parity, key=lambda r: (r["dataset"], r["variant"] != "torch")):
        lines.append(f"| {r['dataset']} | {r['variant']} | {r['n']} | {r['min_dice_vs_torch']:.4f} | "
                     f"{r['mean_dice_vs_torch']:.4f} | {r['mean_dice_vs_gt']:.4f} | {r['max_abs_delta_dice_gt']:.4f} |")
    if sam2:
        lines += ["", "## SAM 2.1 hiera-tiny image encoder (random weights)", "",
                  "Trunk + FPN neck + the decoder's `conv_s0`/`conv_s1` + `no_mem_embed`, exported as one graph with "
                  "three outputs. Random weights (seeded): latency does not depend on the values, and parity of a "
                  "random network is the stricter check (no saturated logits).", "",
                  "| input | variant | encoder ms | speed-up vs torch | export + load s | max abs feature diff "
                  "| min mask Dice vs torch |", "|---|---|---|---|---|---|---|"]
        for r in sam2:
            if "error" in r:
                lines.append(f"| {r['size']}² | {r['variant']} | failed: {r['error']} | | | | |")
                continue
            ex = "" if r["export_s"] is None else f"{r['export_s']:.0f}"
            lines.append(f"| {r['size']}² | {r['variant']} | {r['encoder_ms']:.0f} | {r['speedup']:.2f}× | {ex} | "
                         f"{r['max_abs_feature_diff']:.1e} | {r['min_mask_dice_vs_torch']:.4f} |")
    if server:
        lines += ["", "## Through the real server (first request on a fresh slice)", "",
                  "Two servers side by side on the same sample studies, requests alternating between them: "
                  "`--conf encoder_runtime torch` vs the default. Client-side wall time of "
                  "`MONAILabelClient.infer` (HTTP, NIfTI load, windowing, encoder, decoder, label write).", "",
                  "| server | encoder runtime | first request ms (median) | repeated request ms (median) |",
                  "|---|---|---|---|"]
        base = med(server["first_ms"]["torch"])
        for k in server["first_ms"]:
            lines.append(f"| `{k}` | {server['runtime'][k].get('encoder_runtime')} | {med(server['first_ms'][k]):.0f} "
                         f"| {med(server['repeat_ms'][k]):.0f} |")
        auto = [k for k in server["first_ms"] if k != "torch"][0]
        lines += ["", f"First-request speed-up of the default over torch: "
                  f"**{base / med(server['first_ms'][auto]):.2f}×** ({len(server['first_ms'][auto])} fresh slices "
                  f"each; all times: torch {[round(v) for v in server['first_ms']['torch']]}, default "
                  f"{[round(v) for v in server['first_ms'][auto]]})."]
    return "\n".join(lines) + "\n"


def encoder_runtimes_report(args) -> None:
    import importlib.metadata as md
    import os

    from lib.tools.encoder_runtime import AUTO_ORDER, resolve_runtime

    threads = torch.get_num_threads()
    glibc = os.environ.get("GLIBC_TUNABLES", "")
    if "mmap_threshold" not in glibc:
        print("[bench] WARNING: GLIBC_TUNABLES malloc tuning is not set; `source scripts/setup_env.sh` first to "
              "measure as the app runs")
    versions = []
    for pkg in ("onnxruntime", "openvino"):
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            versions.append(f"{pkg} not installed")
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    env = {"cpu": cpu, "cores": os.cpu_count(), "threads": threads,
           "load_start": os.getloadavg()[0],
           "glibc": glibc, "versions": ", ".join(versions), "auto_order": AUTO_ORDER, "auto": resolve_runtime("auto")}
    tmp = Path(tempfile.mkdtemp())
    cache = tmp / "cache" / "encoders"
    try:
        tools, export_s = lite_runtimes(cache, threads)
        speed = runtime_speed(tools, args.repeats)
        emb = embedding_parity(tools)
        parity, sources = runtime_parity(tools, tmp, args.slices_per_label)
        del tools
        sam2 = sam2_runtimes([int(s) for s in args.sam2_sizes.split(",") if s], max(3, args.repeats // 2), cache) \
            if args.sam2_sizes else []
        server = None if args.skip_server else server_runtimes(args, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    env["load_end"] = os.getloadavg()[0]
    cmd = "python benchmarks/benchmark_tools.py --encoder-runtimes " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("repeats", args.repeats), ("sam2_sizes", args.sam2_sizes),
                                                     ("slices_per_label", args.slices_per_label),
                                                     ("server_slices", args.server_slices)))
    if args.skip_server:
        cmd += " --skip-server"
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render_runtimes(env, speed, export_s, emb, parity, sources, sam2, server, cmd, args.slices_per_label)
    marker = "\n## Notes\n"
    old = out.read_text() if out.exists() else ""
    if marker in old:  # keep the hand-written notes below the measured tables
        text += old[old.index(marker):]
    out.write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "speed": speed, "export_s": export_s, "embedding": emb,
                                               "parity": parity, "sam2": sam2, "server": server}, indent=1,
                                              default=str))
    print(f"[bench] wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--server-slices", type=int, default=4, help="fresh slices requested through the server")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--sam2-checkpoint", default="")
    ap.add_argument("--medsam2-checkpoint", default="")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--json", default="", help="also write the raw numbers to this JSON file")
    ap.add_argument("--encoder-runtimes", action="store_true",
                    help="compare the image-encoder runtimes and write --results instead")
    ap.add_argument("--results", default=str(RESULTS), help="where --encoder-runtimes writes its Markdown")
    ap.add_argument("--sam2-sizes", default="512,1024", help="SAM 2.1 input sizes for --encoder-runtimes ('' = skip)")
    ap.add_argument("--slices-per-label", type=int, default=2, help="parity slices per study and label")
    args = ap.parse_args()
    if args.encoder_runtimes:
        encoder_runtimes_report(args)
        return
    backends = bench_backends(args)
    variants = encoder_variants(args)
    server = None if args.skip_server else server_cache(args)
    write_section(Path(args.out), render(backends, variants, server))
    if args.json:
        Path(args.json).write_text(json.dumps({"backends": backends, "variants": variants, "server": server}, indent=1))
    print(f"[bench] wrote {args.out}")


if __name__ == "__main__":
    main()

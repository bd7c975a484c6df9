"""Benchmark the segmentation tools on this CPU and write the figures into BENCHMARKS.md.

Measures, side by side in one run:
  1. encoder and decoder time per backend and input size (LiteMedSAM with its real weights; SAM 2.1
     hiera-tiny / MedSAM2 with their checkpoint when given, else random weights — latency does not
     depend on the weight values);
  2. LiteMedSAM encoder variants (torch eager, channels-last, 1 vs 2 threads, ONNX Runtime when
     installed), interleaved round by round so machine noise hits every variant alike;
  3. through the real MONAI Label server: first request on a fresh slice vs repeated requests on the
     same slice (the session cache), as the client sees it.

    python scripts/benchmark_tools.py [--repeats 5] [--skip-server] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
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

SECTION = "## Segmentation tools: encoder / decoder latency and session cache (issue 2)"
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

    tools = {"litemedsam": (LiteMedSAMTool(), "released weights")}
    try:
        from lib.tools.sam2_tool import Sam2Tool
    except ImportError as e:  # pragma: no cover - sam2 not installed
        print(f"[bench] sam2 backends skipped: {e}")
        return tools
    for name, ckpt, size in (("sam2", args.sam2_checkpoint, 1024), ("medsam2", args.medsam2_checkpoint, 512)):
        tools[name] = (
            Sam2Tool(name=name, checkpoint=ckpt or None, image_size=size, allow_random_weights=not ckpt),
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

    net = LiteMedSAMTool().net
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
             f"Measured by `python scripts/benchmark_tools.py` on {time.strftime('%Y-%m-%d')}, "
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--server-slices", type=int, default=4, help="fresh slices requested through the server")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--sam2-checkpoint", default="")
    ap.add_argument("--medsam2-checkpoint", default="")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--json", default="", help="also write the raw numbers to this JSON file")
    args = ap.parse_args()
    backends = bench_backends(args)
    variants = encoder_variants(args)
    server = None if args.skip_server else server_cache(args)
    write_section(Path(args.out), render(backends, variants, server))
    if args.json:
        Path(args.json).write_text(json.dumps({"backends": backends, "variants": variants, "server": server}, indent=1))
    print(f"[bench] wrote {args.out}")


if __name__ == "__main__":
    main()

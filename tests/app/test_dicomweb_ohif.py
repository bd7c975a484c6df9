"""MONAI Label's own OHIF viewer (``/ohif/``) in a real headless Chromium, on a study in Orthanc, with our agent
(issue 18): open the real CT in the MONAI Label mode, point the panel at our server, choose the agent's label in
Options / Configurations, run ``agent`` from Auto-Segmentation, and check WHERE the segmentation is drawn.

Where: the panel ignores the NRRD header of the label it gets back and copies its bytes into the labelmap of the
displayed volume (x fastest, then y, then the slices in increasing position along the slice normal). So:

- the response must be that volume's grid, voxel for voxel: the series' size, origin, spacing and direction, and
  its slices ascending along the normal (a flipped or transposed array would be drawn flipped, silently);
- the label is on the middle slice (``scope: slice``: k = K // 2) and on the liver there (most of it inside the
  ground-truth liver: placement, not the agent's Dice, which depends on the policy the session has trained);
- on screen, the axial image of slice k shows that label where it belongs: about as many drawn pixels as its voxels
  cover, their centroid within 1.5 voxels of the label's centroid as the viewer projects it (its own
  ``worldToCanvas``) and nearer to it than to the centroid's left-right or front-back mirror; the mirror slice
  K - 1 - k (where a flip along the slices would put it) shows none. OHIF's axial counter counts from the head down
  (``I: 1`` is the most superior image): slice k is ``I: K - k``;
- a K-flipped or an in-plane-flipped copy of the same response (the bug class of label orientation) fails these
  checks (the same page, the response swapped by the browser's request routing).

The browser is Debian's ``/usr/bin/chromium`` driven by Playwright (no browser is ever downloaded). Screenshots go to
``runs/test-artifacts/ohif/`` (git-ignored). Skipped, with the reason, when Chromium or Playwright is missing; the
Orthanc and the server are the session's (tests/app/conftest.py). Every wait is on the page's state (the viewer's
render events), with a deadline of ten minutes as a hang guard only."""

from __future__ import annotations

import gzip
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "runs" / "test-artifacts" / "ohif"
HANG_GUARD_MS = 600_000
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
AXIAL = "mpr-axial"  # the MONAI Label mode's viewport ids (its MPR layout)
#: a pixel is part of the overlay when a colour channel changed by more than this between before and after
CHANGED = 40
#: the drawn overlay's centroid must be this close (in voxels) to the label's, as the viewer projects it
NEAR_VOXELS = 1.5

# -- the viewer's state, read with cornerstone3D's own API (window.cornerstone: OHIF exposes it) ------------------
VIEW_JS = """(id) => {
  const v = window.cornerstone.getRenderingEngines()[0].getViewport(id);
  const pane = v.element.closest('[data-cy=viewport-pane]') || v.element.parentElement;
  const m = (pane.innerText || '').match(/I:\\s*(\\d+)\\s*\\((\\d+)\\/(\\d+)\\)/);
  const r = v.canvas.getBoundingClientRect();
  return {focal: Array.from(v.getCamera().focalPoint), normal: Array.from(v.getCamera().viewPlaneNormal),
          counter: m ? Number(m[2]) : null, slices: v.getNumberOfSlices(),
          box: {x: r.x, y: r.y, width: r.width, height: r.height}};
}"""
# one slice along the viewport's scroll direction, resolved once the viewer rendered it (at once at either end)
SCROLL_JS = """([id, delta]) => new Promise(done => {
  const v = window.cornerstone.getRenderingEngines()[0].getViewport(id);
  const was = Array.from(v.getCamera().focalPoint).join();
  v.scroll(delta);
  if (Array.from(v.getCamera().focalPoint).join() === was) return done(false);
  v.element.addEventListener(window.cornerstone.Enums.Events.IMAGE_RENDERED,
                             () => requestAnimationFrame(() => requestAnimationFrame(() => done(true))), {once: true});
  v.render();
})"""
RENDER_JS = """(id) => new Promise(done => {
  const v = window.cornerstone.getRenderingEngines()[0].getViewport(id);
  v.element.addEventListener(window.cornerstone.Enums.Events.IMAGE_RENDERED,
                             () => requestAnimationFrame(() => requestAnimationFrame(done)), {once: true});
  v.render();
})"""
TO_CANVAS_JS = """([id, points]) => {
  const v = window.cornerstone.getRenderingEngines()[0].getViewport(id);
  return points.map(p => Array.from(v.worldToCanvas(p)));
}"""
LOADED_JS = """() => {
  const e = window.cornerstone && window.cornerstone.getRenderingEngines()[0];
  const v = e && e.getViewport('mpr-axial');
  return !!(v && v.getNumberOfSlices && v.getNumberOfSlices() > 0 && v.getCurrentImageId && v.getCurrentImageId());
}"""


def is_infer(url: str) -> bool:
    return "/infer/agent?" in url


def answer_with(body: bytes):
    """A route handler that answers with ``body`` instead of asking the server."""
    def handler(route) -> None:
        route.fulfill(status=200, body=body, headers={"content-type": "application/octet-stream"})
    return handler


def rgb(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def overlay(before: bytes, after: bytes) -> np.ndarray:
    """(row, col) of the pixels the segmentation changed between two screenshots of the same slice."""
    return np.argwhere(np.abs(rgb(after) - rgb(before)).max(axis=2) > CHANGED)


def panel_label(body: bytes) -> tuple[dict[str, str], np.ndarray]:
    """(NRRD header fields, voxels as the OHIF panel reads them): MONAI Label's panel (``SegmentationReader``) takes
    the bytes after the header (gunzipped when ``encoding: gzip``) as the labelmap's scalar data, uint8, x fastest;
    the header's sizes are used here only to shape them ``(K, J, I)``."""
    head, _, data = body.partition(b"\n\n")
    fields = dict(line.split(": ", 1) for line in head.decode("latin-1").splitlines()[1:]
                  if ": " in line and not line.startswith("#"))
    if fields.get("encoding") == "gzip":
        data = gzip.decompress(data)
    sizes = [int(s) for s in fields["sizes"].split()]
    return fields, np.frombuffer(data, dtype=np.uint8).reshape(sizes[::-1])


def nrrd_vectors(text: str) -> np.ndarray:
    """``(1,0,0) (0,1,0) (0,0,1)`` -> rows of floats."""
    return np.array([[float(x) for x in v.strip("()").split(",")] for v in text.split()])


def flipped_response(body: bytes, axis: int) -> bytes:
    """The same NRRD (header kept) with its voxels flipped along ``axis`` of ``(K, J, I)``, raw encoding."""
    vox = panel_label(body)[1]
    head = body.partition(b"\n\n")[0].decode("latin-1").replace("encoding: gzip", "encoding: raw")
    return head.encode("latin-1") + b"\n\n" + np.ascontiguousarray(np.flip(vox, axis)).tobytes()


@pytest.fixture(scope="module")
def browser_page():
    if not CHROMIUM.is_file():
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium (.ci/run does it where apt is available)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.txt)")
    profile = tempfile.mkdtemp(prefix="ohif-chromium-")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), headless=True, args=FLAGS,
                                                   viewport={"width": 1600, "height": 1000})
        ctx.set_default_timeout(HANG_GUARD_MS)
        yield ctx.new_page()
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


class Viewer:
    """The page, with the axial viewport moved and photographed by world position."""

    def __init__(self, page):
        self.page = page

    def view(self, vp: str = AXIAL) -> dict:
        return self.page.evaluate(VIEW_JS, vp)

    def go_to(self, world: np.ndarray, vp: str = AXIAL) -> dict:
        """Scroll ``vp`` one slice at a time (as the mouse wheel does) to the slice through ``world``."""
        v = self.view(vp)
        for _ in range(2 * v["slices"] + 2):
            off = float(np.dot(np.asarray(world) - v["focal"], v["normal"]))
            if abs(off) < 0.5:
                return v
            # cornerstone's scroll(d) moves the focal point by d slices along the view-plane normal
            self.page.evaluate(SCROLL_JS, [vp, 1 if off > 0 else -1])
            moved = self.view(vp)
            if np.allclose(moved["focal"], v["focal"]):
                break
            v = moved
        raise AssertionError(f"the {vp} viewport cannot reach world point {list(world)} (it is at {v['focal']})")

    def shot(self, vp: str = AXIAL) -> bytes:
        self.page.evaluate(RENDER_JS, vp)
        return self.page.screenshot(clip=self.view(vp)["box"])

    def to_canvas(self, points, vp: str = AXIAL) -> np.ndarray:
        return np.array(self.page.evaluate(TO_CANVAS_JS, [vp, [list(map(float, p)) for p in points]]))


def centroid_points(mask: np.ndarray, image, k: int) -> list[np.ndarray]:
    """World (LPS mm) points of a 2D mask on slice k of ``image``'s grid: its centroid, the centroid's left-right
    mirror and its front-back mirror (where an in-plane flip of the label would draw it)."""
    rows, cols = mask.shape
    j, i = np.argwhere(mask).mean(axis=0)

    def world(ci, cj):
        return np.array(image.TransformContinuousIndexToPhysicalPoint((float(ci), float(cj), float(k))))

    return [world(i, j), world(cols - 1 - i, j), world(i, rows - 1 - j)]


def test_the_agent_runs_from_the_monai_label_panel_and_its_label_lands_on_the_liver(browser_page, dicomweb_server,
                                                                                   dicomweb_studies):
    import SimpleITK as sitk

    page = browser_page
    viewer = Viewer(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    study = dicomweb_studies["manifest"]["real_ct_001"]["StudyInstanceUID"]
    series = dicomweb_studies["series"]["real_ct_001"]
    twin = sitk.ReadImage(str(dicomweb_studies["studies"] / "real_ct_001.nii.gz"))
    gt_file = dicomweb_studies["studies"] / "labels" / "final" / "real_ct_001.nii.gz"
    liver = dicomweb_studies["labels"]["liver"]
    K = twin.GetSize()[2]
    k, mirror = K // 2, K - 1 - K // 2  # the agent's slice in scope "slice" (the middle one), and its mirror
    assert k != mirror
    z = {s: np.array(twin.TransformIndexToPhysicalPoint((0, 0, s))) for s in (k, mirror)}

    infers: list[tuple[str, int]] = []
    page.on("response", lambda r: infers.append((r.url, r.status)) if "/infer/" in r.url else None)
    page.goto(f"{dicomweb_server.url}/ohif/monai-label?StudyInstanceUIDs={study}")
    page.get_by_text("Confirm and Hide").click()
    # the panel's server field starts at MONAI Label's default port; point it at this server
    page.fill("#monailabelServerURL", f"{dicomweb_server.url}/")
    page.click("table.settingsTable button.actionButton")
    page.get_by_text("Connected to MONAI Label - Successful").wait_for()
    page.get_by_text("real_ct_001").first.wait_for()
    page.wait_for_function(LOADED_JS)
    box = page.locator("canvas").first.bounding_box()
    region = {"x": 250, "y": box["y"], "width": 1060, "height": box["height"]}
    before = {}
    for s in (mirror, k):  # ends on slice k
        viewer.go_to(z[s])
        before[s] = viewer.shot()
    counter = viewer.view()["counter"]
    (ARTIFACTS / "before.png").write_bytes(page.screenshot(clip=region))

    # Options / Configurations -> infer -> agent: the structure to segment, one slice (the suite's time budget)
    page.get_by_text("Options / Configurations").click()
    page.locator("select[name=selectSection]").select_option("infer")
    page.locator("select[name=selectName]").select_option("agent")
    page.locator("#inferagentlabel").select_option("liver")
    page.locator("#inferagentscope").select_option("slice")
    page.get_by_role("button", name="Confirm").click()

    def run_agent() -> bytes:
        # the panel logs this once it has copied the label into the labelmap
        with page.expect_console_message(lambda m: "updated the segmentation's scalar data" in m.text), \
                page.expect_response(lambda r: "/infer/agent?" in r.url) as resp:
            page.click("button[title='Run Segmentation']")
        return resp.value.body()

    def measure(tag: str, sent: np.ndarray) -> dict:
        """Where the overlay is drawn: pixels on the axial image of slice k and of its mirror, the expected pixels
        (the label's voxels on slice k times the on-screen voxel size), the drawn centroid's distance (in voxels)
        to the label's centroid as the viewer projects it, and to that centroid's two in-plane mirrors."""
        viewer.go_to(z[k])
        at_k = viewer.shot()
        (ARTIFACTS / f"axial_slice{k}_{tag}.png").write_bytes(at_k)
        drawn = overlay(before[k], at_k)
        points = viewer.to_canvas(centroid_points(sent[k] > 0, twin, k))  # (x, y) on the canvas, px
        origin, along_i, along_j = viewer.to_canvas([twin.TransformIndexToPhysicalPoint(p)
                                                     for p in ((0, 0, k), (1, 0, k), (0, 1, k))])
        px_i, px_j = float(np.linalg.norm(along_i - origin)), float(np.linalg.norm(along_j - origin))
        centre = drawn.mean(axis=0)[::-1] if len(drawn) else np.array([np.inf, np.inf])
        dist = [float(np.linalg.norm(centre - p)) / min(px_i, px_j) for p in points]
        viewer.go_to(z[mirror])
        at_mirror = viewer.shot()
        (ARTIFACTS / f"axial_slice{mirror}_{tag}.png").write_bytes(at_mirror)
        out = {"drawn_k": len(drawn), "expected_k": round(int((sent[k] > 0).sum()) * px_i * px_j),
               "drawn_mirror": len(overlay(before[mirror], at_mirror)),
               "to_label": dist[0], "to_lr_mirror": dist[1], "to_ap_mirror": dist[2]}
        print(f"\n{tag}: {out}")
        return out

    def where_sent(m: dict) -> bool:
        """The overlay on the axial image of slice k is the label the server sent, drawn where it belongs."""
        return (0.5 * m["expected_k"] < m["drawn_k"] < 1.5 * m["expected_k"] and m["drawn_mirror"] < 20
                and m["to_label"] < NEAR_VOXELS and m["to_label"] < min(m["to_lr_mirror"], m["to_ap_mirror"]))

    body = run_agent()
    (ARTIFACTS / "after.png").write_bytes(page.screenshot(clip=region))  # as the label came (axial on slice k)
    page.screenshot(path=str(ARTIFACTS / "ohif_agent.png"))
    assert [(u, s) for u, s in infers if "/infer/agent?" in u] and all(s == 200 for _, s in infers), infers
    assert any(f"image={series}" in u for u, _ in infers), infers

    # what the panel receives: the displayed volume's grid, slices ascending along the normal, label on slice k
    fields, vox = panel_label(body)
    direction = np.array(twin.GetDirection()).reshape(3, 3)
    assert fields["type"] in ("unsigned char", "uchar", "uint8"), fields
    assert fields.get("space") == "left-posterior-superior", fields
    assert vox.shape == tuple(reversed(twin.GetSize())), (vox.shape, twin.GetSize())
    assert np.allclose(nrrd_vectors(fields["space origin"])[0], twin.GetOrigin(), atol=1e-3), fields
    assert np.allclose(nrrd_vectors(fields["space directions"]), (direction * twin.GetSpacing()).T, atol=1e-4), fields
    assert np.dot(np.cross(direction[:, 0], direction[:, 1]), direction[:, 2]) > 0  # K ascends along the normal
    assert [int(s) for s in np.flatnonzero(vox.reshape(K, -1).any(axis=1))] == [k], "label not on the middle slice"
    # ... and on the liver: most of it inside the ground-truth liver of that slice (placement, not the agent's Dice)
    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(gt_file)))[k] == liver
    inside = float((gt & (vox[k] > 0)).sum() / max((vox[k] > 0).sum(), 1))
    print(f"\nthe agent's label on slice {k}: {inside:.2f} of it inside the ground-truth liver")
    assert inside > 0.6, f"the agent's label on slice {k} is not on the liver ({inside:.2f} inside it)"

    # where the viewer draws it
    assert counter == K - k, f"OHIF's axial counter for slice {k} reads {counter}, expected {K - k} (head down)"
    m = measure("agent", vox)
    assert where_sent(m), f"the overlay on axial slice {k} (I: {K - k}) is not where the label is: {m}"
    print(f"screenshots in {ARTIFACTS}")

    # the checks catch the bug class: the same response flipped along K, then left-right, drawn by the same panel
    for axis, tag in ((0, "flipped_k"), (2, "flipped_i")):
        swap = answer_with(flipped_response(body, axis))
        page.route(is_infer, swap)
        run_agent()
        page.unroute(is_infer, swap)
        assert not where_sent(measure(tag, vox)), f"a label flipped along axis {axis} passed the position checks"
    assert dicomweb_server.alive()

"""MONAI Label's own OHIF viewer (``/ohif/``) in a real headless Chromium, on a study in Orthanc, with our agent
(issue 18): open the real CT in the MONAI Label mode, point the panel at our server, choose the agent's label in
Options / Configurations, run ``agent`` from Auto-Segmentation, and check that the request succeeded and that a
segmentation is drawn (coloured pixels in the viewports that were not there before; the viewer's success notice).

The browser is Debian's ``/usr/bin/chromium`` driven by Playwright (no browser is ever downloaded). Screenshots go to
``runs/test-artifacts/ohif/`` (git-ignored). Skipped, with the reason, when Chromium or Playwright is missing; the
Orthanc and the server are the session's (tests/app/conftest.py). Every wait is on the page's state, with a
deadline of ten minutes as a hang guard only."""

from __future__ import annotations

import shutil
import tempfile
import time
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


def coloured_pixels(png: bytes) -> int:
    """Pixels of strong colour (the CT is grey; a segmentation overlay is coloured)."""
    import io

    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int(((rgb.max(axis=2) - rgb.min(axis=2)) > 60).sum())


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


def test_the_agent_runs_from_the_monai_label_panel_and_its_segmentation_appears(browser_page, dicomweb_server,
                                                                               dicomweb_studies):
    page = browser_page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    study = dicomweb_studies["manifest"]["real_ct_001"]["StudyInstanceUID"]
    series = dicomweb_studies["series"]["real_ct_001"]
    infers: list[tuple[str, int]] = []
    page.on("response", lambda r: infers.append((r.url, r.status)) if "/infer/" in r.url else None)
    page.goto(f"{dicomweb_server.url}/ohif/monai-label?StudyInstanceUIDs={study}")
    page.get_by_text("Confirm and Hide").click()
    # the panel's server field starts at MONAI Label's default port; point it at this server
    page.fill("#monailabelServerURL", f"{dicomweb_server.url}/")
    page.click("table.settingsTable button.actionButton")
    page.get_by_text("Connected to MONAI Label - Successful").wait_for()
    page.get_by_text("real_ct_001").first.wait_for()
    page.locator("canvas").first.wait_for()
    time.sleep(2)  # let the viewports paint the CT before the "before" picture
    viewports = page.locator("canvas").first.bounding_box()
    region = {"x": 250, "y": viewports["y"], "width": 1060, "height": viewports["height"]}
    before = page.screenshot(clip=region)
    (ARTIFACTS / "before.png").write_bytes(before)
    # Options / Configurations -> infer -> agent: the structure to segment, one slice (the suite's time budget)
    page.get_by_text("Options / Configurations").click()
    page.locator("select[name=selectSection]").select_option("infer")
    page.locator("select[name=selectName]").select_option("agent")
    page.locator("#inferagentlabel").select_option("liver")
    page.locator("#inferagentscope").select_option("slice")
    page.get_by_role("button", name="Confirm").click()
    page.click("button[title='Run Segmentation']")
    page.get_by_text("Running Segmentation - Successful").wait_for()
    time.sleep(2)  # the label is painted into the viewports after the notice
    after = page.screenshot(clip=region)
    (ARTIFACTS / "after.png").write_bytes(after)
    page.screenshot(path=str(ARTIFACTS / "ohif_agent.png"))
    assert [(u, s) for u, s in infers if "/infer/agent?" in u] and all(s == 200 for _, s in infers), infers
    assert any(f"image={series}" in u for u, _ in infers), infers
    grew = coloured_pixels(after) - coloured_pixels(before)
    print(f"\ncoloured pixels in the viewports: +{grew}; screenshots in {ARTIFACTS}")
    assert grew > 50, "no segmentation drawn in the viewports"
    assert dicomweb_server.alive()

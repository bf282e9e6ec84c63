"""The web viewer (``GET /`` of ``medtextseg serve``) in headless Chromium, driven over the DevTools protocol (a pipe,
``--remote-debugging-pipe``): a real server with a token, the case's channel files put into the page's file field,
two prompts typed, Segment pressed; then what the page shows is checked: the job's masks, NiiVue's volumes (image,
mask, probability), the mask's voxel count decoded in the browser equal to the server's and to ``Predictor.predict``'s,
the probability overlay toggled, and red overlay pixels in the screenshot that are gone with the mask hidden.

Chromium comes from ``scripts/setup_browser.sh`` (``scripts/test.sh`` runs it); the test is skipped only when no
Chromium is installed. ``MEDTEXTSEG_VIEWER_SCREENSHOT=docs/viewer.png`` also writes the screenshot there (README).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from helpers import text_checkpoint
from medtextseg.api import load_model
from medtextseg.server.app import STATIC, ServerSettings, create_app
from test_server import RunningServer

TOKEN = "viewer-test-token"
PROMPTS = ["the prostate gland", "the lesion in the left PZ"]


def chromium() -> str | None:
    for name in (os.environ.get("MEDTEXTSEG_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


needs_chromium = pytest.mark.skipif(chromium() is None, reason="no Chromium (scripts/setup_browser.sh)")


class Browser:
    """Headless Chromium and one page, spoken to in DevTools-protocol JSON messages over a pipe (NUL-separated)."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 760) -> None:
        to_browser, self.write_end = os.pipe()
        self.read_end, from_browser = os.pipe()

        def pipes() -> None:  # in the child: fd 3 reads commands, fd 4 writes answers (dup2: inheritable)
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115 (closed in close())

        self.process = subprocess.Popen(  # noqa: S603 (a fixed command line)
            [chromium(), "--headless=new", "--remote-debugging-pipe", f"--user-data-dir={profile}",
             "--no-sandbox", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
             f"--window-size={width},{height}", "about:blank"],
            preexec_fn=pipes, close_fds=False, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        os.close(to_browser)
        os.close(from_browser)
        self.buffer, self.number = b"", 0
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t["targetId"] for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page, flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def send(self, method: str, session: bool = False, **params):
        self.number += 1
        message = {"id": self.number, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self.write_end, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            while b"\0" not in self.buffer:
                assert time.monotonic() < deadline, f"no answer to {method}"
                block = os.read(self.read_end, 1 << 20)
                assert block, "Chromium closed the pipe"
                self.buffer += block
            line, self.buffer = self.buffer.split(b"\0", 1)
            answer = json.loads(line)
            if answer.get("id") == self.number:
                assert "error" not in answer, f"{method}: {answer['error']}"
                return answer["result"]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", session=True, expression=expression, awaitPromise=True,
                           returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}: {self.evaluate(STATE)}"
            time.sleep(0.2)
        return value

    def screenshot(self) -> Image.Image:
        data = self.send("Page.captureScreenshot", session=True, format="png")["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(20)
        self.log.close()
        os.close(self.write_end)
        os.close(self.read_end)


STATE = ("JSON.stringify({state: document.body && document.body.dataset.state, status: "
         "document.getElementById('status') && document.getElementById('status').textContent})")


def write_case(folder: Path, shape=(64, 64, 32)) -> list[Path]:
    """Two channels: a bright ellipsoid ("gland") with a darker spot in a smooth background, 1 x 1 x 2 mm."""
    folder.mkdir(parents=True, exist_ok=True)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid[0] / 0.55) ** 2 + (grid[1] / 0.45) ** 2 + (grid[2] / 0.6) ** 2)
    spot = np.sqrt(((grid[0] + 0.2) / 0.15) ** 2 + ((grid[1] - 0.1) / 0.15) ** 2 + (grid[2] / 0.3) ** 2)
    image = 40 + 20 * grid[1] + 120 * (radius < 1) - 70 * (spot < 1)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    paths = []
    for channel in range(2):
        path = folder / f"case_{channel:04d}.nii.gz"
        nib.save(nib.Nifti1Image((image * (1 + 0.3 * channel)).astype(np.float32), affine), str(path))
        paths.append(path)
    return paths


def red_pixels(image: Image.Image) -> int:
    pixels = np.asarray(image).astype(int)
    return int(((pixels[..., 0] > 120) & (pixels[..., 0] > pixels[..., 1] + 60)
                & (pixels[..., 0] > pixels[..., 2] + 60)).sum())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    run = text_checkpoint(tmp_path_factory.mktemp("viewer_model"), in_channels=2).parent
    predictor = load_model(run, device="cpu")
    server = RunningServer(create_app(predictor, ServerSettings(token=TOKEN, temp_dir=tmp_path_factory.mktemp("t"))))
    yield server, predictor
    server.stop()


def test_the_page_and_its_files_need_no_token_but_the_api_does(served):
    server, _ = served
    with httpx.Client(base_url=server.url, timeout=60) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for name in ("static/viewer.js", "static/viewer.css", "static/niivue.umd.js"):
            assert name in page.text and client.get("/" + name).status_code == 200, name
        assert client.get("/static/../app.py").status_code == 404
        assert client.get("/health").status_code == 401
        assert client.get("/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


@needs_chromium
def test_viewer_segments_and_shows_the_mask(served, tmp_path):
    assert (STATIC / "niivue.umd.js").is_file(), "the NiiVue bundle is not built: bash scripts/setup_viewer.sh"
    server, predictor = served
    case = write_case(tmp_path / "case")
    expected = predictor.predict(case, PROMPTS)
    browser = Browser(tmp_path / "profile")
    try:
        browser.send("Page.enable", session=True)
        browser.send("Page.navigate", session=True, url=server.url + "/")
        browser.wait_for("document.body && document.body.dataset.state === 'ready'", 60)
        browser.evaluate(f"document.getElementById('token').value = {json.dumps(TOKEN)}; "
                         "document.getElementById('token').dispatchEvent(new Event('change'))")
        browser.evaluate(f"document.getElementById('prompts').value = {json.dumps(chr(10).join(PROMPTS))}")
        document = browser.send("DOM.getDocument", session=True)["root"]["nodeId"]
        field = browser.send("DOM.querySelector", session=True, nodeId=document, selector="#files")["nodeId"]
        browser.send("DOM.setFileInputFiles", session=True, nodeId=field, files=[str(p) for p in reversed(case)])
        browser.evaluate("document.getElementById('segment').click()")
        state = browser.wait_for("['done', 'error'].includes(document.body.dataset.state) && "
                                 "JSON.stringify(window.viewerState)")
        state = json.loads(state)
        assert state["error"] is None, state["error"]
        assert [r["prompt"] for r in state["results"]] == PROMPTS
        assert [r["voxels"] for r in state["results"]] == [s.voxels for s in expected]
        assert state["base"] == "case_0000.nii.gz" and state["shown"] == PROMPTS[0]
        assert state["layers"] == ["mask", "probability"] and state["volumes"] == 3  # NiiVue: image, mask, prob.
        assert state["maskVoxels"] == expected[0].voxels > 0  # decoded by NiiVue in the browser
        rows = browser.evaluate("Array.from(document.querySelectorAll('#results tbody tr'))"
                                ".map(r => r.cells[0].textContent + '|' + r.cells[1].textContent)")
        assert rows == [f"{s.prompt}|{s.voxels}" for s in expected]
        time.sleep(1.0)  # let NiiVue draw
        shown = browser.screenshot()
        browser.evaluate("document.getElementById('show-mask').click()")  # hide the mask
        time.sleep(0.5)
        hidden = browser.screenshot()
        shown.save(tmp_path / "mask-shown.png")
        hidden.save(tmp_path / "mask-hidden.png")
        assert red_pixels(shown) > 200 and red_pixels(hidden) < red_pixels(shown) / 10, \
            (red_pixels(shown), red_pixels(hidden))
        browser.evaluate("document.getElementById('show-probability').click()")  # the probability map instead
        assert json.loads(browser.evaluate("JSON.stringify(window.viewerState.opacities)"))[1:] == [0, 0.7]
        browser.evaluate("document.getElementById('show-probability').click(); "
                         "document.getElementById('show-mask').click()")
        browser.evaluate("document.getElementById('result').value = '1'; "
                         "document.getElementById('result').dispatchEvent(new Event('change'))")
        browser.wait_for(f"window.viewerState.shown === {json.dumps(PROMPTS[1])}")
        assert browser.evaluate("window.viewerState.maskVoxels") == expected[1].voxels
        browser.evaluate("document.getElementById('result').value = '0'; "
                         "document.getElementById('result').dispatchEvent(new Event('change'))")
        browser.wait_for(f"window.viewerState.shown === {json.dumps(PROMPTS[0])}")
        time.sleep(1.0)
        final = browser.screenshot()
        final.save(tmp_path / "viewer.png")
        assert red_pixels(final) > 200
        assert browser.evaluate("document.getElementById('model').textContent").startswith("model viewer_model")
        if os.environ.get("MEDTEXTSEG_VIEWER_SCREENSHOT"):
            final.save(os.environ["MEDTEXTSEG_VIEWER_SCREENSHOT"])
    finally:
        browser.close()

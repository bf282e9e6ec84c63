"""medtextseg serve: a real uvicorn server on a free port, a real HTTP client (httpx, or a raw socket where the test
needs to control the bytes), and the masks checked against ``Predictor.predict`` on the same files.

Good requests (several prompts, probabilities, a per-request threshold, JSON output, a zip of channel files, a zip
of DICOM series), the job API (result, files, cancel), malformed uploads, oversize uploads (declared, streamed),
missing and wrong tokens, client file names and zip members that try to leave the server's folder, a full queue,
and a burst of 16 concurrent requests served with correct masks while the server's temporary folder ends empty.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
import uvicorn
from typer.testing import CliRunner

from helpers import text_checkpoint
from medtextseg import __version__
from medtextseg.api import load_model
from medtextseg.cli import app as cli_app
from medtextseg.server.app import ServerSettings, create_app
from test_dicom_series import write_series
from test_predict_folder import write_case

TOKEN = "s3cret-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 1_000_000  # the test server's largest request body, bytes
# the beginnings of every name the server gives a file or folder of its own (an atomic write goes through a
# temporary folder ".partial-mask_00-XXXXXXXX", utils/atomic.py)
SERVER_NAMES = ("request-", "job-", "upload-", "inputs", "out", "mask_", "probability_", "summary.json", "result.zip",
                ".partial-")
PROMPTS = ["the prostate gland", "the lesion in the left PZ", "the right transition zone"]


class RunningServer:
    """uvicorn in a background thread on a free port of 127.0.0.1."""

    def __init__(self, app) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return text_checkpoint(tmp_path_factory.mktemp("serve_model"), in_channels=2,
                           overrides=("data.spacing=[1.0,1.1,2.0]",)).parent


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> list[Path]:
    """Two channel files on an oblique grid (every voxel different)."""
    return write_case(tmp_path_factory.mktemp("serve_case"), "case_a", (20, 24, 12), 15.0)


@pytest.fixture(scope="module")
def predictor(run):
    return load_model(run, device="cpu")


@pytest.fixture(scope="module")
def served(run, predictor, tmp_path_factory):
    """The server (token, 1 MB uploads, a queue of 16) and its state; its temporary folder goes at shutdown."""
    temp = tmp_path_factory.mktemp("serve_temp")
    app = create_app(predictor, ServerSettings(token=TOKEN, max_upload_bytes=LIMIT, queue=16, temp_dir=temp))
    server = RunningServer(app)
    yield server, app.state.server
    server.stop()
    assert not app.state.server.root.exists() and list(temp.iterdir()) == []


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served[0].url, headers=AUTH, timeout=120) as client:
        yield client


def files_of(paths: list[Path], names: list[str] | None = None) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (name, path.read_bytes(), "application/gzip"))
            for path, name in zip(paths, names or [p.name for p in paths], strict=True)]


def unzip(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def nifti(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


def assert_same_answers(archive: dict[str, bytes], expected, reference: Path, probabilities: bool = True) -> dict:
    """The zip's masks (and probability maps) equal ``expected`` (Segmentations) exactly, on ``reference``'s grid."""
    summary = json.loads(archive["summary.json"])
    assert [r["prompt"] for r in summary["results"]] == [s.prompt for s in expected]
    affine = nib.load(str(reference)).affine
    for record, segmentation in zip(summary["results"], expected, strict=True):
        mask = nifti(archive[record["mask"]])
        assert np.array_equal(mask.get_fdata(), segmentation.mask)
        assert np.array_equal(mask.affine, affine) and mask.shape == segmentation.mask.shape
        assert record["voxels"] == segmentation.voxels
        if probabilities:
            assert np.array_equal(nifti(archive[record["probability"]]).get_fdata(dtype=np.float32),
                                  segmentation.probability)
    return summary


def one_line_detail(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert "\n" not in detail and "Traceback" not in detail and all(w in detail for w in words), detail
    return detail


def wait_until_empty(folder: Path, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while list(folder.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(folder.iterdir()) == []


def test_health_tells_the_model_and_needs_the_token(served, client):
    server, _ = served
    health = client.get("/health").json()
    assert health["medtextseg_version"] == __version__
    model = health["model"]
    assert model["channels"] == ["t2w", "adc"] and model["in_channels"] == 2 and model["spatial_dims"] == 3
    assert model["spacing_mm"] == [1.0, 1.1, 2.0] and model["text_encoder"] and model["text_dim"] == 384
    assert "members" not in model  # one model (an ensemble's members: tests/test_ensemble.py)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = httpx.get(f"{server.url}/health", headers=headers)
        one_line_detail(response, 401, "bearer token")
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_a_case_and_several_prompts_give_the_masks_predict_gives_on_its_grid(served, client, case, predictor):
    expected = predictor.predict(case, PROMPTS)
    response = client.post("/segment", files=files_of(case), data={"prompt": PROMPTS, "probabilities": "true"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    archive = unzip(response.content)
    assert sorted(archive) == ["mask_00.nii.gz", "mask_01.nii.gz", "mask_02.nii.gz", "probability_00.nii.gz",
                               "probability_01.nii.gz", "probability_02.nii.gz", "summary.json"]
    summary = assert_same_answers(archive, expected, case[0])
    assert len({s.voxels for s in expected}) > 1 and 0 < sum(s.voxels for s in expected)  # the prompts differ
    assert summary["inputs"] == ["upload 1 ('case_a_0000.nii.gz')", "upload 2 ('case_a_0001.nii.gz')"]
    assert summary["shape"] == [20, 24, 12] and summary["medtextseg_version"] == __version__
    wait_until_empty(served[1].root)


def test_a_threshold_and_json_output(client, case, run):
    response = client.post("/segment", files=files_of(case),
                           data={"prompt": PROMPTS[:2], "threshold": "0.3", "output": "json", "uncertainty": "yes"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    summary = response.json()
    expected = load_model(run, device="cpu", threshold=0.3).predict(case, PROMPTS[:2])
    assert summary["threshold"] == 0.3 and summary["results"][1]["uncertainty"] == "uncertainty_01.nii.gz"
    assert summary["results"][0]["uncertainty_kind"] == expected[0].uncertainty_kind
    assert [r["voxels"] for r in summary["results"]] == [s.voxels for s in expected]
    assert summary["results"][0]["volume_ml"] == round(expected[0].volume_ml, 3)


def test_a_zip_of_channel_files_and_a_zip_of_dicom_series(client, case, predictor, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # member names out of order, and trying to leave the folder
        archive.writestr("../../case_0001.nii.gz", case[1].read_bytes())
        archive.writestr("/abs/case_0000.nii.gz", case[0].read_bytes())
    response = client.post("/segment", files=[("image", ("case.zip", buffer.getvalue(), "application/zip"))],
                           data={"prompt": PROMPTS})
    assert response.status_code == 200, response.text
    assert_same_answers(unzip(response.content), predictor.predict(case, PROMPTS), case[0], probabilities=False)

    volume = np.arange(16 * 14 * 6, dtype=np.int16).reshape(16, 14, 6) % 97
    for channel, name in enumerate(("t2w", "adc")):
        write_series(tmp_path / name, volume + 5 * channel)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(tmp_path.rglob("*.dcm")):
            archive.write(path, path.relative_to(tmp_path).as_posix().replace("t2w", "1_t2w").replace("adc", "2_adc"))
    response = client.post("/segment", files=[("image", ("series.zip", buffer.getvalue(), "application/zip"))],
                           data={"prompt": PROMPTS[0]})
    assert response.status_code == 200, response.text
    (expected,) = predictor.predict([tmp_path / "t2w", tmp_path / "adc"], PROMPTS[0])
    mask = nifti(unzip(response.content)["mask_00.nii.gz"])
    assert np.array_equal(mask.get_fdata(), expected.mask) and np.allclose(mask.affine, expected.affine)


def test_the_job_api_queues_reports_serves_files_and_cancels(served, client, case, predictor):
    _, state = served
    response = client.post("/jobs", files=files_of(case), data={"prompt": PROMPTS[:2]})
    assert response.status_code == 202 and response.headers["Location"] == f"/jobs/{response.json()['id']}"
    job = response.json()["id"]
    deadline = time.monotonic() + 60
    while (view := client.get(f"/jobs/{job}").json())["status"] != "done":
        assert view["status"] in ("queued", "running") and time.monotonic() < deadline, view
        time.sleep(0.05)
    expected = predictor.predict(case, PROMPTS[:2])
    done, total = state.jobs.get(job).windows  # what the prediction told the job, to its last window
    assert total > 0 and done == total
    assert_same_answers(unzip(client.get(view["result"]).content), expected, case[0], probabilities=False)
    mask = nifti(client.get(f"/jobs/{job}/files/mask_01.nii.gz").content)
    assert np.array_equal(mask.get_fdata(), expected[1].mask)
    for name in ("..%2F..%2Fsummary.json", "best.pt", "result.zip"):
        assert client.get(f"/jobs/{job}/files/{name}").status_code == 404
    assert client.delete(f"/jobs/{job}").json() == {"id": job, "status": "deleted"}
    one_line_detail(client.get(f"/jobs/{job}"), 404, job)

    gate = threading.Event()  # hold the worker: the next job waits in the queue, and is cancelled there
    ticket = state.queue.admit()
    _, blocker = state.queue.submit(gate.wait, 30)
    try:
        queued = client.post("/jobs", files=files_of(case), data={"prompt": PROMPTS[0]}).json()
        assert queued["status"] == "queued" and queued["position"] == 1
        one_line_detail(client.get(f"/jobs/{queued['id']}/result"), 409, "queued")
        assert client.delete(f"/jobs/{queued['id']}").json()["status"] == "cancelled"
    finally:
        gate.set()
        blocker.result(30)
        ticket.release()
    wait_until_empty(state.root)
    assert state.queue.admitted == 0


def test_a_running_job_tells_how_far_its_windows_are(served, client):
    _, state = served
    from medtextseg.server.work import Job

    gate = threading.Event()  # a job whose prediction is under way: the worker holds it until the gate opens
    ticket = state.queue.admit()
    job = Job("progress-job", state.root / "progress-job")
    job.number, job.future = state.queue.submit(gate.wait, 30)
    state.jobs.add(job)
    try:
        deadline = time.monotonic() + 10
        while not job.future.running():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.get(f"/jobs/{job.id}").json()["progress"] == {"windows_done": 0, "windows": 0,
                                                                     "fraction": 0.0}  # still reading
        job.advance(3, 12)
        assert client.get(f"/jobs/{job.id}").json() == {"id": job.id, "status": "running", "progress": {
            "windows_done": 3, "windows": 12, "fraction": 0.25}}
    finally:
        gate.set()
        job.future.result(30)
        ticket.release()
        state.jobs.pop(job.id)


@pytest.mark.parametrize(("files", "data", "status", "words"), [
    ([("a.nii.gz", b"not an image"), ("b.nii.gz", b"\x1f\x8b garbage")], {"prompt": "the gland"}, 422,
     ("upload 1 ('a.nii.gz')", "cannot read image header")),
    ([("a.nii.gz", None)], {"prompt": "the gland"}, 422, ("takes 2 image file(s) (t2w, adc)", "got 1")),
    ([("a.nii.gz", None), ("b.nii.gz", None), ("c.nii.gz", None)], {"prompt": "the gland"}, 422, ("got 3",)),
    ([("notes.txt", b"hello")], {"prompt": "the gland"}, 400, ("upload 1 ('notes.txt')", "not an accepted")),
    ([("a.nii.gz", None), ("b.nii.gz", None)], {}, 400, ("no prompt",)),
    ([], {"prompt": "the gland"}, 400, ("no image",)),
    ([("a.nii.gz", None), ("b.nii.gz", None)], {"prompts": "the gland"}, 400, ("unknown form field 'prompts'",)),
    ([("a.nii.gz", None), ("b.nii.gz", None)], {"prompt": "the gland", "threshold": "1.5"}, 400, ("threshold",)),
    ([("a.nii.gz", None), ("b.nii.gz", None)], {"prompt": "the gland", "output": "xml"}, 400, ("output",)),
    ([("a.nii.gz", None), ("b.nii.gz", None)], {"prompt": "the \x1b[2J gland"}, 422, ("control character",)),
    ([("a.nii.gz", None), ("b.nii.gz", None)], {"prompt": ["the gland"] * 17}, 400, ("at most 16",)),
    ([("x.zip", b"PK not a zip")], {"prompt": "the gland"}, 400, ("upload 1 ('x.zip')", "not a readable zip")),
])
def test_malformed_uploads_get_one_line_and_leave_nothing(served, client, case, files, data, status, words):
    parts = [("image", (name, case[0].read_bytes() if content is None else content, "application/octet-stream"))
             for name, content in files]
    if parts:
        response = client.post("/segment", files=parts, data=data)
    else:  # httpx sends a form without files url-encoded: write the multipart body by hand
        response = client.post("/segment", content=b"--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n"
                               b"the gland\r\n--b--\r\n", headers={"Content-Type": "multipart/form-data; boundary=b"})
    detail = one_line_detail(response, status, *words)
    assert str(served[1].root) not in detail and "upload-" not in detail
    wait_until_empty(served[1].root)


def test_a_body_that_is_not_multipart_is_refused(client):
    one_line_detail(client.post("/segment", json={"prompt": "the gland"}), 415, "multipart/form-data")


def raw_request(port: int, head: str, body: bytes = b"", chunks: int = 0) -> tuple[int, float]:
    """Send ``head`` (and ``body``, then ``chunks`` chunks of 64 KB when chunked) on a raw socket: the status and
    the seconds until the answer came."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(head.encode() + body)
        for _ in range(chunks):
            sock.sendall(b"10000\r\n" + b"\0" * 0x10000 + b"\r\n")
        answer = sock.recv(4096)
    return int(answer.split(b" ", 2)[1]), time.monotonic() - started


def test_oversize_uploads_get_413_without_being_read_to_the_end(served, client, case):
    server, state = served
    big = [("image", ("a.nii.gz", b"\0" * (LIMIT + 1000), "application/gzip"))]
    one_line_detail(client.post("/segment", files=big, data={"prompt": "the gland"}), 413, "larger", "1 MB")
    # a declared 10 GB body: refused at once, before any of it is sent
    head = (f"POST /segment HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n")
    status, seconds = raw_request(server.port, head + "Content-Length: 10000000000\r\n\r\n")
    assert status == 413 and seconds < 10
    # a chunked body (no length) that grows past the limit: refused when it does
    part = b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.nii.gz\"\r\n\r\n"
    chunk = f"{len(part):x}\r\n".encode() + part + b"\r\n"
    status, _ = raw_request(server.port, head + "Transfer-Encoding: chunked\r\n\r\n", chunk, LIMIT // 0x10000 + 1)
    assert status == 413
    wait_until_empty(state.root)
    assert client.get("/health").status_code == 200  # the server goes on


def test_a_client_file_name_never_reaches_the_filesystem(served, client, case, predictor, tmp_path):
    _, state = served
    names = ["../../x.nii.gz", "/tmp/y/../../abs.nii.gz"]
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:  # every name that appears in the server's folder while it works
        while not stop.is_set():
            with contextlib.suppress(OSError):  # a folder removed while it is listed
                seen.update(str(p.relative_to(state.root)) for p in state.root.rglob("*"))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        response = client.post("/segment", files=files_of(case, names), data={"prompt": PROMPTS[0]})
    finally:
        stop.set()
        watcher.join()
    assert response.status_code == 200, response.text
    summary = assert_same_answers(unzip(response.content), predictor.predict(case, PROMPTS[0]), case[0], False)
    assert summary["inputs"] == ["upload 1 ('../../x.nii.gz')", "upload 2 ('/tmp/y/../../abs.nii.gz')"]
    assert not (state.root.parent.parent / "x.nii.gz").exists() and not Path("/tmp/abs.nii.gz").exists()
    assert seen and all(part.startswith(SERVER_NAMES) for name in seen for part in Path(name).parts), seen
    wait_until_empty(state.root)


def resident_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def test_a_burst_of_16_concurrent_requests_is_served_with_correct_masks(served, client, case, predictor):
    _, state = served
    prompt_sets = [PROMPTS, PROMPTS[1:]]
    expected = [predictor.predict(case, prompts) for prompts in prompt_sets]
    payload = files_of(case)
    measure = os.path.exists("/proc/self/status")
    baseline = resident_mb() if measure else 0.0
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while measure and not stop.wait(0.02):
            peak[0] = max(peak[0], resident_mb())

    def one(number: int) -> httpx.Response:
        return client.post("/segment", files=payload, data={"prompt": prompt_sets[number % 2]})

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(one, range(16)))
    finally:
        stop.set()
        sampler.join()
    for number, response in enumerate(responses):
        assert response.status_code == 200, response.text
        assert_same_answers(unzip(response.content), expected[number % 2], case[0], probabilities=False)
    wait_until_empty(state.root)
    assert state.queue.admitted == 0
    assert peak[0] - baseline < 300, f"resident memory grew by {peak[0] - baseline:.0f} MB during the burst"


def test_a_full_queue_answers_503_with_retry_after(served, client, case):
    _, state = served
    tickets = [state.queue.admit() for _ in range(state.queue.limit)]
    try:
        response = client.post("/segment", files=files_of(case), data={"prompt": PROMPTS[0]})
        one_line_detail(response, 503, "busy", "--queue")
        assert int(response.headers["Retry-After"]) >= 1
    finally:
        for ticket in tickets:
            ticket.release()
    assert client.post("/segment", files=files_of(case), data={"prompt": PROMPTS[0]}).status_code == 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_serve_command_loads_the_model_once_and_serves_with_a_token_file(run, tmp_path):
    token_file, temp = tmp_path / "token", tmp_path / "temp"
    token_file.write_text(f"{TOKEN}\n")
    port = free_port()
    command = [sys.executable, "-m", "medtextseg.cli", "serve", "-m", str(run), "--port", str(port),
               "--token-file", str(token_file), "--temp-dir", str(temp), "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", headers=AUTH)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert response.json()["model"]["channels"] == ["t2w", "adc"]
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 401
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert f"medtextseg serve: {run} (t2w, adc) on http://127.0.0.1:{port} (bearer token required)" in output
    assert list(temp.iterdir()) == []  # the server's own folder went with it


def test_serve_refuses_bad_settings_in_one_line(run, tmp_path, monkeypatch):
    runner = CliRunner()
    (tmp_path / "empty").write_text("\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        for args, words in [(["--queue", "0"], "--queue must be at least 1"),
                            (["--token-file", str(tmp_path / "empty")], "the token is empty"),
                            (["--token-file", str(tmp_path / "missing")], "cannot read it"),
                            (["--port", str(taken.getsockname()[1])], "cannot listen there")]:
            result = runner.invoke(cli_app, ["serve", "-m", str(run), *args])
            assert result.exit_code == 2 and words in result.output, result.output
    monkeypatch.setenv("MEDTEXTSEG_TOKEN", "two words")
    result = runner.invoke(cli_app, ["serve", "-m", str(run), "--port", str(free_port())])
    assert result.exit_code == 2 and "MEDTEXTSEG_TOKEN: the token is empty or has spaces" in result.output

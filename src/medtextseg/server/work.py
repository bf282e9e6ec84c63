"""What the server does for one case, and the order it does it in.

* :func:`run_segmentation`: the channel files of a request (zips expanded) -> ``Predictor.predict`` (all prompts in
  one pass) -> ``out/mask_NN.nii.gz`` (and probability/uncertainty maps) on the input's exact grid, ``summary.json``
  and ``result.zip`` in the request's folder.
* :class:`WorkQueue`: one worker thread runs the predictions in the order they were submitted; at most ``limit``
  requests are admitted at once (uploading, waiting or running), so a burst is served in order with bounded memory
  and disk, and the request after the limit is told to retry (503 with ``Retry-After``).
* :class:`Job` and :class:`JobStore`: the job API's records; finished jobs keep their results until deleted, the
  oldest beyond ``keep`` are removed.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medtextseg import __version__
from medtextseg.inference.postprocessing import remove_small_components
from medtextseg.inference.predictor import Predictor, Progress
from medtextseg.server.uploads import RequestProblem, SegmentRequest, UploadLimits, channel_files, remove_folder
from medtextseg.utils.errors import MedTextSegError

SUMMARY_FORMAT = "medtextseg-serve/1"
SUMMARY_NAME, RESULT_NAME, OUTPUT_FOLDER = "summary.json", "result.zip", "out"


def public_message(message: str, channels: list[tuple[Path, str]], folder: Path) -> str:
    """``message`` with the server's paths replaced by what the client knows: each channel's label, and no trace of
    the request's folder."""
    for path, label in sorted(channels, key=lambda item: -len(str(item[0]))):
        message = message.replace(str(path), label)
    return message.replace(f"{folder}/", "").replace(str(folder), "the upload")


def run_segmentation(predictor: Predictor, request: SegmentRequest, folder: Path, limits: UploadLimits,
                     model: dict[str, Any], on_progress: Progress | None = None) -> dict[str, Any]:
    """Segment every prompt of ``request`` (its files in ``folder``) and write the outputs there; ``on_progress``
    hears (windows done, windows in all) as the sliding windows run.

    Returns the summary (also ``folder/out/summary.json``); with ``request.output`` "zip", ``folder/result.zip``
    holds it and the NIfTI files.

    Raises:
        MedTextSegError: images the model cannot take, in one line naming the upload (never a server path).
        RequestProblem: a zip that cannot be used.
    """
    started = time.perf_counter()
    inputs = folder / "inputs"
    inputs.mkdir(exist_ok=True)
    channels = channel_files(request.files, inputs, limits)
    try:
        results = predictor.predict([path for path, _ in channels], request.prompts, uncertainty=request.uncertainty,
                                    on_progress=on_progress)
    except MedTextSegError as error:
        raise MedTextSegError(public_message(str(error), channels, folder)) from None
    inference = predictor.config.inference
    threshold = inference.threshold if request.threshold is None else request.threshold
    out = folder / OUTPUT_FOLDER
    records = []
    for number, result in enumerate(results):
        if request.threshold is not None:  # the same cut-off and clean-up Predictor applies with this threshold
            mask = remove_small_components(result.probability > threshold, inference.min_component_voxels)
            result = replace(result, mask=mask.astype(np.uint8))
        files = {"mask": f"mask_{number:02d}.nii.gz"}
        if request.probabilities:
            files["probability"] = f"probability_{number:02d}.nii.gz"
        if request.uncertainty:
            files["uncertainty"] = f"uncertainty_{number:02d}.nii.gz"
        result.save(*(out / files[key] if key in files else None for key in ("mask", "probability", "uncertainty")))
        record = {"prompt": result.prompt, **files, "voxels": result.voxels, "volume_ml": round(result.volume_ml, 3),
                  "volume_mm3": round(result.volume_ml * 1000, 3)}
        if request.uncertainty:
            record["uncertainty_kind"] = result.uncertainty_kind
        records.append(record)
    geometry = results[0].geometry
    summary = {"format": SUMMARY_FORMAT, "medtextseg_version": __version__, "model": model["run"],
               "checkpoint_sha256": model["checkpoint_sha256"], "threshold": threshold,
               "shape": list(geometry.shape), "spacing_mm": [round(s, 6) for s in geometry.spacing],
               "affine": np.asarray(geometry.affine).round(6).tolist(),
               "inputs": [label for _, label in channels], "results": records,
               "seconds": round(time.perf_counter() - started, 3)}
    if "members" in model:  # an ensemble: a change in any member's weights is a change of model
        summary["members"] = model["members"]
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    if request.output == "zip":
        _archive(out, records, folder / RESULT_NAME)
    remove_folder(inputs)
    for upload in request.files:
        upload.path.unlink(missing_ok=True)
    return summary


def _archive(out: Path, records: list[dict[str, Any]], destination: Path) -> None:
    """``destination``: a zip of the summary and every file ``records`` name, from ``out``."""
    with zipfile.ZipFile(destination, "w") as archive:  # NIfTI .gz files are stored, the JSON deflated
        archive.write(out / SUMMARY_NAME, SUMMARY_NAME, compress_type=zipfile.ZIP_DEFLATED)
        for record in records:
            for key in ("mask", "probability", "uncertainty"):
                if key in record:
                    archive.write(out / record[key], record[key], compress_type=zipfile.ZIP_STORED)


def result_files(summary: dict[str, Any]) -> list[str]:
    """The names of the files a summary lists (the only names a client may ask for)."""
    return [SUMMARY_NAME, *(record[key] for record in summary["results"]
                            for key in ("mask", "probability", "uncertainty") if key in record)]


class Ticket:
    """A place in the queue, released once (by whichever of the request's paths ends last)."""

    def __init__(self, queue: WorkQueue) -> None:
        self._queue, self._released = queue, False

    def release(self) -> None:
        with self._queue.lock:
            if not self._released:
                self._released = True
                self._queue.admitted -= 1


class WorkQueue:
    """One worker thread, predictions in submission order, at most ``limit`` requests admitted at once."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise MedTextSegError(f"--queue must be at least 1, got {limit}")
        self.limit = limit
        self.lock = threading.Lock()
        self.admitted = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medtextseg-predict")
        self._pending: dict[int, Future] = {}
        self._numbers = itertools.count()
        self._seconds: deque[float] = deque(maxlen=16)

    def admit(self) -> Ticket:
        """A place for one request, or a 503 telling when to retry."""
        with self.lock:
            if self.admitted < self.limit:
                self.admitted += 1
                return Ticket(self)
        raise RequestProblem(503, f"the server is busy: {self.limit} requests are queued or running, its limit "
                                  "(medtextseg serve --queue); retry later", {"Retry-After": str(self.retry_after())})

    def submit(self, function: Callable[..., Any], *args: Any) -> tuple[int, Future]:
        """Run ``function(*args)`` on the worker after everything submitted before; its number and future."""
        number = next(self._numbers)

        def timed() -> Any:
            started = time.perf_counter()
            try:
                return function(*args)
            finally:
                self._seconds.append(time.perf_counter() - started)

        with self.lock:
            future = self._executor.submit(timed)
            self._pending[number] = future
        future.add_done_callback(lambda _: self._forget(number))
        return number, future

    def _forget(self, number: int) -> None:
        with self.lock:
            self._pending.pop(number, None)

    def position(self, number: int) -> int:
        """How many submitted tasks are still ahead of task ``number`` (0: it runs next or now)."""
        with self.lock:
            return sum(other < number for other in self._pending)

    def retry_after(self) -> int:
        """Seconds until a place is likely to free: the mean time of recent tasks times the tasks pending."""
        mean = sum(self._seconds) / len(self._seconds) if self._seconds else 1.0
        return max(1, math.ceil(mean * max(1, len(self._pending))))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class Job:
    """A segmentation submitted to ``POST /jobs``; its results stay in ``folder`` until it is deleted."""

    id: str
    folder: Path
    number: int = -1
    future: Future | None = None
    summary: dict[str, Any] | None = None
    error: tuple[int, str] | None = None
    cancelled: bool = False
    windows: tuple[int, int] = (0, 0)  # (done, in all) of the running prediction's sliding windows

    def advance(self, done: int, total: int) -> None:
        """The prediction's progress (``Predictor.predict``'s ``on_progress``), from the worker thread."""
        self.windows = (done, total)

    @property
    def status(self) -> str:
        if self.cancelled:
            return "cancelled"
        if self.summary is not None:
            return "done"
        if self.error is not None:
            return "failed"
        return "running" if self.future is not None and self.future.running() else "queued"


class JobStore:
    """The jobs by id; beyond ``keep`` finished ones, the oldest finished are removed with their files."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def pop(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.pop(job_id, None)

    def evict(self) -> None:
        with self._lock:
            finished = [job for job in self._jobs.values() if job.status in ("done", "failed")]
            for job in finished[: max(0, len(finished) - self.keep)]:  # dicts keep insertion order: oldest first
                del self._jobs[job.id]
                remove_folder(job.folder)

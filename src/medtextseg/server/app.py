"""The HTTP API of ``medtextseg serve`` over one loaded model (README, "Serving").

=========================  =========================================================================================
``GET /``                  the web viewer (``static/index.html``; NiiVue, built by ``scripts/setup_viewer.sh``); its
                           page and ``/static/*`` need no token, the API calls it makes send the one typed in it
``GET /health``            the model (channels, spacing, text encoder, threshold, checkpoint digest), version, limits
``POST /segment``          one case (multipart: ``image`` parts in channel order, ``prompt`` fields, options) ->
                           a zip of ``summary.json`` + ``mask_NN.nii.gz`` on the input's grid (``output=json``: the
                           summary alone)
``POST /jobs``             the same request, answered at once (202) with the job's id; the work is queued
``GET /jobs``              every job and its status
``GET /jobs/{id}``         status (queued with its position, running with its progress over the sliding windows, done
                          with its summary, failed with the reason)
``GET /jobs/{id}/result``  the zip of a finished job; ``GET /jobs/{id}/files/{name}`` one of its files
``DELETE /jobs/{id}``      cancel a job (a running one is discarded when it ends) and remove its files
=========================  =========================================================================================

With a token every request needs ``Authorization: Bearer TOKEN`` (compared in constant time; else 401). Errors are
JSON ``{"detail": "one line"}``: 400 a malformed request, 401, 404, 409 a job not finished, 413 an upload over the
limit, 415 not multipart, 422 images or prompts the model cannot take (the ``MedTextSegError`` line), 503 the queue
full (``Retry-After``), 500 anything else (its traceback goes to the server's log, never into a response).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.requests import ClientDisconnect

from medtextseg import __version__
from medtextseg.inference.batch_predict import file_sha256
from medtextseg.inference.ensemble import ModelArgument, load_predictor
from medtextseg.inference.predictor import Predictor
from medtextseg.server.uploads import RequestProblem, UploadLimits, read_upload, remove_folder
from medtextseg.server.work import (
    OUTPUT_FOLDER,
    RESULT_NAME,
    Job,
    JobStore,
    Ticket,
    WorkQueue,
    result_files,
    run_segmentation,
)
from medtextseg.utils.errors import MedTextSegError, printable

log = logging.getLogger("medtextseg.server")
ZIP_TYPE, NIFTI_TYPE = "application/zip", "application/gzip"
STATIC = Path(__file__).parent / "static"  # the web viewer: index.html, viewer.js/.css, niivue.umd.js (built)


@dataclass(frozen=True)
class ServerSettings:
    """What ``medtextseg serve`` is started with (besides the model, host and port).

    Attributes:
        token: the bearer token every request must carry; None: no token (fine on 127.0.0.1 alone).
        max_upload_bytes: the largest request body; larger ones get 413 (zips may unpack to 4 times as much).
        queue: requests admitted at once (uploading, waiting or running); one more gets 503 with Retry-After.
        keep_jobs: finished jobs kept with their results (the oldest beyond it are removed).
        max_prompts: prompts per request (all are answered in one pass, their maps held together).
        temp_dir: where the server makes its own temporary folder (default: the system's).
    """

    token: str | None = None
    max_upload_bytes: int = 512_000_000
    queue: int = 8
    keep_jobs: int = 32
    max_prompts: int = 16
    temp_dir: Path | None = None


def model_info(predictor: Predictor) -> dict[str, Any]:
    """What ``GET /health`` tells of the model, and the summaries' model fields. An ensemble's also hold
    ``members`` (each member's run, checkpoint and its SHA-256; ``run``, ``checkpoint`` and ``checkpoint_sha256``
    are the first member's), as ``predict``'s index does."""
    config = predictor.config
    members = [{"run": checkpoint.parent.name, "checkpoint": checkpoint.name,
                "checkpoint_sha256": file_sha256(checkpoint)} for checkpoint, _ in predictor.sources]
    return {**members[0], **({"members": members} if len(members) > 1 else {}),
            "spatial_dims": config.model.spatial_dims,
            "in_channels": config.model.in_channels, "channels": predictor.channel_names,
            "spacing_mm": None if config.data.spacing is None else list(config.data.spacing),  # None: native
            "patch_size": list(config.data.patch_size),
            "text_encoder": predictor.text.encoder_name, "text_dim": predictor.text_dim,
            "threshold": config.inference.threshold, "presence_threshold": config.inference.presence_threshold,
            "device": str(predictor.device)}


class ServerState:
    """The loaded model, the queue, the jobs and the server's own temporary folder (removed at shutdown)."""

    def __init__(self, predictor: Predictor, settings: ServerSettings) -> None:
        self.predictor, self.settings = predictor, settings
        self.model = model_info(predictor)
        self.limits = UploadLimits(settings.max_upload_bytes, max_prompts=settings.max_prompts)
        self.queue = WorkQueue(settings.queue)
        self.jobs = JobStore(settings.keep_jobs)
        if settings.temp_dir is not None:
            Path(settings.temp_dir).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="medtextseg-serve-", dir=settings.temp_dir))  # mode 0700

    def folder(self, kind: str) -> tuple[str, Path]:
        """A fresh id and its folder name in the server's temporary folder (created when the upload starts)."""
        identifier = uuid.uuid4().hex
        return identifier, self.root / f"{kind}-{identifier}"

    def close(self) -> None:
        self.queue.shutdown()
        remove_folder(self.root)


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def error_of(error: BaseException) -> tuple[int, str, dict[str, str]]:
    """The HTTP status, one-line detail and headers a failure is answered with (never a traceback)."""
    if isinstance(error, RequestProblem):
        return error.status, error.detail, error.headers
    if isinstance(error, MedTextSegError):
        return 422, printable(str(error)), {}
    log.error("request failed", exc_info=error)
    return 500, f"internal error ({type(error).__name__}); the server's log has the details", {}


def _chunks(stream: Any) -> Iterator[bytes]:
    try:
        while block := stream.read(1 << 20):
            yield block
    finally:
        stream.close()


def _release_when_done(future: Any, folder: Path, ticket: Ticket) -> None:
    """Remove ``folder`` and free ``ticket`` now, or when ``future`` (still running) ends."""

    def finish(_: Any = None) -> None:
        remove_folder(folder)
        ticket.release()

    if future is None or future.done():
        finish()
    else:
        future.add_done_callback(finish)


def create_app(predictor: Predictor, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``predictor`` (its state is ``app.state.server``: :class:`ServerState`)."""
    settings = settings or ServerSettings()
    state = ServerState(predictor, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            state.close()

    def require_token(request: Request) -> None:
        if settings.token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), settings.token.encode()):
            raise RequestProblem(401, "missing or wrong bearer token: send the header 'Authorization: Bearer TOKEN'",
                                 {"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="medtextseg", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.server = state
    router = APIRouter(dependencies=[Depends(require_token)])

    @app.exception_handler(RequestProblem)
    async def refused(_: Request, error: RequestProblem) -> JSONResponse:
        return problem(error.status, error.detail, error.headers)

    @app.exception_handler(MedTextSegError)
    async def bad_input(_: Request, error: MedTextSegError) -> JSONResponse:
        return problem(*error_of(error))

    @app.exception_handler(ClientDisconnect)
    async def gone(_: Request, __: ClientDisconnect) -> JSONResponse:
        return problem(400, "the client closed the connection during the upload")

    @app.exception_handler(Exception)
    async def failed(_: Request, error: Exception) -> JSONResponse:
        return problem(*error_of(error))

    @router.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "medtextseg_version": __version__, "model": state.model,
                "limits": {"max_upload_bytes": state.limits.max_bytes, "max_prompts": state.limits.max_prompts,
                           "queue": state.queue.limit, "queued_or_running": state.queue.admitted,
                           "token": settings.token is not None}}

    @router.post("/segment")
    async def segment(request: Request):
        ticket = state.queue.admit()
        _, folder = state.folder("request")
        future = None
        try:
            upload = await read_upload(request, folder, state.limits)
            _, future = state.queue.submit(run_segmentation, predictor, upload, folder, state.limits, state.model)
            summary = await asyncio.wrap_future(future)
            if upload.output == "json":
                return summary
            stream = open(folder / RESULT_NAME, "rb")  # noqa: SIM115 (closed by _chunks)
            size = os.fstat(stream.fileno()).st_size
        finally:
            _release_when_done(future, folder, ticket)  # the open zip is read after its name is gone
        return StreamingResponse(_chunks(stream), media_type=ZIP_TYPE, headers={
            "Content-Length": str(size), "Content-Disposition": 'attachment; filename="segmentation.zip"'})

    def job_view(job: Job) -> dict[str, Any]:
        view: dict[str, Any] = {"id": job.id, "status": job.status}
        if job.status == "queued":
            view["position"] = state.queue.position(job.number)
        if job.status == "running":
            done, total = job.windows  # (0, 0) until the windows start: reading and preparing the images
            view["progress"] = {"windows_done": done, "windows": total,
                                "fraction": round(done / total, 3) if total else 0.0}
        if job.summary is not None:
            view |= {"summary": job.summary, "result": f"/jobs/{job.id}/result",
                     "files": [f"/jobs/{job.id}/files/{name}" for name in result_files(job.summary)]}
        if job.error is not None:
            view |= {"status_code": job.error[0], "detail": job.error[1]}
        return view

    def finish_job(job: Job, ticket: Ticket, future: Any) -> None:
        ticket.release()
        if job.cancelled or future.cancelled():
            job.cancelled = True
            remove_folder(job.folder)
            return
        error = future.exception()
        if error is not None:
            status, detail, _ = error_of(error)
            job.error = (status, detail)
            remove_folder(job.folder)
        else:
            job.summary = future.result()
        state.jobs.evict()

    @router.post("/jobs", status_code=202)
    async def submit_job(request: Request) -> JSONResponse:
        ticket = state.queue.admit()
        job_id, folder = state.folder("job")
        try:
            upload = await read_upload(request, folder, state.limits)
            upload.output = "zip"  # a job keeps its zip for GET /jobs/{id}/result, its summary for GET /jobs/{id}
        except BaseException:
            remove_folder(folder)
            ticket.release()
            raise
        job = Job(job_id, folder)
        state.jobs.add(job)
        job.number, job.future = state.queue.submit(run_segmentation, predictor, upload, folder, state.limits,
                                                    state.model, job.advance)
        job.future.add_done_callback(lambda future: finish_job(job, ticket, future))
        return JSONResponse(job_view(job), status_code=202, headers={"Location": f"/jobs/{job_id}"})

    def find(job_id: str) -> Job:
        job = state.jobs.get(job_id)
        if job is None:
            raise RequestProblem(404, f"no job {printable(job_id)[:40]!r} (never submitted, deleted, or removed "
                                      f"as one of more than {settings.keep_jobs} finished jobs)")
        return job

    def finished(job: Job) -> dict[str, Any]:
        if job.summary is None:
            reason = f": {job.error[1]}" if job.error else f"; GET /jobs/{job.id} until its status is done"
            raise RequestProblem(409, f"job {job.id} is {job.status}{reason}")
        return job.summary

    @router.get("/jobs")
    def list_jobs() -> dict[str, Any]:
        return {"jobs": [job_view(job) for job in state.jobs.all()]}

    @router.get("/jobs/{job_id}")
    def job_status(job_id: str) -> dict[str, Any]:
        return job_view(find(job_id))

    @router.get("/jobs/{job_id}/result")
    def job_result(job_id: str) -> FileResponse:
        job = find(job_id)
        finished(job)
        return FileResponse(job.folder / RESULT_NAME, media_type=ZIP_TYPE, filename=f"segmentation-{job.id}.zip")

    @router.get("/jobs/{job_id}/files/{name}")
    def job_file(job_id: str, name: str) -> FileResponse:
        job = find(job_id)
        names = result_files(finished(job))
        if name not in names:  # only names the server chose: a request's text never becomes a path
            raise RequestProblem(404, f"job {job.id} has no file {printable(name)[:80]!r}; it has "
                                      f"{', '.join(names)}")
        return FileResponse(job.folder / OUTPUT_FOLDER / name,
                            media_type="application/json" if name.endswith(".json") else NIFTI_TYPE, filename=name)

    @router.delete("/jobs/{job_id}")
    def delete_job(job_id: str) -> dict[str, Any]:
        job = state.jobs.pop(job_id)
        if job is None:
            find(job_id)
        if job.future is not None and not job.future.done():
            job.cancelled = True  # a queued job is dropped now; a running one is discarded when it ends
            job.future.cancel()
            return {"id": job.id, "status": "cancelled"}
        remove_folder(job.folder)
        return {"id": job.id, "status": "deleted"}

    @app.get("/", include_in_schema=False)
    def viewer() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (checked before the model is loaded).

    Raises:
        MedTextSegError: the address cannot be used (in use, not this machine's, a privileged port).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, protocol, _, address = infos[0]
        sock = socket.socket(family, kind, protocol)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        raise MedTextSegError(f"--host {host} --port {port}: cannot listen there "
                              f"({error.strerror or error}); choose another port or address") from None
    sock.listen(128)
    return sock


def read_token(token_file: Path | None) -> str | None:
    """The bearer token: the first line of ``token_file``, else the environment's ``MEDTEXTSEG_TOKEN``, else None.

    Raises:
        MedTextSegError: the file cannot be read, or the token is empty or has spaces or control characters.
    """
    if token_file is not None:
        try:
            text, source = Path(token_file).read_text(encoding="utf-8"), f"--token-file {token_file}"
        except (OSError, UnicodeDecodeError) as error:
            raise MedTextSegError(f"--token-file {token_file}: cannot read it ({type(error).__name__})") from None
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
    elif "MEDTEXTSEG_TOKEN" in os.environ:
        token, source = os.environ["MEDTEXTSEG_TOKEN"].strip(), "MEDTEXTSEG_TOKEN"
    else:
        return None
    if not token or not all(char.isprintable() and not char.isspace() for char in token):
        raise MedTextSegError(f"{source}: the token is empty or has spaces or control characters; use a "
                              "random string, e.g. from `python -c 'import secrets; print(secrets.token_urlsafe())'`")
    return token


def serve(model: ModelArgument, host: str = "127.0.0.1", port: int = 8000, settings: ServerSettings | None = None,
          device: str | None = None, threshold: float | None = None, log_level: str = "info") -> None:
    """Load ``model`` once (a run, a checkpoint, a package, or several of them / a folder of fold runs: their
    ensemble) and serve it on ``host:port`` until interrupted (Ctrl-C)."""
    import uvicorn

    settings = settings or ServerSettings()
    sock = listening_socket(host, port)
    predictor = load_predictor(model, device, threshold=threshold)
    app = create_app(predictor, settings)
    channels = ", ".join(predictor.channel_names) or f"{predictor.config.image_channels} channel(s)"
    shown = f"[{host}]" if ":" in host else host
    given = [model] if isinstance(model, str | Path) else list(model)
    sources = [str(checkpoint.parent) for checkpoint, _ in predictor.sources]  # a folder of runs: each run
    served = str(given[0]) if len(sources) == 1 else f"an ensemble of {len(sources)} ({', '.join(sources)})"
    print(f"medtextseg serve: {served} ({channels}) on http://{shown}:{sock.getsockname()[1]} "
          f"({'bearer token required' if settings.token else 'no token'}); Ctrl-C stops", flush=True)
    if settings.token is None and host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host} without a token: anyone who reaches this port can use the model "
              "(--token-file or MEDTEXTSEG_TOKEN)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, server_header=False))
    server.run(sockets=[sock])

"""One case's upload: a ``multipart/form-data`` body streamed into server-named files, bounded at every step.

* The body is counted as it arrives: a declared ``Content-Length`` over the limit is refused before any of it is
  read, and a body that grows past the limit (chunked, say) is refused as soon as it does (413); nothing is
  buffered in memory but the form fields (each at most ``max_field_bytes``).
* A file part is written to ``FOLDER/upload-{n}{ending}``: the name the client sent is used for its ending alone
  (checked against :data:`ACCEPTED_ENDINGS`) and, escaped, in messages; it never reaches the filesystem.
* A ``.zip`` part is expanded (by :func:`channel_files`, in the worker) into server-named files too: the members
  are read, never extracted by their names; their number and unpacked size are bounded.

Every refusal is a :class:`RequestProblem`: an HTTP status and one line.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from medtextseg.data.prompts import validate_prompt
from medtextseg.utils.errors import printable

#: endings a file part may have (checked case-insensitively on the client's file name)
IMAGE_ENDINGS = (".nii.gz", ".nii", ".mha", ".nrrd")
ACCEPTED_ENDINGS = (*IMAGE_ENDINGS, ".zip")
ACCEPTED_TEXT = "NIfTI (.nii, .nii.gz), MHA (.mha), NRRD (.nrrd), or a .zip of channel files or of a DICOM series"
#: the form fields a request may have besides its ``image`` files
FIELDS = ("prompt", "threshold", "probabilities", "uncertainty", "output")
OUTPUTS = ("zip", "json")
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class RequestProblem(Exception):
    """A request the server refuses: the HTTP ``status``, a one-line ``detail`` and optional response headers."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on one request: its body (bytes), prompts, file parts, each form field, and a zip's members and
    unpacked bytes (all zips of the request together; default 4 x ``max_bytes``)."""

    max_bytes: int
    max_prompts: int = 16
    max_files: int = 16
    max_field_bytes: int = 4096
    max_zip_members: int = 10_000
    max_unpacked_bytes: int | None = None

    @property
    def unpacked_bytes(self) -> int:
        return self.max_unpacked_bytes if self.max_unpacked_bytes is not None else 4 * self.max_bytes


def too_large(limits: UploadLimits) -> RequestProblem:
    """413: nothing more of the body is stored or parsed (what the client still sends is read and dropped, so that
    a client that sends before it reads still gets this answer)."""
    return RequestProblem(413, f"the upload is larger than this server's limit of {megabytes(limits.max_bytes)} "
                               "(medtextseg serve --max-upload-mb)")


def megabytes(count: int) -> str:
    return f"{count / 1e6:.3g} MB"


@dataclass
class UploadedFile:
    """One file part: its place among the request's files (1-based), the client's name (escaped, for messages
    only), the server's path for it and its ending."""

    number: int
    name: str
    path: Path
    ending: str

    @property
    def label(self) -> str:
        return f"upload {self.number} ({self.name!r})"


@dataclass
class SegmentRequest:
    """A parsed request: the image files in channel order, the prompts, and the options."""

    files: list[UploadedFile]
    prompts: list[str]
    threshold: float | None = None
    probabilities: bool = False
    uncertainty: bool = False
    output: str = "zip"
    fields: dict[str, list[str]] = field(default_factory=dict, repr=False)


def accepted_ending(name: str) -> str | None:
    """The accepted ending ``name`` has (lower case), or None."""
    lowered = name.lower()
    return next((ending for ending in ACCEPTED_ENDINGS if lowered.endswith(ending)), None)


def client_name(raw: bytes) -> str:
    """A client-sent name for messages: decoded, escaped, at most 80 characters."""
    text = printable(raw.decode("utf-8", errors="replace"))
    return text if len(text) <= 80 else f"{text[:77]}..."


class _FormReader:
    """python-multipart callbacks: file parts into server-named files, fields into bounded buffers."""

    def __init__(self, folder: Path, limits: UploadLimits) -> None:
        self.folder, self.limits = folder, limits
        self.files: list[UploadedFile] = []
        self.fields: dict[str, list[str]] = {}
        self.ended = False
        self._header_name, self._header_value = bytearray(), bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._field_name: str | None = None
        self._field = bytearray()
        self._stream: Any = None

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end, "on_end": self.on_end}

    def on_part_begin(self) -> None:
        self._headers, self._field_name, self._field = {}, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name, self._header_value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = client_name(options.get(b"name", b""))
        if b"filename" not in options:
            if name not in FIELDS:
                raise RequestProblem(400, f"unknown form field {name!r}: send the images as file parts named "
                                          f"'image' and the fields {', '.join(FIELDS)}")
            if sum(len(values) for values in self.fields.values()) >= self.limits.max_prompts + len(FIELDS):
                raise RequestProblem(400, f"too many form fields (at most {self.limits.max_prompts} prompts)")
            self._field_name = name
            return
        filename = client_name(options[b"filename"])
        if name != "image":
            raise RequestProblem(400, f"file {filename!r} sent as {name!r}: send each image as a part named 'image'")
        ending = accepted_ending(filename)
        if ending is None:
            raise RequestProblem(400, f"upload {len(self.files) + 1} ({filename!r}): not an accepted file name "
                                      f"ending; send {ACCEPTED_TEXT}")
        if len(self.files) >= self.limits.max_files:
            raise RequestProblem(400, f"more than {self.limits.max_files} files in one request")
        upload = UploadedFile(len(self.files) + 1, filename, self.folder / f"upload-{len(self.files) + 1}{ending}",
                              ending)
        self._stream = open(upload.path, "xb")  # noqa: SIM115 (closed in on_part_end or close())
        self.files.append(upload)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._stream is not None:
            self._stream.write(data[start:end])
        elif self._field_name is not None:
            self._field += data[start:end]
            if len(self._field) > self.limits.max_field_bytes:
                raise RequestProblem(400, f"form field {self._field_name!r} is longer than "
                                          f"{self.limits.max_field_bytes} bytes")

    def on_part_end(self) -> None:
        if self._stream is not None:
            self.close()
        elif self._field_name is not None:
            try:
                value = self._field.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestProblem(400, f"form field {self._field_name!r} is not UTF-8 text") from None
            self.fields.setdefault(self._field_name, []).append(value)

    def on_end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


async def read_upload(request: Any, folder: Path, limits: UploadLimits) -> SegmentRequest:
    """Stream a Starlette ``request``'s multipart body into ``folder`` (created) and parse its fields.

    Raises:
        RequestProblem: 415 not multipart/form-data; 413 a body over ``limits.max_bytes`` (declared or counted);
            400 a malformed body, an unknown field, a file of another ending, a missing image or prompt, a bad
            option value.
        MedTextSegError: a prompt that cannot be used (:func:`~medtextseg.data.prompts.validate_prompt`).
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise RequestProblem(415, "send the case as multipart/form-data (curl -F image=@t2w.nii.gz -F "
                                  "prompt='...')")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise too_large(limits)  # before a byte of the body is read
    folder.mkdir(parents=True, exist_ok=True)
    reader = _FormReader(folder, limits)
    parser = MultipartParser(options[b"boundary"], reader.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limits.max_bytes:
                raise too_large(limits)
            parser.write(chunk)
        parser.finalize()
    except FormParserError as error:
        raise RequestProblem(400, f"malformed multipart/form-data body ({printable(str(error))[:200]})") from None
    finally:
        reader.close()
    if not reader.ended:
        raise RequestProblem(400, "malformed multipart/form-data body: it ends before its closing boundary")
    return _segment_request(reader.files, reader.fields, limits)


def _one(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name, [])
    if len(values) > 1:
        raise RequestProblem(400, f"form field {name!r} given {len(values)} times; give it once")
    return values[0].strip() if values else None


def _flag(fields: dict[str, list[str]], name: str) -> bool:
    value = _one(fields, name)
    if value is None or value.lower() in FALSE:
        return False
    if value.lower() in TRUE:
        return True
    raise RequestProblem(400, f"form field {name!r}: expected true or false, got {printable(value)[:40]!r}")


def _segment_request(files: list[UploadedFile], fields: dict[str, list[str]], limits: UploadLimits) -> SegmentRequest:
    if not files:
        raise RequestProblem(400, "no image: send each channel of the case as a file part named 'image' "
                                  "(curl -F image=@t2w.nii.gz), in the model's channel order")
    raw_prompts = fields.get("prompt", [])
    if not raw_prompts:
        raise RequestProblem(400, "no prompt: send one or more form fields named 'prompt' "
                                  "(curl -F prompt='the prostate gland')")
    if len(raw_prompts) > limits.max_prompts:
        raise RequestProblem(400, f"{len(raw_prompts)} prompts: at most {limits.max_prompts} per request")
    prompts = [validate_prompt(p, f"prompt {i}") for i, p in enumerate(raw_prompts, start=1)]
    threshold = _one(fields, "threshold")
    if threshold is not None:
        try:
            threshold = float(threshold)
        except ValueError:
            threshold = None
        if threshold is None or not 0 < threshold < 1:
            raise RequestProblem(400, f"form field 'threshold': expected a number between 0 and 1 (exclusive), "
                                      f"got {printable(_one(fields, 'threshold'))[:40]!r}")
    output = (_one(fields, "output") or "zip").lower()
    if output not in OUTPUTS:
        raise RequestProblem(400, f"form field 'output': expected {' or '.join(OUTPUTS)}, got "
                                  f"{printable(output)[:40]!r}")
    return SegmentRequest(files, prompts, threshold, _flag(fields, "probabilities"), _flag(fields, "uncertainty"),
                          output, fields)


# ------------------------------------------------------------------ zip uploads
def _natural(text: str) -> list[Any]:
    """Sort key: digits by value ("2" before "10"), the rest case-insensitively."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    """A member's name as a path (for its folder and ending only: it never names a file of the server)."""
    return PurePosixPath(info.filename.replace("\\", "/"))


def _members(upload: UploadedFile, limits: UploadLimits) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """The zip's file members (folders, hidden files and macOS resource forks left out), in name order."""
    try:
        archive = zipfile.ZipFile(upload.path)
    except (zipfile.BadZipFile, OSError):
        raise RequestProblem(400, f"{upload.label}: not a readable zip file") from None
    members = [info for info in archive.infolist() if not info.is_dir()
               and not _member_path(info).name.startswith(".") and "__MACOSX" not in _member_path(info).parts]
    if not members:
        archive.close()
        raise RequestProblem(400, f"{upload.label}: the zip holds no file")
    if len(members) > limits.max_zip_members:
        archive.close()
        raise RequestProblem(400, f"{upload.label}: {len(members)} files in the zip, more than "
                                  f"{limits.max_zip_members}")
    if any(info.flag_bits & 0x1 for info in members):
        archive.close()
        raise RequestProblem(400, f"{upload.label}: the zip is encrypted")
    return archive, sorted(members, key=lambda info: _natural(info.filename))


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, destination: Path, budget: list[int],
                 upload: UploadedFile, limits: UploadLimits) -> None:
    """Copy one member to ``destination`` (a server name), counting its bytes against ``budget[0]``."""
    try:
        with archive.open(info) as source, open(destination, "xb") as target:
            while block := source.read(1 << 20):
                budget[0] -= len(block)
                if budget[0] < 0:
                    raise RequestProblem(413, f"{upload.label}: the zip unpacks to more than "
                                              f"{megabytes(limits.unpacked_bytes)}, this server's limit")
                target.write(block)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as error:
        raise RequestProblem(400, f"{upload.label}: a member of the zip cannot be read "
                                  f"({type(error).__name__})") from None


def channel_files(files: list[UploadedFile], folder: Path, limits: UploadLimits) -> list[tuple[Path, str]]:
    """The request's channel inputs, in order, each with its label for messages: an image file as uploaded; a zip
    of image files, one channel per member in name order (digits by value: ``case_0000``, ``case_0001``); a zip of
    other files, one DICOM series per folder of the zip (folders in name order, a flat zip is one series). Zip
    members are written under server names in ``folder``.

    Raises:
        RequestProblem: an unreadable, empty, encrypted or mixed zip (400), one that unpacks past the limit (413).
    """
    channels: list[tuple[Path, str]] = []
    budget = [limits.unpacked_bytes]
    for upload in files:
        if upload.ending != ".zip":
            channels.append((upload.path, upload.label))
            continue
        archive, members = _members(upload, limits)
        with archive:
            endings = [accepted_ending(info.filename) for info in members]
            images = [ending in IMAGE_ENDINGS for ending in endings]
            if any(images) and not all(images):
                raise RequestProblem(400, f"{upload.label}: the zip mixes image files ({ACCEPTED_TEXT}) with other "
                                          "files; send channel files alone, or DICOM series alone")
            if all(images):
                for number, (info, ending) in enumerate(zip(members, endings, strict=True), start=1):
                    path = folder / f"upload-{upload.number}-member-{number}{ending}"
                    _copy_member(archive, info, path, budget, upload, limits)
                    channels.append((path, f"{upload.label} member {client_name(info.filename.encode())!r}"))
                continue
            series: dict[str, list[zipfile.ZipInfo]] = {}
            for info in members:
                series.setdefault(str(_member_path(info).parent), []).append(info)
            for number, (parent, slices) in enumerate(sorted(series.items(), key=lambda item: _natural(item[0])),
                                                      start=1):
                target = folder / f"upload-{upload.number}-series-{number}"
                target.mkdir()
                for index, info in enumerate(slices, start=1):
                    _copy_member(archive, info, target / f"slice-{index:05d}.dcm", budget, upload, limits)
                where = "" if parent == "." else f" folder {client_name(parent.encode())!r}"
                channels.append((target, f"{upload.label}{where} (DICOM series)"))
    return channels


def remove_folder(folder: Path) -> None:
    """Remove a request's folder and all in it (never fails: the caller is cleaning up)."""
    shutil.rmtree(folder, ignore_errors=True)

"""The model package's format, and reading one: a ``.zip`` checked member by member before anything is used.

``medtextseg export`` writes it (:mod:`medtextseg.training.model_package`, which states the members);
``predict -m model.zip`` and ``load_model("model.zip")`` read it in place through
:func:`medtextseg.models.trained.load_checkpoint`. Reading refuses, before any member is used: a member outside
the list (an absolute path or ``..`` says zip-slip), a symbolic link, a duplicate, an encrypted member, one over
its size bound (read with the bound, so a lying header does not help), and a member whose SHA-256 differs from
``metadata.json``'s. The digests catch a damaged or edited file, not a forger, who can rewrite them: what keeps a
hostile package from running code is that the weights load with ``torch.load(weights_only=True)``
(:func:`medtextseg.models.checkpoint.read_state`), as every checkpoint does.

Why in ``models``: a package is a checkpoint in another envelope, and a trained model is read from either one
floor below prediction, evaluation and training, which all take both.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from medtextseg.models.checkpoint import read_state
from medtextseg.utils.errors import MedTextSegError

PACKAGE_FORMAT = "medtextseg-model/1"
METADATA, CARD, WEIGHTS, CONFIG = "metadata.json", "README.md", "best.pt", "config.yaml"
PLAN, CALIBRATION, EVALUATION = "plans.json", "calibration_presence.json", "evaluation/summary.json"
MEMBERS = (METADATA, CARD, WEIGHTS, CONFIG, PLAN, CALIBRATION, EVALUATION)
REQUIRED = (METADATA, CARD, WEIGHTS, CONFIG)
# bounds on what a member may hold once inflated: a default 3D model is a few MB, text files a few KB
MAX_WEIGHTS_BYTES = 2 * 1024**3
MAX_TEXT_BYTES = 16 * 1024**2


@dataclass
class ModelPackage:
    """A package read and checked: its members' bytes, its metadata and the weights' state."""

    path: Path
    metadata: dict[str, Any]
    files: dict[str, bytes] = field(repr=False)
    state: dict[str, Any] = field(repr=False)


def is_model_package(path: str | Path) -> bool:
    """Whether ``path`` names a model package: a file ending ``.zip`` (a torch checkpoint is a zip too, so the
    ending, not the content, tells them apart)."""
    return Path(path).suffix.lower() == ".zip" and Path(path).is_file()


# ------------------------------------------------------------------ reading
def _bound(name: str) -> int:
    return MAX_WEIGHTS_BYTES if name == WEIGHTS else MAX_TEXT_BYTES


def _check_member(path: Path, info: zipfile.ZipInfo, seen: set[str]) -> None:
    """Refuse a member by its header alone: before a byte of it is read."""
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise MedTextSegError(f"{path}: member {name!r} points outside the package (an absolute path or '..'); "
                              "refused, nothing was extracted")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise MedTextSegError(f"{path}: member {name!r} is a symbolic link; refused, nothing was extracted")
    if name not in MEMBERS:
        raise MedTextSegError(f"{path}: unexpected member {name!r}; a model package holds only "
                              f"{', '.join(MEMBERS)}")
    if name in seen:
        raise MedTextSegError(f"{path}: member {name!r} is in it twice; refused")
    if info.flag_bits & 0x1:
        raise MedTextSegError(f"{path}: member {name!r} is encrypted; refused")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise MedTextSegError(f"{path}: member {name!r} uses compression method {info.compress_type}; a model "
                              "package is stored or deflated")
    if info.file_size > _bound(name):
        raise MedTextSegError(f"{path}: member {name!r} is {info.file_size} bytes, over the bound of "
                              f"{_bound(name)}; refused")
    seen.add(name)


def _read_bounded(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes, read no further than its bound (its header's size could lie)."""
    bound = _bound(info.filename)
    with archive.open(info) as handle:
        data = handle.read(bound + 1)
    if len(data) > bound:
        raise MedTextSegError(f"{path}: member {info.filename!r} inflates to over {bound} bytes; refused")
    return data


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_package(path: str | Path) -> ModelPackage:
    """Open a model package and check it member by member, then load its weights (weights only).

    Raises:
        MedTextSegError: not a zip file; a member outside the list (zip-slip), a link, a duplicate, encrypted or
            over its bound; a missing member; a ``metadata.json`` that is not this format; a member whose SHA-256
            differs from the one recorded; weights that would run code or do not load.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise MedTextSegError(f"{path}: not a model package ({type(error).__name__}: {error}); a model package is "
                              "the .zip medtextseg export writes") from None
    with archive:
        infos, seen = archive.infolist(), set()
        for info in infos:  # every header first: nothing is read from a package with one bad member
            _check_member(path, info, seen)
        missing = [name for name in REQUIRED if name not in seen]
        if missing:
            raise MedTextSegError(f"{path}: not a model package: no {', '.join(missing)} (medtextseg export writes "
                                  f"{', '.join(REQUIRED)})")
        try:
            files = {info.filename: _read_bounded(path, archive, info) for info in infos}
        except (zipfile.BadZipFile, OSError, EOFError) as error:  # CRC mismatch, truncated data
            raise MedTextSegError(f"{path}: a damaged zip file ({error}); get the package again") from None
    metadata = _check_metadata(path, files)
    listed = metadata["medtextseg"]["files"]
    for name, data in files.items():
        if name == METADATA:
            continue
        if name not in listed:
            raise MedTextSegError(f"{path}: member {name!r} is not listed in {METADATA}; refused")
        if sha256(data) != listed[name].get("sha256"):
            raise MedTextSegError(f"{path}: {name} does not match the SHA-256 that {METADATA} records (changed or "
                                  "damaged after export); refused: get the package again from its source")
    absent = [name for name in listed if name not in files]
    if absent:
        raise MedTextSegError(f"{path}: {METADATA} lists {', '.join(absent)}, which the package lacks")
    state = read_state(io.BytesIO(files[WEIGHTS]), f"{path}:{WEIGHTS}")
    return ModelPackage(path, metadata, files, state)


def _check_metadata(path: Path, files: dict[str, bytes]) -> dict[str, Any]:
    try:
        metadata = json.loads(files[METADATA].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MedTextSegError(f"{path}: its {METADATA} is not JSON text") from None
    section = metadata.get("medtextseg") if isinstance(metadata, dict) else None
    if not isinstance(section, dict) or section.get("format") != PACKAGE_FORMAT:
        raise MedTextSegError(f"{path}: its {METADATA} has no medtextseg section of format {PACKAGE_FORMAT!r}; "
                              "not a package medtextseg export wrote")
    listed = section.get("files")
    if not isinstance(listed, dict) or not all(isinstance(v, dict) for v in listed.values()):
        raise MedTextSegError(f"{path}: its {METADATA} lists no file digests (medtextseg.files)")
    return metadata


__all__ = ["CALIBRATION", "CARD", "CONFIG", "EVALUATION", "MEMBERS", "METADATA", "PACKAGE_FORMAT", "PLAN", "REQUIRED",
           "WEIGHTS", "ModelPackage", "is_model_package", "read_package", "sha256"]

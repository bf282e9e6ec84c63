"""Which cases a ``predict`` run segments: an nnU-Net folder, a text file of cases, or a jobs file.

Three ways to name many cases (each one case = its channel files, in the model's channel order):

* a folder in the nnU-Net layout, ``{case}_{0000..}.{ext}`` (``imagesTs``): the files are grouped by case and
  sorted by channel number;
* a text file (``.txt``), one case per line: its channel files (or DICOM series folders), separated by tabs when
  the line has one (paths with spaces), else by spaces; ``#`` starts a comment;
* a jobs file (``.json``: a list of objects; ``.jsonl``: one object per line), per case ``images`` (its channel
  files), optionally ``case`` (its name) and ``prompts`` (its own prompts instead of ``-p``).

Relative paths in a text or jobs file are read from the file's own folder, so the file travels with its data. A
case's name is its folder name in the output: it comes from ``case`` or the first channel file (``x_0000.nii.gz``
-> ``x``; a DICOM series folder -> the folder's name). One ``-i`` that is none of these (a single image file or
DICOM series folder) is the single-case mode of ``predict``: :func:`requested_cases` returns None for it.

>>> cases = requested_cases([Path("imagesTs")], None, ["the prostate gland"])  # doctest: +SKIP
>>> cases[0]  # doctest: +SKIP
CaseInput(case='synth_105', images=(PosixPath('imagesTs/synth_105_0000.nii.gz'), ...), prompts=('the prostate gland',))
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medtextseg.data.dicom_series import is_dicom_series
from medtextseg.data.prompts import validate_prompt
from medtextseg.data.sitk_reader import ITK_ENDINGS
from medtextseg.utils.errors import MedTextSegError
from medtextseg.utils.json_files import json_type

# channel files of a case folder: the image formats predict reads (".img" is the data file of a ".hdr" header)
CHANNEL_ENDINGS = tuple(sorted((e for e in ITK_ENDINGS if e != ".img"), key=len, reverse=True))
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})(?P<ending>"
                           + "|".join(re.escape(e) for e in CHANNEL_ENDINGS) + r")$", re.IGNORECASE)
JOB_KEYS = ("case", "images", "prompts")
# names a case folder may not take: the run's index lives beside the case folders
RESERVED_CASE_NAMES = ("predictions.json",)


@dataclass(frozen=True)
class CaseInput:
    """One case to segment.

    Attributes:
        case: its name, the name of its output folder (no path separator, not starting with a dot).
        images: its channel files (or DICOM series folders), in the model's channel order.
        prompts: what to segment in it, stripped; empty means the run's ``-p`` prompts.
        source: where it was named (``FOLDER``, ``cases.txt line 3``, ``jobs.jsonl line 2``), for messages.
    """

    case: str
    images: tuple[Path, ...]
    prompts: tuple[str, ...] = ()
    source: str = ""


def channel_file_parts(path: str | Path) -> tuple[str, int, str] | None:
    """``(case, channel, ending)`` of an nnU-Net channel file name, or None when the name is not one.

    >>> channel_file_parts("imagesTs/prostate_012_0001.nii.gz")
    ('prostate_012', 1, '.nii.gz')
    >>> channel_file_parts("t2w.nii.gz") is None
    True
    """
    found = _CHANNEL_FILE.match(Path(path).name)
    return None if found is None else (found["case"], int(found["channel"]), found["ending"])


def is_case_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder holding at least one nnU-Net channel file (``{case}_0000.nii.gz``).

    A folder without one (DICOM slices) stays a DICOM series, as ``predict`` has always read it.
    """
    path = Path(path)
    return path.is_dir() and any(not entry.name.startswith(".") and channel_file_parts(entry) is not None
                                 and entry.is_file() for entry in path.iterdir())


def check_case_name(case: object, where: str) -> str:
    """Return ``case`` when it can name an output folder, else raise naming ``where`` and the rule."""
    if not isinstance(case, str) or not case.strip():
        raise MedTextSegError(f"{where}: the case name must be non-empty text, got {case!r}")
    if case != case.strip() or case.startswith(".") or any(c in case for c in "/\\\0") \
            or not case.isprintable() or case in RESERVED_CASE_NAMES:
        raise MedTextSegError(f"{where}: the case name {case!r} cannot name an output folder (no slash, no "
                              "leading dot or space, not 'predictions.json'); e.g. 'patient_001'")
    return case


def case_name_of(path: Path) -> str:
    """A case's default name from its first channel: ``x_0000.nii.gz`` -> ``x``, ``t2w.mha`` -> ``t2w``, a DICOM
    series folder -> its name (``FOLDER/SERIES_UID`` -> ``FOLDER_SERIES_UID``)."""
    parts = channel_file_parts(path)
    if parts is not None:
        return parts[0]
    if is_dicom_series(path) and not path.is_dir():  # FOLDER/SERIES_UID
        return f"{path.parent.name}_{path.name}"
    name = path.name
    ending = next((e for e in CHANNEL_ENDINGS if name.lower().endswith(e)), "")
    return name[: len(name) - len(ending)] or name


def cases_from_folder(folder: Path) -> list[CaseInput]:
    """The cases of an nnU-Net folder, sorted by name, each with its channel files sorted by channel number.

    Raises:
        MedTextSegError: a case with two channel files of one number (two formats), or channel files in
            different formats.
    """
    grouped: dict[str, dict[int, Path]] = {}
    endings: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        parts = channel_file_parts(path)
        if parts is None or path.name.startswith(".") or not path.is_file():
            continue
        case, channel, ending = parts
        if channel in grouped.setdefault(case, {}) or endings.setdefault(case, ending.lower()) != ending.lower():
            raise MedTextSegError(f"{folder}: case {case!r} has channel files in two formats "
                                  f"({endings[case]} and {ending}); keep one format per case")
        grouped[case][channel] = path
    return [CaseInput(check_case_name(case, f"{folder}"), tuple(channels[c] for c in sorted(channels)), (),
                      str(folder)) for case, channels in sorted(grouped.items())]


def _resolve(base: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def cases_from_list(list_file: Path) -> list[CaseInput]:
    """The cases of a text file: one per line, its channel files separated by tabs (or spaces)."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise MedTextSegError(f"{list_file}: cannot read the list of cases ({type(error).__name__})") from None
    cases = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        images = tuple(_resolve(list_file.parent, item.strip())
                       for item in (text.split("\t") if "\t" in text else text.split()) if item.strip())
        where = f"{list_file} line {number}"
        cases.append(CaseInput(check_case_name(case_name_of(images[0]), where), images, (), where))
    if not cases:
        raise MedTextSegError(f"{list_file}: no cases listed (one line per case: its channel files)")
    return cases


def _strings(value: object, key: str, where: str) -> list[str]:
    """A job's ``images`` or ``prompts``: a string or a non-empty list of strings."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise MedTextSegError(f"{where}: {key!r} must be a string or a non-empty list of strings, got "
                              f"{json_type(value)}")
    return values


def cases_from_jobs(jobs_file: Path) -> list[CaseInput]:
    """The cases of a jobs file (``.json``: a list of objects; ``.jsonl``: one object per line).

    Raises:
        MedTextSegError: an unreadable file, invalid JSON, a job that is not an object, an unknown key (the valid
            ones are listed), no ``images``, a bad ``case`` name or prompt.
    """
    if not jobs_file.is_file():
        raise MedTextSegError(f"--jobs {jobs_file}: file not found")
    suffix = jobs_file.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise MedTextSegError(f"--jobs {jobs_file}: expected a .json file (a list of jobs) or a .jsonl file "
                              "(one job per line)")
    text = jobs_file.read_text(encoding="utf-8")
    jobs: list[tuple[str, object]] = []
    try:
        if suffix == ".jsonl":
            jobs = [(f"{jobs_file} line {n}", json.loads(line))
                    for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
        else:
            listed = json.loads(text)
            if not isinstance(listed, list):
                raise MedTextSegError(f"{jobs_file}: expected a list of jobs, got {json_type(listed)}")
            jobs = [(f"{jobs_file} job {n}", job) for n, job in enumerate(listed, start=1)]
    except json.JSONDecodeError as error:
        raise MedTextSegError(f"{jobs_file}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not jobs:
        raise MedTextSegError(f"{jobs_file}: no jobs in it")
    cases = []
    for where, job in jobs:
        if not isinstance(job, dict):
            raise MedTextSegError(f"{where}: a job must be an object like {{\"images\": [...], \"prompts\": "
                                  f"[...]}}, got {json_type(job)}")
        unknown = sorted(set(job) - set(JOB_KEYS))
        if unknown:
            raise MedTextSegError(f"{where}: unknown key {unknown[0]!r}; a job has {', '.join(JOB_KEYS)}")
        if "images" not in job:
            raise MedTextSegError(f"{where}: no 'images' (the case's channel files, in the model's order)")
        images = tuple(_resolve(jobs_file.parent, p) for p in _strings(job["images"], "images", where))
        prompts = tuple(validate_prompt(p, f"{where} prompt {i + 1}")
                        for i, p in enumerate(_strings(job["prompts"], "prompts", where))) if "prompts" in job else ()
        case = check_case_name(job["case"], where) if "case" in job else check_case_name(case_name_of(images[0]),
                                                                                           where)
        cases.append(CaseInput(case, images, prompts, where))
    return cases


def requested_cases(inputs: Sequence[Path], jobs: Path | None, prompts: Sequence[str]) -> list[CaseInput] | None:
    """The cases a ``predict`` call names, each with its prompts; None for the single-case mode (``-i`` files).

    Args:
        inputs: the ``-i`` paths: one case folder or ``.txt`` file for many cases; else the channels of one case.
        jobs: a ``--jobs`` file (then ``inputs`` must be empty).
        prompts: the ``-p`` prompts: every case's, or those of a job without its own.

    Raises:
        MedTextSegError: ``-i`` and ``--jobs`` together, a case folder among several ``-i``, no input, no prompt,
            two cases of one name (both sources named), a case without prompts, an unusable prompt or case name.
    """
    inputs = [Path(p) for p in inputs]
    if jobs is not None:
        if inputs:
            raise MedTextSegError("--jobs names every case's files: give -i or --jobs, not both")
        cases = cases_from_jobs(Path(jobs))
    elif len(inputs) == 1 and is_case_folder(inputs[0]):
        cases = cases_from_folder(inputs[0])
    elif len(inputs) == 1 and inputs[0].suffix.lower() == ".txt" and inputs[0].is_file():
        cases = cases_from_list(inputs[0])
    else:
        many = next((p for p in inputs if is_case_folder(p)), None)
        if many is not None and len(inputs) > 1:
            raise MedTextSegError(f"-i {many}: a folder of cases is given alone (one -i); several -i are the "
                                  "channel files of one case")
        if not inputs:
            raise MedTextSegError("no input: give -i (image files, a folder of cases or a .txt list of cases) or "
                                  "--jobs")
        if not prompts:
            raise MedTextSegError("no prompt given: pass at least one, e.g. -p 'the prostate gland'")
        return None
    default = tuple(validate_prompt(p, f"prompt {i + 1}") for i, p in enumerate(prompts))
    seen: dict[str, CaseInput] = {}
    named = []
    for item in cases:
        other = seen.get(item.case.casefold())  # Case_A and case_A share a folder where names ignore case
        if other is not None:
            raise MedTextSegError(f"{item.source}: case {item.case!r} is also named by {other.source}"
                                  f"{f' (as {other.case!r})' if other.case != item.case else ''}; name each case "
                                  "once (a jobs file can set 'case')")
        seen[item.case.casefold()] = item
        if not item.prompts and not default:
            raise MedTextSegError(f"{item.source}: case {item.case!r} has no prompt: pass -p 'the prostate "
                                  "gland' (every case) or give the job its own 'prompts'")
        named.append(item if item.prompts else CaseInput(item.case, item.images, default, item.source))
    return named


def check_channels(case: CaseInput, in_channels: int, channel_names: Sequence[str] = ()) -> None:
    """Raise one line naming the case when its channel files do not match the model's ``in_channels``.

    Files named ``{case}_{NNNN}`` must be numbered 0000 to ``in_channels - 1``, with no gap.
    """
    names = f" ({', '.join(channel_names)})" if channel_names else ""
    numbers = [parts[1] for parts in map(channel_file_parts, case.images) if parts is not None]
    found = ", ".join(p.name for p in case.images)
    if len(case.images) != in_channels:
        raise MedTextSegError(f"case {case.case!r} ({case.source}): {len(case.images)} channel file(s) ({found}), "
                              f"the model takes {in_channels}{names}, one per channel, in that order")
    if len(numbers) == len(case.images) and numbers != list(range(in_channels)):
        raise MedTextSegError(f"case {case.case!r} ({case.source}): channel files numbered "
                              f"{', '.join(f'{n:04d}' for n in numbers)}; expected 0000 to {in_channels - 1:04d} "
                              f"(the model's channels{names})")

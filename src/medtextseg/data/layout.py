"""A dataset folder (nnU-Net v2 raw layout + prompts.jsonl) read into records, and checked as a whole.

``load_dataset`` reads the small files (dataset.json, prompts.jsonl, splits.json) and finds the image
files; ``verify_dataset`` then reads every header and voxel once and stops on the first bad file with a
one-line message naming it, before any training time is spent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtextseg.data.dimensions import check_image_dims
from medtextseg.data.io import read_array, read_geometry
from medtextseg.data.prompts import validate_prompt
from medtextseg.data.vocabulary import VOCABULARY_FILE, PromptVocabulary
from medtextseg.utils.errors import MedTextSegError
from medtextseg.utils.json_files import json_type, read_json
from medtextseg.utils.progress import progress_bar


@dataclass
class PromptRecord:
    """One (case, prompt, target) line of prompts.jsonl.

    ``target`` is a tuple of label values (empty = absent target) or a mask file path. ``class_name`` is the
    optional ``class`` key: a class of the dataset's prompt vocabulary, whose phrasings may replace ``prompt``
    in training (``data.prompt_sampling``).
    """

    case: str
    prompt: str
    target: tuple[int, ...] | Path
    kind: str = "other"
    meta: dict[str, Any] = field(default_factory=dict)
    class_name: str | None = None

    @property
    def target_is_absent(self) -> bool:
        return isinstance(self.target, tuple) and not self.target


@dataclass
class CaseRecord:
    """A case: one image file per channel, an optional label map, and its prompts."""

    case: str
    image_paths: list[Path]
    label_path: Path | None
    prompts: list[PromptRecord] = field(default_factory=list)


@dataclass
class DatasetLayout:
    """What a dataset folder holds. ``cases`` keeps the file order; ``splits`` maps split -> case ids;
    ``vocabulary`` is read from ``prompt_vocabulary.json`` when the folder has one."""

    root: Path
    channel_names: list[str]
    labels: dict[str, int]
    file_ending: str
    spatial_dims: int
    cases: dict[str, CaseRecord]
    splits: dict[str, list[str]]
    vocabulary: PromptVocabulary | None = None

    def split(self, name: str) -> list[CaseRecord]:
        if name not in self.splits:
            raise MedTextSegError(f"{self.root}: no split {name!r}; splits are {', '.join(self.splits)}")
        return [self.cases[c] for c in self.splits[name]]

    def cases_in_splits(self) -> list[str]:
        """Every case some split names (train, val, test, ...), in split order, each once: the cases that
        training, validation and evaluation will read."""
        return list(dict.fromkeys(c for members in self.splits.values() for c in members))

    def prompt_texts(self, split: str | None = None) -> list[str]:
        cases = self.split(split) if split else list(self.cases.values())
        return sorted({p.prompt for case in cases for p in case.prompts})


def _parse_dataset_json(path: Path) -> tuple[list[str], dict[str, int], str, int]:
    meta = read_json(path, "a dataset folder needs dataset.json; see docs/dataset_format.md", expect_object=True)
    for key in ("channel_names", "labels", "file_ending"):
        if key not in meta:
            raise MedTextSegError(f"{path}: missing key {key!r}")
    channels = meta["channel_names"]
    for key, example in (("channel_names", '{"0": name, "1": name, ...}'), ("labels", '{"background": 0, ...}')):
        if not isinstance(meta[key], dict):  # nnU-Net v1 wrote lists; indexing one by "0" is a TypeError
            raise MedTextSegError(f"{path}: {key} must be an object {example}, got {json_type(meta[key])}")
    try:
        channel_names = [channels[str(i)] for i in range(len(channels))]
    except KeyError:
        raise MedTextSegError(f"{path}: channel_names keys must be '0'..'{len(channels) - 1}', got "
                              f"{sorted(channels)}") from None
    labels = {}
    for name, value in meta["labels"].items():
        if isinstance(value, list | tuple):  # nnU-Net region-based labels: take the value itself
            raise MedTextSegError(f"{path}: label {name!r} is a region {value}; declare one value per "
                                  "name and name regions as prompt targets instead")
        if not isinstance(value, int) or value < 0:
            raise MedTextSegError(f"{path}: label {name!r} must be a non-negative integer, got {value!r}")
        labels[name] = value
    own = meta.get("medtextseg", {})
    if not isinstance(own, dict):
        raise MedTextSegError(f"{path}: medtextseg must be an object, e.g. {{\"spatial_dims\": 3}}, got "
                              f"{json_type(own)}")
    spatial_dims = own.get("spatial_dims", 3)
    if type(spatial_dims) is not int or spatial_dims not in (2, 3):  # not int(): "2D" raised, 2.7 passed as 2
        raise MedTextSegError(f"{path}: medtextseg.spatial_dims must be the integer 2 or 3, got {spatial_dims!r}")
    return channel_names, labels, meta["file_ending"], spatial_dims


def _find_cases(root: Path, channel_count: int, file_ending: str) -> dict[str, CaseRecord]:
    images = root / "imagesTr"
    if not images.is_dir():
        raise MedTextSegError(f"{images}: folder not found")
    suffix_len = len("_0000") + len(file_ending)
    found: dict[str, set[int]] = {}
    for path in sorted(images.iterdir()):
        name = path.name
        if not name.endswith(file_ending) or len(name) <= suffix_len or name[-suffix_len] != "_":
            continue
        case, channel = name[:-suffix_len], name[-suffix_len + 1:-len(file_ending)]
        if channel.isdigit():
            found.setdefault(case, set()).add(int(channel))
    if not found:
        raise MedTextSegError(f"{images}: no image files named {{case}}_0000{file_ending}")
    cases = {}
    for case, channels in found.items():
        missing = sorted(set(range(channel_count)) - channels)
        if missing:
            raise MedTextSegError(f"{images / f'{case}_{missing[0]:04d}{file_ending}'}: missing channel file "
                                  f"(dataset.json declares {channel_count} channels)")
        label = root / "labelsTr" / f"{case}{file_ending}"
        cases[case] = CaseRecord(
            case, [images / f"{case}_{c:04d}{file_ending}" for c in range(channel_count)],
            label if label.is_file() else None)
    return cases


def _parse_prompts(path: Path, root: Path, cases: dict[str, CaseRecord], labels: dict[str, int],
                   vocabulary: PromptVocabulary | None = None) -> None:
    if not path.is_file():
        raise MedTextSegError(f"{path}: file not found (one JSON line per case, prompt and target)")
    declared = set(labels.values())
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:  # e.g. saved as Latin-1: name the line and the byte
        line = data[:error.start].count(b"\n") + 1
        raise MedTextSegError(f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}); save the file "
                              "as UTF-8") from None
    if not text.strip():  # nothing to train or evaluate on; later steps fail on an empty prompt set
        raise MedTextSegError(f"{path}: no prompts; write one JSON line per case, prompt and target "
                              "(see docs/dataset_format.md)")
    root_resolved = root.resolve()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise MedTextSegError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(item, dict):
            raise MedTextSegError(f"{where}: expected an object with case, prompt and target")
        for key in ("case", "prompt", "target"):
            if key not in item:
                raise MedTextSegError(f"{where}: missing key {key!r}")
        case = item["case"]
        if case not in cases:
            raise MedTextSegError(f"{where}: unknown case {case!r} (no image files in imagesTr)")
        target = item["target"]
        if isinstance(target, str):
            target_value: tuple[int, ...] | Path = root / target
            # a dataset reads only its own files: no "../", absolute path or symbolic link out of the folder
            if root_resolved not in target_value.resolve().parents:
                raise MedTextSegError(f"{where}: target {target!r} resolves outside the dataset folder {root}; "
                                      "keep mask files inside the dataset folder, named relative to it")
            if not target_value.is_file():
                raise MedTextSegError(f"{where}: target mask file {target_value} not found")
        elif target is None or isinstance(target, list):
            values = tuple(target or [])
            # JSON true is a Python int (True == 1): it would pass as label 1
            wrong = [v for v in values if type(v) is not int]
            if wrong:
                raise MedTextSegError(f"{where}: target value {_json_text(wrong[0])} is not a label value; list "
                                      "integers declared in dataset.json labels, e.g. [1, 2]")
            unknown = [v for v in values if v not in declared]
            if unknown:
                raise MedTextSegError(f"{where}: target label {unknown[0]!r} is not declared in "
                                      f"dataset.json labels {sorted(declared)}")
            if values and cases[case].label_path is None:
                raise MedTextSegError(f"{where}: target names label values but case {case!r} has no "
                                      "label file in labelsTr")
            target_value = values
        else:
            raise MedTextSegError(f"{where}: target must be a list of label values (e.g. [1, 2]), [] for an absent "
                                  f"target, or a mask file path inside the dataset folder; got {_json_text(target)}")
        prompt = validate_prompt(item["prompt"], where)
        class_name = item.get("class")
        if class_name is not None:
            if vocabulary is None:
                raise MedTextSegError(f"{where}: class {class_name!r} needs a {VOCABULARY_FILE} in {root} "
                                      "(see docs/dataset_format.md)")
            if class_name not in vocabulary:
                raise MedTextSegError(f"{where}: class {class_name!r} is not in {root / VOCABULARY_FILE} "
                                      f"(classes: {', '.join(vocabulary.classes)})")
        meta = item.get("meta", {})
        if not isinstance(meta, dict):
            raise MedTextSegError(f"{where}: meta must be an object {{\"key\": value, ...}}, got {json_type(meta)}")
        cases[case].prompts.append(PromptRecord(case, prompt, target_value, str(item.get("kind", "other")),
                                                dict(meta), class_name))


def hash_split(cases: list[str]) -> dict[str, list[str]]:
    def bucket(case: str) -> int:
        return int(hashlib.sha1(case.encode()).hexdigest(), 16) % 10

    return {"train": [c for c in cases if bucket(c) < 8], "val": [c for c in cases if bucket(c) == 8],
            "test": [c for c in cases if bucket(c) == 9]}


def load_dataset(root: str | Path) -> DatasetLayout:
    """Read a dataset folder's metadata and prompts (headers and voxels are checked by ``verify_dataset``).

    Raises:
        MedTextSegError: naming the file (and line) of the first problem found.
    """
    root = Path(root)
    if not root.is_dir():
        raise MedTextSegError(f"{root}: dataset folder not found")
    channel_names, labels, file_ending, spatial_dims = _parse_dataset_json(root / "dataset.json")
    cases = _find_cases(root, len(channel_names), file_ending)
    vocabulary_path = root / VOCABULARY_FILE
    vocabulary = PromptVocabulary.load(vocabulary_path) if vocabulary_path.is_file() else None
    _parse_prompts(root / "prompts.jsonl", root, cases, labels, vocabulary)
    splits_path = root / "splits.json"
    if splits_path.is_file():
        splits = read_json(splits_path)
        if not isinstance(splits, dict) or not all(isinstance(m, list) for m in splits.values()):
            found = json_type(splits) if not isinstance(splits, dict) else "a split that is not a list"
            raise MedTextSegError(f"{splits_path}: must be an object of split name -> case ids, e.g. "
                                  f'{{"train": [...], "val": [...], "test": [...]}}, got {found}')
        for split, members in splits.items():
            unknown = [c for c in members if c not in cases]
            if unknown:
                raise MedTextSegError(f"{splits_path}: split {split!r} names unknown case {unknown[0]!r}")
        _refuse_overlapping_splits(splits_path, splits)
    else:
        splits = hash_split(list(cases))
    return DatasetLayout(root, channel_names, labels, file_ending, spatial_dims, cases, splits, vocabulary)


def _refuse_overlapping_splits(path: Path, splits: dict[str, list[str]]) -> None:
    """Raise when two splits share a case: a case validated or tested on after training on it leaks into the
    scores. Names the first pair of splits that overlap and their shared cases (the first five, then a count)."""
    names = list(splits)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            others = set(splits[second])
            shared = [c for c in dict.fromkeys(splits[first]) if c in others]
            if shared:
                listed = ", ".join(shared[:5]) + (f" and {len(shared) - 5} more" if len(shared) > 5 else "")
                raise MedTextSegError(f"{path}: splits {first!r} and {second!r} share {len(shared)} case(s) "
                                      f"({listed}); a case in two splits leaks into the scores: keep each case in "
                                      "one split")


def _json_text(value: Any, limit: int = 40) -> str:
    """A parsed JSON value as the user wrote it (``true``, ``"x"``, ``1.5``), or its type when it is long."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else json_type(value)


def verify_case(case: CaseRecord, labels: dict[str, int], spatial_dims: int | None = None) -> None:
    """Check one case's files: a ``spatial_dims`` image per file (when given), same grid for every channel and
    the label, finite voxels, declared labels.

    Raises:
        MedTextSegError: naming the offending file.
    """
    others = case.image_paths[1:] + ([case.label_path] if case.label_path else [])
    others += [p.target for p in case.prompts if isinstance(p.target, Path)]
    if spatial_dims is not None:
        for path in [case.image_paths[0], *others]:
            check_image_dims(path, spatial_dims, "the dataset", "or declare medtextseg.spatial_dims {dims} in "
                             "dataset.json")
    reference = read_geometry(case.image_paths[0])
    for path in others:
        geometry = read_geometry(path)
        if not geometry.same_grid(reference):
            raise MedTextSegError(
                f"{path}: not on the grid of {case.image_paths[0].name} (shape {geometry.shape} vs "
                f"{reference.shape}, spacing {_fmt(geometry.spacing)} vs {_fmt(reference.spacing)}); "
                "resample it onto the first channel's grid")
    for path in case.image_paths:
        array = read_array(path)
        if not np.issubdtype(array.dtype, np.number):
            raise MedTextSegError(f"{path}: voxels are not numbers (dtype {array.dtype})")
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise MedTextSegError(f"{path}: {bad} NaN or infinite voxels; fix or mask them before use")
    if case.label_path is not None:
        values = np.unique(read_array(case.label_path))
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise MedTextSegError(f"{case.label_path}: label map has non-integer values")
        undeclared = sorted(set(values.astype(int).tolist()) - set(labels.values()))
        if undeclared:
            raise MedTextSegError(f"{case.label_path}: label value {undeclared[0]} is not declared in "
                                  f"dataset.json labels {sorted(labels.values())}")


# cases verified in this process, by the identity of their files: planning verifies the dataset, then
# the trainer does again; a file changed in between (other mtime, size or inode) is read again
_VERIFIED: set[tuple] = set()


def _case_signature(case: CaseRecord, labels: dict[str, int], spatial_dims: int) -> tuple | None:
    """What a case's verification depends on: its files' (path, inode, size, mtime), the declared labels and
    the dataset's spatial dimensions."""
    paths = [*case.image_paths, *([case.label_path] if case.label_path else []),
             *[p.target for p in case.prompts if isinstance(p.target, Path)]]
    try:
        stats = tuple((str(p), s.st_ino, s.st_size, s.st_mtime_ns) for p in paths for s in [p.stat()])
    except OSError:  # verify_case says what is wrong with it
        return None
    return stats, tuple(sorted(labels.items())), spatial_dims


def verify_dataset(layout: DatasetLayout, case_ids: list[str] | None = None, progress: bool = False) -> None:
    """Check every case (or the given ones) before any training; see ``verify_case``.

    A case whose files are unchanged since this process last verified it is not read again.
    """
    ids = case_ids if case_ids is not None else list(layout.cases)
    with progress_bar(ids, "checking dataset", progress, transient=True) as iterator:
        for case in iterator:
            signature = _case_signature(layout.cases[case], layout.labels, layout.spatial_dims)
            if signature is None or signature not in _VERIFIED:
                verify_case(layout.cases[case], layout.labels, layout.spatial_dims)
                if signature is not None:
                    _VERIFIED.add(signature)


def _fmt(values: tuple[float, ...]) -> str:
    return "x".join(f"{v:.3g}" for v in values)

"""Preprocessed cases on disk, as nnU-Net's preprocessed folder: each case is prepared once and read lazily.

A case prepared by :func:`~medtextseg.data.dataset.prepare_case` (loaded, RAS, resampled to ``data.spacing``,
z-scored) is saved as uncompressed ``.npy`` arrays, which ``np.load(mmap_mode="r")`` maps without reading
them, so training holds references (:class:`CachedCase`) and loads a case's arrays only when an item is drawn:
its memory does not grow with the number of cases. Layout::

    {cache}/preprocessed/{key}/key.json              what the key stands for (human-readable)
    {cache}/preprocessed/{key}/{case}.json           the entry: source stamps and array files (written last)
    {cache}/preprocessed/{key}/{case}.image.npy      [C, *spatial] float32, z-scored per channel
    {cache}/preprocessed/{key}/{case}.label.npy      [*spatial] label values (smallest integer dtype; int64 on load)
    {cache}/preprocessed/{key}/{case}.mask{i}.npy    [*spatial] bool, the i-th mask-file target (sorted by path)

``{key}`` is a short hash of everything that changes the arrays (:func:`preprocessed_key`: spacing, spatial
dimensions, the cache format version, MONAI's version), so another spacing is prepared into another folder and
never read by mistake. An entry holds the size and ``mtime_ns`` of every source file; a case whose files changed
is prepared anew. ``{cache}`` is ``data.cache_dir`` when set, else ``{data.root}/.medtextseg_cache``, or, when the
dataset folder is read-only, ``$MEDTEXTSEG_CACHE`` (default ``~/.cache/medtextseg``) under a name of the dataset.

Writes are atomic (``utils.atomic``): the arrays are moved into place before the entry, and an old entry is
removed before its case is rewritten, so an entry never names a missing or half-written array, even after a
kill. Two runs preparing the same case at once write the same bytes, and each file is replaced whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch

from medtextseg.data.dataset import PreparedCase, prepare_case
from medtextseg.data.layout import CaseRecord, DatasetLayout, PromptRecord
from medtextseg.data.transforms import normalization_rules
from medtextseg.utils.atomic import atomic_path, write_text_atomic
from medtextseg.utils.errors import MedTextSegError
from medtextseg.utils.progress import progress_bar

CACHE_FORMAT = 1  # raise when the arrays or the entry change meaning: old folders are then never read


@dataclass
class CachedCase:
    """A reference to a preprocessed case: its prompts in memory, its arrays on disk until :meth:`load`.

    ``image_file``: [C, *spatial] float32; ``label_file``: [*spatial] integers, or None; ``mask_files``: mask-file
    target (the prompt's ``target`` path) -> [*spatial] bool array file.
    """

    case: str
    prompts: list[PromptRecord]
    image_file: Path
    label_file: Path | None
    mask_files: dict[Path, Path]

    def load(self) -> PreparedCase:
        """The case's tensors, equal in value and dtype to ``prepare_case``'s: image [C, *spatial] float32,
        label [*spatial] int64 or None, masks [*spatial] bool. The files are memory-mapped and copied once (the
        item is cut from a copy, never from the mapping, which is read-only)."""
        image = torch.from_numpy(np.array(np.load(self.image_file, mmap_mode="r")))
        label = (torch.from_numpy(np.array(np.load(self.label_file, mmap_mode="r"), dtype=np.int64))
                 if self.label_file is not None else None)
        masks = {target: torch.from_numpy(np.array(np.load(path, mmap_mode="r")))
                 for target, path in self.mask_files.items()}
        return PreparedCase(self.case, image, label, masks, self.prompts)


@dataclass
class PreprocessedCases:
    """The result of :func:`preprocess_cases`: references in the order asked, how many were prepared now
    (the others were read from the cache), and the key folder."""

    cases: list[CachedCase]
    prepared: int
    folder: Path


def preprocessed_key(spacing: Sequence[float] | None, spatial_dims: int,
                     normalization: Sequence[Any] | None = None) -> dict:
    """What the prepared arrays depend on, besides the case's own files (the key folder hashes it). Per-channel
    ``normalization`` other than z-scoring enters the key (z-scored cases keep the key they always had)."""
    key = {"format": CACHE_FORMAT, "spacing": None if spacing is None else [float(s) for s in spacing],
           "spatial_dims": int(spatial_dims), "monai": monai.__version__}
    rules = normalization_rules(normalization)
    return key | {"normalization": rules} if rules else key


def _key_hash(key: dict) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def preprocessed_folder(root: str | Path, spacing: Sequence[float] | None, spatial_dims: int,
                        cache_dir: str | Path | None = None, normalization: Sequence[Any] | None = None) -> Path:
    """The key folder of a dataset at ``spacing`` (created); see the module docstring for where it lies.

    Raises:
        MedTextSegError: ``cache_dir`` is given and cannot be written.
    """
    root = Path(root)
    key = _key_hash(preprocessed_key(spacing, spatial_dims, normalization))
    if cache_dir is not None:
        folder = Path(cache_dir) / "preprocessed" / key
        if not _writable(folder):
            raise MedTextSegError(f"config field 'data.cache_dir': {cache_dir} cannot be written")
    else:
        folder = root / ".medtextseg_cache" / "preprocessed" / key
        if not _writable(folder):  # a read-only dataset: the user's cache, under a name of this dataset
            resolved = str(root.expanduser().resolve())
            user = Path(os.environ.get("MEDTEXTSEG_CACHE", Path.home() / ".cache" / "medtextseg"))
            dataset = f"{root.name}-{hashlib.sha1(resolved.encode()).hexdigest()[:8]}"
            folder = user / "preprocessed" / dataset / key
            if not _writable(folder):
                raise MedTextSegError(f"{root}: neither {root / '.medtextseg_cache'} nor {user} can be written; "
                                      "set data.cache_dir or $MEDTEXTSEG_CACHE to a writable folder")
    description = folder / "key.json"
    if not description.is_file():
        write_text_atomic(description, json.dumps(preprocessed_key(spacing, spatial_dims, normalization), indent=1)
                          + "\n")
    return folder


def _mask_paths(case: CaseRecord) -> list[Path]:
    """The case's mask-file targets in ``prepare_case``'s order (``mask{i}`` is the i-th)."""
    return sorted({p.target for p in case.prompts if isinstance(p.target, Path)})


def _sources(case: CaseRecord, root: Path) -> list[list]:
    """[name, size, mtime_ns] of every file the case is prepared from; names relative to the dataset root when
    inside it, so a moved or copied dataset keeps its cache."""
    paths = [*case.image_paths, *([case.label_path] if case.label_path else []), *_mask_paths(case)]
    stamps = []
    for path in paths:
        stat = path.stat()
        try:
            name = str(path.relative_to(root))
        except ValueError:
            name = str(path)
        stamps.append([name, stat.st_size, stat.st_mtime_ns])
    return stamps


def _reference(folder: Path, case: CaseRecord, entry: dict) -> CachedCase:
    masks = _mask_paths(case)
    return CachedCase(case.case, case.prompts, folder / entry["image"],
                      folder / entry["label"] if entry["label"] else None,
                      {target: folder / file for target, file in zip(masks, entry["masks"], strict=True)})


def read_entry(folder: Path, case: CaseRecord, root: Path) -> CachedCase | None:
    """The case's reference if its entry exists and its source files are unchanged, else None."""
    path = folder / f"{case.case}.json"
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if entry.get("format") != CACHE_FORMAT or entry.get("sources") != _sources(case, root):
            return None
        reference = _reference(folder, case, entry)
    except (OSError, ValueError, KeyError, TypeError):  # missing, cut short or of another shape: prepare anew
        return None
    files = [reference.image_file, reference.label_file, *reference.mask_files.values()]
    return reference if all(f is None or f.is_file() for f in files) else None


def _label_dtype(label: np.ndarray) -> np.dtype:
    """The smallest integer dtype that holds every value of ``label`` (label maps are mostly uint8)."""
    if label.size == 0:
        return np.dtype(np.uint8)
    return np.result_type(np.min_scalar_type(int(label.min())), np.min_scalar_type(int(label.max())))


def write_entry(folder: Path, case: CaseRecord, root: Path, spacing: Sequence[float] | None,
                spatial_dims: int, normalization: Sequence[Any] | None = None) -> CachedCase:
    """Prepare ``case`` and save it into ``folder`` atomically; return its reference."""
    entry_path = folder / f"{case.case}.json"
    # stamped before reading: a file changed during preparation no longer matches the entry, and is prepared again
    sources = _sources(case, root)
    prepared = prepare_case(case, list(spacing) if spacing is not None else None, spatial_dims, normalization)
    # an old entry must not outlive the arrays it names while they are replaced one by one
    entry_path.unlink(missing_ok=True)
    entry = {"format": CACHE_FORMAT, "case": case.case, "sources": sources, "image": f"{case.case}.image.npy",
             "label": f"{case.case}.label.npy" if prepared.label is not None else None,
             "masks": [f"{case.case}.mask{i}.npy" for i in range(len(prepared.masks))],
             "shape": list(prepared.image.shape)}
    with atomic_path(entry_path) as tmp:  # the arrays, written beside the entry, move into place before it
        np.save(tmp.parent / entry["image"], prepared.image.numpy())
        if prepared.label is not None:
            label = prepared.label.numpy()
            np.save(tmp.parent / entry["label"], label.astype(_label_dtype(label)))
        for file, mask in zip(entry["masks"], prepared.masks.values(), strict=True):
            np.save(tmp.parent / file, mask.numpy())
        tmp.write_text(json.dumps(entry) + "\n", encoding="utf-8")
    return _reference(folder, case, entry)


def preprocess_cases(layout: DatasetLayout, case_ids: list[str], spacing: Sequence[float] | None,
                     cache_dir: str | Path | None = None, progress: bool = False,
                     label: str = "", normalization: Sequence[Any] | None = None) -> PreprocessedCases:
    """References to ``case_ids`` of ``layout`` prepared at ``spacing``: read from the cache, and the cases
    missing there (or whose files changed) prepared into it first. ``label`` names the cases in the progress
    bars ("reading N preprocessed {label}cases", then "preparing M of N {label}cases" if any is missing)."""
    folder = preprocessed_folder(layout.root, spacing, layout.spatial_dims, cache_dir, normalization)
    root = Path(layout.root)
    words = f"{label} " if label else ""
    with progress_bar(case_ids, f"reading {len(case_ids)} preprocessed {words}cases", progress,
                      transient=True) as iterator:
        found = {c: read_entry(folder, layout.cases[c], root) for c in iterator}
    missing = [c for c, reference in found.items() if reference is None]
    with progress_bar(missing, f"preparing {len(missing)} of {len(case_ids)} {words}cases", progress and bool(missing),
                      transient=True) as iterator:
        for case_id in iterator:
            found[case_id] = write_entry(folder, layout.cases[case_id], root, spacing, layout.spatial_dims,
                                         normalization)
    return PreprocessedCases([found[c] for c in case_ids], len(missing), folder)

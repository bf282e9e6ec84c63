"""``DatasetWriter``: the one way converters write a dataset folder, resumable and idempotent.

Each case is written on its own: image channels, label map, then a small record of its prompts in
``.convert/{case}.json``, last. A case whose record exists is done, so a killed conversion resumes where it
stopped and a second run rewrites nothing. ``finish`` assembles ``prompts.jsonl``, ``splits.json``,
``case_groups.json``, ``dataset.json`` (last, so its presence marks a complete dataset) and
``conversion_summary.json`` from the records. Every file is written atomically.

A case that cannot be converted is reported with :meth:`DatasetWriter.skip` and a reason, and listed in the
summary: never silently dropped. :meth:`DatasetWriter.convert_each` is the one case loop of every converter: it
calls the converter's function for each source item, skips a failing item with its reason, and shows a progress
bar when asked; :func:`group_splits` draws the splits per group (a patient, a source volume).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from medtextseg.utils.atomic import atomic_path, write_text_atomic
from medtextseg.utils.errors import MedTextSegError
from medtextseg.utils.progress import progress_bar

RECORD_DIR = ".convert"
Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class ConversionSummary:
    """What a conversion did: cases converted now, found already converted, and skipped (with why)."""

    dataset: Path
    converted: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.converted) + len(self.already_done)

    def line(self) -> str:
        """One line for the terminal, e.g. ``12 cases in out/ (10 converted, 2 already done); 1 skipped``."""
        text = (f"{self.total} cases in {self.dataset} ({len(self.converted)} converted, "
                f"{len(self.already_done)} already done)")
        if self.skipped:
            text += f"; {len(self.skipped)} skipped: " + "; ".join(f"{c}: {r}" for c, r in self.skipped.items())
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": str(self.dataset), "converted": self.converted, "already_done": self.already_done,
                "skipped": self.skipped}


class DatasetWriter:
    """Writes cases into ``dst`` in the nnU-Net v2 raw layout + ``prompts.jsonl``.

    Args:
        dst: the dataset folder (created).
        name: dataset name for ``dataset.json``.
        channel_names: one name per image channel, e.g. ``["T2W", "ADC", "HBV"]``.
        labels: label name -> integer value, ``background`` = 0 included.
        spatial_dims: 3, or 2 (images stored as ``X x Y x 1`` NIfTI so that they keep an affine).
        overwrite: rewrite cases already converted.

    Example:
        >>> writer = DatasetWriter("out", "Colin27AAL", ["T1"], {"background": 0, "caudate_l": 71})  # doctest: +SKIP
        >>> if not writer.is_done("aal_000"):
        ...     writer.write_case("aal_000", [t1], affine, label, prompts)
        >>> summary = writer.finish(splits={"train": [...], "val": [...], "test": [...]})
    """

    def __init__(self, dst: str | Path, name: str, channel_names: Sequence[str], labels: dict[str, int],
                 spatial_dims: int = 3, overwrite: bool = False, extra: dict[str, Any] | None = None) -> None:
        if spatial_dims not in (2, 3):
            raise MedTextSegError(f"DatasetWriter: spatial_dims must be 2 or 3, got {spatial_dims!r}")
        self.dst = Path(dst)
        self.name = name
        self.channel_names = list(channel_names)
        self.labels = dict(labels)
        self.spatial_dims = spatial_dims
        self.overwrite = overwrite
        self.extra = dict(extra or {})
        self.summary = ConversionSummary(self.dst)
        self._records = self.dst / RECORD_DIR

    def _record_path(self, case: str) -> Path:
        return self._records / f"{case}.json"

    def is_done(self, case: str) -> bool:
        """True when ``case`` was fully written by an earlier run (and ``overwrite`` is off); counts it."""
        if self.overwrite or not self._record_path(case).is_file():
            return False
        self.summary.already_done.append(case)
        return True

    def write_case(self, case: str, images: Sequence[np.ndarray], affine: np.ndarray,
                   label: np.ndarray | None, prompts: Sequence[dict[str, Any]]) -> None:
        """Write one case.

        Args:
            case: the case id (file-name safe).
            images: one array per channel, each ``[X, Y, Z]`` (3D) or ``[X, Y]`` (2D), on one grid.
            affine: 4 x 4 voxel -> RAS world (mm) matrix of that grid (NIfTI convention).
            label: integer label map on the same grid, values among ``labels``, or None.
            prompts: prompt lines without ``case``: ``{"prompt", "target", "kind", ...}``.
        """
        import nibabel as nib

        if len(images) != len(self.channel_names):
            raise MedTextSegError(f"{case}: {len(images)} image channels given, the dataset declares "
                                  f"{len(self.channel_names)} ({', '.join(self.channel_names)})")
        shape = np.shape(images[0])
        for array in [*images, *([label] if label is not None else [])]:
            if np.shape(array) != shape:
                raise MedTextSegError(f"{case}: channels and label must share one grid, got shapes "
                                      f"{shape} and {np.shape(array)}")
        ending = ".nii.gz"
        for channel, array in enumerate(images):
            self._save(nib, np.asarray(array, dtype=np.float32), affine,
                       self.dst / "imagesTr" / f"{case}_{channel:04d}{ending}")
        if label is not None:
            declared = set(self.labels.values())
            found = set(np.unique(label).tolist())
            if not found <= declared:
                raise MedTextSegError(f"{case}: label values {sorted(found - declared)} are not declared")
            self._save(nib, np.asarray(label).astype(np.uint16 if max(found) > 255 else np.uint8), affine,
                       self.dst / "labelsTr" / f"{case}{ending}")
        record = [{"case": case, **prompt} for prompt in prompts]
        write_text_atomic(self._record_path(case), json.dumps(record) + "\n")
        self.summary.converted.append(case)

    def skip(self, case: str, reason: str) -> None:
        """Report a case that could not be converted (listed in the summary with ``reason``)."""
        self.summary.skipped[case] = reason

    def convert_each(self, items: Iterable[Item], convert: Callable[[Item], Result], case: Callable[[Item], str], *,
                     file_name: Callable[[Item], str] | None = None, progress: str | None = None,
                     errors: Literal["skip", "raise"] = "skip") -> dict[str, Result]:
        """The case loop: ``convert(item)`` for every item, in order; what it returns, by ``case(item)``.

        ``convert`` writes the item's case (or cases: the slices of a volume) with :meth:`write_case` after asking
        :meth:`is_done`, so that a second run rewrites nothing and a killed one resumes. With ``errors="skip"``
        an item whose conversion raises is skipped under ``case(item)`` with the reason, and the others go on: a
        :class:`MedTextSegError`'s message, or the type and first line of anything else a damaged file raises
        (``EOFError``, ``zlib.error``, ...), after ``file_name(item)`` when given. With ``errors="raise"`` (a
        generator, whose failures are bugs, not bad files) the exception ends the conversion.

        Args:
            progress: a description: show a progress bar with it (rich), else none.

        Returns:
            ``case(item)`` -> what ``convert(item)`` returned, for every item not skipped, in order.
        """
        results: dict[str, Result] = {}
        with progress_bar(list(items), progress or "", show=bool(progress)) as iterator:
            for item in iterator:
                try:
                    results[case(item)] = convert(item)
                except MedTextSegError as error:
                    if errors == "raise":
                        raise
                    self.skip(case(item), str(error))
                except Exception as error:  # a corrupt file raises anything: report it, go on
                    if errors == "raise":
                        raise
                    first_line = str(error).splitlines()[0] if str(error) else ""
                    where = f"{file_name(item)}: " if file_name is not None else ""
                    self.skip(case(item), f"{where}{type(error).__name__}: {first_line}".rstrip(": "))
        return results

    def _save(self, nib, array: np.ndarray, affine: np.ndarray, path: Path) -> None:
        if self.spatial_dims == 2 and array.ndim == 2:
            array = array[:, :, None]
        image = nib.Nifti1Image(np.ascontiguousarray(array), np.asarray(affine, dtype=float))
        image.header.set_xyzt_units("mm")
        image.set_qform(image.affine, code=1)
        image.set_sform(image.affine, code=1)
        with atomic_path(path) as tmp:
            nib.save(image, tmp)

    def finish(self, splits: dict[str, list[str]] | None = None, description: str = "",
               groups: Mapping[str, Sequence[str]] | None = None) -> ConversionSummary:
        """Write ``prompts.jsonl``, ``splits.json`` (when given), ``dataset.json`` and the summary.

        Every case with a record is included, from this run or an earlier one. ``splits`` may name cases
        that were skipped: they are dropped from it (and listed as skipped in the summary). ``groups`` (group id ->
        its cases, as :func:`group_splits` takes them) go to ``case_groups.json`` (case -> group) for the groups of
        two or more cases, so that cross-validation folds keep them together (``medtextseg.data.folds``).
        """
        records = sorted(self._records.glob("*.json")) if self._records.is_dir() else []
        cases = [path.stem for path in records]
        if not cases:
            raise MedTextSegError(f"{self.dst}: no case was converted"
                                  + (f" ({len(self.summary.skipped)} skipped)" if self.summary.skipped else ""))
        lines = [json.dumps(line) for path in records for line in json.loads(path.read_text(encoding="utf-8"))]
        write_text_atomic(self.dst / "prompts.jsonl", "\n".join(lines) + "\n")
        if splits is not None:
            present = set(cases)
            kept = {name: [c for c in ids if c in present] for name, ids in splits.items()}
            write_text_atomic(self.dst / "splits.json", json.dumps(kept, indent=2) + "\n")
        if groups is not None:
            present = set(cases)
            together = {case: str(group) for group, members in groups.items()
                        if sum(c in present for c in members) > 1 for case in members if case in present}
            if together:
                write_text_atomic(self.dst / "case_groups.json", json.dumps(dict(sorted(together.items())), indent=1)
                                  + "\n")
        dataset = {
            "name": self.name,
            "description": description,
            "channel_names": {str(i): name for i, name in enumerate(self.channel_names)},
            "labels": self.labels,
            "numTraining": len(cases),
            "file_ending": ".nii.gz",
            "medtextseg": {"spatial_dims": self.spatial_dims, **self.extra},
        }
        write_text_atomic(self.dst / "dataset.json", json.dumps(dataset, indent=2) + "\n")
        write_text_atomic(self.dst / "conversion_summary.json", json.dumps(self.summary.to_dict(), indent=2) + "\n")
        return self.summary


def group_splits(groups: Mapping[str, Sequence[str]], sort: bool = False) -> dict[str, list[str]]:
    """``splits.json`` drawn per group: each group id (a patient, a source volume) goes to one split by its hash
    (:func:`medtextseg.data.layout.hash_split`), with all its cases, so that no group straddles two splits.

    Args:
        groups: group id -> its case ids, in the order the splits list them (the groups' order is kept).
        sort: sort the cases of each split.
    """
    from medtextseg.data.layout import hash_split

    splits = {split: [case for group in members for case in groups[group]]
              for split, members in hash_split(list(groups)).items()}
    return {split: sorted(cases) for split, cases in splits.items()} if sort else splits


def check_conversion_options(dst: Path, converter: str, fingerprint: dict[str, Any], overwrite: bool) -> Path:
    """Refuse to add cases made with other options to an earlier conversion into ``dst`` (unless ``overwrite``).

    The options that decide a case's content are recorded in ``{dst}/{converter}_conversion.json``; a resumed
    or repeated run must give the same ones. Returns that file's path, for the caller to write once it has
    cleaned up (:func:`record_conversion_options`).

    Raises:
        MedTextSegError: the recorded options differ, naming the ones that do.
    """
    path = Path(dst) / f"{converter}_conversion.json"
    if path.is_file() and not overwrite:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        if earlier != fingerprint:
            changed = sorted(k for k in set(earlier) | set(fingerprint) if earlier.get(k) != fingerprint.get(k))
            raise MedTextSegError(f"{dst}: was converted with other {converter} options ({', '.join(changed)} "
                                  "differ); use another --dst, or --overwrite to rebuild it")
    return path


def record_conversion_options(path: Path, fingerprint: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(fingerprint, indent=2) + "\n")

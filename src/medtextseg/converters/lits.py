"""LiTS17 (Liver Tumor Segmentation Challenge) contrast CT -> liver and liver tumour prompts.

Source layout (the challenge's release: 131 training volumes, in two archives, and 70 test volumes)::

    {src}/Training Batch 1/volume-0.nii          the CT, volumes 0-27
    {src}/Training Batch 1/segmentation-0.nii    0 background, 1 liver, 2 tumour, on the same grid
    {src}/Training Batch 2/volume-28.nii         ... volumes 28-130
    {src}/Test Data/test-volume-0.nii            test volumes, without segmentation

``volume-{i}.nii`` and ``segmentation-{i}.nii`` (or ``.nii.gz``) are found anywhere under ``--src`` (the batch
folders, a flat folder, or mirrors that keep volumes and segmentations in separate folders) and paired by ``{i}``;
hidden and ``__MACOSX`` folders are ignored. Segmentations stored as floating point (0.0, 1.0, 2.0) are read as
integers; a non-integer value skips the case.

Output: one case ``lits_{i:03d}`` per volume, channel ``CT``; shape, voxel order and affine as in the volume file,
label values as in the file. Prompts per case (class: target when present, else ``absent`` with ``[]``):
``liver`` = ``[1, 2]`` (the organ contains its tumours) and ``liver_tumour`` = ``[2]``. ``dataset.json`` names
value 1 ``liver`` and 2 ``liver_tumour``. With ``--spatial-dims 2``, one case per axial slice (third voxel axis).

Skipped with the reason, by case: a volume without segmentation (``lits_test_{i:03d}`` for the test volumes), a
segmentation without volume, a number found twice, an unreadable file, a segmentation off the volume's grid (see
``affine_tolerance``) or with another value.

Options (``--option KEY=VALUE``, as for the ``nnunet`` converter): ``rename=OLD:NEW``, ``regions=NAME:V+V``,
``slices=foreground|all`` (2D), ``affine_tolerance=MM`` (0.001).

Example:
    >>> convert_lits(Path("LiTS17"), Path("data/lits"))  # doctest: +SKIP
"""

from __future__ import annotations

import re
from pathlib import Path

from medtextseg.converters.nnunet import SourceCase, SourceDataset, register_labelled
from medtextseg.utils.errors import MedTextSegError

FILE_PATTERN = re.compile(r"(test-volume|volume|segmentation)-(\d+)\.nii(\.gz)?")
CLASSES = {"liver": (1, 2), "liver_tumour": (2,)}
VALUE_NAMES = {1: "liver", 2: "liver_tumour"}


def find_files(src: Path) -> dict[str, dict[int, list[Path]]]:
    """``{"volume": {i: [paths]}, "segmentation": {...}, "test-volume": {...}}`` for the LiTS files under ``src``.

    Raises:
        MedTextSegError: no ``volume-{i}.nii`` or ``test-volume-{i}.nii`` at all.
    """
    found: dict[str, dict[int, list[Path]]] = {"volume": {}, "segmentation": {}, "test-volume": {}}
    for path in sorted(src.rglob("*.nii*")):
        match = FILE_PATTERN.fullmatch(path.name)
        hidden = any(part.startswith(".") or part == "__MACOSX" for part in path.relative_to(src).parts)
        if match and not hidden and path.is_file():
            found[match.group(1)].setdefault(int(match.group(2)), []).append(path)
    if not found["volume"] and not found["test-volume"]:
        raise MedTextSegError(f"{src}: no LiTS file found (expected 'Training Batch 1/volume-0.nii' and "
                              "'segmentation-0.nii', anywhere under --src)")
    return found


def _where(paths: list[Path], src: Path) -> str:
    return ", ".join(str(path.relative_to(src)) for path in paths)


def _training_case(number: int, volumes: list[Path], segmentations: list[Path], src: Path) -> SourceCase:
    problem = ""
    if len(volumes) > 1 or len(segmentations) > 1:
        twice = volumes if len(volumes) > 1 else segmentations
        problem = f"found more than once: {_where(twice, src)}"
    elif not volumes:
        problem = f"{_where(segmentations, src)}: no volume-{number}.nii beside it"
    elif not segmentations:
        problem = f"no segmentation-{number}.nii for {_where(volumes, src)}"
    image = volumes[0] if volumes else src / f"volume-{number}.nii"
    return SourceCase(f"lits_{number:03d}", [image], segmentations[0] if segmentations else None, problem)


def read_lits_source(src: Path) -> SourceDataset:
    """The LiTS volumes under ``src`` as a :class:`SourceDataset` (CT; liver = 1 + 2, liver tumour = 2).

    Raises:
        MedTextSegError: no LiTS volume under ``src``.
    """
    found = find_files(src)
    numbers = sorted(set(found["volume"]) | set(found["segmentation"]))
    cases = [_training_case(n, found["volume"].get(n, []), found["segmentation"].get(n, []), src) for n in numbers]
    cases += [SourceCase(f"lits_test_{n:03d}", paths[:1], None,
                         f"{_where(paths, src)}: a LiTS test volume, its segmentation was not published")
              for n, paths in sorted(found["test-volume"].items())]
    return SourceDataset("LiTS", ["CT"], dict(CLASSES), [0, 1, 2], cases, value_names=dict(VALUE_NAMES))


convert_lits = register_labelled(
    "lits", "LiTS17 liver CT ('Training Batch 1/volume-<i>.nii' + segmentation-<i>.nii) -> liver and liver "
            "tumour prompts", read_lits_source)


__all__ = ["convert_lits", "find_files", "read_lits_source"]

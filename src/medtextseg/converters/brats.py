"""BraTS 2021 and 2023 brain tumour MRI (T1, T1CE, T2, FLAIR) -> nested tumour region and sub-region prompts.

Source layouts, told apart per case by the file names:

* BraTS 2021 (RSNA-ASNR-MICCAI; BraTS 2018-2020 name their files the same way)::

      {src}/RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021/BraTS2021_00000/BraTS2021_00000_t1.nii.gz
                                                                  .../BraTS2021_00000_{t1ce,t2,flair,seg}.nii.gz

  ``seg``: 1 necrotic tumour core (NCR), 2 peritumoural oedema (ED), 4 enhancing tumour (ET).
* BraTS 2023 (ASNR-MICCAI; adult glioma ``GLI``, Sub-Saharan Africa ``SSA``, meningioma ``MEN``, metastases
  ``MET``)::

      {src}/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData/BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz
                                                          .../BraTS-GLI-00000-000-{t1c,t2w,t2f,seg}.nii.gz

  ``seg``: 1 non-enhancing tumour core (NETC), 2 surrounding FLAIR hyperintensity (SNFH), 3 enhancing tumour (ET).

Files are found anywhere under ``--src`` (hidden and ``__MACOSX`` folders ignored) and grouped by case id
(``BraTS2021_00000``, ``BraTS-GLI-00000-000``); both editions may sit side by side.

Output: one case per case id with four channels in one fixed order, ``T1, T1CE, T2, FLAIR`` (2023: ``t1n, t1c,
t2w, t2f``), named so in ``dataset.json``; shape, voxel order and affine as in the T1 file. One labelling for both
editions: 1 ``non_enhancing_tumour`` (NCR / NETC), 2 ``oedema`` (ED / SNFH), 3 ``enhancing_tumour`` (ET: 2021's 4
becomes 3). Prompts per case (class: target when present, else ``absent`` with ``[]``), the BraTS regions nested:
``whole_tumour`` = ``[1, 2, 3]``, ``tumour_core`` = ``[1, 3]``, ``enhancing_tumour`` = ``[3]``, and the
sub-regions ``non_enhancing_tumour`` = ``[1]`` (worded "non-enhancing tumour core", also "necrotic tumour core" in
the vocabulary) and ``oedema`` = ``[2]``. ``--option rename=non_enhancing_tumour:necrosis`` renames a class.
``dataset.json``'s ``name`` is ``BraTS2021``, ``BraTS2023`` or, for both, ``BraTS``.

Skipped with the reason, by case: no ``seg`` file (validation and test data), a missing or duplicated sequence, a
2023 cohort with another label scheme (``PED``: its 2023 and 2024 releases number the labels differently under the
same file names; others unknown), an unreadable file, a file off the T1's grid, a label value the edition does not
have (e.g. 4 in a 2023 file: BraTS 2024's resection cavity).

Options (``--option KEY=VALUE``, as for the ``nnunet`` converter): ``rename=OLD:NEW``, ``regions=NAME:V+V`` (in
the output's values 1-3), ``slices=foreground|all`` (2D), ``affine_tolerance=MM`` (0.001).

Example:
    >>> convert_brats(Path("BraTS2021"), Path("data/brats"))  # doctest: +SKIP
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from medtextseg.converters.nnunet import SourceCase, SourceDataset, register_labelled
from medtextseg.utils.errors import MedTextSegError

CHANNEL_NAMES = ["T1", "T1CE", "T2", "FLAIR"]
CLASSES = {"whole_tumour": (1, 2, 3), "tumour_core": (1, 3), "enhancing_tumour": (3,),
           "non_enhancing_tumour": (1,), "oedema": (2,)}
SUPPORTED_COHORTS = ("GLI", "SSA", "MEN", "MET")  # BraTS 2023 cohorts labelled 1 NETC, 2 SNFH, 3 ET
LABEL_FILE = "seg"


@dataclass(frozen=True)
class Edition:
    """One file-naming scheme: how a case id and a sequence join, the sequences in channel order, the labels."""

    name: str
    separator: str
    case_pattern: re.Pattern[str]
    sequences: tuple[str, str, str, str]  # T1, T1CE, T2, FLAIR
    label_values: dict[int, int]  # source value -> output value


EDITIONS = (
    Edition("2021", "_", re.compile(r"BraTS\w*"), ("t1", "t1ce", "t2", "flair"), {0: 0, 1: 1, 2: 2, 4: 3}),
    Edition("2023", "-", re.compile(r"BraTS-([A-Z]+)-\d+-\d+"), ("t1n", "t1c", "t2w", "t2f"),
            {0: 0, 1: 1, 2: 2, 3: 3}),
)


@dataclass
class FoundCase:
    """The files of one case id: sequence (or ``seg``) -> the paths found."""

    case: str
    edition: Edition
    paths: dict[str, list[Path]]


def _parse(path: Path) -> tuple[str, Edition, str] | None:
    """(case id, edition, sequence) of a BraTS file name, or None for another file."""
    stem = path.name.removesuffix(".gz").removesuffix(".nii")
    if stem == path.name:
        return None
    for edition in EDITIONS:
        case, separator, sequence = stem.rpartition(edition.separator)
        if separator and sequence in (*edition.sequences, LABEL_FILE) and edition.case_pattern.fullmatch(case):
            return case, edition, sequence
    return None


def find_cases(src: Path) -> list[FoundCase]:
    """Every BraTS case with at least one file under ``src``, sorted by id.

    Raises:
        MedTextSegError: no BraTS file at all.
    """
    cases: dict[str, FoundCase] = {}
    for path in sorted(src.rglob("*.nii*")):
        parsed = _parse(path)
        hidden = any(part.startswith(".") or part == "__MACOSX" for part in path.relative_to(src).parts)
        if parsed is None or hidden or not path.is_file():
            continue
        case, edition, sequence = parsed
        found = cases.setdefault(case, FoundCase(case, edition, {}))
        found.paths.setdefault(sequence, []).append(path)
    if not cases:
        raise MedTextSegError(f"{src}: no BraTS file found (expected BraTS2021_00000/BraTS2021_00000_t1.nii.gz ... "
                              "_seg.nii.gz, or BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz ... -seg.nii.gz)")
    return [cases[case] for case in sorted(cases)]


def _source_case(found: FoundCase, src: Path) -> SourceCase:
    edition, paths = found.edition, found.paths
    images = [paths[s][0] if s in paths else src / f"{found.case}{edition.separator}{s}.nii.gz"
              for s in edition.sequences]
    label = paths[LABEL_FILE][0] if LABEL_FILE in paths else None
    missing = [s for s in edition.sequences if s not in paths]
    twice = [s for s in (*edition.sequences, LABEL_FILE) if len(paths.get(s, [])) > 1]
    cohort = edition.case_pattern.fullmatch(found.case).groups()  # type: ignore[union-attr]
    problem = ""
    if cohort and cohort[0] not in SUPPORTED_COHORTS:
        problem = (f"BraTS 2023 cohort {cohort[0]} is not supported (its label numbering differs or is not known; "
                   f"supported: {', '.join(SUPPORTED_COHORTS)})")
    elif label is None:
        problem = (f"no segmentation {found.case}{edition.separator}{LABEL_FILE}.nii.gz (validation or test data: "
                   "its labels are not published)")
    elif missing:
        problem = f"missing sequence {found.case}{edition.separator}{missing[0]}.nii.gz"
    elif twice:
        problem = f"{twice[0]} found more than once: " + ", ".join(str(p.relative_to(src)) for p in paths[twice[0]])
    return SourceCase(found.case, images, label, problem, label_values=dict(edition.label_values))


def read_brats_source(src: Path) -> SourceDataset:
    """The BraTS cases under ``src`` as a :class:`SourceDataset` (channels T1, T1CE, T2, FLAIR; classes
    :data:`CLASSES` on the output values 1-3).

    Raises:
        MedTextSegError: no BraTS file under ``src``.
    """
    found = find_cases(src)
    editions = sorted({case.edition.name for case in found})
    name = f"BraTS{editions[0]}" if len(editions) == 1 else "BraTS"
    return SourceDataset(name, list(CHANNEL_NAMES), dict(CLASSES), [0, 1, 2, 3],
                         [_source_case(case, src) for case in found])


convert_brats = register_labelled(
    "brats", "BraTS 2021 (BraTS2021_<id>_{t1,t1ce,t2,flair,seg}) or 2023 (BraTS-GLI-<id>-{t1n,t1c,t2w,t2f,seg}) "
             "MRI -> whole tumour, tumour core, enhancing tumour and sub-region prompts", read_brats_source)


__all__ = ["CHANNEL_NAMES", "CLASSES", "EDITIONS", "convert_brats", "find_cases", "read_brats_source"]

"""CHAOS (Combined CT-MR Healthy Abdominal Organ Segmentation): DICOM slices + PNG masks -> one prompt per organ.

Source layout (``CHAOS_Train_Sets.zip``, https://chaos.grand-challenge.org/Data/); ``--src`` may be the folder
holding ``Train_Sets``, ``Train_Sets`` itself, or its ``CT`` or ``MR`` folder::

    Train_Sets/CT/{id}/DICOM_anon/i0000,0000b.dcm ...          portal-venous CT, 512 x 512, ~90 slices
    Train_Sets/CT/{id}/Ground/liver_GT_000.png ...             liver 255 (any value > 0 is liver)
    Train_Sets/MR/{id}/T2SPIR/DICOM_anon/IMG-0002-00001.dcm ...
    Train_Sets/MR/{id}/T2SPIR/Ground/IMG-0002-00001.png ...
    Train_Sets/MR/{id}/T1DUAL/DICOM_anon/InPhase/*.dcm, OutPhase/*.dcm   (same slices, two echo times)
    Train_Sets/MR/{id}/T1DUAL/Ground/*.png                                (one mask per slice, for both phases)

MR masks are grey levels, read by range as the challenge defines them: liver 63 (55-70), right kidney 126
(110-135), left kidney 189 (175-200), spleen 252 (240-255); another non-zero grey level skips the case.

Slice order and orientation: CHAOS pairs a mask with its slice by file-name order (the k-th PNG, in natural order,
belongs to the k-th DICOM file; the challenge's evaluation code says so: "the orientation of the slices is determined
by order of image names NOT by position tags"). The volume is stacked by ImagePositionPatient instead
(:mod:`medtextseg.data.dicom_series`: ascending along the slice normal, the NIfTI way), and each mask is put on its
own DICOM file's slice. This is the known CT z-order quirk: the CT files are numbered head to feet, so masks stacked
in name order next to a position-sorted volume come out upside down. A PNG's row r, column c is the DICOM pixel
(r, c), i.e. voxel (i = c, j = r). The slices are read as one volume whatever their SeriesInstanceUID (the
anonymised files do not always share one).

Output: one case per patient, ``chaos_ct_{id:02d}`` or ``chaos_mr_{id:02d}`` (the same MR case id for every
sequence, so that separate T2SPIR and T1DUAL conversions split patients alike), on the DICOM grid (shape and
affine). Labels: 1 ``liver``, and for MR 2 ``kidney_right``, 3 ``kidney_left``, 4 ``spleen``; per case one
``anatomy`` prompt per organ present and an ``absent`` one per organ missing (``prompt_vocabulary.json`` holds the
radiologist wordings). With ``--spatial-dims 2`` every axial slice with an organ (or every slice, ``slices=all``)
is a case ``{case}_z{k:03d}``, the splits drawn per patient: the FiLM-CBN setting of one binary prompt per (slice,
organ).

Several sequences pooled (``modality=T2SPIR+T1DUAL_InPhase+T1DUAL_OutPhase``, ``MR``, ``all``...), as FiLM-CBN
trains: one single-channel case per (patient, sequence), ``chaos_mr_03_t2spir``, ``chaos_mr_03_t1dual_inphase``,
``chaos_ct_01_ct`` (and its slices ``chaos_mr_03_t2spir_z004``); every prompt's ``meta`` holds its ``sequence`` and
``patient`` (to score per sequence), dataset.json's ``medtextseg.sequences`` the list. The splits are drawn per
patient, by the same hash as a single-sequence conversion, so a patient's sequences (and slices) never straddle two
splits. The labels are the MR ones; a CT case, whose masks label the liver only, gets the liver prompt only (no
``absent`` kidney or spleen, and no ``regions`` class with another value). The channel is ``MR``, or ``image`` when
CT is among them (a channel named CT would plan a CT intensity window for the MR images too). ``chaos_ct_01`` and
``chaos_mr_01`` are two patients: the CT and MR data sets "are acquired from different patients" (the Data page).

Options (``--option KEY=VALUE``):

* ``modality`` (required): the images to convert, one of ``CT``, ``T2SPIR``, ``T1DUAL_InPhase``,
  ``T1DUAL_OutPhase``, ``T1DUAL`` (two channels, in-phase and out-phase, on one grid), or several pooled: joined by
  ``+`` (or ``,``, or a Python list), in any case and order; ``MR`` is the three MR sequences, ``all`` them and CT.
  ``T1DUAL`` cannot be pooled (pool ``T1DUAL_InPhase+T1DUAL_OutPhase``).
* as for the ``nnunet`` converter: ``rename=OLD:NEW``, ``regions=kidneys:2+3``, ``slices=foreground|all`` (2D),
  ``affine_tolerance=MM`` (0.001: how far the out-phase grid may differ from the in-phase one).

A second run into the same folder must use the same ``modality`` (recorded in ``chaos_conversion.json``: a name,
or the pooled list).
Skipped with the reason, by case: no DICOM or Ground folder (the test set has no masks), a mask count or size that
differs from the slices', an unknown grey level, slices that do not make one evenly spaced volume.

Example:
    >>> convert_chaos(Path("CHAOS_Train_Sets"), Path("data/chaos_t2"), modality="T2SPIR")  # doctest: +SKIP
    >>> convert_chaos(Path("CHAOS_Train_Sets"), Path("data/chaos_all_2d"), spatial_dims=2,
    ...               modality="all")  # doctest: +SKIP
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np

from medtextseg.converters.nnunet import LabelledOptions, SourceCase, SourceDataset, convert_labelled
from medtextseg.converters.option_values import rule
from medtextseg.converters.registry import register
from medtextseg.utils.errors import MedTextSegError, refuse_same_folder

if TYPE_CHECKING:
    from medtextseg.converters.writer import ConversionSummary

#: modality option -> (CT or MR, the DICOM folders of a patient (one per channel), its Ground folder)
MODALITIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "CT": ("CT", ("DICOM_anon",), "Ground"),
    "T2SPIR": ("MR", ("T2SPIR/DICOM_anon",), "T2SPIR/Ground"),
    "T1DUAL_InPhase": ("MR", ("T1DUAL/DICOM_anon/InPhase",), "T1DUAL/Ground"),
    "T1DUAL_OutPhase": ("MR", ("T1DUAL/DICOM_anon/OutPhase",), "T1DUAL/Ground"),
    "T1DUAL": ("MR", ("T1DUAL/DICOM_anon/InPhase", "T1DUAL/DICOM_anon/OutPhase"), "T1DUAL/Ground"),
}
#: the names ``modality`` takes for several sequences at once
POOLS = {"MR": ("T2SPIR", "T1DUAL_InPhase", "T1DUAL_OutPhase"), "all": ("CT", "T2SPIR", "T1DUAL_InPhase",
                                                                      "T1DUAL_OutPhase")}
CT_CLASSES = {"liver": (1,)}
MR_CLASSES = {"liver": (1,), "kidney_right": (2,), "kidney_left": (3,), "spleen": (4,)}
#: MR mask grey levels (inclusive ranges, the challenge's) -> output label
MR_GREY_LEVELS = ((55, 70, 1), (110, 135, 2), (175, 200, 3), (240, 255, 4))


def natural_key(path: Path) -> list[Any]:
    """Sort key that orders ``IMG-0004-2`` before ``IMG-0004-10`` (digits compared as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


# -------------------------------------------------------------------- the source
def parse_modality(value: Any) -> tuple[str, ...]:
    """``"T2SPIR"`` -> ``("T2SPIR",)``; ``"t1dual_outphase+T2SPIR"``, ``"T2SPIR,T1DUAL_OutPhase"`` or a list ->
    the sequences pooled, in :data:`MODALITIES` order and each once; ``MR`` and ``all`` name several (:data:`POOLS`).

    Raises:
        ValueError: an unknown name, or none.
        MedTextSegError: ``T1DUAL`` (two channels) with another sequence.
    """
    parts = re.split(r"[+,]", value) if isinstance(value, str) else list(value)
    spelled = {name.lower(): (name,) for name in MODALITIES} | {name.lower(): pool for name, pool in POOLS.items()}
    words = [str(part).strip().lower() for part in parts if str(part).strip()]
    if not words or any(word not in spelled for word in words):
        raise ValueError(value)
    chosen = {name for word in words for name in spelled[word]}
    if "T1DUAL" in chosen and len(chosen) > 1:
        raise MedTextSegError("chaos converter: option modality T1DUAL (in-phase and out-phase as two channels) "
                              "cannot be pooled with other sequences; pool T1DUAL_InPhase+T1DUAL_OutPhase instead")
    return tuple(name for name in MODALITIES if name in chosen)


class ChaosOptions(LabelledOptions):
    """``modality`` (required: one sequence, or several pooled) and the options of the ``nnunet`` converter."""

    converter: ClassVar[str] = "chaos"
    modality: Annotated[tuple[str, ...], rule(f"one of {', '.join(MODALITIES)}, {', '.join(POOLS)}, or several "
                                              "joined by +", parse_modality)]


def find_modality_root(src: Path, kind: str) -> Path:
    """The folder of patient folders for ``kind`` (``CT`` or ``MR``) under ``src``.

    Raises:
        MedTextSegError: none found, naming the places looked at.
    """
    candidates = [src] if src.name.upper() == kind else []
    candidates += [src / kind, src / "Train_Sets" / kind, *sorted(src.glob(f"*/Train_Sets/{kind}")),
                   *sorted(src.glob(f"*/{kind}"))]
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise MedTextSegError(f"{src}: no CHAOS {kind} folder (looked for {kind}/, Train_Sets/{kind}/ and "
                          f"*/Train_Sets/{kind}/); pass --src the folder holding Train_Sets")


def _dicom_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm"
                   and not p.name.startswith(".")), key=natural_key)


def _read_png(path: Path) -> np.ndarray:
    """A grey-level PNG ``[rows, columns]`` (an RGB copy with equal channels is accepted)."""
    import SimpleITK as sitk

    try:
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError:
        raise MedTextSegError(f"{path}: not a readable PNG") from None
    if array.ndim == 3:
        if not (array == array[..., :1]).all():
            raise MedTextSegError(f"{path}: a colour mask; CHAOS masks are grey levels")
        array = array[..., 0]
    return array


def mask_labels(png: np.ndarray, kind: str, path: Path) -> np.ndarray:
    """Output labels of one mask ``[rows, columns]``: CT any value > 0 -> 1 (liver); MR by grey-level range.

    Raises:
        MedTextSegError: an MR grey level in none of the ranges, naming the file.
    """
    if kind == "CT":
        return (png > 0).astype(np.int64)
    label = np.zeros(png.shape, dtype=np.int64)
    for low, high, value in MR_GREY_LEVELS:
        label[(png >= low) & (png <= high)] = value
    stray = png[(label == 0) & (png > 0)]
    if stray.size:
        raise MedTextSegError(f"{path}: grey level {int(stray[0])} is none of the CHAOS organ ranges (liver 55-70, "
                              "right kidney 110-135, left kidney 175-200, spleen 240-255)")
    return label


def read_chaos_case(dicom_folders: list[Path], ground: Path, kind: str,
                    tolerance: float) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """One CHAOS case: (channels, each ``[X, Y, Z]`` float32; RAS affine 4 x 4; label ``[X, Y, Z]`` int64).

    The k-th mask in natural name order goes onto the slice of the k-th DICOM file in natural name order (see the
    module docstring); the volume is stacked by position.

    Raises:
        MedTextSegError: a missing file, a mask count or size that differs from the slices', an unknown grey level,
            channels off the first one's grid.
    """
    from medtextseg.data.dicom_series import read_files

    channels, reference = [], None
    for folder in dicom_folders:
        files = _dicom_files(folder)
        if not files:
            raise MedTextSegError(f"{folder}: no .dcm files")
        volume = read_files(files, folder)
        if reference is None:
            reference, name_order = volume, {path: n for n, path in enumerate(files)}
        elif volume.array.shape != reference.array.shape or not np.allclose(volume.affine, reference.affine,
                                                                            atol=tolerance):
            raise MedTextSegError(f"{folder}: not on the grid of {dicom_folders[0]} (shapes {volume.array.shape} "
                                  f"and {reference.array.shape}); see --option affine_tolerance")
        channels.append(volume.array.astype(np.float32))
    pngs = sorted((p for p in ground.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")),
                  key=natural_key)
    columns, rows, depth = reference.array.shape
    if len(pngs) != depth:
        raise MedTextSegError(f"{ground}: {len(pngs)} PNG masks for {depth} DICOM slices in {dicom_folders[0]}")
    label = np.zeros((columns, rows, depth), dtype=np.int64)
    for k, path in enumerate(reference.geometry.files):
        png_path = pngs[name_order[path]]
        png = _read_png(png_path)
        if png.shape != (rows, columns):
            raise MedTextSegError(f"{png_path}: {png.shape[0]} x {png.shape[1]} pixels, its slice {path.name} has "
                                  f"{rows} x {columns}")
        label[:, :, k] = mask_labels(png, kind, png_path).T
    return channels, reference.affine, label


def _patients(root: Path) -> list[Path]:
    patients = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not patients:
        raise MedTextSegError(f"{root}: no patient folders (named by number, e.g. {root}/1)")
    return patients


def _source_case(case: str, patient: Path, modality: str, tolerance: float) -> SourceCase:
    """The case of ``patient``'s ``modality`` images, read when converted (a missing folder is its problem)."""
    kind, dicom_parts, ground_part = MODALITIES[modality]
    folders = [patient / part for part in dicom_parts]
    ground = patient / ground_part
    missing = next((f for f in folders if not f.is_dir()), None)
    problem = (f"no DICOM folder {missing}" if missing is not None else
               "" if ground.is_dir() else f"no mask folder {ground} (a test-set case?)")
    return SourceCase(case, folders, None, problem, reader=partial(read_chaos_case, folders, ground, kind, tolerance))


def read_chaos_source(src: Path, modality: str | tuple[str, ...], tolerance: float = 1e-3) -> SourceDataset:
    """The CHAOS cases of ``modality`` under ``src`` as a :class:`SourceDataset` whose cases read themselves.

    Several sequences (a tuple) are pooled: a single-channel case per (patient, sequence), split by patient, each
    prompt with the ``sequence`` and ``patient`` in its meta, and CT cases prompted with the liver only.
    """
    modalities = (modality,) if isinstance(modality, str) else tuple(modality)
    classes = dict(MR_CLASSES if any(MODALITIES[m][0] == "MR" for m in modalities) else CT_CLASSES)
    values = [0, *sorted(v for members in classes.values() for v in members)]
    if len(modalities) == 1:
        kind = MODALITIES[modalities[0]][0]
        root = find_modality_root(src, kind)
        cases = [_source_case(f"chaos_{kind.lower()}_{int(patient.name):02d}", patient, modalities[0], tolerance)
                 for patient in _patients(root)]
        channel_names = ["T1DUAL_InPhase", "T1DUAL_OutPhase"] if modalities[0] == "T1DUAL" else [modalities[0]]
        return SourceDataset(f"CHAOS_{modalities[0]}", channel_names, classes, values, cases)
    kinds = list(dict.fromkeys(MODALITIES[m][0] for m in modalities))
    cases = []
    for kind, root in [(kind, find_modality_root(src, kind)) for kind in kinds]:
        annotated = frozenset(v for members in (CT_CLASSES if kind == "CT" else MR_CLASSES).values() for v in members)
        for patient in _patients(root):
            patient_case = f"chaos_{kind.lower()}_{int(patient.name):02d}"
            for name in (m for m in modalities if MODALITIES[m][0] == kind):
                case = _source_case(f"{patient_case}_{name.lower()}", patient, name, tolerance)
                case.group, case.annotated = patient_case, annotated
                case.meta = {"sequence": name, "patient": patient_case}
                cases.append(case)
    # one channel holding each case's sequence: "MR", or "image" with CT among them (so no CT-only normalisation)
    return SourceDataset(f"CHAOS_{'+'.join(modalities)}", ["MR" if kinds == ["MR"] else "image"], classes, values,
                         cases)


@register("chaos", "CHAOS abdominal CT/MR (DICOM slices + PNG masks; modality=CT|T2SPIR|T1DUAL..., or several "
                   "pooled: T2SPIR+T1DUAL_InPhase, MR, all) -> one prompt per organ: liver, right and left kidney, "
                   "spleen")
def convert_chaos(src: Path, dst: Path, *, overwrite: bool = False, spatial_dims: int = 3,
                  **options: Any) -> ConversionSummary:
    """Convert the CHAOS training set (see the module docstring for the layout, quirks and options).

    Args:
        src: the folder holding ``Train_Sets`` (or ``Train_Sets``, or its ``CT`` / ``MR`` folder).
        dst: the dataset folder to write (resumable).
        overwrite: rewrite every case.
        spatial_dims: 3, or 2 for one case per axial slice.
        **options: ``modality`` (required: a name, or several joined by ``+``) and the ``nnunet`` converter's
            options.

    Raises:
        MedTextSegError: a missing or unknown modality, ``T1DUAL`` pooled, no CHAOS folder, ``dst`` converted with
            another modality or list.
    """
    from medtextseg.converters.writer import check_conversion_options, record_conversion_options

    src, dst = Path(src), Path(dst)
    refuse_same_folder(src, dst)
    opts = ChaosOptions.parse(options)
    pooled = len(opts.modality) > 1
    source = read_chaos_source(src, opts.modality, opts.affine_tolerance)
    fingerprint = {"modality": list(opts.modality) if pooled else opts.modality[0]}
    record_conversion_options(check_conversion_options(dst, "chaos", fingerprint, overwrite), fingerprint)
    return convert_labelled(source, src, dst, "chaos", overwrite=overwrite, spatial_dims=spatial_dims, options=opts,
                            extra={"sequences": list(opts.modality)} if pooled else None)


__all__ = ["MODALITIES", "MR_GREY_LEVELS", "POOLS", "ChaosOptions", "convert_chaos", "find_modality_root",
           "mask_labels", "natural_key", "parse_modality", "read_chaos_case", "read_chaos_source"]

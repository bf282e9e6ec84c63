"""Duke-Breast-Cancer-MRI (TCIA): DCE-MRI DICOM series with breast, fibroglandular tissue, vessel and tumour masks.

Source layout (``--src``: the folder the downloads were put in; each part is found under it, or named by an
option)::

    Duke-Breast-Cancer-MRI/Breast_MRI_001/{study}/{series}/1-001.dcm ...      DICOM, one folder per series
    Segmentation_Masks_NRRD/Breast_MRI_001/Segmentation_Breast_MRI_001_Breast.seg.nrrd            (100 patients)
    Segmentation_Masks_NRRD/Breast_MRI_001/Segmentation_Breast_MRI_001_Dense_and_Vessels.seg.nrrd
    segmentations/expert/duke_001.nii.gz           MAMA-MIA expert tumour masks (Garrucho et al. 2025)
    Annotation_Boxes.xlsx (or .csv)                Patient ID, Start/End Row, Start/End Column, Start/End Slice

Series folders are named ``{SeriesNumber}-{description}-{nnnnn}`` ("descriptive" download) or by UID ("classic");
the description is read from the DICOM header (SeriesDescription), the folder name serving only when it is empty.
The dynamic series are recognised by their description, which varies with the scanner and year: ``ax dyn pre``,
``ax dyn 1st pass`` .. ``4th pass``, ``ax 3d dyn pre``, ``ax 3d dyn`` + ``Ph1/ax 3d dyn`` .. ``Ph4/...`` (also
``... MP``, ``ax dynamic``, ``Ax Vibrant MultiPhase``), ``1st ax dyn``, ``t1_fl3d_tra_dynVIEWS_spair_ pre`` /
``... 2nd pass``: "pre" or no phase word is the pre-contrast phase, ``1st``/``Ph1`` the first post-contrast one, and so
on. A dynamic series whose slices repeat their positions holds several phases (in time order).

Output: one case per patient (``Breast_MRI_001``), channels ``DCE_pre, DCE_post1 .. DCE_post{post_phases}`` on the
pre-contrast grid (its exact shape and affine; a post-contrast phase off that grid is resampled onto it, linearly).
Every mask is put on that grid by its world geometry (nearest neighbour where its grid differs; a mask that does not
overlap the grid skips the case). Label map: 1 ``breast``, 2 ``fibroglandular_tissue``, 3 ``breast_vessels``, 4
``breast_tumour_right``, 5 ``breast_tumour_left`` (later ones overwrite earlier ones). The segments of a ``.seg.nrrd``
are read from its header (``Segment{i}_Name``, ``_LabelValue``, ``_Layer``, one layer or several), so files whose
vessel and dense labels are swapped or layered still come out right; without segment fields the Breast file is
"> 0" and the Dense_and_Vessels file 1 = vessels, 2 = dense.

Tumour side: each connected component of the tumour mask (26-connectivity) is in the patient's right breast when its
centroid's RAS x exceeds the reference x (the breast mask's centroid when there is one, else the image centre), else
in the left; its voxels get label 4 or 5. Size, per side, from the largest component's longest voxel bounding-box
edge: ``small`` < 20 mm, ``medium`` 20-50 mm, ``large`` > 50 mm (the T1/T2/T3 limits of breast cancer staging).

Prompts per case (a class of ``prompt_vocabulary.json`` on each; ``absent`` = target ``[]``):

* with a tumour mask: ``"segment the breast tumour"`` (kind ``all``, class ``breast_tumour``, target 4 and 5), and per
  side ``"segment the left breast tumour"`` (kind ``single``, class ``breast_tumour_left``, target ``[5]``, meta
  ``side``, ``size``, ``longest_mm``, ``volume_ml``, ``n_lesions``, ``mentioned: ["side"]``, the box), or ``absent``
  for a side without tumour. The meta gives TextBCS's structured prompt ("location left; number one").
* with the Breast file: ``"segment the breast"`` (``anatomy``, target 1-5); with the Dense_and_Vessels file:
  ``"segment the fibroglandular tissue"`` and ``"segment the breast blood vessels"`` (``anatomy``, or ``absent``),
  each when the file has that segment.
* a mask (or segment) that is not given is not asked for at all (no ``absent`` prompt: unknown is not empty).

Annotation boxes. A box is not a mask and is never used as a target (TextBCS, METHODS.md section 4, trains and
scores on tumour masks). It is kept in the tumour prompts' meta (``box``: voxel index ranges ``i``, ``j``, ``k`` on
the output grid; ``box_overlap``: the fraction of tumour voxels inside it) and, with ``box_check=true``, checks the
geometry: a tumour mask without a voxel in its patient's box skips the case (a mask off the series' grid).
Rows and columns are 1-based pixel rows (j) and columns (i) of the DICOM slices; slices are 1-based in the
pre-contrast series' InstanceNumber order.

Options (``--option KEY=VALUE``):

* ``images=PATH`` (the folder of ``Breast_MRI_*`` folders; default: a ``Duke-Breast-Cancer-MRI`` folder up to three
  levels under ``src``, e.g. ``manifest-*/Duke-Breast-Cancer-MRI``, else ``src``), ``breast_masks=PATH``
  (``Segmentation_Masks_NRRD``), ``tumour_masks=PATH`` (the folder of ``duke_NNN.nii.gz``, e.g. MAMA-MIA's
  ``segmentations/expert``), ``boxes=PATH`` (``Annotation_Boxes.xlsx`` or ``.csv``): found under ``src`` when not
  given; each may be missing, but a patient needs one mask.
* ``post_phases=N`` (1; 1 to 4): post-contrast phases as channels after the pre-contrast one; a patient with fewer is
  skipped.
* ``box_check=true|false`` (``true``); ``affine_tolerance=MM`` (0.001: how far grids may differ and count as one).
* ``slices=tumour|foreground|all`` (``--spatial-dims 2``: the axial slices with tumour, with any label, or all) as
  cases ``{patient}_z{k:03d}``; splits are drawn per patient.

A second run into the same folder must use the same ``post_phases``, ``box_check``, ``slices`` and mask sources
(recorded in ``duke_breast_conversion.json``). Skipped with the reason, by patient: no dynamic pre-contrast series or
too few phases, two series for one phase, no mask, an unreadable file, a mask off the grid or outside its box.

Example:
    >>> convert_duke_breast(Path("duke"), Path("data/duke"), post_phases=2)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np

from medtextseg.converters.option_values import (
    ConverterOptions,
    boolean,
    existing_path,
    integer_in,
    number_in,
    one_of,
)
from medtextseg.converters.registry import register
from medtextseg.utils.errors import MedTextSegError, refuse_same_folder

if TYPE_CHECKING:
    from medtextseg.converters.writer import ConversionSummary, DatasetWriter
    from medtextseg.data.dicom_series import DicomVolume, SliceHeader

PATIENT = re.compile(r"^Breast_MRI_(\d+)$", re.IGNORECASE)
BREAST, FGT, VESSELS, TUMOUR_RIGHT, TUMOUR_LEFT = 1, 2, 3, 4, 5
LABELS = {"background": 0, "breast": BREAST, "fibroglandular_tissue": FGT, "breast_vessels": VESSELS,
          "breast_tumour_right": TUMOUR_RIGHT, "breast_tumour_left": TUMOUR_LEFT}
TUMOUR_LABELS = {"right": TUMOUR_RIGHT, "left": TUMOUR_LEFT}
CLASSES = ["breast_tumour", "breast_tumour_right", "breast_tumour_left", "breast", "fibroglandular_tissue",
           "breast_vessels"]
SIZE_LIMITS_MM = (20.0, 50.0)  # small < 20 <= medium <= 50 < large (breast cancer T1 / T2 / T3)
SLICE_CHOICES = ("tumour", "foreground", "all")
BOX_COLUMNS = ("start row", "end row", "start column", "end column", "start slice", "end slice")
PRE_CONTRAST = "DCE pre-contrast"


class DukeOptions(ConverterOptions):
    """The converter's options (see the module docstring); the paths not given are found by
    :func:`parse_options`."""

    converter: ClassVar[str] = "duke_breast"
    images: Annotated[Path | None, existing_path()] = None
    breast_masks: Annotated[Path | None, existing_path()] = None
    tumour_masks: Annotated[Path | None, existing_path()] = None
    boxes: Annotated[Path | None, existing_path()] = None
    post_phases: Annotated[int, integer_in(1, 4)] = 1
    box_check: Annotated[bool, boolean()] = True
    slices: Annotated[str, one_of(*SLICE_CHOICES)] = "tumour"
    affine_tolerance: Annotated[float, number_in(0.0)] = 1e-3

    def fingerprint(self) -> dict[str, Any]:
        """What decides a case's content (the folders themselves may move between runs)."""
        return {"post_phases": self.post_phases, "box_check": self.box_check, "slices": self.slices,
                "breast_masks": self.breast_masks is not None, "tumour_masks": self.tumour_masks is not None,
                "boxes": self.boxes is not None}


OPTIONS = DukeOptions.option_names()


@dataclass
class CaseMasks:
    """What a case has on the pre-contrast grid: the label map ``[X, Y, Z]`` int64, which masks were given, and the
    tumour meta per side (``right``/``left``) plus the meta of all tumours together."""

    label: np.ndarray
    has_breast: bool = False
    has_fgt: bool = False
    has_vessels: bool = False
    has_tumour: bool = False
    sides: dict[str, dict[str, Any]] = field(default_factory=dict)
    tumour: dict[str, Any] = field(default_factory=dict)


# -------------------------------------------------------------------- options
def _find(src: Path, pattern: str, want_dir: bool) -> Path | None:
    """The first path matching ``pattern`` at depth 0 to 3 under ``src`` (sorted), or None."""
    for depth in range(4):
        found = sorted(p for p in src.glob("/".join(["*"] * depth + [pattern]))
                       if (p.is_dir() if want_dir else p.is_file()) and "__MACOSX" not in p.parts)
        if found:
            return found[0]
    return None


def parse_options(src: Path, options: dict[str, Any]) -> DukeOptions:
    """Validate ``--option`` strings (or Python values) into :class:`DukeOptions`; the paths not given are looked
    for under ``src`` (see the module docstring).

    Raises:
        MedTextSegError: an unknown option (with the closest known one), a bad value, a path that does not exist.
    """
    parsed = DukeOptions.parse(options)
    found = {
        "images": parsed.images or (src / "Duke-Breast-Cancer-MRI" if (src / "Duke-Breast-Cancer-MRI").is_dir()
                                    else _find(src, "Duke-Breast-Cancer-MRI", True) or src),
        "boxes": parsed.boxes or _find(src, "Annotation_Boxes.xlsx", False) or _find(src, "Annotation_Boxes.csv",
                                                                                     False),
        "breast_masks": parsed.breast_masks or _find(src, "Segmentation_Masks_NRRD", True),
        "tumour_masks": parsed.tumour_masks or _find(src, "segmentations/expert", True)}
    return parsed.model_copy(update=found)


# -------------------------------------------------------------------- dynamic series
def dce_phase(description: str) -> int | None:
    """The DCE phase a series description names: 0 pre-contrast, 1..9 post-contrast, None for another series.

    >>> [dce_phase(d) for d in ("ax dyn pre", "ax dyn 1st pass", "Ph3/ax 3d dyn MP", "ax 3d dyn", "ax t1 +c")]
    [0, 1, 3, 0, None]
    """
    text = re.sub(r"[^a-z0-9]+", " ", description.lower()).strip()
    words = text.split()
    dynamic = "dyn" in text or "multiphase" in text or text in ("ax 3d pre", "ax 3d pre contrast")
    if not dynamic or any(word.startswith(("sub", "mip")) for word in words):
        return None
    for pattern in (r"\bph\s?([1-9])", r"\b([1-9])\s?(?:st|nd|rd|th)\b"):
        found = re.search(pattern, text)
        if found:
            return int(found.group(1))
    return 0


def _folder_description(folder: Path) -> str:
    """The description in a TCIA "descriptive" series folder name ``3.000000-ax dyn pre-93877``."""
    return re.sub(r"-\d+$", "", re.sub(r"^\d+(\.\d+)?-", "", folder.name))


def find_dce_phases(patient: Path, needed: int) -> dict[int, tuple[Path, str, list[SliceHeader]]]:
    """Phase (0 .. ``needed``) -> (its series folder; that folder relative to ``patient``, for messages; the headers
    of its slices).

    Raises:
        MedTextSegError: two series for one needed phase, or a needed phase missing (naming the phases found).
    """
    from medtextseg.data.dicom_series import read_header, read_headers, split_volumes

    folders = sorted({path.parent for path in patient.rglob("*.dcm") if not path.name.startswith(".")})
    found: dict[int, list[tuple[Path, str, list[SliceHeader]]]] = {}
    for folder in folders:
        files = sorted(p for p in folder.glob("*.dcm") if not p.name.startswith("."))
        description = read_header(files[0]).description or _folder_description(folder)
        phase = dce_phase(description)
        if phase is None or phase > needed:
            continue
        where = str(folder.relative_to(patient))
        volumes = split_volumes(read_headers(files))  # a series of several phases repeats its positions
        for offset, volume in enumerate(volumes):
            label = where if len(volumes) == 1 else f"{where} (volume {offset + 1} of {len(volumes)})"
            found.setdefault(phase + offset, []).append((folder, label, volume))
    names = ["pre", *(f"post {n}" for n in range(1, 10))]
    for phase in range(needed + 1):
        if phase not in found:
            have = ", ".join(names[p] for p in sorted(found)) or "none"
            raise MedTextSegError(f"no DCE {names[phase]}-contrast series among {len(folders)} series (phases found: "
                                  f"{have})" if phase == 0 else
                                  f"no DCE {names[phase]} series (phases found: {have}); lower --option post_phases")
        if len(found[phase]) > 1:
            raise MedTextSegError(f"{len(found[phase])} series claim the DCE {names[phase]} phase: "
                                  f"{'; '.join(label for _, label, _ in found[phase])}")
    return {phase: found[phase][0] for phase in range(needed + 1)}


# -------------------------------------------------------------------- annotation boxes
def read_boxes(path: Path) -> dict[str, tuple[int, ...]]:
    """``Annotation_Boxes.xlsx`` / ``.csv`` -> patient id -> (start row, end row, start column, end column, start
    slice, end slice), 1-based as in the file.

    Raises:
        MedTextSegError: no header row with ``Patient ID`` and the six box columns, or a non-integer box value.
    """
    from medtextseg.converters.tables import read_rows

    rows = read_rows(path)
    headers = [[" ".join(cell.lower().split()) for cell in row] for row in rows]
    number = next((n for n, names in enumerate(headers)
                   if all(column in names for column in ("patient id", *BOX_COLUMNS))), None)
    if number is None:
        raise MedTextSegError(f"{path}: no header row with Patient ID, {', '.join(c.title() for c in BOX_COLUMNS)}")
    where = [headers[number].index(column) for column in ("patient id", *BOX_COLUMNS)]
    boxes = {}
    for line, row in enumerate(rows[number + 1:], start=number + 2):
        cells = [row[i].strip() if i < len(row) else "" for i in where]
        if not cells[0]:
            continue
        try:
            boxes[cells[0]] = tuple(int(float(value)) for value in cells[1:])
        except ValueError:
            raise MedTextSegError(f"{path}: row {line} ({cells[0]}): box values must be integers, got "
                                  f"{cells[1:]}") from None
    return boxes


def box_on_grid(box: tuple[int, ...], pre: list[SliceHeader], files: tuple[Path, ...],
                shape: tuple[int, int, int], patient: str) -> dict[str, list[int]]:
    """A box's inclusive voxel index ranges ``{"i": [lo, hi], "j": ..., "k": ...}`` on the pre-contrast grid.

    Args:
        box: (start row, end row, start column, end column, start slice, end slice), 1-based.
        pre: the pre-contrast slice headers (for their InstanceNumber order).
        files: the slice files in voxel-k order.
        shape: the grid's shape ``(X, Y, Z)``.

    Raises:
        MedTextSegError: a box outside the grid.
    """
    by_instance = sorted(pre, key=lambda h: (h.instance if h.instance is not None else 0, h.path.name))
    rows, columns, slices = sorted(box[0:2]), sorted(box[2:4]), sorted(box[4:6])
    if rows[0] < 1 or columns[0] < 1 or slices[0] < 1 or rows[1] > shape[1] or columns[1] > shape[0] or \
            slices[1] > shape[2]:
        raise MedTextSegError(f"Annotation_Boxes row for {patient}: rows {rows}, columns {columns}, slices {slices} "
                              f"fall outside the pre-contrast series ({shape[1]} rows, {shape[0]} columns, "
                              f"{shape[2]} slices)")
    ks = sorted(files.index(by_instance[s - 1].path) for s in slices)
    return {"i": [columns[0] - 1, columns[1] - 1], "j": [rows[0] - 1, rows[1] - 1], "k": ks}


# -------------------------------------------------------------------- masks
def _itk_message(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1].removeprefix("sitk::ERROR: ") if lines else type(error).__name__


def read_segments(path: Path, breast_file: bool) -> dict[str, Any]:
    """The masks of a Slicer ``.seg.nrrd``: ``breast`` / ``fgt`` / ``vessels`` -> a SimpleITK uint8 image.

    Segments come from the header (``Segment{i}_Name``, ``_LabelValue``, ``_Layer``); without them the Breast file
    is "> 0" and the Dense_and_Vessels file 1 = vessels, 2 = dense (the release's convention).

    Raises:
        MedTextSegError: an unreadable file, a layer that does not exist, or no segment recognised by name.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise MedTextSegError(f"{path.name}: cannot read ({_itk_message(error)})") from None
    meta = {key: reader.GetMetaData(key).strip() for key in reader.GetMetaDataKeys()}
    layers = ([image] if image.GetNumberOfComponentsPerPixel() == 1 else
              [sitk.VectorIndexSelectionCast(image, c) for c in range(image.GetNumberOfComponentsPerPixel())])
    segments = []
    index = 0
    while f"Segment{index}_Name" in meta or f"Segment{index}_LabelValue" in meta:
        segments.append((meta.get(f"Segment{index}_Name", ""), int(meta.get(f"Segment{index}_Layer", 0) or 0),
                         int(meta.get(f"Segment{index}_LabelValue", 1) or 1)))
        index += 1
    if not segments:
        segments = [("breast", 0, 0)] if breast_file else [("vessels", 0, 1), ("dense", 0, 2)]
    masks: dict[str, Any] = {}
    for name, layer, value in segments:
        lowered = name.lower()
        kind = ("vessels" if "vessel" in lowered else
                "fgt" if any(w in lowered for w in ("dense", "fgt", "fibroglandular", "gland")) else
                "breast" if "breast" in lowered else None)
        if kind is None:
            continue
        if layer >= len(layers):
            raise MedTextSegError(f"{path.name}: segment {name!r} is on layer {layer}, the file has {len(layers)}")
        mask = layers[layer] > 0 if value == 0 else layers[layer] == value
        masks[kind] = sitk.Or(masks[kind], mask) if kind in masks else mask
    if not masks:
        raise MedTextSegError(f"{path.name}: no breast, dense or vessel segment among "
                              f"{', '.join(repr(n) for n, _, _ in segments)}")
    return masks


@functools.lru_cache(maxsize=4)
def _lower_case_listing(folder: Path) -> dict[str, Path]:
    """File name in lower case -> file, for a folder of ~1500 masks listed once."""
    return {path.name.lower(): path for path in sorted(folder.iterdir()) if path.is_file()}


def mask_files(opts: DukeOptions, patient: str) -> tuple[Path | None, Path | None, Path | None]:
    """(tumour NIfTI, Breast .seg.nrrd, Dense_and_Vessels .seg.nrrd) of a patient, each None when not given."""
    number = PATIENT.match(patient).group(1)
    tumour = None
    if opts.tumour_masks is not None:
        tumour = _lower_case_listing(opts.tumour_masks).get(f"duke_{number}.nii.gz")
    breast = dense = None
    if opts.breast_masks is not None:
        for folder in (opts.breast_masks / patient, opts.breast_masks):
            breast = breast or next(iter(sorted(folder.glob(f"Segmentation_{patient}_Breast.seg.nrrd"))), None)
            dense = dense or next(iter(sorted(folder.glob(f"Segmentation_{patient}_Dense_and_Vessels.seg.nrrd"))),
                                  None)
    return tumour, breast, dense


def _read_image(path: Path) -> Any:
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise MedTextSegError(f"{path.name}: cannot read ({_itk_message(error)})") from None


def _longest_mm(mask: np.ndarray, spacing: np.ndarray) -> float:
    """The longest edge (mm) of a mask's voxel bounding box."""
    where = np.argwhere(mask)
    return float(((where.max(0) - where.min(0) + 1) * spacing).max())


def size_word(longest_mm: float) -> str:
    """``small`` / ``medium`` / ``large`` by the breast cancer T-stage limits (20 and 50 mm)."""
    return "small" if longest_mm < SIZE_LIMITS_MM[0] else "large" if longest_mm > SIZE_LIMITS_MM[1] else "medium"


def tumour_sides(tumour: np.ndarray, affine: np.ndarray, breast: np.ndarray | None
                 ) -> tuple[np.ndarray, dict[str, dict[str, Any]], str]:
    """Label each tumour component by the breast it lies in.

    Args:
        tumour: ``[X, Y, Z]`` bool tumour mask.
        affine: 4 x 4 voxel -> RAS world matrix.
        breast: ``[X, Y, Z]`` bool breast mask, or None (the reference is then the image centre).

    Returns:
        (``[X, Y, Z]`` int64: 0, 4 right, 5 left; side -> meta of its tumours; the side reference, ``breast_mask``
        or ``image_centre``).
    """
    from scipy import ndimage

    from medtextseg.converters.picai import side_reference

    components, count = ndimage.label(tumour, structure=np.ones((3, 3, 3), dtype=bool))
    reference, reference_x = side_reference(tumour.shape, affine, breast)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    labels = np.zeros(tumour.shape, dtype=np.int64)
    found: dict[str, list[np.ndarray]] = {}
    for component in range(1, count + 1):
        mask = components == component
        centroid = np.argwhere(mask).mean(0) @ affine[:3, :3].T + affine[:3, 3]
        side = "right" if centroid[0] > reference_x else "left"
        labels[mask] = TUMOUR_LABELS[side]
        found.setdefault(side, []).append(mask)
    sides = {}
    for side, masks in found.items():
        largest = max(masks, key=lambda m: int(m.sum()))
        longest = _longest_mm(largest, spacing)
        sides[side] = {"side": side, "size": size_word(longest), "longest_mm": round(longest, 2),
                       "volume_ml": round(sum(int(m.sum()) for m in masks) * voxel_ml, 4), "n_lesions": len(masks),
                       "mentioned": ["side"]}
    return labels, sides, "breast_mask" if reference == "gland" else reference


# -------------------------------------------------------------------- one patient
def load_patient(patient: str, folder: Path, opts: DukeOptions, boxes: dict[str, tuple[int, ...]]
                 ) -> tuple[list[np.ndarray], np.ndarray, CaseMasks]:
    """Read one patient: (channels ``[X, Y, Z]`` float32, pre then post phases; RAS affine; its masks).

    Raises:
        MedTextSegError: why the patient cannot be converted (see the module docstring).
    """
    from medtextseg.converters.picai import on_grid
    from medtextseg.data.dicom_series import as_sitk_image, volume_from_headers

    tumour_path, breast_path, dense_path = mask_files(opts, patient)
    if tumour_path is None and breast_path is None and dense_path is None:
        raise MedTextSegError("no mask: no tumour mask duke_NNN.nii.gz, Breast or Dense_and_Vessels .seg.nrrd for "
                              "this patient")
    phases = find_dce_phases(folder, opts.post_phases)
    pre_folder, _, pre_headers = phases[0]
    pre: DicomVolume = volume_from_headers(pre_headers, pre_folder)
    reference = as_sitk_image(pre)
    channels = [pre.array.astype(np.float32)]
    for phase in range(1, opts.post_phases + 1):
        series_folder, where, headers = phases[phase]
        volume = volume_from_headers(headers, series_folder)
        if volume.array.shape == pre.array.shape and np.allclose(volume.affine, pre.affine,
                                                                 atol=opts.affine_tolerance):
            channels.append(volume.array.astype(np.float32))
        else:
            channels.append(on_grid(as_sitk_image(volume), reference, where, False, opts.affine_tolerance,
                                    PRE_CONTRAST))
    shape = pre.array.shape
    masks = CaseMasks(np.zeros(shape, dtype=np.int64))

    def put(image: Any, name: str) -> np.ndarray:
        return on_grid(image, reference, name, True, opts.affine_tolerance, PRE_CONTRAST) > 0

    breast = None
    if breast_path is not None:
        segments = read_segments(breast_path, True)
        if "breast" not in segments:
            raise MedTextSegError(f"{breast_path.name}: no breast segment")
        breast = put(segments["breast"], breast_path.name)
        masks.label[breast], masks.has_breast = BREAST, True
    if dense_path is not None:
        segments = read_segments(dense_path, False)
        for kind, value in (("fgt", FGT), ("vessels", VESSELS)):
            if kind in segments:
                masks.label[put(segments[kind], dense_path.name)] = value
        masks.has_fgt, masks.has_vessels = "fgt" in segments, "vessels" in segments
    if tumour_path is not None:
        tumour = put(_read_image(tumour_path), tumour_path.name)
        labels, masks.sides, side_reference = tumour_sides(tumour, pre.affine, breast)
        masks.label[labels > 0] = labels[labels > 0]
        masks.has_tumour = True
        masks.tumour = {"n_lesions": sum(m["n_lesions"] for m in masks.sides.values()),
                        "volume_ml": round(sum(m["volume_ml"] for m in masks.sides.values()), 4),
                        "side": sorted(masks.sides), "side_reference": side_reference}
        box = boxes.get(patient)
        if box is not None:
            try:
                ranges = box_on_grid(box, pre_headers, pre.geometry.files, shape, patient)
            except MedTextSegError:
                if opts.box_check:
                    raise
                ranges = None
            if ranges is not None:
                (i0, i1), (j0, j1), (k0, k1) = ranges["i"], ranges["j"], ranges["k"]
                inside = int(tumour[i0:i1 + 1, j0:j1 + 1, k0:k1 + 1].sum())
                overlap = inside / max(int(tumour.sum()), 1)
                if opts.box_check and tumour.any() and inside == 0:
                    raise MedTextSegError(f"{tumour_path.name}: no tumour voxel inside the Annotation_Boxes box (i "
                                          f"{ranges['i']}, j {ranges['j']}, k {ranges['k']}): is the mask on this "
                                          "series' grid? (--option box_check=false keeps the case)")
                for meta in (*masks.sides.values(), masks.tumour):
                    meta.update(box=ranges, box_overlap=round(overlap, 4))
    return channels, pre.affine, masks


def make_prompts(masks: CaseMasks, present: set[int], vocabulary: Any,
                 meta: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The prompt lines (without ``case``) of a case or slice whose label map holds the values ``present``.

    Only masks the case has are asked for (see the module docstring); ``meta`` (e.g. the slice) is added to every line.
    """
    extra = dict(meta or {})
    lines: list[dict[str, Any]] = []

    def line(name: str, target: list[int], kind: str, line_meta: dict[str, Any]) -> None:
        entry = {"prompt": vocabulary.canonical(name), "target": target, "kind": kind if target else "absent",
                 "class": name}
        if line_meta or extra:
            entry["meta"] = {**line_meta, **extra}
        lines.append(entry)

    if masks.has_tumour:
        found = [value for value in (TUMOUR_RIGHT, TUMOUR_LEFT) if value in present]
        line("breast_tumour", found, "all", masks.tumour)
        for side, value in TUMOUR_LABELS.items():
            line(f"breast_tumour_{side}", [value] if value in present else [], "single",
                 masks.sides[side] if value in present else {"side": side})
    if masks.has_breast:
        line("breast", [v for v in (BREAST, FGT, VESSELS, TUMOUR_RIGHT, TUMOUR_LEFT) if v in present], "anatomy", {})
    if masks.has_fgt:
        line("fibroglandular_tissue", [FGT] if FGT in present else [], "anatomy", {})
    if masks.has_vessels:
        line("breast_vessels", [VESSELS] if VESSELS in present else [], "anatomy", {})
    return lines


def _slice_indices(label: np.ndarray, slices: str) -> list[int]:
    depth = label.shape[2]
    if slices == "all":
        return list(range(depth))
    wanted = label >= TUMOUR_RIGHT if slices == "tumour" else label > 0
    return np.flatnonzero(wanted.reshape(-1, depth).any(0)).tolist()


def convert_patient(writer: DatasetWriter, patient: str, folder: Path, opts: DukeOptions,
                    boxes: dict[str, tuple[int, ...]], vocabulary: Any) -> list[str]:
    """Write one patient (3D: one case; 2D: its selected slices) unless done; return its output case ids.

    In 2D the patient is read before knowing its slices (there is no label file to look at), also on a second run.
    """
    from medtextseg.converters.nnunet import _slice_affine

    if writer.spatial_dims == 3 and writer.is_done(patient):
        return [patient]
    channels, affine, masks = load_patient(patient, folder, opts, boxes)
    if writer.spatial_dims == 3:
        writer.write_case(patient, channels, affine, masks.label,
                          make_prompts(masks, set(np.unique(masks.label).tolist()), vocabulary))
        return [patient]
    ids = [(f"{patient}_z{k:03d}", k) for k in _slice_indices(masks.label, opts.slices)]
    if not ids:
        raise MedTextSegError(f"no axial slice to write (slices={opts.slices}: no "
                              f"{'tumour' if opts.slices == 'tumour' else 'labelled'} voxel)")
    for name, k in ids:
        if writer.is_done(name):
            continue
        part = masks.label[:, :, k]
        writer.write_case(name, [c[:, :, k] for c in channels], _slice_affine(affine, k), part,
                          make_prompts(masks, set(np.unique(part).tolist()), vocabulary,
                                       {"source_case": patient, "slice": k}))
    return [name for name, _ in ids]


# -------------------------------------------------------------------- the conversion
def find_patients(images: Path) -> dict[str, Path]:
    """Patient id (``Breast_MRI_001``) -> its folder, for every ``Breast_MRI_NNN`` folder of ``images``.

    Raises:
        MedTextSegError: none (not the image folder of the collection).
    """
    patients = {p.name: p for p in sorted(images.iterdir()) if p.is_dir() and PATIENT.match(p.name)}
    if not patients and PATIENT.match(images.name):
        patients = {images.name: images}
    if not patients:
        raise MedTextSegError(f"{images}: no Breast_MRI_NNN patient folders; pass --option images=PATH (the "
                              "Duke-Breast-Cancer-MRI folder of the download)")
    return patients


@register("duke_breast", "Duke-Breast-Cancer-MRI DCE-MRI (DICOM series as channels) + breast/FGT .seg.nrrd and "
                         "expert tumour masks -> tumour (by side), breast and FGT prompts")
def convert_duke_breast(src: Path, dst: Path, *, overwrite: bool = False, spatial_dims: int = 3,
                        **options: Any) -> ConversionSummary:
    """Convert Duke-Breast-Cancer-MRI (see the module docstring for the layout, prompts and options).

    Args:
        src: the folder holding the downloads (images, masks, Annotation_Boxes).
        dst: the dataset folder to write (resumable: patients already written are kept).
        overwrite: rewrite every patient.
        spatial_dims: 3, or 2 for one case per selected axial slice.
        **options: ``--option`` strings or Python values (see :data:`OPTIONS`).

    Raises:
        MedTextSegError: a bad option, no patient folder, ``dst`` written earlier with other options.
    """
    from medtextseg.converters.nnunet import output_vocabulary
    from medtextseg.converters.writer import (
        DatasetWriter,
        check_conversion_options,
        group_splits,
        record_conversion_options,
    )

    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise MedTextSegError(f"--spatial-dims must be 2 or 3, got {spatial_dims}")
    src, dst = Path(src), Path(dst)
    refuse_same_folder(src, dst)
    opts = parse_options(src, options)
    patients = find_patients(opts.images)
    boxes = read_boxes(opts.boxes) if opts.boxes is not None else {}
    record_conversion_options(check_conversion_options(dst, "duke_breast", opts.fingerprint(), overwrite),
                              opts.fingerprint())
    channel_names = ["DCE_pre", *(f"DCE_post{n}" for n in range(1, opts.post_phases + 1))]
    extra = {"converter": "duke_breast", "source": str(src), "post_phases": opts.post_phases,
             "tumour_masks": str(opts.tumour_masks) if opts.tumour_masks else None,
             "breast_masks": str(opts.breast_masks) if opts.breast_masks else None}
    writer = DatasetWriter(dst, "Duke-Breast-Cancer-MRI", channel_names, LABELS, spatial_dims, overwrite, extra=extra)
    vocabulary = output_vocabulary(dst, CLASSES, overwrite)
    outputs = writer.convert_each(
        patients.items(), lambda item: convert_patient(writer, *item, opts, boxes, vocabulary), lambda item: item[0])
    return writer.finish(splits=group_splits(dict(sorted(outputs.items()))),
                         description=f"converted by medtextseg convert duke_breast from {src}", groups=outputs)


__all__ = ["CLASSES", "LABELS", "OPTIONS", "CaseMasks", "DukeOptions", "box_on_grid", "convert_duke_breast",
           "dce_phase", "find_dce_phases", "find_patients", "load_patient", "make_prompts", "mask_files",
           "parse_options", "read_boxes", "read_segments", "size_word", "tumour_sides"]

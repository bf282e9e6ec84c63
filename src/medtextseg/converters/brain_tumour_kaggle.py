"""Cheng et al.'s 2D brain tumour MRI (glioma, meningioma, pituitary tumour, with masks) -> tumour-type prompts.

3064 T1-weighted contrast-enhanced slices from 233 patients (Nanfang Hospital and Tianjin Medical University,
2005-2010), each with one tumour outlined: 708 meningioma, 1426 glioma, 930 pituitary tumour. Two public layouts
(``layout=auto`` takes ``mat`` when ``src`` holds a ``.mat`` case file, else ``png``):

* ``mat``, the figshare release "brain tumor dataset" (Cheng 2017, doi 10.6084/m9.figshare.1512427): one MATLAB
  v7.3 file (HDF5, read with h5py) per slice, ``{N}.mat`` with N = 1..3064, shipped in the four archives
  ``brainTumorDataPublic_1-766.zip`` .. ``brainTumorDataPublic_2299-3064.zip``. They are found anywhere under
  ``src``, extracted or still inside those zip files (read from the archive, no extraction needed). The struct
  ``cjdata`` holds ``image`` (int16, 512 x 512, a few 256 x 256), ``label`` (1 meningioma, 2 glioma, 3 pituitary
  tumour), ``PID`` (the patient id, a MATLAB char array), ``tumorMask`` (1 = tumour) and ``tumorBorder``
  (ignored). ``cvind.mat`` (the release's cross-validation folds) is ignored; a ``.mat`` file saved in the older
  MATLAB v5 format is read with scipy.
* ``png``, the Kaggle "Brain Tumor Dataset: Segmentation & Classification" (indk214), the version the FiLM/CBN
  method uses (``METHODS.md`` section 3.6): ``DATASET/Segmentation/{Glioma,Meningioma,Pituitary tumor}/enh_{N}.png``
  with its mask ``enh_{N}_mask.png`` beside it (512 x 512 8-bit grey; masks 255 on the tumour and 3, not 0,
  elsewhere). The tumour type is the nearest folder whose name contains ``glioma``, ``meningioma`` or
  ``pituitary``; an image's mask is ``{stem}_mask`` (``.png``/``.jpg``/``.jpeg``/``.tif``) beside it, or a file of
  the same stem in a sibling ``masks/`` folder when the image lies in ``images/``. Only folders that hold masks are
  read, so the ``DATASET/Classification/{Training,Testing}/{glioma,...,notumor}`` images (no masks) are left out.
  Colour images are turned grey (PIL ``L``). A mask pixel is tumour when it is >= 128, or > 0 for a 0/1 mask
  (one whose maximum is 1): this reads the 3/255 masks, 0/255 masks and JPEG-compressed masks alike.

Output (``--spatial-dims 2``, required): one case per slice, ``btd_{N:04d}`` (N from the ``.mat`` name, or the
digits that end the PNG name: ``enh_1841`` -> ``btd_1841``, the figshare number), stored as ``X x Y x 1`` NIfTI,
channel ``T1CE``, with voxel i along the image's columns (left to right), j along its rows (top to bottom) and a
unit-spacing identity affine: neither layout records pixel size, orientation or even the view (the set mixes
axial, coronal and sagittal slices), so world coordinates carry no anatomical meaning and "left"/"right" cannot be
read from them. The label map holds the tumour with its type's value: 1 ``meningioma``, 2 ``glioma``, 3
``pituitary_tumour`` (the figshare numbering). Per case, three prompt lines with ``class`` set (built-in wording
in ``prompt_vocabulary.json``): ``anatomy`` for its tumour type ("segment the pituitary tumour", target its
value) and ``absent`` for the two other types (target ``[]``); ``meta`` holds ``tumour_type``, ``patient`` (or
null), ``figshare_id`` (or null) and ``source_file``.

Splits (80/10/10 by a hash) are drawn per patient, so the slices of one patient never straddle train and test:
the ``mat`` layout has the PID of every slice; the PNG layout has none, so its slices are split one by one (a
patient's slices may then land in train and test: ``dataset.json`` says ``"split_unit": "image"``) unless
``patients`` maps them to patients.

Options (``--option KEY=VALUE``):

* ``layout=auto|mat|png`` (``auto``).
* ``patients=PATH`` (``png`` layout): where to find each slice's patient: a folder holding the figshare ``.mat``
  files (PID of ``{N}.mat`` for the image whose name ends in N: the Kaggle names keep the figshare numbers), or a
  ``.csv`` with columns ``image`` (the file name, its stem, or N) and ``patient``.

Example:
    >>> summary = convert_brain_tumour_kaggle(Path("figshare"), Path("data/brain_tumour"),  # doctest: +SKIP
    ...                                       spatial_dims=2)
    >>> summary.line()  # doctest: +SKIP
    '3064 cases in data/brain_tumour (3064 converted, 0 already done)'
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np

from medtextseg.converters.option_values import ConverterOptions, one_of, optional_path
from medtextseg.converters.registry import register
from medtextseg.utils.errors import MedTextSegError, refuse_same_folder

if TYPE_CHECKING:
    from medtextseg.converters.writer import ConversionSummary, DatasetWriter
    from medtextseg.data.vocabulary import PromptVocabulary

CONVERTER = "brain_tumour_kaggle"
LAYOUTS = ("auto", "mat", "png")
# the figshare label numbers, kept as label values
CLASSES: dict[str, int] = {"meningioma": 1, "glioma": 2, "pituitary_tumour": 3}
FOLDER_WORDS = {"meningioma": "meningioma", "glioma": "glioma", "pituitary": "pituitary_tumour"}
IMAGE_ENDINGS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
PAIR_FOLDERS = ("images", "image", "imgs", "masks", "mask")
IGNORED_MAT = ("cvind.mat",)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
CHANNEL = "T1CE"


@dataclass(frozen=True)
class SourceSlice:
    """One source slice: where its file is (a path, or a member of a zip archive) and what its case is called.

    ``mask`` and ``tumour_type`` are set for the PNG layout (a ``.mat`` file holds both inside it).
    """

    case: str
    path: Path
    member: str = ""
    mask: Path | None = None
    tumour_type: str = ""
    number: int | None = None

    @property
    def name(self) -> str:
        return f"{self.path.name}:{self.member}" if self.member else self.path.name


@dataclass
class TumourSlice:
    """A slice read from its files: ``image`` ``[X, Y]`` float32 (X = columns, Y = rows), ``mask`` ``[X, Y]`` bool,
    ``tumour_type`` a key of :data:`CLASSES`, ``patient`` the PID (or None)."""

    image: np.ndarray
    mask: np.ndarray
    tumour_type: str
    patient: str | None


# -------------------------------------------------------------------- finding the slices
def _case_id(stem: str, tumour_type: str = "") -> tuple[str, int | None]:
    """``btd_{N:04d}`` from the digits ending ``stem`` (the figshare number), else ``btd_{type}_{stem}``."""
    found = re.search(r"(\d+)$", stem)
    if found:
        return f"btd_{int(found.group(1)):04d}", int(found.group(1))
    return "btd_" + re.sub(r"[^A-Za-z0-9_-]+", "_", f"{tumour_type}_{stem}".strip("_")), None


def _is_case_mat(name: str) -> bool:
    return name.lower().endswith(".mat") and name.lower() not in IGNORED_MAT and not name.startswith(".")


def find_mat_slices(src: Path) -> list[SourceSlice]:
    """Every ``{N}.mat`` under ``src``, as a file or inside a ``.zip`` archive, sorted by case id.

    A case found twice (extracted and in its archive) is taken once, the extracted file first.
    """
    found: dict[str, SourceSlice] = {}
    for path in sorted(src.rglob("*.mat")):
        if _is_case_mat(path.name):
            case, number = _case_id(path.stem)
            found.setdefault(case, SourceSlice(case, path, number=number))
    for archive in sorted(src.rglob("*.zip")):
        try:
            with zipfile.ZipFile(archive) as handle:
                members = [m for m in handle.namelist() if _is_case_mat(Path(m).name)]
        except (zipfile.BadZipFile, OSError):
            continue  # an unrelated or broken archive: its cases, if any, are missing from the listing
        for member in sorted(members):
            case, number = _case_id(Path(member).stem)
            found.setdefault(case, SourceSlice(case, archive, member, number=number))
    return [found[case] for case in sorted(found)]


def _tumour_type_of(folder: Path, src: Path) -> str:
    """The tumour type named by ``folder`` or its nearest ancestor below ``src`` ("" when none is)."""
    for part in [folder, *folder.parents]:
        name = part.name.lower()
        for word, tumour_type in FOLDER_WORDS.items():
            if word in name:
                return tumour_type
        if part == src:
            break
    return ""


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_ENDINGS and not path.name.startswith(".")


def _is_mask(path: Path) -> bool:
    return path.stem.lower().endswith("_mask") or path.parent.name.lower() in ("masks", "mask")


def _pair_key(path: Path) -> tuple[Path, str]:
    """What an image shares with its mask: the folder pairing them (their own, or the parent of an ``images/``
    or ``masks/`` folder) and the stem without ``_mask``."""
    folder = path.parent.parent if path.parent.name.lower() in PAIR_FOLDERS else path.parent
    stem = path.stem[: -len("_mask")] if path.stem.lower().endswith("_mask") else path.stem
    return folder, stem


def find_png_slices(src: Path) -> tuple[list[SourceSlice], dict[str, str]]:
    """The image/mask pairs under ``src`` (see the module docstring), sorted by case id.

    Returns:
        (slices, problems): ``problems`` maps a case id to why it cannot be converted (an image without its
        mask in a folder of masks, a case id taken twice).
    """
    files = sorted(p for p in src.rglob("*") if _is_image(p) and p.is_file())
    masks: dict[tuple[Path, str], Path] = {}
    for path in files:
        if _is_mask(path):
            masks.setdefault(_pair_key(path), path)
    paired_folders = {folder for folder, _ in masks}
    slices: dict[str, SourceSlice] = {}
    problems: dict[str, str] = {}
    for image in files:
        tumour_type = _tumour_type_of(image.parent, src)
        key = _pair_key(image)
        if _is_mask(image) or not tumour_type or key[0] not in paired_folders:
            continue  # a mask, or an image of no tumour type or of a folder without masks (classification set)
        case, number = _case_id(image.stem, tumour_type)
        relative = image.relative_to(src)
        if key not in masks:
            problems[case] = f"no mask {image.stem}_mask{image.suffix} for {relative}"
        elif case in slices or case in problems:
            problems[case] = f"{relative} has the case id of another image; rename one"
        else:
            slices[case] = SourceSlice(case, image, mask=masks[key], tumour_type=tumour_type, number=number)
    for case in problems:
        slices.pop(case, None)
    return [slices[case] for case in sorted(slices)], problems


# -------------------------------------------------------------------- reading one slice
def require_h5py() -> Any:
    """Import h5py, or explain how to get it."""
    try:
        import h5py
    except ImportError:
        raise MedTextSegError("the figshare brain tumour .mat files are MATLAB v7.3 (HDF5) files and need h5py: "
                              "pip install h5py") from None
    return h5py


def _mat_bytes(item: SourceSlice) -> bytes:
    if item.member:
        with zipfile.ZipFile(item.path) as handle:
            return handle.read(item.member)
    return item.path.read_bytes()


def _char(array: Any) -> str:
    """A MATLAB char array stored by v7.3 (uint16 codes) as text."""
    codes = np.asarray(array).reshape(-1)
    return "".join(chr(int(c)) for c in codes if int(c) != 0).strip()


def _read_cjdata(item: SourceSlice, fields: tuple[str, ...]) -> dict[str, Any]:
    """The ``cjdata`` fields of a ``.mat`` case; arrays as h5py gives them (MATLAB's transposed: [column, row]).

    Raises:
        MedTextSegError: not a MATLAB file, or no ``cjdata`` struct with these fields.
    """
    data = _mat_bytes(item)
    if data[512:520] == HDF5_SIGNATURE or data[:8] == HDF5_SIGNATURE:
        h5py = require_h5py()
        with h5py.File(io.BytesIO(data), "r") as handle:
            if "cjdata" not in handle:
                raise MedTextSegError(f"{item.name}: no cjdata struct (not a brain tumour dataset file)")
            group = handle["cjdata"]
            missing = [f for f in fields if f not in group]
            if missing:
                raise MedTextSegError(f"{item.name}: cjdata has no {missing[0]} field")
            values = {f: group[f][()] for f in fields}
        if "PID" in values:
            values["PID"] = _char(values["PID"])
        return values
    if not data.startswith(b"MATLAB"):
        raise MedTextSegError(f"{item.name}: not a MATLAB .mat file")
    from scipy.io import loadmat

    try:
        struct = loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False).get("cjdata")
    except Exception as error:  # scipy raises ValueError, TypeError, ... for damaged files
        raise MedTextSegError(f"{item.name}: cannot read ({type(error).__name__})") from None
    if struct is None:
        raise MedTextSegError(f"{item.name}: no cjdata struct (not a brain tumour dataset file)")
    values = {}
    for field_name in fields:
        if not hasattr(struct, field_name):
            raise MedTextSegError(f"{item.name}: cjdata has no {field_name} field")
        value = getattr(struct, field_name)
        # scipy keeps MATLAB's [row, column] order: transpose images to h5py's [column, row]
        values[field_name] = str(value).strip() if field_name == "PID" else np.asarray(value).T
    return values


def read_mat_patient(item: SourceSlice) -> str | None:
    """The PID of a ``.mat`` case (None when it is empty)."""
    return _read_cjdata(item, ("PID",))["PID"] or None


def read_mat_slice(item: SourceSlice) -> TumourSlice:
    """One figshare ``.mat`` case.

    Raises:
        MedTextSegError: an unreadable file, a label other than 1/2/3, image and mask of different shapes.
    """
    values = _read_cjdata(item, ("image", "label", "PID", "tumorMask"))
    image, mask = np.asarray(values["image"]), np.asarray(values["tumorMask"])
    label = np.asarray(values["label"]).reshape(-1)
    by_value = {v: name for name, v in CLASSES.items()}
    if label.size != 1 or float(label[0]) not in by_value:
        raise MedTextSegError(f"{item.name}: cjdata.label is {label.tolist()}, expected 1 (meningioma), "
                              "2 (glioma) or 3 (pituitary tumour)")
    if image.ndim != 2 or mask.shape != image.shape:
        raise MedTextSegError(f"{item.name}: cjdata.image {image.shape} and cjdata.tumorMask {mask.shape} must be "
                              "one 2D grid")
    return TumourSlice(image.astype(np.float32), mask > 0, by_value[int(label[0])], values["PID"] or None)


def _grey(path: Path) -> np.ndarray:
    """An image file as a 2D array ``[row, column]`` (colour turned grey; 16-bit kept)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "I", "I;16", "I;16B", "F", "1"):
                image = image.convert("L")
            array = np.asarray(image)
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, ... for damaged files
        raise MedTextSegError(f"{path.name}: cannot read ({type(error).__name__})") from None
    if array.ndim != 2:
        raise MedTextSegError(f"{path.name}: expected a grey image, got shape {array.shape}")
    return array


def mask_pixels(mask: np.ndarray) -> np.ndarray:
    """Tumour pixels of a mask image: >= 128 on an 8-bit scale, or > 0 when the mask's maximum is 1."""
    values = np.asarray(mask, dtype=np.float64)
    return values > 0 if values.max(initial=0) <= 1 else values >= 128


def read_png_slice(item: SourceSlice, patient: str | None) -> TumourSlice:
    """One Kaggle image with its mask, transposed to ``[X = column, Y = row]``.

    Raises:
        MedTextSegError: an unreadable file, or a mask of another size.
    """
    image, mask = _grey(item.path), _grey(item.mask)
    if mask.shape != image.shape:
        raise MedTextSegError(f"{item.mask.name}: {mask.shape[1]} x {mask.shape[0]} pixels, its image "
                              f"{item.path.name} {image.shape[1]} x {image.shape[0]}")
    return TumourSlice(image.T.astype(np.float32), mask_pixels(mask).T, item.tumour_type, patient)


# -------------------------------------------------------------------- patients of the PNG layout
def read_patients(path: Path) -> dict[str, str]:
    """``patients=PATH`` -> image key (stem, file name or figshare number as text) -> patient.

    Raises:
        MedTextSegError: neither a folder of ``.mat`` files nor a CSV with ``image`` and ``patient`` columns.
    """
    from medtextseg.converters.tables import read_records

    table: dict[str, str] = {}
    if path.is_dir():
        items = find_mat_slices(path)
        if not items:
            raise MedTextSegError(f"--option patients={path}: no figshare .mat files in this folder")
        require_h5py()
        for item in items:
            patient = read_mat_patient(item)
            if patient and item.number is not None:
                table[str(item.number)] = patient
        return table
    if not path.is_file():
        raise MedTextSegError(f"--option patients={path}: not found (a folder of figshare .mat files, or a .csv)")
    rows = read_records(path)
    if rows and not {"image", "patient"} <= set(rows[0]):
        raise MedTextSegError(f"{path}: expected columns image and patient, got {', '.join(rows[0])}")
    for row in rows:
        image, patient = str(row["image"] or "").strip(), str(row["patient"] or "").strip()
        if image and patient:
            table[image] = patient
    return table


def _patient_of(item: SourceSlice, patients: dict[str, str]) -> str | None:
    for key in (item.path.name, item.path.stem, str(item.number) if item.number is not None else None):
        if key is not None and key in patients:
            return patients[key]
    return None


# -------------------------------------------------------------------- the conversion
class BrainTumourOptions(ConverterOptions):
    """``layout`` (``auto``, ``mat`` or ``png``) and ``patients`` (a folder of figshare files or a CSV)."""

    converter: ClassVar[str] = CONVERTER
    layout: Annotated[str, one_of(*LAYOUTS)] = "auto"
    patients: Annotated[Path | None, optional_path()] = None


def _prompts(found: TumourSlice, item: SourceSlice, src: Path, vocabulary: PromptVocabulary) -> list[dict[str, Any]]:
    from medtextseg.converters.nnunet import prompt_lines

    meta = {"tumour_type": found.tumour_type, "patient": found.patient, "figshare_id": item.number,
            "source_file": str(item.path.relative_to(src)) + (f":{item.member}" if item.member else "")}
    classes = {name: (value,) for name, value in CLASSES.items()}
    return prompt_lines(classes, {CLASSES[found.tumour_type]}, vocabulary, meta)


def _convert_slice(writer: DatasetWriter, item: SourceSlice, layout: str, src: Path, vocabulary: PromptVocabulary,
                   patients: dict[str, str]) -> str | None:
    """Write one slice unless done; return its patient (None when unknown).

    Raises:
        MedTextSegError: why the slice cannot be converted.
    """
    if writer.is_done(item.case):
        return read_mat_patient(item) if layout == "mat" else _patient_of(item, patients)
    found = read_mat_slice(item) if layout == "mat" else read_png_slice(item, _patient_of(item, patients))
    if not found.mask.any():
        raise MedTextSegError(f"{item.name}: the tumour mask is empty")
    label = np.where(found.mask, CLASSES[found.tumour_type], 0).astype(np.uint8)
    writer.write_case(item.case, [found.image], np.eye(4), label, _prompts(found, item, src, vocabulary))
    return found.patient


@register(CONVERTER, "Cheng et al. 2D brain tumour MRI (figshare .mat v7.3 files, or the Kaggle PNG image + mask "
                     "class folders) -> glioma / meningioma / pituitary tumour prompts, split by patient")
def convert_brain_tumour_kaggle(src: Path, dst: Path, *, overwrite: bool = False, spatial_dims: int = 2,
                                **options: Any) -> ConversionSummary:
    """Convert the brain tumour slices of ``src`` (see the module docstring for the layouts and options).

    Args:
        src: the downloaded folder (figshare ``.mat`` files or archives, or the Kaggle ``DATASET`` folder).
        dst: the dataset folder to write (resumable: slices already written are kept).
        overwrite: rewrite every slice.
        spatial_dims: 2 (the dataset is 2D; 3 is refused).
        **options: ``layout``, ``patients``.

    Returns:
        The :class:`ConversionSummary`: slices converted now, already done, skipped with why.

    Raises:
        MedTextSegError: a bad option, no slices found, h5py missing, or ``dst`` written with another layout.
    """
    from medtextseg.converters.nnunet import output_vocabulary
    from medtextseg.converters.writer import (
        DatasetWriter,
        check_conversion_options,
        group_splits,
        record_conversion_options,
    )

    if spatial_dims != 2 or isinstance(spatial_dims, bool):
        raise MedTextSegError(f"{CONVERTER} converter: the slices are 2D; pass --spatial-dims 2 "
                              f"(got {spatial_dims})")
    src, dst = Path(src), Path(dst)
    refuse_same_folder(src, dst)
    opts = BrainTumourOptions.parse(options)
    layout, patients_path = opts.layout, opts.patients
    mat_slices = find_mat_slices(src) if layout in ("auto", "mat") else []
    layout = "mat" if layout == "mat" or (layout == "auto" and mat_slices) else "png"
    problems: dict[str, str] = {}
    if layout == "mat":
        slices = mat_slices
        if not slices:
            raise MedTextSegError(f"{src}: no figshare brain tumour files ({{N}}.mat, or brainTumorDataPublic_*.zip "
                                  "archives holding them)")
        require_h5py()
    else:
        slices, problems = find_png_slices(src)
        if not slices and not problems:
            raise MedTextSegError(f"{src}: no brain tumour slices: neither figshare .mat files nor images with "
                                  "masks ({stem}_mask.png) in glioma / meningioma / pituitary folders")
    patients = read_patients(patients_path) if patients_path is not None and layout == "png" else {}
    fingerprint = {"layout": layout, "patients": bool(patients)}
    record_conversion_options(check_conversion_options(dst, CONVERTER, fingerprint, overwrite), fingerprint)
    vocabulary = output_vocabulary(dst, list(CLASSES), overwrite)
    writer = DatasetWriter(dst, "BrainTumourCheng", [CHANNEL], {"background": 0, **CLASSES}, 2, overwrite,
                           extra={"converter": CONVERTER, "source": str(src), "layout": layout,
                                  "geometry": "unit spacing, identity affine: the source has no pixel size or "
                                              "orientation"})
    converted = writer.convert_each(
        slices, lambda item: _convert_slice(writer, item, layout, src, vocabulary, patients), lambda item: item.case,
        file_name=lambda item: item.name)
    groups: dict[str, list[str]] = {}
    for case, patient in converted.items():
        groups.setdefault(f"patient:{patient}" if patient else f"image:{case}", []).append(case)
    for case, reason in problems.items():
        writer.skip(case, reason)
    unknown = sum(len(cases) for key, cases in groups.items() if key.startswith("image:"))
    writer.extra["split_unit"] = "patient" if not unknown else "image" if unknown == sum(map(len, groups.values())) \
        else f"patient ({unknown} slices without a patient split alone)"
    splits = group_splits(dict(sorted(groups.items())), sort=True)
    description = f"converted by medtextseg convert {CONVERTER} from {src} (layout {layout})"
    return writer.finish(splits=splits, description=description, groups=groups)


__all__ = ["CLASSES", "BrainTumourOptions", "SourceSlice", "TumourSlice", "convert_brain_tumour_kaggle",
           "find_mat_slices", "find_png_slices", "mask_pixels", "read_mat_slice", "read_patients", "read_png_slice",
           "require_h5py"]

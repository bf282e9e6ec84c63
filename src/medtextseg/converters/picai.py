"""PI-CAI bi-parametric prostate MRI (T2W, ADC, HBV) with csPCa lesion delineations -> lesion prompts.

Source layout (https://pi-cai.grand-challenge.org/DATA/):

* images: ``{images}/**/{patient_id}_{study_id}_{t2w,adc,hbv,cor,sag}.mha``, found recursively under the image root
  (``{src}/images/{patient_id}/...`` by default; the archives' ``picai_public_images_fold0/{patient_id}/...`` folders
  work too). ``cor`` and ``sag`` are ignored.
* labels, from the ``picai_labels`` repository (``{labels}``):
  ``csPCa_lesion_delineations/human_expert/resampled/{patient_id}_{study_id}.nii.gz`` (or, with ``lesion_set=AI``,
  ``csPCa_lesion_delineations/AI/Bosma22a/``): an integer map, 0 background, lesions > 0 (1, or ISUP-based values);
  ``anatomical_delineations/whole_gland/AI/Bosma22b/{patient_id}_{study_id}.nii.gz``: the whole gland (optional);
  ``clinical_information/marksheet.csv`` (optional): columns ``patient_id, study_id, ..., case_csPCa (YES/NO)``.

Output: one case ``{patient_id}_{study_id}`` per study, channels ``T2W, ADC, HBV`` on the T2W grid (its exact
affine, spacing, origin and direction): ADC and HBV are resampled onto it with SimpleITK (linear) when their grid
differs, the lesion and gland maps likewise (nearest neighbour) when they are not already on it. The label map holds
1 = whole gland (where known) and the lesions as 2..K+1: the 3D connected components (26-connectivity) of the
lesion map > 0, numbered by descending volume. A lesion overwrites the gland under it. Splits are drawn per patient.

Prompts per case (``kind``; ``meta`` on every line: ``n_lesions``, ``lesion_set``, ``side_reference``, and
``clinical``, the study's marksheet row, when there is one):

* ``single``, one per lesion, naming it by its side and, where needed to tell it from another lesion of that side,
  its size or its rank by volume: ``"segment the lesion in the left prostate"``, ``"segment the small lesion in the
  right prostate"``, ``"segment the second largest lesion in the left prostate"``. Target ``[label]``; ``meta``
  ``label``, ``side``, ``size``, ``volume_ml``, ``source_value`` (the largest value of the source lesion map in
  it), ``mentioned`` (the attributes the text uses).
* ``all``: ``"segment all clinically significant lesions"``, target every lesion label (``[]`` for none); ``meta``
  ``volume_ml`` (their total) and ``side`` (the sides of their centroids).
* ``absent``: ``"segment the lesion in the {side} prostate"`` with target ``[]`` for each side that holds no lesion
  voxel at all: both sides of a negative case, the free side of a case whose lesions all lie on one side.
* ``anatomy``: ``"segment the prostate gland"`` (``class`` ``prostate`` of ``prompt_vocabulary.json``) when the case
  has a gland label; target 1 plus every lesion with at least half of its voxels in the gland.

Side: the patient's left or right of the lesion's centroid, compared with the gland's centroid when the case has a
gland, else with the centre of the T2W image (``meta.side_reference``: ``gland`` or ``image_centre``), both in RAS
world coordinates (x grows toward the patient's Right; ITK's LPS x toward the Left). Size: ``large`` from
``large_ml`` millilitres of volume, else ``small``.

A study without a lesion file is a negative case (lesion-free target) with ``include_negative=true``, else skipped.
A study that the marksheet calls ``case_csPCa=YES`` but whose lesion map (missing or empty) holds no lesion is
skipped: converting it would teach an empty answer for a cancer. A missing sequence, an unreadable file, a map that
does not overlap the T2W grid, more than ``max_lesions`` lesions: the study is skipped with the reason, by name.

Options (``--option KEY=VALUE``):

* ``images=PATH``: the image root (default ``{src}/images`` when it exists, else ``src``).
* ``labels=PATH``: the ``picai_labels`` folder (default: ``{src}/picai_labels``, ``{src}/labels`` or ``src``, the
  first holding ``csPCa_lesion_delineations/``).
* ``lesion_set=human_expert|AI`` (``human_expert``); ``include_negative=true|false`` (``true``);
  ``large_ml=ML`` (0.5); ``max_lesions=N`` (10: the labels ``lesion_1..N`` declared in ``dataset.json``);
  ``gland=true|false`` (``true``: use the whole-gland map); ``affine_tolerance=MM`` (0.001: how far a map's
  geometry may differ from the T2W's and still be taken as on its grid, without resampling).

A second run into the same folder must use the same ``lesion_set``, ``large_ml``, ``max_lesions``, ``gland`` and
``include_negative`` (recorded in ``picai_conversion.json``; ``--overwrite`` rebuilds). Only 3D (``--spatial-dims
3``) is supported.

Example:
    >>> summary = convert_picai(Path("picai"), Path("data/picai"), labels="picai_labels")  # doctest: +SKIP
    >>> summary.line()  # doctest: +SKIP
    '1500 cases in data/picai (1500 converted, 0 already done)'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np

from medtextseg.converters.option_values import (
    ConverterOptions,
    boolean,
    integer_in,
    number_in,
    one_of,
    optional_path,
)
from medtextseg.converters.registry import register
from medtextseg.utils.errors import MedTextSegError, refuse_same_folder

if TYPE_CHECKING:
    from medtextseg.converters.writer import ConversionSummary, DatasetWriter

SEQUENCES = ("t2w", "adc", "hbv")
CHANNEL_NAMES = ["T2W", "ADC", "HBV"]
IGNORED_SEQUENCES = ("cor", "sag")
LESION_SETS = {"human_expert": "csPCa_lesion_delineations/human_expert/resampled",
               "AI": "csPCa_lesion_delineations/AI/Bosma22a"}
GLAND_DIR = "anatomical_delineations/whole_gland/AI/Bosma22b"
MARKSHEET = "clinical_information/marksheet.csv"
GLAND_LABEL = 1
FIRST_LESION_LABEL = 2
ALL_PROMPT = "segment all clinically significant lesions"
ANATOMY_PROMPT = "segment the prostate gland"
_ORDINALS = ("largest", "second largest", "third largest")


class PicaiOptions(ConverterOptions):
    """The converter's options (see the module docstring); ``images`` and ``labels`` are resolved by
    :func:`parse_options`."""

    converter: ClassVar[str] = "picai"
    images: Annotated[Path | None, optional_path()] = None
    labels: Annotated[Path | None, optional_path()] = None
    lesion_set: Annotated[str, one_of(*LESION_SETS)] = "human_expert"
    include_negative: Annotated[bool, boolean()] = True
    large_ml: Annotated[float, number_in(0.0)] = 0.5
    max_lesions: Annotated[int, integer_in(1)] = 10
    gland: Annotated[bool, boolean()] = True
    affine_tolerance: Annotated[float, number_in(0.0)] = 1e-3

    @property
    def lesion_dir(self) -> Path:
        return self.labels / LESION_SETS[self.lesion_set]  # type: ignore[operator]

    @property
    def gland_dir(self) -> Path:
        return self.labels / GLAND_DIR  # type: ignore[operator]

    def fingerprint(self) -> dict[str, Any]:
        """What decides the content of a case (the folders may move between runs)."""
        return {"lesion_set": self.lesion_set, "include_negative": self.include_negative,
                "large_ml": self.large_ml, "max_lesions": self.max_lesions, "gland": self.gland}


OPTIONS = PicaiOptions.option_names()


@dataclass
class SourceStudy:
    """One study of the source: its sequence files found (``t2w``/``adc``/``hbv`` -> path)."""

    case: str
    patient_id: str
    study_id: str
    paths: dict[str, Path] = field(default_factory=dict)


@dataclass
class Lesion:
    """One lesion (a connected component) of a case: its output label, attributes and description."""

    label: int
    voxels: int
    volume_ml: float
    side: str
    size: str
    source_value: int
    in_gland: bool = False
    spans: tuple[str, ...] = ()  # the sides of the reference that hold a voxel of it
    text: str = ""
    mentioned: tuple[str, ...] = ()


# -------------------------------------------------------------------- options
def _default_labels(src: Path) -> Path:
    for folder in (src / "picai_labels", src / "labels", src):
        if (folder / "csPCa_lesion_delineations").is_dir():
            return folder
    raise MedTextSegError(f"{src}: no picai_labels folder found (looked for picai_labels/, labels/ and {src} itself "
                          "holding csPCa_lesion_delineations/); pass --option labels=PATH")


def parse_options(src: Path, options: dict[str, Any]) -> PicaiOptions:
    """Validate ``--option`` strings (or Python values) into :class:`PicaiOptions`, its folders found.

    Raises:
        MedTextSegError: an unknown option (with the known ones), a bad value, or a labels folder without the
            lesion delineations of ``lesion_set``.
    """
    parsed = PicaiOptions.parse(options)
    images = parsed.images or (src / "images" if (src / "images").is_dir() else src)
    if not images.is_dir():
        raise MedTextSegError(f"--option images={images}: folder not found")
    labels = parsed.labels or _default_labels(src)
    if not labels.is_dir():
        raise MedTextSegError(f"--option labels={labels}: folder not found")
    parsed = parsed.model_copy(update={"images": images, "labels": labels})
    if not parsed.lesion_dir.is_dir():
        raise MedTextSegError(f"{parsed.lesion_dir}: folder not found (--option labels must be the picai_labels "
                              f"repository, with lesion_set={parsed.lesion_set})")
    return parsed


# -------------------------------------------------------------------- the source
def find_studies(images: Path) -> list[SourceStudy]:
    """Every study with at least one ``{patient_id}_{study_id}_{sequence}.mha`` under ``images`` (recursive).

    Raises:
        MedTextSegError: no T2W file at all (not a PI-CAI image folder).
    """
    studies: dict[str, SourceStudy] = {}
    for path in sorted(images.rglob("*.mha")):
        stem, _, sequence = path.name[: -len(".mha")].rpartition("_")
        sequence = sequence.lower()
        if path.name.startswith(".") or not stem or sequence in IGNORED_SEQUENCES or sequence not in SEQUENCES:
            continue
        patient_id, _, study_id = stem.partition("_")
        study = studies.setdefault(stem, SourceStudy(stem, patient_id, study_id))
        study.paths.setdefault(sequence, path)  # the first copy found wins (sorted paths)
    if not any("t2w" in study.paths for study in studies.values()):
        raise MedTextSegError(f"{images}: no PI-CAI image files named {{patient_id}}_{{study_id}}_t2w.mha (pass "
                              "--option images=PATH, the folder holding the image archives)")
    return [studies[case] for case in sorted(studies)]


def _clinical_value(text: str) -> Any:
    text = text.strip()
    if not text or text.lower() in ("nan", "n/a", "na"):
        return None
    for kind in (int, float):
        try:
            number = kind(text)
        except ValueError:
            continue
        return number if not isinstance(number, float) or math.isfinite(number) else None
    return text


def read_marksheet(path: Path) -> dict[str, dict[str, Any]]:
    """``marksheet.csv`` -> case id (``{patient_id}_{study_id}``) -> its other columns (numbers parsed, blanks None);
    ``{}`` when the file is missing.

    Raises:
        MedTextSegError: the file has no ``patient_id`` and ``study_id`` columns.
    """
    from medtextseg.converters.tables import read_records

    if not path.is_file():
        return {}
    rows = read_records(path)
    columns = rows[0].keys() if rows else ()
    if rows and not {"patient_id", "study_id"} <= set(columns):
        raise MedTextSegError(f"{path}: expected columns patient_id and study_id, got {', '.join(columns)}")
    table = {}
    for row in rows:
        case = f"{str(row['patient_id']).strip()}_{str(row['study_id']).strip()}"
        table[case] = {key: _clinical_value(value or "") for key, value in row.items()
                       if key and key not in ("patient_id", "study_id")}
    return table


# -------------------------------------------------------------------- images and maps
def _read(path: Path) -> Any:
    """A SimpleITK image of a 3D scalar file.

    Raises:
        MedTextSegError: the file cannot be read, or is not one 3D scalar volume.
    """
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except Exception as error:  # ITK raises RuntimeError with a multi-line message
        raise MedTextSegError(f"{path.name}: cannot read ({_itk_message(error)})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise MedTextSegError(f"{path.name}: expected a 3D scalar volume, got {image.GetDimension()}D with "
                              f"{image.GetNumberOfComponentsPerPixel()} components per voxel")
    return image


def _itk_message(error: Exception) -> str:
    """The informative line of an ITK error (its last line, after the source location), else the error's type."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1].removeprefix("sitk::ERROR: ") if lines else type(error).__name__


def _array(image: Any) -> np.ndarray:
    """The voxels of a SimpleITK image in file voxel order ``[X, Y, Z]``."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def _same_grid(image: Any, reference: Any, tolerance: float) -> bool:
    from medtextseg.data.sitk_reader import itk_to_ras_affine

    return (image.GetSize() == reference.GetSize()
            and bool(np.allclose(itk_to_ras_affine(image), itk_to_ras_affine(reference), atol=tolerance)))


def on_grid(image: Any, reference: Any, name: str, labels: bool, tolerance: float,
            reference_name: str = "T2W") -> np.ndarray:
    """``image`` on the grid of ``reference`` (the T2W; messages call it ``reference_name``): its own voxels when
    already there (within ``tolerance`` mm), else resampled with SimpleITK (linear, or nearest neighbour for
    ``labels``; 0 outside its extent).

    Returns:
        ``[X, Y, Z]`` float32 (images) or int64 (labels), the reference's shape.

    Raises:
        MedTextSegError: ``name`` cannot be resampled onto the grid, or does not overlap it at all.
    """
    import SimpleITK as sitk

    if _same_grid(image, reference, tolerance):
        array = _array(image)
    else:
        interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
        try:
            inside = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
            inside.CopyInformation(image)
            covered = sitk.Resample(inside, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
            resampled = sitk.Resample(image if labels else sitk.Cast(image, sitk.sitkFloat32), reference,
                                      sitk.Transform(), interpolator, 0)
        except Exception as error:  # e.g. a singular direction matrix
            raise MedTextSegError(f"{name}: cannot be resampled onto the {reference_name} grid "
                                  f"({_itk_message(error)})") from None
        if not _array(covered).any():
            raise MedTextSegError(f"{name}: does not overlap the {reference_name} grid (sizes {image.GetSize()} and "
                                  f"{reference.GetSize()}, origins {_mm(image.GetOrigin())} and "
                                  f"{_mm(reference.GetOrigin())}); cannot resample it")
        array = _array(resampled)
    if not labels:
        return np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
        raise MedTextSegError(f"{name}: label map has non-integer values")
    return np.asarray(array).astype(np.int64)


def _mm(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


# -------------------------------------------------------------------- lesions and prompts
def _world(affine: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """RAS world coordinates ``[N, 3]`` of voxel indices ``[N, 3]``."""
    return indices @ affine[:3, :3].T + affine[:3, 3]


def side_reference(shape: tuple[int, ...], affine: np.ndarray, gland: np.ndarray | None) -> tuple[str, float]:
    """What left and right are measured from: (``gland`` or ``image_centre``, its RAS world x in mm).

    Args:
        shape: the grid's shape ``(X, Y, Z)``.
        affine: 4 x 4 voxel -> RAS world matrix of the grid.
        gland: ``[X, Y, Z]`` bool whole-gland mask, or None; its centroid is used when it has a voxel.
    """
    if gland is not None and gland.any():
        return "gland", float(_world(affine, np.argwhere(gland).astype(float)).mean(0)[0])
    centre = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    return "image_centre", float(_world(affine, centre[None])[0, 0])


def split_lesions(lesion_map: np.ndarray, gland: np.ndarray | None, affine: np.ndarray, large_ml: float,
                  max_lesions: int, name: str) -> tuple[np.ndarray, list[Lesion], str]:
    """Connected components (26-connectivity) of ``lesion_map > 0``, labelled 2..K+1 by descending volume.

    Args:
        lesion_map: ``[X, Y, Z]`` integer map (0 background).
        gland: ``[X, Y, Z]`` bool whole-gland mask, or None.
        affine: 4 x 4 voxel -> RAS world matrix of the grid.
        large_ml: volume (ml) from which a lesion is ``large``.
        max_lesions: more components than this is an error.
        name: the lesion file's name, for messages.

    Returns:
        (components ``[X, Y, Z]`` int64 with 0 and the lesion labels, the lesions in label order, the side
        reference: ``gland`` or ``image_centre``).

    Raises:
        MedTextSegError: more than ``max_lesions`` lesions.
    """
    from scipy import ndimage

    components, count = ndimage.label(lesion_map > 0, structure=np.ones((3, 3, 3), dtype=bool))
    if count > max_lesions:
        raise MedTextSegError(f"{name}: {count} lesions (connected components), more than max_lesions="
                              f"{max_lesions}; raise --option max_lesions")
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    reference, reference_x = side_reference(lesion_map.shape, affine, gland)
    counts = np.bincount(components.ravel(), minlength=count + 1)
    order = sorted(range(1, count + 1), key=lambda c: (-counts[c], c))  # largest first; ties in scan order
    relabelled = np.zeros(lesion_map.shape, dtype=np.int64)
    lesions = []
    for rank, component in enumerate(order):
        mask = components == component
        label = FIRST_LESION_LABEL + rank
        relabelled[mask] = label
        x = _world(affine, np.argwhere(mask).astype(float))[:, 0]
        volume = float(counts[component]) * voxel_ml
        spans = tuple(side for side, there in (("left", (x <= reference_x).any()), ("right", (x > reference_x).any()))
                      if there)
        lesions.append(Lesion(label, int(counts[component]), volume, "right" if x.mean() > reference_x else "left",
                              "large" if volume >= large_ml else "small", int(lesion_map[mask].max()),
                              bool(gland is not None and gland[mask].mean() >= 0.5), spans))
    return relabelled, lesions, reference


def describe_lesions(lesions: list[Lesion]) -> None:
    """Set each lesion's ``text`` and ``mentioned``: its side alone when no other lesion shares it, else side and
    size when that pair is unique, else side and rank by volume (``lesions`` in descending volume)."""
    for lesion in lesions:
        same_side = [other for other in lesions if other.side == lesion.side]
        same_size = [other for other in same_side if other.size == lesion.size]
        if len(same_side) == 1:
            words, lesion.mentioned = "lesion", ("side",)
        elif len(same_size) == 1:
            words, lesion.mentioned = f"{lesion.size} lesion", ("side", "size")
        else:
            rank = same_side.index(lesion)
            ordinal = _ORDINALS[rank] if rank < len(_ORDINALS) else f"{rank + 1}th largest"
            words, lesion.mentioned = f"{ordinal} lesion", ("side", "rank")
        lesion.text = f"segment the {words} in the {lesion.side} prostate"


def make_prompts(lesions: list[Lesion], has_gland: bool, case_meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The prompt lines of one case (without ``case``); see the module docstring for the kinds.

    Args:
        lesions: the case's lesions with their descriptions (:func:`describe_lesions`).
        has_gland: the label map holds the gland (label 1).
        case_meta: meta shared by every line (``n_lesions``, ``side_reference``, ``clinical``, ...).
    """
    lines: list[dict[str, Any]] = []
    for lesion in lesions:
        meta = {**case_meta, "label": lesion.label, "side": lesion.side, "size": lesion.size,
                "volume_ml": round(lesion.volume_ml, 6), "source_value": lesion.source_value,
                "mentioned": list(lesion.mentioned)}
        lines.append({"prompt": lesion.text, "target": [lesion.label], "kind": "single", "meta": meta})
    lines.append({"prompt": ALL_PROMPT, "target": [lesion.label for lesion in lesions], "kind": "all",
                  "meta": {**case_meta, "volume_ml": round(sum(x.volume_ml for x in lesions), 6),
                           "side": sorted({x.side for x in lesions})}})
    occupied = {side for lesion in lesions for side in lesion.spans}
    for side in ("left", "right"):
        if side not in occupied:
            lines.append({"prompt": f"segment the lesion in the {side} prostate", "target": [], "kind": "absent",
                          "meta": {**case_meta, "side": side}})
    if has_gland:
        target = [GLAND_LABEL, *(lesion.label for lesion in lesions if lesion.in_gland)]
        lines.append({"prompt": ANATOMY_PROMPT, "target": target, "kind": "anatomy", "class": "prostate",
                      "meta": {**case_meta, "structure": "prostate"}})
    return lines


# -------------------------------------------------------------------- one case
def _convert_study(writer: DatasetWriter, study: SourceStudy, opts: PicaiOptions,
                   clinical: dict[str, dict[str, Any]]) -> None:
    """Write one study unless done (see the module docstring).

    Raises:
        MedTextSegError: why the study cannot be converted (a missing or unreadable file, ...).
    """
    from medtextseg.data.sitk_reader import itk_to_ras_affine

    if writer.is_done(study.case):
        return
    missing = [sequence for sequence in SEQUENCES if sequence not in study.paths]
    if missing:
        found = next(iter(study.paths.values()))
        raise MedTextSegError(f"missing sequence {missing[0]}: no {study.case}_{missing[0]}.mha beside {found.name} "
                              f"in {found.parent}")
    row = clinical.get(study.case)
    positive = bool(row) and str(row.get("case_csPCa", "")).upper() == "YES"
    lesion_path = opts.lesion_dir / f"{study.case}.nii.gz"
    where = f"{LESION_SETS[opts.lesion_set]}/{lesion_path.name}"
    if not lesion_path.is_file():
        if positive:
            raise MedTextSegError(f"no lesion delineation {where}, although marksheet.csv says case_csPCa=YES")
        if not opts.include_negative:
            raise MedTextSegError(f"no lesion delineation {where} (include_negative=false)")

    t2w = _read(study.paths["t2w"])
    affine = itk_to_ras_affine(t2w)
    channels = [_array(t2w).astype(np.float32)]
    for sequence in SEQUENCES[1:]:
        path = study.paths[sequence]
        channels.append(on_grid(_read(path), t2w, path.name, False, opts.affine_tolerance))
    shape = channels[0].shape
    lesion_map = np.zeros(shape, dtype=np.int64)
    if lesion_path.is_file():
        lesion_map = on_grid(_read(lesion_path), t2w, lesion_path.name, True, opts.affine_tolerance)
        if positive and not lesion_map.any():
            raise MedTextSegError(f"{where}: no lesion voxel, although marksheet.csv says case_csPCa=YES")
    gland = None
    gland_path = opts.gland_dir / f"{study.case}.nii.gz"
    if opts.gland and gland_path.is_file():
        gland = on_grid(_read(gland_path), t2w, gland_path.name, True, opts.affine_tolerance) > 0
        gland = gland if gland.any() else None

    components, lesions, reference = split_lesions(lesion_map, gland, affine, opts.large_ml, opts.max_lesions,
                                                   lesion_path.name)
    describe_lesions(lesions)
    label = np.zeros(shape, dtype=np.int64)
    if gland is not None:
        label[gland] = GLAND_LABEL
    label[components > 0] = components[components > 0]
    case_meta: dict[str, Any] = {"n_lesions": len(lesions), "lesion_set": opts.lesion_set,
                                 "side_reference": reference}
    if row is not None:
        case_meta["clinical"] = dict(row)
    prompts = make_prompts(lesions, gland is not None, case_meta)
    writer.write_case(study.case, channels, affine, label, prompts)


# -------------------------------------------------------------------- the conversion
def _vocabulary(dst: Path, overwrite: bool) -> None:
    """Write ``prompt_vocabulary.json`` (class ``prostate``), or keep the one already in ``dst`` (it may be edited)."""
    from medtextseg.data.vocabulary import VOCABULARY_FILE, PromptVocabulary, default_vocabulary_for

    path = dst / VOCABULARY_FILE
    if path.is_file() and not overwrite:
        if "prostate" not in PromptVocabulary.load(path):
            raise MedTextSegError(f"{path}: class 'prostate' has no synonyms; add it, or pass --overwrite to rebuild "
                                  "the vocabulary from the built-in tables")
        return
    default_vocabulary_for(["prostate"]).save(path)


@register("picai", "PI-CAI prostate bp-MRI (T2W, ADC, HBV .mha + picai_labels lesions and gland) -> one prompt per "
                   "csPCa lesion by side and size, all, absent and gland prompts")
def convert_picai(src: Path, dst: Path, *, overwrite: bool = False, spatial_dims: int = 3,
                  **options: Any) -> ConversionSummary:
    """Convert the public PI-CAI training data (see the module docstring for the layout, prompts and options).

    Args:
        src: the PI-CAI folder (with ``images/``, and ``picai_labels/`` unless ``labels`` is given).
        dst: the dataset folder to write (resumable: studies already written are kept).
        overwrite: rewrite every study.
        spatial_dims: 3 (2 is not supported yet).
        **options: ``--option`` strings or Python values: ``images``, ``labels``, ``lesion_set``,
            ``include_negative``, ``large_ml``, ``max_lesions``, ``gland``, ``affine_tolerance``.

    Returns:
        The :class:`ConversionSummary` (studies converted now, already done, skipped with why).

    Raises:
        MedTextSegError: a bad option, no PI-CAI images or labels, or ``dst`` written earlier with other options.
    """
    from medtextseg.converters.writer import (
        DatasetWriter,
        check_conversion_options,
        group_splits,
        record_conversion_options,
    )

    if spatial_dims != 3 or isinstance(spatial_dims, bool):
        raise MedTextSegError(f"picai converter: --spatial-dims {spatial_dims} is not supported yet; convert in 3D")
    src, dst = Path(src), Path(dst)
    refuse_same_folder(src, dst)
    opts = parse_options(src, options)
    studies = find_studies(opts.images)
    clinical = read_marksheet(opts.labels / MARKSHEET)
    record_conversion_options(check_conversion_options(dst, "picai", opts.fingerprint(), overwrite),
                              opts.fingerprint())
    labels = {"background": 0, **({"prostate": GLAND_LABEL} if opts.gland else {}),
              **{f"lesion_{n}": FIRST_LESION_LABEL + n - 1 for n in range(1, opts.max_lesions + 1)}}
    extra = {"converter": "picai", "source": str(src), "labels_source": str(opts.labels),
             "lesion_set": opts.lesion_set, "large_ml": opts.large_ml}
    writer = DatasetWriter(dst, "PI-CAI", CHANNEL_NAMES, labels, spatial_dims, overwrite, extra=extra)
    if opts.gland:
        _vocabulary(dst, overwrite)
    converted = writer.convert_each(studies, lambda study: _convert_study(writer, study, opts, clinical),
                                    lambda study: study.case)
    patients: dict[str, list[str]] = {}
    for study in studies:
        if study.case in converted:
            patients.setdefault(study.patient_id, []).append(study.case)
    splits = group_splits(dict(sorted(patients.items())), sort=True)
    description = f"converted by medtextseg convert picai from {src} (lesions: {opts.lesion_set})"
    return writer.finish(splits=splits, description=description, groups=patients)


__all__ = ["CHANNEL_NAMES", "LESION_SETS", "OPTIONS", "Lesion", "PicaiOptions", "SourceStudy", "convert_picai",
           "describe_lesions", "find_studies", "make_prompts", "on_grid", "parse_options", "read_marksheet",
           "side_reference", "split_lesions"]

"""A real-anatomy promptable dataset: the Colin27 T1 brain and the AAL atlas, varied by random deformations.

Source: the Debian package ``mricron-data`` (``bash scripts/setup_atlas.sh``), folder ``/usr/share/mricron/templates``
with ``ch2.nii.gz`` (Colin27: one subject's 27 averaged T1 scans, 1 mm, MNI space), ``aal.nii.gz`` (the AAL atlas
on the same grid, 116 regions, voxel value = region index) and ``aal.nii.txt`` (one line per region,
``INDEX NAME CODE``, e.g. ``71 Caudate_L 7001``).

There is **one subject**, so a case is a random anatomical variation of it: a random affine (rotation, per-axis
scale, translation) and a smooth elastic deformation, applied together in one resampling to the T1 and to the
atlas (nearest neighbour for the labels), then a bias field, a gamma curve and Rician noise on the T1, all
MONAI transforms seeded per case. A test split measures robustness to deformations and contrast, not
generalisation to new subjects.

Geometry: the atlas and the T1 are first resampled, each through its own affine, onto an axis-aligned RAS grid
of ``spacing`` mm covering the bounding box of the atlas (the brain) plus ``margin_mm`` (3 mm: 56 x 67 x 56
voxels; anti-aliased: the T1 and every kept structure's mask are smoothed before trilinear sampling, the label
is the majority of the smoothed masks). Every case is written on that grid with that affine, so its world
coordinates are MNI coordinates up to the case's deformation: with the default ranges a left structure lies at
world x < 0 (the caudate, closest to the midline, at x <= -5.8 mm in the 40 default heads).

Cases and prompts:

* 3D (``spatial_dims=3``): ``aal_000``, ... one deformed head each. Per case, one ``anatomy`` line per kept
  structure (``"segment the left caudate nucleus"``, target its label, ``class`` its label name) and, with
  ``bilateral``, one ``bilateral`` line per left/right pair (``"outline the left and right putamina"``, target
  both labels, ``class`` the pair's name).
* 2D (``spatial_dims=2``): deformed heads ``v`` give ``slices_per_volume`` axial slices each, at distinct random
  z through the kept structures, as cases ``aal2d_{v}_{k}`` (an ``X x Y x 1`` NIfTI whose affine puts the slice
  at its world z). Per slice: ``anatomy`` lines for the structures shown (at least ``min_voxels`` pixels),
  ``bilateral`` lines for pairs with both sides shown, and up to ``absent_per_case`` ``absent`` lines (target
  ``[]``) for structures not on the slice at all, preferring hard negatives: "the left X" on a slice that shows
  only the right X. A structure with 1 to ``min_voxels - 1`` pixels is labelled but not prompted. Splits are
  drawn per deformed head, so slices of one head never straddle train and test.

Every line has ``meta`` ``{"structure": "caudate", "side": "left"|"right"|null, "aal": [...], "voxels": n}``
(2D adds ``slice`` and ``z_mm``; an absent line adds ``contralateral_present``). ``prompt_vocabulary.json``
holds the wordings (templates x synonyms; radiologist terms: caudate nucleus, putamen, globus pallidus, thalamus,
hippocampus, amygdala, insular cortex, cerebellar hemisphere, ...).

Options (Python keywords, or ``--option KEY=VALUE`` strings; lists comma-separated):

* ``structures``: structure names (see :data:`STRUCTURES`; default ``caudate,putamen,pallidum,thalamus,
  hippocampus,amygdala,insula,cerebellum``), or AAL names: a base with ``_L``/``_R`` regions (``Heschl``) gives
  a left/right pair, a full name (``Vermis_4_5``, ``Caudate_L``) one label.
* ``num_cases`` (3D: 40, 2D: 300 slices), ``seed`` (0), ``spacing`` (mm, isotropic; 3D: 3.0, 2D: 2.0),
  ``margin_mm`` (9), ``t1`` (``ch2.nii.gz``; ``ch2bet.nii.gz`` is the skull-stripped one).
* Augmentation: ``rotate_deg`` (6: each axis uniform in +-6 degrees), ``scale`` (0.08: each axis x [0.92, 1.08]),
  ``translate_mm`` (4), ``elastic_mm`` (2: typical, RMS, displacement of the elastic part, drawn in 0.5-1 x this),
  ``elastic_sigma_mm`` (20: smoothness, drawn in 0.75-1.25 x this), ``bias`` (0.05: MONAI bias-field coefficient
  range +-), ``gamma`` (``0.75,1.35``), ``noise`` (0.03: Rician noise standard deviation, drawn in 0-1 x this,
  on a T1 scaled to white matter of about 1).
* 2D: ``slices_per_volume`` (10), ``absent_per_case`` (3); both: ``min_voxels`` (10), ``bilateral`` (true),
  ``split_fractions`` (``0.7,0.1,0.2``).

Example:
    >>> summary = convert_aal(Path("/usr/share/mricron/templates"), Path("data/aal3d"), num_cases=4)  # doctest: +SKIP
    >>> summary.line()  # doctest: +SKIP
    '4 cases in data/aal3d (4 converted, 0 already done)'
"""

from __future__ import annotations

import difflib
import fnmatch
import itertools
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np

from medtextseg.converters.option_values import (
    ConverterOptions,
    boolean,
    integer_in,
    name_list,
    number_in,
    number_list,
    rule,
)
from medtextseg.converters.registry import register
from medtextseg.converters.writer import (
    RECORD_DIR,
    ConversionSummary,
    DatasetWriter,
    check_conversion_options,
    record_conversion_options,
)
from medtextseg.utils.errors import MedTextSegError

if TYPE_CHECKING:
    from medtextseg.data.vocabulary import PromptVocabulary

DEFAULT_SRC = Path("/usr/share/mricron/templates")
ATLAS_FILE = "aal.nii.gz"
NAMES_FILE = "aal.nii.txt"
SETUP_HINT = "install the Debian package mricron-data: bash scripts/setup_atlas.sh"


@dataclass(frozen=True)
class Structure:
    """A structure of the catalogue: its AAL regions (a base name or a glob, without ``_L``/``_R``) and wordings.

    ``terms`` are singular names without side or article, the first canonical (``"caudate nucleus"``);
    ``plurals`` name both sides together (``"caudate nuclei"``).
    """

    aal: str
    terms: tuple[str, ...]
    plurals: tuple[str, ...]


# Radiologist wording of AAL regions; a key is also the prefix of the label names (``caudate_left``).
STRUCTURES: dict[str, Structure] = {
    "caudate": Structure("Caudate", ("caudate nucleus", "caudate"), ("caudate nuclei",)),
    "putamen": Structure("Putamen", ("putamen",), ("putamina",)),
    "pallidum": Structure("Pallidum", ("globus pallidus", "pallidum"), ("globi pallidi",)),
    "thalamus": Structure("Thalamus", ("thalamus",), ("thalami",)),
    "hippocampus": Structure("Hippocampus", ("hippocampus", "hippocampal formation"), ("hippocampi",)),
    "amygdala": Structure("Amygdala", ("amygdala", "amygdaloid body"), ("amygdalae",)),
    "insula": Structure("Insula", ("insular cortex", "insula"), ("insular cortices", "insulae")),
    "cerebellum": Structure("Cerebelum_*", ("cerebellar hemisphere",), ("cerebellar hemispheres",)),
    "parahippocampal": Structure("ParaHippocampal", ("parahippocampal gyrus",), ("parahippocampal gyri",)),
    "anterior_cingulate": Structure("Cingulum_Ant", ("anterior cingulate gyrus", "anterior cingulate cortex"),
                                    ("anterior cingulate gyri",)),
    "precentral": Structure("Precentral", ("precentral gyrus", "primary motor cortex"), ("precentral gyri",)),
    "postcentral": Structure("Postcentral", ("postcentral gyrus", "primary somatosensory cortex"),
                             ("postcentral gyri",)),
    "heschl": Structure("Heschl", ("transverse temporal gyrus", "Heschl gyrus"), ("transverse temporal gyri",)),
    "superior_temporal": Structure("Temporal_Sup", ("superior temporal gyrus",), ("superior temporal gyri",)),
    "calcarine": Structure("Calcarine", ("calcarine cortex", "primary visual cortex"), ("calcarine cortices",)),
    "lingual": Structure("Lingual", ("lingual gyrus",), ("lingual gyri",)),
    "fusiform": Structure("Fusiform", ("fusiform gyrus",), ("fusiform gyri",)),
    "cuneus": Structure("Cuneus", ("cuneus",), ("cunei",)),
    "precuneus": Structure("Precuneus", ("precuneus",), ("precunei",)),
    "angular": Structure("Angular", ("angular gyrus",), ("angular gyri",)),
    "supramarginal": Structure("SupraMarginal", ("supramarginal gyrus",), ("supramarginal gyri",)),
}
DEFAULT_STRUCTURES = ("caudate", "putamen", "pallidum", "thalamus", "hippocampus", "amygdala", "insula",
                      "cerebellum")
# Expansions of AAL abbreviations for regions outside the catalogue ("Frontal_Sup_Orb" -> "frontal superior
# orbital region").
_ABBREVIATIONS = {"sup": "superior", "mid": "middle", "inf": "inferior", "orb": "orbital", "oper": "opercular",
                  "tri": "triangular", "med": "medial", "ant": "anterior", "post": "posterior",
                  "supp": "supplementary", "cerebelum": "cerebellum", "cingulum": "cingulate"}
_SIDES = {"L": "left", "R": "right"}


@dataclass(frozen=True)
class LabelSpec:
    """One output label: its name and value, the AAL regions it unites, and how to say it."""

    name: str
    value: int
    structure: str
    side: str | None
    aal_names: tuple[str, ...]
    aal_values: tuple[int, ...]
    synonyms: tuple[str, ...]
    partner: str | None = None


@dataclass(frozen=True)
class PairSpec:
    """A left/right pair, prompted together as ``bilateral``: class ``structure``, target both labels."""

    structure: str
    left: str
    right: str
    synonyms: tuple[str, ...]


# --------------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------------

class AALOptions(ConverterOptions):
    """The converter's options after parsing; ``None`` fields take their per-``spatial_dims`` default."""

    converter: ClassVar[str] = "aal"
    structures: Annotated[tuple[str, ...], name_list("a non-empty list of structure names")] = DEFAULT_STRUCTURES
    num_cases: Annotated[int | None, integer_in(1)] = None
    seed: Annotated[int, integer_in(0)] = 0
    spacing: Annotated[float | None, number_in(0.5, 20.0)] = None
    margin_mm: Annotated[float, number_in(0.0)] = 9.0
    t1: Annotated[str, rule("a file name", str)] = "ch2.nii.gz"
    rotate_deg: Annotated[float, number_in(0.0, 45.0)] = 6.0
    scale: Annotated[float, number_in(0.0, 0.5)] = 0.08
    translate_mm: Annotated[float, number_in(0.0)] = 4.0
    elastic_mm: Annotated[float, number_in(0.0)] = 2.0
    elastic_sigma_mm: Annotated[float, number_in(1.0)] = 20.0
    bias: Annotated[float, number_in(0.0)] = 0.05
    gamma: Annotated[tuple[float, float], number_list("two numbers LOW,HIGH with LOW <= HIGH", 0.05, 20.0,
                                                      lambda v: len(v) == 2 and v[0] <= v[1])] = (0.75, 1.35)
    noise: Annotated[float, number_in(0.0)] = 0.03
    slices_per_volume: Annotated[int, integer_in(1)] = 10
    absent_per_case: Annotated[int, integer_in(0)] = 3
    min_voxels: Annotated[int, integer_in(0)] = 10
    bilateral: Annotated[bool, boolean()] = True
    split_fractions: Annotated[tuple[float, float, float], number_list(
        "three fractions TRAIN,VAL,TEST summing to 1", 0.0, 1.0,
        lambda v: len(v) == 3 and abs(sum(v) - 1.0) <= 1e-6)] = (0.7, 0.1, 0.2)
    progress: Annotated[bool, boolean()] = False

    def resolved(self, spatial_dims: int) -> AALOptions:
        """A copy with the per-``spatial_dims`` defaults filled in (3D: 40 cases at 3 mm; 2D: 300 at 2 mm)."""
        return self.model_copy(update={
            "num_cases": self.num_cases if self.num_cases is not None else (40 if spatial_dims == 3 else 300),
            "spacing": self.spacing if self.spacing is not None else (3.0 if spatial_dims == 3 else 2.0)})

    def fingerprint(self, spatial_dims: int) -> dict[str, Any]:
        """What decides the content of a case, for the check against an earlier run into the same folder.

        ``num_cases`` is left out: case i depends only on ``seed`` and i, so a run may add or drop cases.
        """
        values = self.model_dump(exclude={"progress", "num_cases"})
        return {"spatial_dims": spatial_dims, **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}


def parse_options(options: dict[str, Any]) -> AALOptions:
    """Validate converter options (Python values or ``--option`` strings) into :class:`AALOptions`.

    Raises:
        MedTextSegError: an unknown option (with the closest known one) or a value out of range.
    """
    return AALOptions.parse(options)


# --------------------------------------------------------------------------------------------------------
# Structures and wording
# --------------------------------------------------------------------------------------------------------

def read_region_names(path: Path) -> dict[str, int]:
    """``aal.nii.txt`` -> AAL region name -> voxel value (lines ``INDEX NAME CODE``; CRLF and blank lines ok).

    Raises:
        MedTextSegError: the file is missing, or a line does not start with an integer and a name.
    """
    if not path.is_file():
        raise MedTextSegError(f"{path}: file not found; {SETUP_HINT}")
    names: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[0].isdigit():
            raise MedTextSegError(f"{path}:{number}: expected 'INDEX NAME CODE' (e.g. '71 Caudate_L 7001'), "
                                  f"got {line.strip()!r}")
        names[parts[1]] = int(parts[0])
    if not names:
        raise MedTextSegError(f"{path}: no region names")
    return names


def _readable(aal_base: str) -> str:
    """``Frontal_Sup_Orb`` -> ``frontal superior orbital region``, ``Vermis_4_5`` -> ``vermis 4-5 region`` (for
    regions outside the catalogue)."""
    words = [w for part in aal_base.split("_") for w in re.findall(r"[A-Z]?[a-z]+|\d+|[A-Z]+", part)]
    text = " ".join(_ABBREVIATIONS.get(w.lower(), w.lower()) for w in words)
    return re.sub(r"(?<=\d) (?=\d)", "-", text) + " region"


def _side_code(word: str) -> str | None:
    """``L``/``R`` for a side suffix (``L``, ``R``, ``left``, ``right``, any case), else None."""
    return {"l": "L", "left": "L", "r": "R", "right": "R"}.get(word.lower())


def _lookup(name: str, regions: dict[str, int]) -> tuple[str, str, Structure, list[str | None]] | None:
    """(structure key, AAL pattern, wording, sides) for a catalogue key or an AAL name, with an optional side
    suffix (``caudate_left``, ``Caudate_L``); None when nothing matches. Sides are ``L``/``R``, or None for an
    AAL region without side (``Vermis_4_5``)."""
    base, _, suffix = name.rpartition("_")
    side = _side_code(suffix) if base else None
    root = base if side else name
    sides: list[str | None] = [side] if side else ["L", "R"]
    if root.lower() in STRUCTURES:
        return root.lower(), STRUCTURES[root.lower()].aal, STRUCTURES[root.lower()], sides
    for key, structure in STRUCTURES.items():
        if structure.aal == root:
            return key, structure.aal, structure, sides
    readable = _readable(root)
    generic = Structure(root, (readable,), (readable.replace(" region", " regions"),))
    if any(f"{root}_{s}" in regions for s in sides):
        return root.lower(), root, generic, sides
    if not side and root in regions:
        return root.lower(), root, generic, [None]
    return None


def resolve_structures(requested: tuple[str, ...], regions: dict[str, int]) -> tuple[list[LabelSpec],
                                                                                      list[PairSpec]]:
    """Labels (values 1, 2, ... in the order asked, left before right) and left/right pairs.

    Raises:
        MedTextSegError: an unknown name (with the closest ones), or an AAL region claimed twice.
    """
    labels: list[LabelSpec] = []
    pairs: list[PairSpec] = []
    owner: dict[str, str] = {}
    for name in requested:
        entry = _lookup(name, regions)
        if entry is None:
            choices = list(STRUCTURES) + sorted({n[:-2] if n[-2:] in ("_L", "_R") else n for n in regions})
            close = difflib.get_close_matches(name, choices, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise MedTextSegError(f"aal converter: unknown structure {name!r}{hint} Structures: "
                                  f"{', '.join(STRUCTURES)}, or any AAL name of {NAMES_FILE}")
        key, pattern, structure, sides = entry
        made: dict[str, LabelSpec] = {}
        for side in sides:
            wanted = pattern if side is None else f"{pattern}_{side}"
            members = tuple(sorted(n for n in regions if fnmatch.fnmatchcase(n, wanted)))
            if not members:
                raise MedTextSegError(f"aal converter: structure {name!r}: no AAL region {wanted!r} in {NAMES_FILE}")
            for member in members:
                if member in owner:
                    raise MedTextSegError(f"aal converter: AAL region {member} is in two structures, "
                                          f"{owner[member]!r} and {name!r}")
                owner[member] = name
            word = _SIDES[side] if side else ""
            label_name = f"{key}_{word}" if word else key
            synonyms = tuple(f"{word} {term}" if word else term for term in structure.terms)
            spec = LabelSpec(label_name, len(labels) + 1, key, word or None, members,
                             tuple(regions[m] for m in members), synonyms)
            labels.append(spec)
            made[word] = spec
        if "left" in made and "right" in made:
            left, right = made["left"], made["right"]
            labels[left.value - 1] = LabelSpec(**{**asdict(left), "partner": right.name})
            labels[right.value - 1] = LabelSpec(**{**asdict(right), "partner": left.name})
            wordings = tuple(w for plural in structure.plurals
                             for w in (f"left and right {plural}", f"bilateral {plural}"))
            pairs.append(PairSpec(key, left.name, right.name, wordings))
    names = [spec.name for spec in labels] + [pair.structure for pair in pairs]
    if len(set(names)) != len(names):
        raise MedTextSegError(f"aal converter: structures {', '.join(requested)} name one label or pair twice")
    return labels, pairs


def build_vocabulary(labels: list[LabelSpec], pairs: list[PairSpec]) -> PromptVocabulary:
    """Built-in templates x the labels' synonyms, plus one class per left/right pair (its name, no side).

    The built-in "... the {name} region" template is left out: "the left cerebellar hemisphere region" is not
    how a radiologist says it.
    """
    from medtextseg.data.vocabulary import PromptVocabulary
    from medtextseg.data.vocabulary_tables import DEFAULT_TEMPLATES

    templates = [template for template in DEFAULT_TEMPLATES if "{name} region" not in template]
    synonyms = {spec.name: spec.synonyms for spec in labels}
    synonyms.update({pair.structure: pair.synonyms for pair in pairs})
    return PromptVocabulary(templates, synonyms, "aal vocabulary")


# --------------------------------------------------------------------------------------------------------
# Volumes
# --------------------------------------------------------------------------------------------------------

@dataclass
class BaseVolume:
    """The subject on the working grid: the output grid plus ``pad`` voxels on every side (room for motion).

    ``image`` float32 ``[X + 2 pad, Y + 2 pad, Z + 2 pad]`` (T1 scaled so that the brain's 99.5th percentile
    is 1), ``label`` uint8 on the same grid (values of the label specs), ``affine`` the 4 x 4 RAS affine of the
    output grid (without the pad), ``shape`` the output grid's shape. Voxel order is RAS: i toward Right.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    shape: tuple[int, int, int]
    pad: int


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    if not path.is_file():
        raise MedTextSegError(f"{path}: file not found; {SETUP_HINT}")
    try:
        image = nib.load(str(path))
        array = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for corrupt files
        raise MedTextSegError(f"{path}: cannot read ({type(error).__name__}: {error})") from None
    if array.ndim != 3:
        raise MedTextSegError(f"{path}: expected a 3D volume, got shape {array.shape}")
    return array, np.asarray(image.affine, dtype=np.float64)


def _resample(array: np.ndarray, source_affine: np.ndarray, target_affine: np.ndarray,
              shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear resampling of ``array`` (through its affine) onto the grid ``target_affine``/``shape``; 0 outside."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None],
                       affine=torch.as_tensor(source_affine, dtype=torch.float64))
    out = SpatialResample(mode="bilinear", padding_mode="zeros", dtype=np.float32)(
        image, dst_affine=torch.as_tensor(target_affine, dtype=torch.float64), spatial_size=tuple(shape))
    return np.asarray(out.as_tensor()[0], dtype=np.float32)


def _antialias_sigma(source_affine: np.ndarray, spacing: float) -> np.ndarray:
    """Gaussian sigma (source voxels, per axis) before sampling at ``spacing``: (factor - 1) / 2, at least 0."""
    source_spacing = np.linalg.norm(source_affine[:3, :3], axis=0)
    return np.maximum(0.0, (spacing / source_spacing - 1.0) / 2.0)


def build_base(t1: np.ndarray, t1_affine: np.ndarray, atlas: np.ndarray, atlas_affine: np.ndarray,
               labels: list[LabelSpec], spacing: float, margin_mm: float, pad_mm: float) -> BaseVolume:
    """Resample the subject onto the RAS grid around the atlas's bounding box (see :class:`BaseVolume`).

    Each kept structure's mask is smoothed (anti-aliasing) and sampled trilinearly; a voxel takes the
    structure with the largest sampled fraction if it beats the background's (a majority vote), else 0.

    Raises:
        MedTextSegError: the atlas has no labelled voxel, or a kept structure vanishes at this spacing.
    """
    from scipy import ndimage

    brain = np.argwhere(atlas > 0)
    if len(brain) == 0:
        raise MedTextSegError("aal converter: the atlas has no labelled voxel")
    corners = np.array(list(itertools.product(*zip(brain.min(0), brain.max(0), strict=True))), dtype=np.float64)
    world = corners @ atlas_affine[:3, :3].T + atlas_affine[:3, 3]
    low, high = world.min(0) - margin_mm, world.max(0) + margin_mm
    shape = tuple(int(n) for n in np.ceil((high - low) / spacing).astype(int) + 1)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = (low + high) / 2 - spacing * (np.array(shape) - 1) / 2
    pad = int(math.ceil(pad_mm / spacing))
    work_shape = tuple(n + 2 * pad for n in shape)
    work_affine = affine.copy()
    work_affine[:3, 3] -= spacing * pad

    t1 = np.asarray(t1, dtype=np.float32)
    smooth = ndimage.gaussian_filter(t1, _antialias_sigma(t1_affine, spacing))
    image = np.clip(_resample(smooth, t1_affine, work_affine, work_shape), 0.0, None)
    in_brain = _resample((atlas > 0).astype(np.float32), atlas_affine, work_affine, work_shape) > 0.5
    reference = float(np.percentile(image[in_brain], 99.5)) if in_brain.any() else float(image.max())
    image /= max(reference, 1e-6)

    sigma = _antialias_sigma(atlas_affine, spacing)
    reach = np.ceil(4 * sigma).astype(int) + 1
    best = np.zeros(work_shape, dtype=np.float32)
    label = np.zeros(work_shape, dtype=np.uint8)
    total = np.zeros(work_shape, dtype=np.float32)
    for spec in labels:
        mask = np.isin(atlas, spec.aal_values)
        if not mask.any():
            raise MedTextSegError(f"aal converter: structure {spec.name} ({', '.join(spec.aal_names)}) has no "
                                  "voxel in the atlas")
        where = np.argwhere(mask)
        lo = np.maximum(where.min(0) - reach, 0)
        hi = np.minimum(where.max(0) + reach + 1, mask.shape)
        block = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        fraction = ndimage.gaussian_filter(mask[block].astype(np.float32), sigma)
        block_affine = atlas_affine.copy()
        block_affine[:3, 3] += atlas_affine[:3, :3] @ lo  # the block's voxel 0 is the atlas's voxel lo
        sampled = _resample(fraction, block_affine, work_affine, work_shape)
        total += sampled
        wins = sampled > best
        best[wins] = sampled[wins]
        label[wins] = spec.value
    label[best <= 1.0 - total] = 0  # the background's fraction wins
    missing = [spec.name for spec in labels if not (label == spec.value).any()]
    if missing:
        raise MedTextSegError(f"aal converter: structures {', '.join(missing)} vanish at spacing {spacing} mm; "
                              "use a smaller spacing")
    return BaseVolume(image.astype(np.float32), label, affine, shape, pad)


def make_augmentation(options: AALOptions, spacing: float, shape: tuple[int, int, int]) -> Any:
    """The per-case MONAI pipeline on ``{"image", "label"}`` (``[1, *working grid]``) -> the output grid.

    ``Rand3DElasticd`` (elastic offsets + rotation, scale, translation, one resampling: bilinear image,
    nearest label, zeros outside), then ``RandBiasFieldd``, ``RandAdjustContrastd`` (gamma) and
    ``RandRicianNoised`` on the image. Seed it per case with ``set_random_state``.
    """
    from monai.transforms import (
        Compose,
        Rand3DElasticd,
        RandAdjustContrastd,
        RandBiasFieldd,
        RandRicianNoised,
    )

    sigma = options.elastic_sigma_mm / spacing
    # MONAI smooths uniform(-1, 1) offsets with a Gaussian of sigma voxels: their RMS length is then about
    # (2 sqrt(pi) sigma) ** -1.5 (3 axes x variance 1/3), so this magnitude gives an RMS of elastic_mm.
    magnitude = options.elastic_mm / spacing * (2.0 * math.sqrt(math.pi) * sigma) ** 1.5
    rotate = math.radians(options.rotate_deg)
    return Compose([
        Rand3DElasticd(["image", "label"], sigma_range=(0.75 * sigma, 1.25 * sigma),
                       magnitude_range=(0.5 * magnitude, magnitude), spatial_size=shape, prob=1.0,
                       rotate_range=(rotate,) * 3, scale_range=(options.scale,) * 3,
                       translate_range=(options.translate_mm / spacing,) * 3, mode=("bilinear", "nearest"),
                       padding_mode=("zeros", "zeros")),
        RandBiasFieldd("image", degree=3, coeff_range=(-options.bias, options.bias), prob=1.0),
        RandAdjustContrastd("image", prob=1.0, gamma=options.gamma),
        RandRicianNoised("image", prob=1.0, std=options.noise, sample_std=True),
    ])


def deform(base: BaseVolume, augmentation: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One random variation of the subject on the output grid: image float32 and label uint8 ``[X, Y, Z]``."""
    import torch

    augmentation.set_random_state(seed=seed)
    out = augmentation({"image": torch.from_numpy(base.image)[None],
                        "label": torch.from_numpy(base.label.astype(np.float32))[None]})
    image = np.asarray(torch.as_tensor(out["image"])[0], dtype=np.float32)
    label = np.rint(np.asarray(torch.as_tensor(out["label"])[0])).astype(np.uint8)
    return np.clip(np.nan_to_num(image), 0.0, None), label


# --------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------

def _capitalise(rng: np.random.Generator, text: str) -> str:
    return text[0].upper() + text[1:] if rng.random() < 0.2 else text


def make_prompts(rng: np.random.Generator, label: np.ndarray, labels: list[LabelSpec], pairs: list[PairSpec],
                 vocabulary: PromptVocabulary, options: AALOptions, absent: bool,
                 extra_meta: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The prompt lines of one case (without ``case``); see the module docstring for the kinds.

    ``absent``: add ``absent`` lines for structures with no voxel (the 2D variant).
    """
    counts = np.bincount(label.ravel(), minlength=len(labels) + 1)
    shown = {spec.name for spec in labels if counts[spec.value] >= max(1, options.min_voxels)}
    extra_meta = dict(extra_meta or {})
    lines: list[dict[str, Any]] = []

    def meta(structure: str, side: str | None, aal: tuple[str, ...], voxels: int) -> dict[str, Any]:
        return {"structure": structure, "side": side, "aal": list(aal), "voxels": voxels, **extra_meta}

    for spec in labels:
        if spec.name in shown:
            lines.append({"prompt": _capitalise(rng, vocabulary.render(spec.name, rng)), "target": [spec.value],
                          "kind": "anatomy", "class": spec.name,
                          "meta": meta(spec.structure, spec.side, spec.aal_names, int(counts[spec.value]))})
    if options.bilateral:
        by_name = {spec.name: spec for spec in labels}
        for pair in pairs:
            if pair.left in shown and pair.right in shown:
                left, right = by_name[pair.left], by_name[pair.right]
                lines.append({"prompt": _capitalise(rng, vocabulary.render(pair.structure, rng)),
                              "target": [left.value, right.value], "kind": "bilateral", "class": pair.structure,
                              "meta": meta(pair.structure, None, left.aal_names + right.aal_names,
                                           int(counts[left.value] + counts[right.value]))})
    if absent and options.absent_per_case > 0:
        candidates = [spec for spec in labels if counts[spec.value] == 0]
        hard = [spec.partner is not None and spec.partner in shown for spec in candidates]
        if candidates:
            weights = np.array([3.0 if h else 1.0 for h in hard])
            chosen = rng.choice(len(candidates), size=min(options.absent_per_case, len(candidates)), replace=False,
                                p=weights / weights.sum())
            for index in sorted(int(i) for i in chosen):
                spec = candidates[index]
                entry = meta(spec.structure, spec.side, spec.aal_names, 0)
                entry["contralateral_present"] = bool(hard[index])
                lines.append({"prompt": _capitalise(rng, vocabulary.render(spec.name, rng)), "target": [],
                              "kind": "absent", "class": spec.name, "meta": entry})
    return lines


# --------------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------------

def _split(groups: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, list[str]]:
    """Shuffle ``groups`` by ``seed`` (a stream apart from the cases') and cut by the rounded fractions."""
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,))).permutation(len(groups))
    n_train = int(round(fractions[0] * len(groups)))
    n_val = min(int(round(fractions[1] * len(groups))), len(groups) - n_train)
    shuffled = [groups[i] for i in order]
    return {"train": shuffled[:n_train], "val": shuffled[n_train:n_train + n_val],
            "test": shuffled[n_train + n_val:]}


def _case_seed(seed: int, volume: int) -> int:
    return int(np.random.SeedSequence([seed, volume]).generate_state(1)[0] % (2**31))


def _check_earlier_run(dst: Path, fingerprint: dict[str, Any], overwrite: bool, case_ids: set[str]) -> None:
    """Refuse to mix cases made with other options (unless ``overwrite``); drop cases this run does not make.

    Dropped: the records, images and labels of ``aal*`` cases of an earlier run with more cases.
    """
    path = check_conversion_options(dst, "aal", fingerprint, overwrite)
    records = dst / RECORD_DIR
    for record in sorted(records.glob("aal*.json")) if records.is_dir() else []:
        if record.stem not in case_ids:
            record.unlink()
            (dst / "imagesTr" / f"{record.stem}_0000.nii.gz").unlink(missing_ok=True)
            (dst / "labelsTr" / f"{record.stem}.nii.gz").unlink(missing_ok=True)
    record_conversion_options(path, fingerprint)


@register("aal", "Colin27 T1 + AAL atlas (Debian mricron-data): one subject, randomly deformed; a prompt per "
                 "brain structure")
def convert_aal(src: Path = DEFAULT_SRC, dst: Path = Path("data/aal3d"), *, overwrite: bool = False,
                spatial_dims: int = 3, **options: Any) -> ConversionSummary:
    """Write the Colin27 + AAL promptable dataset into ``dst`` (see the module docstring).

    Args:
        src: the folder with ``ch2.nii.gz``, ``aal.nii.gz`` and ``aal.nii.txt`` (the mricron templates).
        dst: the dataset folder to write (resumable: cases already written are kept).
        overwrite: rewrite every case, and drop cases of an earlier run that this one does not make.
        spatial_dims: 3 (one deformed head per case) or 2 (axial slices of deformed heads).
        **options: see :class:`AALOptions` and the module docstring; strings are parsed.

    Returns:
        The :class:`ConversionSummary` (cases converted now, already done, skipped with why).

    Raises:
        MedTextSegError: a missing source file (with how to install it), a bad option, or ``dst`` written
            earlier with other options.
    """
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise MedTextSegError(f"aal converter: spatial_dims must be 2 or 3, got {spatial_dims!r}")
    opts = parse_options(options).resolved(spatial_dims)
    src, dst = Path(src), Path(dst)
    regions = read_region_names(src / NAMES_FILE)
    labels, pairs = resolve_structures(opts.structures, regions)
    vocabulary = build_vocabulary(labels, pairs)

    num_volumes = opts.num_cases if spatial_dims == 3 else math.ceil(opts.num_cases / opts.slices_per_volume)
    width = max(3, len(str(num_volumes - 1)))
    slots: dict[int, list[str]] = {}
    for volume in range(num_volumes):
        if spatial_dims == 3:
            slots[volume] = [f"aal_{volume:0{width}d}"]
        else:
            count = min(opts.slices_per_volume, opts.num_cases - volume * opts.slices_per_volume)
            slots[volume] = [f"aal2d_{volume:0{width}d}_{k:02d}" for k in range(count)]
    _check_earlier_run(dst, opts.fingerprint(spatial_dims), overwrite, {c for ids in slots.values() for c in ids})

    label_names = {"background": 0, **{spec.name: spec.value for spec in labels}}
    extra = {"source": "Colin27 T1 (ch2) + AAL atlas, Debian package mricron-data", "subjects": 1,
             "spacing_mm": opts.spacing, "seed": opts.seed,
             "structures": {spec.name: list(spec.aal_names) for spec in labels}}
    writer = DatasetWriter(dst, "Colin27AAL", ["T1"], label_names, spatial_dims=spatial_dims, overwrite=overwrite,
                           extra=extra)
    vocabulary.save(dst / "prompt_vocabulary.json")
    done = {case: writer.is_done(case) for ids in slots.values() for case in ids}
    todo = [volume for volume, ids in slots.items() if not all(done[c] for c in ids)]

    if todo:
        t1, t1_affine = _load_nifti(src / opts.t1)
        atlas, atlas_affine = _load_nifti(src / ATLAS_FILE)
        pad_mm = opts.translate_mm + 3 * opts.elastic_mm + 4 * opts.spacing
        base = build_base(t1, t1_affine, np.rint(atlas).astype(np.int32), atlas_affine, labels, opts.spacing,
                          opts.margin_mm, pad_mm)
        augmentation = make_augmentation(opts, opts.spacing, base.shape)

        def make_volume(volume: int) -> None:
            image, label = deform(base, augmentation, _case_seed(opts.seed, volume))
            if spatial_dims == 3:
                rng = np.random.default_rng([opts.seed, volume, 1])
                writer.write_case(slots[volume][0], [image], base.affine, label,
                                  make_prompts(rng, label, labels, pairs, vocabulary, opts, absent=False))
            else:
                _write_slices(writer, volume, slots[volume], done, image, label, base.affine, labels, pairs,
                              vocabulary, opts)

        writer.convert_each(todo, make_volume, lambda volume: slots[volume][0], errors="raise",
                            progress=f"aal: {len(todo)} deformed heads" if opts.progress else None)

    groups = _split([str(v) for v in slots], opts.split_fractions, opts.seed)
    splits = {name: sorted(c for v in members for c in slots[int(v)]) for name, members in groups.items()}
    description = (f"Colin27 T1 + AAL atlas: one subject, {num_volumes} random deformations "
                   f"({opts.spacing} mm, seed {opts.seed}); {len(labels)} structures")
    return writer.finish(splits=splits, description=description)


def _write_slices(writer: DatasetWriter, volume: int, case_ids: list[str], done: dict[str, bool], image: np.ndarray,
                  label: np.ndarray, affine: np.ndarray, labels: list[LabelSpec], pairs: list[PairSpec],
                  vocabulary: PromptVocabulary, opts: AALOptions) -> None:
    """The 2D cases of one deformed head: distinct random axial slices through the kept structures."""
    per_slice = np.stack([np.bincount(label[:, :, k].ravel(), minlength=len(labels) + 1)[1:]
                          for k in range(label.shape[2])])
    eligible = np.flatnonzero((per_slice >= max(1, opts.min_voxels)).any(axis=1))
    rng = np.random.default_rng([opts.seed, volume, 2])
    chosen = sorted(rng.choice(eligible, size=min(len(case_ids), len(eligible)), replace=False).tolist())
    for slot, case in enumerate(case_ids):
        if slot >= len(chosen):
            writer.skip(case, f"the deformed head has only {len(eligible)} axial slices through the structures")
            continue
        if done[case]:
            continue
        k = int(chosen[slot])
        slice_affine = affine.copy()
        slice_affine[:3, 3] += affine[:3, 2] * k
        case_rng = np.random.default_rng([opts.seed, volume, 3, slot])
        extra_meta = {"slice": k, "z_mm": round(float(slice_affine[2, 3]), 2)}
        prompts = make_prompts(case_rng, label[:, :, k], labels, pairs, vocabulary, opts, absent=True,
                               extra_meta=extra_meta)
        writer.write_case(case, [image[:, :, k]], slice_affine, label[:, :, k], prompts)


__all__ = ["DEFAULT_SRC", "DEFAULT_STRUCTURES", "STRUCTURES", "AALOptions", "LabelSpec", "PairSpec", "Structure",
           "build_vocabulary", "convert_aal", "parse_options", "read_region_names", "resolve_structures"]

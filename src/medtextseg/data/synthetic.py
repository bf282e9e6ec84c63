"""Synthetic prostate bp-MRI benchmark where only the prompt says which target is meant.

Each case is a phantom of a pelvis with a prostate gland (transition zone inside peripheral zone) and 0 to 3
lesions, each in its own (side, zone) quadrant, with a size (small or large) and a shape (round or irregular).
One image carries many prompts ("the lesion in the left PZ", "the large irregular lesion", "segment all
lesions", "the prostate", a lesion that is not there), so a model that ignores the text cannot score well.

Conventions (shared by every array in this module):

* Arrays are in RAS-canonical voxel order, the order ``monai.transforms.Orientation(axcodes="RAS")`` and
  nibabel's ``as_closest_canonical`` produce: index ``i`` grows toward the patient's **Right**, ``j`` toward
  **Anterior**, ``k`` toward **Superior**. Patient *left* is therefore the side of **smaller i**.
* Voxel spacing is ``SPACING`` = (1.2, 1.2, 3.0) mm (anisotropic, like axial bp-MRI) unless ``spacing`` says
  otherwise; the grid is ``round(field_of_view / spacing)`` voxels, 48 x 48 x 16 by default.
* Files are **not** stored in that order: :func:`make_synthetic_dataset` writes the arrays flipped along
  ``i`` and ``j`` (LPS-like storage, as DICOM-derived data are; ``voxel_order`` picks other axis codes) with
  the matching affine, a non-zero origin and an oblique rotation of a few degrees about the superior axis.
  A reader that ignores the affine gets left and right swapped; reorienting to RAS restores the arrays exactly.

Data "made differently" (to test whether a model trained on one kind holds on another) come from keyword
arguments of :func:`make_case` and :func:`make_synthetic_dataset`; their defaults give exactly the default
benchmark, bit for bit:

* ``spacing`` / ``field_of_view`` (mm): another resolution or a wider view. The anatomy keeps its size in mm
  (it is drawn in *reference voxels* of ``SPACING``, then sampled on the requested grid), so a larger field
  of view shows more surrounding tissue around a gland of the same size, centred.
* ``voxel_order`` (stored axis codes, e.g. "RAS", "PIL") and ``oblique_degrees`` (largest in-plane tilt).
* ``lesion_contrast`` (scales how far lesion intensities differ from their zone's) and
  ``min_lesions`` / ``max_lesions`` (the lesion-count range, at most ``MAX_LESIONS``).
* ``unseen_wording``: the fraction of test-split prompts rewritten in wordings the training split never
  uses (synonyms, abbreviations, questions, report-style and structured forms), meaning unchanged.

Example:
    >>> case = make_case(np.random.default_rng(0), num_lesions=2)
    >>> case.image.shape, case.image.dtype, case.label.shape
    ((3, 48, 48, 16), dtype('float32'), (48, 48, 16))
    >>> sorted({p["kind"] for p in case.prompts})
    ['absent', 'all', 'anatomy', 'single']
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medtextseg.utils.atomic import atomic_path, write_text_atomic
from medtextseg.utils.errors import MedTextSegError
from medtextseg.utils.progress import progress_bar

__all__ = [
    "CHANNEL_NAMES",
    "DEFAULT_FIELD_OF_VIEW",
    "LABELS",
    "MAX_LESIONS",
    "SPACING",
    "SyntheticCase",
    "make_case",
    "make_synthetic_dataset",
]

SPACING: tuple[float, float, float] = (1.2, 1.2, 3.0)
CHANNEL_NAMES: tuple[str, ...] = ("T2W", "ADC", "HBV")
LABELS: dict[str, int] = {
    "background": 0,
    "transition_zone": 1,
    "peripheral_zone": 2,
    "lesion_1": 3,
    "lesion_2": 4,
    "lesion_3": 5,
}
MAX_LESIONS = 3  # hard cap: labels lesion_1..3, one per quadrant, so an absent prompt keeps an empty one
FIRST_LESION_LABEL = LABELS["lesion_1"]
MIN_SHAPE = (32, 32, 8)
# The default grid: every anatomical size below is in voxels of this grid at SPACING ("reference voxels").
REFERENCE_SHAPE: tuple[int, int, int] = (48, 48, 16)
DEFAULT_FIELD_OF_VIEW: tuple[float, float, float] = (57.6, 57.6, 48.0)  # REFERENCE_SHAPE * SPACING, in mm
# The smallest field of view (mm) is that of MIN_SHAPE at SPACING; it may crop the gland's lateral edge.
MIN_FIELD_OF_VIEW: tuple[float, float, float] = (38.4, 38.4, 24.0)
SPACING_RANGE_MM = (0.1, 6.0)
MAX_VOXELS = 2**24  # 16.8 M voxels: about 0.6 GB of float64 temporaries while drawing a phantom
DEFAULT_VOXEL_ORDER = "LPS"
DEFAULT_OBLIQUE_DEGREES = 6.0  # tilts are drawn from [1/3, 1] of it: 2-6 degrees
MAX_OBLIQUE_DEGREES = 40.0  # below 45, so the closest canonical axes (and the axis codes) stay the same
MAX_LESION_CONTRAST = 3.0
# The quadrants a lesion can occupy; two lesions of one case never share one.
QUADRANTS: tuple[tuple[str, str], ...] = (
    ("left", "peripheral"),
    ("right", "peripheral"),
    ("left", "transition"),
    ("right", "transition"),
)
# Sign of the gland's left-right coordinate u (u grows with i) on each side: RAS i grows toward Right.
_SIDE_SIGN = {"right": 1.0, "left": -1.0}
_ZONE_LABEL = {"transition": LABELS["transition_zone"], "peripheral": LABELS["peripheral_zone"]}
# In-plane lesion radius in reference voxels (1.2 mm): 3 mm and 5.4 mm.
_LESION_RADIUS = {"small": 2.5, "large": 4.5}
# z-radius / in-plane radius, in reference voxels: 0.45 * 3.0 mm is about 1.1 * 1.2 mm, a roughly spherical lesion.
_Z_RATIO = 0.45
_CASE_ID_PATTERN = re.compile(r"^synth_\d{3,}$")


@dataclass
class SyntheticCase:
    """One synthetic case, in RAS-canonical voxel order (see the module docstring).

    Attributes:
        image: float32 ``[3, X, Y, Z]`` (``[3, X, Y]`` for ``spatial_dims=2``), channels T2W, ADC, HBV, values
            in [0, 1.5], no NaNs. Axes: i toward patient Right, j toward Anterior, k toward Superior.
        label: uint8 ``[X, Y, Z]`` (``[X, Y]``) label map with the values of ``LABELS``: 0 background,
            1 transition zone, 2 peripheral zone, 3.. lesions (a lesion overwrites its zone).
        lesions: one dict per lesion, in label order: ``label`` (int), ``side`` ("left"|"right", the
            patient's side of the gland's midline), ``zone`` ("peripheral"|"transition"), ``size``
            ("small"|"large"), ``shape`` ("round"|"irregular"), ``center`` (voxel index, 3 or 2 ints) and
            ``voxels`` (its voxel count in ``label``).
        prompts: dicts ``{"prompt": str, "target": list[int], "kind": str, "meta": dict}``; the target is
            the list of label values whose union is the answer, ``[]`` for an absent target. Every ``meta``
            has ``n_lesions``; with ``unseen_wording > 0`` every ``meta`` also has ``wording`` ("seen" or
            "unseen").
        affine: float64 ``[4, 4]`` voxel-to-world (RAS+ mm) affine of ``image`` and ``label`` in this
            canonical order; for 2D, the affine of the ``[X, Y, 1]`` single-slice volume.
        spacing: voxel size in mm along i, j, k.
        voxel_order: axis codes the arrays get when stored (:meth:`to_storage`); the arrays above stay RAS.
    """

    image: np.ndarray
    label: np.ndarray
    lesions: list[dict]
    prompts: list[dict]
    affine: np.ndarray
    spacing: tuple[float, float, float] = SPACING
    voxel_order: str = DEFAULT_VOXEL_ORDER

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for prompt in self.prompts:
            kinds[prompt["kind"]] = kinds.get(prompt["kind"], 0) + 1
        return (f"SyntheticCase(image={tuple(self.image.shape)} {self.image.dtype}, "
                f"label={tuple(self.label.shape)}, spacing={self.spacing}, orientation=RAS, "
                f"lesions={len(self.lesions)}, prompts={kinds})")

    def to_storage(self, voxel_order: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The arrays as :func:`make_synthetic_dataset` stores them: reordered to ``voxel_order`` axis codes.

        Args:
            voxel_order: 3 nibabel axis codes, e.g. "LPS" (the default storage), "RAS", "PIL"; None uses
                :attr:`voxel_order`.

        Returns:
            ``(image, label, affine)``: image float32 ``[3, *S]``, label uint8 ``S`` and the float64 ``[4, 4]``
            affine of that storage, where ``S`` is the canonical ``(X, Y, Z)`` (2D: ``(X, Y, 1)``) permuted to
            the requested axes. ``nibabel.aff2axcodes(affine)`` gives ``voxel_order`` (the oblique tilt stays
            under 45 degrees) and ``nibabel.as_closest_canonical`` restores :attr:`image` / :attr:`label`.
        """
        from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

        codes = _check_voxel_order("SyntheticCase.to_storage",
                                   self.voxel_order if voxel_order is None else voxel_order)
        # 2D cases are stored as single-slice volumes so they keep an affine (docs/dataset_format.md).
        label = self.label if self.label.ndim == 3 else self.label[:, :, None]
        image = self.image if self.image.ndim == 4 else self.image[:, :, :, None]
        transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(codes)))
        stored_label = np.ascontiguousarray(apply_orientation(label, transform))
        stored_image = np.stack([np.ascontiguousarray(apply_orientation(channel, transform)) for channel in image])
        # inv_ornt_aff maps a stored voxel index to its canonical index, so this is the stored voxel-to-world.
        return stored_image, stored_label, self.affine @ inv_ornt_aff(transform, label.shape)


# --------------------------------------------------------------------------------------------------------
# Phantom
# --------------------------------------------------------------------------------------------------------

def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int],
                  sigma: tuple[float, ...]) -> np.ndarray:
    """Low-frequency random field, float32 ``shape``, zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="reflect")
    field -= field.mean()
    return (field / (field.std() + 1e-8)).astype(np.float32)


def _ellipsoid(coords: tuple[np.ndarray, ...], center: tuple[float, ...],
               radii: tuple[float, ...]) -> np.ndarray:
    """Boolean mask of an axis-aligned ellipsoid on the grid ``coords`` (all in the same units)."""
    total = sum(((c - c0) / r) ** 2 for c, c0, r in zip(coords, center, radii, strict=True))
    return total <= 1.0


def _lesion_blob(rng: np.random.Generator, coords: tuple[np.ndarray, ...], center: np.ndarray,
                 radius: float, shape: str) -> np.ndarray:
    """Boolean mask of a round (ellipsoid) or irregular (lobulated) lesion on the grid ``coords``.

    ``coords`` (one ``[X, Y, Z]`` array per axis), ``center`` and ``radius`` are in reference voxels (1.2, 1.2,
    3.0 mm). ``radius`` is the mean in-plane radius; the z-radius is ``_Z_RATIO`` times it (3 mm slices), at
    least 1.4 so that a small lesion still shows on the reference slices next to its centre. An irregular lesion
    has an in-plane outline ``radius * (1 + a cos(n theta + phi) + ...)`` with 3-5 lobes, scaled down slice
    by slice like the ellipsoid, so every slice shows the same lobulated outline rather than loose voxels.
    """
    z_radius = max(1.4, _Z_RATIO * radius)
    di, dj, dk = (c - c0 for c, c0 in zip(coords, center, strict=True))
    slice_scale = np.sqrt(np.clip(1.0 - (dk / z_radius) ** 2, 0.0, None))
    outline: float | np.ndarray = radius
    if shape == "irregular":
        # Small lesions get fewer lobes: at 2.5 voxels, 5 lobes would be below the grid's resolution.
        n_lobes = int(rng.integers(3, 6 if radius > 3.5 else 5))
        theta = np.arctan2(dj, di)
        lobes = rng.uniform(0.32, 0.42) * np.cos(n_lobes * theta + rng.uniform(0, 2 * np.pi))
        ripple = rng.uniform(0.0, 0.12) * np.cos((n_lobes + 2) * theta + rng.uniform(0, 2 * np.pi))
        outline = radius * (1.0 + lobes + ripple)
    return (np.hypot(di, dj) <= outline * slice_scale) & (slice_scale > 0)


def _place_lesion(rng: np.random.Generator, region: np.ndarray, radius: float, lesion_slice: int | None,
                  spacing: tuple[float, float, float] = SPACING) -> np.ndarray:
    """Pick a lesion centre (int voxel index ``[3]`` of the grid) inside ``region`` with room for ``radius``.

    Candidates are voxels whose distance to the region's border, in in-plane reference voxels (``SPACING[0]``
    = 1.2 mm, whatever the grid's ``spacing``), is at least ``radius``, relaxed to 85% of the deepest voxel
    when the region is too thin. ``lesion_slice`` restricts centres to one axial slice (the 2D variant).
    """
    # Per-axis voxel size in reference in-plane voxels: (1.0, 1.0, 2.5) at SPACING.
    depth = ndimage.distance_transform_edt(region, sampling=tuple(s / SPACING[0] for s in spacing))
    if lesion_slice is not None:
        keep = np.zeros_like(region)
        keep[:, :, lesion_slice] = True
        depth = np.where(keep, depth, 0.0)
    threshold = min(radius, 0.85 * float(depth.max()))
    candidates = np.argwhere((depth >= threshold) & (depth > 0))
    if len(candidates) == 0:  # unreachable for grids of at least MIN_SHAPE; guards against silent misplacement
        raise MedTextSegError("synthetic phantom: no room for a lesion in its zone; use a larger shape")
    return candidates[rng.integers(len(candidates))]


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Smooth multiplicative bias field, float32 ``shape``, about 0.8 to 1.25 (a quadratic in exp)."""
    x, y, z = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in shape), indexing="ij")
    terms = (x, y, z, x * x, y * y, x * y)
    log_field = sum(rng.normal(0.0, 0.07) * term for term in terms)
    return np.exp(log_field).astype(np.float32)


def _phantom(rng: np.random.Generator, shape: tuple[int, int, int], num_lesions: int,
             lesion_slice: int | None, spacing: tuple[float, float, float] = SPACING,
             lesion_contrast: float = 1.0) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Draw one 3D phantom on a grid of ``shape`` voxels of ``spacing`` mm.

    Every anatomical size is in reference voxels (``SPACING`` mm, the default 48 x 48 x 16 grid): the anatomy
    is drawn on the grid's voxel coordinates divided by ``SPACING / spacing`` (the grid's voxels per reference
    voxel), so it keeps its size in mm on any grid, centred in the field of view. At the default spacing
    those factors are 1.0 and every value is computed exactly as on the original 48 x 48 x 16 grid.

    Returns:
        image: float32 ``[3, X, Y, Z]`` (T2W, ADC, HBV), RAS-canonical.
        label: uint8 ``[X, Y, Z]``.
        lesions: attribute dicts (``center`` as 3 ints of the grid, ``voxels`` counted in 3D). A lesion's side
            is decided in the gland's own (slightly rotated) frame, by the sign of its left-right coordinate.
    """
    size_x, size_y, size_z = shape
    # Grid voxels per reference voxel, as Python floats: a float32 array divided by one stays float32.
    fx, fy, fz = (float(ref / s) for ref, s in zip(SPACING, spacing, strict=True))
    factors = np.array([fx, fy, fz])
    # Voxel coordinates of the grid in reference voxels (exactly the voxel indices at the default spacing).
    coords = np.meshgrid(*(np.arange(n, dtype=np.float32) / f for n, f in zip(shape, (fx, fy, fz), strict=True)),
                         indexing="ij")
    ii, jj, kk = coords

    # Gland: an ellipsoid near the centre, slightly anterior, with jittered centre, size and in-plane angle.
    # The anterior offset is 0.05 * 47 reference voxels (2.8 mm) from the grid's centre on any grid; written
    # so that the default grid computes 0.55 * 47 exactly as before.
    center = np.array([(size_x - 1) / 2 / fx + rng.uniform(-1.5, 1.5),
                       0.55 * (size_y - 1) / fy + 0.05 * ((REFERENCE_SHAPE[1] - 1) - (size_y - 1) / fy)
                       + rng.uniform(-1.5, 1.5),
                       (size_z - 1) / 2 / fz + rng.uniform(-0.5, 0.5)])
    semi = np.array([16.0, 12.0, 5.0]) * rng.uniform(0.94, 1.06, size=3)
    angle = np.deg2rad(rng.uniform(-6.0, 6.0))
    # Gland frame: u along its left-right axis (grows with i, toward Right), v toward Anterior, w Superior.
    di, dj = ii - center[0], jj - center[1]
    u = np.cos(angle) * di + np.sin(angle) * dj
    v = -np.sin(angle) * di + np.cos(angle) * dj
    w = kk - center[2]
    frame = (u, v, w)
    gland = _ellipsoid(frame, (0.0, 0.0, 0.0), tuple(semi))
    # Transition zone: inner anterior-central ellipsoid; leaves >= ~7 reference voxels of PZ posteriorly/laterally.
    tz_center = (0.0, 0.3 * semi[1] * rng.uniform(0.9, 1.1), 0.0)
    tz_semi = tuple(semi * np.array([0.62, 0.6, 0.8]) * rng.uniform(0.95, 1.05, size=3))
    transition = _ellipsoid(frame, tz_center, tz_semi) & gland
    peripheral = gland & ~transition
    zones = {"transition": transition, "peripheral": peripheral}

    label = np.zeros(shape, dtype=np.uint8)
    label[transition] = LABELS["transition_zone"]
    label[peripheral] = LABELS["peripheral_zone"]

    # Lesions: distinct quadrants in random order, so a label value says nothing about the location.
    lesions: list[dict] = []
    lesion_masks: list[np.ndarray] = []
    for index, quadrant in enumerate(rng.permutation(len(QUADRANTS))[:num_lesions]):
        side, zone = QUADRANTS[quadrant]
        size = ("small", "large")[rng.integers(2)]
        lesion_shape = ("round", "irregular")[rng.integers(2)]
        radius = _LESION_RADIUS[size] * rng.uniform(0.9, 1.1)
        # The region excludes a 1-voxel (1.2 mm) band at the midline so a lesion never touches the other side.
        region = zones[zone] & (_SIDE_SIGN[side] * u >= 1.0)
        # Irregular lesions reach up to ~1.5 radii from their centre; ask for some of that room.
        reach = radius * (1.25 if lesion_shape == "irregular" else 1.0)
        lesion_center = _place_lesion(rng, region, reach, lesion_slice, spacing)
        mask = _lesion_blob(rng, coords, lesion_center.astype(np.float64) / factors, radius, lesion_shape) & region
        label_value = FIRST_LESION_LABEL + index
        label[mask] = label_value
        lesion_masks.append(mask)
        lesions.append({"label": label_value, "side": side, "zone": zone, "size": size,
                        "shape": lesion_shape, "center": [int(c) for c in lesion_center],
                        "voxels": int(mask.sum())})

    # Tissue intensities per channel (T2W, ADC, HBV), before blur, bias and noise.
    image = np.empty((3, *shape), dtype=np.float32)
    background = (0.62, 0.3, 0.1)  # periprostatic fat / soft tissue
    # Smoothing sigmas are in reference voxels too, so textures keep their size in mm.
    texture = _smooth_field(rng, shape, sigma=(3.0 * fx, 3.0 * fy, 1.0 * fz))
    for channel, value in enumerate(background):
        image[channel] = value * (1.0 + 0.12 * texture)
    # Obturator internus muscles, lateral to the gland: dark on T2W.
    for sign in (-1.0, 1.0):
        # The z semi-axis exceeds the grid: the muscles and the rectum run through every slice.
        muscle = _ellipsoid(coords, (center[0] + sign * (semi[0] + 6.0), center[1], center[2]),
                            (3.5, 10.0, 3.0 * size_z / fz))
        image[:, muscle] = np.array([0.3, 0.55, 0.15], dtype=np.float32)[:, None]
    # Rectum posterior to the gland: a dark wall around a near-black (gas) lumen.
    rectum_center = (center[0], center[1] - semi[1] - 5.5, center[2])
    rectum = _ellipsoid(coords, rectum_center, (7.0, 4.5, 3.0 * size_z / fz))
    lumen = _ellipsoid(coords, rectum_center, (4.0, 2.2, 3.0 * size_z / fz))
    image[:, rectum] = np.array([0.22, 0.45, 0.12], dtype=np.float32)[:, None]
    image[:, lumen] = np.array([0.05, 0.1, 0.03], dtype=np.float32)[:, None]
    # Gland zones: PZ bright on T2W, TZ intermediate and nodular (BPH-like texture on T2W only).
    zone_values = {"peripheral": np.array([0.95, 0.85, 0.2], dtype=np.float32),
                   "transition": np.array([0.58, 0.7, 0.25], dtype=np.float32)}
    image[:, peripheral] = zone_values["peripheral"][:, None]
    image[:, transition] = zone_values["transition"][:, None]
    nodules = _smooth_field(rng, shape, sigma=(1.5 * fx, 1.5 * fy, 0.7 * fz))
    image[0][transition] += 0.08 * nodules[transition]
    # Lesions: T2W subtly darker than their zone, ADC clearly dark, HBV clearly bright.
    for lesion, mask in zip(lesions, lesion_masks, strict=True):
        values = np.array([zone_values[lesion["zone"]][0] - rng.uniform(0.18, 0.3),
                           rng.uniform(0.28, 0.42), rng.uniform(0.75, 1.0)], dtype=np.float32)
        if lesion_contrast != 1.0:  # skipped at 1.0: zone + (values - zone) need not round back to values
            zone_value = zone_values[lesion["zone"]]
            values = zone_value + np.float32(lesion_contrast) * (values - zone_value)
        image[:, mask] = values[:, None]

    # Acquisition: light blur (partial volume), shared coil bias, Gaussian noise.
    bias = _bias_field(rng, shape)
    for channel in range(3):
        blurred = ndimage.gaussian_filter(image[channel], sigma=(0.7 * fx, 0.7 * fy, 0.35 * fz))
        noise = rng.normal(0.0, 0.03 * rng.uniform(0.8, 1.2), size=shape)
        image[channel] = blurred * bias + noise
    np.clip(image, 0.0, 1.5, out=image)
    return image, label, lesions


def _canonical_affine(rng: np.random.Generator, shape: tuple[int, int, int],
                      spacing: tuple[float, float, float] = SPACING,
                      oblique_degrees: float = DEFAULT_OBLIQUE_DEGREES) -> np.ndarray:
    """RAS+ affine ``[4, 4]`` of the canonical array: ``spacing`` (mm), an oblique in-plane tilt and an origin.

    The tilt is ``oblique_degrees / 3`` to ``oblique_degrees`` (2-6 by default, none at 0) either way about the
    superior axis, under 45, so the axis codes stay R, A, S (closest canonical). The same random numbers are
    drawn whatever ``oblique_degrees`` is, so it changes nothing else of a case.
    """
    tilt = np.deg2rad(rng.uniform(oblique_degrees / 3, oblique_degrees) * rng.choice([-1.0, 1.0]))
    rotation = np.array([[np.cos(tilt), -np.sin(tilt), 0.0],
                         [np.sin(tilt), np.cos(tilt), 0.0],
                         [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    grid_center = (np.array(shape, dtype=np.float64) - 1) / 2
    world_center = np.array([rng.uniform(-10, 10), rng.uniform(-40, -20), rng.uniform(10, 40)])
    affine[:3, 3] = world_center - affine[:3, :3] @ grid_center
    return affine


# --------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------

_PREFIXES = ("segment the ", "outline the ", "find the ", "delineate the ", "mark the ", "show the ",
             "contour the ", "the ", "")
_NOUNS = ("lesion", "lesion", "lesion", "tumor", "suspicious lesion", "focal lesion")
_SIZE_WORDS = {"small": ("small",), "large": ("large", "big")}
_SHAPE_WORDS = {"round": ("round", "rounded", "oval"),
                "irregular": ("irregular", "lobulated", "irregularly shaped")}
_ZONE_WORDS = {"peripheral": ("peripheral zone", "PZ"), "transition": ("transition zone", "TZ")}
# Attribute combinations a `single` prompt may use; only those unique within the case are drawn.
_REFERENCES: tuple[tuple[str, ...], ...] = (
    ("side", "zone"), ("side",), ("zone",), ("size",), ("shape",), ("size", "shape"),
    ("side", "zone", "size"), ("side", "zone", "shape"), ("side", "zone", "size", "shape"),
    ("side", "size"), ("zone", "size"), ("side", "shape"), ("zone", "shape"),
)
_SINGLE_PER_LESION = 3
_ALL_PHRASES = ("segment all lesions", "outline all lesions", "find every lesion",
                "segment all suspicious lesions", "all lesions", "delineate every lesion in the prostate",
                "mark all tumors", "segment every lesion")
_ANY_LESION_PHRASES = ("segment the lesion", "find the lesion", "outline any lesion", "segment the tumor",
                       "is there a lesion? segment it", "mark the suspicious lesion")
_ANATOMY_PHRASES = {
    "prostate": ("segment the prostate", "segment the prostate gland", "the whole gland", "prostate",
                 "outline the whole prostate", "delineate the prostate gland"),
    "peripheral_zone": ("segment the peripheral zone", "the PZ", "peripheral zone", "segment the PZ",
                        "outline the peripheral zone of the prostate"),
    "transition_zone": ("segment the transition zone", "the TZ", "outline the transition zone",
                        "transition zone of the prostate", "segment the TZ"),
}


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _location(rng: np.random.Generator, side: str | None, zone: str | None) -> tuple[str, str]:
    """Location words as (before the noun, after the noun); one of them is empty."""
    zone_word = _pick(rng, _ZONE_WORDS[zone]) if zone else ""
    if side and zone:
        before = (f"{side} {zone_word} ",)
        after = (f" in the {side} {zone_word}", f" in the {zone_word} on the {side}",
                 f" located in the {side} {zone_word}", f" within the {side} {zone_word}")
    elif side:
        before = (f"{side}-sided ", f"{side} ")
        after = (f" on the {side}", f" on the {side} side", f" in the {side} half of the prostate",
                 f" in the {side} lobe of the gland")
    elif zone:
        before = (f"{zone_word} ",)
        after = (f" in the {zone_word}", f" located in the {zone_word}", f" within the {zone_word}")
    else:
        return "", ""
    if rng.random() < 0.3:
        return _pick(rng, before), ""
    return "", _pick(rng, after)


def _describe(rng: np.random.Generator, attributes: dict[str, str]) -> str:
    """Render a lesion description from some of side/zone/size/shape: 'the large lesion in the left PZ'."""
    adjectives = [_pick(rng, _SIZE_WORDS[attributes["size"]])] if "size" in attributes else []
    if "shape" in attributes:
        adjectives.append(_pick(rng, _SHAPE_WORDS[attributes["shape"]]))
    before, after = _location(rng, attributes.get("side"), attributes.get("zone"))
    words = " ".join([*adjectives, f"{before}{_pick(rng, _NOUNS)}"])
    return _finish(rng, f"{_pick(rng, _PREFIXES)}{words}{after}")


def _finish(rng: np.random.Generator, text: str) -> str:
    """Vary surface form a little: sometimes a capital first letter, sometimes a full stop."""
    if rng.random() < 0.2:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.15 and not text.endswith("?"):
        text += "."
    return text


def _matches(lesion: dict, attributes: dict[str, str]) -> bool:
    return all(lesion[key] == value for key, value in attributes.items())


def _make_prompts(rng: np.random.Generator, lesions: list[dict]) -> list[dict]:
    """All prompts of one case (see the module docstring for the kinds); targets are sorted label lists."""
    n_lesions = len(lesions)
    prompts: list[dict] = []

    # single: one lesion, named by an attribute combination no other lesion of the case shares.
    for lesion in lesions:
        unique = [ref for ref in _REFERENCES
                  if sum(_matches(other, {key: lesion[key] for key in ref}) for other in lesions) == 1]
        # Prefer one reference with a location (the hard, text-only part), then others at random.
        located = [ref for ref in unique if "side" in ref or "zone" in ref]
        chosen = [located[int(rng.integers(len(located)))]]
        rest = [ref for ref in unique if ref != chosen[0]]
        for pick in rng.permutation(len(rest))[: _SINGLE_PER_LESION - 1]:
            chosen.append(rest[pick])
        for ref in chosen:
            attributes = {key: lesion[key] for key in ref}
            meta = {"n_lesions": n_lesions, "label": lesion["label"], "side": lesion["side"],
                    "zone": lesion["zone"], "size": lesion["size"], "shape": lesion["shape"],
                    "mentioned": list(ref)}
            prompts.append({"prompt": _describe(rng, attributes), "target": [lesion["label"]],
                            "kind": "single", "meta": meta})

    # all: the union of every lesion ([] without lesions).
    prompts.append({"prompt": _finish(rng, _pick(rng, _ALL_PHRASES)),
                    "target": sorted(lesion["label"] for lesion in lesions), "kind": "all",
                    "meta": {"n_lesions": n_lesions}})

    # absent: a lesion in an empty quadrant (never a quadrant that holds a lesion of another size/shape,
    # which a reader would take to mean that lesion).
    occupied = {(lesion["side"], lesion["zone"]) for lesion in lesions}
    empty = [quadrant for quadrant in QUADRANTS if quadrant not in occupied]
    n_absent = min(int(rng.integers(1, 3)), len(empty))
    for pick in rng.permutation(len(empty))[:n_absent]:
        side, zone = empty[pick]
        attributes = {"side": side, "zone": zone}
        if rng.random() < 0.3:
            attributes["size"] = ("small", "large")[rng.integers(2)]
        if rng.random() < 0.3:
            attributes["shape"] = ("round", "irregular")[rng.integers(2)]
        prompts.append({"prompt": _describe(rng, attributes), "target": [], "kind": "absent",
                        "meta": {"n_lesions": n_lesions, **attributes}})
    if n_lesions == 0:
        prompts.append({"prompt": _finish(rng, _pick(rng, _ANY_LESION_PHRASES)), "target": [],
                        "kind": "absent", "meta": {"n_lesions": 0}})

    # anatomy: a structure includes the lesions inside it (lesion labels overwrite zone labels).
    in_zone = {zone: [lesion["label"] for lesion in lesions if lesion["zone"] == zone]
               for zone in ("peripheral", "transition")}
    targets = {
        "prostate": [LABELS["transition_zone"], LABELS["peripheral_zone"], *(x["label"] for x in lesions)],
        "peripheral_zone": [LABELS["peripheral_zone"], *in_zone["peripheral"]],
        "transition_zone": [LABELS["transition_zone"], *in_zone["transition"]],
    }
    for structure, target in targets.items():
        prompts.append({"prompt": _finish(rng, _pick(rng, _ANATOMY_PHRASES[structure])),
                        "target": sorted(target), "kind": "anatomy",
                        "meta": {"n_lesions": n_lesions, "structure": structure}})
    return prompts


# --------------------------------------------------------------------------------------------------------
# Unseen wordings: test-split prompts in words the training split never uses (``unseen_wording``)
# --------------------------------------------------------------------------------------------------------

# Attributes are rendered only with these words, never with the training ones ("left", "PZ", "small", ...),
# so a model must map new words to known meanings. Every meaning is kept exactly: same side, zone, size,
# shape, structure and target (an outer / central gland is the peripheral / transition zone).
_UNSEEN_SIDE = {"left": ("Lt", "L"), "right": ("Rt", "R")}
_UNSEEN_ZONE = {"peripheral": ("outer gland",), "transition": ("central gland", "inner gland")}
_UNSEEN_SIZE = {"small": ("tiny", "little"), "large": ("sizeable", "bulky")}
# Report and structured forms may give the size as a diameter in its class's range instead: small lesions
# are 5.4-6.6 mm across, large ones 9.7-11.9 mm, on every grid (the anatomy keeps its size in mm).
_UNSEEN_DIAMETER = {"small": ("6 mm", "0.6 cm"), "large": ("11 mm", "1.1 cm")}
_UNSEEN_SHAPE = {"round": ("ovoid", "globular", "spherical"), "irregular": ("multilobed", "jagged", "misshapen")}
_UNSEEN_NOUNS = ("focus", "nodule", "abnormality")
_UNSEEN_VERBS = ("highlight", "localize", "annotate", "depict")
_UNSEEN_QUESTIONS = ("where is the {}?", "which voxels belong to the {}?", "can you localize the {}?")
_UNSEEN_REPORT_HEADS = ("Finding", "Impression")
_UNSEEN_ALL = ("highlight each focus", "annotate every nodule", "where are all the foci?", "depict all abnormalities",
               "Findings: each focus", "target: all nodules")
_UNSEEN_ANY = ("highlight any focus", "where is the nodule?", "is any abnormality present? localize it",
               "target: any focus")
_UNSEEN_ANATOMY = {
    "prostate": ("highlight the entire prostatic gland", "where is the prostatic gland?",
                 "annotate the prostatic gland, both zones", "target: prostatic gland"),
    "peripheral_zone": ("highlight the outer gland", "where is the outer gland?", "annotate the outer gland",
                        "target: outer gland"),
    "transition_zone": ("highlight the central gland", "where is the inner gland?", "annotate the central gland",
                        "target: inner gland"),
}
# The words that tell an unseen wording apart (lower case, as ``re.findall("[a-z0-9]+", text.lower())`` splits
# them). None occurs in a prompt of the training vocabulary above, and every other word of an unseen prompt
# does ("the", "in", "gland", "all", ...): tests/test_synthetic.py checks both on generated prompts.
_UNSEEN_MARKERS: frozenset[str] = frozenset(
    "lt l rt r outer central inner hemigland tiny little sizeable bulky ovoid globular spherical multilobed jagged "
    "misshapen focus foci nodule nodules abnormality abnormalities highlight localize annotate depict where which "
    "voxels belong can you are each present finding findings impression target laterality region diameter "
    "morphology size entire prostatic both zones mm cm 0 1 6 11".split())


def _unseen_place(rng: np.random.Generator, side: str | None, zone: str | None) -> str:
    """The location in unseen words, e.g. "Lt outer gland", "Rt hemigland", "central gland"; "" for none."""
    side_word = _pick(rng, _UNSEEN_SIDE[side]) if side else ""
    zone_word = _pick(rng, _UNSEEN_ZONE[zone]) if zone else ""
    if side and zone:
        return f"{side_word} {zone_word}"
    if side:
        return f"{side_word} hemigland"
    return zone_word


def _unseen_lesion(rng: np.random.Generator, attributes: dict[str, str]) -> str:
    """A lesion named by exactly ``attributes`` (some of side/zone/size/shape) in an unseen form: imperative,
    question, report-style ("Finding: 1.1 cm jagged nodule, Rt outer gland.") or structured."""
    noun = _pick(rng, _UNSEEN_NOUNS)
    place = _unseen_place(rng, attributes.get("side"), attributes.get("zone"))
    size, shape = attributes.get("size"), attributes.get("shape")
    form = int(rng.integers(4))
    if form == 2:  # report style
        size_text = [_pick(rng, _UNSEEN_DIAMETER[size] + _UNSEEN_SIZE[size])] if size else []
        shape_text = [_pick(rng, _UNSEEN_SHAPE[shape])] if shape else []
        words = " ".join([*size_text, *shape_text, noun])
        return f"{_pick(rng, _UNSEEN_REPORT_HEADS)}: {words}{f', {place}' if place else ''}."
    if form == 3:  # structured fields, each only when named
        fields = [f"target: {noun}"]
        if attributes.get("side"):
            fields.append(f"laterality: {_pick(rng, _UNSEEN_SIDE[attributes['side']])}")
        if attributes.get("zone"):
            fields.append(f"region: {_pick(rng, _UNSEEN_ZONE[attributes['zone']])}")
        if size:
            fields.append(_pick(rng, (f"diameter: {_pick(rng, _UNSEEN_DIAMETER[size])}",
                                      f"size: {_pick(rng, _UNSEEN_SIZE[size])}")))
        if shape:
            fields.append(f"morphology: {_pick(rng, _UNSEEN_SHAPE[shape])}")
        return "; ".join(fields)
    adjectives = [_pick(rng, _UNSEEN_SIZE[size])] if size else []
    if shape:
        adjectives.append(_pick(rng, _UNSEEN_SHAPE[shape]))
    description = " ".join([*adjectives, noun]) + (_pick(rng, (f" in the {place}", f" within the {place}"))
                                                   if place else "")
    if form == 1:
        return _pick(rng, _UNSEEN_QUESTIONS).format(description)
    return f"{_pick(rng, _UNSEEN_VERBS)} the {description}"


def _unseen_text(rng: np.random.Generator, kind: str, meta: dict) -> str:
    """An unseen wording of a prompt of ``kind`` with ``meta`` (as made by :func:`_make_prompts`)."""
    if kind == "anatomy":
        text = _pick(rng, _UNSEEN_ANATOMY[meta["structure"]])
    elif kind == "all":
        text = _pick(rng, _UNSEEN_ALL)
    else:  # single (names meta["mentioned"]) or absent (names every attribute its meta holds, maybe none)
        keys = meta.get("mentioned", ("side", "zone", "size", "shape"))
        attributes = {key: meta[key] for key in keys if key in meta}
        text = _unseen_lesion(rng, attributes) if attributes else _pick(rng, _UNSEEN_ANY)
    return text[0].upper() + text[1:] if rng.random() < 0.2 else text


def _reword_unseen(rng: np.random.Generator, prompts: list[dict], fraction: float) -> None:
    """Rewrite each prompt with probability ``fraction`` in an unseen wording, in place; target, kind and meta
    stay, and every meta gets ``wording``: "unseen" for a rewritten prompt, "seen" for the others."""
    rewrite = rng.random(len(prompts)) < fraction
    for prompt, unseen in zip(prompts, rewrite, strict=True):
        if unseen:
            prompt["prompt"] = _unseen_text(rng, prompt["kind"], prompt["meta"])
        prompt["meta"]["wording"] = "unseen" if unseen else "seen"


# --------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------

def make_case(rng: np.random.Generator, spatial_dims: int = 3, shape: tuple[int, int, int] | None = None,
              num_lesions: int | None = None, *, spacing: tuple[float, float, float] = SPACING,
              field_of_view: tuple[float, float, float] | None = None, voxel_order: str = DEFAULT_VOXEL_ORDER,
              oblique_degrees: float = DEFAULT_OBLIQUE_DEGREES, lesion_contrast: float = 1.0, min_lesions: int = 0,
              max_lesions: int = MAX_LESIONS, unseen_wording: float = 0.0) -> SyntheticCase:
    """Draw one synthetic bp-MRI case and its prompts; the same ``rng`` state gives the same case.

    Args:
        rng: the case's random generator; ``make_synthetic_dataset`` uses ``np.random.default_rng([seed, i])``
            for case i.
        spatial_dims: 3, or 2 for the central axial slice of the same kind of phantom, with every lesion
            centred on that slice (``k = Z // 2``).
        shape: ``(X, Y, Z)`` grid in voxels of ``spacing``, at least ``(32, 32, 8)``, instead of
            ``field_of_view`` (the field of view is then ``shape * spacing``). The anatomy keeps its size in mm
            (lesion radii are about 2.5 and 4.5 voxels at the default spacing), so a larger grid shows more
            tissue around it and a small one crops the gland's edge.
        num_lesions: 0 to 3; drawn uniformly from ``min_lesions`` to ``max_lesions`` when None.
        spacing: voxel size in mm along i, j, k (3 numbers from 0.1 to 6), ``SPACING`` by default.
        field_of_view: extent in mm along i, j, k, at least ``MIN_FIELD_OF_VIEW``; the grid is
            ``round(field_of_view / spacing)`` voxels (at most ``MAX_VOXELS`` in all). Default
            ``DEFAULT_FIELD_OF_VIEW`` = 57.6 x 57.6 x 48 mm (48 x 48 x 16 voxels at the default spacing).
        voxel_order: axis codes of the stored files (recorded in the case for :meth:`SyntheticCase.to_storage`;
            the returned arrays stay RAS), e.g. "LPS" (default), "RAS", "PIL".
        oblique_degrees: largest in-plane tilt of the affine, 0 to 40; tilts are drawn from a third of it to
            it, either way (2-6 degrees by default; 0 = none).
        lesion_contrast: 0 to 3; multiplies how far each lesion's intensities (before blur, bias and noise)
            differ from its zone's: 1 is the default contrast, 0 makes lesions invisible.
        min_lesions, max_lesions: the range ``num_lesions`` is drawn from when None, within 0 to ``MAX_LESIONS``.
        unseen_wording: 0 to 1; each prompt is rewritten with this probability in a wording the default
            vocabulary never uses (same target and meta). When above 0, every prompt's meta gets ``wording``
            ("seen" or "unseen"). The rewriting draws from ``rng`` after everything else, so it changes only
            the prompts' text. :func:`make_synthetic_dataset` applies it to test-split cases only.

    Returns:
        A :class:`SyntheticCase` in RAS-canonical order: image float32 ``[3, X, Y, Z]`` (``[3, X, Y]``),
        label uint8 ``[X, Y, Z]`` (``[X, Y]``), i toward patient Right (patient left = smaller i).

    Raises:
        MedTextSegError: ``rng`` is not a ``numpy.random.Generator``, or another argument is out of range (the
            message names it).

    Example:
        >>> case = make_case(np.random.default_rng(3), spatial_dims=2, num_lesions=1)
        >>> case.image.shape, case.label.shape, [p["kind"] for p in case.prompts][-3:]
        ((3, 48, 48), (48, 48), ['anatomy', 'anatomy', 'anatomy'])
        >>> make_case(np.random.default_rng(3), spacing=(0.6, 0.6, 3.0)).label.shape
        (96, 96, 16)
    """
    if not isinstance(rng, np.random.Generator):
        raise MedTextSegError("make_case: rng must be a numpy.random.Generator, e.g. "
                              f"np.random.default_rng(seed), got {type(rng).__name__}")
    _check_spatial_dims("make_case", spatial_dims)
    if shape is not None:
        if field_of_view is not None:
            raise MedTextSegError("make_case: give shape (voxels) or field_of_view (mm), not both")
        shape = tuple(shape)
        if (len(shape) != 3 or not all(isinstance(n, int | np.integer) for n in shape)
                or any(n < m for n, m in zip(shape, MIN_SHAPE, strict=True))):
            raise MedTextSegError(f"make_case: shape must be 3 integers (X, Y, Z) of at least {MIN_SHAPE}, "
                                  f"got {shape}")
        shape = tuple(int(n) for n in shape)
    knobs = _check_knobs("make_case", spacing=spacing, field_of_view=field_of_view, voxel_order=voxel_order,
                         oblique_degrees=oblique_degrees, lesion_contrast=lesion_contrast,
                         min_lesions=min_lesions, max_lesions=max_lesions, unseen_wording=unseen_wording,
                         shape=shape)
    shape = knobs["shape"]
    if num_lesions is None:
        num_lesions = int(rng.integers(knobs["min_lesions"], knobs["max_lesions"] + 1))
    elif isinstance(num_lesions, bool) or not isinstance(num_lesions, int | np.integer) \
            or not 0 <= num_lesions <= MAX_LESIONS:
        raise MedTextSegError(f"make_case: num_lesions must be an integer from 0 to {MAX_LESIONS} or None, "
                              f"got {num_lesions!r}")

    lesion_slice = shape[2] // 2 if spatial_dims == 2 else None
    image, label, lesions = _phantom(rng, shape, int(num_lesions), lesion_slice, knobs["spacing"],
                                     knobs["lesion_contrast"])
    affine = _canonical_affine(rng, shape, knobs["spacing"], knobs["oblique_degrees"])
    if spatial_dims == 2:
        image, label = image[:, :, :, lesion_slice].copy(), label[:, :, lesion_slice].copy()
        # Origin of the single-slice volume: the world position of voxel (0, 0, lesion_slice).
        affine[:3, 3] += affine[:3, 2] * lesion_slice
        for lesion in lesions:
            lesion["center"] = lesion["center"][:2]
            lesion["voxels"] = int((label == lesion["label"]).sum())
    prompts = _make_prompts(rng, lesions)
    if knobs["unseen_wording"] > 0:
        _reword_unseen(rng, prompts, knobs["unseen_wording"])
    return SyntheticCase(image=image, label=label, lesions=lesions, prompts=prompts, affine=affine,
                         spacing=knobs["spacing"], voxel_order=knobs["voxel_order"])


def make_synthetic_dataset(out_dir: str | Path, num_cases: int = 150, spatial_dims: int = 3, seed: int = 0,
                           split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                           progress: bool = False, *, spacing: tuple[float, float, float] = SPACING,
                           field_of_view: tuple[float, float, float] | None = None,
                           voxel_order: str = DEFAULT_VOXEL_ORDER, oblique_degrees: float = DEFAULT_OBLIQUE_DEGREES,
                           lesion_contrast: float = 1.0, min_lesions: int = 0, max_lesions: int = MAX_LESIONS,
                           unseen_wording: float = 0.0) -> Path:
    """Write a synthetic benchmark in the medtextseg dataset format (``docs/dataset_format.md``).

    Writes ``dataset.json``, ``imagesTr/{case}_{0000,0001,0002}.nii.gz`` (T2W, ADC, HBV),
    ``labelsTr/{case}.nii.gz``, ``prompts.jsonl`` and ``splits.json`` into ``out_dir`` (created if needed),
    each file atomically; ``dataset.json`` is written last, so its presence marks a finished run. Case ``i``
    is ``synth_{i:03d}``, drawn by :func:`make_case` with ``np.random.default_rng([seed, i])`` and the keyword
    arguments below, so it does not depend on ``num_cases``. Stale ``synth_*`` image and label files of an
    earlier, larger run in ``out_dir`` are removed.

    NIfTI files store the RAS-canonical arrays reordered to ``voxel_order`` (default "LPS": flipped along i
    and j, as from DICOM) with the matching affine (``spacing``, an oblique tilt, non-zero origin);
    reorienting to RAS restores :attr:`SyntheticCase.image` / ``label`` exactly. 2D datasets store
    ``X x Y x 1`` volumes (in RAS order; permuted like 3D ones for another ``voxel_order``).

    Args:
        out_dir: dataset folder.
        num_cases: number of cases, at least 1.
        spatial_dims: 3, or 2 (central slices; ``dataset.json`` gets ``"medtextseg": {"spatial_dims": 2}``).
        seed: non-negative integer.
        split_fractions: (train, val, test) fractions, non-negative, summing to 1; cases are shuffled by
            ``seed`` and counts rounded (test takes the remainder). The splits depend on the case ids and
            ``seed`` only.
        progress: show a rich progress bar.
        spacing, field_of_view, voxel_order, oblique_degrees, lesion_contrast, min_lesions, max_lesions: as in
            :func:`make_case`, for every case.
        unseen_wording: 0 to 1, the expected fraction of **test-split** prompts rewritten in wordings that no
            training prompt uses (training and validation prompts are never rewritten). When above 0, every
            prompt line's meta has ``wording`` ("seen" or "unseen").

    When any of these keyword arguments differs from its default, ``dataset.json`` records all of them, and the
    grid shape, under ``"medtextseg": {"synthetic": {...}}``; with the defaults every file is as before they
    existed, byte for byte.

    Returns:
        ``Path(out_dir)``.

    Raises:
        MedTextSegError: an argument is out of range (the message names it); nothing is written then.
    """
    where = "make_synthetic_dataset"
    if isinstance(num_cases, bool) or not isinstance(num_cases, int | np.integer) or num_cases < 1:
        raise MedTextSegError(f"{where}: num_cases must be an integer >= 1, got {num_cases!r}")
    _check_spatial_dims(where, spatial_dims)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise MedTextSegError(f"{where}: seed must be a non-negative integer, got {seed!r}")
    fractions = tuple(float(f) for f in split_fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise MedTextSegError(f"{where}: split_fractions must be 3 non-negative numbers "
                              f"(train, val, test) summing to 1, got {tuple(split_fractions)}")
    knobs = _check_knobs(where, spacing=spacing, field_of_view=field_of_view, voxel_order=voxel_order,
                         oblique_degrees=oblique_degrees, lesion_contrast=lesion_contrast, min_lesions=min_lesions,
                         max_lesions=max_lesions, unseen_wording=unseen_wording)
    case_kwargs = {key: knobs[key] for key in ("spacing", "field_of_view", "voxel_order", "oblique_degrees",
                                               "lesion_contrast", "min_lesions", "max_lesions")}

    out_dir = Path(out_dir)
    case_ids = [f"synth_{i:03d}" for i in range(int(num_cases))]
    _remove_stale_cases(out_dir, set(case_ids))
    # Splits first: unseen wordings go to test cases only (the splits depend on case ids and seed alone).
    splits = _splits(case_ids, fractions, seed)
    test_ids = set(splits["test"])
    prompt_lines: list[str] = []
    with progress_bar(range(len(case_ids)), f"Writing {len(case_ids)} synthetic cases", show=progress) as indices:
        for i in indices:
            case_id = case_ids[i]
            unseen = knobs["unseen_wording"] if case_id in test_ids else 0.0
            case = make_case(np.random.default_rng([seed, i]), spatial_dims=spatial_dims, unseen_wording=unseen,
                             **case_kwargs)
            stored_image, stored_label, stored_affine = case.to_storage()
            for channel in range(len(CHANNEL_NAMES)):
                _save_nifti(stored_image[channel], stored_affine, np.float32,
                            out_dir / "imagesTr" / f"{case_id}_{channel:04d}.nii.gz")
            _save_nifti(stored_label, stored_affine, np.uint8, out_dir / "labelsTr" / f"{case_id}.nii.gz")
            for prompt in case.prompts:
                if knobs["unseen_wording"] > 0 and unseen == 0.0:  # training / validation case: all seen
                    prompt["meta"]["wording"] = "seen"
                prompt_lines.append(json.dumps({"case": case_id, **prompt}))

    write_text_atomic(out_dir / "prompts.jsonl", "\n".join(prompt_lines) + "\n")
    write_text_atomic(out_dir / "splits.json", json.dumps(splits, indent=2) + "\n")
    extension: dict = {"spatial_dims": spatial_dims}
    if any(knobs[key] != value for key, value in _KNOB_DEFAULTS.items()):
        # Only for data made differently, so that a default dataset stays byte-identical to earlier ones.
        extension["synthetic"] = {
            "spacing": list(knobs["spacing"]), "field_of_view": list(knobs["field_of_view"]),
            "shape": list(knobs["shape"]), "voxel_order": knobs["voxel_order"],
            "oblique_degrees": knobs["oblique_degrees"], "lesion_contrast": knobs["lesion_contrast"],
            "min_lesions": knobs["min_lesions"], "max_lesions": knobs["max_lesions"],
            "unseen_wording": knobs["unseen_wording"],
        }
    dataset = {
        "name": "SynthProstate",
        "description": f"Synthetic prostate bp-MRI with prompts (medtextseg.data.synthetic, seed={seed})",
        "channel_names": {str(c): name for c, name in enumerate(CHANNEL_NAMES)},
        "labels": dict(LABELS),
        "numTraining": len(case_ids),
        "file_ending": ".nii.gz",
        "medtextseg": extension,
    }
    write_text_atomic(out_dir / "dataset.json", json.dumps(dataset, indent=2) + "\n")
    return out_dir


# --------------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------------

# The knobs' defaults, after _check_knobs' normalisation (field_of_view None means DEFAULT_FIELD_OF_VIEW).
_KNOB_DEFAULTS: dict = {
    "spacing": SPACING, "field_of_view": DEFAULT_FIELD_OF_VIEW, "voxel_order": DEFAULT_VOXEL_ORDER,
    "oblique_degrees": DEFAULT_OBLIQUE_DEGREES, "lesion_contrast": 1.0, "min_lesions": 0,
    "max_lesions": MAX_LESIONS, "unseen_wording": 0.0,
}


def _check_spatial_dims(where: str, spatial_dims: int) -> None:
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise MedTextSegError(f"{where}: spatial_dims must be 2 or 3, got {spatial_dims!r}")


def _is_number(value) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def _check_number(where: str, name: str, value, low: float, high: float) -> float:
    """``value`` as a float in [low, high], or a MedTextSegError naming ``name``."""
    if not _is_number(value) or not np.isfinite(value) or not low <= value <= high:
        raise MedTextSegError(f"{where}: {name} must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _check_triple(where: str, name: str, value, low: tuple[float, float, float], high: float,
                  unit: str) -> tuple[float, float, float]:
    """``value`` as 3 floats, each in [low[axis], high], or a MedTextSegError naming ``name``."""
    items = tuple(value) if isinstance(value, list | tuple | np.ndarray) else (value,)
    if (len(items) != 3 or not all(_is_number(v) and np.isfinite(v) for v in items)
            or any(not lo <= v <= high for v, lo in zip(items, low, strict=True))):
        bounds = f"each from {low[0]:g} to {high:g}" if len(set(low)) == 1 else f"from {low} to {high:g} each"
        raise MedTextSegError(f"{where}: {name} must be 3 numbers in {unit} (X, Y, Z), {bounds}, got {value!r}")
    return tuple(float(v) for v in items)


def _check_voxel_order(where: str, voxel_order) -> str:
    """``voxel_order`` as 3 upper-case axis codes, one of each of L/R, A/P and S/I in any order."""
    axes = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}
    codes = voxel_order.upper() if isinstance(voxel_order, str) else None
    if codes is None or len(codes) != 3 or any(c not in axes for c in codes) or {axes[c] for c in codes} != {0, 1, 2}:
        raise MedTextSegError(f"{where}: voxel_order must be 3 axis codes, one of L/R, one of A/P and one of S/I in "
                              f"any order (e.g. LPS, RAS, PIL), got {voxel_order!r}")
    return codes


def _check_knobs(where: str, *, spacing, field_of_view, voxel_order, oblique_degrees, lesion_contrast, min_lesions,
                 max_lesions, unseen_wording, shape: tuple[int, int, int] | None = None) -> dict:
    """Validate the "made differently" arguments; returns them normalised (floats, tuples, upper-case codes)
    plus ``shape``, the grid in voxels (``shape`` itself when given, else ``round(field_of_view / spacing)``).

    Raises:
        MedTextSegError: naming the first argument out of range.
    """
    low, high = SPACING_RANGE_MM
    spacing = _check_triple(where, "spacing", spacing, (low, low, low), high, "mm")
    if shape is not None:  # make_case's grid in voxels: the field of view follows
        field_of_view = tuple(n * s for n, s in zip(shape, spacing, strict=True))
        if any(f < m - 1e-9 for f, m in zip(field_of_view, MIN_FIELD_OF_VIEW, strict=True)):  # 32 * 1.2 < 38.4
            raise MedTextSegError(f"{where}: shape x spacing must cover at least {MIN_FIELD_OF_VIEW} mm, got "
                                  f"{shape} x {spacing}")
    else:
        field_of_view = _check_triple(where, "field_of_view", DEFAULT_FIELD_OF_VIEW if field_of_view is None
                                      else field_of_view, MIN_FIELD_OF_VIEW, 1000.0, "mm")
        shape = tuple(int(round(f / s)) for f, s in zip(field_of_view, spacing, strict=True))
    if int(np.prod(shape)) > MAX_VOXELS:
        raise MedTextSegError(f"{where}: field_of_view / spacing gives a grid of {shape[0]} x {shape[1]} x {shape[2]} "
                              f"voxels, more than {MAX_VOXELS}; use a coarser spacing or a smaller field_of_view")
    for name, value in (("min_lesions", min_lesions), ("max_lesions", max_lesions)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value <= MAX_LESIONS:
            raise MedTextSegError(f"{where}: {name} must be an integer from 0 to {MAX_LESIONS}, got {value!r}")
    if min_lesions > max_lesions:
        raise MedTextSegError(f"{where}: min_lesions ({min_lesions}) must not exceed max_lesions ({max_lesions})")
    return {
        "spacing": spacing, "field_of_view": field_of_view, "shape": shape,
        "voxel_order": _check_voxel_order(where, voxel_order),
        "oblique_degrees": _check_number(where, "oblique_degrees", oblique_degrees, 0.0, MAX_OBLIQUE_DEGREES),
        "lesion_contrast": _check_number(where, "lesion_contrast", lesion_contrast, 0.0, MAX_LESION_CONTRAST),
        "min_lesions": int(min_lesions), "max_lesions": int(max_lesions),
        "unseen_wording": _check_number(where, "unseen_wording", unseen_wording, 0.0, 1.0),
    }


# --------------------------------------------------------------------------------------------------------
# Writing helpers
# --------------------------------------------------------------------------------------------------------


def _save_nifti(data: np.ndarray, affine: np.ndarray, dtype: type, path: Path) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(data.astype(dtype, copy=False), affine)
    image.header.set_data_dtype(dtype)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)  # scanner coordinates, as DICOM-derived files carry
    image.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)


def _splits(case_ids: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, list[str]]:
    """Shuffle ``case_ids`` with a stream separate from every case's, then cut by the rounded fractions."""
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,))).permutation(len(case_ids))
    n_train = int(round(fractions[0] * len(case_ids)))
    n_val = min(int(round(fractions[1] * len(case_ids))), len(case_ids) - n_train)
    shuffled = [case_ids[i] for i in order]
    return {"train": sorted(shuffled[:n_train]), "val": sorted(shuffled[n_train:n_train + n_val]),
            "test": sorted(shuffled[n_train + n_val:])}


def _remove_stale_cases(out_dir: Path, keep: set[str]) -> None:
    """Delete ``synth_*`` image/label files of cases not in ``keep`` (from an earlier, larger run)."""
    for folder, strip in (("imagesTr", 12), ("labelsTr", 7)):  # "_0000.nii.gz" / ".nii.gz"
        for path in sorted((out_dir / folder).glob("synth_*.nii.gz")):
            case_id = path.name[:-strip]
            if _CASE_ID_PATTERN.match(case_id) and case_id not in keep:
                path.unlink()

"""Synthetic prostate bp-MRI benchmark where only the prompt says which target is meant.

Each case is a phantom of a pelvis with a prostate gland (transition zone inside peripheral zone) and 0 to 3
lesions, each in its own (side, zone) quadrant, with a size (small or large) and a shape (round or irregular).
One image carries many prompts ("the lesion in the left PZ", "the large irregular lesion", "segment all
lesions", "the prostate", a lesion that is not there), so a model that ignores the text cannot score well.

Conventions (shared by every array in this module):

* Arrays are in RAS-canonical voxel order, the order ``monai.transforms.Orientation(axcodes="RAS")`` and
  nibabel's ``as_closest_canonical`` produce: index ``i`` grows toward the patient's **Right**, ``j`` toward
  **Anterior**, ``k`` toward **Superior**. Patient *left* is therefore the side of **smaller i**.
* Voxel spacing is ``SPACING`` = (1.2, 1.2, 3.0) mm (anisotropic, like axial bp-MRI).
* Files are **not** stored in that order: :func:`make_synthetic_dataset` writes the arrays flipped along
  ``i`` and ``j`` (LPS-like storage, as DICOM-derived data are) with the matching affine, a non-zero origin
  and an oblique rotation of a few degrees about the superior axis. A reader that ignores the affine gets
  left and right swapped; reorienting to RAS restores the arrays exactly.

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

__all__ = [
    "CHANNEL_NAMES",
    "LABELS",
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
MAX_LESIONS = 3
FIRST_LESION_LABEL = LABELS["lesion_1"]
MIN_SHAPE = (32, 32, 8)
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
# In-plane lesion radius in voxels of the default 48 x 48 grid.
_LESION_RADIUS = {"small": 2.5, "large": 4.5}
# z-radius / in-plane radius, in voxels: 0.45 * 3.0 mm is about 1.1 * 1.2 mm, a roughly spherical lesion.
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
            has ``n_lesions``.
        affine: float64 ``[4, 4]`` voxel-to-world (RAS+ mm) affine of ``image`` and ``label`` in this
            canonical order; for 2D, the affine of the ``[X, Y, 1]`` single-slice volume.
    """

    image: np.ndarray
    label: np.ndarray
    lesions: list[dict]
    prompts: list[dict]
    affine: np.ndarray

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for prompt in self.prompts:
            kinds[prompt["kind"]] = kinds.get(prompt["kind"], 0) + 1
        return (f"SyntheticCase(image={tuple(self.image.shape)} {self.image.dtype}, "
                f"label={tuple(self.label.shape)}, spacing={SPACING}, orientation=RAS, "
                f"lesions={len(self.lesions)}, prompts={kinds})")


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
    """Boolean mask of an axis-aligned ellipsoid on the grid ``coords`` (all in voxel units)."""
    total = sum(((c - c0) / r) ** 2 for c, c0, r in zip(coords, center, radii, strict=True))
    return total <= 1.0


def _lesion_blob(rng: np.random.Generator, coords: tuple[np.ndarray, ...], center: np.ndarray,
                 radius: float, shape: str) -> np.ndarray:
    """Boolean mask of a round (ellipsoid) or irregular (lobulated) lesion on the grid ``coords``.

    ``radius`` is the mean in-plane radius in voxels; the z-radius is ``_Z_RATIO`` times it (3 mm slices),
    at least 1.4 so that a small lesion still shows on the slices next to its centre. An irregular lesion
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


def _place_lesion(rng: np.random.Generator, region: np.ndarray, radius: float,
                  lesion_slice: int | None) -> np.ndarray:
    """Pick a lesion centre (int voxel index ``[3]``) inside ``region`` with room for ``radius``.

    Candidates are voxels whose distance (in in-plane voxel units, z scaled by the slice spacing) to the
    region's border is at least ``radius``, relaxed to 85% of the deepest voxel when the region is too thin.
    ``lesion_slice`` restricts centres to one axial slice (the 2D variant).
    """
    depth = ndimage.distance_transform_edt(region, sampling=(1.0, 1.0, SPACING[2] / SPACING[0]))
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
             lesion_slice: int | None) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Draw one 3D phantom.

    Returns:
        image: float32 ``[3, X, Y, Z]`` (T2W, ADC, HBV), RAS-canonical.
        label: uint8 ``[X, Y, Z]``.
        lesions: attribute dicts (``center`` as 3 ints, ``voxels`` counted in 3D). A lesion's side is decided
            in the gland's own (slightly rotated) frame, by the sign of its left-right coordinate.
    """
    size_x, size_y, size_z = shape
    scale = min(size_x, size_y) / 48.0
    scale_z = size_z / 16.0
    coords = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    ii, jj, kk = coords

    # Gland: an ellipsoid near the centre, slightly anterior, with jittered centre, size and in-plane angle.
    center = np.array([(size_x - 1) / 2 + rng.uniform(-1.5, 1.5) * scale,
                       0.55 * (size_y - 1) + rng.uniform(-1.5, 1.5) * scale,
                       (size_z - 1) / 2 + rng.uniform(-0.5, 0.5) * scale_z])
    semi = np.array([16.0 * scale, 12.0 * scale, 5.0 * scale_z]) * rng.uniform(0.94, 1.06, size=3)
    angle = np.deg2rad(rng.uniform(-6.0, 6.0))
    # Gland frame: u along its left-right axis (grows with i, toward Right), v toward Anterior, w Superior.
    di, dj = ii - center[0], jj - center[1]
    u = np.cos(angle) * di + np.sin(angle) * dj
    v = -np.sin(angle) * di + np.cos(angle) * dj
    w = kk - center[2]
    frame = (u, v, w)
    gland = _ellipsoid(frame, (0.0, 0.0, 0.0), tuple(semi))
    # Transition zone: inner anterior-central ellipsoid; leaves >= ~7 voxels of PZ posteriorly/laterally.
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
        radius = _LESION_RADIUS[size] * scale * rng.uniform(0.9, 1.1)
        # The region excludes a 1-voxel band at the midline so a lesion never touches the other side.
        region = zones[zone] & (_SIDE_SIGN[side] * u >= 1.0)
        # Irregular lesions reach up to ~1.5 radii from their centre; ask for some of that room.
        reach = radius * (1.25 if lesion_shape == "irregular" else 1.0)
        lesion_center = _place_lesion(rng, region, reach, lesion_slice)
        mask = _lesion_blob(rng, coords, lesion_center.astype(np.float64), radius, lesion_shape) & region
        label_value = FIRST_LESION_LABEL + index
        label[mask] = label_value
        lesion_masks.append(mask)
        lesions.append({"label": label_value, "side": side, "zone": zone, "size": size,
                        "shape": lesion_shape, "center": [int(c) for c in lesion_center],
                        "voxels": int(mask.sum())})

    # Tissue intensities per channel (T2W, ADC, HBV), before blur, bias and noise.
    image = np.empty((3, *shape), dtype=np.float32)
    background = (0.62, 0.3, 0.1)  # periprostatic fat / soft tissue
    texture = _smooth_field(rng, shape, sigma=(3.0, 3.0, 1.0))
    for channel, value in enumerate(background):
        image[channel] = value * (1.0 + 0.12 * texture)
    # Obturator internus muscles, lateral to the gland: dark on T2W.
    for sign in (-1.0, 1.0):
        muscle = _ellipsoid(coords, (center[0] + sign * (semi[0] + 6.0 * scale), center[1], center[2]),
                            (3.5 * scale, 10.0 * scale, 3.0 * size_z))
        image[:, muscle] = np.array([0.3, 0.55, 0.15], dtype=np.float32)[:, None]
    # Rectum posterior to the gland: a dark wall around a near-black (gas) lumen.
    rectum_center = (center[0], center[1] - semi[1] - 5.5 * scale, center[2])
    rectum = _ellipsoid(coords, rectum_center, (7.0 * scale, 4.5 * scale, 3.0 * size_z))
    lumen = _ellipsoid(coords, rectum_center, (4.0 * scale, 2.2 * scale, 3.0 * size_z))
    image[:, rectum] = np.array([0.22, 0.45, 0.12], dtype=np.float32)[:, None]
    image[:, lumen] = np.array([0.05, 0.1, 0.03], dtype=np.float32)[:, None]
    # Gland zones: PZ bright on T2W, TZ intermediate and nodular (BPH-like texture on T2W only).
    zone_values = {"peripheral": np.array([0.95, 0.85, 0.2], dtype=np.float32),
                   "transition": np.array([0.58, 0.7, 0.25], dtype=np.float32)}
    image[:, peripheral] = zone_values["peripheral"][:, None]
    image[:, transition] = zone_values["transition"][:, None]
    nodules = _smooth_field(rng, shape, sigma=(1.5, 1.5, 0.7))
    image[0][transition] += 0.08 * nodules[transition]
    # Lesions: T2W subtly darker than their zone, ADC clearly dark, HBV clearly bright.
    for lesion, mask in zip(lesions, lesion_masks, strict=True):
        values = np.array([zone_values[lesion["zone"]][0] - rng.uniform(0.18, 0.3),
                           rng.uniform(0.28, 0.42), rng.uniform(0.75, 1.0)], dtype=np.float32)
        image[:, mask] = values[:, None]

    # Acquisition: light blur (partial volume), shared coil bias, Gaussian noise.
    bias = _bias_field(rng, shape)
    for channel in range(3):
        blurred = ndimage.gaussian_filter(image[channel], sigma=(0.7, 0.7, 0.35))
        noise = rng.normal(0.0, 0.03 * rng.uniform(0.8, 1.2), size=shape)
        image[channel] = blurred * bias + noise
    np.clip(image, 0.0, 1.5, out=image)
    return image, label, lesions


def _canonical_affine(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """RAS+ affine ``[4, 4]`` of the canonical array: spacing, an oblique in-plane tilt and an origin.

    The tilt is 2-6 degrees about the superior axis, so the axis codes stay R, A, S (closest canonical).
    """
    tilt = np.deg2rad(rng.uniform(2.0, 6.0) * rng.choice([-1.0, 1.0]))
    rotation = np.array([[np.cos(tilt), -np.sin(tilt), 0.0],
                         [np.sin(tilt), np.cos(tilt), 0.0],
                         [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(SPACING)
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
# Public API
# --------------------------------------------------------------------------------------------------------

def make_case(rng: np.random.Generator, spatial_dims: int = 3, shape: tuple[int, int, int] = (48, 48, 16),
              num_lesions: int | None = None) -> SyntheticCase:
    """Draw one synthetic bp-MRI case and its prompts; the same ``rng`` state gives the same case.

    Args:
        rng: the case's random generator; ``make_synthetic_dataset`` uses ``np.random.default_rng([seed, i])``
            for case i.
        spatial_dims: 3, or 2 for the central axial slice of the same kind of phantom, with every lesion
            centred on that slice (``k = Z // 2``).
        shape: ``(X, Y, Z)`` grid in voxels of ``SPACING`` mm, at least ``(32, 32, 8)``; the anatomy scales
            with it (lesion radii are about 2.5 and 4.5 voxels at the default 48 in-plane).
        num_lesions: 0 to 3; drawn uniformly when None.

    Returns:
        A :class:`SyntheticCase` in RAS-canonical order: image float32 ``[3, X, Y, Z]`` (``[3, X, Y]``),
        label uint8 ``[X, Y, Z]`` (``[X, Y]``), i toward patient Right (patient left = smaller i).

    Raises:
        MedTextSegError: ``rng`` is not a ``numpy.random.Generator``, or ``spatial_dims``, ``shape`` or
            ``num_lesions`` is out of range.

    Example:
        >>> case = make_case(np.random.default_rng(3), spatial_dims=2, num_lesions=1)
        >>> case.image.shape, case.label.shape, [p["kind"] for p in case.prompts][-3:]
        ((3, 48, 48), (48, 48), ['anatomy', 'anatomy', 'anatomy'])
    """
    if not isinstance(rng, np.random.Generator):
        raise MedTextSegError("make_case: rng must be a numpy.random.Generator, e.g. "
                              f"np.random.default_rng(seed), got {type(rng).__name__}")
    _check_spatial_dims("make_case", spatial_dims)
    shape = tuple(shape)
    if (len(shape) != 3 or not all(isinstance(n, int | np.integer) for n in shape)
            or any(n < m for n, m in zip(shape, MIN_SHAPE, strict=True))):
        raise MedTextSegError(f"make_case: shape must be 3 integers (X, Y, Z) of at least {MIN_SHAPE}, "
                              f"got {shape}")
    shape = tuple(int(n) for n in shape)
    if num_lesions is None:
        num_lesions = int(rng.integers(0, MAX_LESIONS + 1))
    elif isinstance(num_lesions, bool) or not isinstance(num_lesions, int | np.integer) \
            or not 0 <= num_lesions <= MAX_LESIONS:
        raise MedTextSegError(f"make_case: num_lesions must be an integer from 0 to {MAX_LESIONS} or None, "
                              f"got {num_lesions!r}")

    lesion_slice = shape[2] // 2 if spatial_dims == 2 else None
    image, label, lesions = _phantom(rng, shape, int(num_lesions), lesion_slice)
    affine = _canonical_affine(rng, shape)
    if spatial_dims == 2:
        image, label = image[:, :, :, lesion_slice].copy(), label[:, :, lesion_slice].copy()
        # Origin of the single-slice volume: the world position of voxel (0, 0, lesion_slice).
        affine[:3, 3] += affine[:3, 2] * lesion_slice
        for lesion in lesions:
            lesion["center"] = lesion["center"][:2]
            lesion["voxels"] = int((label == lesion["label"]).sum())
    prompts = _make_prompts(rng, lesions)
    return SyntheticCase(image=image, label=label, lesions=lesions, prompts=prompts, affine=affine)


def make_synthetic_dataset(out_dir: str | Path, num_cases: int = 150, spatial_dims: int = 3, seed: int = 0,
                           split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                           progress: bool = False) -> Path:
    """Write a synthetic benchmark in the medtextseg dataset format (``docs/dataset_format.md``).

    Writes ``dataset.json``, ``imagesTr/{case}_{0000,0001,0002}.nii.gz`` (T2W, ADC, HBV),
    ``labelsTr/{case}.nii.gz``, ``prompts.jsonl`` and ``splits.json`` into ``out_dir`` (created if needed),
    each file atomically; ``dataset.json`` is written last, so its presence marks a finished run. Case ``i``
    is ``synth_{i:03d}``, drawn by :func:`make_case` with ``np.random.default_rng([seed, i])`` and the default
    shape, so it does not depend on ``num_cases``. Stale ``synth_*`` image and label files of an earlier,
    larger run in ``out_dir`` are removed.

    NIfTI files store the RAS-canonical arrays flipped along i and j (LPS-like, as from DICOM) with the
    matching affine (spacing 1.2 x 1.2 x 3.0 mm, an oblique tilt, non-zero origin); reorienting to RAS
    restores :attr:`SyntheticCase.image` / ``label`` exactly. 2D datasets store ``X x Y x 1`` volumes.

    Args:
        out_dir: dataset folder.
        num_cases: number of cases, at least 1.
        spatial_dims: 3, or 2 (central slices; ``dataset.json`` gets ``"medtextseg": {"spatial_dims": 2}``).
        seed: non-negative integer.
        split_fractions: (train, val, test) fractions, non-negative, summing to 1; cases are shuffled by
            ``seed`` and counts rounded (test takes the remainder).
        progress: show a rich progress bar.

    Returns:
        ``Path(out_dir)``.

    Raises:
        MedTextSegError: an argument is out of range.
    """
    import nibabel as nib

    if isinstance(num_cases, bool) or not isinstance(num_cases, int | np.integer) or num_cases < 1:
        raise MedTextSegError(f"make_synthetic_dataset: num_cases must be an integer >= 1, got {num_cases!r}")
    _check_spatial_dims("make_synthetic_dataset", spatial_dims)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise MedTextSegError(f"make_synthetic_dataset: seed must be a non-negative integer, got {seed!r}")
    fractions = tuple(float(f) for f in split_fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise MedTextSegError("make_synthetic_dataset: split_fractions must be 3 non-negative numbers "
                              f"(train, val, test) summing to 1, got {tuple(split_fractions)}")

    out_dir = Path(out_dir)
    case_ids = [f"synth_{i:03d}" for i in range(int(num_cases))]
    _remove_stale_cases(out_dir, set(case_ids))
    indices = range(len(case_ids))
    if progress:
        from rich.progress import track

        indices = track(indices, description=f"Writing {len(case_ids)} synthetic cases")

    prompt_lines: list[str] = []
    for i in indices:
        case_id = case_ids[i]
        case = make_case(np.random.default_rng([seed, i]), spatial_dims=spatial_dims)
        stored_affine = _storage_affine(case.affine, case.label.shape[:2])
        for channel in range(len(CHANNEL_NAMES)):
            _save_nifti(nib, _to_storage(case.image[channel]), stored_affine, np.float32,
                        out_dir / "imagesTr" / f"{case_id}_{channel:04d}.nii.gz")
        _save_nifti(nib, _to_storage(case.label), stored_affine, np.uint8,
                    out_dir / "labelsTr" / f"{case_id}.nii.gz")
        for prompt in case.prompts:
            prompt_lines.append(json.dumps({"case": case_id, **prompt}))

    write_text_atomic(out_dir / "prompts.jsonl", "\n".join(prompt_lines) + "\n")
    splits = _splits(case_ids, fractions, seed)
    write_text_atomic(out_dir / "splits.json", json.dumps(splits, indent=2) + "\n")
    dataset = {
        "name": "SynthProstate",
        "description": f"Synthetic prostate bp-MRI with prompts (medtextseg.data.synthetic, seed={seed})",
        "channel_names": {str(c): name for c, name in enumerate(CHANNEL_NAMES)},
        "labels": dict(LABELS),
        "numTraining": len(case_ids),
        "file_ending": ".nii.gz",
        "medtextseg": {"spatial_dims": spatial_dims},
    }
    write_text_atomic(out_dir / "dataset.json", json.dumps(dataset, indent=2) + "\n")
    return out_dir


# --------------------------------------------------------------------------------------------------------
# Writing helpers
# --------------------------------------------------------------------------------------------------------

def _check_spatial_dims(where: str, spatial_dims: int) -> None:
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise MedTextSegError(f"{where}: spatial_dims must be 2 or 3, got {spatial_dims!r}")


def _to_storage(array: np.ndarray) -> np.ndarray:
    """RAS-canonical ``[X, Y, Z]`` / ``[X, Y]`` -> stored ``[X, Y, Z]`` / ``[X, Y, 1]``, flipped in i, j."""
    stored = array[::-1, ::-1]
    if stored.ndim == 2:
        stored = stored[:, :, None]
    return np.ascontiguousarray(stored)


def _storage_affine(affine: np.ndarray, in_plane: tuple[int, int]) -> np.ndarray:
    """Affine of the flipped storage: stored voxel (i', j', k) is canonical voxel (X-1-i', Y-1-j', k)."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = in_plane[0] - 1, in_plane[1] - 1
    return affine @ flip


def _save_nifti(nib, data: np.ndarray, affine: np.ndarray, dtype: type, path: Path) -> None:
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

"""A dataset's fingerprint: what its images and targets are like, measured once, in the patient's RAS axes.

The plan (``data/planning.py``) turns it into a spacing, a patch and strides, as nnU-Net's
``experiment_planning`` does from its ``dataset_fingerprint.json``; here the targets are what prompts name,
so the fingerprint also measures every prompt's target and the region all of a case's targets lie in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from nibabel.orientations import io_orientation

from medtextseg.data.io import read_array, read_geometry
from medtextseg.data.layout import CaseRecord, DatasetLayout
from medtextseg.data.prompts import is_lateralised
from medtextseg.utils.progress import progress_bar

INTENSITY_SAMPLES = 2000  # foreground voxels per case and channel for the intensity statistics (nnU-Net: 10k)


@dataclass
class Fingerprint:
    """Measurements of the cases a model trains on; every list has one row per case, axes in RAS order.

    Attributes:
        spatial_dims: 2 or 3; spacings and shapes have that many values (2D: the slice's two axes).
        channel_names: one per image channel, from ``dataset.json``.
        spacings: per case, the voxel size along the patient's R, A, S axes (mm).
        shapes: per case, the grid size along R, A, S (voxels).
        region_extents: per case, the size (mm) of the box around all of its targets together (all labels
            and mask files): the region in which its prompts are told apart. Cases without targets are left out.
        target_extents: per non-empty prompt target, its box size (mm); the smallest targets bound how coarse
            the plan may go.
        target_volumes_ml: per non-empty prompt target, its volume.
        kinds: prompt kind -> number of prompt lines.
        lateralised_prompts: prompt lines that name a side ("the left lesion", "L PZ"; not "the left atrium",
            a structure's name): side words are told apart only in a view that shows both sides.
        intensity: per channel, ``mean``, ``std``, ``p00_5``, ``p99_5`` of foreground voxels (all voxels where a
            case has no target), pooled over cases.
    """

    spatial_dims: int
    channel_names: list[str]
    spacings: list[list[float]] = field(default_factory=list)
    shapes: list[list[int]] = field(default_factory=list)
    region_extents: list[list[float]] = field(default_factory=list)
    target_extents: list[list[float]] = field(default_factory=list)
    target_volumes_ml: list[float] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    lateralised_prompts: int = 0
    intensity: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ras_axes(affine: np.ndarray, spatial_dims: int) -> list[int]:
    """Voxel axis along each of the patient's R, A, S axes (the first ``spatial_dims`` of them)."""
    world_of_voxel = io_orientation(affine)[:, 0].astype(int)  # voxel axis i -> world axis
    voxel_of_world = [int(np.flatnonzero(world_of_voxel == w)[0]) for w in range(3)]
    # 2D files are axial slices (checked: one voxel along S), whatever their voxel order: their R and A axes
    return voxel_of_world[:spatial_dims]


def _box_extent(mask: np.ndarray, spacing: np.ndarray, axes: list[int]) -> list[float]:
    """Size (mm) along ``axes`` of the bounding box of a non-empty boolean ``mask`` (file voxel order)."""
    where = np.nonzero(mask)
    return [float((where[a].max() - where[a].min() + 1) * spacing[a]) for a in axes]


def _case_measurements(case: CaseRecord, spatial_dims: int, rng: np.random.Generator,
                       fingerprint: Fingerprint, samples: list[list[np.ndarray]]) -> None:
    geometry = read_geometry(case.image_paths[0])
    axes = _ras_axes(geometry.affine, spatial_dims)
    spacing = np.linalg.norm(geometry.affine[:3, :3], axis=0)
    fingerprint.spacings.append([float(spacing[a]) for a in axes])
    fingerprint.shapes.append([int(geometry.shape[a]) for a in axes])
    label = read_array(case.label_path) if case.label_path is not None else None
    masks = {p.target: read_array(p.target) > 0 for p in case.prompts if not isinstance(p.target, tuple)}
    voxel_ml = float(np.prod(spacing[: len(geometry.shape)])) / 1000.0
    region = np.zeros(geometry.shape, dtype=bool)
    for prompt in case.prompts:
        if isinstance(prompt.target, tuple):
            if not prompt.target or label is None:
                continue
            target = np.isin(label, prompt.target)
        else:
            target = masks[prompt.target]
        if target.any():
            fingerprint.target_extents.append(_box_extent(target, spacing, axes))
            fingerprint.target_volumes_ml.append(float(target.sum()) * voxel_ml)
            region |= target
    if label is not None:
        region |= label > 0
    if region.any():
        fingerprint.region_extents.append(_box_extent(region, spacing, axes))
    where = region if region.any() else np.ones(geometry.shape, dtype=bool)
    for channel, path in enumerate(case.image_paths):
        values = np.asarray(read_array(path), dtype=np.float64)[where]
        take = rng.choice(values.size, size=min(INTENSITY_SAMPLES, values.size), replace=False)
        samples[channel].append(values[take])


def fingerprint_dataset(layout: DatasetLayout, case_ids: list[str], progress: bool = False,
                        spatial_dims: int | None = None) -> Fingerprint:
    """Measure ``case_ids`` of ``layout`` (headers, label maps, a sample of image voxels per case).

    ``spatial_dims``: the axes measured, R, A (and S); default the dataset's. 2 on a 3D dataset measures the
    axial plane a 2D model segments it in (boxes are those of the whole volume's targets, seen along S).

    Deterministic: the voxel samples are drawn with a fixed seed.
    """
    dims = layout.spatial_dims if spatial_dims is None else spatial_dims
    fingerprint = Fingerprint(dims, list(layout.channel_names))
    rng = np.random.default_rng(0)
    samples: list[list[np.ndarray]] = [[] for _ in layout.channel_names]
    kinds: Counter[str] = Counter()
    with progress_bar(case_ids, "fingerprinting the dataset", progress, transient=True) as iterator:
        for case_id in iterator:
            case = layout.cases[case_id]
            kinds.update(p.kind for p in case.prompts)
            fingerprint.lateralised_prompts += sum(is_lateralised(p.prompt) for p in case.prompts)
            _case_measurements(case, dims, rng, fingerprint, samples)
    fingerprint.kinds = dict(sorted(kinds.items()))
    for channel_samples in samples:
        values = np.concatenate(channel_samples) if channel_samples else np.zeros(1)
        fingerprint.intensity.append({"mean": float(values.mean()), "std": float(values.std()),
                                      "p00_5": float(np.percentile(values, 0.5)),
                                      "p99_5": float(np.percentile(values, 99.5))})
    return fingerprint

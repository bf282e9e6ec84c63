"""From a dataset's fingerprint to a plan: the spacing, patch and strides a model trains and predicts with.

nnU-Net's rules (``experiment_planning``) are the reference, written for what prompts need:

* **Spacing.** The median spacing; on anisotropic data (one axis over 3x coarser, with few voxels along it)
  that axis takes its 10th percentile, as nnU-Net does.
* **The region prompts are told apart in.** A prompt such as "the lesion in the left peripheral zone" is
  only answerable when the patch shows the gland around the lesion. The fingerprint measures, per case,
  the box around all of its targets; the plan wants the median box, with a margin, inside the patch.
  When that needs more voxels than the preset's patch budget (its ``data.patch_size``, chosen for the
  machine), the finest axes are coarsened, but never so far that the smallest targets (10th percentile)
  drop below ``MIN_TARGET_VOXELS`` across, nor beyond twice the median spacing.
* **Both sides where prompts name a side.** Training crops are centred on a prompt's target, so a crop just the
  region's size, centred on a lesion at the region's left edge, does not show the right half: "the left
  lesion" is then learned from views without the right one (measured: on 1 mm isotropic data side prompts
  picked the other lesion 19 of 53 times with such a patch, 3 of 53 with the whole width). When at least
  ``LATERALISED_SHARE`` of the prompts name a side, the right-left view is twice the region, up to the whole
  image width, and the spacing and patch are planned for that view.
* **Patch.** The median image at the planned spacing, shrunk to the budget; the axis that exceeds the view
  most is shrunk first, so the view stays whole while the budget allows.
* **Strides.** An axis is halved at a stage while its spacing is within twice the finest and at least
  ``MIN_FEATURE_MAP`` voxels remain (nnU-Net's rule); the patch is then rounded to what the strides divide.
* **Normalisation.** A channel named CT (``"CT"``, ``"ct_venous"``: the word ``ct`` in its name) is clipped to
  the foreground's 0.5-99.5 percentiles and scaled by the foreground's mean and std over the whole dataset, so
  Hounsfield units keep one meaning across scans; any other channel is z-scored per image (nnU-Net's
  ``CTNormalization`` and ``ZScoreNormalization``).
* **Prompt kinds.** Weights for the kinds the data has: a kind the preset names keeps its weight, any other
  gets the mean of those (a preset's weights for kinds a dataset lacks would otherwise starve its own).

``Plan.overrides()`` gives the config values; ``--set`` still wins over any of them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medtextseg.config import Config, ModelConfig, apply_override, read_preset
from medtextseg.data.fingerprint import Fingerprint
from medtextseg.utils.atomic import write_text_atomic
from medtextseg.utils.errors import MedTextSegError
from medtextseg.utils.json_files import read_json

if TYPE_CHECKING:
    from medtextseg.data.layout import DatasetLayout

ANISOTROPY = 3.0  # an axis this many times coarser than the finest is "anisotropic" (nnU-Net)
REGION_MARGIN = 0.2  # the patch should show the target region plus this share of its size around it
MIN_TARGET_VOXELS = 4.0  # coarsening stops before the smallest targets get fewer voxels across
MAX_COARSENING = 2.0  # nor may an axis get more than twice as coarse as the median spacing
MIN_FEATURE_MAP = 4  # voxels an axis keeps at the bottleneck
BUDGET_SLACK = 1.05  # a patch may exceed the budget by this much to stay divisible by its strides
LATERALISED_SHARE = 0.05  # prompts naming a side, of all prompt lines, from which the view spans both sides
PLAN_VERSION = 1
PLAN_FILE = "plans.json"  # in a run folder, and where `medtextseg plan` writes by default


@dataclass
class Plan:
    """What a model trains and predicts with, derived from a fingerprint (axes in RAS order).

    Attributes:
        spacing: voxel size (mm) every image is resampled to, in training and prediction.
        patch_size: training patch and sliding-window size (voxels at ``spacing``).
        strides: per stage (first: the stem), the downsampling factor of each axis.
        in_channels: image channels of the dataset.
        kind_weights: sampling weight of each prompt kind the data has (sums to 1).
        median_spacing, median_shape, region: the fingerprint's medians behind the decisions (mm for region).
        notes: why each value is what it is, in words.
    """

    spacing: list[float]
    patch_size: list[int]
    strides: list[list[int]]
    in_channels: int
    kind_weights: dict[str, float]
    median_spacing: list[float] = field(default_factory=list)
    median_shape: list[float] = field(default_factory=list)
    region: list[float] = field(default_factory=list)
    cases: int = 0
    notes: list[str] = field(default_factory=list)
    version: int = PLAN_VERSION
    normalization: list[dict[str, Any]] | None = None

    def overrides(self) -> dict[str, Any]:
        """The config fields the plan sets, by dotted name."""
        return {"data.spacing": self.spacing, "data.patch_size": self.patch_size, "model.strides": self.strides,
                "model.in_channels": self.in_channels, "data.kind_weights": self.kind_weights,
                "data.normalization": self.normalization}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "plan") -> Plan:
        try:
            return cls(**data)
        except TypeError as error:
            raise MedTextSegError(f"{where}: not a medtextseg plan ({error})") from None

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_dict(read_json(Path(path)), str(path))


def _fmt(values: list[float] | np.ndarray, digits: int = 3) -> str:
    return " x ".join(f"{v:.{digits}g}" for v in values)


def planned_spacing(fingerprint: Fingerprint) -> np.ndarray:
    """Median spacing; an anisotropic axis with few voxels takes its 10th percentile (nnU-Net's rule)."""
    spacings, shapes = np.array(fingerprint.spacings), np.array(fingerprint.shapes, dtype=float)
    spacing = np.median(spacings, axis=0)
    coarse = int(np.argmax(spacing))
    others = [a for a in range(len(spacing)) if a != coarse]
    if others and spacing[coarse] > ANISOTROPY * spacing[others].min() \
            and np.median(shapes[:, coarse]) * ANISOTROPY < np.median(shapes[:, others]).max():
        spacing[coarse] = max(np.percentile(spacings[:, coarse], 10), spacing[others].max())
    return spacing


def planned_view(fingerprint: Fingerprint, region: np.ndarray, image_mm: np.ndarray) -> np.ndarray:
    """What a patch should show (mm, RAS axes): the target ``region``; from right to left, when the prompts
    name sides, twice the region up to the image's width, so that a crop centred on a target at one edge of
    the region still reaches its other edge."""
    view = region.copy()
    prompts = sum(fingerprint.kinds.values())
    if prompts and fingerprint.lateralised_prompts >= LATERALISED_SHARE * prompts:
        view[0] = min(2 * region[0], image_mm[0])
    return view


def _coarsen_to_fit(spacing: np.ndarray, region: np.ndarray, budget: int, coarsest: np.ndarray) -> np.ndarray:
    """Coarsen the finest axes (5% at a time) until ``region`` (mm) fits ``budget`` voxels, or none may."""
    spacing = spacing.copy()
    while np.prod(np.ceil(region / spacing)) > budget * BUDGET_SLACK:
        free = [a for a in range(len(spacing)) if spacing[a] < coarsest[a] - 1e-9]
        if not free:
            break
        finest = min(spacing[a] for a in free)
        for a in free:
            if spacing[a] <= finest * 1.01:  # equal axes move together, keeping in-plane voxels square
                spacing[a] = min(spacing[a] * 1.05, coarsest[a])
    return spacing


def planned_strides(spacing: np.ndarray, patch: np.ndarray, stages: int) -> list[list[int]]:
    """Per stage, halve each axis whose spacing is within 2x the finest and keeps ``MIN_FEATURE_MAP`` voxels."""
    strides = [[1] * len(spacing)]
    current_spacing, current_size = spacing.astype(float).copy(), patch.astype(float).copy()
    for _ in range(stages - 1):
        stride = [2 if current_spacing[a] <= 2 * current_spacing.min() and current_size[a] >= 2 * MIN_FEATURE_MAP
                  else 1 for a in range(len(spacing))]
        strides.append(stride)
        current_spacing *= stride
        current_size /= stride
    return strides


def _fit_patch(shape: np.ndarray, need: np.ndarray, budget: int) -> np.ndarray:
    """Shrink ``shape`` (voxels) to ``budget``: first the axis most beyond ``need``, then the largest."""
    patch = shape.copy()
    while np.prod(patch) > budget * BUDGET_SLACK:
        excess = patch / np.maximum(need, 1)
        axis = int(np.argmax(excess)) if excess.max() > 1 else int(np.argmax(patch))
        patch[axis] -= 1
    return patch


def _divisible(patch: np.ndarray, strides: list[list[int]], budget: int, need: np.ndarray) -> np.ndarray:
    """Round each axis to a multiple of its total stride, then trim whole multiples back under the budget."""
    divisor = np.prod(np.array(strides), axis=0)
    patch = np.maximum(np.round(patch / divisor), 1) * divisor
    while np.prod(patch) > budget * BUDGET_SLACK and (patch > divisor).any():
        excess = np.where(patch > divisor, patch / np.maximum(need, 1), -np.inf)
        axis = int(np.argmax(excess))
        patch[axis] -= divisor[axis]
    return patch.astype(int)


def _fit_view(view: np.ndarray, spacing: np.ndarray, coarsest: np.ndarray, image_mm: np.ndarray, budget: int,
              stages: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spacing (mm), patch (voxels, divisible by its strides) and the view in voxels for ``view`` (mm)."""
    spacing = _coarsen_to_fit(spacing, view, budget, coarsest)
    need = np.ceil(view / spacing)
    shape = np.maximum(np.round(image_mm / spacing), 1)
    patch = _fit_patch(shape, need, budget)
    patch = _divisible(patch, planned_strides(spacing, patch, stages), budget, need)
    return spacing, patch, need


def planned_kind_weights(kinds: dict[str, int], preset_weights: dict[str, float]) -> dict[str, float]:
    """The preset's weight for the kinds it names, the mean of those for other kinds; sums to 1."""
    present = [k for k in kinds if kinds[k] > 0]
    named = [preset_weights[k] for k in present if k in preset_weights]
    fallback = float(np.mean(named)) if named else 1.0
    weights = {k: float(preset_weights.get(k, fallback)) for k in present}
    total = sum(weights.values())
    if total <= 0:
        return {k: 1.0 / len(present) for k in present}
    return {k: round(w / total, 6) for k, w in weights.items()}


def is_ct_channel(name: str) -> bool:
    """Whether a channel name says CT: the word ``ct`` in it, any case (``"CT"``, ``"ct_venous"``, ``"CT (HU)"``).

    >>> [is_ct_channel(n) for n in ("CT", "ct_venous", "T2W", "DCE_contrast")]
    [True, True, False, False]
    """
    return re.search(r"(?<![a-z])ct(?![a-z])", name.lower()) is not None


def planned_normalization(fingerprint: Fingerprint) -> list[dict[str, Any]] | None:
    """One rule per channel (``config.ChannelNormalization``): ``ct`` for CT channels, with the foreground's
    0.5-99.5 percentiles as clip and its mean and std; ``zscore`` for the others. None when no channel is CT."""
    if not any(is_ct_channel(name) for name in fingerprint.channel_names):
        return None
    rules = []
    for name, stats in zip(fingerprint.channel_names, fingerprint.intensity, strict=True):
        if is_ct_channel(name):
            rules.append({"scheme": "ct", "clip": [round(stats["p00_5"], 4), round(stats["p99_5"], 4)],
                          "mean": round(stats["mean"], 4), "std": round(max(stats["std"], 1e-6), 4)})
        else:
            rules.append({"scheme": "zscore"})
    return rules


def make_plan(fingerprint: Fingerprint, patch_budget: int, stages: int,
              preset_kind_weights: dict[str, float]) -> Plan:
    """Plan spacing, patch, strides and kind weights for a dataset (see the module docstring).

    Args:
        fingerprint: the measured training cases.
        patch_budget: voxels one patch may hold (the preset's ``data.patch_size`` product: what the machine
            trains at the preset's speed).
        stages: resolution stages of the network (``len(model.channels)``).
        preset_kind_weights: the preset's ``data.kind_weights``.

    Raises:
        MedTextSegError: the fingerprint has no cases.
    """
    if not fingerprint.spacings:
        raise MedTextSegError("cannot plan: the dataset has no training cases")
    notes = []
    median_spacing = np.median(np.array(fingerprint.spacings), axis=0)
    spacing = planned_spacing(fingerprint)
    if not np.allclose(spacing, median_spacing):
        notes.append(f"anisotropic: the coarse axis takes its 10th-percentile spacing ({_fmt(spacing)} mm)")
    image_mm = np.median(np.array(fingerprint.shapes) * np.array(fingerprint.spacings), axis=0)
    region = (np.median(np.array(fingerprint.region_extents), axis=0) * (1 + REGION_MARGIN)
              if fingerprint.region_extents else image_mm)
    region = np.minimum(region, image_mm)
    coarsest = spacing * MAX_COARSENING
    if fingerprint.target_extents:
        smallest = np.percentile(np.array(fingerprint.target_extents), 10, axis=0)
        coarsest = np.maximum(spacing, np.minimum(coarsest, smallest / MIN_TARGET_VOXELS))
    view = planned_view(fingerprint, region, image_mm)
    fitted, patch, need = _fit_view(view, spacing, coarsest, image_mm, patch_budget, stages)
    region_fitted, region_patch, _ = (_fit_view(region, spacing, coarsest, image_mm, patch_budget, stages)
                                      if view[0] > region[0] else (fitted, patch, need))  # what sides changed
    if not (np.allclose(fitted, region_fitted) and np.array_equal(patch, region_patch)):
        notes.append(f"{fingerprint.lateralised_prompts} of {sum(fingerprint.kinds.values())} prompts name a side, "
                     f"so the view spans {view[0]:.3g} mm from right to left (the target region's {region[0]:.3g} "
                     "mm, twice at most, up to the image's width) and a crop centred on one side shows the "
                     f"other: {_fmt(fitted)} mm, patch {_fmt(patch, 4)} (the region alone: {_fmt(region_fitted)} "
                     f"mm, {_fmt(region_patch, 4)})")
    if not np.allclose(fitted, spacing):
        sides = ", both sides from right to left" if view[0] > region[0] else ""
        notes.append(f"coarsened from {_fmt(spacing)} to {_fmt(fitted)} mm so that the view "
                     f"({_fmt(view)} mm: the target region with margin{sides}) fits the patch budget of "
                     f"{patch_budget} voxels")
    spacing = fitted
    strides = planned_strides(spacing, patch.astype(float), stages)
    if view[0] > region[0] and patch[0] < 0.9 * need[0]:  # the budget could not give both sides
        notes.append(f"the patch spans {int(patch[0])} of the view's {int(need[0])} voxels from right to left: a "
                     "crop centred on one side may not show the other, and side words ('the left lesion') are then "
                     "learned poorly (README, the iso1mm variant); a wider data.patch_size helps if the budget "
                     "allows")
    if np.any(patch < 0.9 * need):  # 10% for the rounding to what the strides divide
        notes.append(f"the view ({_fmt(need, 4)} voxels) is larger than the patch "
                     f"({_fmt(patch, 4)}): a patch shows part of it (raise the budget with --set data.patch_size)")
    kind_weights = planned_kind_weights(fingerprint.kinds, preset_kind_weights)
    return Plan(spacing=[round(float(s), 4) for s in spacing], patch_size=[int(p) for p in patch],
                strides=strides, in_channels=len(fingerprint.channel_names), kind_weights=kind_weights,
                median_spacing=[round(float(s), 4) for s in median_spacing],
                median_shape=[round(float(s), 1) for s in np.median(np.array(fingerprint.shapes), axis=0)],
                region=[round(float(r), 1) for r in region], cases=len(fingerprint.spacings), notes=notes,
                normalization=planned_normalization(fingerprint))


def describe(plan: Plan) -> str:
    """The plan in a few lines, as ``medtextseg plan`` and ``train`` print it."""
    lines = [f"plan from {plan.cases} training cases (median spacing {_fmt(plan.median_spacing)} mm, "
             f"median shape {_fmt(plan.median_shape, 4)} voxels, target region {_fmt(plan.region)} mm)",
             f"  data.spacing     {_fmt(plan.spacing)} mm",
             f"  data.patch_size  {_fmt(plan.patch_size, 4)} voxels ({math.prod(plan.patch_size)})",
             f"  model.strides    {plan.strides}",
             f"  model.in_channels {plan.in_channels}",
             f"  data.kind_weights {plan.kind_weights}"]
    if plan.normalization:
        schemes = ", ".join(r["scheme"] if r["scheme"] == "zscore" else
                            f"ct (clip [{r['clip'][0]:g}, {r['clip'][1]:g}], mean {r['mean']:g}, std {r['std']:g})"
                            for r in plan.normalization)
        lines.append(f"  data.normalization {schemes}")
    lines += [f"  note: {note}" for note in plan.notes]
    return "\n".join(lines)



def _unplanned_config(preset: str | Path, overrides: list[str]) -> Config:
    """The preset + ``overrides`` the plan starts from. Strides are the plan's to set: unless ``--set`` gives
    them, they are validated as a neutral placeholder, so that ``--set model.channels=[8,16,32]`` alone is
    a valid request (three planned stages) rather than a stage-count mismatch with the preset's strides."""
    raw = read_preset(preset)
    for override in overrides:
        apply_override(raw, override)
    if not any(o.split("=", 1)[0].strip() == "model.strides" for o in overrides):
        model = raw.setdefault("model", {})
        fields = ModelConfig.model_fields
        channels = model.get("channels", fields["channels"].default)
        dims = model.get("spatial_dims", fields["spatial_dims"].default)
        if isinstance(channels, list) and dims in (2, 3):  # anything else fails validation with its own message
            model["strides"] = [[1] * dims] * len(channels)
    return Config.from_dict(raw)


def planned_config(preset: str | Path, overrides: list[str], plan_file: str | Path | None = None,
                   progress: bool = False) -> tuple[Config, Plan | None]:
    """The run config of ``preset`` + the dataset's plan + ``overrides`` (which win), and the plan.

    The preset (after ``overrides``) gives the patch budget, the number of stages and the kind weights the
    plan starts from; ``plan_file`` replays a saved plan instead of measuring the dataset. A config with
    ``data.plan`` false (the co-training presets: their annotated slices keep the dataset's grid) or without
    ``data.root`` is returned as the preset and ``overrides`` give it, with no plan.

    Raises:
        MedTextSegError: the preset's dimensionality is not the dataset's, or any config error.
    """
    from medtextseg.data.fingerprint import fingerprint_dataset
    from medtextseg.data.layout import load_dataset, verify_dataset

    base = _unplanned_config(preset, overrides)
    if plan_file is not None and not base.data.plan:
        raise MedTextSegError(f"{plan_file}: a plan file is replayed only with data.plan true; here it is false "
                              "(--no-plan, or a co-training preset)")
    if not base.data.plan or base.data.root is None:  # the preset's own strides, not the placeholder
        return Config.load(preset, overrides), None
    if plan_file is not None:
        plan = Plan.load(plan_file)
    else:
        layout = load_dataset(base.data.root)
        check_config_fits_dataset(base, layout, channels=False)  # the plan sets the channels
        # the whole dataset first (every split's cases): a bad file is named before any plan is printed
        verify_dataset(layout, layout.cases_in_splits(), progress)
        case_ids = layout.splits.get("train") or list(layout.cases)
        plan = make_plan(fingerprint_dataset(layout, case_ids, progress, base.model.spatial_dims),
                         math.prod(base.data.patch_size), len(base.model.channels), base.data.kind_weights)
    planned = plan.overrides()
    # a 2.5D model reads 2k+1 slices of every image channel: the network's input channels follow
    planned["model.in_channels"] = plan.in_channels * (2 * base.data.slice_context + 1)
    if base.data.slice_context and plan_file is None:
        plan.notes.append(f"data.slice_context={base.data.slice_context}: the model reads "
                          f"{2 * base.data.slice_context + 1} slices of each channel, model.in_channels "
                          f"{planned['model.in_channels']}")
    config = Config.load(preset, overrides, planned)
    if plan_file is None:  # --set may have changed what the plan fitted to the dataset: say so before training
        check_config_fits_dataset(config, layout)
    return config, plan


def check_config_fits_dataset(config: Config, layout: DatasetLayout, channels: bool = True) -> None:
    """Refuse a model the dataset cannot train: a 3D model on 2D slices, a 2.5D one (``data.slice_context``) on
    single slices, or (with ``channels``) another number of input channels than ``dataset.json`` declares (x the
    2k+1 slices of a 2.5D model): the first convolution would fail on the first batch. A 2D model on a 3D
    dataset trains on its axial slices (``data.slices``).

    Raises:
        MedTextSegError: naming the config field, its value and the dataset's.
    """
    if layout.spatial_dims < config.model.spatial_dims:
        raise MedTextSegError(f"config field 'model.spatial_dims' is {config.model.spatial_dims} but the "
                              f"dataset {layout.root} is {layout.spatial_dims}D; use a "
                              f"{layout.spatial_dims}D preset (e.g. default_2d)")
    context = config.data.slice_context
    if context and layout.spatial_dims == 2:
        raise MedTextSegError(f"config field 'data.slice_context' is {context} but the dataset {layout.root} is 2D "
                              "(single slices, no neighbours to read); use 0, or a 3D dataset")
    stack = 2 * context + 1
    if channels and len(layout.channel_names) * stack != config.model.in_channels:
        slices = f" x {stack} slices (data.slice_context={context}) = {len(layout.channel_names) * stack}" \
            if context else ""
        raise MedTextSegError(f"config field 'model.in_channels' is {config.model.in_channels} but "
                              f"{layout.root / 'dataset.json'} declares {len(layout.channel_names)} "
                              f"channels ({', '.join(layout.channel_names)}){slices}")

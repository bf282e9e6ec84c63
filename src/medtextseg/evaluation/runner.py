"""``evaluate``: predict every prompt of a split with a trained model and score it on the files' grids."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medtextseg.data.dimensions import metric_grid
from medtextseg.data.io import read_array, read_geometry
from medtextseg.data.layout import CaseRecord, PromptRecord, load_dataset, verify_dataset
from medtextseg.evaluation.lesion_detection import lesion_detection_metrics
from medtextseg.evaluation.metrics import OVERALL_GROUP, average_precision, segmentation_metrics, summarize
from medtextseg.evaluation.model_cost import model_cost
from medtextseg.evaluation.report import save_loss_curve, save_overlay, write_records, write_summary, write_table
from medtextseg.evaluation.uncertainty import UncertaintyAccumulator, save_reliability_diagram
from medtextseg.inference.postprocessing import remove_small_components
from medtextseg.inference.predictor import Predictor
from medtextseg.inference.sliding import binary_entropy
from medtextseg.utils.atomic import write_text_atomic
from medtextseg.utils.progress import progress_bar


def prompt_target(case: CaseRecord, prompt: PromptRecord, label: np.ndarray | None) -> np.ndarray:
    """The target of a prompt on the case's file grid, bool [*file_shape]."""
    if isinstance(prompt.target, Path):
        return read_array(prompt.target) > 0
    if not prompt.target:
        return np.zeros(read_geometry(case.image_paths[0]).shape, dtype=bool)
    return np.isin(label, prompt.target)


def result_group(prompt: PromptRecord) -> str:
    """The reporting group: the prompt kind, with referring prompts in multi-lesion cases apart."""
    if prompt.kind == "single" and int(prompt.meta.get("n_lesions", 0)) >= 2:
        return "single_2plus"
    return prompt.kind


def to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorient a file-order array [*spatial] to RAS-canonical voxel order (for display only)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(array, ornt)


def ras_view(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``to_ras`` for display: a 2D slice (one voxel along S, last once oriented) as a 2D array."""
    oriented = to_ras(np.asarray(array), affine)
    return oriented[..., 0] if oriented.ndim == 3 and oriented.shape[-1] == 1 else oriented


def evaluate_run(run: str | Path, data_root: str | Path, out_dir: str | Path, split: str = "test",
                 save_masks: bool = True, overlays_per_group: int = 2, overlay_channel: int = 0,
                 nsd_tolerance_mm: float = 1.0, progress: bool = True,
                 component_sweep: Sequence[int] = (), refiner: bool | None = None,
                 mirror_axes: list[int] | str | None = None) -> list[dict]:
    """Evaluate a run on a dataset split; write per-prompt metrics, a summary per group, overlays, the
    calibration and uncertainty figures (``uncertainty.json``, ``reliability.png``) and, when the split has
    prompts of kind ``all`` (every lesion), PI-CAI lesion detection metrics from their probability maps
    (``lesion_detection.json``: case AUROC, lesion AP, PI-CAI score via ``picai_eval``). With ``component_sweep``
    (minimum sizes m in voxels), every prompt is also scored with its mask post-processed to the largest connected
    component plus those of at least m voxels (``component_sweep.json``/``.csv``: one row per m and group).
    ``refiner`` switches a refiner model's refiner on or off and ``mirror_axes`` sets the mirror test-time
    augmentation (None: as the run's config says).

    Returns the summary rows (one per prompt kind, plus ``single_2plus`` and ``all``); each also holds ``ece``,
    ``uncertainty_error_auroc``, ``uncertainty_kind`` and ``entropy_error_auroc`` (the same AUROC for the entropy
    of the probability, the model's own uncertainty when it has no other; see
    :mod:`medtextseg.evaluation.uncertainty`).
    """
    out_dir = Path(out_dir)
    layout = load_dataset(data_root)
    cases = layout.split(split)
    verify_dataset(layout, [c.case for c in cases], progress=progress)
    predictor = Predictor(run, refiner=refiner, mirror_axes=mirror_axes)
    records: list[dict] = []
    overlay_count: dict[str, int] = defaultdict(int)
    threshold = predictor.config.inference.threshold
    calibration: dict[str, UncertaintyAccumulator] = defaultdict(lambda: UncertaintyAccumulator(threshold))
    # an evidential model's probabilities also have an entropy: how well it finds errors, for comparison
    entropy_ranking: dict[str, UncertaintyAccumulator] = defaultdict(lambda: UncertaintyAccumulator(threshold))
    uncertainty_kind = "entropy"
    lesion_maps: list[tuple[np.ndarray, np.ndarray]] = []  # "all lesions" prompts: (probability, target)
    sweep_records: list[dict] = []
    with progress_bar(cases, f"evaluating {split}", progress) as iterator:
        for case in iterator:
            if not case.prompts:
                continue
            geometry = read_geometry(case.image_paths[0])
            label = read_array(case.label_path) if case.label_path else None
            results = predictor.predict(case.image_paths, [p.prompt for p in case.prompts])
            spatial, spacing = metric_grid(geometry, layout.spatial_dims)
            index = []
            for number, (prompt, result) in enumerate(zip(case.prompts, results, strict=True)):
                target = prompt_target(case, prompt, label)
                metrics = segmentation_metrics(result.mask.reshape(spatial) > 0, target.reshape(spatial), spacing,
                                               nsd_tolerance_mm)
                metrics["average_precision"] = average_precision(result.probability, target,
                                                                 predictor.config.inference.threshold)
                group = result_group(prompt)
                uncertainty_kind = result.uncertainty_kind
                entropy = (binary_entropy(torch.from_numpy(result.probability)).numpy()
                           if uncertainty_kind != "entropy" else None)
                for name in (group, OVERALL_GROUP):
                    calibration[name].add(result.probability, target, result.uncertainty)
                    if entropy is not None:
                        entropy_ranking[name].add(result.probability, target, entropy)
                if prompt.kind == "all":
                    lesion_maps.append((result.probability.reshape(spatial), target.reshape(spatial)))
                for min_voxels in component_sweep:
                    swept = remove_small_components(result.probability.reshape(spatial) > threshold, min_voxels,
                                                    keep_largest=True)
                    sweep_records.append({"case": case.case, "prompt": prompt.prompt, "group": group,
                                          "min_voxels": min_voxels, **segmentation_metrics(
                                              swept, target.reshape(spatial), spacing, nsd_tolerance_mm)})
                record = {"case": case.case, "prompt": prompt.prompt, "kind": prompt.kind, "group": group,
                          "n_lesions": prompt.meta.get("n_lesions"), "class": prompt.class_name, **metrics}
                if isinstance(prompt.meta.get("wording"), str):  # a held-out phrasing set ("seen" / "unseen", ...)
                    record |= {"wording": prompt.meta["wording"], "group_wording": f"{group}/{prompt.meta['wording']}"}
                records.append(record)
                if save_masks:
                    mask_path = out_dir / "masks" / case.case / f"prompt_{number:02d}.nii.gz"
                    result.save(mask_path)
                    index.append({"prompt": prompt.prompt, "kind": prompt.kind, "mask": mask_path.name})
                if overlay_count[group] < overlays_per_group and (target.any() or group == "absent"):
                    overlay_count[group] += 1
                    image = read_array(case.image_paths[min(overlay_channel, len(case.image_paths) - 1)])
                    save_overlay(ras_view(image, geometry.affine), ras_view(target, geometry.affine),
                                 ras_view(result.mask, geometry.affine),
                                 out_dir / "overlays" / f"{group}_{overlay_count[group]}_{case.case}.png",
                                 title=f"{case.case}: {prompt.prompt}  (Dice {metrics['dice']:.2f})",
                                 probability=ras_view(result.probability, geometry.affine),
                                 uncertainty=ras_view(result.uncertainty, geometry.affine))
            if save_masks:
                write_text_atomic(out_dir / "masks" / case.case / "prompts.json", json.dumps(index, indent=1))
    write_records(records, out_dir)
    rows = summarize(records, group_by="group") if records else []
    uncertainty = {name: {**accumulator.summary(), "uncertainty_kind": uncertainty_kind,
                          "entropy_error_auroc": (entropy_ranking[name].error_auroc() if name in entropy_ranking
                                                  else accumulator.error_auroc())}
                   for name, accumulator in calibration.items()}
    for row in rows:
        row |= uncertainty[row["group"]]
    write_summary(rows, out_dir, title=f"{Path(run).name} on {layout.root.name} ({split})")
    write_text_atomic(out_dir / "model_cost.json",
                      json.dumps(model_cost(predictor.model, predictor.config, predictor.text_dim), indent=1))
    worded = [r for r in records if "wording" in r]
    if worded:  # Dice of each wording, overall and per group: what new phrasings cost
        by_wording = summarize(worded, group_by="wording") + summarize(worded, group_by="group_wording")[:-1]
        write_table(by_wording, out_dir, "summary_by_wording", ("group", "group_by", "n", "dice_mean",
                                                                 "empty_correct"))
    if sweep_records:
        sweep_rows = [row | {"min_voxels": m} for m in component_sweep
                      for row in summarize([r for r in sweep_records if r["min_voxels"] == m], group_by="group")]
        write_table(sweep_rows, out_dir, "component_sweep", ("min_voxels", "group", "n", "dice_mean", "hd95_mean",
                                                              "nsd_mean"))
    if lesion_maps:  # lesion-level detection, as the PI-CAI challenge scores it
        detection = lesion_detection_metrics(lesion_maps, kind="probability")
        write_text_atomic(out_dir / "lesion_detection.json", json.dumps(detection, indent=1))
    if records:
        write_text_atomic(out_dir / "uncertainty.json", json.dumps(uncertainty, indent=1))
        save_reliability_diagram(calibration[OVERALL_GROUP], out_dir / "reliability.png",
                                 f"{Path(run).name} on {layout.root.name} ({split}): {uncertainty_kind} uncertainty")
    log = Path(run) / "log.jsonl" if Path(run).is_dir() else Path(run).parent / "log.jsonl"
    if log.is_file():
        save_loss_curve(log, out_dir / "loss_curve.png")
    return rows

"""``evaluate``: predict every prompt of a split with a trained model and score it on the files' grids."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medtextseg.config import DataConfig
from medtextseg.data.dimensions import metric_grid
from medtextseg.data.folds import held_out_layout
from medtextseg.data.io import read_array, read_geometry
from medtextseg.data.layout import CaseRecord, DatasetLayout, PromptRecord, load_dataset, verify_dataset
from medtextseg.evaluation.figures import save_loss_curve, save_overlay
from medtextseg.evaluation.lesion_detection import lesion_detection_metrics
from medtextseg.evaluation.metrics import OVERALL_GROUP, average_precision, segmentation_metrics, summarize
from medtextseg.evaluation.model_cost import model_cost
from medtextseg.evaluation.tables import write_records, write_summary, write_table
from medtextseg.evaluation.uncertainty import UncertaintyAccumulator, save_reliability_diagram
from medtextseg.inference.ensemble import CHECKPOINT_NAMES, ModelArgument, load_predictor, model_members
from medtextseg.inference.postprocessing import remove_small_components
from medtextseg.inference.predictor import Predictor
from medtextseg.inference.sliding import binary_entropy
from medtextseg.utils.atomic import write_text_atomic
from medtextseg.utils.errors import MedTextSegError
from medtextseg.utils.precision import inference_dtype, precision_name
from medtextseg.utils.progress import progress_bar

#: Prompt meta keys whose values get their own summary: a held-out phrasing set ("seen" / "unseen", ...) and the MR
#: sequence of a pooled dataset (``convert chaos --option modality=MR``).
BREAKDOWN_KEYS: tuple[str, ...] = ("wording", "sequence")


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


@dataclass
class EvaluationResult:
    """What :func:`evaluate_run` measured; the files in ``out_dir`` hold the same.

    Attributes:
        records: one dict per prompt (``metrics_per_prompt.json``).
        summary: one row per reporting group, the ``overall`` row last (``summary.json``), each with the
            calibration and uncertainty figures of its group.
        uncertainty: group -> ECE, uncertainty-error AUROC, uncertainty kind, entropy-error AUROC.
        detection: PI-CAI lesion detection of the ``all`` prompts (``lesion_detection.json``), or None.
        component_sweep: one row per (minimum component size, group) (``component_sweep.json``).
        breakdowns: for each prompt meta key of :data:`BREAKDOWN_KEYS` the split's prompts carry, the summary per
            value of it, overall and per group (``summary_by_{key}.json``): Dice per held-out wording, per MR
            sequence of a pooled dataset.
    """

    out_dir: Path
    records: list[dict] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    uncertainty: dict[str, dict] = field(default_factory=dict)
    detection: dict | None = None
    component_sweep: list[dict] = field(default_factory=list)
    breakdowns: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def overall(self) -> dict | None:
        """The summary row over every prompt (None when the split had no prompt)."""
        return self.summary[-1] if self.summary else None


class _SplitScorer:
    """Scores prompts one at a time and keeps what the summaries need (calibration, lesion maps, the sweep)."""

    def __init__(self, threshold: float, nsd_tolerance_mm: float, component_sweep: Sequence[int]) -> None:
        self.threshold, self.nsd_tolerance_mm, self.component_sweep = threshold, nsd_tolerance_mm, component_sweep
        self.records: list[dict] = []
        self.calibration: dict[str, UncertaintyAccumulator] = defaultdict(
            lambda: UncertaintyAccumulator(threshold))
        # an evidential model's probabilities also have an entropy: how well it finds errors, for comparison
        self.entropy_ranking: dict[str, UncertaintyAccumulator] = defaultdict(
            lambda: UncertaintyAccumulator(threshold))
        self.uncertainty_kind = "entropy"
        self.lesion_maps: list[tuple[np.ndarray, np.ndarray]] = []  # "all lesions" prompts: (probability, target)
        self.sweep_records: list[dict] = []
        self.overlay_count: dict[str, int] = defaultdict(int)  # overlays drawn per group
        self.fold: int | None = None  # out of fold: the fold whose run answers the prompts added now

    def add(self, case: CaseRecord, prompt: PromptRecord, result, target: np.ndarray,
            spatial: tuple[int, ...], spacing: tuple[float, ...]) -> dict:
        """Score one prediction (a :class:`~medtextseg.inference.predictor.Segmentation`) against ``target``
        (bool, the file's grid); returns its record."""
        metrics = segmentation_metrics(result.mask.reshape(spatial) > 0, target.reshape(spatial), spacing,
                                       self.nsd_tolerance_mm)
        metrics["average_precision"] = average_precision(result.probability, target, self.threshold)
        group = result_group(prompt)
        self.uncertainty_kind = result.uncertainty_kind
        entropy = (binary_entropy(torch.from_numpy(result.probability)).numpy()
                   if self.uncertainty_kind != "entropy" else None)
        for name in (group, OVERALL_GROUP):
            self.calibration[name].add(result.probability, target, result.uncertainty)
            if entropy is not None:
                self.entropy_ranking[name].add(result.probability, target, entropy)
        if prompt.kind == "all":
            self.lesion_maps.append((result.probability.reshape(spatial), target.reshape(spatial)))
        for min_voxels in self.component_sweep:
            swept = remove_small_components(result.probability.reshape(spatial) > self.threshold, min_voxels,
                                            keep_largest=True)
            self.sweep_records.append({"case": case.case, "prompt": prompt.prompt, "group": group,
                                       "min_voxels": min_voxels, **segmentation_metrics(
                                           swept, target.reshape(spatial), spacing, self.nsd_tolerance_mm)})
        record = {"case": case.case, "prompt": prompt.prompt, "kind": prompt.kind, "group": group,
                  "n_lesions": prompt.meta.get("n_lesions"), "class": prompt.class_name, **metrics}
        if self.fold is not None:
            record["fold"] = self.fold
        for key in BREAKDOWN_KEYS:
            if isinstance(prompt.meta.get(key), str):
                record |= {key: prompt.meta[key], f"group_{key}": f"{group}/{prompt.meta[key]}"}
        self.records.append(record)
        return record

    def result(self, out_dir: Path) -> EvaluationResult:
        """The summaries of everything added."""
        records = self.records
        uncertainty = {name: {**accumulator.summary(), "uncertainty_kind": self.uncertainty_kind,
                              "entropy_error_auroc": (self.entropy_ranking[name].error_auroc()
                                                      if name in self.entropy_ranking else accumulator.error_auroc())}
                       for name, accumulator in self.calibration.items()}
        summary = summarize(records, group_by="group") if records else []
        for row in summary:
            row |= uncertainty[row["group"]]
        breakdowns = {}
        for key in BREAKDOWN_KEYS:
            if keyed := [r for r in records if key in r]:  # each value overall, then per group (no 2nd overall row)
                breakdowns[key] = summarize(keyed, group_by=key) + summarize(keyed, group_by=f"group_{key}")[:-1]
        sweep = [row | {"min_voxels": m} for m in self.component_sweep
                 for row in summarize([r for r in self.sweep_records if r["min_voxels"] == m], group_by="group")]
        # lesion-level detection, as the PI-CAI challenge scores it
        detection = lesion_detection_metrics(self.lesion_maps, kind="probability") if self.lesion_maps else None
        return EvaluationResult(out_dir, records, summary, uncertainty, detection, sweep, breakdowns)


def write_evaluation(result: EvaluationResult, scorer: _SplitScorer, title: str) -> None:
    """Write a result's tables and figures into ``result.out_dir`` (each file atomically)."""
    out_dir = result.out_dir
    write_records(result.records, out_dir)
    write_summary(result.summary, out_dir, title=title)
    for key, rows in result.breakdowns.items():
        write_table(rows, out_dir, f"summary_by_{key}", ("group", "group_by", "n", "dice_mean", "empty_correct"))
    if result.component_sweep:
        write_table(result.component_sweep, out_dir, "component_sweep", ("min_voxels", "group", "n", "dice_mean",
                                                                         "hd95_mean", "nsd_mean"))
    if result.detection is not None:
        write_text_atomic(out_dir / "lesion_detection.json", json.dumps(result.detection, indent=1))
    if result.records:
        write_text_atomic(out_dir / "uncertainty.json", json.dumps(result.uncertainty, indent=1))
        save_reliability_diagram(scorer.calibration[OVERALL_GROUP], out_dir / "reliability.png",
                                 f"{title}: {scorer.uncertainty_kind} uncertainty")


def evaluate_run(run: ModelArgument, data_root: str | Path, out_dir: str | Path, split: str = "test",
                 save_masks: bool = True, overlays_per_group: int = 2, overlay_channel: int = 0,
                 nsd_tolerance_mm: float = 1.0, progress: bool = True,
                 component_sweep: Sequence[int] = (), refiner: bool | None = None,
                 mirror_axes: list[int] | str | None = None, inference: Sequence[str] = ()) -> EvaluationResult:
    """Evaluate a run on a dataset split; write per-prompt metrics, a summary per group, overlays, the
    calibration and uncertainty figures (``uncertainty.json``, ``reliability.png``) and, when the split has
    prompts of kind ``all`` (every lesion), PI-CAI lesion detection metrics from their probability maps
    (``lesion_detection.json``: case AUROC, lesion AP, PI-CAI score via ``picai_eval``). With ``component_sweep``
    (minimum sizes m in voxels), every prompt is also scored with its mask post-processed to the largest connected
    component plus those of at least m voxels (``component_sweep.json``/``.csv``: one row per m and group).
    ``refiner`` switches a refiner model's refiner on or off and ``mirror_axes`` sets the mirror test-time
    augmentation (None: as the run's config says); ``inference`` holds ``inference.KEY=VALUE`` settings
    (:meth:`~medtextseg.inference.predictor.Predictor.set_inference`, e.g. one co-trained network). ``run`` may
    name several models, or a folder of runs: their ensemble is evaluated (:mod:`medtextseg.inference.ensemble`;
    ``ensemble.json`` lists its members and thresholds), on a split none of them trained on
    (:func:`~medtextseg.data.folds.held_out_layout`). A fold run's ``val`` split is its held-out fold.

    Stages: predict and score each case (:class:`_SplitScorer`), summarise, write (:func:`write_evaluation`).

    Returns:
        An :class:`EvaluationResult`. Its summary rows (one per prompt kind, plus ``single_2plus`` and ``all``)
        also hold ``ece``, ``uncertainty_error_auroc``, ``uncertainty_kind`` and ``entropy_error_auroc`` (the same
        AUROC for the entropy of the probability, the model's own uncertainty when it has no other; see
        :mod:`medtextseg.evaluation.uncertainty`).
    """
    out_dir = Path(out_dir)
    predictor = load_predictor(run, refiner=refiner, mirror_axes=mirror_axes)
    predictor.set_inference(inference)
    layout = held_out_layout(load_dataset(data_root), [config.data for _, config in predictor.sources], split)
    title = model_name(predictor)
    scorer = _SplitScorer(predictor.config.inference.threshold, nsd_tolerance_mm, component_sweep)
    _predict_and_score(predictor, layout, split, scorer, out_dir, save_masks, overlays_per_group, overlay_channel,
                       progress)
    result = scorer.result(out_dir)
    write_evaluation(result, scorer, f"{title} on {layout.root.name} ({split})")
    _write_model_facts(predictor, out_dir)
    if len(predictor.sources) > 1:
        write_text_atomic(out_dir / "ensemble.json", json.dumps(
            {"members": [str(path) for path, _ in predictor.sources],
             "threshold": predictor.config.inference.threshold,
             "presence_threshold": predictor.config.inference.presence_threshold,
             "member_presence_thresholds": [config.inference.presence_threshold for _, config in predictor.sources]},
            indent=1))
    log = predictor.checkpoint.parent / "log.jsonl"  # a run's loss curve (an ensemble has several: none drawn)
    if len(predictor.sources) == 1 and log.is_file():
        save_loss_curve(log, out_dir / "loss_curve.png")
    return result


def evaluate_out_of_fold(runs: ModelArgument, data_root: str | Path, out_dir: str | Path, save_masks: bool = True,
                         overlays_per_group: int = 2, overlay_channel: int = 0, nsd_tolerance_mm: float = 1.0,
                         progress: bool = True, component_sweep: Sequence[int] = (), refiner: bool | None = None,
                         mirror_axes: list[int] | str | None = None, inference: Sequence[str] = ()
                         ) -> EvaluationResult:
    """The cross-validation score, as nnU-Net reports it: every fold run predicts its own held-out fold (its
    ``val`` split), and the predictions of all K folds, which together cover every train and val case once, are
    scored as one set. The test split is not touched: configurations are compared on the train and val cases
    before the test split is opened.

    ``runs``: the K fold runs (``train --fold k``, k = 0..K-1, one split), or a folder holding them. Each record
    carries its ``fold``; ``summary_by_fold.{json,csv}`` gives each fold's summary (nnU-Net's per-fold table)
    beside the pooled one. Other arguments and outputs as :func:`evaluate_run`; masks are written per case as
    there (each case is in exactly one fold); ``out_of_fold.json`` lists the runs and the fold each held out.

    Raises:
        MedTextSegError: a run that is not a fold run, runs of different fold draws, a fold given twice, or a
            fold missing (the pooled score would leave its cases out).
    """
    out_dir = Path(out_dir)
    members = model_members(runs)
    predictors = [load_predictor(member, refiner=refiner, mirror_axes=mirror_axes) for member in members]
    by_fold = _one_run_per_fold(members, [p.config.data for p in predictors])
    for member, predictor in zip(members, predictors, strict=True):
        predictor.set_inference(inference)
        if predictor.config.inference.threshold != predictors[0].config.inference.threshold:
            raise MedTextSegError(f"{member}: its inference.threshold {predictor.config.inference.threshold} "
                                  f"differs from {members[0]}'s {predictors[0].config.inference.threshold}; set "
                                  "one for all (--set inference.threshold=T) to score the folds alike")
    dataset = load_dataset(data_root)
    scorer = _SplitScorer(predictors[0].config.inference.threshold, nsd_tolerance_mm, component_sweep)
    for fold, index in sorted(by_fold.items()):
        predictor = predictors[index]
        layout = held_out_layout(dataset, [predictor.config.data], "val")
        scorer.fold = fold
        _predict_and_score(predictor, layout, "val", scorer, out_dir, save_masks, overlays_per_group,
                           overlay_channel, progress, label=f"fold {fold} of {len(by_fold)}")
    result = scorer.result(out_dir)
    write_evaluation(result, scorer, f"{len(by_fold)} folds out of fold on {dataset.root.name}")
    if result.records:
        write_table(summarize(result.records, group_by="fold"), out_dir, "summary_by_fold",
                    ("group", "group_by", "n", "dice_mean", "empty_correct"))
    write_text_atomic(out_dir / "out_of_fold.json", json.dumps(
        {"folds": {str(fold): str(predictors[index].checkpoint) for fold, index in sorted(by_fold.items())},
         "threshold": scorer.threshold,
         "presence_thresholds": {str(fold): predictors[index].config.inference.presence_threshold
                                 for fold, index in sorted(by_fold.items())}}, indent=1))
    _write_model_facts(predictors[0], out_dir)
    return result


def _one_run_per_fold(members: Sequence[Path], data: Sequence[DataConfig]) -> dict[int, int]:
    """fold -> index of its run, checked: fold runs of one draw, every fold once."""
    draws = {(d.folds, d.fold_seed) for d in data}
    for member, d in zip(members, data, strict=True):
        if d.fold is None:
            raise MedTextSegError(f"{member}: not a fold run (data.fold is null); an out-of-fold evaluation needs "
                                  "the runs of medtextseg train --fold 0 .. --fold K-1")
    if len(draws) > 1:
        listed = ", ".join(f"{folds} folds with seed {seed}" for folds, seed in sorted(draws))
        raise MedTextSegError(f"the runs come from different fold draws ({listed}); give the runs of one")
    by_fold: dict[int, int] = {}
    for index, d in enumerate(data):
        if d.fold in by_fold:
            raise MedTextSegError(f"{members[index]} and {members[by_fold[d.fold]]} both held out fold {d.fold}; "
                                  "give one run per fold")
        by_fold[d.fold] = index
    missing = sorted(set(range(data[0].folds)) - set(by_fold))
    if missing:
        raise MedTextSegError(f"no run for fold(s) {', '.join(map(str, missing))} of {data[0].folds}: the "
                              "out-of-fold score needs every fold, or it leaves those cases out")
    return by_fold


def _predict_and_score(predictor: Predictor, layout: DatasetLayout, split: str, scorer: _SplitScorer, out_dir: Path,
                       save_masks: bool, overlays_per_group: int, overlay_channel: int, progress: bool,
                       label: str | None = None) -> None:
    """Predict every prompt of ``layout``'s ``split`` and add it to ``scorer``; write its masks and overlays."""
    cases = layout.split(split)
    verify_dataset(layout, [c.case for c in cases], progress=progress)
    overlay_count = scorer.overlay_count
    with progress_bar(cases, f"evaluating {label or split}", progress) as iterator:
        for case in iterator:
            if not case.prompts:
                continue
            geometry = read_geometry(case.image_paths[0])
            label_map = read_array(case.label_path) if case.label_path else None
            results = predictor.predict(case.image_paths, [p.prompt for p in case.prompts])
            spatial, spacing = metric_grid(geometry, layout.spatial_dims)
            index = []
            for number, (prompt, result) in enumerate(zip(case.prompts, results, strict=True)):
                target = prompt_target(case, prompt, label_map)
                record = scorer.add(case, prompt, result, target, spatial, spacing)
                group = record["group"]
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
                                 title=f"{case.case}: {prompt.prompt}  (Dice {record['dice']:.2f})",
                                 probability=ras_view(result.probability, geometry.affine),
                                 uncertainty=ras_view(result.uncertainty, geometry.affine))
            if save_masks:
                write_text_atomic(out_dir / "masks" / case.case / "prompts.json", json.dumps(index, indent=1))


def _write_model_facts(predictor: Predictor, out_dir: Path) -> None:
    """``model_cost.json`` (parameters, FLOPs) and ``inference.json`` (how the model was asked, ``auto`` resolved)."""
    write_text_atomic(out_dir / "model_cost.json",
                      json.dumps(model_cost(predictor.model, predictor.config, predictor.text_dim), indent=1))
    inference = predictor.config.inference
    write_text_atomic(out_dir / "inference.json", json.dumps(
        {**inference.model_dump(), "device": str(predictor.device),
         "precision": precision_name(inference_dtype(inference.autocast, predictor.device))}, indent=1))


def model_name(predictor: Predictor) -> str:
    """How tables title a model: its run folder's (or file's) name; an ensemble's members' names joined by +."""
    names = [path.parent.name if path.name in CHECKPOINT_NAMES else path.name for path, _ in predictor.sources]
    return names[0] if len(names) == 1 else f"ensemble of {len(names)} ({' + '.join(names)})"

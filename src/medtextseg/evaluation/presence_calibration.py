"""Choose a trained run's presence threshold on a held-out split (``medtextseg calibrate-presence``).

The presence gate answers "is the named target in the image at all?": below ``inference.presence_threshold`` a
window's answer is empty. Training fixes it at 0.5; the best operating point depends on the model. Like nnU-Net's
choice of post-processing, it is picked on the validation split, never on the test split.

The gate trades two things, and both are reported for every threshold: **absent answered empty** (prompts whose
target is not in the image answered with an empty mask) and **present Dice** (mean Dice of the prompts whose
target is there, which a closing gate can only lower). The rule: the threshold that answers the most absent
targets empty among those that cost the present targets at most ``max_present_loss`` Dice against the gate left
open (the lowest among ties), that cost bounded at one-sided 95% confidence, each case's prompts one cluster
(:func:`present_loss_bound`). Maximising one mean Dice over both kinds instead let a dozen validation cases swing
the choice anywhere from 0.3 to 0.9, emptying correct answers to win a few absent ones; the cost measured alone
still did: on the 12 validation cases of a `fine` variety-benchmark run, 0.98 cost 0.017 and was chosen, and on 200
new cases of the same kind it cost 0.037 (the bound chose 0.9: 0.015 there, absent answered empty 90.7%).

How stable the choice is gets measured, not assumed: the rule is re-run on bootstrap resamples of the cases, and
the share that picks the same threshold is reported (with a warning below 20 absent or 20 present prompts).
One sliding-window pass per case scores every threshold (:func:`~medtextseg.inference.sliding.gated_probabilities`).

The chosen threshold is written into the run's ``best.pt`` and ``config.yaml``, so that ``predict`` and
``evaluate`` use it; the table goes to ``calibration_presence.json``. A fold run (``data.fold``) is calibrated on
its own held-out fold (its ``val``); an ensemble of folds gates on the mean of its members' thresholds
(:mod:`medtextseg.inference.ensemble`). Given all K fold runs, the choice is **cross-fitted**: each run scores its
held-out fold, one threshold is chosen on them all (every train + val case, each scored by a model that did not
train on it) and kept in every run, where a dozen validation cases could not choose stably.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import norm

from medtextseg.utils.atomic import write_text_atomic
from medtextseg.utils.errors import MedTextSegError

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
MAX_PRESENT_LOSS = 0.02  # Dice the present targets may lose to the gate
MIN_PROMPTS = 20  # fewer absent or present prompts than this: the choice is flagged unstable
BOOTSTRAP_RESAMPLES = 200
CONFIDENCE_LEVEL = 0.95  # the present Dice a threshold costs is bounded at this one-sided confidence
CONFIDENCE_Z = float(norm.ppf(CONFIDENCE_LEVEL))  # 1.645


def present_loss_bound(dice: np.ndarray, present: np.ndarray, cases: np.ndarray,
                       z: float = CONFIDENCE_Z) -> np.ndarray:
    """How much present Dice each threshold may cost, at most, with one-sided confidence ``z`` (1.645: 95%).

    The loss against the open gate (row 0), a mean over present prompts, plus ``z`` standard errors that treat
    each case's prompts as one cluster (a case's prompts share an image, so they succeed or fail together):
    with a dozen validation cases the estimate alone is too noisy to spend the whole budget on.

    Args:
        dice: [T, N]; present: [N] bool; cases: [N] the case of each prompt.

    Returns:
        [T] the upper bounds (0 for the open gate).
    """
    losses = dice[:1, present] - dice[:, present]  # [T, P]
    if losses.shape[1] == 0:
        return np.zeros(len(dice))
    _, cluster = np.unique(cases[present], return_inverse=True)
    clusters = cluster.max() + 1
    sums = np.stack([np.bincount(cluster, weights=row, minlength=clusters) for row in losses])  # [T, C]
    counts = np.bincount(cluster, minlength=clusters)  # [C]
    mean = losses.mean(1)
    # the ratio estimator's linearised variance over clusters
    spread = ((sums - mean[:, None] * counts) ** 2).sum(1) * clusters / max(clusters - 1, 1)
    return mean + z * np.sqrt(spread) / counts.sum()


def choose_threshold(thresholds: Sequence[float], dice: np.ndarray, empty_answer: np.ndarray,
                     present: np.ndarray, max_present_loss: float = MAX_PRESENT_LOSS,
                     cases: np.ndarray | None = None, z: float = CONFIDENCE_Z) -> float:
    """The rule of the module docstring.

    Args:
        thresholds: T thresholds, ascending; the first is the open gate's reference (0: never closes).
        dice: [T, N] Dice of each prompt at each threshold.
        empty_answer: [T, N] bool, the answer is an empty mask.
        present: [N] bool, the prompt's target is in the image.
        cases: [N] the case of each prompt: the present Dice a threshold costs is bounded with confidence ``z``
            (:func:`present_loss_bound`); None: the estimate alone.

    Returns:
        The chosen threshold (one of ``thresholds``).
    """
    present_dice = dice[:, present].mean(1) if present.any() else np.ones(len(thresholds))
    absent_empty = empty_answer[:, ~present].mean(1) if (~present).any() else np.zeros(len(thresholds))
    loss = present_dice[0] - present_dice if cases is None else present_loss_bound(dice, present, cases, z)
    allowed = loss <= max_present_loss + 1e-9
    best = max(absent_empty[allowed])
    return float(next(t for t, ok, a in zip(thresholds, allowed, absent_empty, strict=True)
                      if ok and a >= best - 1e-9))


def bound_note(thresholds: Sequence[float], dice: np.ndarray, empty_answer: np.ndarray, present: np.ndarray,
               cases: np.ndarray, chosen: float, max_present_loss: float = MAX_PRESENT_LOSS) -> str | None:
    """Why the bound chose ``chosen`` where the measured cost alone would choose a higher threshold (None when both
    agree): that threshold's cost as measured and as bounded."""
    estimate = choose_threshold(thresholds, dice, empty_answer, present, max_present_loss)
    if estimate == chosen:
        return None
    row = list(thresholds).index(estimate)
    measured = dice[0, present].mean() - dice[row, present].mean()
    bound = present_loss_bound(dice, present, cases)[row]
    return (f"{estimate:g} would answer more absent targets empty and costs present targets {measured:.3f} Dice as "
            f"measured, but up to {bound:.3f} at {CONFIDENCE_LEVEL:.0%} confidence, over the {max_present_loss} "
            "allowed; more held-out cases narrow the bound")


def _summary(dice: np.ndarray, empty_answer: np.ndarray, present: np.ndarray, kinds: list[str]) -> dict:
    """dice, empty_answer: [N] of one threshold. Mean Dice overall and per kind, and the two sides of the gate."""
    summary = {"val_dice": float(dice.mean())}
    for kind in sorted(set(kinds)):
        summary[f"val_dice_{kind}"] = float(np.mean([d for d, k in zip(dice, kinds, strict=True) if k == kind]))
    summary["present_dice"] = float(dice[present].mean()) if present.any() else None
    summary["absent_empty"] = float(empty_answer[~present].mean()) if (~present).any() else None
    return summary


@dataclass
class _ThresholdScores:
    """Every threshold's answers on a split's prompts.

    Attributes:
        dice, empty_answer: [T, N] Dice, and whether the answer is an empty mask, per threshold and prompt.
        present: [N] bool, the prompt's target is in the image.
        kinds: N prompt kinds.
        cases: N case ids (the bootstrap resamples cases, not prompts).
    """

    dice: np.ndarray
    empty_answer: np.ndarray
    present: np.ndarray
    kinds: list[str]
    cases: list[str]


def _score_run(run: Path, data: str | Path, split: str, grid: list[float], progress: bool
               ) -> tuple[Any, _ThresholdScores]:
    """Load ``run``'s best weights and score every threshold of ``grid`` on its ``split`` (a fold run's ``val``:
    its held-out fold), the model asked as it predicts (``inference``). Returns its config and the scores."""
    import torch
    from monai.metrics import compute_dice

    from medtextseg.data.folds import held_out_layout
    from medtextseg.data.layout import load_dataset
    from medtextseg.data.prompts import swap_left_right
    from medtextseg.inference.postprocessing import remove_small_components
    from medtextseg.inference.sliding import gated_probabilities
    from medtextseg.models.trained import load_trained_model
    from medtextseg.training.inputs import preprocessed, text_cache_for

    best = run / "best.pt"
    if not best.is_file():
        raise MedTextSegError(f"{run}: no best.pt (pass the run folder of a finished training)")
    trained = load_trained_model(best, "cuda" if torch.cuda.is_available() else "cpu")
    config = trained.config
    if not config.model.presence:
        raise MedTextSegError(f"{run}: the model has no presence logit (model.presence=false): nothing to calibrate")
    layout = held_out_layout(load_dataset(data), [config.data], split)  # a fold run: val = its held-out fold
    case_ids = layout.splits.get(split, [])
    if not case_ids:
        raise MedTextSegError(f"{data}: the {split!r} split is empty")
    model = trained.network
    cases = preprocessed(layout, case_ids, config, progress, split).cases  # loaded one at a time when scored
    text = text_cache_for(config)
    inference = config.inference

    dice_rows, empty_rows, present, kinds, case_of = [], [], [], [], []
    for case_id, reference in zip(case_ids, cases, strict=True):
        case = reference.load()
        prompts = [p.prompt for p in case.prompts]
        mirrored = text([swap_left_right(p) for p in prompts]) if 0 in inference.mirror_axes else None
        probabilities = gated_probabilities(model, case.image, text(prompts), config.data.patch_size, grid,
                                            inference.overlap, slice_context=config.data.slice_context,
                                            refine=inference.refiner, network=inference.network,
                                            autocast=inference.autocast, mirror_axes=inference.mirror_axes,
                                            mirrored_text=mirrored)  # [T, P, *spatial]
        masks = torch.stack([torch.stack([torch.from_numpy(remove_small_components(
            m.numpy(), inference.min_component_voxels)) for m in row > inference.threshold])
            for row in probabilities])  # [T, P, *spatial] bool
        target = torch.stack([case.target(p) for p in case.prompts])  # [P, *spatial]
        dice = compute_dice(masks.flatten(0, 1)[:, None].float(),
                            target.repeat(len(grid), *[1] * (target.ndim - 1))[:, None].float(),
                            include_background=True, ignore_empty=False)[:, 0].view(len(grid), -1)
        dice_rows.append(dice.numpy())
        empty_rows.append((~masks.flatten(2).any(2)).numpy())
        present += [bool(t.any()) for t in target]
        kinds += [p.kind for p in case.prompts]
        case_of += [case_id] * len(case.prompts)
    return config, _ThresholdScores(np.concatenate(dice_rows, 1), np.concatenate(empty_rows, 1),
                                           np.array(present), kinds, case_of)


def _pooled(scores: Sequence[_ThresholdScores], runs: Sequence[Path]) -> _ThresholdScores:
    """The scores of several runs' held-out cases as one set; refused when two runs scored the same case (two
    runs of one fold, or runs that are not folds of one split)."""
    seen: dict[str, Path] = {}
    for run, scored in zip(runs, scores, strict=True):
        for case in dict.fromkeys(scored.cases):
            if case in seen:
                raise MedTextSegError(f"{seen[case]} and {run} both hold out case {case!r}: cross-fitting takes one "
                                      "run per fold (train --fold 0..K-1 on the same dataset)")
            seen[case] = run
    return _ThresholdScores(np.concatenate([s.dice for s in scores], 1),
                            np.concatenate([s.empty_answer for s in scores], 1),
                            np.concatenate([s.present for s in scores]),
                            [k for s in scores for k in s.kinds], [c for s in scores for c in s.cases])


def calibrate_presence(run: str | Path | Sequence[str | Path], data: str | Path, split: str = "val",
                       thresholds: Sequence[float] = DEFAULT_THRESHOLDS, progress: bool = True,
                       max_present_loss: float = MAX_PRESENT_LOSS) -> dict[str, Any]:
    """Score ``thresholds`` on ``split`` of ``data`` with the run's best weights; keep the chosen one in the run.

    Given several runs, the folds of one cross-validation (``train --fold 0..K-1``), each scores its own held-out
    fold and one threshold is chosen on all of them together (cross-fitting: every train + val case is scored by
    a model that did not train on it, so the choice rests on K times the cases of one validation split), then kept
    in every run; an ensemble of the folds gates on the mean of their thresholds, this one.

    Returns ``{"split", "runs", "cases", "chosen", "previous", "rule", "stability", "absent_prompts",
    "present_prompts", "warning", "note" (:func:`bound_note`), "scores": {threshold: {"val_dice",
    "val_dice_<kind>", "present_dice", "absent_empty"}}}``; ``scores`` has the open gate under ``"0.0"`` as well;
    ``previous`` is the first run's.

    Raises:
        MedTextSegError: not a run folder with ``best.pt``, a model without a presence logit, a threshold outside
            (0, 1), an empty split, or two runs holding out the same case.
    """
    from medtextseg.config import Config
    from medtextseg.models.checkpoint import save_checkpoint
    from medtextseg.models.trained import load_checkpoint

    runs = [Path(run)] if isinstance(run, (str, Path)) else [Path(r) for r in run]
    if not runs:
        raise MedTextSegError("calibrate-presence: no run given (-m RUN, once per fold to cross-fit)")
    if not thresholds or any(not 0 < t < 1 for t in thresholds):
        raise MedTextSegError(f"--thresholds must be numbers in (0, 1), got {list(thresholds)}")
    if not 0 <= max_present_loss < 1:
        raise MedTextSegError(f"--max-present-loss must be in [0, 1), got {max_present_loss}")
    grid = [0.0, *sorted(set(float(t) for t in thresholds))]
    scored = [_score_run(path, data, split, grid, progress) for path in runs]
    scores = _pooled([s for _, s in scored], runs)
    dice, empty_answer, present_mask = scores.dice, scores.empty_answer, scores.present
    number = {case: n for n, case in enumerate(dict.fromkeys(scores.cases))}  # case id -> 0..cases-1
    case_ids = list(number)
    case_of = np.array([number[c] for c in scores.cases])

    chosen = choose_threshold(grid, dice, empty_answer, present_mask, max_present_loss, cases=case_of)
    rng = np.random.default_rng(0)
    resampled = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        picked = rng.integers(len(case_ids), size=len(case_ids))
        drawn = [np.flatnonzero(case_of == c) for c in picked]
        rows = np.concatenate(drawn)
        clusters = np.repeat(np.arange(len(drawn)), [len(d) for d in drawn])  # a case drawn twice counts twice
        resampled.append(choose_threshold(grid, dice[:, rows], empty_answer[:, rows], present_mask[rows],
                                          max_present_loss, cases=clusters))
    stability = float(np.mean(np.array(resampled) == chosen))
    n_absent, n_present = int((~present_mask).sum()), int(present_mask.sum())
    where = f"{split!r}" if len(runs) == 1 else f"the {len(runs)} runs' held-out {split!r} cases"
    warning = None
    if min(n_absent, n_present) < MIN_PROMPTS:
        warning = (f"only {n_absent} absent and {n_present} present prompts in {where}: too few for a stable "
                   f"choice (the same threshold in {stability:.0%} of bootstrap resamples); a larger split helps"
                   + ("" if len(runs) > 1 else ", or cross-fitting over fold runs (-m once per fold)"))

    previous = scored[0][0].inference.presence_threshold
    result = {"split": split, "runs": [str(path) for path in runs], "cases": len(case_ids), "data": str(data),
              "chosen": chosen, "previous": previous,
              "rule": f"most absent targets answered empty with present Dice at most {max_present_loss} below the "
                      f"open gate's (0.0) at one-sided {CONFIDENCE_LEVEL:.0%} confidence (cases as clusters)"
                      + (f", cross-fitted over {len(runs)} folds" if len(runs) > 1 else ""),
              "stability": stability, "absent_prompts": n_absent, "present_prompts": n_present, "warning": warning,
              "note": bound_note(grid, dice, empty_answer, present_mask, case_of, chosen, max_present_loss),
              "scores": {str(t): _summary(dice[i], empty_answer[i], present_mask, scores.kinds)
                         for i, t in enumerate(grid)}}
    for path in runs:
        state = load_checkpoint(path / "best.pt")  # weights only, as scored
        state["config"]["inference"]["presence_threshold"] = chosen
        save_checkpoint(path / "best.pt", state)
        if (path / "config.yaml").is_file():
            saved = Config.load(path / "config.yaml", [f"inference.presence_threshold={chosen}"])
            write_text_atomic(path / "config.yaml", saved.to_yaml())
        write_text_atomic(path / "calibration_presence.json", json.dumps(result, indent=1) + "\n")
    return result


__all__ = ["DEFAULT_THRESHOLDS", "MAX_PRESENT_LOSS", "bound_note", "calibrate_presence", "choose_threshold",
           "present_loss_bound"]

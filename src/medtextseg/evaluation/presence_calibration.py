"""Choose a trained run's presence threshold on a held-out split (``medtextseg calibrate-presence``).

The presence gate answers "is the named target in the image at all?": below ``inference.presence_threshold`` a
window's answer is empty. Training fixes it at 0.5; the best operating point depends on the model. Like nnU-Net's
choice of post-processing, it is picked on the validation split, never on the test split: every threshold of a
grid is scored with the training's validation measure (mean Dice over all prompts, an absent target answered
empty counting 1), the best one (the lowest among ties) is written into the run's ``best.pt`` and
``config.yaml``, so that ``predict`` and ``evaluate`` use it, and the whole table goes to
``calibration_presence.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtextseg.utils.atomic import write_text_atomic
from medtextseg.utils.errors import MedTextSegError

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def calibrate_presence(run: str | Path, data: str | Path, split: str = "val",
                       thresholds: Sequence[float] = DEFAULT_THRESHOLDS, progress: bool = True) -> dict[str, Any]:
    """Score ``thresholds`` on ``split`` of ``data`` with the run's best weights; keep the best in the run.

    Returns ``{"split", "chosen", "previous", "scores": {threshold: {"val_dice", "val_dice_<kind>", ...}}}``.

    Raises:
        MedTextSegError: not a run folder with ``best.pt``, a model without a presence logit, a threshold outside
            (0, 1), or an empty split.
    """
    import torch

    from medtextseg.config import Config
    from medtextseg.data.layout import load_dataset
    from medtextseg.models.factory import create_model
    from medtextseg.training.checkpoint import load_checkpoint, save_checkpoint
    from medtextseg.training.trainer import preprocessed, text_cache_for
    from medtextseg.training.validation import validation_dice

    run = Path(run)
    best = run / "best.pt"
    if not best.is_file():
        raise MedTextSegError(f"{run}: no best.pt (pass the run folder of a finished training)")
    if not thresholds or any(not 0 < t < 1 for t in thresholds):
        raise MedTextSegError(f"--thresholds must be numbers in (0, 1), got {list(thresholds)}")
    state = load_checkpoint(best)
    config = Config.from_dict(state["config"])
    if not config.model.presence:
        raise MedTextSegError(f"{run}: the model has no presence logit (model.presence=false): nothing to calibrate")
    layout = load_dataset(data)
    case_ids = layout.splits.get(split, [])
    if not case_ids:
        raise MedTextSegError(f"{data}: the {split!r} split is empty")
    model = create_model(config.model, int(state["text_dim"]))
    model.load_state_dict(state["model"])
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    cases = preprocessed(layout, case_ids, config, progress, split).cases  # loaded one at a time when scored
    text = text_cache_for(config)
    inference = config.inference
    scores = {}
    for threshold in sorted(set(float(t) for t in thresholds)):
        scores[threshold] = validation_dice(model, cases, text, config.data.patch_size, inference.threshold,
                                            threshold, inference.min_component_voxels)
    chosen = max(scores, key=lambda t: (round(scores[t]["val_dice"], 6), -t))
    previous = inference.presence_threshold
    state["config"]["inference"]["presence_threshold"] = chosen
    save_checkpoint(best, state)
    if (run / "config.yaml").is_file():
        saved = Config.load(run / "config.yaml", [f"inference.presence_threshold={chosen}"])
        write_text_atomic(run / "config.yaml", saved.to_yaml())
    result = {"split": split, "data": str(data), "chosen": chosen, "previous": previous,
              "scores": {str(t): s for t, s in scores.items()}}
    write_text_atomic(run / "calibration_presence.json", json.dumps(result, indent=1) + "\n")
    return result


__all__ = ["DEFAULT_THRESHOLDS", "calibrate_presence"]

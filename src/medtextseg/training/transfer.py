"""Selective weight transfer: start a run from another run's weights, by parameter name and shape.

A second training stage (Align-then-Refine's refiner fine-tuning) loads the first stage's best checkpoint but
re-initialises some parts (its segmentation heads) and adds others (the refiner). ``train.init_from`` names the
source, ``train.init_exclude`` the parameter-name prefixes that are not transferred.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from medtextseg.models.trained import load_checkpoint


def transfer_weights(model: nn.Module, source: str | Path, exclude: Sequence[str] = ()) -> dict[str, list[str]]:
    """Copy into ``model`` every tensor of ``source`` (a checkpoint or a run folder: its ``best.pt``) whose name
    and shape match, except names starting with one of ``exclude``.

    Returns:
        Sorted name lists: ``transferred``; ``excluded`` (in both, left as initialised); ``shape_mismatch`` (in
        both, shapes differ, left as initialised); ``new`` (only in the model); ``dropped`` (only in the source).

    Raises:
        MedTextSegError: the source is not a readable checkpoint.
    """
    weights = load_checkpoint(source)["model"]
    state = model.state_dict()
    report: dict[str, list[str]] = {"transferred": [], "excluded": [], "shape_mismatch": [], "new": [],
                                    "dropped": sorted(k for k in weights if k not in state)}
    for name, tensor in state.items():
        if name not in weights:
            report["new"].append(name)
        elif name.startswith(tuple(exclude)):
            report["excluded"].append(name)
        elif weights[name].shape != tensor.shape:
            report["shape_mismatch"].append(name)
        else:
            report["transferred"].append(name)
    model.load_state_dict({name: weights[name] for name in report["transferred"]}, strict=False)
    return {key: sorted(names) for key, names in report.items()}

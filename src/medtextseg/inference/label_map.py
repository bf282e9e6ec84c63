"""One label map per case from the answers to several prompts (``predict --combined``), with its legend.

Label k is prompt k (1-based, in the order given); a voxel two masks claim takes the label of the prompt with the
higher probability there (the earlier prompt on a tie); a voxel no mask claims is 0. The map is written on the
input's exact grid like the masks, as uint8 (uint16 beyond 255 prompts); a NIfTI map has the intent
``NIFTI_INTENT_LABEL``, so viewers show it as labels. The legend (JSON) names each label's prompt, its own mask
file, and its voxels and volume in the map (fewer than the mask's where another prompt won an overlap).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtextseg.data.io import write_on_grid
from medtextseg.inference.predictor import Segmentation
from medtextseg.utils.atomic import write_text_atomic
from medtextseg.utils.errors import MedTextSegError

LEGEND_FORMAT = "medtextseg-label-map/1"
#: the label map's and legend's names beside the masks: a prompt's slug (``[a-z0-9_]``) never has a hyphen
LABEL_MAP_NAME, LEGEND_NAME = "label-map", "label-map.json"


def combine_labels(masks: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The label map of P prompts' answers.

    Args:
        masks: [P, *spatial], nonzero where prompt k's mask claims the voxel.
        probabilities: [P, *spatial] float, prompt k's probability.

    Returns:
        [*spatial] uint8 (uint16 when P > 255): 0 where no mask claims the voxel, else 1 + the index of the
        claiming prompt with the highest probability (the first of equals).
    """
    masks, probabilities = np.asarray(masks), np.asarray(probabilities)
    if masks.shape != probabilities.shape or masks.ndim < 2:
        raise MedTextSegError(f"masks {masks.shape} and probabilities {probabilities.shape} must both be "
                              "[P, *spatial]")
    if len(masks) > np.iinfo(np.uint16).max:
        raise MedTextSegError(f"{len(masks)} prompts: a label map holds at most 65535")
    labels = np.zeros(masks.shape[1:], np.uint8 if len(masks) <= np.iinfo(np.uint8).max else np.uint16)
    best = np.full(masks.shape[1:], -np.inf, np.float32)  # the winning probability so far (one volume, not P)
    for label, (mask, probability) in enumerate(zip(masks, probabilities, strict=True), start=1):
        wins = mask.astype(bool) & (probability > best)  # strictly: the earlier prompt keeps a tie
        labels[wins] = label
        best[wins] = probability[wins]
    return labels


class LabelMapBuilder:
    """The label map of one image's answers, built one answer at a time (:meth:`add`, in prompt order), so that a
    prediction that streams its answers holds the map and the winning probabilities, not P maps. The map equals
    :func:`combine_labels`'s.

    Args:
        count: the number of prompts (it decides the map's type: uint8, or uint16 beyond 255).
    """

    def __init__(self, count: int) -> None:
        if count > np.iinfo(np.uint16).max:
            raise MedTextSegError(f"{count} prompts: a label map holds at most 65535")
        self.count = count
        self.labels: np.ndarray | None = None
        self.best: np.ndarray | None = None
        self.geometry = None
        self.answers: list[tuple[str, str | None, int]] = []  # prompt, mask file, mask voxels

    def add(self, result: Segmentation, mask_file: str | None) -> None:
        """Claim ``result``'s voxels where its probability beats every earlier prompt's (strictly: a tie stays)."""
        if len(self.answers) >= self.count:
            raise MedTextSegError(f"more answers than the {self.count} prompts the label map was made for")
        if self.labels is None:
            self.geometry = result.geometry
            self.labels = np.zeros(result.mask.shape, np.uint8 if self.count <= np.iinfo(np.uint8).max else np.uint16)
            self.best = np.full(result.mask.shape, -np.inf, np.float32)
        wins = result.mask.astype(bool) & (result.probability > self.best)
        self.labels[wins] = len(self.answers) + 1
        self.best[wins] = result.probability[wins]
        self.answers.append((result.prompt, mask_file, result.voxels))

    def write(self, destination: str | Path, legend_path: str | Path | None = None) -> dict[str, Any]:
        """Write the map on the answers' grid and its legend; returns the legend (see :func:`write_label_map`)."""
        if self.labels is None:
            raise MedTextSegError("no prompt answers to combine")
        destination = Path(destination)
        write_on_grid(self.labels, self.geometry, destination, "input", label_map=True)
        voxel_mm3 = float(np.prod(self.geometry.spacing))
        counts = np.bincount(self.labels.ravel(), minlength=len(self.answers) + 1)
        legend = {"format": LEGEND_FORMAT, "file": destination.name, "background": 0,
                  "overlaps": "highest probability (the earlier prompt on a tie)",
                  "labels": [{"label": k, "prompt": prompt, "mask": mask, "voxels": int(counts[k]),
                              "volume_mm3": round(int(counts[k]) * voxel_mm3, 3), "mask_voxels": voxels}
                             for k, (prompt, mask, voxels) in enumerate(self.answers, start=1)]}
        write_text_atomic(legend_path or destination.parent / LEGEND_NAME, json.dumps(legend, indent=1))
        return legend


def write_label_map(results: Sequence[Segmentation], destination: str | Path, mask_files: Sequence[str | None],
                    legend_path: str | Path | None = None) -> dict[str, Any]:
    """Write the label map of ``results`` (one image's, in prompt order) on their grid, and its legend.

    Args:
        results: the Segmentations of one image, label k = ``results[k - 1]``.
        destination: the label map file (its ending picks the format, as for masks).
        mask_files: each prompt's mask file, named relative to the legend's folder (where it lies beside it).
        legend_path: the legend's JSON file; default: ``label-map.json`` beside ``destination``.

    Returns:
        The legend: ``format``, ``file`` (the map's name), ``background`` (0), ``overlaps`` (the rule), and
        ``labels``: per label ``label``, ``prompt``, ``mask``, ``voxels`` and ``volume_mm3`` (in the map) and
        ``mask_voxels`` (in its own mask).
    """
    if not results:
        raise MedTextSegError("no prompt answers to combine")
    builder = LabelMapBuilder(len(results))
    for result, mask in zip(results, mask_files, strict=True):
        builder.add(result, mask)
    return builder.write(destination, legend_path)

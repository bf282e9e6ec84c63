"""Prediction with several trained models as one (nnU-Net's fold ensemble): ``predict -m A -m B``, ``-m FOLDS/``.

**Members.** Each model argument is a run folder, a checkpoint file or a model package ``.zip``, or a folder of
runs (``FOLDS/fold_0`` ... ``FOLDS/fold_4``, as ``benchmarks/bench_folds.py`` and nnU-Net lay folds out): a folder
without ``best.pt``/``last.pt`` of its own stands for every sub-folder that has one, in natural name order.

**What they must share**, or the ensemble is refused with one line naming the member and the value: spatial
dimensions, image channels (number and names), the plan's spacing (``data.spacing``) and intensity
normalisation (one preparation of the image feeds them all), the window (``data.patch_size``: one sliding
window feeds them all), coordinate channels and head (the window's input and output), and the text encoder
(name, embedding width, token count: one encoding of the prompts feeds them all). Fold runs of one
``medtextseg train --fold K`` plan share all of these.

**How they answer** (:class:`~medtextseg.models.ensemble.SegmenterEnsemble`): the mean of the members'
foreground probabilities, on the input's grid like a single model's (averaged per window, before the Gaussian
blending and the inversion, which are linear).

**Thresholds.** The presence gate compares the members' **mean presence probability** with the **mean of their
presence thresholds** (``inference.presence_threshold``, each as ``calibrate-presence`` chose it on its own
held-out fold): the gate stays open when p̄ >= t̄, that is when the members' margins over their own thresholds,
p_i - t_i, average to at least 0. The voxel threshold is the mean of the members' ``inference.threshold``
(``--threshold`` replaces it). One member answers exactly as that model. The other inference settings (overlap,
windows per call, prompt chunk, mirror axes, refiner, small-component removal, precision, spacing) are the
first member's; ``--set inference.*`` and the command's options apply to the ensemble as to one model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medtextseg.config import Config
from medtextseg.inference.predictor import Predictor
from medtextseg.models.ensemble import SegmenterEnsemble
from medtextseg.utils.errors import MedTextSegError

CHECKPOINT_NAMES = ("best.pt", "last.pt")
ModelArgument = str | Path | Sequence[str | Path]


def _natural_key(path: Path) -> list:
    """``fold_2`` before ``fold_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def model_members(models: ModelArgument) -> list[Path]:
    """The model files or folders ``models`` names, folders of runs expanded into their runs (module docstring).

    Raises:
        MedTextSegError: no model, or one model given twice (it would count double).
    """
    items = [models] if isinstance(models, str | Path) else list(models)
    if not items:
        raise MedTextSegError("no model given: pass -m RUN (repeat -m to ensemble several)")
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir() and not any((path / name).is_file() for name in CHECKPOINT_NAMES):
            runs = sorted((sub for sub in path.iterdir()
                           if sub.is_dir() and any((sub / name).is_file() for name in CHECKPOINT_NAMES)),
                          key=_natural_key)
            if runs:
                found += runs
                continue
        found.append(path)
    seen: dict[Path, Path] = {}
    for path in found:
        key = path.resolve()
        if key in seen:
            raise MedTextSegError(f"{path}: given twice as an ensemble member (also as {seen[key]}); each model "
                                  "once, or it counts double")
        seen[key] = path
    return found


def _signature(member: Predictor) -> dict[str, object]:
    """What an ensemble's members must share (module docstring), by the words its refusal uses."""
    config = member.config
    return {"spatial dimensions (model.spatial_dims)": config.model.spatial_dims,
            "image channels": (config.model.in_channels, *member.channel_names),
            "plan spacing (data.spacing)": config.data.spacing,
            "intensity normalisation (data.normalization)": [n.model_dump() for n in config.data.normalization or []],
            "window (data.patch_size)": config.data.patch_size,
            "coordinate channels (model.coordinates)": config.model.coordinates,
            "head (model.head)": config.model.head,
            "text encoder (name, width, text.max_tokens)": (member.trained_encoder or config.text.encoder,
                                                            member.text_dim, config.text.max_tokens)}


def check_members(members: Sequence[Predictor]) -> None:
    """Refuse members that cannot answer as one (module docstring), naming the first difference.

    Raises:
        MedTextSegError: one line: the member, what differs, its value and the first member's.
    """
    first = _signature(members[0])
    for member in members[1:]:
        for what, value in _signature(member).items():
            if value != first[what]:
                raise MedTextSegError(f"{member.checkpoint}: its {what} is {value}, but {members[0].checkpoint}'s "
                                      f"is {first[what]}; an ensemble's models must share it (train them on one "
                                      "plan, e.g. medtextseg train --fold K)")


class EnsemblePredictor(Predictor):
    """A :class:`Predictor` over several models (module docstring): ``predict``, ``iter_predict``,
    ``set_inference`` and everything that takes a Predictor take it.

    Args:
        models: the members (:func:`model_members`); the other arguments as :class:`Predictor`'s, for each.

    Raises:
        MedTextSegError: a member that does not load, or members that do not share what they must.
    """

    def __init__(self, models: ModelArgument, device: str | torch.device | None = None,
                 refiner: bool | None = None, mirror_axes: list[int] | str | None = None,
                 threshold: float | None = None) -> None:
        members = [Predictor(path, device, refiner, mirror_axes, threshold) for path in model_members(models)]
        check_members(members)
        first = members[0]
        self.members = [(member.checkpoint, member.config) for member in members]
        inference = first.config.inference.model_dump()
        inference["presence_threshold"] = _mean(m.config.inference.presence_threshold for m in members)
        if threshold is None:
            inference["threshold"] = _mean(m.config.inference.threshold for m in members)
        self.config = Config.from_dict({**first.config.model_dump(), "inference": inference})
        self.device, self.checkpoint, self.channel_names = first.device, first.checkpoint, first.channel_names
        self.text, self.text_dim, self.trained_encoder = first.text, first.text_dim, first.trained_encoder
        self.model = SegmenterEnsemble([member.model for member in members])

    @property
    def sources(self) -> list[tuple[Path, Config]]:
        """(checkpoint file, config) of every member, in order."""
        return list(self.members)


def _mean(values) -> float:
    """The mean of thresholds, rounded to 6 decimals (three members of 0.95 give 0.95, not 0.9500000000000001)."""
    return round(float(np.mean(list(values))), 6)


def load_predictor(models: ModelArgument, device: str | torch.device | None = None, refiner: bool | None = None,
                   mirror_axes: list[int] | str | None = None, threshold: float | None = None) -> Predictor:
    """One model's :class:`Predictor`, or an :class:`EnsemblePredictor` when ``models`` names several (several
    arguments, or a folder of runs)."""
    members = model_members(models)
    if len(members) == 1:
        return Predictor(members[0], device, refiner, mirror_axes, threshold)
    return EnsemblePredictor(members, device, refiner, mirror_axes, threshold)


__all__ = ["EnsemblePredictor", "check_members", "load_predictor", "model_members"]

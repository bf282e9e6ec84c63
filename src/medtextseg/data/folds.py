"""Cross-validation folds of a dataset's training cases, kept as nnU-Net keeps them: ``splits_final.json``.

The **pool** is the dataset's ``train`` and ``val`` splits together (``splits.json``'s, or the hash split); every
other split (``test``) stays untouched: no fold trains or validates on it. :func:`make_folds` shuffles the sorted
pool with ``numpy.random.RandomState(seed)`` and cuts it into k folds of near-equal size (the first ``n % k`` one
case larger), exactly as scikit-learn's ``KFold(k, shuffle=True, random_state=seed)`` over the sorted case ids,
which is what nnU-Net does: with nnU-Net's seed 12345 the folds are the ones nnU-Net makes for the same case ids.
When the dataset names groups (``case_groups.json``: case -> group, e.g. a patient with several studies, or a
volume cut into slices), whole groups are dealt into folds the same way, so that no group has cases on both
sides of a fold; a case the file does not list is a group of its own.

**Where the folds live.** In the dataset folder, as ``DATA/splits_final.json`` (nnU-Net's name and format: a
list of ``{"train": [...], "val": [...]}``, one per fold), written once, when a fold run first finds it absent,
and replayed by every later fold run and by evaluation. The dataset folder, not a run folder, because the k
fold runs are k separate run folders that must share one split and cannot see each other, and because the
split belongs to the data (nnU-Net keeps it beside the preprocessed dataset); each run records its fold in its
resolved config (``data.fold``, ``data.folds``, ``data.fold_seed``). An existing file wins over
``data.fold_seed`` (delete it to draw new folds; fold runs made from the old one no longer match then); a file
nnU-Net wrote for the same case ids can be copied in. A read-only dataset keeps the file in the user's cache
(``data.cache_dir``, else ``$MEDTEXTSEG_CACHE`` or ``~/.cache/medtextseg``) under a name of the dataset.

A fold run (``data.fold = K``) sees the dataset with ``train`` = the pool minus fold K and ``val`` = fold K
(:func:`apply_fold`): the trainer, ``calibrate-presence`` and ``evaluate --split val`` of that run all read
those.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from medtextseg.config import DataConfig
from medtextseg.data.layout import DatasetLayout
from medtextseg.utils.atomic import write_text_atomic
from medtextseg.utils.errors import MedTextSegError
from medtextseg.utils.json_files import json_type, read_json

FOLDS_FILE = "splits_final.json"
GROUPS_FILE = "case_groups.json"
POOL_SPLITS = ("train", "val")  # the splits folds are drawn from; the others (test) stay as they are


def fold_pool(layout: DatasetLayout) -> list[str]:
    """The cases folds are drawn from: those of the ``train`` and ``val`` splits, sorted (nnU-Net's order)."""
    return sorted({case for split in POOL_SPLITS for case in layout.splits.get(split, [])})


def make_folds(case_ids: Sequence[str], folds: int = 5, seed: int = 12345,
               groups: Mapping[str, str] | None = None) -> list[dict[str, list[str]]]:
    """k folds of ``case_ids``: ``folds`` dicts ``{"train": [...], "val": [...]}``, each list sorted; every case is
    in exactly one ``val``, and in the ``train`` of every other fold.

    The sorted ids (or, with ``groups``, the sorted group ids) are shuffled by ``RandomState(seed)`` and cut into
    ``folds`` runs of near-equal length, as ``sklearn.model_selection.KFold(folds, shuffle=True,
    random_state=seed)`` cuts them; a group's cases all go where the group goes.

    Raises:
        MedTextSegError: fewer cases (or groups) than folds.
    """
    cases = sorted(set(case_ids))
    group_of = {case: str(groups[case]) if groups and case in groups else f"\0{case}" for case in cases}
    units = sorted(set(group_of.values()))
    if len(units) < folds:
        what = "groups" if groups else "cases"
        raise MedTextSegError(f"data.folds={folds} needs at least {folds} {what} in the train + val splits, got "
                              f"{len(units)}")
    order = np.arange(len(units))
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(folds, len(units) // folds)
    sizes[: len(units) % folds] += 1
    result, start = [], 0
    for size in sizes:
        held = {units[i] for i in order[start: start + size]}
        start += size
        result.append({"train": [c for c in cases if group_of[c] not in held],
                       "val": [c for c in cases if group_of[c] in held]})
    return result


def read_groups(layout: DatasetLayout) -> dict[str, str] | None:
    """The dataset's ``case_groups.json`` (case -> group id), or None without one.

    Raises:
        MedTextSegError: not an object of case -> string or integer, or a case the dataset does not have.
    """
    path = layout.root / GROUPS_FILE
    if not path.is_file():
        return None
    groups = read_json(path, expect_object=True)
    for case, group in groups.items():
        if case not in layout.cases:
            raise MedTextSegError(f"{path}: unknown case {case!r} (no image files in imagesTr)")
        if type(group) not in (str, int):
            raise MedTextSegError(f"{path}: case {case!r} has group {json.dumps(group)}; give each case a string "
                                  "or integer group id (a patient, a source volume)")
    return {case: str(group) for case, group in groups.items()}


def _writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def folds_file(layout: DatasetLayout, cache_dir: str | Path | None = None) -> Path:
    """Where a dataset's ``splits_final.json`` is (or is written): the dataset folder, else, when that cannot be
    written and holds none, the user's cache under a name of the dataset."""
    own = layout.root / FOLDS_FILE
    if own.is_file() or _writable(layout.root):
        return own
    resolved = str(layout.root.expanduser().resolve())
    user = Path(cache_dir) if cache_dir is not None else Path(
        os.environ.get("MEDTEXTSEG_CACHE", Path.home() / ".cache" / "medtextseg"))
    return user / "folds" / f"{layout.root.name}-{hashlib.sha1(resolved.encode()).hexdigest()[:8]}" / FOLDS_FILE


def _check_folds(path: Path, folds_read: object, layout: DatasetLayout, folds: int) -> list[dict[str, list[str]]]:
    """A ``splits_final.json`` as read, checked: a list of ``folds`` objects with ``train`` and ``val`` lists of
    known cases of the pool, no case on both sides of a fold."""
    if not isinstance(folds_read, list) or not all(
            isinstance(f, dict) and all(isinstance(f.get(side), list) for side in ("train", "val"))
            for f in folds_read):
        raise MedTextSegError(f"{path}: must be a list of folds {{\"train\": [case ids], \"val\": [case ids]}} "
                              f"(nnU-Net's splits_final.json), got {json_type(folds_read)}")
    if len(folds_read) != folds:
        raise MedTextSegError(f"{path}: holds {len(folds_read)} folds but data.folds={folds}; set "
                              f"data.folds={len(folds_read)}, or delete the file to draw {folds} new folds")
    other = {case: split for split, members in layout.splits.items() if split not in POOL_SPLITS for case in members}
    pool = set(fold_pool(layout))
    for number, fold in enumerate(folds_read):
        for side in ("train", "val"):
            for case in fold[side]:
                if case not in layout.cases:
                    raise MedTextSegError(f"{path}: fold {number} {side} names unknown case {case!r}")
                if case in other:
                    raise MedTextSegError(f"{path}: fold {number} {side} names case {case!r} of the {other[case]!r} "
                                          "split; folds are drawn from the train and val splits only, so that the "
                                          "test cases stay unseen")
                if case not in pool:
                    raise MedTextSegError(f"{path}: fold {number} {side} names case {case!r}, which no split of "
                                          "splits.json lists; add it to the train or val split")
        shared = sorted(set(fold["train"]) & set(fold["val"]))
        if shared:
            raise MedTextSegError(f"{path}: fold {number} trains and validates on case {shared[0]!r}; keep each "
                                  "case on one side of a fold")
    return [{"train": list(f["train"]), "val": list(f["val"])} for f in folds_read]


def dataset_folds(layout: DatasetLayout, folds: int = 5, seed: int = 12345,
                  cache_dir: str | Path | None = None) -> tuple[list[dict[str, list[str]]], Path]:
    """The dataset's folds and the file that holds them: ``splits_final.json`` replayed when it exists (checked),
    else drawn by :func:`make_folds` from the pool (grouped by ``case_groups.json`` when there is one) and
    written atomically.

    Raises:
        MedTextSegError: a malformed file, one with another number of folds, one naming a test or unknown case, or
            a pool too small for ``folds``.
    """
    path = folds_file(layout, cache_dir)
    if path.is_file():
        return _check_folds(path, read_json(path), layout, folds), path
    made = make_folds(fold_pool(layout), folds, seed, read_groups(layout))
    # two fold runs starting together draw the same folds: whichever rename lands last writes the same bytes
    write_text_atomic(path, json.dumps(made, indent=1) + "\n")
    return made, path


def apply_fold(layout: DatasetLayout, data: DataConfig) -> DatasetLayout:
    """``layout`` as the run ``data`` describes sees it: unchanged without ``data.fold``; else a copy whose
    ``train`` split is the pool minus fold ``data.fold`` and whose ``val`` split is that fold (the other splits
    as they were).

    Raises:
        MedTextSegError: as :func:`dataset_folds`.
    """
    if data.fold is None:
        return layout
    folds, _ = dataset_folds(layout, data.folds, data.fold_seed, data.cache_dir)
    chosen = folds[data.fold]
    return replace(layout, splits={**layout.splits, "train": list(chosen["train"]), "val": list(chosen["val"])})


def describe_fold(layout: DatasetLayout, data: DataConfig) -> str:
    """One line: which fold a run trains and where its cases are listed, e.g. ``fold 2 of 5: 38 training and 10
    validation cases (DATA/splits_final.json); the test split (12 cases) untouched``."""
    folds, path = dataset_folds(layout, data.folds, data.fold_seed, data.cache_dir)
    chosen = folds[data.fold]
    others = "".join(f"; the {name} split ({len(members)} case{'s' * (len(members) != 1)}) untouched"
                     for name, members in layout.splits.items() if name not in POOL_SPLITS)
    return (f"fold {data.fold} of {data.folds}: {len(chosen['train'])} training and {len(chosen['val'])} validation "
            f"cases ({path}){others}")


def held_out_layout(layout: DatasetLayout, trained: Sequence[DataConfig], split: str) -> DatasetLayout:
    """The layout to score ``split`` of, for a model trained as ``trained`` says (one data config per member of
    an ensemble): a split outside the pool as it is; the pool's splits with the members' common fold applied
    (``val`` = the fold they all held out).

    Raises:
        MedTextSegError: ``split`` is ``train`` or ``val`` of an ensemble whose members trained on different folds
            (every case of the pool trained some member: nothing there is held out).
    """
    if split not in POOL_SPLITS:
        return layout
    folds = {(d.fold, d.folds) if d.fold is not None else None for d in trained}
    if len(folds) > 1:
        listed = ", ".join(sorted(str(f[0]) if f else "none" for f in folds))
        raise MedTextSegError(f"the models trained on different folds ({listed}) of the train and val splits, so "
                              f"no case of the {split!r} split is held out from all of them; evaluate the ensemble "
                              "on the test split, or each run on its own fold with --out-of-fold")
    return apply_fold(layout, trained[0])


__all__ = ["FOLDS_FILE", "GROUPS_FILE", "POOL_SPLITS", "apply_fold", "dataset_folds", "describe_fold", "fold_pool",
           "folds_file", "held_out_layout", "make_folds", "read_groups"]

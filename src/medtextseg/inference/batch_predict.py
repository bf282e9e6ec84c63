"""Prediction over many cases with one model load: one folder per case, one index per run, resumable.

Layout of an output folder ``OUT``::

    OUT/predictions.json               the index: one record per mask (below)
    OUT/{case}/{slug}.nii.gz           the mask of one prompt, on exactly the case's grid
    OUT/{case}/{slug}.probability.nii.gz, {slug}.uncertainty.nii.gz   with --probabilities, --uncertainty
    OUT/{case}/label-map.nii.gz, label-map.json   with --combined: the case's label map and its legend
    OUT/{case}/case.json               the case's own records (marks the folder as written by predict)

``slug`` is the prompt in lower-case letters, digits and ``_`` (:func:`prompt_slug`), made unique within a case
by ``_2``, ``_3``; masks keep the ending of the case's first channel file (``.nii.gz`` for a DICOM series).

Each record of the index holds ``case``, ``prompt``, ``file`` (relative to ``OUT``), ``voxels``, ``volume_mm3``,
``model_run``, ``checkpoint``, ``checkpoint_sha256``, ``threshold``, ``mirror_axes``, ``refiner``,
``medtextseg_version`` and ``inputs`` (the case's channel files, absolute); with ``combined``, also ``label`` (the
prompt's value in the label map), ``label_map`` and ``legend`` (relative to ``OUT``;
:mod:`medtextseg.inference.label_map`). An ensemble's records also hold ``members`` (each member's checkpoint and
its SHA-256; ``model_run``, ``checkpoint`` and ``checkpoint_sha256`` are the first member's).

Every case is written into a hidden temporary folder beside its final one, then swapped in: a rerun with fewer
prompts leaves no stale file, a killed run leaves no half-written case, and another case's folder is never
touched. The index is rewritten (atomically) after each case, so ``resume=True`` (``--continue``) skips exactly
the cases recorded as done with the same inputs, prompts, model, settings and files present. A second run into
the same ``OUT`` while one writes stops at once (:mod:`medtextseg.utils.folder_lock`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtextseg.data.io import NIFTI_ENDINGS, is_dicom_series
from medtextseg.inference.case_inputs import CaseInput, check_channels
from medtextseg.inference.ensemble import ModelArgument, load_predictor
from medtextseg.inference.label_map import LABEL_MAP_NAME, LEGEND_NAME, LabelMapBuilder
from medtextseg.inference.predictor import Predictor
from medtextseg.utils.atomic import swap_folder_in, write_text_atomic
from medtextseg.utils.errors import MedTextSegError, refuse_output_over_inputs
from medtextseg.utils.folder_lock import folder_lock
from medtextseg.utils.json_files import read_json

INDEX_FILE = "predictions.json"
CASE_FILE = "case.json"
INDEX_FORMAT = "medtextseg-predictions/1"
SLUG_CHARACTERS = 60
# hidden folders of a case being written or replaced (removed by the next run if a kill left them)
PARTIAL_PREFIX, REPLACED_PREFIX = ".partial-", ".replaced-"


def prompt_slug(prompt: str) -> str:
    """A stable, filesystem-safe name for a prompt: lower-case ASCII letters, digits and ``_``.

    Accents are dropped, every other run of characters becomes one ``_``; a slug longer than 60 characters is cut
    and ends with 8 hex digits of the prompt's SHA-1, so two long prompts that share a beginning still differ.

    >>> prompt_slug("The lesion in the LEFT PZ (index)")
    'the_lesion_in_the_left_pz_index'
    >>> prompt_slug("Ödem ≥ 2 cm")
    'odem_2_cm'
    >>> prompt_slug("!!")
    'prompt'
    """
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_") or "prompt"
    if len(slug) > SLUG_CHARACTERS:
        digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]
        slug = f"{slug[: SLUG_CHARACTERS - 9].rstrip('_')}_{digest}"
    return slug


def unique_slugs(prompts: Sequence[str]) -> list[str]:
    """One slug per prompt, unique within the list: a repeated slug gets ``_2``, ``_3``, ... in prompt order.

    >>> unique_slugs(["the gland", "The gland!", "the_gland_2"])
    ['the_gland', 'the_gland_2', 'the_gland_2_2']
    """
    taken: set[str] = set()
    slugs = []
    for prompt in prompts:
        base = slug = prompt_slug(prompt)
        number = 1
        while slug in taken:
            number += 1
            slug = f"{base}_{number}"
        taken.add(slug)
        slugs.append(slug)
    return slugs


def output_ending(image: Path) -> str:
    """The ending of a case's outputs: its first channel file's (``.nii.gz``, ``.mha``, ...); NIfTI for DICOM."""
    if is_dicom_series(image):
        return ".nii.gz"
    name = image.name.lower()
    return next((e for e in NIFTI_ENDINGS[::-1] if name.endswith(e)), "".join(image.suffixes) or ".nii.gz")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class CaseOutputs:
    """The files a case's prediction writes, relative to ``OUT`` (POSIX), one entry per prompt; the case's label
    map and legend (or None)."""

    masks: list[str]
    probabilities: list[str | None]
    uncertainties: list[str | None]
    label_map: str | None = None
    legend: str | None = None

    def files(self) -> list[str]:
        return [name for names in (self.masks, self.probabilities, self.uncertainties, [self.label_map, self.legend])
                for name in names if name]


def case_outputs(case: CaseInput, probabilities: bool, uncertainty: bool, combined: bool = False) -> CaseOutputs:
    """Where each prompt's mask (and maps) of ``case`` go: ``{case}/{slug}{ending}``; with ``combined`` the label
    map ``{case}/label-map{ending}`` and ``{case}/label-map.json`` (no slug has a hyphen: no clash)."""
    ending = output_ending(case.images[0])
    slugs = unique_slugs(case.prompts)
    return CaseOutputs([f"{case.case}/{s}{ending}" for s in slugs],
                       [f"{case.case}/{s}.probability{ending}" if probabilities else None for s in slugs],
                       [f"{case.case}/{s}.uncertainty{ending}" if uncertainty else None for s in slugs],
                       f"{case.case}/{LABEL_MAP_NAME}{ending}" if combined else None,
                       f"{case.case}/{LEGEND_NAME}" if combined else None)


@dataclass
class BatchSummary:
    """What a run did: the cases predicted and skipped (``resume``), the masks written and the index."""

    predicted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    masks: int = 0
    index: Path = Path(INDEX_FILE)

    def line(self) -> str:
        skipped = f", {len(self.skipped)} skipped (already done)" if self.skipped else ""
        return f"predicted {len(self.predicted)} case(s), {self.masks} mask(s){skipped}; index {self.index}"


def read_index(out: Path) -> list[dict[str, Any]]:
    """The mask records of ``OUT/predictions.json`` (empty when there is none yet).

    Raises:
        MedTextSegError: the file is not an index ``predict`` wrote (invalid JSON, another format).
    """
    path = out / INDEX_FILE
    if not path.exists():
        return []
    index = read_json(path)
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or not isinstance(index.get("masks"), list):
        raise MedTextSegError(f"{path}: not an index medtextseg predict wrote; choose another --out or move it")
    return index["masks"]


def _write_index(out: Path, records: list[dict[str, Any]]) -> None:
    write_text_atomic(out / INDEX_FILE, json.dumps({"format": INDEX_FORMAT, "masks": records}, indent=1))


def _check_out(out: Path, cases: Sequence[CaseInput], planned: list[Path]) -> list[dict[str, Any]]:
    """Every check of the output folder, before anything is written; returns the index's records so far."""
    inputs = [image for case in cases for image in case.images]
    refuse_output_over_inputs(out, inputs, [*planned, out / INDEX_FILE])
    if out.exists() and not out.is_dir():
        raise MedTextSegError(f"--out {out}: is a file; give a folder for the case folders and {INDEX_FILE}")
    records = read_index(out)
    for case in cases:
        folder = out / case.case
        if folder.exists() and not (folder / CASE_FILE).is_file():
            raise MedTextSegError(f"--out {out}: {folder} exists and was not written by predict (no {CASE_FILE}); "
                                  "it would be replaced: choose another --out or move it")
    return records


def _is_done(records: list[dict[str, Any]], expected: dict[str, Any], prompts: Sequence[str], out: Path,
             outputs: CaseOutputs) -> bool:
    """True when ``records`` (one case's) answer ``prompts`` with the ``expected`` settings and their files exist."""
    if [r.get("prompt") for r in records] != list(prompts):
        return False
    for record, mask, probability, uncertainty in zip(records, outputs.masks, outputs.probabilities,
                                                       outputs.uncertainties, strict=True):
        if any(record.get(key) != value for key, value in expected.items()):
            return False
        files = {"file": mask, "probability": probability, "uncertainty": uncertainty,
                 "label_map": outputs.label_map, "legend": outputs.legend}
        if any(record.get(key) != value for key, value in files.items()):
            return False
        if not all((out / name).is_file() for name in files.values() if name is not None):
            return False
    return True


def _remove_leftovers(out: Path) -> None:
    """Hidden folders a killed run left while writing or replacing a case."""
    if out.is_dir():
        for entry in out.iterdir():
            if entry.is_dir() and entry.name.startswith((PARTIAL_PREFIX, REPLACED_PREFIX)):
                shutil.rmtree(entry, ignore_errors=True)


def _umask_mode() -> int:
    """The mode a folder made by ``mkdir`` gets under the process's umask (0o755 under umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def predict_cases(model: Predictor | ModelArgument, cases: Sequence[CaseInput], out: str | Path, *,
                  probabilities: bool = False, uncertainty: bool = False, combined: bool = False,
                  resume: bool = False,
                  progress: bool = False, device: str | None = None, refiner: bool | None = None,
                  mirror_axes: list[int] | str | None = None, threshold: float | None = None,
                  inference: Sequence[str] = (), window_progress: bool | None = None) -> BatchSummary:
    """Segment every case's prompts with one model load, into ``OUT/{case}/`` plus the index ``OUT/predictions.json``.

    Before anything is written (or the model is loaded), the output folder is checked against every input
    (``refuse_output_over_inputs``) and against case folders ``predict`` did not write; then, with the model
    loaded, every case's channel count and grid. A case that fails later stops the run with its name; the cases
    done before it stay recorded, and ``resume`` goes on from there.

    Args:
        model: a loaded Predictor, or a run folder or checkpoint file, or several (an ensemble,
            :mod:`medtextseg.inference.ensemble`); then ``device``, ``refiner``, ``mirror_axes`` and ``threshold``
            are passed to it.
        cases: the cases, each with its prompts (:func:`~medtextseg.inference.case_inputs.requested_cases`).
        out: the output folder (created).
        probabilities: also write each prompt's probability map, float32 in [0, 1].
        uncertainty: also write each prompt's uncertainty map, float32 in [0, 1].
        combined: also write each case's label map and legend (:mod:`medtextseg.inference.label_map`).
        resume: skip the cases the index records as done with the same inputs, prompts, checkpoint digest,
            threshold, test-time augmentation, refiner and map kinds, whose files all exist.
        progress: show a bar over cases on stderr.
        inference: ``inference.KEY=VALUE`` settings for the model (:meth:`Predictor.set_inference`), e.g.
            ``inference.sw_batch_size=4``.
        window_progress: a bar over each case's windows and prompts (``Predictor.progress``; None: when stderr
            is a terminal).

    Returns:
        The cases predicted and skipped and the number of masks written.

    Raises:
        MedTextSegError: an output folder the checks refuse, a case whose channels do not fit the model (one
            line naming the case), a case that cannot be predicted (its name, then the reason).
    """
    from tqdm import tqdm

    from medtextseg import __version__

    out = Path(out)
    if not cases:
        raise MedTextSegError("no cases to predict")
    layouts = {case.case: case_outputs(case, probabilities, uncertainty, combined) for case in cases}
    planned = [out / name for layout in layouts.values() for name in layout.files()]
    records = _check_out(out, cases, planned)
    predictor = model if isinstance(model, Predictor) else load_predictor(model, device, refiner, mirror_axes,
                                                                          threshold)
    if inference:
        predictor.set_inference(inference)
    if window_progress is not None:
        predictor.progress = window_progress
    for case in cases:
        try:
            check_channels(case, predictor.config.image_channels, predictor.channel_names)
            predictor.check_inputs(list(case.images))
        except MedTextSegError as error:
            message = str(error)
            raise MedTextSegError(message if message.startswith("case ") else
                                  f"case {case.case!r} ({case.source}): {message}") from None
    expected = {"model_run": str(predictor.checkpoint.parent.resolve()),
                "checkpoint": str(predictor.checkpoint.resolve()),
                "checkpoint_sha256": file_sha256(predictor.checkpoint),
                "threshold": predictor.config.inference.threshold,
                "mirror_axes": list(predictor.config.inference.mirror_axes),
                "refiner": predictor.config.inference.refiner,
                "medtextseg_version": __version__}
    if len(predictor.sources) > 1:  # an ensemble: a change in any member's weights is a change of model
        expected["members"] = [{"checkpoint": str(path.resolve()), "checkpoint_sha256": file_sha256(path)}
                               for path, _ in predictor.sources]
    summary = BatchSummary(index=out / INDEX_FILE)
    with folder_lock(out):  # one writer: a second predict into OUT stops at once
        out.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(out)
        by_case: dict[str, list[dict[str, Any]]] = {}
        for record in records:  # the index keeps its order; a case predicted again keeps its place
            by_case.setdefault(str(record.get("case")), []).append(record)
        bar = tqdm(total=len(cases), desc="predict", unit="case", file=sys.stderr, disable=not progress)
        try:
            for case in cases:
                bar.set_postfix_str(case.case, refresh=False)
                settings = {**expected, "inputs": [str(p.resolve()) for p in case.images]}
                layout = layouts[case.case]
                if resume and _is_done(by_case.get(case.case, []), settings, case.prompts, out, layout):
                    summary.skipped.append(case.case)
                else:
                    by_case[case.case] = _predict_case(predictor, case, out, layout, settings, uncertainty)
                    # records of case folders since removed by hand describe nothing: dropped
                    _write_index(out, [r for name, rs in by_case.items() if (out / name).is_dir() for r in rs])
                    summary.predicted.append(case.case)
                    summary.masks += len(by_case[case.case])
                bar.update()
        finally:
            bar.close()
    return summary


def _predict_case(predictor: Predictor, case: CaseInput, out: Path, layout: CaseOutputs,
                  expected: dict[str, Any], uncertainty: bool) -> list[dict[str, Any]]:
    """Predict one case into a hidden folder, swap it in as ``OUT/{case}``; return its index records."""
    partial = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{case.case}-", dir=out))
    partial.chmod(_umask_mode())  # mkdtemp's folder is owner-only; a case folder is readable as mkdir makes it
    try:
        try:  # the answers come one at a time: each is written and let go before the next
            answers = predictor.iter_predict(list(case.images), list(case.prompts), uncertainty=uncertainty)
        except MedTextSegError as error:
            raise MedTextSegError(f"case {case.case!r} ({case.source}): {error}") from None
        labels = LabelMapBuilder(len(case.prompts)) if layout.label_map and layout.legend else None
        records = []
        for result, mask, probability, uncertainty_map in zip(answers, layout.masks, layout.probabilities,
                                                              layout.uncertainties, strict=True):
            local = partial / Path(mask).name
            result.save(local, probability and partial / Path(probability).name,
                        uncertainty_map and partial / Path(uncertainty_map).name)
            record = {"case": case.case, "prompt": result.prompt, "file": mask, "voxels": result.voxels,
                      "volume_mm3": round(result.volume_ml * 1000.0, 3), **expected}
            if probability:
                record["probability"] = probability
            if uncertainty_map:
                record |= {"uncertainty": uncertainty_map, "uncertainty_kind": result.uncertainty_kind}
            if labels is not None:
                labels.add(result, Path(mask).name)
            records.append(record)
        if labels is not None and layout.label_map and layout.legend:
            labels.write(partial / Path(layout.label_map).name, partial / Path(layout.legend).name)
            for label, record in enumerate(records, start=1):
                record |= {"label": label, "label_map": layout.label_map, "legend": layout.legend}
        write_text_atomic(partial / CASE_FILE, json.dumps(records, indent=1))
        swap_folder_in(partial, out / case.case, REPLACED_PREFIX)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return records

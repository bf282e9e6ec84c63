"""Write one of our datasets in the BiomedSegFM format (CVPR 2025 text-guided 3D segmentation challenge).

Not a converter (it registers nothing): the other direction of :mod:`.biomedsegfm`, run by ``medtextseg
export-biomedsegfm --src DATASET --dst OUT``. Output::

    OUT/class_prompts.json        {NAME: {"1": [texts], "2": [...], "instance_label": 0}}; an existing file keeps
                                  its other datasets, so several datasets can be exported into one folder
    OUT/NAME/{case}.npz           imgs (Z, Y, X), gts (Z, Y, X), spacing (x, y, z), medtextseg_affine (4 x 4)

``imgs``/``gts`` are our ``[X, Y, Z]`` voxels transposed to the challenge's (z, y, x) and ``spacing`` the voxel sizes
in (x, y, z), as SimpleITK's arrays and ``GetSpacing`` give them (see :mod:`.biomedsegfm`); a 2D dataset's
``X x Y x 1`` slices become (1, Y, X). Direction and origin have no place in the format: ``medtextseg_affine``, an
extra array that the challenge's loaders ignore, keeps the exact affine so that re-importing restores it.
``imgs`` keeps our intensities (float32) unless ``uint8``, which rescales each case to 0-255 as the challenge data
are (then the voxels are not kept). Only one channel is written (``channel``, default 0).

Prompt texts per label value: the phrasings (vocabulary templates x synonyms, canonical first) of the ``class``
whose prompt lines target exactly that value, then those lines' own texts; a value no such line names gets the
built-in wording of its label name. ``instance_label`` is 1 for a dataset imported from an instance-label
BiomedSegFM dataset (``dataset.json`` says so), and its one key ``"1"`` holds the class's texts. A class prompt
says the same for every case, so these lines cannot be written: lines without a ``class`` (free per-case texts,
such as PI-CAI's lesion descriptions), lines whose target is several values of a semantic map (regions: "kidney"
= 1 + 2) or a mask file; they are counted in the summary (``absent`` lines of a written class are implied).
Splits are not written (the format has none); cases without a label map are skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medtextseg.utils.errors import MedTextSegError

if TYPE_CHECKING:
    from medtextseg.data.layout import DatasetLayout

CLASS_PROMPTS_FILE = "class_prompts.json"


@dataclass
class ExportSummary:
    """What an export wrote: the dataset key, its folder, cases written and skipped (with why), and the number
    of prompt lines the format cannot hold."""

    name: str
    folder: Path
    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    prompts_not_written: int = 0
    channel_note: str = ""

    def line(self) -> str:
        text = f"{len(self.written)} cases of {self.name} written to {self.folder}"
        if self.channel_note:
            text += f" ({self.channel_note})"
        if self.prompts_not_written:
            text += f"; {self.prompts_not_written} prompt lines not expressible as class prompts"
        if self.skipped:
            text += f"; {len(self.skipped)} skipped: " + "; ".join(f"{c}: {r}" for c, r in self.skipped.items())
        return text


def _class_texts(layout: DatasetLayout, instance: bool) -> tuple[dict[int, list[str]], int]:
    """Label value -> prompt texts (see the module docstring), and the number of prompt lines left out."""
    from medtextseg.data.vocabulary import synonyms_for

    lines = [p for case in layout.cases.values() for p in case.prompts]
    value_of: dict[str, int] = {}  # class -> the value its lines target alone
    for prompt in lines:
        if prompt.class_name and isinstance(prompt.target, tuple) and (instance or len(prompt.target) == 1):
            value_of.setdefault(prompt.class_name, 1 if instance else prompt.target[0])
    texts: dict[int, list[str]] = {}
    left_out = 0
    for prompt in lines:
        value = value_of.get(prompt.class_name) if prompt.class_name else None
        expressible = isinstance(prompt.target, tuple) and (instance or len(prompt.target) <= 1)
        if value is None or not expressible or (prompt.target and not instance and prompt.target[0] != value):
            left_out += 1
            continue
        found = texts.setdefault(value, [])
        if layout.vocabulary is not None and prompt.class_name in layout.vocabulary:
            found += layout.vocabulary.phrasings(prompt.class_name)
        found.append(prompt.prompt)
    names = {value: name for name, value in layout.labels.items() if value != 0}
    if instance:  # labels {class}_1..N: the class is their common name
        texts.setdefault(1, list(synonyms_for(re.sub(r"_\d+$", "", names[min(names)]) if names else "lesion")))
    else:
        for value, name in names.items():
            texts.setdefault(value, list(synonyms_for(name)))
    return {value: list(dict.fromkeys(words)) for value, words in sorted(texts.items())}, left_out


def _uint8(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
    return np.round(scaled).astype(np.uint8)


def export_biomedsegfm(dataset_dir: str | Path, out_dir: str | Path, *, name: str | None = None, channel: int = 0,
                       uint8: bool = False) -> ExportSummary:
    """Write ``dataset_dir`` (our format) as BiomedSegFM npz files + class prompts JSON in ``out_dir``.

    Args:
        dataset_dir: one of our dataset folders (``docs/dataset_format.md``).
        out_dir: the output folder (created); ``class_prompts.json`` there is updated, not replaced.
        name: the dataset key and folder name (default: ``dataset.json`` ``name``, made file-name safe).
        channel: the image channel written as ``imgs``.
        uint8: rescale each case's intensities to 0-255 uint8 (as the challenge data), instead of keeping them.

    Returns:
        The :class:`ExportSummary`.

    Raises:
        MedTextSegError: an invalid dataset, a channel it does not have, or ``out_dir`` inside ``dataset_dir``.
    """
    from medtextseg.data.io import read_array, read_geometry
    from medtextseg.data.layout import load_dataset
    from medtextseg.utils.atomic import atomic_path, write_text_atomic
    from medtextseg.utils.json_files import read_json

    from .biomedsegfm import AFFINE_KEY, INSTANCE_KEY

    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    if out_dir.resolve() == dataset_dir.resolve() or dataset_dir.resolve() in out_dir.resolve().parents:
        raise MedTextSegError(f"--dst {out_dir}: must lie outside the dataset folder {dataset_dir}")
    layout = load_dataset(dataset_dir)
    if not 0 <= channel < len(layout.channel_names):
        raise MedTextSegError(f"--channel {channel}: the dataset has channels 0..{len(layout.channel_names) - 1} "
                              f"({', '.join(layout.channel_names)})")
    meta = read_json(dataset_dir / "dataset.json").get("medtextseg", {})
    instance = bool(meta.get("converter") == "biomedsegfm" and meta.get(INSTANCE_KEY))
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", name or read_json(dataset_dir / "dataset.json").get("name")
                 or dataset_dir.name)
    summary = ExportSummary(key, out_dir / key)
    if len(layout.channel_names) > 1:
        summary.channel_note = f"channel {channel} of {len(layout.channel_names)}: {layout.channel_names[channel]}"
    texts, summary.prompts_not_written = _class_texts(layout, instance)
    for case, record in layout.cases.items():
        if record.label_path is None:
            summary.skipped[case] = "no label map (gts is required)"
            continue
        geometry = read_geometry(record.image_paths[channel])
        image = np.asarray(read_array(record.image_paths[channel]), dtype=np.float32)
        label = np.asarray(read_array(record.label_path))
        image, label = image.reshape(geometry.shape), label.reshape(geometry.shape)  # 2D: keep the X x Y x 1 grid
        label = label.astype(np.uint16 if label.max(initial=0) > 255 else np.uint8)
        arrays = {"imgs": (_uint8(image) if uint8 else image).transpose(2, 1, 0), "gts": label.transpose(2, 1, 0),
                  "spacing": np.asarray(geometry.spacing, dtype=float), AFFINE_KEY: geometry.affine}
        with atomic_path(summary.folder / f"{case}.npz") as tmp:
            np.savez_compressed(tmp, **arrays)
        summary.written.append(case)
    path = out_dir / CLASS_PROMPTS_FILE
    everything: dict[str, Any] = read_json(path, expect_object=True) if path.is_file() else {}
    everything[key] = {**{str(v): words for v, words in texts.items()}, INSTANCE_KEY: int(instance)}
    write_text_atomic(path, json.dumps(everything, indent=2) + "\n")
    return summary


__all__ = ["CLASS_PROMPTS_FILE", "ExportSummary", "export_biomedsegfm"]

"""Sparse annotations: label maps where only some slices are annotated (barely-supervised training, RADA).

The format is nnU-Net's: ``dataset.json`` declares a label named ``ignore`` (the highest value), and every voxel
nobody annotated holds it. A labelled volume of the RADA protocol is annotated on one sagittal, one coronal and
one axial slice (axes 0, 1, 2 of the RAS voxel grid); an unlabelled volume is ``ignore`` everywhere. Users bring
their own sparse labels in this form; :func:`sparsify_dataset` (``medtextseg sparsify``) makes one from a
densely labelled dataset. Which slices are annotated is read back from the ignore mask itself
(:func:`annotated_slices`), after the volume is reoriented, so no side file can go out of step with it.

Planes are named by the axis they cut, in RAS voxel order: ``S`` sagittal (axis 0), ``C`` coronal (axis 1),
``A`` axial (axis 2).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from medtextseg.utils.atomic import write_text_atomic
from medtextseg.utils.errors import MedTextSegError, refuse_same_folder
from medtextseg.utils.planes import PLANE_AXES, PLANE_NAMES, plane_axes

IGNORE_LABEL = "ignore"
SUMMARY_FILE = "sparse_annotations.json"


def annotated_slices(ignore_mask: np.ndarray) -> dict[int, list[int]]:
    """Which slices of a volume are fully annotated.

    Args:
        ignore_mask: [X, Y, Z] bool, True where the voxel is not annotated.

    Returns:
        axis -> indices of the slices (along that axis) without an ignored voxel; an axis with none is left
        out. A densely labelled volume (no ignored voxel) gives every slice of every axis.
    """
    annotated = ~np.asarray(ignore_mask, dtype=bool)
    found = {}
    for axis in range(annotated.ndim):
        others = tuple(a for a in range(annotated.ndim) if a != axis)
        full = np.flatnonzero(annotated.all(axis=others))
        if len(full):
            found[axis] = full.tolist()
    return found


def choose_slice(foreground: np.ndarray, axis: int, rule: str) -> int:
    """The slice to annotate along ``axis``: ``middle``, or ``largest`` (most foreground voxels; the middle one
    when there is no foreground)."""
    if rule == "middle" or not foreground.any():
        return foreground.shape[axis] // 2
    others = tuple(a for a in range(foreground.ndim) if a != axis)
    return int(np.argmax(foreground.sum(axis=others)))


def sparsify_label(label: np.ndarray, ignore_value: int, planes: str, rule: str) -> tuple[np.ndarray, dict]:
    """Keep only one slice per plane of ``label`` [X, Y, Z] (RAS voxel order); the rest becomes ``ignore_value``.

    Returns the sparse label and ``{plane name: slice index}``.
    """
    keep = np.zeros(label.shape, dtype=bool)
    kept = {}
    for letter in planes.upper():
        axis = PLANE_AXES[letter]
        index = choose_slice(label > 0, axis, rule)
        keep[(slice(None),) * axis + (index,)] = True
        kept[PLANE_NAMES[letter]] = index
    return np.where(keep, label, ignore_value).astype(label.dtype), kept


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another device, or links not supported
        shutil.copy2(source, destination)


def _written_by_sparsify(folder: Path) -> bool:
    """Whether ``folder`` is a copy this module wrote: its summary beside a dataset.json naming its source."""
    try:
        meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        return (folder / SUMMARY_FILE).is_file() and "source" in meta["medtextseg"]["sparse"]
    except (OSError, ValueError, TypeError, KeyError):
        return False


def _refuse_destination(src: Path, dst: Path, overwrite: bool) -> None:
    """Raise unless ``dst`` (and its ``.partial`` work folder) may be written, and, when it exists, deleted:
    never the source, a folder holding it or inside it, a file, or a folder that is not an earlier output."""
    source = src.resolve()
    for path in (dst, dst.with_name(dst.name + ".partial")):  # the work folder is deleted and renamed too
        where = f"--dst {dst}" if path == dst else f"--dst {dst} (its work folder {path.name})"
        if path.resolve() == source or path.resolve() in source.parents:
            raise MedTextSegError(f"{where}: is --src {src} or a folder holding it; replacing it would delete the "
                                  "source: choose a folder outside it")
        if source in path.resolve().parents:
            raise MedTextSegError(f"{where}: lies inside --src {src}; the copy would change the source: "
                                  "choose a folder outside it")
    if dst.exists() and not dst.is_dir():
        raise MedTextSegError(f"--dst {dst}: is a file; --dst names the folder to write the sparse copy into")
    if dst.exists() and not overwrite:
        raise MedTextSegError(f"{dst}: already exists; use --overwrite to replace it")
    if dst.exists() and not _written_by_sparsify(dst):
        raise MedTextSegError(f"--dst {dst}: not a folder sparsify wrote (no {SUMMARY_FILE} beside a dataset.json "
                              "naming its source); --overwrite replaces only those: choose another --dst or remove "
                              "it yourself")


def sparsify_dataset(src: str | Path, dst: str | Path, fraction: float = 0.1, planes: str = "SCA",
                     rule: str = "largest", seed: int = 0, overwrite: bool = False) -> dict:
    """Write a copy of the dataset ``src`` whose training volumes are barely labelled.

    ``fraction`` of the train split (at least one volume, drawn with ``seed``) keeps one slice per plane of
    ``planes``; the other training volumes become unlabelled (all ``ignore``). Validation and test labels stay
    dense, so evaluation is unchanged. Slices are chosen in the RAS voxel grid (``rule``: ``largest`` foreground
    or ``middle``) and the label files keep their own geometry. Images are hard links to the source's where the
    file system allows (edit neither in place), copies otherwise. Writes ``sparse_annotations.json`` saying what
    was kept per case; returns it.

    Raises:
        MedTextSegError: ``dst`` exists (without ``overwrite``; with it, when sparsify did not write it), is or
            holds or lies inside ``src``, a bad option, or a 2D dataset.
    """
    import nibabel as nib

    from medtextseg.data.layout import load_dataset

    src, dst = Path(src), Path(dst)
    if not 0 < fraction <= 1:
        raise MedTextSegError(f"--fraction must be in (0, 1], got {fraction}")
    if rule not in ("largest", "middle"):
        raise MedTextSegError(f"--slice must be 'largest' or 'middle', got {rule!r}")
    plane_axes(planes, "--planes")
    layout = load_dataset(src)
    if layout.spatial_dims != 3:
        raise MedTextSegError(f"{src}: sparse slice annotation needs a 3D dataset")
    if IGNORE_LABEL in layout.labels:
        raise MedTextSegError(f"{src}: already sparse (dataset.json declares an {IGNORE_LABEL!r} label)")
    refuse_same_folder(src, dst)
    _refuse_destination(src, dst, overwrite)
    if dst.exists():
        shutil.rmtree(dst)
    train = [c for c in layout.splits.get("train", []) if layout.cases[c].label_path is not None]
    if not train:
        raise MedTextSegError(f"{src}: the train split has no labelled case")
    count = max(1, round(fraction * len(train)))
    labelled = set(np.random.default_rng(seed).choice(train, size=count, replace=False).tolist())
    ignore_value = max(layout.labels.values()) + 1
    partial = dst.with_name(dst.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    # images are unchanged: hard links where the file system allows (no second copy of a large dataset)
    shutil.copytree(src, partial, ignore=shutil.ignore_patterns("labelsTr", ".convert", ".medtextseg_cache"),
                    copy_function=_link_or_copy)
    (partial / "labelsTr").mkdir()
    summary: dict[str, dict | str] = {}
    for case_id, case in layout.cases.items():
        if case.label_path is None:
            continue
        target = partial / "labelsTr" / case.label_path.name
        if case_id not in train:
            shutil.copy2(case.label_path, target)
            summary[case_id] = "dense"
            continue
        image = nib.load(str(case.label_path))
        label = np.asarray(image.dataobj).astype(np.int64)
        if case_id in labelled:
            # choose the slices in RAS order (what the trainer sees), store them in the file's own order
            file_order = nib.orientations.io_orientation(image.affine)
            sparse_ras, kept = sparsify_label(nib.orientations.apply_orientation(label, file_order), ignore_value,
                                              planes, rule)
            back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), file_order)
            sparse = nib.orientations.apply_orientation(sparse_ras, back)
            summary[case_id] = kept
        else:
            sparse = np.full(label.shape, ignore_value, dtype=np.int64)
            summary[case_id] = "unlabelled"
        out = nib.Nifti1Image(sparse.astype(np.uint8 if ignore_value < 256 else np.uint16), image.affine,
                              header=image.header)
        out.set_data_dtype(np.uint8 if ignore_value < 256 else np.uint16)
        nib.save(out, str(target))
    meta = json.loads((src / "dataset.json").read_text(encoding="utf-8"))
    meta["labels"] = {**meta["labels"], IGNORE_LABEL: ignore_value}
    meta.setdefault("medtextseg", {})["sparse"] = {"source": str(src), "fraction": fraction, "planes": planes,
                                                   "slice": rule, "seed": seed, "labelled": sorted(labelled)}
    write_text_atomic(partial / "dataset.json", json.dumps(meta, indent=2) + "\n")
    write_text_atomic(partial / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
    partial.rename(dst)  # the folder appears complete or not at all
    return summary


__all__ = ["IGNORE_LABEL", "PLANE_AXES", "PLANE_NAMES", "annotated_slices", "choose_slice", "plane_axes",
           "sparsify_dataset", "sparsify_label"]

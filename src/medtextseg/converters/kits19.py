"""KiTS19 (2019 Kidney Tumor Segmentation Challenge) contrast CT -> kidney and kidney tumour prompts.

Source layout (https://github.com/neheller/kits19; the imaging is fetched by its ``starter_code/get_imaging.py``)::

    {src}/data/case_00000/imaging.nii.gz         the CT (Hounsfield units)
    {src}/data/case_00000/segmentation.nii.gz    0 background, 1 kidney, 2 tumour, on the same grid
    ...
    {src}/data/case_00209/...                    the 210 training cases
    {src}/data/case_00210/imaging.nii.gz         ... case_00299: the test cases, without segmentation
    {src}/data/kits.json                         clinical data (ignored)

``--src`` may be the repository (holding ``data/``) or its ``data`` folder.

Geometry: KiTS19 stores each volume slices first, ``[slice, row, column]`` (``(num_slices, 512, 512)``): the first
voxel axis is the axial one. The affine has no diagonal: its first column carries the slice thickness and points
along the patient's inferior-superior axis, the two others the pixel width along the in-plane axes (e.g.
``[[0, 0, -0.78, 0], [0, -0.78, 0, 0], [-3, 0, 0, 0], [0, 0, 0, 1]]``; the first release, of March 2019, had a
diagonal ``diag(slice thickness, pixel width, pixel width)`` instead). The conversion keeps shape, voxel order and
affine exactly as in the file: nothing is transposed or reoriented. With ``--spatial-dims 2`` the slices are
taken along that first axis (one case ``case_00000_z{k:03d}`` per axial slice, ``[row, column] x 1`` with the
slice's own affine), not along the third.

Output: one case per case folder (its name), channel ``CT``; label values as in the file (1 kidney, 2 tumour).
Prompts per case (class: target when present, else ``absent`` with ``[]``): ``kidney`` = ``[1, 2]`` (the organ
contains its tumour) and ``kidney_tumour`` = ``[2]``. ``dataset.json`` names value 1 ``kidney`` and 2
``kidney_tumour``.

Skipped with the reason, by case: a case without ``segmentation.nii.gz`` (the test cases 210-299), a case without
``imaging.nii.gz`` (the imaging not downloaded yet), an unreadable file, a segmentation off the image's grid or
with another value.

Options (``--option KEY=VALUE``, as for the ``nnunet`` converter): ``rename=OLD:NEW``, ``regions=NAME:V+V``,
``slices=foreground|all`` (2D), ``affine_tolerance=MM`` (0.001).

Example:
    >>> convert_kits19(Path("kits19"), Path("data/kits19"), spatial_dims=2)  # doctest: +SKIP
"""

from __future__ import annotations

import re
from pathlib import Path

from medtextseg.converters.nnunet import SourceCase, SourceDataset, register_labelled
from medtextseg.utils.errors import MedTextSegError

IMAGE_FILE = "imaging.nii.gz"
LABEL_FILE = "segmentation.nii.gz"
CASE_PATTERN = re.compile(r"case_(\d{5})")
FIRST_TEST_CASE = 210
CLASSES = {"kidney": (1, 2), "kidney_tumour": (2,)}
VALUE_NAMES = {1: "kidney", 2: "kidney_tumour"}
SLICE_AXIS = 0  # [slice, row, column]


def data_folder(src: Path) -> Path:
    """``src/data`` when it holds the case folders, else ``src`` itself.

    Raises:
        MedTextSegError: neither holds a ``case_XXXXX`` folder.
    """
    for folder in (src / "data", src):
        if folder.is_dir() and any(CASE_PATTERN.fullmatch(p.name) and p.is_dir() for p in folder.iterdir()):
            return folder
    raise MedTextSegError(f"{src}: no KiTS19 case folder found (expected data/case_00000/{IMAGE_FILE} and "
                          f"{LABEL_FILE}, or --src pointing at the data folder)")


def _case(folder: Path) -> SourceCase:
    image, label = folder / IMAGE_FILE, folder / LABEL_FILE
    number = int(CASE_PATTERN.fullmatch(folder.name).group(1))  # type: ignore[union-attr]
    problem = ""
    if not label.is_file():
        test = " (a KiTS19 test case: its segmentation was not published)" if number >= FIRST_TEST_CASE else ""
        problem = f"no {LABEL_FILE} in {folder.name}{test}"
    elif not image.is_file():
        problem = f"no {IMAGE_FILE} in {folder.name} (download the imaging with starter_code/get_imaging.py)"
    return SourceCase(folder.name, [image], label, problem)


def read_kits19_source(src: Path) -> SourceDataset:
    """The KiTS19 cases under ``src`` as a :class:`SourceDataset` (CT; kidney = 1 + 2, kidney tumour = 2; slices
    along the first voxel axis).

    Raises:
        MedTextSegError: no ``case_XXXXX`` folder.
    """
    folder = data_folder(src)
    cases = [_case(path) for path in sorted(folder.iterdir()) if path.is_dir() and CASE_PATTERN.fullmatch(path.name)]
    return SourceDataset("KiTS19", ["CT"], dict(CLASSES), [0, 1, 2], cases, value_names=dict(VALUE_NAMES),
                         slice_axis=SLICE_AXIS)


convert_kits19 = register_labelled(
    "kits19", "KiTS19 kidney CT (data/case_XXXXX/imaging.nii.gz + segmentation.nii.gz, slices first) -> kidney "
              "and kidney tumour prompts", read_kits19_source)


__all__ = ["convert_kits19", "data_folder", "read_kits19_source"]

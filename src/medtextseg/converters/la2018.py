"""2018 Atrial Segmentation Challenge (LA2018): LGE-MRI with the left atrial cavity -> left atrium prompts.

Source layout (the challenge's public release: 100 cases in ``Training Set``, 54 in ``Testing Set``, whose masks
were published after the challenge)::

    {src}/Training Set/{CASE_ID}/lgemri.nrrd    the 3D LGE-MRI (576 x 576 x 88 or 640 x 640 x 88, 0.625 mm)
    {src}/Training Set/{CASE_ID}/laendo.nrrd    the left atrial cavity, on the same grid: 0 background, 255 atrium
    {src}/Testing Set/{CASE_ID}/...

``--src`` may be the folder holding ``Training Set``/``Testing Set``, one of them, or any folder of case folders:
every folder under it that holds ``lgemri.nrrd`` (or ``laendo.nrrd``) is a case, named by the folder
(``0RZDK210BSMWAA6467LU``). Other files of a case folder (``lawall.nrrd``, a stray ``desktop.ini``) are ignored,
and so are hidden and ``__MACOSX`` folders. NRRD is read with SimpleITK: its LPS geometry becomes the RAS affine
of the output (:func:`medtextseg.data.sitk_reader.itk_to_ras_affine`); shape and voxel order are kept.

Output: one case per case folder, channel ``LGE-MRI``, label 1 = ``left_atrium`` (the mask's 255 becomes 1; a mask
already stored as 0/1 is read as is; any other value skips the case). Per case one prompt, ``"segment the left
atrium"`` (``anatomy``, target ``[1]``), or ``absent`` with target ``[]`` when the mask is empty; with
``--spatial-dims 2`` one case per axial slice (third voxel axis). Splits are drawn per case by a hash of its id
(the challenge's Training/Testing partition is not kept).

Skipped with the reason, by case: a folder without ``laendo.nrrd`` (no mask), or without ``lgemri.nrrd``; two case
folders of the same name; an unreadable file, a mask off the image's grid or with another value.

Options (``--option KEY=VALUE``, as for the ``nnunet`` converter): ``rename=left_atrium:NEW``,
``slices=foreground|all`` (2D), ``affine_tolerance=MM`` (0.001).

Example:
    >>> convert_la2018(Path("AtriaSeg2018"), Path("data/la2018"))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from medtextseg.converters.nnunet import SourceCase, SourceDataset, register_labelled
from medtextseg.utils.errors import MedTextSegError

IMAGE_FILE = "lgemri.nrrd"
MASK_FILE = "laendo.nrrd"
CLASS_NAME = "left_atrium"
MASK_VALUES = {0: 0, 1: 1, 255: 1}  # the release stores the cavity as 255; a 0/1 copy is accepted too


def _hidden(path: Path, src: Path) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in path.relative_to(src).parts)


def find_case_folders(src: Path) -> dict[str, list[Path]]:
    """Case id (folder name) -> the folders of that name under ``src`` holding ``lgemri.nrrd`` or ``laendo.nrrd``.

    Raises:
        MedTextSegError: no such folder (not an LA2018 release).
    """
    folders: dict[str, list[Path]] = {}
    found = {path.parent for name in (IMAGE_FILE, MASK_FILE) for path in src.rglob(name)
             if path.is_file() and not _hidden(path.parent, src)}
    for folder in sorted(found):
        folders.setdefault(folder.name, []).append(folder)
    if not folders:
        raise MedTextSegError(f"{src}: no LA2018 case folder found (expected 'Training Set/{{CASE_ID}}/{IMAGE_FILE}' "
                              f"and '{MASK_FILE}', or --src pointing at a folder of case folders)")
    return folders


def _case(src: Path, case: str, folders: list[Path]) -> SourceCase:
    folder = folders[0]
    where = folder.relative_to(src) if folder != src else Path(folder.name)
    image, mask = folder / IMAGE_FILE, folder / MASK_FILE
    problem = ""
    if len(folders) > 1:
        problem = "two case folders of this name: " + ", ".join(str(f.relative_to(src)) for f in folders)
    elif not image.is_file():
        problem = f"no {IMAGE_FILE} in {where}"
    elif not mask.is_file():
        problem = f"no {MASK_FILE} in {where} (no left atrium mask published for this case)"
    return SourceCase(case, [image], mask, problem, label_values=dict(MASK_VALUES))


def read_la2018_source(src: Path) -> SourceDataset:
    """The LA2018 cases under ``src`` as a :class:`SourceDataset` (one channel, class ``left_atrium`` = 1).

    Raises:
        MedTextSegError: no case folder under ``src``.
    """
    cases = [_case(src, case, folders) for case, folders in sorted(find_case_folders(src).items())]
    return SourceDataset("LA2018", ["LGE-MRI"], {CLASS_NAME: (1,)}, [0, 1], cases)


convert_la2018 = register_labelled(
    "la2018", "2018 Atrial Segmentation Challenge LGE-MRI ('Training Set/<case>/lgemri.nrrd' + laendo.nrrd, "
              "mask 0/255) -> left atrium prompts", read_la2018_source)


__all__ = ["convert_la2018", "find_case_folders", "read_la2018_source"]

"""The one error family users catch: every bad input raises ``MedTextSegError`` with a one-line message.

It subclasses ``ValueError`` so that generic callers that catch bad values keep working. The CLI prints
the message alone (no traceback) and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path


class MedTextSegError(ValueError):
    """Bad input (file, config field, prompt, ...). The message names the file or field and the rule."""


def printable(text: str) -> str:
    r"""``text`` with every character that is not printable written as its escape (``\x1b``, ``\n``,
    ``\u202e``): a message echoed to a terminal stays one line and cannot drive it (colours, cursor moves,
    text shown in another order), whatever file or folder name it quotes.

    >>> print(printable("ds\x1b[2J\n"))
    ds\x1b[2J\n
    """
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def refuse_same_folder(src: Path, dst: Path) -> None:
    """Raise when ``dst`` is ``src`` (a dataset written into its own source would be read back as input)."""
    if Path(src).resolve() == Path(dst).resolve():
        raise MedTextSegError(f"--dst {dst}: must differ from --src")


# folders of a dataset (nnU-Net raw layout) that hold its own files: predictions never go there
DATASET_DATA_FOLDERS = ("imagesTr", "imagesTs", "labelsTr", "labelsTs")


def refuse_output_over_inputs(out: Path, inputs: list[Path], outputs: list[Path] = ()) -> None:
    """Raise before anything is written when an output folder could overwrite or mix with the inputs.

    Refused: ``out`` holds one of ``inputs`` (anywhere below it, symbolic links resolved), ``out`` is a
    dataset folder (it has ``dataset.json``) or one of its data folders (``imagesTr``, ...), or one of the
    planned ``outputs`` already exists as the same file as an input (a hard link, or another path to it).
    """
    folder = Path(out).resolve()
    for path in inputs:
        resolved = Path(path).resolve()
        if resolved == folder or folder in resolved.parents:
            raise MedTextSegError(f"--out {out}: holds the input {path}; predictions written there could "
                                  "overwrite or mix with the inputs: choose an output folder of its own")
    if (folder / "dataset.json").is_file() or (folder.name in DATASET_DATA_FOLDERS
                                                and (folder.parent / "dataset.json").is_file()):
        raise MedTextSegError(f"--out {out}: is a dataset's own folder; predictions written there would be "
                              "read back as data: choose an output folder outside the dataset")
    for planned in outputs:
        for path in inputs:
            if Path(planned).exists() and Path(path).exists() and Path(planned).samefile(path):
                raise MedTextSegError(f"--out {out}: {planned} is the input {path} (the same file); "
                                      "choose an output folder of its own")

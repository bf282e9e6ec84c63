"""Tables shipped beside a source's images: a CSV file, or the first worksheet of an Excel ``.xlsx`` workbook.

Read with the standard library only (``csv``; ``zipfile`` and ``xml.etree`` for ``.xlsx``): no spreadsheet package is
a dependency of medtextseg, and these tables (Duke's ``Annotation_Boxes.xlsx``, PI-CAI's ``marksheet.csv``, a
patients CSV) need cell texts only: no formulas, styles or dates. A number comes back as Excel stores it (``"6"``,
``"0.5"``), a blank cell as ``""``.

Example:
    >>> read_records(Path("picai_labels/clinical_information/marksheet.csv"))[0]["case_csPCa"]  # doctest: +SKIP
    'NO'
"""

from __future__ import annotations

import csv
import re
import zipfile
from pathlib import Path
from xml.etree import ElementTree

from medtextseg.utils.errors import MedTextSegError

_SHEET_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"


def _column_index(letters: str) -> int:
    """``A`` -> 0, ``Z`` -> 25, ``AA`` -> 26."""
    index = 0
    for letter in letters:
        index = index * 26 + ord(letter) - ord("A") + 1
    return index - 1


def _xlsx_rows(path: Path) -> list[list[str]]:
    """The cell texts of the first worksheet of an ``.xlsx`` file, row by row."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        shared = []
        if "xl/sharedStrings.xml" in names:
            root = ElementTree.fromstring(archive.read("xl/sharedStrings.xml"))
            shared = ["".join(t.text or "" for t in item.iter(f"{_SHEET_NS}t")) for item in root.iter(f"{_SHEET_NS}si")]
        sheets = sorted(n for n in names if re.fullmatch(r"xl/worksheets/sheet\d+\.xml", n))
        if not sheets:
            raise MedTextSegError(f"{path}: no worksheet found")
        sheet = "xl/worksheets/sheet1.xml" if "xl/worksheets/sheet1.xml" in sheets else sheets[0]
        root = ElementTree.fromstring(archive.read(sheet))
    rows = []
    for row in root.iter(f"{_SHEET_NS}row"):
        cells: dict[int, str] = {}
        for cell in row.iter(f"{_SHEET_NS}c"):
            letters = re.match(r"[A-Z]+", cell.get("r", ""))
            column = _column_index(letters.group(0)) if letters else len(cells)
            kind, value = cell.get("t"), cell.find(f"{_SHEET_NS}v")
            if kind == "s" and value is not None:
                text = shared[int(value.text)]
            elif kind == "inlineStr":
                text = "".join(t.text or "" for t in cell.iter(f"{_SHEET_NS}t"))
            else:
                text = value.text if value is not None and value.text else ""
            cells[column] = text
        rows.append([cells.get(c, "") for c in range(max(cells) + 1)] if cells else [])
    return rows


def read_rows(path: Path) -> list[list[str]]:
    """The cell texts of a table, row by row: ``.xlsx`` (its first worksheet), else CSV (UTF-8, a BOM allowed).
    An empty row is ``[]``.

    Raises:
        MedTextSegError: the file cannot be read (missing, not a workbook, broken XML, not UTF-8), naming it.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".xlsx":
            return _xlsx_rows(path)
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error, zipfile.BadZipFile, ElementTree.ParseError, IndexError,
            ValueError) as error:
        if isinstance(error, MedTextSegError):
            raise
        raise MedTextSegError(f"{path}: cannot read ({type(error).__name__}: {error})") from None


def read_records(path: Path) -> list[dict[str, str]]:
    """The rows after the first of a table (:func:`read_rows`) as column name -> cell text, the names from the first
    row (a cell missing at the end of a row is ``""``, one beyond the names is dropped, an empty row skipped).

    Raises:
        MedTextSegError: the file cannot be read.
    """
    rows = read_rows(path)
    if not rows:
        return []
    header = rows[0]
    return [dict(zip(header, row + [""] * (len(header) - len(row)), strict=False)) for row in rows[1:] if row]


__all__ = ["read_records", "read_rows"]

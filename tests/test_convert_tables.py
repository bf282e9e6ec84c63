"""The table reader of the converters: CSV and the first worksheet of an .xlsx workbook (standard library only)."""

from __future__ import annotations

import zipfile

import pytest

from medtextseg.converters.tables import read_records, read_rows
from medtextseg.utils.errors import MedTextSegError

NS = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'


def write_workbook(path, sheets: dict[str, str], shared: list[str] | None = None) -> None:
    """A workbook of hand-written worksheet XML (``sheetData`` contents), with optional shared strings."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        if shared is not None:
            archive.writestr("xl/sharedStrings.xml", f"<sst {NS}>" + "".join(f"<si><t>{s}</t></si>" for s in shared)
                             + "</sst>")
        for name, data in sheets.items():
            archive.writestr(f"xl/worksheets/{name}.xml", f"<worksheet {NS}><sheetData>{data}</sheetData></worksheet>")


def test_xlsx_shared_and_inline_strings_numbers_and_gaps(tmp_path):
    path = tmp_path / "boxes.xlsx"
    write_workbook(path, {
        "sheet2": '<row r="1"><c r="A1" t="inlineStr"><is><t>other sheet</t></is></c></row>',
        "sheet1": ('<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c>'
                   '<c r="C1" t="inlineStr"><is><t>Start Row</t></is></c></row>'
                   '<row r="2"><c r="A2" t="s"><v>2</v></c><c r="C2"><v>6</v></c></row>'
                   '<row r="3"/>'
                   '<row r="4"><c r="AA4"><v>0.5</v></c></row>')},
        shared=["Patient ID", "Note", "Breast_MRI_001"])
    rows = read_rows(path)
    assert rows[:3] == [["Patient ID", "Note", "Start Row"], ["Breast_MRI_001", "", "6"], []]
    assert len(rows[3]) == 27 and rows[3][26] == "0.5" and set(rows[3][:26]) == {""}  # column AA is the 27th
    assert read_records(path) == [{"Patient ID": "Breast_MRI_001", "Note": "", "Start Row": "6"},
                                  {"Patient ID": "", "Note": "", "Start Row": ""}]


def test_csv_with_a_bom_short_and_long_rows(tmp_path):
    path = tmp_path / "marksheet.csv"
    path.write_bytes("\ufeffpatient_id,study_id,case_csPCa\n10000,1000000,YES,extra\n\n10001,1000001\n".encode())
    assert read_rows(path) == [["patient_id", "study_id", "case_csPCa"], ["10000", "1000000", "YES", "extra"], [],
                               ["10001", "1000001"]]
    assert read_records(path) == [{"patient_id": "10000", "study_id": "1000000", "case_csPCa": "YES"},
                                  {"patient_id": "10001", "study_id": "1000001", "case_csPCa": ""}]
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert read_rows(empty) == [] and read_records(empty) == []


@pytest.mark.parametrize(("name", "content", "message"), [
    ("missing.csv", None, r"missing.csv: cannot read \(FileNotFoundError"),
    ("latin.csv", "Patient ID\nBr\xe9ast\n".encode("latin-1"), r"latin.csv: cannot read \(UnicodeDecodeError"),
    ("boxes.xlsx", b"not a zip", r"boxes.xlsx: cannot read \(BadZipFile"),
])
def test_unreadable_files_are_named_in_one_line(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(MedTextSegError, match=message):
        read_rows(tmp_path / name)


def test_a_workbook_without_a_worksheet_or_with_broken_xml_is_named(tmp_path):
    write_workbook(tmp_path / "none.xlsx", {})
    with pytest.raises(MedTextSegError, match=r"none.xlsx: no worksheet found"):
        read_rows(tmp_path / "none.xlsx")
    write_workbook(tmp_path / "broken.xlsx", {"sheet1": "<row><c"})
    with pytest.raises(MedTextSegError, match=r"broken.xlsx: cannot read \(ParseError"):
        read_rows(tmp_path / "broken.xlsx")

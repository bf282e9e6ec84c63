"""The Duke-Breast-Cancer-MRI converter on a tiny mimic of the TCIA download: DCE series named as the collection
names them (``ax dyn pre`` / ``1st pass``, ``ax 3d dyn`` + ``Ph1/ax 3d dyn``, one ``ax dyn`` series holding two
phases), Slicer ``.seg.nrrd`` breast and dense/vessel masks (one cropped, one with two layers and swapped labels),
MAMA-MIA expert tumour masks (one saved in RAS-canonical voxel order) and ``Annotation_Boxes.xlsx``."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from converter_cli import cli_convert, printed
from medtextseg.converters.duke_breast import convert_duke_breast, dce_phase, read_boxes
from medtextseg.data.layout import load_dataset, verify_dataset
from medtextseg.utils.errors import MedTextSegError
from test_dicom_series import series_affine, write_series

SHAPE = (16, 14, 6)  # [X, Y, Z] (512 x 512 x ~160 in the collection)
ORIGIN, SPACING = (-100.0, -80.0, -40.0), (1.0, 1.2, 2.0)  # LPS mm; row along +x (patient left), column along +y
AFFINE = series_affine(ORIGIN, SPACING)
RIGHT = (slice(2, 5), slice(5, 9), slice(1, 4))  # small i: small LPS x, the patient's right
LEFT = (slice(11, 14), slice(4, 7), slice(2, 5))
STUDY = "01-01-1990-NA-MRI BREAST BILATERAL W  WO-97538"


def phase_image(patient: int, phase: int) -> np.ndarray:
    return ((np.arange(np.prod(SHAPE)) * 3 + 101 * phase + 17 * patient) % 1009).astype(np.int16).reshape(SHAPE)


def box_mask(*regions: tuple[slice, ...]) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    for region in regions:
        mask[region] = 1
    return mask


def breast_region() -> np.ndarray:
    return box_mask((slice(1, 15), slice(2, 12), slice(0, 6)))


def dense_region() -> np.ndarray:
    return box_mask((slice(5, 8), slice(3, 6), slice(2, 4)))


def vessel_region() -> np.ndarray:
    return box_mask((slice(9, 11), slice(9, 11), slice(1, 5)))


def series(root: Path, patient: int, folder: str, description: str, phase: int, **kwargs) -> None:
    write_series(root / f"Breast_MRI_{patient:03d}" / STUDY / folder, phase_image(patient, phase), origin=ORIGIN,
                 spacing=SPACING, description=description, series_number=int(folder.split(".")[0]),
                 name=lambda k: f"1-{k + 1:02d}.dcm", **kwargs)


def write_nrrd(path: Path, layers: list[np.ndarray], segments: list[tuple[str, int, int]],
               origin: tuple[float, ...] = ORIGIN) -> None:
    """A Slicer ``.seg.nrrd``: gzip, LPS space directions, ``Segment{i}_*`` fields, layers as a ``list`` axis."""
    shape = layers[0].shape
    directions = " ".join(f"({','.join(str(SPACING[a] if b == a else 0) for b in range(3))})" for a in range(3))
    four = len(layers) > 1
    header = ["NRRD0004", "type: unsigned char", f"dimension: {4 if four else 3}", "space: left-posterior-superior",
              f"sizes: {f'{len(layers)} ' if four else ''}{' '.join(map(str, shape))}",
              f"space directions: {'none ' if four else ''}{directions}",
              f"kinds: {'list ' if four else ''}domain domain domain", "encoding: gzip",
              f"space origin: ({','.join(map(str, origin))})"]
    for index, (name, layer, value) in enumerate(segments):
        header += [f"Segment{index}_Name:={name}", f"Segment{index}_Layer:={layer}",
                   f"Segment{index}_LabelValue:={value}"]
    data = np.stack([layer.transpose(2, 1, 0) for layer in layers], axis=-1)  # x fastest after the list axis
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(header) + "\n\n").encode() + gzip.compress(np.ascontiguousarray(data).tobytes()))


def write_xlsx(path: Path, rows: list[list]) -> None:
    """A minimal workbook: header texts as shared strings, numbers as values."""
    strings = [str(cell) for row in rows for cell in row if isinstance(cell, str)]
    cells = []
    for r, row in enumerate(rows, start=1):
        xml = "".join(f'<c r="{chr(65 + c)}{r}" t="s"><v>{strings.index(v)}</v></c>' if isinstance(v, str)
                      else f'<c r="{chr(65 + c)}{r}"><v>{v}</v></c>' for c, v in enumerate(row))
        cells.append(f'<row r="{r}">{xml}</row>')
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", f"<workbook {ns}><sheets><sheet name='Sheet1'/></sheets></workbook>")
        archive.writestr("xl/sharedStrings.xml", f"<sst {ns}>" + "".join(f"<si><t>{s}</t></si>" for s in strings)
                         + "</sst>")
        archive.writestr("xl/worksheets/sheet1.xml", f"<worksheet {ns}><sheetData>{''.join(cells)}</sheetData>"
                                                     "</worksheet>")


def make_download(root: Path) -> Path:
    src = root / "duke"
    images = src / "manifest-1654812109500" / "Duke-Breast-Cancer-MRI"
    # 001: the usual names; InstanceNumber runs head to feet (the boxes count slices that way)
    descending = {"tags": lambda k, ds: setattr(ds, "InstanceNumber", SHAPE[2] - k)}
    series(images, 1, "2.000000-ax t1-11111", "ax t1", 9)
    series(images, 1, "3.000000-ax dyn pre-93877", "ax dyn pre", 0, **descending)
    series(images, 1, "4.000000-ax dyn 1st pass-12345", "ax dyn 1st pass", 1, **descending)
    series(images, 1, "5.000000-ax dyn 2nd pass-22345", "ax dyn 2nd pass", 2, **descending)
    # 002: GE names; the first post-contrast phase has no description (its folder names it) and runs right to left
    # and feet to head (rows along -x, so the normal is -z): the same voxels on another grid
    series(images, 2, "6.000000-ax 3d dyn-44444", "ax 3d dyn", 0)
    flipped = phase_image(2, 1)[::-1, :, ::-1]
    write_series(images / "Breast_MRI_002" / STUDY / "7.000000-Ph1ax 3d dyn-55555", flipped,
                 origin=(ORIGIN[0] + SPACING[0] * (SHAPE[0] - 1), ORIGIN[1], ORIGIN[2] + SPACING[2] * (SHAPE[2] - 1)),
                 spacing=SPACING, row=(-1.0, 0, 0), column=(0, 1.0, 0), description="")
    # 003: one "ax dyn" series holding the pre- and first post-contrast phases at the same positions
    both = np.concatenate([phase_image(3, 1), phase_image(3, 0)], axis=2)

    def two_phases(k: int, ds) -> None:
        ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + SPACING[2] * (k % SHAPE[2])]
        ds.TemporalPositionIdentifier = 2 - k // SHAPE[2]

    write_series(images / "Breast_MRI_003" / STUDY / "8.000000-ax dyn-66666", both, origin=ORIGIN, spacing=SPACING,
                 description="ax dyn", tags=two_phases)
    series(images, 4, "3.000000-ax dyn pre-77777", "ax dyn pre", 0)  # no post-contrast phase
    series(images, 5, "3.000000-ax dyn pre-88888", "ax dyn pre", 0)  # no mask at all
    series(images, 5, "4.000000-ax dyn 1st pass-88889", "ax dyn 1st pass", 1)
    series(images, 6, "3.000000-ax dyn pre-99999", "ax dyn pre", 0)  # a tumour outside its box
    series(images, 6, "4.000000-ax dyn 1st pass-99998", "ax dyn 1st pass", 1)
    # masks
    masks = src / "Segmentation_Masks_NRRD" / "Breast_MRI_001"
    cropped = breast_region()[:, :, 1:5]  # Slicer may store only the segment's extent
    write_nrrd(masks / "Segmentation_Breast_MRI_001_Breast.seg.nrrd", [cropped], [("Breast", 0, 1)],
               origin=(ORIGIN[0], ORIGIN[1], ORIGIN[2] + SPACING[2]))
    write_nrrd(masks / "Segmentation_Breast_MRI_001_Dense_and_Vessels.seg.nrrd",
               [vessel_region() * 3, dense_region() * 3], [("Dense", 1, 3), ("Vessels", 0, 3)])
    expert = src / "MAMA-MIA" / "segmentations" / "expert"
    expert.mkdir(parents=True)
    nib.save(nib.as_closest_canonical(nib.Nifti1Image(box_mask(RIGHT), AFFINE)), expert / "duke_001.nii.gz")
    for patient, regions in ((2, (RIGHT, LEFT)), (3, (LEFT,)), (4, (LEFT,)), (6, (LEFT,))):
        nib.save(nib.Nifti1Image(box_mask(*regions), AFFINE), expert / f"DUKE_{patient:03d}.nii.gz")
    write_xlsx(src / "Annotation_Boxes.xlsx", [
        ["Patient ID", "Start Row", "End Row", "Start Column", "End Column", "Start Slice", "End Slice"],
        ["Breast_MRI_001", 6, 9, 3, 5, 3, 5],  # rows = j + 1, columns = i + 1, slices in InstanceNumber order
        ["Breast_MRI_006", 1, 3, 1, 3, 1, 2]])
    return src


@pytest.fixture(scope="module")
def download(tmp_path_factory) -> Path:
    return make_download(tmp_path_factory.mktemp("duke"))


@pytest.fixture(scope="module")
def converted(download, tmp_path_factory):
    dst = tmp_path_factory.mktemp("out") / "duke"
    return dst, cli_convert("duke_breast", download, dst)


def _array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_phases_become_channels_on_the_pre_contrast_grid(converted):
    dst, result = converted
    assert result.exit_code == 0, result.output
    assert f"3 cases in {dst} (3 converted, 0 already done); 3 skipped" in printed(result)
    layout = load_dataset(dst)
    verify_dataset(layout)
    assert layout.channel_names == ["DCE_pre", "DCE_post1"]
    for patient in (1, 2, 3):
        record = layout.cases[f"Breast_MRI_{patient:03d}"]
        for phase, path in enumerate(record.image_paths):
            written = nib.load(str(path))
            np.testing.assert_allclose(written.affine, AFFINE, atol=1e-5)
            # 002's first phase runs the other way: resampled onto the pre-contrast grid, voxel for voxel
            np.testing.assert_allclose(np.asarray(written.dataobj), phase_image(patient, phase), atol=1e-3)


def test_masks_land_on_the_grid_by_their_world_geometry(converted):
    dst, _ = converted
    layout = load_dataset(dst)
    assert layout.labels == {"background": 0, "breast": 1, "fibroglandular_tissue": 2, "breast_vessels": 3,
                             "breast_tumour_right": 4, "breast_tumour_left": 5}
    expected = np.zeros(SHAPE, dtype=np.int64)
    expected[:, :, 1:5][breast_region()[:, :, 1:5] > 0] = 1  # the cropped extent only
    expected[dense_region() > 0] = 2  # layers and labels as the header says, not as the file order suggests
    expected[vessel_region() > 0] = 3
    expected[RIGHT] = 4  # the RAS-canonical expert mask, back on the DICOM grid
    label = nib.load(str(layout.cases["Breast_MRI_001"].label_path))
    np.testing.assert_allclose(label.affine, AFFINE, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(label.dataobj), expected)
    both = _array(layout.cases["Breast_MRI_002"].label_path)
    assert (both[RIGHT] == 4).all() and (both[LEFT] == 5).all() and set(np.unique(both)) == {0, 4, 5}


def test_tumour_prompts_name_the_side_and_only_given_masks_are_asked_for(converted):
    dst, _ = converted
    layout = load_dataset(dst)
    prompts = {p.class_name: p for p in layout.cases["Breast_MRI_001"].prompts}
    assert sorted(prompts) == ["breast", "breast_tumour", "breast_tumour_left", "breast_tumour_right",
                               "breast_vessels", "fibroglandular_tissue"]
    right, left = prompts["breast_tumour_right"], prompts["breast_tumour_left"]
    assert (right.prompt, right.target, right.kind) == ("segment the right breast tumour", (4,), "single")
    assert (left.prompt, left.target, left.kind) == ("segment the left breast tumour", (), "absent")
    assert right.meta["side"] == "right" and right.meta["mentioned"] == ["side"] and right.meta["n_lesions"] == 1
    assert right.meta["size"] == "small" and right.meta["longest_mm"] == pytest.approx(6.0)  # 3 slices of 2 mm
    assert right.meta["box"] == {"i": [2, 4], "j": [5, 8], "k": [1, 3]} and right.meta["box_overlap"] == 1.0
    assert (prompts["breast"].target, prompts["breast"].kind) == ((1, 2, 3, 4), "anatomy")
    assert prompts["fibroglandular_tissue"].target == (2,) and prompts["breast_vessels"].target == (3,)
    assert (prompts["breast_tumour"].prompt, prompts["breast_tumour"].target) == ("segment the breast tumour", (4,))
    two = {p.class_name: (p.target, p.kind) for p in layout.cases["Breast_MRI_002"].prompts}
    assert two == {"breast_tumour": ((4, 5), "all"), "breast_tumour_right": ((4,), "single"),
                   "breast_tumour_left": ((5,), "single")}  # no breast or FGT mask: not asked for
    assert layout.vocabulary.synonyms["fibroglandular_tissue"][0] == "fibroglandular tissue"


def test_bad_patients_are_skipped_by_name(converted):
    dst, _ = converted
    skipped = json.loads((dst / "conversion_summary.json").read_text())["skipped"]
    assert sorted(skipped) == ["Breast_MRI_004", "Breast_MRI_005", "Breast_MRI_006"]
    assert skipped["Breast_MRI_004"] == ("no DCE post 1 series (phases found: pre); lower --option post_phases")
    assert skipped["Breast_MRI_005"].startswith("no mask: no tumour mask duke_NNN.nii.gz")
    assert skipped["Breast_MRI_006"].startswith("DUKE_006.nii.gz: no tumour voxel inside the Annotation_Boxes box "
                                                "(i [0, 2], j [0, 2], k [0, 1])")


def test_a_second_run_with_other_options_is_refused(converted, download):
    dst, _ = converted
    result = cli_convert("duke_breast", download, dst, post_phases=2)
    assert result.exit_code == 2 and "other duke_breast options (post_phases differ)" in result.output


def test_tumour_slices_in_2d_and_more_phases(download, tmp_path):
    summary = convert_duke_breast(download, tmp_path / "flat", spatial_dims=2, box_check="false")
    assert summary.converted == [*(f"Breast_MRI_001_z{k:03d}" for k in (1, 2, 3)),
                                 *(f"Breast_MRI_002_z{k:03d}" for k in (1, 2, 3, 4)),
                                 *(f"Breast_MRI_003_z{k:03d}" for k in (2, 3, 4)),
                                 *(f"Breast_MRI_006_z{k:03d}" for k in (2, 3, 4))]
    layout = load_dataset(tmp_path / "flat")
    written = nib.load(str(layout.cases["Breast_MRI_002_z004"].image_paths[0]))
    assert written.shape == (*SHAPE[:2], 1)
    np.testing.assert_allclose(written.affine[:3, 3], AFFINE[:3, :] @ [0, 0, 4, 1], atol=1e-5)
    slice_prompts = {p.class_name: (p.target, p.kind) for p in layout.cases["Breast_MRI_002_z004"].prompts}
    assert slice_prompts["breast_tumour_right"] == ((), "absent")  # the right tumour ends at slice 3
    assert slice_prompts["breast_tumour_left"] == ((5,), "single")
    more = convert_duke_breast(download, tmp_path / "more", post_phases=2)
    assert more.converted == ["Breast_MRI_001"]
    assert more.skipped["Breast_MRI_002"] == "no DCE post 2 series (phases found: pre, post 1); lower --option " \
                                             "post_phases"


@pytest.mark.parametrize(("description", "phase"), [
    ("ax dyn pre", 0), ("ax dyn 1st pass", 1), ("ax 3d dyn 4th pass", 4), ("Ph2/ax 3d dyn MP", 2),
    ("Ph3ax 3d dyn", 3), ("ax 3d dyn", 0), ("Ax Vibrant MultiPhase", 0), ("Ph1/Ax Vibrant MultiPhase", 1),
    ("1st ax dyn", 1), ("t1_fl3d_tra_dynVIEWS_spair_ pre", 0), ("t1_fl3d_tra_dynVIEWS_spair_2nd pass", 2),
    ("ax dyn 1st pas", 1), ("ax t1 +c", None), ("ax 3d t1 bilateral", None), ("ax t1 tse", None),
])
def test_series_descriptions_of_the_collection(description, phase):
    assert dce_phase(description) == phase


def test_boxes_read_alike_from_csv_and_xlsx_and_bad_options_are_named(download, tmp_path):
    (tmp_path / "boxes.csv").write_text("Patient ID,Start Row,End Row,Start Column,End Column,Start Slice,End Slice\n"
                                        "Breast_MRI_001,6,9,3,5,3,5\nBreast_MRI_006,1,3,1,3,1,2\n")
    assert read_boxes(tmp_path / "boxes.csv") == read_boxes(download / "Annotation_Boxes.xlsx") == {
        "Breast_MRI_001": (6, 9, 3, 5, 3, 5), "Breast_MRI_006": (1, 3, 1, 3, 1, 2)}
    with pytest.raises(MedTextSegError, match=r"--option post_phase: unknown option \(did you mean 'post_phases'"):
        convert_duke_breast(download, tmp_path / "out", post_phase=2)
    with pytest.raises(MedTextSegError, match=r"option post_phases must be an integer from 1 to 4, got 5"):
        convert_duke_breast(download, tmp_path / "out", post_phases=5)
    with pytest.raises(MedTextSegError, match=r"no Breast_MRI_NNN patient folders"):
        convert_duke_breast(tmp_path, tmp_path / "out")

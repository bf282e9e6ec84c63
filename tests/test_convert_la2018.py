"""The LA2018 converter on a tiny mimic of the public release: ``Training Set``/``Testing Set`` case folders with
``lgemri.nrrd`` and a 0/255 ``laendo.nrrd`` (one written by SimpleITK with LPS space directions and an origin, one
with the bare ``spacings`` header of older NRRD writers), converted through the command line and read back."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from converter_cli import convert_made_source, printed
from medtextseg.converters.la2018 import convert_la2018
from medtextseg.data.layout import load_dataset

SHAPE = (16, 16, 6)  # [X, Y, Z] as in the files (576 x 576 x 88 in the release)
SPACING = 0.625
ITK_CASE, BARE_CASE, EMPTY_CASE = "0RZDK210BSMWAA6467LU", "1D7CUD1955YZPGK8XHJX", "2BC9RG86MVJ2XOX7UAJH"
NO_MASK, ODD_VALUE, CORRUPT = "4URSJYI2QUH1T5S5PP47", "57SGZ4Z1HG6K3ZXCIWQW", "6B0WFVH8PXWPPJJK1LNL"
ITK_ORIGIN = (-30.25, 12.5, -7.75)  # LPS millimetres
ATRIUM = (slice(4, 11), slice(5, 12), slice(1, 5))


def mri(seed: int) -> np.ndarray:
    """An 8-bit LGE-MRI, every voxel different from its neighbours."""
    return ((np.arange(np.prod(SHAPE)) * 7 + seed * 13) % 251).astype(np.uint8).reshape(SHAPE)


def mask(value: int = 255) -> np.ndarray:
    out = np.zeros(SHAPE, np.uint8)
    out[ATRIUM] = value
    return out


def write_itk(array: np.ndarray, path: Path) -> None:
    """An NRRD as SimpleITK writes it: ``space: left-posterior-superior``, space directions and origin."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing((SPACING,) * 3)
    image.SetOrigin(ITK_ORIGIN)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def write_bare(array: np.ndarray, path: Path) -> None:
    """An NRRD with only ``spacings`` (no space, directions or origin), gzip-encoded, x fastest."""
    header = (f"NRRD0004\ntype: unsigned char\ndimension: 3\nsizes: {' '.join(map(str, array.shape))}\n"
              f"spacings: {SPACING} {SPACING} {SPACING}\nencoding: gzip\n\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + gzip.compress(np.ascontiguousarray(array.transpose(2, 1, 0)).tobytes()))


def make_release(root: Path) -> Path:
    src = root / "AtriaSeg2018"
    train, test = src / "Training Set", src / "Testing Set"
    write_itk(mri(0), train / ITK_CASE / "lgemri.nrrd")
    write_itk(mask(), train / ITK_CASE / "laendo.nrrd")
    write_itk(mask(), train / ITK_CASE / "lawall.nrrd")  # other files of a case folder are ignored
    (train / ITK_CASE / "desktop.ini").write_text("[.ShellClassInfo]\n")
    write_bare(mri(1), train / BARE_CASE / "lgemri.nrrd")
    write_bare(mask(), train / BARE_CASE / "laendo.nrrd")
    write_bare(mri(2), test / EMPTY_CASE / "lgemri.nrrd")
    write_bare(mask(0), test / EMPTY_CASE / "laendo.nrrd")  # no atrium at all: an absent prompt
    write_bare(mri(3), test / NO_MASK / "lgemri.nrrd")
    write_bare(mri(4), train / ODD_VALUE / "lgemri.nrrd")
    write_bare(mask(128), train / ODD_VALUE / "laendo.nrrd")
    write_bare(mri(5), train / CORRUPT / "lgemri.nrrd")
    (train / CORRUPT / "laendo.nrrd").write_bytes(b"NRRD0004\ntype: garbage\n\n")
    (src / "__MACOSX" / "Training Set" / ITK_CASE).mkdir(parents=True)
    (src / "__MACOSX" / "Training Set" / ITK_CASE / "lgemri.nrrd").write_bytes(b"\x00\x05\x16\x07")
    return src


def ras_affine(origin_lps: tuple[float, float, float]) -> np.ndarray:
    """Identity direction in ITK's LPS world -> RAS: x and y negated (written by hand, not by the code under test)."""
    return np.array([[-SPACING, 0, 0, -origin_lps[0]], [0, -SPACING, 0, -origin_lps[1]],
                     [0, 0, SPACING, origin_lps[2]], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return convert_made_source(tmp_path_factory, "la2018", make_release)


def test_cases_keep_their_grid_and_the_mask_becomes_label_one(converted):
    _, dst, result = converted
    assert result.exit_code == 0, result.output
    assert f"3 cases in {dst} (3 converted, 0 already done); 3 skipped" in printed(result)
    layout = load_dataset(dst)
    assert sorted(layout.cases) == [ITK_CASE, BARE_CASE, EMPTY_CASE]
    assert layout.channel_names == ["LGE-MRI"] and layout.labels == {"background": 0, "left_atrium": 1}
    for case, seed, affine in [(ITK_CASE, 0, ras_affine(ITK_ORIGIN)), (BARE_CASE, 1, ras_affine((0.0, 0.0, 0.0))),
                               (EMPTY_CASE, 2, ras_affine((0.0, 0.0, 0.0)))]:
        record = layout.cases[case]
        image, label = nib.load(str(record.image_paths[0])), nib.load(str(record.label_path))
        assert image.shape == SHAPE and label.shape == SHAPE
        assert np.allclose(image.affine, affine, atol=1e-5) and np.allclose(label.affine, affine, atol=1e-5), case
        assert np.array_equal(np.asarray(image.dataobj), mri(seed))
    assert np.array_equal(np.asarray(nib.load(str(layout.cases[ITK_CASE].label_path)).dataobj), mask(1))
    assert not np.asarray(nib.load(str(layout.cases[EMPTY_CASE].label_path)).dataobj).any()
    assert sorted(c for split in layout.splits.values() for c in split) == sorted(layout.cases)


def test_one_left_atrium_prompt_per_case_absent_when_the_mask_is_empty(converted):
    _, dst, _ = converted
    layout = load_dataset(dst)
    [present] = layout.cases[BARE_CASE].prompts
    assert (present.prompt, present.target, present.kind, present.class_name) == (
        "segment the left atrium", (1,), "anatomy", "left_atrium")
    [absent] = layout.cases[EMPTY_CASE].prompts
    assert (absent.prompt, absent.target, absent.kind) == ("segment the left atrium", (), "absent")
    assert layout.vocabulary.synonyms["left_atrium"][:2] == ("left atrium", "left atrial cavity")


def test_bad_case_folders_are_skipped_by_name(converted):
    _, dst, _ = converted
    skipped = json.loads((dst / "conversion_summary.json").read_text())["skipped"]
    assert sorted(skipped) == [NO_MASK, ODD_VALUE, CORRUPT]
    assert skipped[NO_MASK] == (f"no laendo.nrrd in Testing Set/{NO_MASK} (no left atrium mask published for "
                                "this case)")
    assert skipped[ODD_VALUE] == "laendo.nrrd: label value 128 is not declared (this layout's label values: 0, 1, 255)"
    assert f"{CORRUPT}/laendo.nrrd: cannot read image header" in skipped[CORRUPT]


def test_src_may_be_a_folder_of_case_folders_and_slices_keep_their_place(converted, tmp_path):
    src, _, _ = converted
    summary = convert_la2018(src / "Training Set", tmp_path / "train2d", spatial_dims=2)
    depth = ATRIUM[2].stop - ATRIUM[2].start  # the slices holding the atrium
    assert summary.converted == [f"{case}_z{k:03d}" for case in (ITK_CASE, BARE_CASE) for k in range(1, 5)]
    assert sorted(summary.skipped) == [ODD_VALUE, CORRUPT] and len(summary.converted) == 2 * depth
    written = nib.load(str(tmp_path / "train2d" / "imagesTr" / f"{ITK_CASE}_z003_0000.nii.gz"))
    assert written.shape == (16, 16, 1)
    assert np.allclose(written.affine, ras_affine(ITK_ORIGIN) @ np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3], [0, 0, 0, 1]]), atol=1e-5)
    assert np.array_equal(np.asarray(written.dataobj)[:, :, 0], mri(0)[:, :, 3])
    one = convert_la2018(src / "Training Set" / ITK_CASE, tmp_path / "one")  # a single case folder
    assert one.converted == [ITK_CASE]

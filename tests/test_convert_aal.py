"""The Colin27 + AAL converter: on a tiny mimic of the mricron templates folder, then on the real files.

The mimic has the real layout and formats (``ch2.nii.gz``, ``aal.nii.gz``, ``aal.nii.txt`` with CRLF lines
``INDEX NAME CODE``) on a 2 mm grid stored **LAS** (x flipped, unlike the real RAS files), with ellipsoid
structures at MNI-like places, so that a converter ignoring the source affine would put left on the right.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medtextseg.converters.aal import DEFAULT_SRC, STRUCTURES, convert_aal, read_region_names, resolve_structures
from medtextseg.utils.errors import MedTextSegError

# AAL index, name, centre (world mm, RAS), radii (mm)
MIMIC_REGIONS = [
    (1, "Precentral_L", (-30, -6, 30), (6, 6, 6)),
    (2, "Precentral_R", (30, -6, 30), (6, 6, 6)),
    (71, "Caudate_L", (-16, 11, 9), (5, 9, 8)),
    (72, "Caudate_R", (16, 11, 9), (5, 9, 8)),
    (73, "Putamen_L", (-26, 4, 2), (5, 10, 8)),
    (74, "Putamen_R", (26, 4, 2), (5, 10, 8)),
    (77, "Thalamus_L", (-14, -18, 8), (6, 9, 7)),
    (78, "Thalamus_R", (14, -18, 8), (6, 9, 7)),
    (112, "Vermis_4_5", (0, -45, -15), (5, 7, 7)),
]
MIMIC_STRUCTURES = "caudate,putamen,thalamus,Vermis_4_5"
EXPECTED_LABELS = {"background": 0, "caudate_left": 1, "caudate_right": 2, "putamen_left": 3, "putamen_right": 4,
                   "thalamus_left": 5, "thalamus_right": 6, "vermis_4_5": 7}
NO_AUGMENTATION = {"rotate_deg": 0, "scale": 0, "translate_mm": 0, "elastic_mm": 0, "bias": 0, "gamma": "1,1",
                   "noise": 0}


def _world(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World coordinates [3, *shape] of every voxel centre."""
    index = np.indices(shape).reshape(len(shape), -1).astype(float)
    return (affine[:3, :3] @ index + affine[:3, 3:4]).reshape(3, *shape)


def make_mimic_templates(root: Path) -> Path:
    """A tiny mricron templates folder: 40 x 48 x 36 voxels of 2 mm, stored LAS."""
    import nibabel as nib

    folder = root / "mricron_templates"
    folder.mkdir()
    shape = (40, 48, 36)
    affine = np.array([[-2.0, 0, 0, 39.0], [0, 2.0, 0, -57.0], [0, 0, 2.0, -31.0], [0, 0, 0, 1]])  # LAS
    x, y, z = _world(shape, affine)
    atlas = np.zeros(shape, dtype=np.uint8)
    for index, _, centre, radii in MIMIC_REGIONS:
        inside = sum(((c - c0) / r) ** 2 for c, c0, r in zip((x, y, z), centre, radii, strict=True)) <= 1.0
        atlas[inside] = index
    head = (x / 38) ** 2 + ((y + 10) / 46) ** 2 + ((z - 4) / 34) ** 2 <= 1.0
    t1 = np.where(head, 150, 0) - np.where(atlas > 0, 60, 0)
    for array, name in ((t1.astype(np.uint8), "ch2.nii.gz"), (atlas, "aal.nii.gz")):
        image = nib.Nifti1Image(array, affine)
        image.set_sform(affine, code=4)  # MNI, as the real files
        image.set_qform(None, code=0)
        nib.save(image, folder / name)
    lines = [f"{index} {name} {7000 + index}" for index, name, _, _ in MIMIC_REGIONS]
    (folder / "aal.nii.txt").write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode())
    return folder


@pytest.fixture(scope="module")
def mimic_src(tmp_path_factory) -> Path:
    return make_mimic_templates(tmp_path_factory.mktemp("mimic"))


@pytest.fixture(scope="module")
def mimic_3d(mimic_src, tmp_path_factory) -> tuple[Path, object]:
    dst = tmp_path_factory.mktemp("aal3d") / "data"
    summary = convert_aal(mimic_src, dst, structures=MIMIC_STRUCTURES, num_cases=3, spacing="4", margin_mm=4)
    return dst, summary


def _centroids_world(label: np.ndarray, affine: np.ndarray, labels: dict[str, int]) -> dict[str, np.ndarray]:
    world = _world(label.shape, affine)
    return {name: world[:, label == value].mean(axis=1) for name, value in labels.items()
            if value and (label == value).any()}


def test_region_names_read_crlf_file(mimic_src):
    names = read_region_names(mimic_src / "aal.nii.txt")
    assert names["Caudate_L"] == 71 and names["Vermis_4_5"] == 112 and len(names) == len(MIMIC_REGIONS)


def _source_centres(mimic_src: Path) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """World centroids and voxel counts of the mimic's kept regions, by output label name."""
    import nibabel as nib

    image = nib.load(mimic_src / "aal.nii.gz")
    atlas = np.asanyarray(image.dataobj)
    by_name = {"caudate_left": 71, "caudate_right": 72, "putamen_left": 73, "putamen_right": 74,
               "thalamus_left": 77, "thalamus_right": 78, "vermis_4_5": 112}
    world = _world(atlas.shape, image.affine)
    return ({name: world[:, atlas == value].mean(axis=1) for name, value in by_name.items()},
            {name: int((atlas == value).sum()) for name, value in by_name.items()})


@pytest.mark.parametrize(("spacing", "centre_mm", "volume_error"), [(2.0, 1e-6, 0.0), (4.0, 1.0, 0.3)])
def test_no_augmentation_keeps_world_geometry(mimic_src, tmp_path, spacing, centre_mm, volume_error):
    """With every augmentation off a case is the source on a RAS grid: at the source's 2 mm an exact copy of the
    LAS-stored labels, at 4 mm the same centroids within 1 mm and volumes within 30% (majority vote)."""
    import nibabel as nib

    dst = tmp_path / "plain"
    convert_aal(mimic_src, dst, structures=MIMIC_STRUCTURES, num_cases=1, spacing=spacing, margin_mm=4,
                **NO_AUGMENTATION)
    image = nib.load(dst / "labelsTr" / "aal_000.nii.gz")
    label = np.asanyarray(image.dataobj)
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    np.testing.assert_allclose(image.affine[:3, :3], np.eye(3) * spacing)
    found = _centroids_world(label, image.affine, EXPECTED_LABELS)
    centres, counts = _source_centres(mimic_src)
    for name, centre in centres.items():
        np.testing.assert_allclose(found[name], centre, atol=centre_mm, err_msg=name)
        volume = (label == EXPECTED_LABELS[name]).sum() * spacing**3
        assert abs(volume - counts[name] * 8) <= volume_error * counts[name] * 8, name


def test_3d_dataset_labels_prompts_vocabulary(mimic_3d):
    from medtextseg.data.layout import load_dataset, verify_dataset
    from medtextseg.data.vocabulary import PromptVocabulary

    dst, summary = mimic_3d
    assert summary.converted == ["aal_000", "aal_001", "aal_002"] and not summary.skipped
    meta = json.loads((dst / "dataset.json").read_text())
    assert meta["labels"] == EXPECTED_LABELS and meta["medtextseg"]["spatial_dims"] == 3
    vocabulary_json = json.loads((dst / "prompt_vocabulary.json").read_text())
    assert all("{name}" in template for template in vocabulary_json["templates"])
    assert set(vocabulary_json["synonyms"]) == set(EXPECTED_LABELS) - {"background"} | {"caudate", "putamen",
                                                                                         "thalamus"}
    assert "left caudate nucleus" in vocabulary_json["synonyms"]["caudate_left"]
    vocabulary = PromptVocabulary.load(dst / "prompt_vocabulary.json")
    layout = load_dataset(dst)  # checks every prompt line, its targets and its class
    verify_dataset(layout)
    assert sorted(c for split in layout.splits.values() for c in split) == ["aal_000", "aal_001", "aal_002"]
    for case in layout.cases.values():
        kinds = [p.kind for p in case.prompts]
        assert kinds.count("anatomy") == 7 and kinds.count("bilateral") == 3 and "absent" not in kinds
        for prompt in case.prompts:
            assert prompt.prompt[0].lower() + prompt.prompt[1:] in vocabulary.phrasings(prompt.class_name)
            side = prompt.meta["side"]
            if prompt.kind == "anatomy":
                assert prompt.class_name == (f"{prompt.meta['structure']}_{side}" if side else "vermis_4_5")
                assert prompt.target == (EXPECTED_LABELS[prompt.class_name],)
                other = {"left": "right", "right": "left"}.get(side)
                assert (side or "") in prompt.prompt.lower() and (other is None or other not in prompt.prompt)
            else:
                assert side is None and len(prompt.target) == 2


def test_left_structures_at_patient_left(mimic_3d):
    """Loaded back through our own readers: world x < 0 for every ``_left`` label, and RAS index order agrees."""
    import torch

    from medtextseg.data.dataset import prepare_case
    from medtextseg.data.io import read_array, read_geometry
    from medtextseg.data.layout import load_dataset

    dst, _ = mimic_3d
    layout = load_dataset(dst)
    for case in layout.cases.values():
        geometry = read_geometry(case.label_path)
        centres = _centroids_world(read_array(case.label_path), geometry.affine, layout.labels)
        for name, centre in centres.items():
            if name.endswith("_left"):
                assert centre[0] < 0, (case.case, name, centre)
                assert centre[0] < centres[name.replace("_left", "_right")][0]
        prepared = prepare_case(case, None, 3)  # RAS: index 0 grows toward patient Right
        index = torch.arange(prepared.label.shape[0], dtype=torch.float64)[:, None, None]
        for stem in ("caudate", "putamen", "thalamus"):
            i_left, i_right = (float((index * (prepared.label == layout.labels[f"{stem}_{side}"])).sum()
                                     / (prepared.label == layout.labels[f"{stem}_{side}"]).sum())
                               for side in ("left", "right"))
            assert i_left < i_right


def test_numbers_and_their_strings_are_the_same_options_and_other_options_are_refused(mimic_src, mimic_3d):
    dst, _ = mimic_3d
    again = convert_aal(mimic_src, dst, structures=MIMIC_STRUCTURES, num_cases=3, spacing=4.0, margin_mm=4.0)
    assert again.converted == [] and again.already_done == ["aal_000", "aal_001", "aal_002"]
    with pytest.raises(MedTextSegError, match=r"other aal options \(seed differ\).*--overwrite"):
        convert_aal(mimic_src, dst, structures=MIMIC_STRUCTURES, num_cases=3, spacing=4.0, margin_mm=4.0, seed=1)


def test_2d_slices_absent_prompts_and_splits(mimic_src, tmp_path):
    import nibabel as nib

    from medtextseg.data.layout import load_dataset

    dst = tmp_path / "aal2d"
    summary = convert_aal(mimic_src, dst, spatial_dims=2, structures=MIMIC_STRUCTURES, num_cases=8,
                          slices_per_volume=4, spacing=4.0, margin_mm=4.0, min_voxels=3)
    assert summary.total == 8 and not summary.skipped
    layout = load_dataset(dst)
    assert layout.spatial_dims == 2
    for split in layout.splits.values():  # the slices of one deformed head stay in one split
        assert len({case.split("_")[1] for case in split}) == len(split) // 4
    for case in layout.cases.values():
        image = nib.load(case.image_paths[0])
        label = np.asanyarray(nib.load(case.label_path).dataobj)[:, :, 0]
        assert image.shape[2] == 1 and nib.aff2axcodes(image.affine) == ("R", "A", "S")
        for prompt in case.prompts:
            assert prompt.meta["z_mm"] == pytest.approx(image.affine[2, 3])
            if prompt.kind == "absent":
                assert prompt.target == () and not (label == layout.labels[prompt.class_name]).any()
                partner = prompt.class_name.replace("_left", "_X").replace("_right", "_left").replace("_X", "_right")
                assert prompt.meta["contralateral_present"] == bool(
                    partner in layout.labels and (label == layout.labels[partner]).sum() >= 3)
            else:
                assert all((label == value).sum() >= 3 for value in prompt.target)
    assert sum(p.kind == "absent" for c in layout.cases.values() for p in c.prompts) > 0


@pytest.mark.parametrize(("options", "message"), [
    ({"structures": "caudat"}, r"unknown structure 'caudat'; did you mean 'caudate'"),
    ({"structures": "cerebellum"}, r"structure 'cerebellum': no AAL region 'Cerebelum_\*_L'"),
    ({"structures": "caudate,Caudate_L"}, r"AAL region Caudate_L is in two structures"),
    ({"num_case": 3}, r"--option num_case: unknown option \(did you mean 'num_cases'\?\); the aal converter"),
    ({"spacing": "big"}, r"option spacing must be a number in \[0.5, 20.0\], got 'big'"),
    ({"gamma": "1.5,0.5"}, r"option gamma must be two numbers LOW,HIGH"),
])
def test_bad_options_are_refused(mimic_src, tmp_path, options, message):
    with pytest.raises(MedTextSegError, match=message):
        convert_aal(mimic_src, tmp_path / "out", **options)


def test_missing_source_says_how_to_install(tmp_path):
    with pytest.raises(MedTextSegError, match=r"aal.nii.txt: file not found; .*scripts/setup_atlas.sh"):
        convert_aal(tmp_path, tmp_path / "out")


def test_registered_for_the_cli():
    from medtextseg.converters.registry import get_converter

    assert get_converter("aal") is convert_aal


# ------------------------------------------------------------------------------------------ the real atlas

@pytest.fixture(scope="module")
def real_src() -> Path:
    if not (DEFAULT_SRC / "aal.nii.gz").is_file():
        pytest.skip(f"{DEFAULT_SRC} has no AAL atlas: run bash scripts/setup_atlas.sh (it installs mricron-data)")
    return DEFAULT_SRC


def test_catalogue_matches_the_real_region_names(real_src):
    regions = read_region_names(real_src / "aal.nii.txt")
    assert len(regions) == 116 and regions["Caudate_L"] == 71
    labels, pairs = resolve_structures(tuple(STRUCTURES), regions)
    assert len(pairs) == len(STRUCTURES) and len(labels) == 2 * len(STRUCTURES)
    assert len(next(spec for spec in labels if spec.name == "cerebellum_left").aal_names) == 9


def test_real_atlas_3d(real_src, tmp_path):
    from medtextseg.data.io import read_array, read_geometry
    from medtextseg.data.layout import load_dataset

    dst = tmp_path / "aal3d"
    summary = convert_aal(real_src, dst, num_cases=2)
    assert summary.total == 2 and not summary.skipped
    layout = load_dataset(dst)
    names = [n for n in layout.labels if n != "background"]
    lefts = [n for n in names if n.endswith("_left")]
    assert len(names) >= 10 and all(n.replace("_left", "_right") in names for n in lefts) and len(lefts) >= 5
    for case in layout.cases.values():
        geometry = read_geometry(case.label_path)
        label = read_array(case.label_path)
        assert geometry.spacing == pytest.approx((3.0, 3.0, 3.0)) and 40 <= min(geometry.shape)
        assert set(np.unique(label).tolist()) == set(layout.labels.values())  # every structure in every head
        centres = _centroids_world(label, geometry.affine, layout.labels)
        for name in lefts:
            assert centres[name][0] < 0 < centres[name.replace("_left", "_right")][0], (case.case, name)
        assert {p.class_name for p in case.prompts if p.kind == "anatomy"} == set(names)

"""Behaviour of the synthetic prostate benchmark (medtextseg.data.synthetic).

Arrays are RAS-canonical: i grows toward the patient's Right, so a left lesion has a smaller i than the gland.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import ConvexHull

from medtextseg import MedTextSegError
from medtextseg.data.synthetic import (
    CHANNEL_NAMES,
    LABELS,
    QUADRANTS,
    SPACING,
    make_case,
    make_synthetic_dataset,
)

ZONE_LABEL = {"transition": LABELS["transition_zone"], "peripheral": LABELS["peripheral_zone"]}
# Words that mention each attribute in a prompt (to check the text says what `meta["mentioned"]` claims).
ATTRIBUTE_WORDS = {
    "side": r"\b(left|right)\b",
    "zone": r"\b(peripheral|transition|PZ|TZ)\b",
    "size": r"\b(small|large|big)\b",
    "shape": r"\b(round|rounded|oval|irregular|irregularly|lobulated)\b",
}


def _cases(count: int, spatial_dims: int = 3, seed: int = 0):
    return [make_case(np.random.default_rng([seed, i]), spatial_dims=spatial_dims) for i in range(count)]


@pytest.fixture(scope="module")
def cases():
    """40 3D cases with the dataset's seeding: every lesion count and quadrant occurs."""
    return _cases(40)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "Dataset001", num_cases=10, seed=7)


def _lesion_mask(case, lesion) -> np.ndarray:
    return case.label == lesion["label"]


def _matching(lesions: list[dict], attributes: dict) -> list[int]:
    return [les["label"] for les in lesions if all(les[key] == value for key, value in attributes.items())]


# ---------------------------------------------------------------- determinism


def test_same_rng_gives_identical_case_and_different_rng_a_different_one():
    first, again = (make_case(np.random.default_rng([3, 1])) for _ in range(2))
    other = make_case(np.random.default_rng([4, 1]))
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.label, again.label)
    assert first.prompts == again.prompts and first.lesions == again.lesions
    assert not np.array_equal(first.image, other.image)


def test_same_seed_writes_identical_files_and_another_seed_different_ones(tmp_path):
    paths = [make_synthetic_dataset(tmp_path / name, num_cases=2, seed=seed)
             for name, seed in (("a", 1), ("b", 1), ("c", 2))]
    files = sorted(p.relative_to(paths[0]) for p in paths[0].rglob("*") if p.is_file())
    assert len(files) == 2 * (len(CHANNEL_NAMES) + 1) + 3
    for relative in files:
        assert (paths[0] / relative).read_bytes() == (paths[1] / relative).read_bytes(), relative
    changed = [r for r in files if (paths[0] / r).read_bytes() != (paths[2] / r).read_bytes()]
    assert Path("prompts.jsonl") in changed and Path("labelsTr/synth_000.nii.gz") in changed


# ---------------------------------------------------------------- phantom content


def test_case_arrays_types_and_values(cases):
    for case in cases[:5]:
        assert case.image.shape == (3, 48, 48, 16) and case.image.dtype == np.float32
        assert case.label.shape == (48, 48, 16) and case.label.dtype == np.uint8
        assert np.isfinite(case.image).all()
        assert case.image.min() >= 0.0 and case.image.max() <= 1.5
        assert set(np.unique(case.label)) <= set(LABELS.values())


def test_lesions_use_distinct_quadrants_and_every_count_occurs(cases):
    counts = {len(case.lesions) for case in cases}
    assert counts == {0, 1, 2, 3}
    for case in cases:
        quadrants = [(les["side"], les["zone"]) for les in case.lesions]
        assert len(set(quadrants)) == len(quadrants) and set(quadrants) <= set(QUADRANTS)
        assert [les["label"] for les in case.lesions] == list(range(3, 3 + len(case.lesions)))
        present = set(np.unique(case.label))
        assert {les["label"] for les in case.lesions} <= present and {1, 2} <= present
        for lesion in case.lesions:
            assert lesion["voxels"] == int(_lesion_mask(case, lesion).sum()) > 0


def test_num_lesions_is_honoured():
    for count in range(4):
        assert len(make_case(np.random.default_rng(count), num_lesions=count).lesions) == count


def test_lesion_side_and_zone_agree_with_label_map(cases):
    for case in cases:
        gland_i = np.argwhere(case.label > 0)[:, 0].mean()
        for lesion in case.lesions:
            mask = _lesion_mask(case, lesion)
            assert case.label[tuple(lesion["center"])] == lesion["label"]
            # RAS: patient left has the smaller i; lesions keep clear of the midline.
            offset = np.argwhere(mask)[:, 0].mean() - gland_i
            assert (offset < -2) if lesion["side"] == "left" else (offset > 2), (lesion, offset)
            # Inside the gland and its zone: its border is mostly gland, and mostly its own zone.
            ring = case.label[ndimage.binary_dilation(mask) & ~mask]
            assert (ring == 0).mean() < 0.5, lesion
            zones = ring[(ring == 1) | (ring == 2)]
            assert (zones == ZONE_LABEL[lesion["zone"]]).mean() > 0.5, lesion


def test_lesion_contrast_per_channel(cases):
    t2w, adc, hbv = range(3)
    for case in cases:
        for lesion in case.lesions:
            mask = _lesion_mask(case, lesion)
            around = ndimage.binary_dilation(mask, iterations=2) & ~mask & (case.label == ZONE_LABEL[lesion["zone"]])
            inside, outside = case.image[:, mask].mean(axis=1), case.image[:, around].mean(axis=1)
            assert inside[adc] < outside[adc] - 0.1, lesion
            assert inside[hbv] > outside[hbv] + 0.3, lesion
            assert inside[t2w] < outside[t2w], lesion


def test_size_and_shape_are_visible_in_the_mask(cases):
    voxels = {"small": [], "large": []}
    solidity = {"round": [], "irregular": []}
    corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]]) - 0.5
    for case in cases:
        for lesion in case.lesions:
            voxels[lesion["size"]].append(lesion["voxels"])
            in_plane = np.argwhere(_lesion_mask(case, lesion)[:, :, lesion["center"][2]])
            hull = ConvexHull((in_plane[:, None, :] + corners).reshape(-1, 2))
            solidity[lesion["shape"]].append(len(in_plane) / hull.volume)
    assert max(voxels["small"]) < min(voxels["large"])
    assert np.mean(solidity["irregular"]) < np.mean(solidity["round"]) - 0.08


# ---------------------------------------------------------------- prompts


def test_every_prompt_is_well_formed(cases):
    for case in cases:
        for prompt in case.prompts:
            assert set(prompt) == {"prompt", "target", "kind", "meta"}
            assert 1 <= len(prompt["prompt"].strip()) <= 300
            assert prompt["kind"] in {"single", "all", "absent", "anatomy"}
            assert prompt["meta"]["n_lesions"] == len(case.lesions)
            assert prompt["target"] == sorted(set(prompt["target"]))


def test_single_prompt_names_exactly_its_target_lesion(cases):
    seen = 0
    for case in cases:
        for prompt in (p for p in case.prompts if p["kind"] == "single"):
            meta, (target,) = prompt["meta"], prompt["target"]
            lesion = next(les for les in case.lesions if les["label"] == target)
            assert meta["label"] == target
            assert all(meta[key] == lesion[key] for key in ("side", "zone", "size", "shape"))
            mentioned = {key: meta[key] for key in meta["mentioned"]}
            assert _matching(case.lesions, mentioned) == [target], prompt
            for attribute, pattern in ATTRIBUTE_WORDS.items():
                said = re.search(pattern, prompt["prompt"], flags=re.IGNORECASE) is not None
                assert said == (attribute in mentioned), (attribute, prompt)
            seen += 1
        for lesion in case.lesions:
            assert sum(p["target"] == [lesion["label"]] for p in case.prompts if p["kind"] == "single") >= 2
    assert seen > 50


def test_absent_prompts_describe_no_existing_lesion(cases):
    for case in cases:
        absent = [p for p in case.prompts if p["kind"] == "absent"]
        assert absent and all(p["target"] == [] for p in absent)
        for prompt in absent:
            attributes = {k: v for k, v in prompt["meta"].items() if k in ("side", "zone", "size", "shape")}
            if attributes:
                assert {"side", "zone"} <= set(attributes)
                assert _matching(case.lesions, {k: attributes[k] for k in ("side", "zone")}) == [], prompt
            else:  # the generic "segment the lesion" is only for cases without lesions
                assert not case.lesions


def test_all_and_anatomy_targets_match_the_label_map(cases):
    for case in cases:
        lesion_labels = [les["label"] for les in case.lesions]
        (all_prompt,) = [p for p in case.prompts if p["kind"] == "all"]
        assert all_prompt["target"] == lesion_labels
        anatomy = {p["meta"]["structure"]: p["target"] for p in case.prompts if p["kind"] == "anatomy"}
        assert set(anatomy) == {"prostate", "peripheral_zone", "transition_zone"}
        # The union of the two zones' targets is the whole gland, and they do not overlap.
        assert sorted(anatomy["peripheral_zone"] + anatomy["transition_zone"]) == anatomy["prostate"]
        np.testing.assert_array_equal(np.isin(case.label, anatomy["prostate"]), case.label > 0)
        for lesion in case.lesions:
            zone = f"{lesion['zone']}_zone"
            assert lesion["label"] in anatomy[zone]


def test_a_text_blind_answer_cannot_fit_every_prompt(cases):
    # Within one image with lesions, prompts ask for different, non-empty and empty masks.
    for case in (c for c in cases if len(c.lesions) >= 2):
        targets = {tuple(p["target"]) for p in case.prompts}
        assert () in targets and len(targets) >= len(case.lesions) + 4


# ---------------------------------------------------------------- files


def test_written_geometry_is_oblique_lps_and_reorienting_restores_the_arrays(dataset):
    case = make_case(np.random.default_rng([7, 3]))
    label_file = nib.load(dataset / "labelsTr" / "synth_003.nii.gz")
    assert nib.aff2axcodes(label_file.affine) == ("L", "P", "S")
    assert not np.allclose(label_file.affine[:3, :3], np.diag(label_file.header.get_zooms()))  # oblique
    assert np.abs(label_file.affine[:3, 3]).min() > 0  # non-zero origin
    np.testing.assert_allclose(label_file.header.get_zooms(), SPACING, rtol=1e-6)
    # A reader that ignores the affine sees a mirrored image ...
    assert not np.array_equal(np.asarray(label_file.dataobj), case.label)
    np.testing.assert_array_equal(np.asarray(label_file.dataobj)[::-1, ::-1], case.label)
    # ... and reorienting to the closest canonical (RAS) restores the arrays exactly.
    canonical = nib.as_closest_canonical(label_file)
    np.testing.assert_array_equal(np.asarray(canonical.dataobj), case.label)
    np.testing.assert_allclose(canonical.affine, case.affine, atol=1e-4)
    for channel in range(len(CHANNEL_NAMES)):
        image_file = nib.as_closest_canonical(nib.load(dataset / "imagesTr" / f"synth_003_{channel:04d}.nii.gz"))
        assert image_file.get_data_dtype() == np.float32
        np.testing.assert_array_equal(np.asarray(image_file.dataobj), case.image[channel])


@pytest.mark.slow  # importing MONAI takes several seconds
def test_monai_orientation_ras_restores_the_arrays(dataset):
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    stored = nib.load(dataset / "labelsTr" / "synth_001.nii.gz")
    tensor = MetaTensor(np.asarray(stored.dataobj)[None].astype(np.float32), affine=stored.affine)
    restored = Orientation(axcodes="RAS")(tensor)
    np.testing.assert_array_equal(restored[0].numpy(), make_case(np.random.default_rng([7, 1])).label)


def test_dataset_json_prompts_and_splits(dataset):
    description = json.loads((dataset / "dataset.json").read_text())
    assert description["channel_names"] == {"0": "T2W", "1": "ADC", "2": "HBV"}
    assert description["labels"] == LABELS and description["numTraining"] == 10
    assert description["file_ending"] == ".nii.gz" and description["medtextseg"] == {"spatial_dims": 3}
    case_ids = [f"synth_{i:03d}" for i in range(10)]
    found_values: set[int] = set()
    for case_id in case_ids:
        for channel in range(3):
            assert (dataset / "imagesTr" / f"{case_id}_{channel:04d}.nii.gz").is_file()
        found_values |= set(np.unique(np.asarray(nib.load(dataset / "labelsTr" / f"{case_id}.nii.gz").dataobj)))
    assert found_values <= set(description["labels"].values())

    lines = [json.loads(line) for line in (dataset / "prompts.jsonl").read_text().splitlines()]
    assert {line["case"] for line in lines} == set(case_ids)
    assert lines[0] == {"case": "synth_000", **make_case(np.random.default_rng([7, 0])).prompts[0]}

    splits = json.loads((dataset / "splits.json").read_text())
    assert {name: len(ids) for name, ids in splits.items()} == {"train": 7, "val": 1, "test": 2}
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == case_ids


def test_two_dimensional_variant(tmp_path):
    for case in _cases(12, spatial_dims=2):
        assert case.image.shape == (3, 48, 48) and case.label.shape == (48, 48)
        for lesion in case.lesions:
            assert len(lesion["center"]) == 2 and case.label[tuple(lesion["center"])] == lesion["label"]
            assert lesion["voxels"] == int((case.label == lesion["label"]).sum()) > 0
    out = make_synthetic_dataset(tmp_path / "two_d", num_cases=2, spatial_dims=2, seed=3)
    assert json.loads((out / "dataset.json").read_text())["medtextseg"] == {"spatial_dims": 2}
    stored = nib.load(out / "imagesTr" / "synth_001_0002.nii.gz")
    assert stored.shape == (48, 48, 1) and nib.aff2axcodes(stored.affine) == ("L", "P", "S")
    case = make_case(np.random.default_rng([3, 1]), spatial_dims=2)
    np.testing.assert_array_equal(np.asarray(nib.as_closest_canonical(stored).dataobj)[:, :, 0], case.image[2])


def test_rerun_with_fewer_cases_removes_stale_case_files(tmp_path, capsys):
    make_synthetic_dataset(tmp_path, num_cases=3, seed=0, progress=True)
    make_synthetic_dataset(tmp_path, num_cases=2, seed=0)
    assert sorted(p.name for p in (tmp_path / "labelsTr").iterdir()) == ["synth_000.nii.gz", "synth_001.nii.gz"]
    assert len(list((tmp_path / "imagesTr").iterdir())) == 6
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary files left behind


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spatial_dims": 4}, r"make_case: spatial_dims must be 2 or 3, got 4"),
        ({"shape": (16, 48, 16)}, r"make_case: shape must be 3 integers \(X, Y, Z\) of at least \(32, 32, 8\)"),
        ({"num_lesions": 4}, r"make_case: num_lesions must be an integer from 0 to 3 or None, got 4"),
    ],
)
def test_make_case_rejects_bad_arguments(kwargs, message):
    with pytest.raises(MedTextSegError, match=message):
        make_case(np.random.default_rng(0), **kwargs)


def test_make_case_rejects_a_legacy_random_state():
    with pytest.raises(MedTextSegError, match=r"rng must be a numpy.random.Generator.*got RandomState"):
        make_case(np.random.RandomState(0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_cases": 0}, r"num_cases must be an integer >= 1, got 0"),
        ({"spatial_dims": 1}, r"make_synthetic_dataset: spatial_dims must be 2 or 3, got 1"),
        ({"seed": -1}, r"seed must be a non-negative integer, got -1"),
        ({"split_fractions": (0.5, 0.5, 0.5)}, r"split_fractions must be 3 non-negative numbers .* summing to 1"),
    ],
)
def test_make_synthetic_dataset_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(MedTextSegError, match=message):
        make_synthetic_dataset(tmp_path, **kwargs)
    assert not (tmp_path / "dataset.json").exists()


# ---------------------------------------------------------------- data made differently (keyword knobs)

# Values of make_case(np.random.default_rng([0, 1])) computed before the knobs existed: the defaults must keep them.
PINNED_LABEL_SHA256 = "6f17619ff4b08598ba4725b1eaeb58dffe393477ba96fbb3de24c73dee743b81"
PINNED_PROMPTS_SHA256 = "31da12b08f000c59eeea7930bf4b57306ab6c70286d5d54443f4ee64ddc4542a"
PINNED_CHANNEL_SUMS = (20108.5176, 12781.3465, 4061.7388)
PINNED_VOXEL_20_30_8 = (0.6262778043746948, 0.6989967823028564, 0.2421010583639145)
PINNED_NEXT_DRAW = 4029770845753108222  # rng.integers(2**62) after the case: the same random numbers consumed
PINNED_AFFINE = [[1.1988835229812356, -0.05175227844357592, 0.0, -32.37935628280631],
                 [0.05175227844357592, 1.1988835229812356, 0.0, -63.659418610977056],
                 [0.0, 0.0, 3.0, 17.25066493079882], [0.0, 0.0, 0.0, 1.0]]


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_default_case_is_unchanged_by_the_knobs():
    for kwargs in ({}, {"spacing": SPACING, "field_of_view": (57.6, 57.6, 48.0), "voxel_order": "LPS",
                        "oblique_degrees": 6.0, "lesion_contrast": 1.0, "min_lesions": 0, "max_lesions": 3,
                        "unseen_wording": 0.0}):
        rng = np.random.default_rng([0, 1])
        case = make_case(rng, **kwargs)
        assert _sha256(case.label.tobytes()) == PINNED_LABEL_SHA256
        assert _sha256(json.dumps(case.prompts, sort_keys=True).encode()) == PINNED_PROMPTS_SHA256
        # Float sums are pinned to a tolerance (another CPU's exp may differ in the last bit); any change of
        # the drawing (rng use, sizes, order) moves them far more.
        np.testing.assert_allclose(case.image.astype(np.float64).sum(axis=(1, 2, 3)), PINNED_CHANNEL_SUMS, rtol=1e-6)
        np.testing.assert_allclose(case.image[:, 20, 30, 8], PINNED_VOXEL_20_30_8, rtol=1e-6)
        np.testing.assert_allclose(case.affine, PINNED_AFFINE, rtol=0, atol=1e-12)
        assert int(rng.integers(2**62)) == PINNED_NEXT_DRAW


def _gland_ml(case, spacing) -> float:
    return float((case.label > 0).sum() * np.prod(spacing) / 1000.0)


def _gland_centre_mm(case, spacing) -> np.ndarray:
    """Gland centroid in mm relative to the grid's centre (canonical axes)."""
    centre = np.argwhere(case.label > 0).mean(axis=0)
    return (centre - (np.array(case.label.shape) - 1) / 2) * np.array(spacing)


@pytest.mark.parametrize(
    ("spacing", "field_of_view", "shape"),
    [((0.5, 0.5, 3.0), (48.0, 48.0, 72.0), (96, 96, 24)),
     ((1.0, 1.0, 1.0), None, (58, 58, 48)),
     ((1.2, 1.2, 3.0), (96.0, 96.0, 72.0), (80, 80, 24))],
)
def test_spacing_and_field_of_view_keep_the_anatomy_in_mm(spacing, field_of_view, shape):
    for i in range(3):
        reference = make_case(np.random.default_rng([0, i]))
        case = make_case(np.random.default_rng([0, i]), spacing=spacing, field_of_view=field_of_view)
        assert case.label.shape == shape and case.image.shape == (3, *shape) and case.spacing == spacing
        np.testing.assert_allclose(np.linalg.norm(case.affine[:3, :3], axis=0), spacing)
        # The same gland in ml, centred in the field of view as on the default grid.
        assert _gland_ml(case, spacing) == pytest.approx(_gland_ml(reference, SPACING), rel=0.1)
        np.testing.assert_allclose(_gland_centre_mm(case, spacing), _gland_centre_mm(reference, SPACING), atol=1.5)
        for lesion in case.lesions:  # sizes in mm: small lesions are well under large ones on every grid
            ml = lesion["voxels"] * np.prod(spacing) / 1000.0
            assert (ml < 0.35) if lesion["size"] == "small" else (ml > 0.35), lesion
            assert case.label[tuple(lesion["center"])] == lesion["label"]


def test_a_wider_field_of_view_shows_more_tissue_around_the_same_gland():
    narrow = make_case(np.random.default_rng([0, 4]))
    wide = make_case(np.random.default_rng([0, 4]), field_of_view=(96.0, 96.0, 72.0))
    assert wide.label.shape == (80, 80, 24)
    assert (wide.label > 0).sum() == pytest.approx((narrow.label > 0).sum(), rel=0.03)
    assert (wide.label == 0).sum() > 3 * (narrow.label == 0).sum()


@pytest.mark.parametrize(("voxel_order", "spatial_dims"), [("RAS", 3), ("PIL", 3), ("SLP", 3), ("ASR", 2)])
def test_voxel_order_sets_the_stored_axis_codes(tmp_path, voxel_order, spatial_dims):
    spacing = (1.0, 1.2, 2.5)
    out = make_synthetic_dataset(tmp_path, num_cases=2, seed=3, spatial_dims=spatial_dims, spacing=spacing,
                                 voxel_order=voxel_order, oblique_degrees=20.0)
    case = make_case(np.random.default_rng([3, 1]), spatial_dims=spatial_dims, spacing=spacing, oblique_degrees=20.0)
    stored = nib.load(out / "labelsTr" / "synth_001.nii.gz")
    assert nib.aff2axcodes(stored.affine) == tuple(voxel_order)
    canonical = nib.as_closest_canonical(stored)
    label = np.asarray(canonical.dataobj)
    np.testing.assert_array_equal(label if spatial_dims == 3 else label[:, :, 0], case.label)
    np.testing.assert_allclose(canonical.affine, case.affine, atol=1e-4)
    np.testing.assert_allclose(canonical.header.get_zooms(), spacing, rtol=1e-6)
    image = np.asarray(nib.as_closest_canonical(nib.load(out / "imagesTr" / "synth_001_0001.nii.gz")).dataobj)
    np.testing.assert_array_equal(image if spatial_dims == 3 else image[:, :, 0], case.image[1])
    recorded = json.loads((out / "dataset.json").read_text())["medtextseg"]
    assert recorded["spatial_dims"] == spatial_dims
    assert recorded["synthetic"]["voxel_order"] == voxel_order and recorded["synthetic"]["spacing"] == list(spacing)
    assert recorded["synthetic"]["shape"] == [58, 48, 19]


def test_oblique_degrees_bounds_the_tilt_and_changes_nothing_else():
    tilts = {}
    for degrees in (0.0, 6.0, 30.0):
        case = make_case(np.random.default_rng([0, 2]), oblique_degrees=degrees)
        tilts[degrees] = abs(np.degrees(np.arctan2(case.affine[1, 0], case.affine[0, 0])))
        assert degrees / 3 - 1e-9 <= tilts[degrees] <= degrees + 1e-9
        np.testing.assert_array_equal(case.label, make_case(np.random.default_rng([0, 2])).label)
    assert tilts[0.0] == 0.0 and tilts[30.0] > tilts[6.0]


def _lesion_step(case, lesion, channel: int) -> float:
    mask = _lesion_mask(case, lesion)
    around = ndimage.binary_dilation(mask, iterations=2) & ~mask & (case.label == ZONE_LABEL[lesion["zone"]])
    return float(case.image[channel, mask].mean() - case.image[channel, around].mean())


def test_lesion_contrast_scales_the_lesion_to_zone_difference():
    hbv = 2
    steps: dict[float, list[float]] = {0.0: [], 0.5: [], 1.0: []}
    for i in range(4):
        base = make_case(np.random.default_rng([1, i]), num_lesions=2)
        for contrast in steps:
            case = make_case(np.random.default_rng([1, i]), num_lesions=2, lesion_contrast=contrast)
            np.testing.assert_array_equal(case.label, base.label)  # only intensities change
            steps[contrast] += [_lesion_step(case, lesion, hbv) for lesion in case.lesions]
    full = np.mean(steps[1.0])
    assert full > 0.3 and np.mean(steps[0.5]) == pytest.approx(0.5 * full, rel=0.25)
    assert abs(np.mean(steps[0.0])) < 0.1 * full


def test_lesion_count_range():
    counts = [len(make_case(np.random.default_rng([2, i]), max_lesions=1).lesions) for i in range(12)]
    assert set(counts) == {0, 1}
    assert {len(make_case(np.random.default_rng([2, i]), min_lesions=2, max_lesions=2).lesions)
            for i in range(4)} == {2}
    assert len(make_case(np.random.default_rng(0), num_lesions=3, max_lesions=1).lesions) == 3  # explicit count wins


# Unseen wordings, written out here independently of the generator's tables: each attribute value's words.
UNSEEN_VALUE_WORDS = {
    "side": {"left": r"\b(Lt|L)\b", "right": r"\b(Rt|R)\b"},  # case-sensitive: "L", not "label"
    "zone": {"peripheral": r"(?i)\bouter\b", "transition": r"(?i)\b(central|inner)\b"},
    "size": {"small": r"(?i)\b(tiny|little|6 mm|0\.6 cm)", "large": r"(?i)\b(sizeable|bulky|11 mm|1\.1 cm)"},
    "shape": {"round": r"(?i)\b(ovoid|globular|spherical)\b", "irregular": r"(?i)\b(multilobed|jagged|misshapen)\b"},
}
UNSEEN_STRUCTURE_WORDS = {"prostate": r"(?i)\bprostatic\b", "peripheral_zone": r"(?i)\bouter\b",
                          "transition_zone": r"(?i)\b(central|inner)\b"}


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


@pytest.fixture(scope="module")
def reworded(tmp_path_factory):
    """The same 20-case 2D dataset without and with unseen wordings (60% of the test split's prompts)."""
    root = tmp_path_factory.mktemp("reworded")
    plain = make_synthetic_dataset(root / "plain", num_cases=20, spatial_dims=2, seed=5)
    mixed = make_synthetic_dataset(root / "mixed", num_cases=20, spatial_dims=2, seed=5, unseen_wording=0.6)
    return plain, mixed


def _prompt_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "prompts.jsonl").read_text().splitlines()]


def test_unseen_wording_rewrites_test_prompts_only_and_keeps_their_meaning(reworded):
    plain, mixed = reworded
    splits = json.loads((mixed / "splits.json").read_text())
    assert splits == json.loads((plain / "splits.json").read_text())
    before, after = _prompt_lines(plain), _prompt_lines(mixed)
    assert len(before) == len(after)
    unseen = 0
    for old, new in zip(before, after, strict=True):
        wording = new["meta"].pop("wording")
        # Same case, target, kind and meta: only the text may change, and only in the test split.
        assert {**old, "prompt": None} == {**new, "prompt": None}
        assert wording in ("seen", "unseen") and (wording == "unseen") == (old["prompt"] != new["prompt"])
        if wording == "seen":
            continue
        unseen += 1
        assert new["case"] in splits["test"], new
        meta, text = new["meta"], new["prompt"]
        if new["kind"] == "anatomy":
            assert re.search(UNSEEN_STRUCTURE_WORDS[meta["structure"]], text), new
        named = meta.get("mentioned", [key for key in UNSEEN_VALUE_WORDS if key in meta])
        if new["kind"] in ("single", "absent"):  # exactly the named attributes, each with its own value
            for key, values in UNSEEN_VALUE_WORDS.items():
                said = {value for value, pattern in values.items() if re.search(pattern, text)}
                assert said == ({meta[key]} if key in named else set()), (key, new)
    test_lines = [line for line in after if line["case"] in splits["test"]]
    assert 0.35 * len(test_lines) < unseen < 0.85 * len(test_lines)
    # The test split's images are those of the plain dataset: the rewriting only touched text.
    case_id = splits["test"][0]
    for name in (f"labelsTr/{case_id}.nii.gz", f"imagesTr/{case_id}_0000.nii.gz"):
        assert (plain / name).read_bytes() == (mixed / name).read_bytes()
    synthetic = json.loads((mixed / "dataset.json").read_text())["medtextseg"]["synthetic"]
    assert synthetic["unseen_wording"] == 0.6 and synthetic["spacing"] == list(SPACING)


def test_unseen_words_never_occur_in_training_prompts(reworded, cases):
    from medtextseg.data import synthetic
    from medtextseg.data.synthetic import _UNSEEN_MARKERS

    _, mixed = reworded
    splits = json.loads((mixed / "splits.json").read_text())
    lines = _prompt_lines(mixed)
    training = [line["prompt"] for line in lines if line["case"] in splits["train"]]
    assert training and all(line["meta"]["wording"] == "seen" for line in lines if line["case"] in splits["train"])
    training += [prompt["prompt"] for case in cases for prompt in case.prompts]  # 40 more cases' worth
    # ... and every phrase of the training vocabulary, drawn or not (location templates come from the samples).
    tables = (synthetic._PREFIXES, synthetic._NOUNS, synthetic._ALL_PHRASES, synthetic._ANY_LESION_PHRASES,
              *synthetic._SIZE_WORDS.values(), *synthetic._SHAPE_WORDS.values(), *synthetic._ZONE_WORDS.values(),
              *synthetic._ANATOMY_PHRASES.values())
    training += [phrase for table in tables for phrase in table]
    training_tokens = set().union(*map(_tokens, training))
    assert not _UNSEEN_MARKERS & training_tokens, _UNSEEN_MARKERS & training_tokens
    for line in (line for line in lines if line["meta"]["wording"] == "unseen"):
        tokens = _tokens(line["prompt"])
        # At least one distinguishing word, and every word is either distinguishing or a training one.
        assert tokens & _UNSEEN_MARKERS and tokens <= _UNSEEN_MARKERS | training_tokens, line
        for pattern in ATTRIBUTE_WORDS.values():  # no training word for any attribute
            assert not re.search(pattern, line["prompt"], flags=re.IGNORECASE), line


def test_make_case_unseen_wording_marks_every_prompt():
    plain = make_case(np.random.default_rng([0, 3]))
    case = make_case(np.random.default_rng([0, 3]), unseen_wording=1.0)
    np.testing.assert_array_equal(case.image, plain.image)
    assert [p["target"] for p in case.prompts] == [p["target"] for p in plain.prompts]
    assert {p["meta"]["wording"] for p in case.prompts} == {"unseen"}
    assert all(new["prompt"] != old["prompt"] for new, old in zip(case.prompts, plain.prompts, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spacing": (0.0, 1.0, 1.0)}, r"spacing must be 3 numbers in mm \(X, Y, Z\), each from 0.1 to 6"),
        ({"spacing": (1.0, 1.0)}, r"spacing must be 3 numbers"),
        ({"spacing": ("a", 1.0, 1.0)}, r"spacing must be 3 numbers"),
        ({"field_of_view": (30.0, 48.0, 48.0)}, r"field_of_view must be 3 numbers in mm .* from \(38.4, 38.4, 24.0\)"),
        ({"spacing": (0.1, 0.1, 0.1)}, r"field_of_view / spacing gives a grid of 576 x 576 x 480 voxels"),
        ({"shape": (48, 48, 16), "field_of_view": (57.6, 57.6, 48.0)}, r"give shape \(voxels\) or field_of_view"),
        ({"voxel_order": "LLS"}, r"voxel_order must be 3 axis codes, one of L/R, one of A/P and one of S/I"),
        ({"voxel_order": "XYZ"}, r"voxel_order must be 3 axis codes"),
        ({"oblique_degrees": 50}, r"oblique_degrees must be a number from 0 to 40, got 50"),
        ({"lesion_contrast": -0.5}, r"lesion_contrast must be a number from 0 to 3, got -0.5"),
        ({"max_lesions": 4}, r"max_lesions must be an integer from 0 to 3, got 4"),
        ({"min_lesions": 2, "max_lesions": 1}, r"min_lesions \(2\) must not exceed max_lesions \(1\)"),
        ({"unseen_wording": 1.5}, r"unseen_wording must be a number from 0 to 1, got 1.5"),
        ({"unseen_wording": float("nan")}, r"unseen_wording must be a number from 0 to 1"),
    ],
)
def test_bad_knobs_are_refused_naming_the_argument(tmp_path, kwargs, message):
    with pytest.raises(MedTextSegError, match=f"make_case: {message}"):
        make_case(np.random.default_rng(0), **kwargs)
    if "shape" not in kwargs:
        with pytest.raises(MedTextSegError, match=f"make_synthetic_dataset: {message}"):
            make_synthetic_dataset(tmp_path, num_cases=1, **kwargs)
        assert not list(tmp_path.iterdir())  # nothing written


def test_cli_synth_knobs(tmp_path):
    from typer.testing import CliRunner

    from medtextseg.cli import app

    runner = CliRunner()
    out = tmp_path / "data"
    result = runner.invoke(app, ["synth", "--out", str(out), "--cases", "3", "--dim", "2", "--spacing", "1.0,1.0,3.0",
                                 "--fov", "48,48,72", "--voxel-order", "RAS", "--oblique", "0", "--lesion-contrast",
                                 "0.8", "--min-lesions", "1", "--max-lesions", "2", "--unseen-wording", "0.5"])
    assert result.exit_code == 0, result.output
    synthetic = json.loads((out / "dataset.json").read_text())["medtextseg"]["synthetic"]
    assert synthetic == {"spacing": [1.0, 1.0, 3.0], "field_of_view": [48.0, 48.0, 72.0], "shape": [48, 48, 24],
                         "voxel_order": "RAS", "oblique_degrees": 0.0, "lesion_contrast": 0.8, "min_lesions": 1,
                         "max_lesions": 2, "unseen_wording": 0.5}
    stored = nib.load(out / "labelsTr" / "synth_000.nii.gz")
    assert stored.shape == (48, 48, 1) and nib.aff2axcodes(stored.affine) == ("R", "A", "S")
    np.testing.assert_allclose(stored.affine[:3, :3], np.diag([1.0, 1.0, 3.0]))  # no tilt
    assert all("wording" in line["meta"] for line in _prompt_lines(out))

    for args, named in ((["--spacing", "0.5,x,3"], "--spacing"), (["--fov", "48,48"], "--fov"),
                        (["--spacing", "0,1,1"], "spacing"), (["--voxel-order", "LRS"], "voxel_order"),
                        (["--splits", "0.5,0.5"], "--splits"), (["--splits", "0.5,0.1,0.1"], "--splits")):
        bad = runner.invoke(app, ["synth", "--out", str(tmp_path / "bad"), "--cases", "3", *args])
        assert bad.exit_code == 2, bad.output
        (line,) = [line for line in bad.output.splitlines() if line.startswith("error:")]
        assert named in line, line
    assert not (tmp_path / "bad" / "dataset.json").exists()


def test_cli_synth_held_out_test_set(tmp_path):
    """``--splits 0,0,1``: every case is a test case, so ``--unseen-wording`` may reword any prompt (a held-out set
    for a model trained on other synthetic data)."""
    from typer.testing import CliRunner

    from medtextseg.cli import app

    out = tmp_path / "held_out"
    result = CliRunner().invoke(app, ["synth", "--out", str(out), "--cases", "6", "--dim", "2", "--splits", "0,0,1",
                                      "--unseen-wording", "1", "--seed", "1"])
    assert result.exit_code == 0, result.output
    splits = json.loads((out / "splits.json").read_text())
    assert splits["train"] == [] and splits["val"] == [] and len(splits["test"]) == 6
    assert {line["meta"]["wording"] for line in _prompt_lines(out)} == {"unseen"}

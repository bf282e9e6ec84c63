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

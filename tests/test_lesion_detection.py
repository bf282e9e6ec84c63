"""lesion_detection: detection maps and PI-CAI metrics (picai_eval) on synthetic spherical lesions."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from medtextseg.evaluation.lesion_detection import detection_map, lesion_detection_metrics
from medtextseg.utils.errors import MedTextSegError

SHAPE = (32, 32, 8)
RADIUS = 3
#: Lesion centres per case: two with one lesion, one with two, three lesion-free cases (4 lesions in all).
CENTRES: list[list[tuple[int, int, int]]] = [[(8, 8, 4)], [(8, 8, 4), (22, 22, 4)], [(22, 10, 4)], [], [], []]
#: Far (> 12 voxels) from every lesion of CENTRES.
WRONG_CENTRE = (8, 24, 4)


def _squared_distance(centre: tuple[int, ...], shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    grid = np.indices(shape)
    return sum((grid[axis] - centre[axis]) ** 2 for axis in range(len(shape)))


def _ball(centre: tuple[int, ...], shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return _squared_distance(centre, shape) <= RADIUS**2


def _bump(centre: tuple[int, ...], peak: float, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A soft ball, like a sigmoid output: ``peak`` inside radius 3, ``peak / 2`` at 3, < 1% of it beyond 4.2.

    Sharp edges matter: a wide Gaussian leaves a shell below peak / 2.5 that the dynamic extraction returns
    as a second, faint candidate around the first.
    """
    distance = np.sqrt(_squared_distance(centre, shape))
    return peak / (1.0 + np.exp((distance - RADIUS) * 4.0))


def _target(centres: list[tuple[int, int, int]]) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    for centre in centres:
        mask |= _ball(centre)
    return mask


def _probability(centres: list[tuple[int, int, int]], peak: float = 0.9, seed: int = 0) -> np.ndarray:
    """A bump at each centre on low background noise (< 0.005, below the extraction's 0.01 stop)."""
    probability = np.random.default_rng(seed).uniform(0.0, 0.005, SHAPE)
    for centre in centres:
        probability = np.maximum(probability, _bump(centre, peak))
    return probability


@pytest.fixture(scope="module")
def targets() -> list[np.ndarray]:
    return [_target(centres) for centres in CENTRES]


@pytest.fixture(scope="module")
def perfect(targets) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(_probability(centres, seed=index), target)
            for index, (centres, target) in enumerate(zip(CENTRES, targets, strict=True))]


@pytest.fixture(scope="module")
def wrong(targets) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every lesion found at 0.4, but each lesion case also holds a false candidate at 0.95."""
    cases = []
    for index, (centres, target) in enumerate(zip(CENTRES, targets, strict=True)):
        probability = _probability(centres, peak=0.4, seed=index)
        if centres:
            probability = np.maximum(probability, _bump(WRONG_CENTRE, 0.95))
        cases.append((probability, target))
    return cases


# ------------------------------------------------------------------------------------------ detection_map


def test_detection_map_is_constant_per_blob_and_zero_elsewhere():
    probability = np.maximum(_probability([(8, 8, 4)], peak=0.9), _bump((22, 22, 4), 0.6))
    detections = detection_map(probability)
    assert detections.shape == SHAPE and detections.dtype == np.float32
    labels, count = ndimage.label(detections > 0, structure=np.ones((3, 3, 3)))
    assert count == 2
    for blob in range(1, count + 1):
        values = np.unique(detections[labels == blob])
        assert values.size == 1  # one confidence per candidate: the maximum probability inside it
        assert values[0] == pytest.approx(probability[labels == blob].max(), abs=1e-6)
    assert sorted(np.unique(detections).tolist()) == pytest.approx([0.0, 0.6, 0.9], abs=1e-4)
    # Each candidate covers its bump down to peak / 2.5, nothing else (the noise stays 0).
    assert not detections[probability < 0.6 / 2.5].any()
    assert np.all(detections[_bump((8, 8, 4), 0.9) >= 0.9 / 2.5 + 1e-3] == pytest.approx(0.9, abs=1e-4))


def test_detection_map_static_threshold_and_min_voxels():
    probability = _probability([(8, 8, 4)], peak=0.9)
    probability[25, 25, 1] = 0.8  # a one-voxel speck
    detections = detection_map(probability, threshold=0.5, min_voxels=0)
    assert np.array_equal(detections > 0, probability >= 0.5)  # the speck is a candidate of its own
    assert detections[25, 25, 1] == pytest.approx(0.8)
    assert detection_map(probability, threshold=0.5, min_voxels=10)[25, 25, 1] == 0.0


def test_default_keeps_a_lesion_behind_a_brighter_speck():
    # Version 1 ("dynamic") drops every candidate when the highest peak is a speck of <= min_voxels voxels.
    probability = _probability([(8, 8, 4)], peak=0.3)
    probability[25, 25, 1] = 0.95
    detections = detection_map(probability)
    assert detections[8, 8, 4] == pytest.approx(0.3, abs=1e-4)
    assert detections[25, 25, 1] == 0.0


def test_detection_map_of_nothing_and_of_2d():
    assert not detection_map(np.zeros(SHAPE)).any()
    plane = _bump((10, 12), 0.7, shape=(24, 24))
    detections = detection_map(plane)
    assert detections.shape == (24, 24)
    assert np.unique(detections).tolist() == pytest.approx([0.0, 0.7], abs=1e-4)


@pytest.mark.parametrize("kwargs", [{"threshold": "dynamic-slow"}, {"threshold": 0.0}, {"threshold": 1.5},
                                    {"min_voxels": -1}, {"num_lesions": 0}, {"dynamic_threshold_factor": 1.0}])
def test_detection_map_rejects_bad_arguments(kwargs):
    with pytest.raises(MedTextSegError):
        detection_map(np.zeros(SHAPE), **kwargs)


def test_detection_map_rejects_logits_and_4d():
    with pytest.raises(MedTextSegError, match=r"in \[0, 1\]"):
        detection_map(np.full(SHAPE, 3.0))
    with pytest.raises(MedTextSegError, match="2D"):
        detection_map(np.zeros((2, *SHAPE)))


# ------------------------------------------------------------------------------------------ metrics


def test_perfect_probability_maps_score_one(perfect):
    metrics = lesion_detection_metrics(perfect, kind="probability")
    assert metrics["auroc"] == 1.0 and metrics["ap"] == 1.0 and metrics["picai_score"] == 1.0
    assert metrics["undefined_reason"] is None
    assert (metrics["cases"], metrics["positive_cases"], metrics["lesions"]) == (6, 3, 4)
    assert metrics["candidates"] == 4 and metrics["detected_lesions"] == 4


def test_confident_wrong_location_lowers_ap(perfect, wrong):
    metrics = lesion_detection_metrics(wrong, kind="probability")
    # Ranked: 3 false positives at 0.95, then the 4 lesions at 0.4: AP = precision at full recall = 4 / 7.
    assert metrics["ap"] == pytest.approx(4 / 7)
    assert metrics["ap"] < lesion_detection_metrics(perfect, kind="probability")["ap"]
    assert metrics["auroc"] == 1.0  # every lesion case still outranks every lesion-free case
    assert metrics["candidates"] == 7 and metrics["detected_lesions"] == 4


def test_shuffled_maps_score_lower(perfect):
    # Lesion cases get the empty maps of lesion-free cases and the other way round.
    predictions = [prediction for prediction, _ in perfect]
    shuffled = [(predictions[(index + 3) % 6], target) for index, (_, target) in enumerate(perfect)]
    metrics = lesion_detection_metrics(shuffled)
    assert metrics["picai_score"] < 1.0
    assert (metrics["auroc"], metrics["ap"], metrics["picai_score"]) == (0.0, 0.0, 0.0)


def test_numbers_come_from_picai_eval(wrong, monkeypatch):
    import picai_eval

    calls = []
    original = picai_eval.evaluate

    def spy(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(picai_eval, "evaluate", spy)
    # A mixed cohort (not all 1.0): the wrong maps of the first three cases, the perfect lesion-free ones.
    cases = wrong[:3] + [(_probability([], seed=index), target) for index, (_, target) in enumerate(wrong[3:])]
    cases[4] = (np.maximum(cases[4][0], _bump((16, 16, 4), 0.99)), cases[4][1])  # a false positive at 0.99
    metrics = lesion_detection_metrics(cases, kind="probability")
    assert len(calls) == 1 and calls[0]["num_parallel_calls"] == 1

    direct = original(y_det=[detection_map(prediction) for prediction, _ in cases],
                      y_true=[target for _, target in cases], num_parallel_calls=1)
    assert metrics["auroc"] == pytest.approx(direct.auroc) and 0.0 < metrics["auroc"] < 1.0
    assert metrics["ap"] == pytest.approx(direct.AP) and 0.0 < metrics["ap"] < 1.0
    assert metrics["picai_score"] == pytest.approx(direct.score)
    assert metrics["lesions"] == direct.num_lesions == 4


def test_detection_maps_pass_through_unchanged(wrong):
    detections = [(detection_map(prediction), target) for prediction, target in wrong]
    from_maps = lesion_detection_metrics(detections, kind="detection")
    assert from_maps == lesion_detection_metrics(detections, kind="auto")
    assert from_maps == lesion_detection_metrics(wrong, kind="auto")  # probability maps detected as such
    # A binary mask is a detection map of confidence 1: min_voxels does not apply to it.
    masks = [(target.astype(bool), target) for _, target in wrong]
    assert lesion_detection_metrics(masks)["picai_score"] == 1.0


def test_probability_map_given_as_detection_map_is_refused(wrong):
    with pytest.raises(MedTextSegError, match="not a detection map"):
        lesion_detection_metrics(wrong, kind="detection")


# ------------------------------------------------------------------------------------------ edge cases


def test_no_lesion_anywhere_leaves_auroc_and_ap_undefined(perfect):
    negatives = perfect[3:]
    with_false_positive = [(np.maximum(negatives[0][0], _bump((16, 16, 4), 0.8)), negatives[0][1]), *negatives[1:]]
    for cases in (negatives, with_false_positive):
        metrics = lesion_detection_metrics(cases)
        assert metrics["auroc"] is None and metrics["ap"] is None and metrics["picai_score"] is None
        assert "no case has a ground-truth lesion" in metrics["undefined_reason"]
        assert (metrics["lesions"], metrics["positive_cases"]) == (0, 0)
    assert lesion_detection_metrics(with_false_positive)["candidates"] == 1


def test_no_lesion_free_case_leaves_auroc_undefined(perfect):
    metrics = lesion_detection_metrics(perfect[:3])
    assert metrics["auroc"] is None and metrics["picai_score"] is None
    assert metrics["ap"] == 1.0
    assert "no case without a lesion" in metrics["undefined_reason"]


def test_nothing_predicted(targets):
    metrics = lesion_detection_metrics([(np.zeros(SHAPE), target) for target in targets])
    assert (metrics["auroc"], metrics["ap"], metrics["picai_score"]) == (0.5, 0.0, 0.25)
    assert math.copysign(1.0, metrics["ap"]) == 1.0  # picai_eval's -0.0 is returned as 0.0
    assert metrics["candidates"] == 0 and metrics["detected_lesions"] == 0 and metrics["lesions"] == 4


def test_2d_cases():
    cases = [(_bump((8, 8), 0.9, shape=(24, 24)), _ball((8, 8), shape=(24, 24))),
             (np.zeros((24, 24)), np.zeros((24, 24), dtype=bool))]
    metrics = lesion_detection_metrics(cases)
    assert metrics["picai_score"] == 1.0 and metrics["lesions"] == 1


@pytest.mark.parametrize("cases, match", [
    ([], "empty"),
    ([(np.zeros(SHAPE), np.zeros((32, 32, 4)))], "same shape"),
    ([(np.zeros(SHAPE), np.full(SHAPE, 2))], "binary"),
    ([(np.full(SHAPE, -0.5), np.zeros(SHAPE))], "finite"),
    ([np.zeros(SHAPE)], "pair"),
])
def test_bad_cases_are_refused(cases, match):
    with pytest.raises(MedTextSegError, match=match):
        lesion_detection_metrics(cases)


@pytest.mark.parametrize("kwargs", [{"kind": "softmax"}, {"overlap": "iou"}, {"min_overlap": 0.0}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(MedTextSegError):
        lesion_detection_metrics([(np.zeros(SHAPE), np.zeros(SHAPE))], **kwargs)


def test_import_banners_stay_off_stdout():
    code = ("import numpy as np; from medtextseg.evaluation.lesion_detection import lesion_detection_metrics; "
            "m = np.zeros((8, 8, 4)); m[2:5, 2:5, 1:3] = 1; lesion_detection_metrics([(m, m), (m * 0, m * 0)])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""

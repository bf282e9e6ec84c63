"""Calibration (ECE) and the uncertainty-error AUROC, pooled over voxels of many predictions."""

import numpy as np
import pytest

from medtextseg.evaluation.uncertainty import UncertaintyAccumulator, save_reliability_diagram
from medtextseg.utils.errors import MedTextSegError


def test_calibrated_probabilities_have_low_ece_and_overconfident_ones_high():
    rng = np.random.default_rng(0)
    probability = rng.uniform(size=200_000)
    calibrated = rng.uniform(size=probability.shape) < probability  # P(target | p) = p
    accumulator = UncertaintyAccumulator()
    accumulator.add(probability, calibrated, np.zeros_like(probability))
    assert accumulator.expected_calibration_error() < 0.01
    overconfident = UncertaintyAccumulator()
    overconfident.add(np.where(probability > 0.5, 1.0, 0.0), calibrated, np.zeros_like(probability))
    assert overconfident.expected_calibration_error() == pytest.approx(0.25, abs=0.01)


def test_pooling_two_halves_equals_one_pass():
    rng = np.random.default_rng(1)
    probability, target = rng.uniform(size=1000), rng.uniform(size=1000) < 0.3
    uncertainty = rng.uniform(size=1000)
    whole, halves = UncertaintyAccumulator(), UncertaintyAccumulator()
    whole.add(probability, target, uncertainty)
    halves.add(probability[:500], target[:500], uncertainty[:500])
    halves.add(probability[500:], target[500:], uncertainty[500:])
    assert halves.summary() == pytest.approx(whole.summary())


def test_auroc_is_one_when_uncertainty_marks_the_errors_and_half_when_it_is_noise(tmp_path):
    rng = np.random.default_rng(2)
    target = rng.uniform(size=(40, 40)) < 0.5
    probability = np.where(target, 0.9, 0.1)
    wrong = rng.uniform(size=target.shape) < 0.2
    probability[wrong] = 1 - probability[wrong]
    marked = UncertaintyAccumulator()
    marked.add(probability, target, np.where(wrong, 0.8, 0.1))
    assert marked.error_auroc() == pytest.approx(1.0)
    noise = UncertaintyAccumulator()
    noise.add(probability, target, rng.uniform(size=target.shape))
    assert abs(noise.error_auroc() - 0.5) < 0.06
    assert save_reliability_diagram(marked, tmp_path / "r.png", "test").stat().st_size > 1000


def test_no_error_no_auroc_and_bad_maps_are_named():
    accumulator = UncertaintyAccumulator()
    assert accumulator.expected_calibration_error() is None and accumulator.error_auroc() is None
    accumulator.add(np.array([0.9, 0.1]), np.array([True, False]), np.array([0.1, 0.1]))
    assert accumulator.error_auroc() is None  # every voxel right: nothing to rank
    with pytest.raises(MedTextSegError, match="uncertainty map must be finite"):
        accumulator.add(np.array([0.5]), np.array([True]), np.array([np.nan]))
    with pytest.raises(MedTextSegError, match="one shape"):
        accumulator.add(np.array([0.5, 0.5]), np.array([True]), np.array([0.5]))

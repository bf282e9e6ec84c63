"""study.statistics: hand-computed values, scipy as the reference, and degenerate samples."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from medtextseg.study.statistics import compare_configurations, describe, holm, paired_tests
from medtextseg.utils.errors import MedTextSegError

# Student t quantiles from a printed table: t(0.975, df=4), t(0.95, df=4), t(0.975, df=2).
T_975_4, T_95_4, T_975_2 = 2.776445, 2.131847, 4.302653


# ------------------------------------------------------------------------------------------ describe


def test_describe_by_hand():
    # 1..5: mean 3, std sqrt(10 / 4), sem sqrt(2.5 / 5); CI 3 ± t(0.975, 4) * sem.
    summary = describe([5.0, 1.0, 4.0, 2.0, 3.0])
    assert summary["n"] == 5 and summary["mean"] == 3.0 and summary["median"] == 3.0
    assert (summary["min"], summary["max"]) == (1.0, 5.0)
    assert summary["std"] == pytest.approx(math.sqrt(2.5))
    assert summary["sem"] == pytest.approx(math.sqrt(0.5))
    assert summary["ci_low"] == pytest.approx(3 - T_975_4 * math.sqrt(0.5), abs=1e-5)
    assert summary["ci_high"] == pytest.approx(3 + T_975_4 * math.sqrt(0.5), abs=1e-5)
    assert summary["notes"] == []


def test_describe_confidence_level_changes_the_interval():
    summary = describe([1.0, 2.0, 3.0, 4.0, 5.0], confidence=0.90)
    assert summary["ci_high"] - 3.0 == pytest.approx(T_95_4 * math.sqrt(0.5), abs=1e-5)
    assert summary["confidence"] == 0.90


def test_describe_matches_scipy():
    values = [0.912, 0.934, 0.921, 0.899, 0.947, 0.925, 0.918, 0.930, 0.941, 0.905]
    summary = describe(values)
    interval = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    assert summary["ci_low"] == pytest.approx(interval.low) and summary["ci_high"] == pytest.approx(interval.high)
    shapiro = stats.shapiro(values)
    assert summary["shapiro_w"] == pytest.approx(shapiro.statistic)
    assert summary["shapiro_p"] == pytest.approx(shapiro.pvalue)
    assert summary["std"] == pytest.approx(np.std(values, ddof=1))
    assert all(type(summary[key]) is float for key in ("mean", "std", "ci_low", "shapiro_p", "median"))


def test_describe_one_run_has_no_spread():
    summary = describe([0.8])
    assert summary["mean"] == 0.8 and summary["median"] == 0.8
    assert summary["std"] is None and summary["ci_low"] is None and summary["ci_high"] is None
    assert summary["shapiro_p"] is None
    assert summary["notes"] == ["1 run: std and CI need >= 2 runs, Shapiro-Wilk needs >= 3"]


def test_describe_two_runs_have_a_ci_but_no_normality_test():
    summary = describe([0.7, 0.9])
    # mean 0.8, std 0.1 * sqrt(2), sem 0.1; t(0.975, 1) = 12.7062.
    assert summary["ci_high"] == pytest.approx(0.8 + 12.7062 * 0.1, abs=1e-4)
    assert summary["shapiro_w"] is None and summary["shapiro_p"] is None
    assert summary["notes"] == ["2 runs: Shapiro-Wilk needs >= 3"]


def test_describe_identical_values_give_a_zero_width_ci_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy warns (range zero, nan bounds); we must not reach it
        summary = describe([0.75, 0.75, 0.75, 0.75])
    assert summary["std"] == 0.0 and summary["ci_low"] == summary["ci_high"] == 0.75
    assert summary["shapiro_p"] is None and "all values equal" in summary["notes"][0]


def test_describe_no_values():
    summary = describe([])
    assert summary["n"] == 0 and summary["mean"] is None and summary["notes"] == ["no runs: nothing to describe"]


def test_describe_rejects_non_finite_values():
    with pytest.raises(MedTextSegError, match=r"describe: values must be finite, got \[0.5, inf\]; drop the runs"):
        describe([0.5, math.inf])


def test_describe_rejects_a_bad_confidence():
    with pytest.raises(MedTextSegError, match=r"describe: confidence must be in \(0, 1\), e.g. 0.95, got 95"):
        describe([1.0, 2.0], confidence=95)


def test_describe_rejects_a_table():
    with pytest.raises(MedTextSegError, match=r"values must be one-dimensional \(one number per run\), "
                                              r"got shape \(2, 2\)"):
        describe([[1.0, 2.0], [3.0, 4.0]])


# ------------------------------------------------------------------------------------------ paired tests


def test_paired_tests_by_hand():
    # Differences 0.02, 0.01, 0.05, 0.03: mean 0.0275, squared deviations sum 8.75e-4, sd sqrt(8.75e-4 / 3),
    # t = 0.0275 / (sd / 2) = 3.2205. All four positive: Wilcoxon W = 0, exact p = 2 / 2^4 = 0.125.
    result = paired_tests([0.80, 0.82, 0.85, 0.83], [0.78, 0.81, 0.80, 0.80])
    assert result["n"] == 4 and result["mean_difference"] == pytest.approx(0.0275)
    assert result["t_statistic"] == pytest.approx(0.0275 / (math.sqrt(8.75e-4 / 3) / 2))
    assert result["wilcoxon_statistic"] == 0.0 and result["wilcoxon_p"] == pytest.approx(0.125)
    assert result["mean_a"] == pytest.approx(0.825) and result["mean_b"] == pytest.approx(0.7975)
    assert result["notes"] == ["4 pairs: the smallest two-sided Wilcoxon p is 2/2^4 = 0.125"]


def test_paired_tests_match_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(0.80, 0.02, size=10)
    b = a - rng.normal(0.01, 0.01, size=10)
    result = paired_tests(a, b)
    t_test = stats.ttest_rel(a, b)
    interval = t_test.confidence_interval(0.95)
    assert result["t_statistic"] == pytest.approx(t_test.statistic) and result["t_p"] == pytest.approx(t_test.pvalue)
    assert result["ci_low"] == pytest.approx(interval.low) and result["ci_high"] == pytest.approx(interval.high)
    wilcoxon = stats.wilcoxon(a, b)
    assert result["wilcoxon_statistic"] == pytest.approx(wilcoxon.statistic)
    assert result["wilcoxon_p"] == pytest.approx(wilcoxon.pvalue)
    assert result["notes"] == []


def test_paired_tests_identical_samples_give_p_one_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = paired_tests([0.8, 0.7, 0.9], [0.8, 0.7, 0.9])
    assert result["t_p"] == 1.0 and result["wilcoxon_p"] == 1.0
    assert result["t_statistic"] is None and result["wilcoxon_statistic"] is None
    assert result["mean_difference"] == 0.0 and (result["ci_low"], result["ci_high"]) == (0.0, 0.0)
    assert "all differences are 0" in result["notes"][0]


def test_paired_tests_constant_difference_has_no_t_test():
    # Differences all +0.1 (up to rounding): zero variance, so t is undefined; Wilcoxon: exact p = 2 / 2^3.
    result = paired_tests([0.9, 0.8, 0.7], [0.8, 0.7, 0.6])
    assert result["t_p"] is None and result["t_statistic"] is None
    assert result["wilcoxon_p"] == pytest.approx(0.25)
    assert result["mean_difference"] == pytest.approx(0.1)
    assert "zero variance, t-test undefined" in result["notes"][0]


def test_paired_tests_one_pair():
    result = paired_tests([0.9], [0.7])
    assert result["mean_difference"] == pytest.approx(0.2)
    assert result["t_p"] is None and result["wilcoxon_p"] is None and result["ci_low"] is None
    assert result["notes"] == ["1 pair: paired tests need >= 2"]


def test_paired_tests_no_pair():
    result = paired_tests([], [])
    assert result["n"] == 0 and result["mean_difference"] is None and result["mean_a"] is None
    assert result["notes"] == ["0 pairs: paired tests need >= 2"]


def test_paired_tests_lengths_must_match():
    with pytest.raises(MedTextSegError, match=r"paired_tests: a and b must hold one value per pair .*got 3 and 2"):
        paired_tests([1.0, 2.0, 3.0], [1.0, 2.0])


def test_paired_tests_reject_nan():
    with pytest.raises(MedTextSegError, match=r"paired_tests: b must be finite"):
        paired_tests([1.0, 2.0], [1.0, math.nan])


# ------------------------------------------------------------------------------------------ Holm


def test_holm_by_hand():
    # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> raised to 0.06 (monotone).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_keeps_a_single_p():
    assert holm([0.2, 0.5, 0.9]) == pytest.approx([0.6, 1.0, 1.0])  # 0.2 * 3, min(1, 0.5 * 2), max(0.9, 1)
    assert holm([0.04]) == [0.04]
    assert holm([]) == []


def test_holm_lies_between_raw_and_bonferroni():
    rng = np.random.default_rng(1)
    raw = rng.random(12) ** 3
    adjusted = np.asarray(holm(raw.tolist()))
    assert np.all(adjusted >= raw - 1e-15)
    assert np.all(adjusted <= np.minimum(1.0, 12 * raw) + 1e-15)
    order = np.argsort(raw)
    assert np.all(np.diff(adjusted[order]) >= 0)  # the order of the raw p-values is kept


@pytest.mark.parametrize("bad", [1.5, -0.1, None, math.nan, "0.1"])
def test_holm_rejects_what_is_not_a_p_value(bad):
    with pytest.raises(MedTextSegError, match=r"holm: p-values must be numbers in \[0, 1\], got .* at index 1"):
        holm([0.01, bad])


# ------------------------------------------------------------------------------------------ configurations


TABLE = {
    "dice": {0: 0.91, 1: 0.93, 2: 0.92, 3: 0.95},
    "jaccard": {0: 0.88, 1: 0.90, 2: 0.91, 3: 0.90},
    "tversky": {0: 0.89, 1: 0.92, 3: 0.90, 4: 0.93},  # no seed 2; seed 4 only here
}


def test_compare_configurations_pairs_shared_seeds():
    rows = compare_configurations(TABLE)
    assert [(row["configuration_a"], row["configuration_b"]) for row in rows] == [
        ("dice", "jaccard"), ("dice", "tversky"), ("jaccard", "tversky")]
    assert rows[0]["seeds"] == [0, 1, 2, 3] and rows[1]["seeds"] == [0, 1, 3]
    expected = paired_tests([0.91, 0.93, 0.95], [0.89, 0.92, 0.90])
    assert rows[1]["t_p"] == pytest.approx(expected["t_p"])
    assert rows[1]["mean_difference"] == pytest.approx(expected["mean_difference"])
    assert any("seeds [2, 4] are missing from one of the two configurations" in note for note in rows[1]["notes"])


def test_compare_configurations_holm_over_the_pairs():
    rows = compare_configurations(TABLE)
    raw = [row["t_p"] for row in rows]
    m = 3
    # Holm by hand from the raw values: sorted ascending, multiplied by 3, 2, 1, running maximum, capped at 1.
    order = sorted(range(m), key=raw.__getitem__)
    expected, running = [0.0] * m, 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * raw[index]))
        expected[index] = running
    assert [row["t_p_holm"] for row in rows] == pytest.approx(expected)
    assert [row["wilcoxon_p_holm"] for row in rows] == pytest.approx(holm([row["wilcoxon_p"] for row in rows]))
    assert all(row["t_p_holm"] >= row["t_p"] for row in rows)


def test_compare_configurations_none_is_a_missing_run_and_untested_pairs_stay_none():
    rows = compare_configurations({"a": {0: 0.9, 1: 0.8, 2: None}, "b": {0: 0.7, 1: 0.75, 2: 0.6},
                                   "c": {0: 0.5, 1: None, 2: 0.3}})
    assert rows[0]["seeds"] == [0, 1] and rows[0]["n"] == 2
    assert rows[2]["seeds"] == [0, 2] and rows[2]["t_p"] is not None
    assert rows[1]["n"] == 1 and rows[1]["t_p"] is None and rows[1]["t_p_holm"] is None
    # Only two pairs were tested, so m = 2 for Holm.
    assert rows[0]["t_p_holm"] == pytest.approx(holm([rows[0]["t_p"], rows[2]["t_p"]])[0])


def test_compare_configurations_of_one_configuration_is_empty():
    assert compare_configurations({"only": {0: 0.9, 1: 0.8}}) == []


def test_compare_configurations_rejects_infinite_values():
    with pytest.raises(MedTextSegError, match=r"table\['a'\]\[1\] must be a finite number or None .*got inf"):
        compare_configurations({"a": {0: 0.9, 1: math.inf}, "b": {0: 0.8, 1: 0.7}})


def test_compare_configurations_rejects_a_flat_table():
    with pytest.raises(MedTextSegError, match=r"table\['a'\] must map seed -> value, got list"):
        compare_configurations({"a": [0.9, 0.8]})

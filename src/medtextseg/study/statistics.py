"""Statistics of repeated runs: describe a sample, compare two paired samples, correct for many comparisons.

A *study* trains the same configuration with several seeds (METHODS §3.6: 10 runs per loss, mean ± std,
95% CIs, Shapiro–Wilk; §5 item 12: paired t-test). Each run gives one number per metric (e.g. its mean Dice
over the test prompts); this module works on those per-run numbers. The tests come from ``scipy.stats``; only
the Holm correction is written here (statsmodels, which has it, is not a dependency).

Small-sample policy
-------------------
Nothing here raises or returns nan because a sample is small or constant; an undefined quantity is None
and the result's ``notes`` (a list of one-line strings) say why::

    quantity                          needs                     otherwise
    mean, median, min, max            n >= 1                    None (n = 0)
    std (ddof=1), 95% CI of the mean  n >= 2                    None; all values equal: std 0, CI [mean, mean]
    Shapiro–Wilk W, p                 n >= 3, values not equal  None
    paired t-test                     n >= 2 pairs              None; all differences 0: p = 1.0;
                                                                all equal but not 0: None (zero variance)
    Wilcoxon signed-rank              n >= 2 pairs              None; all differences 0: p = 1.0

Differences count as equal when their range is at most :data:`EQUAL_TOLERANCE` (floating-point noise in a
difference of two means must not turn into a t statistic of 1e15).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats

from medtextseg.utils.errors import MedTextSegError

#: Two differences closer than this are equal (see the module docstring).
EQUAL_TOLERANCE = 1e-12
#: With n pairs the smallest two-sided exact Wilcoxon p is 2 / 2**n: below 6 pairs it cannot reach 0.05.
WILCOXON_MIN_PAIRS_FOR_005 = 6


def _as_sample(values: Sequence[float], caller: str, name: str = "values") -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise MedTextSegError(f"{caller}: {name} must be a sequence of numbers, got {values!r}") from None
    if array.ndim != 1:
        raise MedTextSegError(f"{caller}: {name} must be one-dimensional (one number per run), "
                              f"got shape {array.shape}")
    if not np.isfinite(array).all():
        raise MedTextSegError(f"{caller}: {name} must be finite, got {array.tolist()}; drop the runs "
                              "without a value (None, inf) before calling")
    return array


def _check_confidence(confidence: float, caller: str) -> None:
    if not 0.0 < confidence < 1.0:
        raise MedTextSegError(f"{caller}: confidence must be in (0, 1), e.g. 0.95, got {confidence}")


def describe(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, spread, confidence interval of the mean and a normality test of one sample of runs.

    Args:
        values: one finite number per run (e.g. each seed's mean Dice), any order.
        confidence: level of the interval, in (0, 1).

    Returns:
        ``n``; ``mean``, ``median``, ``min``, ``max`` (None when n = 0); ``std`` (sample std, ddof=1; None
        when n < 2); ``sem`` (std / sqrt(n)); ``ci_low``, ``ci_high`` (Student-t interval of the mean,
        ``mean ± t_{(1+confidence)/2, n-1} * sem``; None when n < 2: one run says nothing about run-to-run
        spread); ``confidence``; ``shapiro_w``, ``shapiro_p`` (Shapiro–Wilk; None when n < 3, where the test
        is not defined, or when all values are equal, where W is 0/0); ``notes``, a list of strings that
        say why a field is None. All numbers are Python floats.

    Raises:
        MedTextSegError: ``values`` is not a flat sequence of finite numbers, or ``confidence`` is not in
            (0, 1).

    Example:
        >>> summary = describe([1.0, 2.0, 3.0, 4.0, 5.0])  # t(0.975, 4) = 2.776, sem = sqrt(2.5 / 5)
        >>> summary["mean"], round(summary["std"], 4), round(summary["ci_low"], 4), round(summary["ci_high"], 4)
        (3.0, 1.5811, 1.0368, 4.9632)
    """
    _check_confidence(confidence, "describe")
    array = _as_sample(values, "describe")
    n = int(array.size)
    result: dict[str, Any] = {"n": n, "mean": None, "std": None, "sem": None, "ci_low": None, "ci_high": None,
                              "confidence": confidence, "median": None, "min": None, "max": None,
                              "shapiro_w": None, "shapiro_p": None, "notes": []}
    notes: list[str] = result["notes"]
    if n == 0:
        notes.append("no runs: nothing to describe")
        return result
    result.update(mean=float(array.mean()), median=float(np.median(array)), min=float(array.min()),
                  max=float(array.max()))
    if n < 2:
        notes.append("1 run: std and CI need >= 2 runs, Shapiro-Wilk needs >= 3")
        return result
    std = float(array.std(ddof=1))
    sem = float(stats.sem(array))
    result.update(std=std, sem=sem)
    if np.ptp(array) == 0.0:
        result.update(ci_low=result["mean"], ci_high=result["mean"])
        notes.append("all values equal: std 0, the CI is the single value, Shapiro-Wilk undefined")
        return result
    low, high = stats.t.interval(confidence, df=n - 1, loc=result["mean"], scale=sem)
    result.update(ci_low=float(low), ci_high=float(high))
    if n < 3:
        notes.append(f"{n} runs: Shapiro-Wilk needs >= 3")
        return result
    shapiro = stats.shapiro(array)
    result.update(shapiro_w=float(shapiro.statistic), shapiro_p=float(shapiro.pvalue))
    return result


def paired_tests(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Paired t-test and Wilcoxon signed-rank test of ``a`` against ``b`` (same seeds, or same cases).

    Args:
        a: one finite number per pair (e.g. configuration A's mean Dice for seeds 0, 1, 2).
        b: the same length, in the same pair order (configuration B's values for seeds 0, 1, 2).
        confidence: level of the interval of the mean difference, in (0, 1).

    Returns:
        ``n`` (pairs); ``mean_a``, ``mean_b``; ``mean_difference`` (mean of ``a - b``), ``ci_low``,
        ``ci_high`` (its Student-t interval, as :func:`describe`); ``t_statistic``, ``t_p``
        (``scipy.stats.ttest_rel``, two-sided); ``wilcoxon_statistic``, ``wilcoxon_p``
        (``scipy.stats.wilcoxon``, two-sided, zero differences dropped, exact distribution for small n);
        ``notes``. Degenerate inputs follow the module docstring's table: with fewer than 2 pairs both
        tests are None; with all differences 0 both p-values are 1.0 (statistics None), where scipy would
        raise or return nan; with all differences equal but not 0, the t-test is None (zero variance).

    Raises:
        MedTextSegError: the samples have different lengths or hold non-finite values.

    Example:
        >>> result = paired_tests([0.80, 0.82, 0.85, 0.83], [0.78, 0.81, 0.80, 0.80])
        >>> round(result["mean_difference"], 4), round(result["t_p"], 4), result["wilcoxon_p"]
        (0.0275, 0.0486, 0.125)
    """
    _check_confidence(confidence, "paired_tests")
    first, second = _as_sample(a, "paired_tests", "a"), _as_sample(b, "paired_tests", "b")
    if first.size != second.size:
        raise MedTextSegError(f"paired_tests: a and b must hold one value per pair (same seeds or cases, "
                              f"same order), got {first.size} and {second.size} values")
    n = int(first.size)
    difference = describe(first - second, confidence)
    result: dict[str, Any] = {
        "n": n, "mean_a": float(first.mean()) if n else None, "mean_b": float(second.mean()) if n else None,
        "mean_difference": difference["mean"], "ci_low": difference["ci_low"], "ci_high": difference["ci_high"],
        "confidence": confidence, "t_statistic": None, "t_p": None, "wilcoxon_statistic": None,
        "wilcoxon_p": None, "notes": []}
    notes: list[str] = result["notes"]
    if n < 2:
        notes.append(f"{n} pair{'s' if n != 1 else ''}: paired tests need >= 2")
        return result
    differences = first - second
    if np.all(np.abs(differences) <= EQUAL_TOLERANCE):
        result.update(t_p=1.0, wilcoxon_p=1.0)
        notes.append("all differences are 0: no evidence of a difference, p = 1.0 (no test statistic)")
        return result
    if np.ptp(differences) <= EQUAL_TOLERANCE:
        notes.append(f"all differences equal {differences[0]:+.4g}: zero variance, t-test undefined; "
                     "see Wilcoxon")
    else:
        t_test = stats.ttest_rel(first, second)
        result.update(t_statistic=float(t_test.statistic), t_p=float(t_test.pvalue))
    with warnings.catch_warnings():
        # Ties or zeros make scipy fall back from the exact distribution with a warning; the p-value stands.
        warnings.simplefilter("ignore", UserWarning)
        wilcoxon = stats.wilcoxon(first, second)
    result.update(wilcoxon_statistic=float(wilcoxon.statistic), wilcoxon_p=float(wilcoxon.pvalue))
    if n < WILCOXON_MIN_PAIRS_FOR_005:
        notes.append(f"{n} pairs: the smallest two-sided Wilcoxon p is 2/2^{n} = {2 / 2 ** n:.3g}")
    return result


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down; controls the family-wise error rate).

    Sort the m p-values ascending, p_(1) <= ... <= p_(m); the adjusted value of p_(i) is
    ``min(1, max_{j <= i} (m - j + 1) * p_(j))``, so adjusted values keep the order of the raw ones. Reject
    hypothesis i at level alpha when its adjusted p <= alpha. Ties keep their input order (equal raw values
    get equal adjusted values anyway).

    Args:
        pvalues: raw p-values in [0, 1], any order; may be empty.

    Returns:
        The adjusted p-values, in the input order, as floats.

    Raises:
        MedTextSegError: a value is not a number in [0, 1] (None or nan included: leave untested pairs out).

    Example:
        >>> holm([0.01, 0.04, 0.03, 0.005])  # 0.005*4, 0.01*3, 0.03*2, max(0.04*1, 0.06)
        [0.03, 0.06, 0.06, 0.02]
    """
    values = []
    for index, value in enumerate(pvalues):
        if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool) \
                or not 0.0 <= float(value) <= 1.0:
            raise MedTextSegError(f"holm: p-values must be numbers in [0, 1], got {value!r} at index {index}")
        values.append(float(value))
    m = len(values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=values.__getitem__)):
        running = max(running, min(1.0, (m - rank) * values[index]))
        adjusted[index] = running
    return adjusted


def _holm_where_defined(pvalues: list[float | None]) -> list[float | None]:
    defined = [index for index, value in enumerate(pvalues) if value is not None]
    adjusted: list[float | None] = [None] * len(pvalues)
    for index, value in zip(defined, holm([pvalues[index] for index in defined]), strict=True):
        adjusted[index] = value
    return adjusted


def seed_key(seed: Any) -> tuple[int, float, str]:
    # Integer seeds in numeric order, anything else (e.g. case names) after them, alphabetically.
    if isinstance(seed, (int, float, np.integer, np.floating)) and not isinstance(seed, bool):
        return (0, float(seed), "")
    return (1, 0.0, str(seed))


def _check_table(table: Mapping[str, Mapping[Any, float | None]]) -> None:
    if not isinstance(table, Mapping):
        raise MedTextSegError(f"compare_configurations: table must map configuration -> {{seed: value}}, "
                              f"got {type(table).__name__}")
    for configuration, values in table.items():
        if not isinstance(values, Mapping):
            raise MedTextSegError(f"compare_configurations: table[{configuration!r}] must map seed -> value, "
                                  f"got {type(values).__name__}")
        for seed, value in values.items():
            if value is not None and not (isinstance(value, (int, float, np.integer, np.floating))
                                          and not isinstance(value, bool) and math.isfinite(value)):
                raise MedTextSegError(f"compare_configurations: table[{configuration!r}][{seed!r}] must be a "
                                      f"finite number or None (no value for that run), got {value!r}")


def compare_configurations(table: Mapping[str, Mapping[Any, float | None]], confidence: float = 0.95,
                           against: str | None = None) -> list[dict[str, Any]]:
    """All pairwise paired comparisons between configurations, Holm-corrected across the pairs; with
    ``against`` (a configuration of the table), only each other configuration against it (A: the other, B:
    ``against``), Holm-corrected across those pairs.

    Args:
        table: ``{configuration: {seed: value}}``, e.g. ``{"dice": {0: 0.81, 1: 0.79}, "jaccard": {0: 0.78,
            1: 0.80}}``. A value of None means the run has no value (e.g. a group it never saw) and counts
            as missing. Each pair is compared over the seeds both configurations have, in sorted seed order.
        confidence: level of each mean-difference interval.

    Returns:
        One row per unordered pair, in the table's order (A before B when A comes first): the keys of
        :func:`paired_tests` (differences are A - B) plus ``configuration_a``, ``configuration_b``,
        ``seeds`` (the shared seeds) and ``t_p_holm``, ``wilcoxon_p_holm``. Holm is applied separately to
        the t-test and to the Wilcoxon p-values, over the pairs where that test is defined (m = their
        number); the adjusted value is None where the raw one is. Fewer than 2 configurations: ``[]``.

    Raises:
        MedTextSegError: the table is not ``{configuration: {seed: value}}`` or holds a non-finite value.

    Example:
        >>> rows = compare_configurations({"a": {0: 0.9, 1: 0.8, 2: 0.85}, "b": {0: 0.7, 1: 0.75, 2: 0.7},
        ...                                "c": {1: 0.8, 2: 0.8}})
        >>> [(row["configuration_a"], row["configuration_b"], row["seeds"]) for row in rows]
        [('a', 'b', [0, 1, 2]), ('a', 'c', [1, 2]), ('b', 'c', [1, 2])]
    """
    _check_table(table)
    if against is not None and against not in table:
        raise MedTextSegError(f"compare_configurations: against={against!r} is not a configuration of the table "
                              f"{sorted(table)}")
    pairs = combinations(table, 2) if against is None else [(name, against) for name in table if name != against]
    rows = []
    for name_a, name_b in pairs:
        values_a = {seed: value for seed, value in table[name_a].items() if value is not None}
        values_b = {seed: value for seed, value in table[name_b].items() if value is not None}
        seeds = sorted(set(values_a) & set(values_b), key=seed_key)
        result = paired_tests([values_a[seed] for seed in seeds], [values_b[seed] for seed in seeds], confidence)
        missing = sorted(set(values_a) ^ set(values_b), key=seed_key)
        if missing:
            result["notes"].append(f"seeds {missing} are missing from one of the two configurations; "
                                   f"compared over {len(seeds)} shared")
        rows.append({"configuration_a": name_a, "configuration_b": name_b, "seeds": seeds, **result})
    for test in ("t_p", "wilcoxon_p"):
        for row, adjusted in zip(rows, _holm_where_defined([row[test] for row in rows]), strict=True):
            row[f"{test}_holm"] = adjusted
    return rows

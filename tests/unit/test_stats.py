"""The report's statistics against published values (Newcombe 1998a and 1998b)."""

from __future__ import annotations

import pytest

from app.observability.stats import newcombe_difference, percentile, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "lower", "upper"),
    [
        # Newcombe 1998a (Stat Med 17:857), method 3, the paper's four examples.
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_the_published_examples(
    k: int, n: int, lower: float, upper: float
) -> None:
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(lower, abs=5e-5)
    assert high == pytest.approx(upper, abs=5e-5)


def test_wilson_interval_edges() -> None:
    # The bound at the edge is exact, not merely close.
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(0.2775, abs=5e-5)
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(0.7225, abs=5e-5)
    assert high == 1.0
    # No trials: nothing is known, the interval is the whole range.
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # A bigger sample narrows the interval around the same rate.
    small, large = wilson_interval(5, 10), wilson_interval(500, 1000)
    assert large[1] - large[0] < small[1] - small[0]
    assert large[0] < 0.5 < large[1]
    with pytest.raises(ValueError, match="k <= n"):
        wilson_interval(3, 2)
    with pytest.raises(ValueError, match="k <= n"):
        wilson_interval(-1, 2)


@pytest.mark.parametrize(
    ("k1", "n1", "k2", "n2", "lower", "upper"),
    [
        # Newcombe 1998b (Stat Med 17:873), Table II, method 10.
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
        (5, 56, 0, 29, -0.0381, 0.1926),
        (0, 10, 0, 20, -0.1611, 0.2775),
        (0, 10, 0, 10, -0.2775, 0.2775),
        (10, 10, 0, 20, 0.6791, 1.0),
        (10, 10, 0, 10, 0.6075, 1.0),
    ],
)
def test_newcombe_difference_matches_the_published_examples(
    k1: int, n1: int, k2: int, n2: int, lower: float, upper: float
) -> None:
    estimate, low, high = newcombe_difference(k1, n1, k2, n2)
    assert estimate == pytest.approx(k1 / n1 - k2 / n2)
    assert low == pytest.approx(lower, abs=5e-5)
    assert high == pytest.approx(upper, abs=5e-5)


def test_newcombe_difference_of_the_brief_example_and_its_mirror() -> None:
    estimate, low, high = newcombe_difference(56, 70, 48, 80)
    assert round(estimate, 4) == 0.2
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    # Swapping the samples mirrors the interval.
    m_estimate, m_low, m_high = newcombe_difference(48, 80, 56, 70)
    assert m_estimate == pytest.approx(-estimate)
    assert m_low == pytest.approx(-high)
    assert m_high == pytest.approx(-low)
    with pytest.raises(ValueError, match="at least one trial"):
        newcombe_difference(0, 0, 1, 2)


def test_percentile_interpolates_between_closest_ranks() -> None:
    # numpy.percentile([1, 2, 3, 4], q) with the default "linear" method.
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([10.0, 20.0], 25) == 12.5
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="q must be"):
        percentile(values, 101)

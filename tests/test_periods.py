from __future__ import annotations

import numpy as np
import pytest

from siamese.periods import Period, period_of, periods_between, validate_step

pytestmark = pytest.mark.fast  # no model, no browser: make test-fast


@pytest.mark.parametrize(("year", "step", "expected"), [
    (1949, 10, Period(1940, 1949)),
    (1950, 10, Period(1950, 1959)),
    (1959, 10, Period(1950, 1959)),
    (1953, 1, Period(1953, 1953)),
    (1953, 5, Period(1950, 1954)),
    (1955, 5, Period(1955, 1959)),
    (0, 10, Period(0, 9)),
    (-1, 10, Period(-10, -1)),
    (-10, 10, Period(-10, -1)),
    (-11, 10, Period(-20, -11)),
])
def test_periods_are_aligned_to_calendar_multiples_of_the_step(year, step, expected):
    period = period_of(year, step)
    assert period == expected
    assert year in period
    assert period.step == step


def test_labels_name_single_years_and_ranges():
    assert period_of(1953, 1).label == "1953"
    assert period_of(1953, 10).label == "1950-1959"
    assert period_of(-5, 10).label == "-10--1"


def test_a_period_holds_exactly_its_years():
    decade = Period(1950, 1959)
    assert 1950 in decade and 1959 in decade
    assert 1949 not in decade and 1960 not in decade
    assert "1955" not in decade and True not in Period(1, 1)
    assert np.int64(1955) in decade  # what VectorStore.years() yields


def test_periods_between_includes_empty_periods_in_order():
    assert periods_between(1948, 1971, 10) == [Period(1940, 1949), Period(1950, 1959), Period(1960, 1969),
                                               Period(1970, 1979)]
    years = periods_between(1950, 1953, 1)
    assert [period.label for period in years] == ["1950", "1951", "1952", "1953"]
    assert periods_between(1950, 1950, 1) == [Period(1950, 1950)]
    assert periods_between(-3, 2, 5) == [Period(-5, -1), Period(0, 4)]
    assert periods_between(1960, 1950, 10) == []


@pytest.mark.parametrize("step", [0, -1, 1.5, "10", None, True])
def test_validate_step_rejects_what_is_not_a_positive_whole_number(step):
    with pytest.raises(ValueError, match="positive whole number"):
        validate_step(step)
    with pytest.raises(ValueError):
        period_of(1950, step)


def test_validate_step_returns_the_step():
    assert validate_step(10) == 10
    assert validate_step(1) == 1

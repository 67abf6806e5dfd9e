"""Calendar periods: which decade (or year, or any step) an item falls into.

Periods are aligned to calendar multiples of the step (1940-1949, 1950-1959, ...), not to the first
year of a collection, so that indices built on different collections (or on a collection that grows)
name the same periods the same way, and a reader sees familiar decades on the timeline.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Period:
    """A closed range of years [start, end] for one step size."""

    start: int
    end: int

    @property
    def step(self) -> int:
        return self.end - self.start + 1

    @property
    def label(self) -> str:
        """'1950' for a single year, '1950-1959' otherwise: what the timeline and the JSON show."""
        return str(self.start) if self.start == self.end else f"{self.start}-{self.end}"

    def __contains__(self, year: object) -> bool:
        if isinstance(year, bool) or not isinstance(year, numbers.Integral):
            return False
        return self.start <= int(year) <= self.end


def validate_step(step: object) -> int:
    """Return `step` as a positive int, or raise ValueError saying what is allowed."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"a step size must be a positive whole number of years, got {step!r}")
    return step


def period_of(year: int, step: int) -> Period:
    """The period of `step` years that contains `year` (floor division, so it also holds before year 0)."""
    step = validate_step(step)
    start = year - (year % step)
    return Period(start, start + step - 1)


def periods_between(first_year: int, last_year: int, step: int) -> list[Period]:
    """Every period of `step` years from the one holding `first_year` to the one holding `last_year`.

    Empty periods in between are included: a timeline that skips them would hide exactly the gaps a
    historian is looking for.
    """
    if last_year < first_year:
        return []
    first = period_of(first_year, step)
    last = period_of(last_year, step)
    return [Period(start, start + step - 1) for start in range(first.start, last.start + 1, step)]

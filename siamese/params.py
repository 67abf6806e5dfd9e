"""Query-string parameters of the web API, parsed strictly.

Every request parameter is checked here so that a bad value is a 400 whose message says what is
allowed, never a 500 from deep inside the indexer: a typo such as `nn=5` or `nns=five` is reported
instead of being silently ignored and answered with defaults the caller did not ask for. A request
with several bad parameters is told about all of them in one answer (`Problems`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from typing import TypeVar
from urllib.parse import parse_qsl

T = TypeVar("T")

DEFAULT_NNS = 10
MAX_NNS = 100  # per list: with step 1 over 50 years that is already 5,000 neighbours in one answer
MAX_PARAMETERS = 20  # more than any route takes; bounds the work a hostile query string can cause
MAX_MESSAGE = 560  # the most an answer's "error" says of a request's problems
_DIGITS = re.compile(r"[0-9]{1,7}")  # ASCII digits only: int() would also take ' 5', '+5', '5_0', '٥'
_PERIOD = re.compile(r"([0-9]{1,4})(?:-([0-9]{1,4}))?")  # years as the metadata CSV writes them
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class ParameterError(ValueError):
    """A request parameter is missing, repeated, unknown or malformed; the message says what is allowed."""

    status = 400


def shorten(value: str, limit: int = 80) -> str:
    """`value` as repr() shows it, cut to `limit` characters: error messages echo input, never much of it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 4] + "...'"


class Problems:
    """Every bad parameter of one request, so that its 400 names them all at once, not the first only."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)

    def check(self, parse: Callable[..., T], *arguments: object, default: T | None = None) -> T | None:
        """parse(*arguments), or `default` with its complaint kept."""
        try:
            return parse(*arguments)
        except ParameterError as error:
            self.add(str(error))
            return default

    def raise_any(self) -> None:
        """ParameterError naming every problem kept, if any (at most MAX_MESSAGE characters)."""
        if len(self.messages) == 1:
            raise ParameterError(self.messages[0])
        if self.messages:
            raise ParameterError(shorten(f"{len(self.messages)} problems: " + "; ".join(self.messages),
                                         MAX_MESSAGE).strip("'\""))


def query_values(query_string: str, name: str) -> list[str]:
    """Every value of a parameter that may be given more than once (filter=...), in order."""
    try:
        text = query_string.encode("latin-1").decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict",
                          max_num_fields=MAX_PARAMETERS)
    except (UnicodeError, ValueError):
        return []  # parse_query_string says what is wrong
    return [value for key, value in pairs if key == name]


def parse_filters(values: Sequence[str]) -> dict[str, list[str]]:
    """filter=column:value, repeatable: {column: [values]} (a row must have one of a column's values,
    and pass every column's)."""
    filters: dict[str, list[str]] = {}
    for value in values:
        column, separator, wanted = value.partition(":")
        if not separator or not column.strip() or not wanted:
            raise ParameterError(f"filter must be column:value (e.g. filter=newspaper:NRC Handelsblad), got "
                                 f"{shorten(value)}")
        filters.setdefault(column.strip(), []).append(wanted)
    return filters


def parse_query_string(query_string: str, allowed: Sequence[str], route: str,
                       problems: Problems | None = None, repeatable: Sequence[str] = ()) -> dict[str, str]:
    """The parameters of a WSGI QUERY_STRING as {name: value}, each given at most once; an unknown or
    repeated one is a ParameterError, or, with `problems`, kept there and left out.

    PEP 3333 hands the query string over as latin-1 decoded bytes; it is turned back into bytes and
    read as UTF-8, strictly, so that a urn with accents or emoji arrives as the collection spells it.
    """
    try:
        text = query_string.encode("latin-1").decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict",
                          max_num_fields=MAX_PARAMETERS)
    except UnicodeError:
        raise ParameterError("the query string must be UTF-8 (percent-encoded)") from None
    except ValueError:
        raise ParameterError(f"too many parameters (at most {MAX_PARAMETERS}); {route} takes "
                             f"{_names(allowed)}") from None
    parameters: dict[str, str] = {}
    unknown: list[str] = []
    repeated: list[str] = []
    for name, value in pairs:
        if name not in allowed:
            unknown.append(shorten(name))
        elif name in parameters and name not in repeatable:
            repeated.append(repr(name))
        else:
            parameters[name] = value
        if problems is None and (unknown or repeated):
            break
    found = []
    if unknown:
        names = ", ".join(dict.fromkeys(unknown))
        found.append(f"unknown parameter{'s' if len(unknown) > 1 else ''} {names}; {route} takes "
                     f"{_names(allowed)}")
    if repeated:
        found.append(f"parameter{'s' if len(set(repeated)) > 1 else ''} {', '.join(dict.fromkeys(repeated))} "
                     "given more than once; give each once")
    if found and problems is None:
        raise ParameterError(found[0])
    for message in found:
        problems.add(message)
    return parameters


def _names(allowed: Sequence[str]) -> str:
    return ", ".join(allowed) if allowed else "no parameters"


def parse_urn(value: str | None) -> str:
    """The urn, exactly as given (urns are compared as they are stored, spaces and case included)."""
    if value is None or value == "":
        raise ParameterError("parameter 'urn' is required: the identifier of the query image, as in the "
                             "metadata CSV (e.g. urn=emoji:google:1f600)")
    return value


def parse_count(value: str | None, name: str, default: int, maximum: int) -> int:
    """A whole number from 1 to `maximum`, or `default` when the parameter is absent."""
    if value is None:
        return default
    if _DIGITS.fullmatch(value) and 1 <= int(value) <= maximum:
        return int(value)
    raise ParameterError(f"{name} must be a whole number from 1 to {maximum} (default {default}), "
                         f"got {shorten(value)}")


def parse_reprints(value: str | None, maximum: int) -> int:
    """How many of the nearest images to check for reprints: 0 (the default: none) to `maximum`."""
    if value is None:
        return 0
    if _DIGITS.fullmatch(value) and 0 <= int(value) <= maximum:
        return int(value)
    raise ParameterError(f"reprints must be a whole number from 0 to {maximum}: how many of the nearest "
                         f"images to check for being the same printed image (0: none), got {shorten(value)}")


def parse_step(value: str | None, steps: Collection[int]) -> int | None:
    """One of the step sizes the indices were built with, or None (whole collection) for 'all' or absent."""
    if value is None or value == "all":
        return None
    if _DIGITS.fullmatch(value) and int(value) in steps:
        return int(value)
    built = ", ".join(str(step) for step in steps)
    raise ParameterError(f"step must be one of the period lengths the indices were built with ({built} "
                         f"years), or 'all' (or left out) for the whole collection; got {shorten(value)}")


def parse_steps(value: str | None, steps: Collection[int]) -> list[int | None]:
    """Step sizes, comma-separated ('all,10,1'), each as parse_step reads it: None for 'all' (the whole
    collection), also when absent. Each at most once, in the order given."""
    if value is None:
        return [None]
    chosen = [parse_step(part, steps) for part in value.split(",")]
    if len(set(chosen)) != len(chosen):
        raise ParameterError(f"step lists a step size more than once: {shorten(value)}")
    return chosen


def parse_period(value: str | None) -> tuple[int, int] | None:
    """A year ('1950') or a range of years ('1950-1959', as the API labels periods); None when absent."""
    if value is None:
        return None
    match = _PERIOD.fullmatch(value)
    if match and int(match[1]) <= int(match[2] or match[1]):
        return int(match[1]), int(match[2] or match[1])
    raise ParameterError(f"period must be a year (e.g. 1950) or a range of years (e.g. 1950-1959, the "
                         f"first not after the last), got {shorten(value)}")


def parse_flag(value: str | None, name: str) -> bool:
    """true/false (also 1/0, yes/no, on/off, any case); False when absent."""
    if value is None:
        return False
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ParameterError(f"{name} must be true or false (or 1/0, yes/no, on/off), got {shorten(value)}")


FORMATS = ("json", "csv")


def parse_format(value: str | None) -> str | None:
    """format=json|csv: the answer as a file to download (None when absent: the JSON answer as ever)."""
    if value is None:
        return None
    if value.lower() in FORMATS:
        return value.lower()
    raise ParameterError(f"format must be json or csv (the answer as a file to download), got "
                         f"{shorten(value)}")

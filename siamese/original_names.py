"""The original Siamese's identifiers: its vector file names, and Delpher resolver links.

The original (KB, 2017) stored each vector as `<YEAR>/<URN with every ':' replaced by '-'>.npy` and read
the urn back by replacing every '-' with ':'. That is only right for urns without a '-' of their own:
`abc:12-3` was written `abc-12-3.npy` and came back as `abc:12:3`. A file name alone cannot say which of
its '-' were ':', so the importer restores urns by a documented rule (UrnRestorer) and reports the names
the rule cannot decide, rather than storing a guess under a wrong identifier.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

# A KB (Delpher) image urn: a collection prefix, a number, 'mpeg21' and one or more part identifiers,
# all letters and digits, e.g. ddd:010850436:mpeg21:a0001 or KBNRC01:000028496:mpeg21:a0065. KB urns
# never contain '-', so a file name that reads as one when every '-' becomes ':' has exactly one urn.
KB_URN = re.compile(r"[A-Za-z][A-Za-z0-9]*:[0-9]+:mpeg21(?::[A-Za-z0-9]+)+")
RESOLVER_HOSTS = ("resolver.kb.nl",)


def file_stem(urn: str) -> str:
    """The original's file name for `urn`, without its extension (every ':' becomes '-')."""
    return urn.replace(":", "-")


@dataclass(frozen=True)
class Restored:
    """What a file name restores to: the urn (None when it cannot be decided) and a note for the report."""

    urn: str | None
    note: str = ""


class UrnRestorer:
    """Turns the original's file names back into urns, by this rule, first match wins:

    1. `known_urns` (the urns of a metadata CSV): a name that is the file name of exactly one of them is
       that urn; a name shared by several of them ('a:b-c' and 'a-b:c' are both 'a-b-c') cannot be
       decided. This is how urns with a '-' of their own are restored.
    2. A name without '-' is the urn as it is.
    3. A name that becomes a KB urn (KB_URN) when every '-' becomes ':' is that urn.
    4. Anything else cannot be decided: the '-' may have been ':' or '-'. With `dashes_as_colons` it is
       read as the original read it (every '-' a ':'), and the report says so.
    """

    def __init__(self, known_urns: Iterable[str] = (), dashes_as_colons: bool = False) -> None:
        self._by_stem: dict[str, list[str]] = {}
        for urn in known_urns:
            self._by_stem.setdefault(file_stem(urn), []).append(urn)
        self.dashes_as_colons = dashes_as_colons

    def restore(self, stem: str) -> Restored:
        known = self._by_stem.get(stem)
        if known and len(known) == 1:
            return Restored(known[0])
        if known:
            return Restored(None, f"ambiguous: the metadata CSV has {len(known)} urns with this file name "
                                  f"({', '.join(sorted(known)[:5])})")
        if "-" not in stem:
            return Restored(stem)
        as_colons = stem.replace("-", ":")
        if KB_URN.fullmatch(as_colons):
            return Restored(as_colons)
        if self.dashes_as_colons:
            return Restored(as_colons, "not a KB urn: every '-' read as ':', as the original did")
        return Restored(None, "ambiguous: not a KB urn, so each '-' may have been ':' or '-'; give its "
                              "true urn in a --metadata CSV (or accept the original's reading with "
                              "--dashes-as-colons)")


def urn_from_resolver_link(value: str) -> str:
    """The urn of a Delpher resolver link (http://resolver.kb.nl/resolve?urn=...), else `value` as it is.

    The original cut such a link at its first '='; this reads the link's `urn` parameter properly, so
    a link with more parameters, https, or upper-case host works too.
    """
    if "://" not in value:
        return value
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return value
    if parts.scheme.lower() not in ("http", "https") or (parts.hostname or "") not in RESOLVER_HOSTS:
        return value
    urns = parse_qs(parts.query).get("urn")
    return urns[0] if urns and urns[0] else value

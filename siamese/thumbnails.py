"""The thumbnail naming contract: make_thumbnails.py writes THUMBNAIL_DIR/<name>, the web app reads it.

Percent-encoding keeps ':' and '/' out of names without the ':'-to-'-' trick that made the original
Siamese confuse identifiers; overlong urns fall back to a hash.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import quote

MAX_NAME_BYTES = 200


def thumbnail_filename(urn: str) -> str:
    """A file name for the urn's thumbnail that is safe on every file system and reversible."""
    name = quote(urn, safe="-_.~")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name.encode()) > MAX_NAME_BYTES:
        name = "sha1-" + hashlib.sha1(urn.encode()).hexdigest()
    return name + ".jpg"


class Thumbnails:
    """A thumbnail folder as the web app reads it; the folder may be absent (the page shows placeholders).

    Asked for every neighbour of every answer (150 of them for 10 per year over 15 years), so names
    are cached and the file system is asked with one stat: thumbnails made while the server runs
    appear, removed ones disappear.
    """

    def __init__(self, directory: str | os.PathLike | None) -> None:
        self.directory = None if directory is None else Path(directory)
        self._names: dict[str, str] = {}

    def _file(self, urn: str) -> str:
        name = self._names.get(urn)
        if name is None:
            name = thumbnail_filename(urn)
            if len(self._names) < 1 << 16:
                self._names[urn] = name
        return os.path.join(self.directory, name)

    def exists(self, urn: str) -> bool:
        return self.directory is not None and os.path.isfile(self._file(urn))

    def version(self, urn: str) -> str | None:
        """A token that changes whenever the urn's thumbnail file does (its modification time and
        size), or None when there is none: URLs carrying it can be cached for good."""
        if self.directory is None:
            return None
        try:
            stat = os.stat(self._file(urn))
        except OSError:
            return None
        return f"{stat.st_mtime_ns:x}{stat.st_size:x}"

    def state(self) -> str:
        """A token that changes when thumbnails are added or removed (the folder's modification time)."""
        if self.directory is None:
            return "-"
        try:
            return f"{os.stat(self.directory).st_mtime_ns:x}"
        except OSError:
            return "-"

    def path(self, urn: str) -> Path | None:
        """The thumbnail file of `urn`, or None when none was made (not yet, or the image was rejected)."""
        return Path(self._file(urn)) if self.exists(urn) else None

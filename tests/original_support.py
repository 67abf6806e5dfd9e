"""A small vector folder in the original Siamese's layout, from real images, for the import and API tests.

The vectors are those the real Inception v3 (2015) gave 48 real emoji images (the app_collection
fixture's store), written as the original wrote them: OLD/<YEAR>/<URN with ':' -> '-'>.npy, float32,
years only in the folder names. The urns mix what a collection holds:

* KB urns (ddd:010850400:mpeg21:a0000, KBNRC01:...): restored from their file names alone;
* the emoji's own urns (emoji:google:0023-fe0f-20e3): ':' and '-', restorable only with a metadata CSV;
* names without ':' (img3, or google_0023-fe0f-20e3 with its '-'), the first restorable alone;
* one emoji urn that the metadata CSV makes ambiguous: it also lists a urn with the same file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conftest import write_csv
from siamese.original_names import KB_URN, file_stem
from siamese.vector_store import VectorStore

COUNT = 48  # the 24 pairs of the app collection; its 49th item (the odd urn) is left out


@dataclass(frozen=True)
class OriginalLayout:
    old_dir: Path
    metadata_csv: Path  # the true urns, with a name and a maker column (and one urn with no file)
    urns: list[str]  # the true urn of every file, in the order written
    years: dict[str, int]
    vectors: dict[str, np.ndarray]
    source_urn: dict[str, str]  # the app collection's urn of the image each urn stands for
    ambiguous: str  # a true urn that even the metadata CSV cannot restore

    @property
    def restorable(self) -> list[str]:
        return [urn for urn in self.urns if urn != self.ambiguous]

    @property
    def kb_or_plain(self) -> list[str]:
        """The urns restorable without a metadata CSV."""
        return [urn for urn in self.urns if KB_URN.fullmatch(urn) or "-" not in file_stem(urn)]


def true_urn(index: int, source: dict) -> str:
    kind = index % 4
    maker, unified = source["metadata"]["maker"], source["metadata"]["unified"]
    if kind == 0:
        return f"ddd:{10850400 + index:09d}:mpeg21:a{index:04d}"
    if kind == 1:
        return f"KBNRC01:{28400 + index:09d}:mpeg21:a{index:04d}"
    if kind == 2:
        return source["urn"]  # emoji:<maker>:<unified>, unified often with '-'
    return f"img{index}" if index % 8 == 3 else f"{maker}_{unified}"


def write_original_layout(directory: Path, store: VectorStore) -> OriginalLayout:
    old_dir = directory / "old-vectors"
    urns, years, vectors, sources, rows = [], {}, {}, {}, []
    for index in range(COUNT):
        source = store.items[index]
        urn = true_urn(index, source)
        year = 1900 + (index % 16) * 6  # 1900 ... 1990: three images a year, both halves of the century
        vector = np.array(store.vectors[index], dtype=np.float32)
        folder = old_dir / str(year)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{file_stem(urn)}.npy", vector)
        urns.append(urn)
        years[urn], vectors[urn], sources[urn] = year, vector, source["urn"]
        rows.append({"urn": urn, "name": source["metadata"]["name"], "maker": source["metadata"]["maker"]})
    ambiguous = urns[6]
    assert ambiguous.startswith("emoji:")
    rows.append({"urn": ambiguous.replace(":", "-", 1), "name": "same file name", "maker": "nobody"})
    assert len(set(map(file_stem, urns))) == len(urns)
    csv_path = write_csv(directory / "true-urns.csv", rows)
    return OriginalLayout(old_dir, csv_path, urns, years, vectors, sources, ambiguous)

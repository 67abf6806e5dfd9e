"""A small real collection for the web app's tests, and helpers to call the app.

49 real emoji images (24 Google/Twitter pairs and one more under a urn full of characters that URLs,
file names and HTML treat specially), their vectors from the real Inception v3, real thumbnails and
real Annoy indices for steps 10 and 1. One thumbnail is removed on purpose, as when an image was
rejected by make_thumbnails.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from wsgiref.util import setup_testing_defaults

from annoy_indexer import AnnoyIndexer
from conftest import write_csv
from extract_vectors import extract_vectors
from make_thumbnails import make_thumbnails
from siamese.thumbnails import thumbnail_filename

# Spaces, a slash, URL delimiters, a percent sign, HTML's < and &, non-ASCII letters and an emoji.
ODD_URN = "odd urn/ä ß?#&=+%20<b>&amp;🦆"
ODD_YEAR = "2012"  # a year no emoji of the sample has: a period of its own


@dataclass(frozen=True)
class AppCollection:
    vector_dir: Path
    index_dir: Path
    thumbnail_dir: Path
    urns: list[str]  # every urn of the collection, in CSV order
    pairs: list[tuple[str, str]]  # (google urn, twitter urn) of the same emoji
    odd_urn: str
    no_thumbnail_urn: str  # in the collection, but its thumbnail is missing


def build_collection(directory: Path, emoji_pairs: list[tuple[dict, dict]], emoji_metadata: Path,
                     embedder) -> AppCollection:
    rows = [dict(row, path=str(emoji_metadata.parent / row["path"])) for pair in emoji_pairs for row in pair]
    rows.append(dict(rows[0], urn=ODD_URN, date=ODD_YEAR, name="Odd <urn> & co"))
    csv_path = write_csv(directory / "metadata.csv", rows)
    vector_dir, index_dir, thumbnail_dir = directory / "vectors", directory / "indices", directory / "thumbs"
    report = extract_vectors(csv_path, vector_dir, embedder=embedder, progress=False)
    assert report.stored == len(rows) and not report.rejects, report.rejects
    counts = make_thumbnails(csv_path, thumbnail_dir, workers=1, progress=False)
    assert counts["written"] == len(rows), counts
    no_thumbnail_urn = rows[-2]["urn"]
    (thumbnail_dir / thumbnail_filename(no_thumbnail_urn)).unlink()
    AnnoyIndexer(vector_dir, index_dir, step_sizes=[10, 1], verbose=False).build()
    return AppCollection(vector_dir, index_dir, thumbnail_dir, [row["urn"] for row in rows],
                         [(google["urn"], twitter["urn"]) for google, twitter in emoji_pairs],
                         ODD_URN, no_thumbnail_urn)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def json(self) -> object:
        return json.loads(self.body.decode("utf-8"))


def call(app, path: str = "/", query_string: str = "", method: str = "GET",
         headers: dict[str, str] | None = None) -> Answer:
    """One request straight through the WSGI interface: any PATH_INFO and QUERY_STRING, as a server
    would pass them (latin-1 decoded bytes), without a client's own checks or decoding in between
    (webtest, for one, un-gzips answers); `headers` as HTTP_* variables."""
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query_string}
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    setup_testing_defaults(environ)
    started = {}

    def start_response(status, headers, exc_info=None):
        started["status"] = int(status.split()[0])
        started["headers"] = {name.lower(): value for name, value in headers}

    chunks = app(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
    return Answer(started["status"], started["headers"], body)


# ------------------------------------------------------------------ a collection without TensorFlow

@dataclass(frozen=True)
class HistogramCollection:
    """60 generated drawings under the colour-histogram model: the real pipeline, no TensorFlow.

    Drawing i and drawing i + 30 are the same drawing, the second one "reprinted" (shifted by a pixel,
    with a little noise) 20 years later; the metadata CSV has a column named "distance", a name the
    answers reserve, and one urn full of URL and HTML characters."""

    vector_dir: Path
    index_dir: Path
    thumbnail_dir: Path
    csv_path: Path
    urns: list[str]
    reprints: dict[str, str]  # urn -> urn of its reprint
    image_paths: dict[str, Path]


HISTOGRAM_COUNT = 60


def build_histogram_collection(directory: Path) -> HistogramCollection:
    import numpy as np
    from PIL import Image, ImageDraw

    from siamese.index_build import IndexConfig, build_indices
    from siamese.vector_store import VectorStore

    rng = np.random.default_rng(7)
    images = directory / "images"
    images.mkdir(parents=True)
    half = HISTOGRAM_COUNT // 2
    rows = []
    for index in range(HISTOGRAM_COUNT):
        drawing = index % half
        hue = rng.integers(0, 256, 3) if index < half else None
        if hue is None:  # the reprint: the drawing's own colours, shifted, noisy
            image = Image.open(images / f"{drawing:03d}.png").convert("RGB")
            pixels = np.asarray(image, dtype=np.int16)
            pixels = np.roll(pixels, 1, axis=1) + rng.integers(-3, 4, pixels.shape)
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        else:
            background = tuple(int(value) for value in rng.integers(150, 256, 3))
            image = Image.new("RGB", (int(rng.integers(64, 200)), int(rng.integers(64, 150))), background)
            draw = ImageDraw.Draw(image)
            for _ in range(3):
                box = sorted(rng.integers(0, 64, 2).tolist()), sorted(rng.integers(0, 64, 2).tolist())
                shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
                shape([box[0][0], box[1][0], box[0][1] + 2, box[1][1] + 2], fill=tuple(int(v) for v in hue))
        path = images / f"{index:03d}.png"
        image.save(path)
        year = 1948 + drawing % 8 + (20 if index >= half else 0)
        urn = ODD_URN if index == 7 else f"urn:drawing:{index:03d}"
        rows.append({"urn": urn, "path": f"images/{index:03d}.png", "date": f"{year}-03-0{1 + index % 9}",
                     "title": f"Drawing {drawing}", "distance": "12 km", "newspaper": "De Waarheid"})
    csv_path = write_csv(directory / "metadata.csv", rows)
    vector_dir, index_dir = directory / "vectors", directory / "indices"
    thumbnail_dir = directory / "thumbs"
    report = extract_vectors(csv_path, vector_dir, model="colour-histogram", progress=False)
    assert report.stored == HISTOGRAM_COUNT and not report.rejects, report.rejects
    make_thumbnails(csv_path, thumbnail_dir, workers=1, progress=False)
    # 60 rows keep at most 59 whitened dimensions: a 16-d projection so that periods have scan files too
    build_indices(VectorStore(vector_dir), index_dir, IndexConfig(step_sizes=(10, 1), index_dimensions=16),
                  verbose=False)
    urns = [row["urn"] for row in rows]
    return HistogramCollection(vector_dir, index_dir, thumbnail_dir, csv_path, urns,
                               {urns[index]: urns[index + half] for index in range(half)},
                               {row["urn"]: directory / row["path"] for row in rows})

"""The collection map's page and API (the map itself: make_map.py, siamese/map_files.py).

    GET /map[?focus=URN][&filter=column:value ...]   the map page (views/map.tpl, static/map.js)
    GET /api/map?format=binary          every point: x, y, cluster (uint16) and year (int16; -32768
                                        unknown), little-endian, one array after the other, 8 bytes a
                                        point, row i of each array being the store's row i
    GET /api/map?format=mask&filter=column:value ...
                                        which points pass the filters: bit (i & 7) of byte (i >> 3)
    GET /api/map[?offset=0][&limit=1000]                  points as JSON, a page at a time
    GET /api/map?urn=U[&urn=...] | ?row=R[&row=...]        those points (at most 100)
    GET /api/clusters                   the themes: label, size, centre, representatives, counts per
                                        period of every step size; the periods; the atlases; the overview
    GET /map/atlas/<n>.jpg, /map/overview.png            the map's pictures (cached for good: their
                                        URLs carry the map's version)

x and y span 0..65535 (the longer side of the layout; screen y grows downward). A 426,777-image map is
3.4 MB of binary points (less gzipped), the one download the page needs to draw everything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import bottle
import numpy as np

from siamese.collection import Collection
from siamese.facets import UnknownColumn
from siamese.map_files import NO_MAP, CollectionMap, MapDamaged
from siamese.params import ParameterError, Problems, parse_count, parse_filters, shorten
from siamese.web import ApiError, accepts_gzip, json_answer, request_parameters, request_values, tag_answer

DEFAULT_PAGE = 1000
MAX_PAGE = 10_000
MAX_PICKED = 100  # urn= / row= values in one request
MAP_FORMATS = ("json", "binary", "mask")
PICTURE_CACHE = "public, max-age=31536000, immutable"  # atlas and overview URLs carry the map's version


def clusters_answer(collection: Collection, collection_map: CollectionMap,
                    thumbnail_url: Callable[[str], str | None]) -> dict:
    """/api/clusters: the themes with their counts per period (aligned with "periods"), the pictures."""
    steps = collection.steps
    counts = collection_map.cluster_counts(steps)
    urns = collection.store.urns
    described = collection_map.manifest["clusters"]["info"]
    sizes = np.bincount(collection_map.clusters, minlength=len(described))
    clusters = []
    for info in described:
        number = info["id"]
        clusters.append({
            "id": number, "label": info["label"], "size": int(sizes[number]),
            "x": int(round(info["x"] * 65535)), "y": int(round(info["y"] * 65535)),
            "representatives": [{"urn": urns[row], "thumbnail": thumbnail_url(urns[row])}
                                for row in info["representatives"] if row < len(urns)],
            "counts": {step: [int(value) for value in table[number]] for step, table in counts.items()}})
    version = collection_map.version
    atlases = collection_map.manifest.get("atlases")
    known = collection_map.years[collection_map.years != -32768]
    return {
        "count": collection_map.count, "mapped_of": collection.count,
        "years": [int(known.min()), int(known.max())] if len(known) else None,
        "steps": steps, "periods": collection_map.periods(steps), "clusters": clusters,
        "atlases": None if not atlases else {
            "urls": [f"map/atlas/{atlas['number']}.jpg?v={version}" for atlas in atlases["files"]],
            "cell": atlases["cell"], "columns": atlases["columns"], "per_atlas": atlases["per_atlas"]},
        "overview": f"map/overview.png?v={version}" if collection_map.manifest.get("overview") else None,
        "settings": collection_map.manifest.get("settings"), "built": collection_map.manifest.get("built"),
        "version": version}


def add_map_routes(app: bottle.Bottle, now: Callable[[], Collection], route: Callable,
                   thumbnail_url: Callable[[str, str], str | None],
                   render_map_page: Callable[[dict | None], str], code_version: str) -> None:
    """The map's routes on `app`; `now()` is the collection the request is answered from, `route` the
    app's GET decorator (ParameterError → 400)."""

    def current_map() -> CollectionMap:
        collection_map = now().collection_map()
        if collection_map is None:
            raise ApiError(404, NO_MAP)
        return collection_map

    def tag(collection_map: CollectionMap) -> None:
        environ = bottle.request.environ
        what = "\n".join((collection_map.version, now().core.fingerprint, now().thumbnails.state(),
                          code_version, environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")))
        tag_answer(hashlib.sha1(what.encode("utf-8", "surrogateescape")).hexdigest()[:24])

    def answer_clusters(collection_map: CollectionMap) -> dict:
        prefix = bottle.request.script_name
        return clusters_answer(now(), collection_map, lambda urn: thumbnail_url(urn, prefix))

    @route("/map")
    def map_page() -> str:
        request_parameters("/map", ("focus", "filter", "year", "colour"), repeatable=("filter",))
        bottle.response.content_type = "text/html; charset=utf-8"
        collection_map = now().collection_map()
        return render_map_page(None if collection_map is None else answer_clusters(collection_map))

    @route("/api/clusters")
    def clusters() -> str:
        request_parameters("/api/clusters", ())
        collection_map = current_map()
        tag(collection_map)
        return json_answer(answer_clusters(collection_map))

    @route("/api/map")
    def points() -> str | bytes:
        problems = Problems()
        parameters = request_parameters("/api/map", ("format", "offset", "limit", "urn", "row", "filter"),
                                        problems, repeatable=("urn", "row", "filter"))
        file_format = parameters.get("format", "json")
        if file_format not in MAP_FORMATS:
            problems.add(f"format must be one of {', '.join(MAP_FORMATS)}, got {shorten(file_format)}")
        offset = problems.check(parse_offset, parameters.get("offset"))
        limit = problems.check(parse_count, parameters.get("limit"), "limit", DEFAULT_PAGE, MAX_PAGE)
        filters = problems.check(parse_filters, request_values("filter"))
        urns, rows = request_values("urn"), request_values("row")
        if len(urns) + len(rows) > MAX_PICKED:
            problems.add(f"at most {MAX_PICKED} urn= and row= values in one request")
        if file_format == "mask" and not filters:
            problems.add("format=mask needs filter=column:value (which points pass it)")
        if file_format != "mask" and filters:
            problems.add("filter= goes with format=mask (the points that pass it, as a bitmask)")
        problems.raise_any()
        collection_map = current_map()
        tag(collection_map)
        if file_format == "binary":
            return binary_answer(collection_map.binary_points(), collection_map.gzipped_points(),
                                 collection_map.count)
        if file_format == "mask":
            try:
                mask = now().facets.mask(filters)[:collection_map.count]
            except UnknownColumn as error:
                raise ApiError(400, str(error)) from None
            bits = np.packbits(mask, bitorder="little").tobytes()
            return binary_answer(bits, None, collection_map.count, passing=int(mask.sum()))
        store = now().store
        if urns or rows:
            picked = [picked_row(value, collection_map.count) for value in rows]
            for urn in urns:
                if urn not in store or store.row_of(urn) >= collection_map.count:
                    raise ApiError(404, f"urn {shorten(urn, 200)} is not on the map (not in this collection, "
                                        "or added since the map was made: run make_map.py again)")
                picked.append(store.row_of(urn))
            return json_answer({"count": collection_map.count,
                                "points": [collection_map.point(row, store.urns[row]) for row in picked]})
        stop = min(collection_map.count, offset + limit)
        following = f"api/map?offset={stop}&limit={limit}" if stop < collection_map.count else None
        return json_answer({"count": collection_map.count, "offset": offset, "limit": limit,
                            "next": following, "points": [collection_map.point(row, store.urns[row])
                                       for row in range(offset, stop)]})

    def picked_row(value: str, count: int) -> int:
        if not (value.isascii() and value.isdigit()) or int(value) >= count:
            raise ApiError(400, f"row must be a mapped row, 0 to {count - 1}, got {shorten(value)}")
        return int(value)

    def picture(path_of: Callable[[CollectionMap], object], mimetype: str) -> bottle.HTTPResponse:
        request_parameters(bottle.request.path, ("v",))
        try:
            path = path_of(current_map())
        except MapDamaged as error:
            raise ApiError(404, str(error)) from None
        if path is None:
            raise ApiError(404, f"no such picture of the map: {shorten(bottle.request.path, 100)}")
        response = bottle.static_file(path.name, root=str(path.parent), mimetype=mimetype)
        if response.status_code in (200, 304):
            response.set_header("Cache-Control", PICTURE_CACHE)
        return response

    @route("/map/atlas/<number:int>.jpg")
    def atlas(number: int) -> bottle.HTTPResponse:
        return picture(lambda collection_map: collection_map.file_path("atlas", number), "image/jpeg")

    @route("/map/overview.png")
    def overview() -> bottle.HTTPResponse:
        return picture(lambda collection_map: collection_map.file_path("overview"), "image/png")


def parse_offset(value: str | None) -> int:
    """The first point of a page: a whole number from 0 (the default)."""
    if value is None:
        return 0
    if value.isascii() and value.isdigit() and len(value) <= 12:
        return int(value)
    raise ParameterError(f"offset must be a whole number from 0, got {shorten(value)}")


def binary_answer(body: bytes, gzipped: bytes | None, count: int, passing: int | None = None) -> bytes:
    """Bytes for the page's typed arrays; the points' gzipped copy is made once per map."""
    response = bottle.response
    response.content_type = "application/octet-stream"
    response.set_header("X-Map-Count", str(count))
    response.set_header("Vary", "Accept-Encoding")
    if passing is not None:
        response.set_header("X-Map-Passing", str(passing))
    if gzipped is not None and accepts_gzip(bottle.request.environ):
        response.set_header("Content-Encoding", "gzip")
        return gzipped
    return body


__all__ = ["ParameterError", "add_map_routes", "clusters_answer"]

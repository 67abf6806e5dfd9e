"""The original Siamese's web API (KB, 2017), beside ours, so that its clients' scripts keep working.

    GET /query?urn=U[&nns=N&step=S][&vectors=true]
    GET /random

`urn` may also be a Delpher resolver link (http://resolver.kb.nl/resolve?urn=U). The answers have the
original's shape:

    /query   {"source": {"urn", "year", "image"[, "vector"]},
              "neighbors": {"<step>": {"<start_year>": [{"urn", "year", "path", "distance"[, "vector"]}]}}}
    /random  {"images": [{"urn", "year", "path"}, ... 10 different images]}

With neither nns nor step, /query answers as the original did: 10 neighbours in every period of 50
years and 1 in every year; where the indices were built without step 50, the largest step size built
stands in for it, and the yearly list needs step 1. `step` alone: 10 neighbours per period of that step
(`all`: the whole collection, under its first year); `nns` alone: that many per long period (still 1 a
year). The neighbours are those of /api/neighbours, in the same order at the same distances.

Its defects are not copied: a missing, unknown or malformed parameter is a 4xx JSON error
{"error", "status"} like every error of ours (the original answered 500); `vectors=false` leaves the
vectors out; the query image is never its own neighbour; a step size the indices were not built with is
a 400 naming those that were (the original answered {}); /random never repeats an image. Unknown
parameters are refused, as on our own routes, so that a typo is not answered with defaults.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import NoReturn

import bottle

from siamese.collection import Collection
from siamese.original_names import urn_from_resolver_link
from siamese.params import MAX_NNS, ParameterError, parse_count, parse_flag, parse_step, parse_urn, shorten
from siamese.web import error_body, json_answer, request_parameters

ORIGINAL_WINDOW = 50  # the original's default: 10 neighbours per 50 years ...
ORIGINAL_WINDOW_NNS = 10
ORIGINAL_YEAR_NNS = 1  # ... and 1 per year
RANDOM_IMAGES = 10


def _refuse(status: int, message: str) -> NoReturn:
    """Answer with our JSON error body at once (an HTTPResponse skips the app's error pages, which would
    call an unknown urn's 404 'no such page')."""
    raise bottle.HTTPResponse(json.dumps(error_body(status, message), ensure_ascii=False),
                              status=status, headers={"Content-Type": "application/json; charset=utf-8"})


def query_plan(nns: str | None, step: str | None, steps: list[int]) -> dict[int | None, int]:
    """{step size (None: whole collection): neighbours per period} for /query's nns and step.

    ParameterError (a 400) for a bad nns or a step size the indices were not built with.
    """
    if step is not None:
        return {parse_step(step, steps): parse_count(nns, "nns", ORIGINAL_WINDOW_NNS, MAX_NNS)}
    window = ORIGINAL_WINDOW if ORIGINAL_WINDOW in steps else max(steps)
    plan: dict[int | None, int] = {window: parse_count(nns, "nns", ORIGINAL_WINDOW_NNS, MAX_NNS)}
    if 1 in steps and window != 1:
        plan[1] = ORIGINAL_YEAR_NNS
    return plan


def image_name(path: str) -> str:
    """The file name of an item's path: the original's "image" (its path was <year>/<image>)."""
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def original_answer(collection: Collection, urn: str, plan: dict[int | None, int], vectors: bool) -> dict:
    """The original's /query answer for a urn of the collection, from our neighbour searches."""
    item = collection.item(urn, vectors)
    source = {"urn": urn, "year": item["metadata"]["year"], "image": image_name(item["metadata"]["path"])}
    if vectors:
        source["vector"] = item["vector"]
    neighbors = {key: {str(period["start"]): [_neighbor(found, vectors) for found in period["neighbours"]]
                       for period in periods}
                 for key, periods in collection.periods(urn, plan, vectors).items()}
    return {"source": source, "neighbors": neighbors}


def _neighbor(found: dict, vectors: bool) -> dict:
    neighbor = {"urn": found["urn"], "year": found["year"], "path": found["path"],
                "distance": found["distance"]}
    if vectors:
        neighbor["vector"] = found["vector"]
    return neighbor


def add_original_routes(app: bottle.Bottle, collection_now: Callable[[], Collection]) -> None:
    """Add GET /query and GET /random, the original Siamese's API, to the app over the collection
    `collection_now()` gives (the one the request is answered from)."""

    @app.route("/query", method="GET")
    def query() -> str:
        collection = collection_now()
        try:
            given = request_parameters("/query", ("urn", "nns", "step", "vectors"))
            urn = urn_from_resolver_link(parse_urn(given.get("urn")))
            plan = query_plan(given.get("nns"), given.get("step"), collection.steps)
            vectors = parse_flag(given.get("vectors"), "vectors")
        except ParameterError as error:
            _refuse(400, str(error))
        if urn not in collection:
            _refuse(404, f"urn {shorten(urn, 200)} is not in this collection; urns are matched exactly "
                         "(GET /random gives some)")
        return json_answer(original_answer(collection, urn, plan, vectors))

    @app.route("/random", method="GET")
    def random_images() -> str:
        collection = collection_now()
        try:
            request_parameters("/random", ())
        except ParameterError as error:
            _refuse(400, str(error))
        images = collection.random_items(RANDOM_IMAGES)
        return json_answer({"images": [{"urn": image["urn"], "year": image["year"], "path": image["path"]}
                                 for image in images]})

"""The Siamese web app: search a collection by image similarity, whole and period by period.

    python app.py --vector-dir DIR --index-dir DIR [--thumbnails DIR] [--host 127.0.0.1] [--port 8080]
                  [--threads 8] [--debug]

Serves the search page and a JSON API with waitress (a multi-threaded production WSGI server; the
threads share the memory-mapped vectors and indices); --debug uses Bottle's single-threaded development
server instead and adds tracebacks to 500s. The metadata is the one the vector store holds.

    GET /                       the search page; /?urn=U&step=S&nns=N is a permalink to a search
    GET /api/neighbours?urn=U[&nns=10][&step=S|all][&vectors=false]
                                the nns nearest neighbours of U in every period of S years (S: a step
                                size the indices were built with), or in the whole collection (all)
    GET /api/item?urn=U[&vectors=false]          U's metadata and thumbnail
    GET /api/random[?n=1][&period=1950-1959]     n images drawn at random, from a period if given
    GET /api/collection                          size, years, model, metric, step sizes, largest nns
    GET /thumbnail?urn=U                         U's thumbnail JPEG (from make_thumbnails.py)
    POST /api/search  (multipart: image=FILE[, nns=10][, step=S|all])
                                the neighbours of an uploaded image (at most 20 MB), embedded with the
                                collection's own model: /api/neighbours' answer with "urn": null
    GET /query?urn=U[&nns=N&step=S][&vectors=false], GET /random
                                the original Siamese's routes and answers (siamese/original_api.py)

The parameter names urn, nns, step and vectors are those of the original Siamese, and the answer of
/api/neighbours has the structure of AnnoyIndexer.query_all, plus thumbnail URLs. Every error is JSON,
{"error": "...", "status": N}, and a 4xx says what is allowed. Unknown parameters are refused rather
than ignored, so that a typo is not answered with defaults the caller did not ask for.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import random
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import bottle
import numpy as np

from annoy_indexer import AnnoyIndexer, read_manifest
from make_thumbnails import thumbnail_filename
from siamese import upload
from siamese.backbones import Embedder
from siamese.original_api import add_original_routes
from siamese.params import (
    ParameterError,
    parse_count,
    parse_flag,
    parse_period,
    parse_query_string,
    parse_step,
    parse_urn,
    shorten,
)
from siamese.vector_store import StoreError, VectorStore

ROOT = Path(__file__).resolve().parent
VIEWS = ROOT / "views"
STATIC = ROOT / "static"
DEFAULT_NNS = 10
MAX_NNS = 100  # per list: with step 1 over 50 years that is already 5,000 neighbours in one answer
DEFAULT_RANDOM = 1
MAX_RANDOM = 100
THUMBNAIL_MAX_AGE = 24 * 3600  # a urn's thumbnail does not change; browsers need not ask again soon


class CollectionError(ValueError):
    """The directories given do not make a servable collection; the message says how to fix that."""


class ApiError(bottle.HTTPError):
    """An error whose message is meant for the client as it is (the JSON's "error")."""


# ------------------------------------------------------------------------------------------ the data

def built_step_sizes(manifest: dict) -> list[int]:
    """The step sizes an index directory was built with, largest first (decades before years).

    The manifest's `complete` entry names the whole-collection index "all" and each step by its size.
    """
    steps = {int(key) for key in manifest.get("complete", {}) if key.isdigit() and int(key) > 0}
    return sorted(steps, reverse=True)


@functools.lru_cache(maxsize=1 << 16)
def _thumbnail_name_and_query(urn: str) -> tuple[str, str]:
    """The urn's thumbnail file name and its URL query (urn=...): percent-encoding is slow enough in
    Python to be a third of a timeline answer's time, and the same urns come back again and again."""
    return thumbnail_filename(urn), urlencode({"urn": urn})


def describe(item: dict) -> dict:
    """An item as the API shows it: urn, date, year, path, then its metadata columns.

    The flat shape of the indexer's neighbours, so that a client reads neighbours and random images
    alike; a metadata column never hides one of the item's own fields.
    """
    described = {"urn": item["urn"], "date": item["date"], "year": item["year"], "path": item["path"]}
    for name, value in item.get("metadata", {}).items():
        described.setdefault(name, value)
    return described


class Collection:
    """The store, its indices and its thumbnails, opened once and then only read (thread-safe).

    Everything is loaded when the server starts, so that the first visitor does not wait for the items
    to be read or the indices to be memory-mapped (or, when the store grew since the build, rebuilt).
    Annoy files are memory-mapped, so a big collection starts in seconds and the operating system shares
    their pages between processes.
    """

    def __init__(self, vector_dir: str | os.PathLike, index_dir: str | os.PathLike,
                 thumbnail_dir: str | os.PathLike | None, verbose: bool = False) -> None:
        self.vector_dir = Path(vector_dir)
        self.index_dir = Path(index_dir)
        self.thumbnail_dir = Path(thumbnail_dir) if thumbnail_dir is not None else None
        self.store = VectorStore(self.vector_dir)
        manifest = read_manifest(self.index_dir)
        self.steps = built_step_sizes(manifest) if manifest else []
        if not self.steps:
            raise CollectionError(
                f"no indices in {self.index_dir}; build them first with: python annoy_indexer.py build "
                f"{self.vector_dir} {self.index_dir} --steps 10 1")
        self.metric: str = manifest["metric"]
        self.indexer = AnnoyIndexer(self.vector_dir, self.index_dir, metric=self.metric,
                                    step_sizes=self.steps, verbose=verbose)
        years = self.store.years()
        self._rows_by_year = np.argsort(years, kind="stable")  # random images within a period
        self._sorted_years = years[self._rows_by_year]
        self.years: tuple[int, int] | None = (int(years.min()), int(years.max())) if len(years) else None
        if len(years):
            self.indexer.query(self.store.items[0]["urn"], n=1)  # loads (or first rebuilds) every index
        self._random = random.Random()
        self._random_lock = threading.Lock()

    @property
    def count(self) -> int:
        return self.store.count

    def info(self) -> dict:
        """What a client needs before asking: size, years, model, metric and the step sizes built."""
        return {"count": self.count, "model": self.store.model, "n_dimensions": self.store.n_dimensions,
                "metric": self.metric, "steps": self.steps,
                "years": None if self.years is None else {"first": self.years[0], "last": self.years[1]},
                "max_nns": MAX_NNS}

    def __contains__(self, urn: str) -> bool:
        return urn in self.store

    def vector(self, urn: str) -> list[float]:
        return self.store.vectors[self.store.row_of(urn)].tolist()

    def item(self, urn: str, vectors: bool = False) -> dict:
        """{"urn", "metadata": {date, year, path, ...columns}} (+ "vector"); KeyError for an unknown urn."""
        described = describe(self.store.items[self.store.row_of(urn)])
        result = {"urn": described.pop("urn"), "metadata": described}
        if vectors:
            result["vector"] = self.vector(urn)
        return result

    def neighbours(self, urn: str, nns: int, step: int | None, vectors: bool) -> dict:
        """The `nns` nearest neighbours of `urn` in every period of `step`, or in the whole collection.

        The structure of AnnoyIndexer.query_all for one step: {"urn", "metadata", "nns", "step",
        "steps": {"10": [{"period", "start", "end", "neighbours": [...]}]}}; the whole collection (step
        None) is "steps": {"all": [one period from the first year to the last]}. A neighbour is {"urn",
        "distance", "date", "year", "path", ...metadata}, best first. `vectors` adds "vector" to the
        query and to every neighbour. KeyError naming an unknown urn.
        """
        result = self.item(urn, vectors)
        result.update(nns=nns, step=step)
        if step is None:
            first, last = self.years
            label = str(first) if first == last else f"{first}-{last}"
            periods = [{"period": label, "start": first, "end": last,
                        "neighbours": self.indexer.query(urn, n=nns)}]
        else:
            periods = self.indexer.query(urn, n=nns, step=step)
        if vectors:
            for period in periods:
                for neighbour in period["neighbours"]:
                    neighbour["vector"] = self.vector(neighbour["urn"])
        result["steps"] = {"all" if step is None else str(step): periods}
        return result

    def random_items(self, n: int, period: tuple[int, int] | None = None) -> list[dict]:
        """Up to `n` different items drawn at random, from the years `period` (first, last) if given."""
        low, high = 0, self.count
        if period is not None:
            low, high = np.searchsorted(self._sorted_years, [period[0], period[1] + 1]).tolist()
        with self._random_lock:
            positions = self._random.sample(range(low, high), min(n, high - low))
        return [describe(self.store.items[self._rows_by_year[position]]) for position in positions]

    def thumbnail_path(self, urn: str) -> Path | None:
        """The thumbnail file of `urn`, or None when none was made (not yet, or the image was rejected).

        Asked for every neighbour of every answer (150 of them for 10 per year over 15 years), so the
        name is cached and the file system is asked with one stat: thumbnails made while the server
        runs appear, removed ones disappear.
        """
        return Path(self._thumbnail_file(urn)) if self.has_thumbnail(urn) else None

    def has_thumbnail(self, urn: str) -> bool:
        return self.thumbnail_dir is not None and os.path.isfile(self._thumbnail_file(urn))

    def _thumbnail_file(self, urn: str) -> str:
        return os.path.join(self.thumbnail_dir, _thumbnail_name_and_query(urn)[0])


# ------------------------------------------------------------------------------------------ the app

def _json(data: object) -> str:
    bottle.response.content_type = "application/json; charset=utf-8"
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _parameters(route: str, allowed: tuple[str, ...]) -> dict[str, str]:
    return parse_query_string(bottle.request.environ.get("QUERY_STRING", ""), allowed, route)


_ROUTES_TEXT = ("GET /, /api/neighbours, /api/item, /api/random, /api/collection, /thumbnail, /static/..., "
                "and the original Siamese's /query and /random; POST /api/search")


def _error_message(error: bottle.HTTPError, debug: bool) -> dict:
    """The JSON body of an error: our own messages as they are, Bottle's made to say what is allowed."""
    status = error.status_code
    if isinstance(error, ApiError):
        message = str(error.body)
    elif status == 404:
        message = f"no such page: {shorten(bottle.request.path, 200)}; this server answers {_ROUTES_TEXT}"
    elif status == 405:
        message = (f"method {shorten(bottle.request.method, 20)} is not allowed here; "
                   f"use {error.headers.get('Allow', 'GET')}")
    elif status >= 500:
        message = "internal error (it is in the server's log)"
    else:
        message = str(error.body) if isinstance(error.body, str) and error.body else error.status_line
    body = {"error": message, "status": status}
    if debug and error.traceback:
        body["traceback"] = error.traceback
    return body


def _static_version() -> str:
    """A short hash of the static files, appended to their URLs so that browsers fetch new versions."""
    digest = hashlib.sha1()
    for path in sorted(STATIC.glob("*")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:10]


def render_page(collection: Collection) -> str:
    """The search page, rendered once: it depends only on the collection, the rest is done by app.js."""
    info = collection.info()
    template = bottle.SimpleTemplate(name="index", lookup=[str(VIEWS)])
    return template.render(info=info, info_json=json.dumps(info), count=f"{info['count']:,}",
                           version=_static_version())


def make_app(collection: Collection, debug: bool = False, embedder: Embedder | None = None) -> bottle.Bottle:
    """The WSGI application over one collection (tests build it over a small real one).

    To serve it from several threads with another WSGI server than `main`'s, call
    serve_requests_in_parallel() first.
    """
    app = bottle.Bottle(catchall=True)
    page = render_page(collection)

    def route(path: str) -> Callable[[Callable], Callable]:
        """A GET route whose ParameterErrors become 400s carrying their message."""
        def decorate(callback: Callable) -> Callable:
            @functools.wraps(callback)
            def checked(*args: object, **kwargs: object) -> object:
                try:
                    return callback(*args, **kwargs)
                except ParameterError as error:
                    raise ApiError(400, str(error)) from None
            return app.route(path, method="GET", callback=checked)
        return decorate

    @route("/")
    def index() -> str:
        # The page reads urn and step itself and reports bad ones; other parameters (a link tracker's
        # utm_source, ...) are no reason to refuse a researcher the page.
        bottle.response.content_type = "text/html; charset=utf-8"
        return page

    def thumbnail_url(urn: str, prefix: str) -> str | None:
        """Where the page (or any client) gets the urn's thumbnail; None when there is none. `prefix`:
        where the app is mounted (the request's SCRIPT_NAME), so that the URL works behind a proxy."""
        if not collection.has_thumbnail(urn):
            return None
        return f"{prefix}thumbnail?{_thumbnail_name_and_query(urn)[1]}"

    def with_thumbnails(result: dict) -> dict:
        """`result` with "thumbnail" after the query's metadata and on every neighbour (ours wins over a
        metadata column of that name, as the item's own fields do)."""
        prefix = bottle.request.script_name
        result = {"urn": result["urn"], "metadata": result["metadata"],
                  "thumbnail": None if result["urn"] is None else thumbnail_url(result["urn"], prefix),
                  **result}
        for periods in result.get("steps", {}).values():
            for period in periods:
                for neighbour in period["neighbours"]:
                    neighbour["thumbnail"] = thumbnail_url(neighbour["urn"], prefix)
        return result

    def known(urn: str) -> str:
        if urn not in collection:
            raise ApiError(404, f"urn {shorten(urn, 200)} is not in this collection; urns are matched "
                                "exactly as in the metadata CSV (GET /api/random gives some)")
        return urn

    @route("/api/neighbours")
    def neighbours() -> str:
        parameters = _parameters("/api/neighbours", ("urn", "nns", "step", "vectors"))
        urn = parse_urn(parameters.get("urn"))
        nns = parse_count(parameters.get("nns"), "nns", DEFAULT_NNS, MAX_NNS)
        step = parse_step(parameters.get("step"), collection.steps)
        vectors = parse_flag(parameters.get("vectors"), "vectors")
        return _json(with_thumbnails(collection.neighbours(known(urn), nns, step, vectors)))

    @route("/api/item")
    def item() -> str:
        parameters = _parameters("/api/item", ("urn", "vectors"))
        urn = parse_urn(parameters.get("urn"))
        vectors = parse_flag(parameters.get("vectors"), "vectors")
        return _json(with_thumbnails(collection.item(known(urn), vectors)))

    @route("/api/random")
    def random_images() -> str:
        parameters = _parameters("/api/random", ("n", "period"))
        n = parse_count(parameters.get("n"), "n", DEFAULT_RANDOM, MAX_RANDOM)
        period = parse_period(parameters.get("period"))
        images = collection.random_items(n, period)
        for image in images:
            image["thumbnail"] = thumbnail_url(image["urn"], bottle.request.script_name)
        return _json({"n": n, "period": parameters.get("period"), "images": images})

    @route("/api/collection")
    def collection_info() -> str:
        _parameters("/api/collection", ())
        return _json(collection.info())

    @route("/thumbnail")
    def thumbnail() -> bottle.HTTPResponse:
        urn = known(parse_urn(_parameters("/thumbnail", ("urn",)).get("urn")))
        path = collection.thumbnail_path(urn)
        if path is None:
            raise ApiError(404, f"no thumbnail for urn {shorten(urn, 200)}; make them with "
                                "make_thumbnails.py (its rejects.csv lists images that could not be read)")
        response = bottle.static_file(path.name, root=str(path.parent), mimetype="image/jpeg")
        if response.status_code == 200:
            response.set_header("Cache-Control", f"public, max-age={THUMBNAIL_MAX_AGE}")
        return response

    @route("/static/<filename>")
    def static(filename: str) -> bottle.HTTPResponse:
        response = bottle.static_file(filename, root=str(STATIC))
        if isinstance(response, bottle.HTTPError):
            raise ApiError(response.status_code, f"no static file {shorten(filename, 100)}")
        return response

    # ---------------------------------------------------------------- query by upload (issue 4)
    # POST /api/search: multipart field `image` (+ nns, step); checks and search in siamese/upload.py.
    # `embedder`: the collection's model, already loaded (tests); None loads it on the first upload,
    # once per process (backbones.shared_embedder).
    @app.route("/api/search", method="POST")
    def search_by_upload() -> str:
        try:
            answer = upload.search(bottle.request, collection, embedder, DEFAULT_NNS, MAX_NNS)
        except (ParameterError, upload.UploadError) as error:
            raise ApiError(error.status, str(error)) from None
        return _json(with_thumbnails(answer))
    # ---------------------------------------------------------------- end of query by upload

    add_original_routes(app, collection)  # GET /query, /random: the original Siamese's API

    def json_error(error: bottle.HTTPError) -> str:
        return _json(_error_message(error, debug))

    app.default_error_handler = json_error
    return app


# ------------------------------------------------------------------------------------------ the CLI

def serve_requests_in_parallel() -> None:
    """One BLAS thread per request thread.

    OpenBLAS gives each matrix product all the cores, and its threads spin while they wait; with
    several request threads doing small products at once they fight over the cores instead. Measured on
    2 cores with 8 request threads: 209 whole-collection searches/s with OpenBLAS's threads, about 2,200
    with one (bench/serve_load.py, docs/benchmarks.md). The requests are the parallelism here.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="app.py", description="Serve the Siamese search page and JSON API over one collection.")
    parser.add_argument("--vector-dir", required=True, metavar="DIR",
                        help="the vector store (made by extract_vectors.py); it holds the metadata too")
    parser.add_argument("--index-dir", required=True, metavar="DIR",
                        help="its indices (made by annoy_indexer.py build)")
    parser.add_argument("--thumbnails", metavar="DIR",
                        help="its thumbnails (made by make_thumbnails.py); without them the page shows "
                             "placeholders")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    parser.add_argument("--threads", type=int, default=8, help="request threads (default: 8)")
    parser.add_argument("--debug", action="store_true",
                        help="Bottle's single-threaded development server, tracebacks in 500 answers")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be from 0 to 65535")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.thumbnails is None or not Path(args.thumbnails).is_dir():
        print(f"app.py: warning: no thumbnails{' in ' + args.thumbnails if args.thumbnails else ''}; "
              "make them with: python make_thumbnails.py METADATA_CSV THUMBNAIL_DIR", file=sys.stderr)
    try:
        collection = Collection(args.vector_dir, args.index_dir, args.thumbnails, verbose=True)
    except (CollectionError, StoreError, ValueError, OSError) as error:
        print(f"app.py: error: {error}", file=sys.stderr)
        return 2
    app = make_app(collection, debug=args.debug)
    serve_requests_in_parallel()
    print(f"{collection.count} images, step sizes {', '.join(map(str, collection.steps))}; "
          f"serving on http://{args.host}:{args.port}/ (Ctrl-C stops)", file=sys.stderr)
    if args.debug:
        bottle.run(app, host=args.host, port=args.port, debug=True)
    else:
        import waitress

        # With more visitors than threads, waitress warns of every queued request ("Task queue depth is
        # N"): under load that is a line per request, which floods the log and, if stderr is a pipe
        # nobody drains, blocks the server. Queueing is normal; errors are still logged.
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        waitress.serve(app, host=args.host, port=args.port, threads=args.threads, ident="siamese")
    return 0


if __name__ == "__main__":
    sys.exit(main())

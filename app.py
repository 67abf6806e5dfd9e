"""The Siamese web app: search a collection by image similarity, whole and period by period.

    python app.py --vector-dir DIR --index-dir DIR [--thumbnails DIR] [--images-root DIR]
                  [--host 127.0.0.1] [--port 8080] [--workers CORES] [--threads 8] [--debug]

Serves the search page and a JSON API with waitress (a multi-threaded production WSGI server, set up in
siamese/serving.py to stay up under adversity: many connections, slow or oversized requests; the
threads share the memory-mapped vectors and indices), in --workers processes forked after the
collection is opened (siamese/workers.py; a dead one is replaced); indices rebuilt meanwhile are picked
up without a restart (collection.LiveCollection). --debug uses Bottle's single-threaded development
server instead and adds tracebacks to 500s. The metadata is the one the vector store holds.

    GET /                       the search page; /?urn=U&step=S&nns=N is a permalink to a search
    GET /api/neighbours?urn=U[&nns=10][&step=S|all|all,S,...][&vectors=false][&reprints=0]
                                the nns nearest neighbours of U in every period of S years (S: a step
                                size the indices were built with), or in the whole collection (all);
                                several steps (step=all,10) are answered together, one list each;
                                reprints=K checks the K nearest for being the same printed image
    GET /api/item?urn=U[&vectors=false]          U's metadata and thumbnail
    GET /api/random[?n=1][&period=1950-1959]     n images drawn at random, from a period if given
    GET /api/collection                          size, years, model, metric, step sizes, largest nns
    GET /thumbnail?urn=U[&v=VERSION]             U's thumbnail JPEG (from make_thumbnails.py)
    POST /api/search  (multipart: image=FILE[, nns=10][, step=S|all|all,S,...][, reprints=0])
                                the neighbours of an uploaded image (at most 20 MB), embedded with the
                                collection's own model: /api/neighbours' answer with "urn": null
    GET /map, /api/map, /api/clusters       the collection map (make_map.py): all images laid out by
                                similarity, their themes over time (siamese/map_routes.py)
    GET /query?urn=U[&nns=N&step=S][&vectors=false], GET /random
                                the original Siamese's routes and answers (siamese/original_api.py)

The parameter names urn, nns, step and vectors are those of the original Siamese, and the answer of
/api/neighbours has the structure of AnnoyIndexer.query_all, plus thumbnail URLs: {"urn", "metadata",
"thumbnail", "nns", "step", "steps": {"all": [periods], "10": [periods]}}, one list of periods per step
asked for ("step" is that step, null for all, or the list of them when several were asked for).
Answers of /api/neighbours, /api/item and /api/collection carry an ETag (the indices' fingerprint, the
thumbnails present, the code version and the request, hashed): a client that sends it back in
If-None-Match gets a 304. JSON of 1 kB or more is gzipped for clients that accept it; thumbnail URLs
carry their file's version and may be cached for good.
This module holds the routes, the error handler and the command line; the answers come from
siamese/collection.py (see docs/architecture.md). Every error is JSON,
{"error": "...", "status": N}, and a 4xx says what is allowed. Unknown parameters are refused rather
than ignored, so that a typo is not answered with defaults the caller did not ask for.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import bottle

from siamese import export, serving, upload
from siamese.assets import asset_dir
from siamese.backbones import Embedder, show_tensorflow_logs
from siamese.cli import Parser, add_max_pixels_option
from siamese.collection import Collection, CollectionError, LiveCollection, ReprintsUnavailable
from siamese.embedding_service import EmbeddingService, preload
from siamese.facets import UnknownColumn
from siamese.images import set_max_pixels
from siamese.map_routes import add_map_routes
from siamese.original_api import add_original_routes
from siamese.params import (
    DEFAULT_NNS,
    MAX_NNS,
    ParameterError,
    Problems,
    parse_count,
    parse_filters,
    parse_flag,
    parse_format,
    parse_period,
    parse_reprints,
    parse_steps,
    parse_urn,
    shorten,
)
from siamese.qdrant_index import QdrantUnavailable
from siamese.reprints import DEFAULT_CANDIDATES, MAX_CANDIDATES
from siamese.thumbnails import percent_encoded
from siamese.vector_store import StoreError
from siamese.web import (
    ApiError,
    App,
    error_body,
    json_answer,
    request_parameters,
    request_values,
    tag_answer,
    text_answer,
)

__all__ = ["MAX_NNS", "Collection", "CollectionError", "main", "make_app", "serve_requests_in_parallel"]

VIEWS = asset_dir("views")  # the checkout's, or share/siamese/views when installed
STATIC = asset_dir("static")
DEFAULT_RANDOM = 1
MAX_RANDOM = 100
THUMBNAIL_MAX_AGE = 24 * 3600  # a urn's thumbnail asked for without its version (v=)
THUMBNAIL_VERSIONED = "public, max-age=31536000, immutable"  # thumbnail?urn=...&v=...: never changes


@functools.lru_cache(maxsize=1 << 16)
def _thumbnail_query(urn: str) -> str:
    """The urn's thumbnail URL query (urn=...): percent-encoding is slow enough in Python to be a
    third of a timeline answer's time, and the same urns come back again and again."""
    return urlencode({"urn": urn}) if " " in urn else f"urn={percent_encoded(urn)}"


def info(collection: Collection) -> dict:
    """/api/collection: the collection's own description, the largest nns this server answers, and
    what reprints are checked on (null: they cannot be), how many the page checks and at most."""
    return {**collection.info(), "max_nns": MAX_NNS,
            "reprints": {"images": collection.reprint_images, "default": DEFAULT_CANDIDATES,
                         "max": MAX_CANDIDATES}}


_ROUTES_TEXT = ("GET /, /map, /api/neighbours, /api/item, /api/random, /api/collection, /api/facets, "
                "/api/map, /api/clusters, /thumbnail, /static/..., the map's pictures, and the original "
                "Siamese's /query and /random; POST /api/search")


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
    body = error_body(status, message)
    if debug and error.traceback:
        body["traceback"] = error.traceback
    return body


def _static_version() -> str:
    """A short hash of the static files, appended to their URLs so that browsers fetch new versions."""
    digest = hashlib.sha1()
    for path in sorted(STATIC.glob("*")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:10]


def _code_version() -> str:
    """A short hash of the code that writes the answers (this file and the siamese package): an answer's
    entity tag changes with it, so that a client never keeps an answer an older server made."""
    digest = hashlib.sha1(Path(__file__).read_bytes())
    for path in sorted(Path(upload.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:10]


def render_page(collection: Collection) -> str:
    """The search page, rendered once: it depends only on the collection, the rest is done by app.js."""
    described = info(collection)
    template = bottle.SimpleTemplate(name="index", lookup=[str(VIEWS)])
    return template.render(info=described, info_json=json.dumps(described), count=f"{described['count']:,}",
                           version=_static_version())


def render_map_page(collection: Collection, clusters: dict | None) -> str:
    """The map page: the collection's description and the map's themes (None: no map made yet)."""
    described = info(collection)
    template = bottle.SimpleTemplate(name="map", lookup=[str(VIEWS)])
    return template.render(info=described, info_json=json.dumps(described), count=f"{described['count']:,}",
                           version=_static_version(), map_json=json.dumps(clusters, ensure_ascii=False))


def make_app(collection: Collection | LiveCollection, debug: bool = False,
             embedder: Embedder | None = None) -> bottle.Bottle:
    """The WSGI application over one collection (tests build it over a small real one); a
    LiveCollection (what `main` serves) is replaced whole when its indices are rebuilt.

    To serve it from several threads with another WSGI server than `main`'s, call
    serve_requests_in_parallel() first (siamese.serving.serve is how `main` runs waitress). Every answer
    carries the security headers of siamese/web.py (App), JSON ones Cache-Control: no-store.
    """
    app = App(catchall=True)  # every answer with the security headers (siamese/web.py)
    live = collection if isinstance(collection, LiveCollection) else LiveCollection(collection, None)
    pages: dict = {}

    def now() -> Collection:
        """The collection this request is answered from: taken once, on first use, and kept for the
        request, so that an answer never mixes indices from before and after a rebuild."""
        environ = bottle.request.environ
        served = environ.get("siamese.collection")
        if served is None:
            served = environ["siamese.collection"] = live.current()
        return served

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
        collection = now()
        if pages.get("for") is not collection:  # rendered once per collection served
            pages.update({"for": collection, "page": render_page(collection)})
        return pages["page"]

    def thumbnail_url(urn: str, prefix: str) -> str | None:
        """Where the page (or any client) gets the urn's thumbnail; None when there is none. `prefix`:
        where the app is mounted (the request's SCRIPT_NAME), so that the URL works behind a proxy.
        The URL carries the file's version (v=), so that browsers may keep it for good."""
        version = now().thumbnails.version(urn)
        if version is None:
            return None
        return f"{prefix}thumbnail?{_thumbnail_query(urn)}&v={version}"

    code_version = _code_version()

    def tag_by_collection() -> None:
        """An answer of a GET route depends on the request, the indices and store (the search core's
        fingerprint), which thumbnails exist, and the code: its entity tag hashes them (a rebuilt
        index, new thumbnails or another server version change it); 304 when the client has it."""
        environ = bottle.request.environ
        what = "\n".join((now().core.fingerprint, now().thumbnails.state(), code_version,
                          environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")))
        tag_answer(hashlib.sha1(what.encode("utf-8", "surrogateescape")).hexdigest()[:24])

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
        if urn not in now():
            raise ApiError(404, f"urn {shorten(urn, 200)} is not in this collection; urns are matched "
                                "exactly as in the metadata CSV (GET /api/random gives some)")
        return urn

    def answer_as(answer: dict, file_format: str | None) -> str | bytes:
        """The answer as JSON, or (format=csv|json) as a file to download (siamese/export.py)."""
        if file_format is None:
            return json_answer(answer)
        name = export.file_name(answer, file_format)
        if file_format == "json":
            return json_answer(answer, download=name)
        parts = bottle.request.urlparts
        page = f"{parts.scheme}://{parts.netloc}{bottle.request.script_name}"
        return text_answer(export.answer_csv(answer, page), "text/csv; charset=utf-8", download=name)

    @route("/api/neighbours")
    def neighbours() -> str:
        problems = Problems()  # every bad parameter named in one answer
        parameters = request_parameters("/api/neighbours",
                                        ("urn", "nns", "step", "vectors", "reprints", "format", "filter"),
                                        problems, repeatable=("filter",))
        urn = problems.check(parse_urn, parameters.get("urn"))
        nns = problems.check(parse_count, parameters.get("nns"), "nns", DEFAULT_NNS, MAX_NNS)
        steps = problems.check(parse_steps, parameters.get("step"), now().steps)
        vectors = problems.check(parse_flag, parameters.get("vectors"), "vectors")
        reprints = problems.check(parse_reprints, parameters.get("reprints"), MAX_CANDIDATES)
        file_format = problems.check(parse_format, parameters.get("format"))
        filters = problems.check(parse_filters, request_values("filter"))
        problems.raise_any()
        tag_by_collection()
        try:
            answer = now().neighbours(known(urn), nns, steps, vectors, reprints=reprints, filters=filters)
        except (ReprintsUnavailable, UnknownColumn) as error:
            raise ApiError(400, str(error)) from None
        return answer_as(with_thumbnails(answer), file_format)

    @route("/api/item")
    def item() -> str:
        parameters = request_parameters("/api/item", ("urn", "vectors"))
        urn = parse_urn(parameters.get("urn"))
        vectors = parse_flag(parameters.get("vectors"), "vectors")
        tag_by_collection()
        return json_answer(with_thumbnails(now().item(known(urn), vectors)))

    @route("/api/random")
    def random_images() -> str:
        problems = Problems()
        parameters = request_parameters("/api/random", ("n", "period"), problems)
        n = problems.check(parse_count, parameters.get("n"), "n", DEFAULT_RANDOM, MAX_RANDOM)
        period = problems.check(parse_period, parameters.get("period"))
        problems.raise_any()
        images = now().random_items(n, period)
        for image in images:
            image["thumbnail"] = thumbnail_url(image["urn"], bottle.request.script_name)
        return json_answer({"n": n, "period": parameters.get("period"), "images": images})

    @route("/api/facets")
    def facets() -> str:
        """The metadata columns a search can be filtered by from a list, with each value's count."""
        request_parameters("/api/facets", ())
        tag_by_collection()
        return json_answer({"facets": now().facets.facets()})

    @route("/api/collection")
    def collection_info() -> str:
        request_parameters("/api/collection", ())
        tag_by_collection()
        return json_answer(info(now()))

    @route("/thumbnail")
    def thumbnail() -> bottle.HTTPResponse:
        parameters = request_parameters("/thumbnail", ("urn", "v"))
        urn = known(parse_urn(parameters.get("urn")))
        path = now().thumbnail_path(urn)
        if path is None:
            raise ApiError(404, f"no thumbnail for urn {shorten(urn, 200)}; make them with "
                                "make_thumbnails.py (its rejects.csv lists images that could not be read)")
        response = bottle.static_file(path.name, root=str(path.parent), mimetype="image/jpeg")
        if response.status_code in (200, 304):
            version = parameters.get("v")
            current = version is not None and version == now().thumbnails.version(urn)
            response.set_header("Cache-Control",
                                THUMBNAIL_VERSIONED if current else f"public, max-age={THUMBNAIL_MAX_AGE}")
        return response

    @route("/static/<filename>")
    def static(filename: str) -> bottle.HTTPResponse:
        response = bottle.static_file(filename, root=str(STATIC))
        if isinstance(response, bottle.HTTPError):
            raise ApiError(response.status_code, f"no static file {shorten(filename, 100)}")
        return response

    # POST /api/search: multipart field `image` (+ nns, step); checks and search in siamese/upload.py.
    # `embedder`: the collection's model, already loaded (tests); None loads it on the first upload,
    # once per process (backbones.shared_embedder).
    @app.route("/api/search", method="POST")
    def search_by_upload() -> str:
        try:
            answer = upload.search(bottle.request, now(), embedder)
        except (ParameterError, upload.UploadError) as error:
            raise ApiError(error.status, str(error)) from None
        except (ReprintsUnavailable, UnknownColumn) as error:
            raise ApiError(400, str(error)) from None
        return answer_as(with_thumbnails(answer), bottle.request.environ.get("siamese.format"))

    add_original_routes(app, now)  # GET /query, /random: the original Siamese's API
    # GET /map, /api/map, /api/clusters, the map's pictures (siamese/map_routes.py; made by make_map.py)
    add_map_routes(app, now, route, thumbnail_url, lambda clusters: render_map_page(now(), clusters),
                   code_version)

    def index_server_down(callback: Callable) -> Callable:
        """A Qdrant backend that does not answer (siamese/qdrant_index.py): 503 with what happened,
        for every route that searches; not ours to fix, so no traceback in the log either."""
        @functools.wraps(callback)
        def answering(*args: object, **kwargs: object) -> object:
            try:
                return callback(*args, **kwargs)
            except QdrantUnavailable as error:
                raise ApiError(503, str(error), Retry_After="30") from None
        return answering

    app.install(index_server_down)

    def json_error(error: bottle.HTTPError) -> str:
        return json_answer(_error_message(error, debug))

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
    parser = Parser(
        prog="app.py", description="Serve the Siamese search page and JSON API over one collection.")
    parser.add_argument("--vector-dir", required=True, metavar="DIR",
                        help="the vector store (made by extract_vectors.py); it holds the metadata too")
    parser.add_argument("--index-dir", required=True, metavar="DIR",
                        help="its indices (made by annoy_indexer.py build)")
    parser.add_argument("--thumbnails", metavar="DIR",
                        help="its thumbnails (made by make_thumbnails.py); without them the page shows "
                             "placeholders")
    parser.add_argument("--images-root", metavar="DIR",
                        help="the folder the metadata's image paths are relative to (as for "
                             "extract_vectors.py): reprints (?reprints=N) are then checked on the original "
                             "images instead of the thumbnails")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    parser.add_argument("--threads", type=int, default=8, help="request threads (default: 8, per worker)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="server processes sharing the port, the collection opened once before they "
                             "are forked (default: the number of cores, here %(default)s); 1: one "
                             "process, as before")
    parser.add_argument("--debug", action="store_true",
                        help="Bottle's single-threaded development server, tracebacks in 500 answers")
    add_max_pixels_option(parser)  # uploads
    parser.add_argument("--preload-model", action="store_true",
                        help="load the collection's model when the server starts (seconds, in the "
                             "background), so that the first upload is as fast as the others; without it "
                             "the first upload loads it")
    parser.add_argument("--verbose", action="store_true",
                        help="TensorFlow's own log lines too (when the first upload loads the model)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be from 0 to 65535")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.images_root is not None and not Path(args.images_root).is_dir():
        parser.error(f"--images-root: no such folder: {args.images_root}")
    if args.verbose:
        show_tensorflow_logs()
    set_max_pixels(args.max_pixels)
    if not args.debug:
        try:
            serving.check_listen_address(args.host, args.port)
        except serving.ListenError as error:
            print(f"app.py: error: {error}", file=sys.stderr)
            return 2
    if args.thumbnails is None or not Path(args.thumbnails).is_dir():
        print(f"app.py: warning: no thumbnails{' in ' + args.thumbnails if args.thumbnails else ''}; "
              "make them with: python make_thumbnails.py METADATA_CSV THUMBNAIL_DIR", file=sys.stderr)
    # Before the collection is opened: it keeps an index file open per period (siamese/serving.py).
    open_files = serving.raise_open_file_limit()
    try:
        collection = Collection(args.vector_dir, args.index_dir, args.thumbnails, verbose=True,
                                images_root=args.images_root)
    except (CollectionError, StoreError, ValueError, OSError) as error:
        hint = ""
        if isinstance(error, OSError) and error.errno == errno.EMFILE:
            hint = (f"; the collection's index files need more than this process may open "
                    f"({open_files or 'the limit'}): raise the hard limit (ulimit -Hn, or LimitNOFILE= "
                    "in a systemd unit)")
        print(f"app.py: error: {error}{hint}", file=sys.stderr)
        return 2
    # Several workers share one model, in a process of its own (siamese/embedding_service.py).
    service = EmbeddingService(collection.model, preload=args.preload_model) \
        if args.workers > 1 and not args.debug else None
    if args.preload_model and service is None:
        preload(collection.model)  # in this process, which embeds its uploads itself
    app = make_app(LiveCollection(collection), debug=args.debug,  # rebuilt indices picked up
                   embedder=service.embedder() if service is not None else None)
    upload.remove_stale_uploads()  # what a killed server left in the temporary folder
    serve_requests_in_parallel()

    def announce(host: str, port: int) -> None:
        print(f"{collection.count} images, step sizes {', '.join(map(str, collection.steps))}; "
              f"serving on http://{host}:{port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)

    if args.debug:
        announce(args.host, args.port)
        bottle.run(app, host=args.host, port=args.port, debug=True)
        return 0
    try:
        if service is not None:
            # forked after the collection is open: the workers share its memory-mapped files
            service.start()
            try:
                return serving.serve_workers(app, args.host, args.port, args.threads, args.workers,
                                             on_listening=announce, on_other_exit=service.restart_if)
            finally:
                service.stop()
        # waitress, set up in siamese/serving.py: poll(), connection limits and timeouts, request sizes
        # refused before they are read, its own errors in JSON, malloc arenas bounded.
        serving.serve(app, args.host, args.port, args.threads, on_listening=announce)
    except serving.ListenError as error:  # taken meanwhile, by another server started since the check
        print(f"app.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

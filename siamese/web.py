"""What every route module shares: JSON answers, strict query-string parameters, the API's errors, and
the headers every answer carries.

Route modules (app.py, siamese/upload.py, siamese/original_api.py) depend on this and on
siamese/collection.py only; nothing below them knows about HTTP.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterable

import bottle

from siamese.params import Problems, parse_query_string, query_values

# The page is one HTML file, one script and one style sheet of this server; the collection's description
# is a <script type="application/json"> block, which is data, never run, so no inline script or style
# needs allowing. Thumbnails are this server's; blob: and data: are images the page makes itself (the
# preview of an upload).
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                           "script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),  # a JSON answer or a thumbnail is never run as a script
    ("X-Frame-Options", "DENY"),  # no other site frames the page (frame-ancestors, for old browsers)
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
)
JSON_CACHE_CONTROL = "no-store"  # answers depend on the collection served now; thumbnails say their own
TAGGED_CACHE_CONTROL = "no-cache"  # an answer with an ETag: kept, but asked for again (a 304 is cheap)
GZIP_MIN_BYTES = 1024  # smaller answers fit in a packet or two anyway
GZIP_LEVEL = 5  # a step=1 answer (about 42 kB) shrinks about 8 times in under a millisecond


class ApiError(bottle.HTTPError):
    """An error whose message is meant for the client as it is (the JSON's "error")."""


def accepts_gzip(environ: dict) -> bool:
    """Whether the request's Accept-Encoding allows gzip (not refused with q=0)."""
    for part in environ.get("HTTP_ACCEPT_ENCODING", "").split(","):
        name, _, parameters = part.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            quality = parameters.strip().lower().removeprefix("q=").strip()
            return quality not in ("0", "0.0", "0.00", "0.000")
    return False


def json_answer(data: object, download: str | None = None) -> str | bytes:
    """`data` as the body of a JSON answer (and its content type set): compact, UTF-8, no NaN;
    gzip-compressed when the client accepts it and the answer is worth it. `download`: a file name,
    the answer then being a file to save (Content-Disposition: attachment)."""
    body = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text_answer(body, "application/json; charset=utf-8", download)


def text_answer(body: str, content_type: str, download: str | None = None) -> str | bytes:
    """`body` as the answer, of `content_type`, gzipped as json_answer says; `download`: its file name."""
    response = bottle.response
    response.content_type = content_type
    response.set_header("Vary", "Accept-Encoding")
    if download is not None:
        response.set_header("Content-Disposition", f'attachment; filename="{download}"')
    if len(body) < GZIP_MIN_BYTES or not accepts_gzip(bottle.request.environ):
        return body
    response.set_header("Content-Encoding", "gzip")
    return gzip.compress(body.encode(), compresslevel=GZIP_LEVEL)


def tag_answer(tag: str) -> None:
    """Give the answer being made the entity tag `tag` (what it depends on, hashed) and have clients
    ask again each time; when the request's If-None-Match already holds it, answer 304 now, before any
    work. Weak: the same answer, gzipped or not."""
    etag = f'W/"{tag}"'
    headers = {"ETag": etag, "Cache-Control": TAGGED_CACHE_CONTROL, "Vary": "Accept-Encoding"}
    asked = bottle.request.environ.get("HTTP_IF_NONE_MATCH", "")
    opaque = f'"{tag}"'
    if asked.strip() == "*" or opaque in (value.strip().removeprefix("W/") for value in asked.split(",")):
        raise bottle.HTTPResponse(status=304, headers=headers)
    for name, value in headers.items():
        bottle.response.set_header(name, value)


def error_body(status: int, message: str) -> dict:
    return {"error": message, "status": status}


def request_parameters(route: str, allowed: tuple[str, ...], problems: Problems | None = None,
                       repeatable: tuple[str, ...] = ()) -> dict[str, str]:
    """The request's query-string parameters, each at most once (but those `repeatable`: read them with
    request_values) and all of them `allowed` (ParameterError otherwise, which the routes answer with a
    400; with `problems`, kept there)."""
    return parse_query_string(bottle.request.environ.get("QUERY_STRING", ""), allowed, route, problems,
                              repeatable)


def request_values(name: str) -> list[str]:
    """Every value of the repeatable query-string parameter `name`."""
    return query_values(bottle.request.environ.get("QUERY_STRING", ""), name)


def with_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """`headers` plus SECURITY_HEADERS, and Cache-Control: no-store on a JSON answer; a header the
    answer already has (a thumbnail's Cache-Control) is kept as it is."""
    headers = list(headers)
    present = {name.lower(): value for name, value in headers}
    added = [(name, value) for name, value in SECURITY_HEADERS if name.lower() not in present]
    if ("cache-control" not in present
            and present.get("content-type", "").lower().startswith("application/json")):
        added.append(("Cache-Control", JSON_CACHE_CONTROL))
    return headers + added


class App(bottle.Bottle):
    """A Bottle application whose every answer carries SECURITY_HEADERS (and no-store on JSON).

    Done where the WSGI status line and headers leave the application (start_response), not in an
    after_request hook: Bottle replaces the response's headers with a fresh HTTPError's when a route
    raises an unexpected exception, so a hook would miss exactly the 500s. Waitress's own error answers
    (a request it refuses before the application sees it) get the same headers in siamese/serving.py.
    """

    def wsgi(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> Callable:
            if exc_info is None:
                return start_response(status, with_response_headers(headers))
            return start_response(status, with_response_headers(headers), exc_info)

        return super().wsgi(environ, start)

"""What every route module shares: JSON answers, strict query-string parameters, the API's errors.

Route modules (app.py, siamese/upload.py, siamese/original_api.py) depend on this and on
siamese/collection.py only; nothing below them knows about HTTP.
"""

from __future__ import annotations

import json

import bottle

from siamese.params import parse_query_string


class ApiError(bottle.HTTPError):
    """An error whose message is meant for the client as it is (the JSON's "error")."""


def json_answer(data: object) -> str:
    """`data` as the body of a JSON answer (and its content type set): compact, UTF-8, no NaN."""
    bottle.response.content_type = "application/json; charset=utf-8"
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def error_body(status: int, message: str) -> dict:
    return {"error": message, "status": status}


def request_parameters(route: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """The request's query-string parameters, each at most once and all of them `allowed`
    (ParameterError otherwise, which the routes answer with a 400)."""
    return parse_query_string(bottle.request.environ.get("QUERY_STRING", ""), allowed, route)

"""Whatever a client sends, the app answers 200 or a 4xx, and always in JSON (thumbnails: a JPEG).

Hypothesis generates the parameters; requests go straight through the WSGI interface (app_support.call),
so that query strings and paths no well-behaved client would send (bytes that are not UTF-8, stray
percent signs, control characters) reach the app too.
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import MAX_NNS, Collection, make_app
from app_support import call
from siamese.vector_store import VectorStore

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
ROUTES = ["/api/neighbours", "/api/item", "/api/random", "/api/collection", "/thumbnail", "/"]
PARAMETERS = ["urn", "nns", "step", "vectors", "n", "period"]

# Any text a URL can carry (lone surrogates cannot be encoded as UTF-8, so no client can send them).
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
# Any bytes of a query string, as a WSGI server hands them over: decoded as latin-1.
raw = st.binary(max_size=80).map(lambda data: data.decode("latin-1"))


@pytest.fixture(scope="module")
def store(app_collection) -> VectorStore:
    return VectorStore(app_collection.vector_dir)


@pytest.fixture(scope="module")
def app(app_collection):
    return make_app(Collection(app_collection.vector_dir, app_collection.index_dir,
                               app_collection.thumbnail_dir))


def check(answer, path: str) -> object:
    """The app's promise: 200 or 4xx, JSON (or a thumbnail, or the page), and a 4xx says why."""
    assert answer.status == 200 or 400 <= answer.status < 500, (answer.status, answer.body[:300])
    if answer.status == 200 and path == "/thumbnail":
        assert answer.content_type == "image/jpeg" and answer.body[:2] == b"\xff\xd8"
        return None
    if answer.status == 200 and path == "/":
        assert answer.content_type.startswith("text/html")
        return None
    assert answer.content_type == "application/json; charset=utf-8"
    body = json.loads(answer.body.decode("utf-8"))
    if answer.status != 200:
        assert set(body) == {"error", "status"} and body["status"] == answer.status
        assert isinstance(body["error"], str) and 10 < len(body["error"]) < 600
    return body


def urns_and_texts(app_collection):
    """Real urns half the time, so that valid requests with odd other parameters are tried too."""
    return st.one_of(st.sampled_from(app_collection.urns), texts)


@SETTINGS
@given(data=st.data())
def test_any_parameter_values_on_any_route(app, app_collection, data):
    path = data.draw(st.sampled_from(ROUTES))
    names = data.draw(st.lists(st.one_of(st.sampled_from(PARAMETERS), texts), max_size=5))
    pairs = [(name, data.draw(urns_and_texts(app_collection) if name == "urn" else texts)) for name in names]
    check(call(app, path, urlencode(pairs)), path)


@SETTINGS
@given(data=st.data())
def test_neighbours_with_arbitrary_nns_step_and_vectors(app, app_collection, data):
    urn = data.draw(st.sampled_from(app_collection.urns))
    query = {"urn": urn}
    for name, values in (("nns", st.one_of(st.integers(-5, 2 * MAX_NNS).map(str), texts)),
                         ("step", st.one_of(st.sampled_from(["1", "10", "all", "01", "+1", "1.0"]), texts)),
                         ("vectors", st.one_of(st.sampled_from(["true", "0", "YES"]), texts))):
        if data.draw(st.booleans()):
            query[name] = data.draw(values)
    body = check(call(app, "/api/neighbours", urlencode(query)), "/api/neighbours")
    if body.get("status") is None:  # a 200: its shape follows from the parameters
        assert body["urn"] == urn and 1 <= body["nns"] <= MAX_NNS
        [periods] = body["steps"].values()
        lists = [period["neighbours"] for period in periods]
        assert all(len(neighbours) <= body["nns"] for neighbours in lists)
        assert all(urn != neighbour["urn"] for neighbours in lists for neighbour in neighbours)


@SETTINGS
@given(period=st.one_of(st.integers(-1, 10_000).map(str),
                        st.tuples(st.integers(0, 9999), st.integers(0, 9999)).map("{0[0]}-{0[1]}".format),
                        texts),
       n=st.one_of(st.none(), st.integers(-1, 200).map(str)))
def test_random_with_any_period(app, store, period, n):
    query = {"period": period} if n is None else {"period": period, "n": n}
    body = check(call(app, "/api/random", urlencode(query)), "/api/random")
    if body.get("status") is None:
        first, _, last = period.partition("-")
        assert all(int(first) <= image["year"] <= int(last or first) for image in body["images"])
        assert len({image["urn"] for image in body["images"]}) == len(body["images"]) <= body["n"]


@SETTINGS
@given(path=st.sampled_from(ROUTES), query_string=raw)
def test_any_bytes_as_query_string(app, path, query_string):
    check(call(app, path, query_string), path)


@SETTINGS
@given(path=st.one_of(raw.map(lambda text: "/" + text), texts.map(lambda text: "/" + quote(text))),
       query_string=raw)
def test_any_path(app, path, query_string):
    answer = call(app, path, query_string)
    routed = path.encode("latin-1").decode("utf-8", "ignore")  # Bottle drops bytes that are not UTF-8
    if not (routed.startswith("/static/") and answer.status == 200):
        check(answer, routed if routed in ROUTES else "")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(ROUTES), method=st.sampled_from(["POST", "PUT", "DELETE", "PATCH", "OPTIONS"]))
def test_other_methods(app, path, method):
    answer = call(app, path, method=method)
    assert answer.status == 405
    check(answer, path)

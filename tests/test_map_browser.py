"""The collection map page (views/map.tpl, static/map.js) and the search page's inset of it, in a real
browser: Debian's Chromium driven by Playwright, against waitress serving the app over the generated
colour-histogram collection with a map made by siamese.map_build (one map, one server and one browser
for the whole module).

The page says what it drew after every frame in window.siameseMap (points, drawnPoints, visiblePoints,
view, year, ...; screenOf(row) is a point's place in the page), which is what these tests read."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from urllib.parse import parse_qs, urlencode, urlsplit
from urllib.request import urlopen

import pytest

from app import Collection, make_app
from browser_support import record_api_requests, requires_browser, serving

pytestmark = requires_browser

CLUSTERS = 14  # more than the stream graph's 12 streams of their own: an "other" stream too


@pytest.fixture(scope="module")
def mapped_index_dir(histogram_collection, tmp_path_factory):
    """A copy of the collection's indices with a map made beside them (the session's collection itself
    stays without one, for the pages' no-map tests)."""
    from siamese.map_build import build_map

    built = histogram_collection
    index_dir = tmp_path_factory.mktemp("mapped") / "indices"
    shutil.copytree(built.index_dir, index_dir)
    build_map(built.vector_dir, index_dir, built.thumbnail_dir, n_clusters=CLUSTERS, seed=0)
    return index_dir


@pytest.fixture(scope="module")
def server(histogram_collection, mapped_index_dir):
    built = histogram_collection
    with serving(make_app(Collection(built.vector_dir, mapped_index_dir, built.thumbnail_dir))) as url:
        yield url


@pytest.fixture(scope="module")
def bare_server(histogram_collection):
    """The same collection without a map."""
    built = histogram_collection
    with serving(make_app(Collection(built.vector_dir, built.index_dir, built.thumbnail_dir))) as url:
        yield url


@pytest.fixture(scope="module")
def points(server) -> list[dict]:
    """Every point of the map as the JSON API gives it: row, urn, x, y, cluster, year."""
    found, url = [], server + "api/map?limit=1000"
    while url:
        with urlopen(url) as answer:
            page = json.load(answer)
        found += page["points"]
        url = server + page["next"] if page["next"] else None
    assert [point["row"] for point in found] == list(range(len(found)))
    return found


@pytest.fixture(scope="module")
def clusters(server) -> dict:
    with urlopen(server + "api/clusters") as answer:
        return json.load(answer)


@pytest.fixture(scope="module")
def store_years(histogram_collection) -> list[int]:
    from siamese.vector_store import VectorStore

    return [int(year) for year in VectorStore(histogram_collection.vector_dir).years()]


def open_map(page, url: str, query: str = "") -> dict:
    """Load the map page and wait for its first full draw; window.siameseMap then."""
    page.goto(url + "map" + query)
    page.wait_for_function("document.body.dataset.mapReady === 'drawn' && window.siameseMap")
    return state(page)


def state(page) -> dict:
    return page.evaluate("({...window.siameseMap, screenOf: undefined})")


def wait_for(page, expression: str, arg=None) -> dict:
    """Until `expression` (of `map`, window.siameseMap, and `arg`) is true; the state then."""
    page.wait_for_function(
        "(arg) => { const map = window.siameseMap; return !!map && (" + expression + "); }", arg=arg)
    return state(page)


def screen_of(page, row: int) -> tuple[float, float]:
    place = page.evaluate("(row) => window.siameseMap.screenOf(row)", row)
    return place["x"], place["y"]


def loneliest(points: list[dict], rows: list[int] | None = None) -> int:
    """The row (of `rows`) farthest from any other point: pointing at it cannot hit another."""
    candidates = rows if rows is not None else [point["row"] for point in points]

    def room(row: int) -> float:
        here = points[row]
        return min(math.hypot(here["x"] - other["x"], here["y"] - other["y"])
                   for other in points if other["row"] != row)

    return max(candidates, key=room)


def lit_points(page) -> int:
    """How many points have, at their place on the map's canvas, another colour than its background."""
    return page.evaluate("""() => {
        const canvas = document.getElementById("map");
        const box = canvas.getBoundingClientRect(), ratio = canvas.width / box.width;
        const context = canvas.getContext("2d");
        const background = context.getImageData(0, 0, 1, 1).data;
        let lit = 0;
        for (let row = 0; row < window.siameseMap.points; row++) {
            const place = window.siameseMap.screenOf(row);
            const x = Math.floor((place.x - box.left) * ratio), y = Math.floor((place.y - box.top) * ratio);
            const pixel = context.getImageData(x, y, 1, 1).data;
            if ([0, 1, 2].some((i) => Math.abs(pixel[i] - background[i]) > 4)) lit++;
        }
        return lit;
    }""")


# ------------------------------------------------------------------------------------ the map page

def test_the_map_draws_every_point_with_one_download(server, page, points, clusters):
    requests = record_api_requests(page)
    shown = open_map(page, server)
    assert shown["points"] == clusters["count"] == len(points) == 60
    assert shown["drawnPoints"] == shown["visiblePoints"] == 60
    assert shown["year"] is None and shown["firstDrawMs"] > 0 and shown["zoom"] == pytest.approx(1)
    assert lit_points(page) == 60  # each point drawn where the page says it is
    binary = [url for _, url in requests if "/api/map?" in url and "format=binary" in url]
    assert len(binary) == 1  # every point in one answer
    assert page.locator("#year-display").inner_text() == "all years"
    legend = page.locator("#legend").inner_text()
    assert str(clusters["years"][0]) in legend and str(clusters["years"][1]) in legend
    assert page.locator("#map").get_attribute("tabindex") == "0"
    assert page.locator("#map").get_attribute("aria-label")


def test_zooming_in_narrows_the_view_then_draws_thumbnails(server, page):
    atlas_requests: list[str] = []
    page.on("request", lambda request: atlas_requests.append(request.url)
            if "/map/atlas/" in request.url else None)
    first = open_map(page, server)
    assert first["spritesDrawn"] == 0 and not atlas_requests  # zoomed out: points, no thumbnails
    page.locator("#map").focus()
    for _ in range(4):
        page.keyboard.press("+")
    zoomed = wait_for(page, "map.view.scale > arg * 4", first["view"]["scale"])
    assert 0 < zoomed["visiblePoints"] < 60 and zoomed["drawnPoints"] < 60
    zoomed = wait_for(page, "map.spritesDrawn > 0")  # once the atlas has come
    assert zoomed["spritesDrawn"] == zoomed["visiblePoints"]
    assert atlas_requests and all("/map/atlas/0.jpg" in url for url in atlas_requests)
    page.keyboard.press("0")  # the whole map again
    whole = wait_for(page, "map.drawnPoints === 60 && map.spritesDrawn === 0")
    assert whole["view"]["scale"] == pytest.approx(first["view"]["scale"])


def test_the_wheel_zooms_about_the_cursor_and_dragging_pans(server, page):
    first = open_map(page, server)
    box = page.locator("#map").bounding_box()
    cursor = (box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6)

    def map_point(view):
        return (view["x"] + (cursor[0] - box["x"] - box["width"] / 2) / view["scale"],
                view["y"] + (cursor[1] - box["y"] - box["height"] / 2) / view["scale"])

    page.mouse.move(*cursor)
    page.mouse.wheel(0, -400)
    zoomed = wait_for(page, "map.view.scale > arg * 1.5", first["view"]["scale"])
    # the map's point under the cursor stays under it (to a pixel)
    pixel = 1 / first["view"]["scale"]
    assert map_point(zoomed["view"]) == pytest.approx(map_point(first["view"]), abs=pixel)
    page.mouse.move(*cursor)
    page.mouse.down()
    page.mouse.move(cursor[0] + 120, cursor[1] + 40, steps=4)
    page.mouse.up()
    dragged = wait_for(page, "map.view.x !== arg", zoomed["view"]["x"])
    scale = zoomed["view"]["scale"]
    assert dragged["view"]["x"] == pytest.approx(zoomed["view"]["x"] - 120 / scale, abs=1)
    assert dragged["view"]["y"] == pytest.approx(zoomed["view"]["y"] - 40 / scale, abs=1)
    assert page.url.endswith("/map")  # a drag is not a click on a point
    page.locator("#map").focus()
    page.keyboard.press("ArrowRight")  # the map moves left: the view goes right
    moved = wait_for(page, "map.view.x > arg", dragged["view"]["x"])
    assert moved["view"]["scale"] == pytest.approx(scale)
    page.click("#zoom-out")
    wait_for(page, "map.view.scale < arg", scale)
    page.click("#zoom-reset")
    wait_for(page, "Math.abs(map.view.scale - arg) < 1e-9", first["view"]["scale"])


def test_the_slider_shows_one_year_at_a_time(server, page, store_years, clusters):
    open_map(page, server)
    first, last = clusters["years"]
    assert (first, last) == (min(store_years), max(store_years))
    per_year = Counter(store_years)
    slider = page.locator("#year")
    slider.focus()
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")  # from "all years" to the first year
    shown = wait_for(page, "map.year === arg", first)
    assert shown["visiblePoints"] == per_year[first] and shown["drawnPoints"] == 60  # the others faint
    assert page.locator("#year-display").inner_text() == str(first)
    assert slider.get_attribute("aria-valuetext") == str(first)
    mark = page.locator("#stream-year")
    assert "off" not in (mark.get_attribute("class") or "")
    first_mark = float(mark.get_attribute("x1"))
    page.keyboard.press("End")
    shown = wait_for(page, "map.year === arg", last)
    assert shown["visiblePoints"] == per_year[last]
    assert float(mark.get_attribute("x1")) > first_mark
    assert parse_qs(urlsplit(page.url).query)["year"] == [str(last)]  # kept in the address
    empty = next(year for year in range(first, last) if per_year[year] == 0)  # a year without images
    slider.evaluate("(input, year) => { input.value = String(year); "
                    "input.dispatchEvent(new Event('input')); }", empty)
    assert wait_for(page, "map.year === arg", empty)["visiblePoints"] == 0
    page.keyboard.press("Home")
    shown = wait_for(page, "map.year === null")
    assert shown["visiblePoints"] == 60 and "off" in mark.get_attribute("class")
    page.goto(server + "map?" + urlencode({"year": first}))  # a link to a year
    assert wait_for(page, "map.year === arg && document.body.dataset.mapReady === 'drawn'", first)[
        "visiblePoints"] == per_year[first]


def test_play_steps_through_the_years(server, page, clusters):
    open_map(page, server)
    first = clusters["years"][0]
    started = time.monotonic()
    page.click("#play")
    assert page.locator("#play").get_attribute("aria-pressed") == "true"
    wait_for(page, "map.year === arg", first)
    wait_for(page, "map.year === arg", first + 2)
    assert 0.5 < time.monotonic() - started < 3  # about 0.4 s a year
    page.click("#play")  # pause
    assert page.locator("#play").get_attribute("aria-pressed") == "false"
    paused = state(page)["year"]
    page.wait_for_timeout(900)
    assert state(page)["year"] == paused and page.locator("#year-display").inner_text() == str(paused)


def test_hovering_a_point_shows_its_image_and_a_click_searches_from_it(server, page, points, clusters):
    open_map(page, server)
    row = loneliest(points)
    urn = points[row]["urn"]
    page.mouse.move(*screen_of(page, row))
    tooltip = page.locator("#tooltip")
    tooltip.wait_for()
    page.wait_for_function("(urn) => document.querySelector('#tooltip .tooltip-urn').textContent === urn",
                           arg=urn)
    text = tooltip.inner_text()
    label = next(cluster["label"] for cluster in clusters["clusters"]
                 if cluster["id"] == points[row]["cluster"])
    assert str(points[row]["year"]) in text and label in text
    page.wait_for_function("document.querySelector('#tooltip img')?.naturalWidth > 0")
    assert state(page)["hovered"] == row
    page.mouse.click(*screen_of(page, row))
    page.wait_for_url(lambda url: "urn=" in url)
    assert urlsplit(page.url).path == "/" and parse_qs(urlsplit(page.url).query)["urn"] == [urn]
    page.wait_for_function("(urn) => document.querySelector('#urn').value === urn", arg=urn)  # searched


def test_a_filter_in_the_address_draws_only_its_images(server, page, histogram_collection, points):
    from siamese.vector_store import VectorStore

    titles = [item["metadata"]["title"] for item in VectorStore(histogram_collection.vector_dir).items]
    title = titles[3]
    matching = [row for row, value in enumerate(titles) if value == title]
    assert 1 < len(matching) < 60
    shown = open_map(page, server, "?" + urlencode({"filter": f"title:{title}"}))
    assert shown["drawnPoints"] == shown["visiblePoints"] == len(matching)
    picker = page.locator("#filters select[data-column='title']")
    assert picker.input_value() == title
    other = titles[10]
    picker.select_option(other)  # another value, from the picker
    count = titles.count(other)
    wait_for(page, "map.drawnPoints === arg", count)
    assert parse_qs(urlsplit(page.url).query)["filter"] == [f"title:{other}"]
    row = loneliest(points, [row for row, value in enumerate(titles) if value == other])
    page.mouse.click(*screen_of(page, row))  # a search from a point keeps the filter
    page.wait_for_url(lambda url: "urn=" in url)
    query = parse_qs(urlsplit(page.url).query)
    assert query["urn"] == [points[row]["urn"]] and query["filter"] == [f"title:{other}"]


def test_a_filter_choice_and_an_unknown_column(server, page):
    open_map(page, server)
    picker = page.locator("#filters select[data-column='title']")
    value = picker.locator("option").nth(1).get_attribute("value")
    picker.select_option(value)
    narrowed = wait_for(page, "map.drawnPoints < 60")
    assert narrowed["filters"] == [f"title:{value}"]
    picker.select_option("")
    wait_for(page, "map.drawnPoints === 60")
    assert "filter" not in parse_qs(urlsplit(page.url).query)
    page.goto(server + "map?" + urlencode({"filter": "nosuchcolumn:x"}))
    page.locator("#message").wait_for()
    assert "nosuchcolumn" in page.locator("#message").inner_text()
    assert wait_for(page, "map.drawnPoints === 60")["filters"] == []  # the whole map, said why


def test_the_stream_graph_has_a_stream_per_large_cluster_and_a_click_shows_one(server, page, clusters):
    open_map(page, server)
    largest = sorted(clusters["clusters"], key=lambda cluster: (-cluster["size"], cluster["id"]))[:12]
    streams = page.locator("#streams path.stream:not(.other)")
    assert streams.count() == len(largest) == 12
    assert page.locator("#streams path.stream.other").count() == 1  # the 2 smallest together
    shown = streams.evaluate_all(
        "paths => paths.map(p => [Number(p.dataset.cluster), p.querySelector('title').textContent])")
    assert shown == [[cluster["id"], cluster["label"]] for cluster in largest]
    steps = clusters["steps"]
    assert page.locator("#streams text.axis").count() >= 2 and steps[-1] == 1
    chosen = largest[1]
    streams.nth(1).dispatch_event("mousemove", {"clientX": 0, "clientY": 0})
    assert chosen["label"] in page.locator("#stream-label").inner_text()
    streams.nth(1).dispatch_event("click")
    highlighted = wait_for(page, "map.highlight === arg", chosen["id"])
    assert highlighted["highlightedPoints"] == chosen["size"]  # all of them in view, bright
    view = highlighted["view"]
    assert (view["x"], view["y"]) == pytest.approx((chosen["x"], chosen["y"]))  # its centre
    assert "selected" in page.locator(f"#streams path[data-cluster='{chosen['id']}']").get_attribute("class")
    page.locator(f"#streams button.stream-key[data-cluster='{chosen['id']}']").click()  # again: all
    assert wait_for(page, "map.highlight === null")["highlightedPoints"] == 0


def test_colour_by_cluster_and_focus_on_an_image(server, page, points):
    row = loneliest(points)
    shown = open_map(page, server, "?" + urlencode({"focus": points[row]["urn"]}))
    assert (shown["view"]["x"], shown["view"]["y"]) == pytest.approx((points[row]["x"], points[row]["y"]))
    assert shown["zoom"] > 4
    x, y = screen_of(page, row)
    box = page.locator("#map").bounding_box()
    assert (x, y) == pytest.approx((box["x"] + box["width"] / 2, box["y"] + box["height"] / 2), abs=1)
    assert page.locator("#legend .swatch").count() == 0  # by year: a scale
    page.check("input[name=colour][value=cluster]")
    wait_for(page, "map.colour === 'cluster'")
    assert page.locator("#legend .swatch").count() >= 2  # by cluster: their colours
    assert parse_qs(urlsplit(page.url).query)["colour"] == ["cluster"]
    assert parse_qs(urlsplit(page.url).query)["focus"] == [points[row]["urn"]]


RECORD_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation",
  event => window.cspViolations.push(event.violatedDirective + " " + event.blockedURI));
"""


def poll(page, expression: str, timeout: float = 10) -> None:
    """Until `expression` is true in the page, without page.wait_for_function (it compiles its
    predicate with `new Function`, which the page's policy refuses)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true after {timeout} s: {expression}"
        time.sleep(0.05)


def test_the_map_works_under_its_content_security_policy(server, browser, points):
    """Drawing, the tooltip's thumbnail, the sprite atlases, the stream graph and the search page's
    inset with the policy the server sends enforced: nothing refused, no JavaScript error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # the policy enforced
    page = context.new_page()
    console, errors = [], []
    page.on("console", lambda message: console.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.add_init_script(RECORD_VIOLATIONS)
    answer = page.goto(server + "map")
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    poll(page, "document.body.dataset.mapReady === 'drawn' && window.siameseMap.drawnPoints === 60")
    row = loneliest(points)
    page.mouse.move(*screen_of(page, row))
    poll(page, "document.querySelector('#tooltip img')?.naturalWidth > 0")
    page.locator("#map").focus()
    for _ in range(4):
        page.keyboard.press("+")
    poll(page, "window.siameseMap.spritesDrawn > 0")
    assert page.locator("#streams path.stream").count() > 0
    page.goto(server + "?" + urlencode({"urn": points[row]["urn"]}))  # the search page's inset too
    poll(page, "document.body.dataset.mapInset === 'shown'")
    poll(page, "document.querySelector('#map-inset-image').naturalWidth > 0")
    violations = page.evaluate("window.cspViolations")
    context.close()
    assert violations == [], violations
    assert not [text for text in console if "Content Security Policy" in text], console
    assert not errors, errors


def test_without_a_map_the_page_says_how_to_make_one(bare_server, page):
    requests = record_api_requests(page)
    answer = page.goto(bare_server + "map")
    assert answer.status == 200
    message = page.locator("#no-map")
    assert ("No map built for this collection yet: python make_map.py VECTOR_DIR INDEX_DIR "
            "--thumbnails THUMBNAIL_DIR") in message.inner_text()
    assert message.locator("a").get_attribute("href") == "./"
    page.wait_for_timeout(300)
    assert page.locator("#map").count() == 0 and requests == []  # nothing asked of the map's API


# ------------------------------------------------------------------------ the search page's inset

def test_the_search_page_shows_where_the_query_lies_on_the_map(server, page, points, histogram_collection):
    urn = histogram_collection.urns[5]
    page.goto(server + "?" + urlencode({"urn": urn}))
    page.wait_for_function("document.body.dataset.mapInset === 'shown'")
    inset = page.locator("#map-inset")
    assert inset.is_visible()
    assert inset.get_attribute("href") == "map?" + urlencode({"focus": urn})
    page.wait_for_function("document.querySelector('#map-inset-image').naturalWidth > 0")
    point = next(point for point in points if point["urn"] == urn)

    def marker() -> tuple[float, float]:
        """The marker's centre as a share of the overview's width and height."""
        return page.evaluate("""() => {
            const image = document.querySelector("#map-inset-image").getBoundingClientRect();
            const mark = document.querySelector("#map-inset-marker").getBoundingClientRect();
            return [(mark.x + mark.width / 2 - image.x) / image.width,
                    (mark.y + mark.height / 2 - image.y) / image.height];
        }""")

    assert marker() == pytest.approx((point["x"] / 65535, point["y"] / 65535), abs=0.01)
    # an uploaded image: at the mean place of its 10 nearest images
    page.set_input_files("#upload-file", str(histogram_collection.image_paths[histogram_collection.urns[40]]))
    page.wait_for_function("document.querySelector('#query img.upload-preview') "
                           "&& !document.body.classList.contains('busy') "
                           "&& document.body.dataset.mapInset === 'shown'")
    nearest = page.locator("#neighbours .thumb").evaluate_all("links => links.map(link => link.dataset.urn)")
    assert len(nearest) == 10
    by_urn = {point["urn"]: point for point in points}
    mean = (sum(by_urn[urn]["x"] for urn in nearest) / 10 / 65535,
            sum(by_urn[urn]["y"] for urn in nearest) / 10 / 65535)
    page.wait_for_function("!document.querySelector('#map-inset').href.includes('focus=')")
    assert marker() == pytest.approx(mean, abs=0.01)
    inset.click()  # the map, centred on that place and marked
    page.wait_for_url(lambda url: "/map" in url)
    page.wait_for_function("document.body.dataset.mapReady === 'drawn' && window.siameseMap")
    shown = state(page)
    assert shown["view"]["x"] == pytest.approx(mean[0] * 65535, abs=1)
    assert shown["view"]["y"] == pytest.approx(mean[1] * 65535, abs=1)


def test_without_a_map_the_search_page_has_no_inset(bare_server, page, histogram_collection):
    urn = histogram_collection.urns[5]
    page.goto(bare_server + "?" + urlencode({"urn": urn}))
    page.wait_for_function("document.body.dataset.mapInset === 'none'")
    assert page.locator("#map-inset").is_hidden()
    assert page.locator("#query-title").inner_text()  # the search itself as ever
    assert page.locator("header a[href='map']").count() == 1  # the link to the map's page stays

"""The search page in a real browser: Debian's Chromium driven by Playwright, against waitress serving
the app over the small real collection (one server and one browser for the whole module)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit
from urllib.request import urlopen

import pytest

from app import Collection, make_app
from browser_support import fresh_page, record_api_requests, requires_browser, serving

pytestmark = requires_browser


@pytest.fixture(scope="module")
def server(app_collection):
    collection = Collection(app_collection.vector_dir, app_collection.index_dir, app_collection.thumbnail_dir)
    with serving(make_app(collection)) as url:
        yield url


def query_of(page) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(page.url).query).items()}


def wait_for_query(page, urn: str, step: int) -> None:
    """Until the page shows `urn` with the timeline of `step` and nothing is loading."""
    page.wait_for_function(
        """([urn, step]) => !document.body.classList.contains("busy")
             && document.querySelector("#urn").value === urn
             && document.querySelector(`#steps button[data-step="${step}"]`)?.getAttribute("aria-pressed")
                === "true"
             && !document.querySelector("#results").hidden""", arg=[urn, str(step)])


def period_labels(page) -> list[str]:
    return page.locator("#timeline .period").evaluate_all("rows => rows.map(row => row.dataset.period)")


def covered_years(labels: list[str]) -> list[int]:
    """The years the timeline's rows cover, in order: "2012" and a folded "2013-2015" alike."""
    years = []
    for label in labels:
        first, _, last = label.partition("-")
        years += range(int(first), int(last or first) + 1)
    return years


def test_search_click_switch_step_and_go_back(server, page, app_collection):
    first = app_collection.pairs[3][0]
    page.goto(server)
    page.locator("#random-images .thumb").first.wait_for()  # the start page offers random images
    assert page.locator("#random-images .thumb").count() == 24

    page.fill("#urn", first)
    page.press("#urn", "Enter")
    wait_for_query(page, first, 1)
    assert query_of(page) == {"urn": first, "step": "1", "nns": "10"}
    assert page.locator("#neighbours .thumb").count() == 10
    assert page.locator("#query-metadata dd").first.inner_text() == first
    years = period_labels(page)
    covered = covered_years(years)  # a row per year, runs of empty years folded into one
    assert covered == list(range(covered[0], covered[-1] + 1))
    assert "2012" in years and page.locator("#timeline .period.empty").count() >= 1

    neighbour = page.locator("#neighbours .thumb").nth(2).get_attribute("data-urn")
    page.locator("#neighbours .thumb").nth(2).click()
    wait_for_query(page, neighbour, 1)
    assert query_of(page) == {"urn": neighbour, "step": "1", "nns": "10"}
    assert neighbour not in page.locator("#neighbours .thumb").evaluate_all(
        "links => links.map(link => link.dataset.urn)")

    page.click("#steps button[data-step='10']")
    wait_for_query(page, neighbour, 10)
    assert all("-" in label for label in period_labels(page))  # decades: 2010-2019, 2020-2029
    assert query_of(page) == {"urn": neighbour, "step": "10", "nns": "10"}

    page.go_back()
    wait_for_query(page, neighbour, 1)
    assert len(period_labels(page)) == len(years)
    page.go_back()
    wait_for_query(page, first, 1)
    page.go_forward()
    wait_for_query(page, neighbour, 1)


def test_a_search_is_one_request(server, page, app_collection):
    """The whole collection's list and the timeline come in one answer (step=all,S): a permalink, a step
    switch and a click on a neighbour each cost one request to /api/neighbours."""
    requests = record_api_requests(page)
    urn = app_collection.pairs[6][0]
    page.goto(server + "?" + urlencode({"urn": urn, "step": 10}))
    wait_for_query(page, urn, 10)
    searches = [url for method, url in requests if "/api/neighbours" in url]
    assert len(searches) == 1 and parse_qs(urlsplit(searches[0]).query)["step"] == ["all,10"]
    assert page.locator("#neighbours .thumb").count() == 10 and period_labels(page)
    page.click("#steps button[data-step='1']")
    wait_for_query(page, urn, 1)
    neighbour = page.locator("#neighbours .thumb").first.get_attribute("data-urn")
    page.locator("#neighbours .thumb").first.click()
    wait_for_query(page, neighbour, 1)
    searches = [url for method, url in requests if "/api/neighbours" in url]
    assert [parse_qs(urlsplit(url).query)["step"] for url in searches] == [["all,10"], ["all,1"], ["all,1"]]


def test_nns_is_chosen_in_the_page_and_kept_in_the_url(server, page, app_collection):
    urn = app_collection.urns[4]
    page.goto(server + "?" + urlencode({"urn": urn, "step": 1}))
    wait_for_query(page, urn, 1)
    assert page.locator("#nns").input_value() == "10"
    page.select_option("#nns", "5")
    page.wait_for_function("document.querySelectorAll('#neighbours .thumb').length === 5")
    wait_for_query(page, urn, 1)
    assert query_of(page) == {"urn": urn, "step": "1", "nns": "5"}
    strips = page.locator("#timeline .strip").evaluate_all("strips => strips.map(s => s.children.length)")
    assert max(strips) <= 5
    page.locator("#neighbours .thumb").first.click()  # the new query keeps nns and step
    page.wait_for_function("new URLSearchParams(location.search).get('urn') !== " + json.dumps(urn))
    assert query_of(page)["nns"] == "5"
    page.go_back()
    wait_for_query(page, urn, 1)
    page.go_back()
    page.wait_for_function("document.querySelectorAll('#neighbours .thumb').length === 10")
    page.goto(server + "?" + urlencode({"urn": urn, "nns": 20}))  # a permalink with another nns
    page.wait_for_function("document.querySelectorAll('#neighbours .thumb').length === 20")
    assert page.locator("#nns").input_value() == "20"


def test_the_chart_shows_the_closest_distance_of_each_period(server, page, app_collection):
    urn = app_collection.urns[0]
    page.goto(server + "?" + urlencode({"urn": urn, "step": 1}))
    wait_for_query(page, urn, 1)
    rows = page.locator("#timeline .period:not(.empty)").count()
    bars = page.locator("#chart a.bar")
    assert bars.count() == rows and page.locator("#chart .empty").count() >= 1
    heights = bars.locator("rect").evaluate_all("rects => rects.map(r => r.getBBox().height)")
    with urlopen(server + "api/neighbours?" + urlencode({"urn": urn, "step": 1})) as answer:
        periods = json.load(answer)["steps"]["1"]
    closest = [period["neighbours"][0]["distance"] for period in periods if period["neighbours"]]
    # Taller is more alike: the order of the bar heights is the reverse of the distances' order.
    assert sorted(range(rows), key=lambda i: -heights[i]) == sorted(range(rows), key=lambda i: closest[i])
    page.locator("#chart a.bar").last.click()
    last = page.locator("#timeline .period:not(.empty)").last
    page.wait_for_function("document.activeElement && document.activeElement.classList.contains('period')")
    assert page.evaluate("document.activeElement.dataset.period") == last.get_attribute("data-period")
    assert query_of(page)["urn"] == urn and "#" not in page.url  # no history entry of its own


def test_a_timeline_neighbour_becomes_the_query_keeping_the_step(server, page, app_collection):
    urn = app_collection.urns[0]
    page.goto(server + "?" + urlencode({"urn": urn, "step": 10}))
    wait_for_query(page, urn, 10)
    link = page.locator("#timeline .period .thumb").last
    target = link.get_attribute("data-urn")
    link.click()
    wait_for_query(page, target, 10)
    assert page.title().endswith("— Siamese")


def test_odd_urns_survive_links_thumbnails_and_html(server, page, app_collection):
    page.goto(server + "?" + urlencode({"urn": app_collection.odd_urn}))
    wait_for_query(page, app_collection.odd_urn, 1)
    assert page.locator("#query-title").inner_text() == "Odd <urn> & co"  # shown as text, not as HTML
    assert page.locator("#query img").evaluate("image => image.complete && image.naturalWidth > 0")
    page.locator("#neighbours .thumb").first.click()  # its twin, the image it copies
    wait_for_query(page, app_collection.urns[0], 1)
    page.locator("#timeline .period[data-period='2012'] .thumb").click()
    wait_for_query(page, app_collection.odd_urn, 1)


def test_a_missing_thumbnail_shows_a_placeholder(server, page, app_collection):
    page.goto(server + "?" + urlencode({"urn": app_collection.no_thumbnail_urn}))
    wait_for_query(page, app_collection.no_thumbnail_urn, 1)
    page.locator("#query .placeholder").wait_for()


def test_an_unknown_urn_is_said_in_the_pages_words(server, page):
    page.goto(server + "?" + urlencode({"urn": "emoji:nobody:0"}))
    page.locator("#message").wait_for()
    text = page.locator("#message").inner_text()
    assert 'There is no image "emoji:nobody:0" in this collection' in text and "/api/" not in text
    page.locator("#random-images .thumb").first.wait_for()  # and somewhere to start from


def test_bad_page_parameters_fall_back_to_their_defaults_all_named_at_once(server, page, app_collection):
    urn = app_collection.urns[0]
    page.goto(server + "?" + urlencode({"urn": urn, "nns": "abc", "step": "7"}))
    wait_for_query(page, urn, 1)  # the search is made, with the defaults
    page.locator("#message").wait_for()
    text = page.locator("#message").inner_text()
    assert "step=7 (this collection has periods of 10 years and 1 year)" in text
    assert "nns=abc (a number of images from 1 to 100)" in text and "were not used" in text
    assert page.locator("#neighbours .thumb").count() == 10
    assert query_of(page) == {"urn": urn, "step": "1", "nns": "10"}  # the address says what is shown


def test_random_opens_an_image_of_the_collection(server, page, app_collection):
    page.goto(server)
    page.locator("#random-images .thumb").first.wait_for()
    page.click("#random")
    page.locator("#results").wait_for()
    page.wait_for_function("!document.body.classList.contains('busy')")
    assert query_of(page)["urn"] in app_collection.urns


def test_reprints_are_checked_marked_and_counted_as_the_api_says(server, page, app_collection):
    """The page asks for the 20 nearest to be checked (reprints=20, on the thumbnails) and shows the
    verdicts: a "same image" badge on each verified neighbour, the summary, a count per period."""
    requests = record_api_requests(page)
    urn = app_collection.pairs[2][0]
    page.goto(server + "?" + urlencode({"urn": urn, "step": 10}))
    wait_for_query(page, urn, 10)
    searches = [url for method, url in requests if "/api/neighbours" in url]
    assert parse_qs(urlsplit(searches[0]).query)["reprints"] == ["20"]
    with urlopen(server + "api/neighbours?" + urlencode({"urn": urn, "step": "all,10", "reprints": 20})) as r:
        answer = json.load(r)
    assert answer["reprints"]["checked"] >= 20 and answer["reprints"]["images"] == "thumbnails"
    top = answer["steps"]["all"][0]["neighbours"]
    badged = page.locator("#neighbours .thumb").evaluate_all(
        "links => links.map(link => link.querySelector('.badge') !== null)")
    assert badged == [bool(n.get("reprint")) for n in top]
    summary = page.locator("#reprint-summary")
    checked = answer["reprints"]["checked"]
    assert summary.is_visible()
    assert f"among the {checked} nearest (checked on the thumbnails)" in summary.inner_text()
    counted = page.locator("#timeline .period").evaluate_all(
        "rows => rows.map(row => row.querySelector('.reprint-count')?.textContent || '')")
    expected = ["" if not p["reprints"] else f"{p['reprints']} reprint" + ("s" if p["reprints"] > 1 else "")
                for p in answer["steps"]["10"]]
    assert counted == expected


def test_the_csv_download_holds_the_rows_shown(server, page, app_collection):
    import csv
    import io

    urn = app_collection.pairs[2][0]
    page.goto(f"{server}?{urlencode({'urn': urn, 'step': 1, 'nns': 5})}")
    wait_for_query(page, urn, 1)
    shown_top = page.locator("#neighbours .thumb").evaluate_all(
        "links => links.map(link => link.dataset.urn)")
    shown_periods = page.locator("#timeline .period").evaluate_all(
        "rows => rows.map(row => [row.dataset.period, "
        "[...row.querySelectorAll('.thumb')].map(link => link.dataset.urn)])")
    with page.expect_download() as download:
        page.locator("#download-csv").click()
    assert download.value.suggested_filename.endswith("-all-step1.csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    assert {row["query"] for row in rows} == {urn}
    assert [row["urn"] for row in rows if row["step"] == "all"] == shown_top
    for period, urns in shown_periods:
        in_csv = [row["urn"] for row in rows if row["step"] == "1" and row["period"] == period]
        assert in_csv == urns, period
        assert [int(row["rank"]) for row in rows if row["step"] == "1" and row["period"] == period] == \
            list(range(1, len(urns) + 1))
    assert all(row["siamese_url"].startswith(server) and "?urn=" in row["siamese_url"] for row in rows)
    with page.expect_download() as download:
        page.locator("#download-json").click()
    answer = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert answer["urn"] == urn and [n["urn"] for n in answer["steps"]["all"][0]["neighbours"]] == shown_top


def folded(run: list[dict]) -> list[str]:
    if not run:
        return []
    return [run[0]["period"]] if len(run) == 1 else [f"{run[0]['start']}-{run[-1]['end']}"]


@pytest.fixture(scope="module")
def sparse_server(histogram_collection):
    """The colour-histogram collection: images in 1948-1955 and 1968-1975, none in the twelve years
    between (a sparse timeline)."""
    collection = Collection(histogram_collection.vector_dir, histogram_collection.index_dir,
                            histogram_collection.thumbnail_dir)
    with serving(make_app(collection)) as url:
        yield url


def test_runs_of_empty_periods_fold_and_the_chart_has_a_scale_a_legend_and_marks(sparse_server, page,
                                                                                 histogram_collection):
    server = sparse_server
    urn = histogram_collection.urns[3]
    query = urlencode({"urn": urn, "step": 1, "nns": 3})
    answer = json.loads(urlopen(f"{server}api/neighbours?{query}").read())
    periods = answer["steps"]["1"]
    query_year = answer["metadata"]["year"]
    expected, run = [], []
    for period in periods:  # what the page must show: every run of 2+ empty periods as one row
        own = period["start"] <= query_year <= period["end"]
        if not period["neighbours"] and not own:
            run.append(period)
            continue
        expected += folded(run)
        run = []
        expected.append(period["period"])
    expected += folded(run)
    page.goto(f"{server}?{query}")
    wait_for_query(page, urn, 1)
    assert period_labels(page) == expected
    assert "1956-1967" in expected
    row = page.locator("#timeline .period.folded").first
    count = int(row.get_attribute("data-periods"))
    assert count >= 2 and f"no images in these {count} years" in row.inner_text()
    own = page.locator("#timeline .period.own")
    assert own.count() == 1 and "the query's year" in own.inner_text()
    # the chart: a labelled scale, every label inside the picture, empty years marked, a legend
    assert page.locator("#chart .scale text").count() >= 2
    assert page.locator("#chart .empty rect").count() == sum(1 for p in periods if not p["neighbours"])
    inside = page.evaluate("""() => {
        const svg = document.querySelector("#chart svg");
        const width = svg.viewBox.baseVal.width;
        return [...svg.querySelectorAll("text")].every((text) => {
            const box = text.getBBox();
            return box.x >= 0 && box.x + box.width <= width + 0.5;
        });
    }""")
    assert inside
    assert page.locator("figcaption .legend.own").count() == 1


def test_on_a_phone_the_results_come_before_the_query_card(server, browser, app_collection):
    urn = app_collection.urns[6]
    with fresh_page(browser, timeout_ms=10_000) as phone:
        phone.set_viewport_size({"width": 390, "height": 844})
        phone.goto(f"{server}?{urlencode({'urn': urn, 'step': 1})}")
        wait_for_query(phone, urn, 1)
        neighbours = phone.locator("#neighbours").bounding_box()
        card = phone.locator(".query-card").bounding_box()
        assert neighbours["y"] < card["y"] and neighbours["y"] < 844  # the results are on the first screen


def test_filters_narrow_the_timeline_and_are_kept_in_the_address(server, page, app_collection):
    urn = app_collection.pairs[1][0]  # a Google drawing: its nearest include both makers' drawings
    page.goto(f"{server}?{urlencode({'urn': urn, 'step': 1})}")
    wait_for_query(page, urn, 1)
    maker = page.locator("#filters select[data-column='maker']")
    maker.wait_for()
    options = maker.locator("option").all_inner_texts()
    counts = {text.split(" (")[0]: int(text.split(" (")[1].rstrip(")")) for text in options[1:]}
    assert options[0] == "any maker" and set(counts) == {"google", "twitter"}
    assert sum(counts.values()) == len(app_collection.urns)  # each value with the images that have it
    shown = ("() => [...document.querySelectorAll('#neighbours .thumb, #timeline .thumb')]"
             ".map(a => a.dataset.urn)")
    assert any(":google:" in shown_urn for shown_urn in page.evaluate(shown))
    maker.select_option("twitter")
    page.wait_for_function("() => !document.body.classList.contains('busy') "
                           "&& new URLSearchParams(location.search).get('filter') === 'maker:twitter'")
    narrowed = page.evaluate(shown)
    assert narrowed and all(":twitter:" in shown_urn for shown_urn in narrowed)
    assert query_of(page)["filter"] == "maker:twitter" and maker.input_value() == "twitter"
    page.reload()  # the address alone gives the same filtered search
    wait_for_query(page, urn, 1)
    assert page.evaluate(shown) == narrowed
    page.locator("#filters select[data-column='maker']").select_option("")
    page.wait_for_function("() => !document.body.classList.contains('busy') "
                           "&& !new URLSearchParams(location.search).has('filter')")
    assert any(":google:" in shown_urn for shown_urn in page.evaluate(shown))


def test_the_basket_keeps_images_across_searches_and_a_reload_and_downloads_them(server, page,
                                                                                   app_collection):
    import csv
    import io

    first, second = app_collection.urns[8], app_collection.urns[9]
    page.goto(f"{server}?{urlencode({'urn': first})}")
    wait_for_query(page, first, 1)
    assert page.locator("#basket").is_hidden()
    assert page.locator("#keep").get_attribute("aria-pressed") == "false"
    page.click("#keep")
    assert page.locator("#basket-count").inner_text() == "1"
    assert page.locator("#keep").get_attribute("aria-pressed") == "true"
    page.fill("#urn", second)
    page.press("#urn", "Enter")
    wait_for_query(page, second, 1)
    assert page.locator("#keep").get_attribute("aria-pressed") == "false"  # another image: not kept yet
    page.click("#keep")
    page.reload()  # kept in the browser, not in the page
    wait_for_query(page, second, 1)
    kept = page.locator("#basket-images .thumb").evaluate_all("links => links.map(link => link.dataset.urn)")
    assert kept == [first, second] and page.locator("#basket-count").inner_text() == "2"
    with page.expect_download() as download:
        page.click("#basket-csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    assert [row["urn"] for row in rows] == [first, second]
    assert all(row["name"] and row["year"] and row["kept"] and "?urn=" in row["siamese_url"] for row in rows)
    page.click("#keep")  # kept already: taken out again
    assert page.locator("#basket-count").inner_text() == "1"
    page.click("#basket-empty")
    assert page.locator("#basket").is_hidden()

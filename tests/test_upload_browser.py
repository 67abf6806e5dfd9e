"""Query by upload in a real browser: the page's file picker and drop zone, Debian's Chromium driven by
Playwright, against waitress serving the app over the small real collection with the real model."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from app import Collection, make_app
from browser_support import fresh_page, record_api_requests, requires_browser, serving

pytestmark = requires_browser


@pytest.fixture(scope="module")
def server(app_collection, inception_2015):
    collection = Collection(app_collection.vector_dir, app_collection.index_dir, app_collection.thumbnail_dir)
    with serving(make_app(collection, embedder=inception_2015)) as url:
        yield url


@pytest.fixture
def page(browser):  # uploads are embedded by the real model: a longer timeout than conftest's page
    with fresh_page(browser, timeout_ms=15_000) as page:
        yield page


def wait_for_upload(page, filename: str, step: int) -> None:
    """Until the page shows the results of the upload `filename` for `step`, nothing loading."""
    page.wait_for_function(
        """([name, step]) => !document.body.classList.contains("busy")
             && !document.querySelector("#results").hidden
             && document.querySelector("#query-title").textContent === name
             && document.querySelector(`#steps button[data-step="${step}"]`)?.getAttribute("aria-pressed")
                === "true" """, arg=[filename, str(step)])


def neighbour_urns(page) -> list[str]:
    return page.locator("#neighbours .thumb").evaluate_all("links => links.map(link => link.dataset.urn)")


def test_file_picker_finds_the_twin_and_keeps_the_upload_across_step_and_nns(server, page, emoji_pairs,
                                                                            emoji_metadata):
    google, twitter = emoji_pairs[5]
    requests = record_api_requests(page)
    page.goto(server)
    page.locator("#random-images .thumb").first.wait_for()
    page.set_input_files("#upload-file", str(emoji_metadata.parent / twitter["path"]))
    filename = Path(twitter["path"]).name
    wait_for_upload(page, filename, 1)
    urns = neighbour_urns(page)
    assert urns[0] == twitter["urn"] and google["urn"] in urns  # the real model: the other maker's drawing
    assert page.locator("#query img.upload-preview").get_attribute("src").startswith("blob:")
    assert "64 × 64 pixels" in page.locator("#query-metadata").inner_text()
    assert page.locator("#timeline .period").count() > 1
    assert page.locator("#timeline .period.own").count() == 0  # an upload has no period of its own
    assert page.locator("#message").is_hidden()
    assert [method for method, url in requests if "/api/search" in url] == ["POST"]  # posted once

    page.locator('#steps button[data-step="10"]').click()  # the same upload, per decade
    wait_for_upload(page, filename, 10)
    assert [method for method, url in requests if "/api/search" in url] == ["POST", "POST"]
    labels = page.locator("#timeline .period").evaluate_all("rows => rows.map(row => row.dataset.period)")
    assert labels and all("-" in label for label in labels)

    page.select_option("#nns", "5")
    page.wait_for_function("document.querySelectorAll('#neighbours .thumb').length === 5")
    wait_for_upload(page, filename, 10)

    page.locator("#neighbours .thumb").nth(1).click()  # a result becomes the query: back to urn searches
    page.wait_for_function("new URLSearchParams(location.search).get('urn') !== null "
                           "&& !document.body.classList.contains('busy')")
    assert page.locator("#query img.upload-preview").count() == 0


def test_drop_zone_takes_a_dropped_file(server, page, emoji_pairs, emoji_metadata):
    google, twitter = emoji_pairs[7]
    data = base64.b64encode((emoji_metadata.parent / google["path"]).read_bytes()).decode()
    page.goto(server)
    page.locator("#random-images .thumb").first.wait_for()
    page.evaluate("""([data]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
        const zone = document.querySelector("#drop-zone");
        const options = { dataTransfer: transfer, bubbles: true, cancelable: true };
        zone.dispatchEvent(new DragEvent("dragover", options));
        if (!zone.classList.contains("dragging")) throw new Error("no drag feedback");
        zone.dispatchEvent(new DragEvent("drop", options));
    }""", [data])
    wait_for_upload(page, "dropped.png", 1)
    urns = neighbour_urns(page)
    assert urns[0] == google["urn"] and twitter["urn"] in urns
    assert "dragging" not in (page.locator("#drop-zone").get_attribute("class") or "")


def test_a_file_that_is_not_an_image_shows_the_servers_reason(server, page, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("these are notes, not a picture")
    page.goto(server)
    page.locator("#random-images .thumb").first.wait_for()
    page.set_input_files("#upload-file", str(text))
    page.locator("#message").wait_for(state="visible")
    assert "not an image" in page.locator("#message").inner_text()
    assert page.locator("#results").is_hidden() and page.locator("#start").is_visible()


WATCH_STATUS = """([selector, event]) => {
    window.marks = {};
    const mark = () => { window.marks.action = performance.now(); };
    document.querySelector(selector).addEventListener(event, mark, true);
    const status = document.querySelector("#status");
    new MutationObserver(() => {
        if (!status.hidden && window.marks.shown === undefined) {
            window.marks.shown = performance.now();
            window.marks.text = status.textContent;
        }
    }).observe(status, { attributes: true, childList: true, characterData: true, subtree: true });
}"""


def test_a_waiting_state_shows_within_100_ms_of_an_upload_and_of_a_search(server, page, emoji_pairs,
                                                                          emoji_metadata):
    """The first upload loads the model (seconds): the page says it is working at once, not after."""
    google, _ = emoji_pairs[3]
    page.goto(server)
    page.locator("#random-images .thumb").first.wait_for()
    assert page.locator("#status").is_hidden()
    page.evaluate(WATCH_STATUS, ["#upload-file", "change"])
    page.set_input_files("#upload-file", str(emoji_metadata.parent / google["path"]))
    wait_for_upload(page, Path(google["path"]).name, 1)
    marks = page.evaluate("() => window.marks")
    assert marks["shown"] - marks["action"] <= 100, marks
    assert "searching" in marks["text"] and "model" in marks["text"]
    assert page.locator("#status").is_hidden()  # and gone once the answer is shown
    page.evaluate(WATCH_STATUS, ["#neighbours", "click"])
    page.locator("#neighbours .thumb").nth(2).click()
    page.wait_for_function("() => !document.body.classList.contains('busy') "
                           "&& window.marks.shown !== undefined")
    marks = page.evaluate("() => window.marks")
    assert marks["shown"] - marks["action"] <= 100 and marks["text"] == "Searching…", marks


def test_an_uploads_answer_downloads_as_csv_with_the_rows_shown(server, page, emoji_pairs, emoji_metadata):
    import csv
    import io

    _, twitter = emoji_pairs[9]
    page.goto(server)
    page.locator("#random-images .thumb").first.wait_for()
    page.set_input_files("#upload-file", str(emoji_metadata.parent / twitter["path"]))
    filename = Path(twitter["path"]).name
    wait_for_upload(page, filename, 1)
    shown = neighbour_urns(page)
    with page.expect_download() as download:
        page.locator("#download-csv").click()
    assert download.value.suggested_filename == f"siamese-{filename}-all-step1.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    assert {row["query"] for row in rows} == {filename}
    assert [row["urn"] for row in rows if row["step"] == "all"] == shown

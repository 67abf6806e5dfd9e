"""The server as `python app.py` runs it (waitress set up by siamese/serving.py), under adversity
(issue 9, "no server taken down"): real processes, real sockets on 127.0.0.1, every wait bounded; and
the page in Chromium under the Content-Security-Policy every answer carries.

The collection has periods of more items than a period searched exhaustively (so each keeps its Annoy
file open, whatever search.py does with small periods); the 1,500-year figures are bench/serve_adversity.py's.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from browser_support import chromium_browser, requires_browser, serving
from siamese import upload

fast = pytest.mark.fast  # all but the browser's test

ROOT = Path(__file__).resolve().parent.parent
PERIODS = 80  # yearly periods
START_TIMEOUT = 60  # seconds for a server to answer its first request (two shared cores, busy)
# The largest body the application takes (an image and its multipart form; siamese/upload.py).
LARGEST_BODY = upload.MAX_UPLOAD_BYTES + upload.FORM_OVERHEAD_BYTES
SECURITY_HEADERS = ("X-Content-Type-Options", "X-Frame-Options", "Content-Security-Policy")


@dataclass
class Built:
    vector_dir: Path
    index_dir: Path
    thumbnail_dir: Path
    urns: list[str]


def build_collection(directory: Path, periods: int, per_period: int, first_year: int = 500) -> Built:
    """`periods` yearly periods of `per_period` random 16-d vectors each, indexed year by year, and a
    thumbnail for the first urn."""
    from PIL import Image

    from siamese.index_build import IndexConfig, build_indices
    from siamese.thumbnails import thumbnail_filename
    from siamese.vector_store import VectorStore, VectorStoreWriter

    count = periods * per_period
    vectors = np.random.default_rng(0).standard_normal((count, 16)).astype(np.float32)
    items = [{"urn": f"urn:serve:{i}", "year": first_year + i % periods,
              "date": f"{first_year + i % periods:04d}-05-01", "path": f"images/{i}.jpg",
              "metadata": {"title": f"image {i}"}} for i in range(count)]
    with VectorStoreWriter(directory / "vectors", "test-model", 16) as writer:
        writer.append(vectors, items)
    build_indices(VectorStore(directory / "vectors"), directory / "indices", IndexConfig(step_sizes=(1,)),
                  n_jobs=1, verbose=False)
    thumbnails = directory / "thumbnails"
    thumbnails.mkdir()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(thumbnails / thumbnail_filename(items[0]["urn"]))
    return Built(directory / "vectors", directory / "indices", thumbnails, [item["urn"] for item in items])


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Built:
    from siamese.search import SearchSettings

    # More items per period than an exhaustive search takes: every period has its index file open.
    return build_collection(tmp_path_factory.mktemp("serving-collection"), PERIODS,
                            SearchSettings().brute_force_max_rows + 20)


# ------------------------------------------------------------------------------------ the server

@dataclass
class Server:
    port: int
    process: subprocess.Popen
    temporary_dir: Path  # its TMPDIR
    log: Path

    def descriptors(self) -> list[str]:
        """What the server process has open (the targets of /proc/PID/fd)."""
        folder = Path(f"/proc/{self.process.pid}/fd")
        targets = []
        for entry in folder.iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                targets.append(os.readlink(entry))
        return targets


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Runs app.py's main() with `count` more descriptors open, as a collection of many periods holds:
# the server's own sockets are then numbered above 1024, which select() cannot watch.
WITH_DESCRIPTORS = """
import os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = [os.open(os.devnull, os.O_RDONLY) for _ in range(int(sys.argv[1]))]
import app
sys.exit(app.main(sys.argv[2:]))
"""


@contextmanager
def app_server(built: Built, directory: Path, *, soft_open_files: int | None = None,
               extra_descriptors: int = 0) -> Iterator[Server]:
    """`python app.py` over `built` on a free port of 127.0.0.1, until it answers; stopped afterwards.
    `soft_open_files`: the soft RLIMIT_NOFILE it starts with; `extra_descriptors`: held open before
    main() (WITH_DESCRIPTORS)."""
    port = free_port()
    arguments = ["--vector-dir", str(built.vector_dir), "--index-dir", str(built.index_dir),
                 "--thumbnails", str(built.thumbnail_dir), "--port", str(port), "--threads", "8",
                 "--workers", "1"]  # one process: its descriptors and memory are the server's
    command = ([sys.executable, "-c", WITH_DESCRIPTORS, str(extra_descriptors), *arguments]
               if extra_descriptors else [sys.executable, "app.py", *arguments])
    temporary = directory / "server-tmp"
    temporary.mkdir(exist_ok=True)
    log = directory / "server.log"

    def limit_open_files() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft_open_files, hard))

    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log_file,
                                   stderr=log_file, env={**os.environ, "TMPDIR": str(temporary)},
                                   preexec_fn=limit_open_files if soft_open_files else None)
    server = Server(port, process, temporary, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited ({process.returncode}): {log.read_text()[-2000:]}")
            try:
                if get(port, "/api/collection", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer in {START_TIMEOUT} s: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield server
        assert process.poll() is None, f"the server exited: {log.read_text()[-2000:]}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(collection, tmp_path_factory) -> Iterator[Server]:
    with app_server(collection, tmp_path_factory.mktemp("server")) as running:
        yield running


def get(port: int, path: str, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The answer on `sock` (status, headers, body), read up to its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data[:200]!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    length = int(headers.get("Content-Length", 0))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def raw_request(port: int, request: bytes, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        return read_answer(sock)


def concurrent_gets(port: int, paths: list[str], timeout: float = 60) -> list[int | str]:
    """Each path on its own connection, all at once: the statuses (or the errors, as text)."""
    barrier = threading.Barrier(len(paths), timeout=30)

    def one(path: str) -> int | str:
        try:
            barrier.wait()
            return get(port, path, timeout)[0]
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as error:
            # reported, not raised: the test shows them all
            return repr(error)

    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        return list(pool.map(one, paths))


def assert_json_error(answer: tuple[int, dict[str, str], bytes], status: int) -> dict:
    code, headers, body = answer
    assert code == status, body[:300]
    assert headers["Content-Type"].startswith("application/json"), headers
    parsed = json.loads(body)
    assert parsed["status"] == status and isinstance(parsed["error"], str) and parsed["error"], parsed
    for name in SECURITY_HEADERS:
        assert name in headers, (name, headers)
    return parsed


# ------------------------------------------------------------------------------------------ tests

@fast
def test_every_answer_carries_the_security_headers(server, collection):
    urn = collection.urns[0]
    answers = {path: get(server.port, path) for path in (
        "/", "/api/collection", f"/api/neighbours?urn={urn}&step=1&nns=3", f"/api/item?urn={urn}",
        "/api/random?n=2", f"/query?urn={urn}", f"/thumbnail?urn={urn}", "/static/app.js",
        "/static/app.css", "/nothing", "/api/neighbours?urn=nobody", "/api/collection?bogus=1")}
    for path, (status, headers, _) in answers.items():
        assert headers.get("X-Content-Type-Options") == "nosniff", path
        assert headers.get("X-Frame-Options") == "DENY", path
        policy = headers.get("Content-Security-Policy", "")
        for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'",
                          "object-src 'none'", "frame-ancestors 'none'"):
            assert directive in policy, (path, policy)
        tagged = status == 200 and path.startswith(("/api/collection", "/api/neighbours", "/api/item"))
        if headers["Content-Type"].startswith("application/json"):  # asked again each time (304 if kept)
            assert headers.get("Cache-Control") == ("no-cache" if tagged else "no-store"), (path, headers)
            assert any(name.lower() == "etag" for name in headers) == tagged, (path, headers)
    assert [answers[path][0] for path in ("/nothing", "/api/neighbours?urn=nobody",
                                          "/api/collection?bogus=1")] == [404, 404, 400]
    thumbnail = answers[f"/thumbnail?urn={urn}"]  # without its version: kept a day
    assert thumbnail[0] == 200 and thumbnail[1]["Cache-Control"] == "public, max-age=86400"
    for path in ("/static/app.js", "/static/app.css"):
        assert answers[path][0] == 200 and "no-store" not in answers[path][1].get("Cache-Control", "")


@fast
def test_an_unexpected_error_carries_the_headers_too(collection):
    from webtest import TestApp

    from app import Collection, make_app

    app = make_app(Collection(collection.vector_dir, collection.index_dir))

    @app.route("/broken")
    def broken() -> str:
        raise RuntimeError("a bug")

    answer = TestApp(app).get("/broken", status=500, expect_errors=True)
    assert answer.json["status"] == 500
    for name in SECURITY_HEADERS:
        assert name in answer.headers
    assert answer.headers["Cache-Control"] == "no-store"


@fast
@pytest.mark.parametrize("length", [300 * 1024 * 1024, LARGEST_BODY + 1])
def test_a_body_too_large_is_refused_from_its_headers(server, length):
    """Answered 413 (JSON) before a byte of the body is sent, and nothing spooled to disk."""
    head = (f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n\r\n").encode()
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        sock.sendall(head)
        answer = read_answer(sock)
        elapsed = time.perf_counter() - started
        try:  # a client that sends its body anyway: the connection is closed, nothing is kept
            for _ in range(64):
                sock.sendall(b"\0" * 65536)
        except OSError:
            pass
    error = assert_json_error(answer, 413)
    assert elapsed < 1, elapsed
    assert f"{LARGEST_BODY:,}" in error["error"], error
    assert not list(server.temporary_dir.iterdir())
    assert not [target for target in server.descriptors() if target.startswith(str(server.temporary_dir))]


@fast
def test_the_largest_upload_still_reaches_the_application(server):
    """A body of exactly the largest size the application takes is read and handed to it (which
    refuses this one for its content type: a JSON 400 of the application's, not waitress's 413)."""
    head = (f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {LARGEST_BODY}\r\n"
            "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + b"\0" * LARGEST_BODY)
        error = assert_json_error(read_answer(sock), 400)
    assert "multipart/form-data" in error["error"]


@fast
def test_idle_connections_do_not_delay_a_request(server):
    """150 connections left open, silent or half a request line, and a normal GET is answered at once
    (waitress's default limit of 100 connections left it waiting for them to time out, 120 s)."""
    idle = []
    try:
        for index in range(150):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            if index % 2:
                sock.sendall(b"GET /api/collection HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            idle.append(sock)
        time.sleep(0.3)  # the server has accepted what it will accept
        for _ in range(5):
            started = time.perf_counter()
            status, _, _ = get(server.port, "/api/collection", timeout=1)
            assert status == 200
            assert time.perf_counter() - started < 1
    finally:
        for sock in idle:
            sock.close()


@fast
@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /api/collection HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
    (b"GET /api/collection HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n", 400),
    (b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
], ids=["headers too large", "malformed header", "transfer encoding"])
def test_waitress_own_answers_are_json(server, request_bytes, status):
    answer = raw_request(server.port, request_bytes)
    assert_json_error(answer, status)
    assert answer[1]["Cache-Control"] == "no-store"


def neighbour_paths(built: Built, count: int) -> list[str]:
    return [f"/api/neighbours?urn={built.urns[index * 7 % len(built.urns)]}&step=1&nns=3&vectors=false"
            if index % 2 else "/api/collection" for index in range(count)]


@fast
def test_more_index_files_than_the_soft_open_file_limit(collection, tmp_path):
    """A collection whose index files outnumber the soft open-file limit the server starts with (64
    here; often 1,024, against a 1,500-year timeline) starts and answers 100 connections at once."""
    with app_server(collection, tmp_path, soft_open_files=64) as running:
        assert len(running.descriptors()) > 64  # the collection really needs more than the soft limit
        statuses = concurrent_gets(running.port, neighbour_paths(collection, 100))
    assert statuses == [200] * 100, [status for status in statuses if status != 200][:5]


@fast
def test_descriptors_above_1024_are_served(collection, tmp_path):
    """With 1,100 descriptors open (a collection of many periods), the server's sockets are numbered
    above 1024, where select() fails: 100 connections at once are answered."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2500:
        pytest.skip(f"the hard open-file limit ({hard}) is too low for this test")
    with app_server(collection, tmp_path, extra_descriptors=1100) as running:
        statuses = concurrent_gets(running.port, neighbour_paths(collection, 100))
        assert len(running.descriptors()) > 1100
    assert statuses == [200] * 100, [status for status in statuses if status != 200][:5]


@fast
def test_allocator_arenas_are_bounded_only_where_glibc_is(monkeypatch):
    from siamese.system import bound_allocator_arenas

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert bound_allocator_arenas() is glibc
    monkeypatch.setenv("MALLOC_ARENA_MAX", "1")  # the administrator's choice stands
    assert bound_allocator_arenas() is False


# ------------------------------------------------------------------------- the page under its CSP

# Every violation of the page's Content-Security-Policy, as the browser reports it to the page.
RECORD_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation",
  event => window.cspViolations.push(event.violatedDirective + " " + event.blockedURI));
"""


def poll(page, expression: str, timeout: float = 15) -> None:
    """Until `expression` is true in the page. Not page.wait_for_function: it compiles its predicate
    with `new Function` in the page, which the policy refuses (browser_support.fresh_page bypasses the
    policy for that reason; this test must not)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true after {timeout} s: {expression}"
        time.sleep(0.05)


@requires_browser
def test_the_page_works_under_its_content_security_policy(histogram_collection):
    """Start page, thumbnails, an upload (its blob: preview), a click on a result, with the policy the
    server sends enforced: nothing refused, no JavaScript error."""
    from playwright.sync_api import expect

    from app import Collection, make_app

    built = histogram_collection
    collection = Collection(built.vector_dir, built.index_dir, built.thumbnail_dir)
    with serving(make_app(collection)) as url, chromium_browser() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})  # the policy enforced
        page = context.new_page()
        page.set_default_timeout(15_000)
        console, errors = [], []
        page.on("console", lambda message: console.append(message.text))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.add_init_script(RECORD_VIOLATIONS)
        answer = page.goto(url)
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        page.locator("#random-images .thumb img").first.wait_for()
        poll(page, "[...document.querySelectorAll('#random-images img')]"
                   ".every(image => image.complete && image.naturalWidth > 0)")
        upload = built.image_paths[built.urns[3]]
        page.set_input_files("#upload-file", str(upload))
        expect(page.locator("#query-title")).to_have_text(upload.name)
        expect(page.locator("#query img.upload-preview")).to_have_attribute("src", re.compile("^blob:"))
        poll(page, "document.querySelector('#query img.upload-preview').naturalWidth > 0")
        page.locator("#neighbours .thumb").first.wait_for()
        page.locator("#neighbours .thumb").first.click()
        expect(page).to_have_url(re.compile(r"[?&]urn="))
        page.locator("#timeline .period").first.wait_for()
        poll(page, "!document.body.classList.contains('busy')")
        violations = page.evaluate("window.cspViolations")
        context.close()
    assert violations == [], violations
    assert not [text for text in console if "Content Security Policy" in text], console
    assert not errors, errors

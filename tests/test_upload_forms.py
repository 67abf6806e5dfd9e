"""Malformed multipart bodies are 400s that say what to send, never 500s (fast tier, no TensorFlow).

The WSGI app is called directly with the raw body: a client library would refuse to build most of
these requests, but browsers, curl mistakes and hostile clients send them."""

from __future__ import annotations

import io
import json
from wsgiref.util import setup_testing_defaults

import pytest

from app import Collection, make_app

pytestmark = pytest.mark.fast
BOUNDARY = "BOUNDARYxyz"


@pytest.fixture(scope="module")
def app(histogram_collection):
    return make_app(Collection(histogram_collection.vector_dir, histogram_collection.index_dir,
                               histogram_collection.thumbnail_dir))


@pytest.fixture(scope="module")
def png(histogram_collection) -> bytes:
    return histogram_collection.image_paths[histogram_collection.urns[0]].read_bytes()


def multipart(parts: list[tuple[bytes, bytes]]) -> bytes:
    body = b""
    for headers, data in parts:
        body += f"--{BOUNDARY}\r\n".encode() + headers + b"\r\n\r\n" + data + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def post(app, body: bytes) -> tuple[int, dict]:
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/api/search", "QUERY_STRING": "",
               "CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}",
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    setup_testing_defaults(environ)
    started = {}

    def start_response(status, headers, exc_info=None):
        started["status"] = int(status.split()[0])

    answer = b"".join(app(environ, start_response))
    return started["status"], json.loads(answer)


def image_part(png: bytes, filename: bytes = b"a.png") -> tuple[bytes, bytes]:
    return (b'Content-Disposition: form-data; name="image"; filename="' + filename
            + b'"\r\nContent-Type: image/png', png)


def test_a_text_field_that_is_not_utf8_is_400(app, png):
    status, answer = post(app, multipart([(b'Content-Disposition: form-data; name="nns"', b"\xff\xfe5"),
                                          image_part(png)]))
    assert status == 400 and "UTF-8" in answer["error"]


def test_an_image_sent_as_a_text_field_is_400_saying_how_to_send_a_file(app, png):
    """curl -F 'image=<photo.png' (instead of @) sends the bytes as a text field."""
    status, answer = post(app, multipart([(b'Content-Disposition: form-data; name="image"', png)]))
    assert status == 400 and "file" in answer["error"] and "@" in answer["error"]


def test_a_file_name_that_is_not_utf8_is_still_searched(app, png):
    status, answer = post(app, multipart([image_part(png, b"\xff\xfe.png")]))
    assert status == 200 and answer["steps"]["all"][0]["neighbours"], answer


def test_a_nested_multipart_is_400(app, png):
    inner = b"--INNER\r\nContent-Type: image/png\r\n\r\n" + png + b"\r\n--INNER--"
    status, answer = post(app, multipart([(b'Content-Disposition: form-data; name="image"; filename="a"'
                                           b"\r\nContent-Type: multipart/mixed; boundary=INNER", inner)]))
    assert status == 400 and answer["status"] == 400


def test_upload_directories_of_a_killed_server_are_removed_and_a_running_ones_kept(tmp_path):
    import os
    import subprocess
    import sys

    from siamese import upload

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = tmp_path / f"{upload.TEMPORARY_PREFIX}{dead}-abc"
    live = tmp_path / f"{upload.TEMPORARY_PREFIX}{os.getpid()}-def"
    other = tmp_path / "someone-else"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "upload").write_bytes(b"x" * 1000)
    assert upload.remove_stale_uploads(str(tmp_path)) == 1
    assert not stale.exists() and live.exists() and other.exists()

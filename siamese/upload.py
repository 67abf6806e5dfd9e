"""Query by upload: the checks and the search behind `POST /api/search`.

A researcher sends an image that is not in the collection (multipart/form-data, field `image`, plus
optional `nns` and `step` as form fields or in the query string). It is read the way the collection's
images were (siamese.images.open_rgb: the same refusals of decompression bombs, truncated files and
non-images), embedded with the collection's own model, and answered with the structure of
/api/neighbours, without a query urn ("urn": null; "metadata" describes the upload).

Limits: a body over MAX_UPLOAD_BYTES is refused (413) before it is read; the upload only ever lives in
Bottle's spooled temporary files and in a temporary directory of our own, removed when the answer is
made, whatever happens. A small file can still be a large image, so the upload is decoded at the
model's input size (a JPEG at a reduced scale), an image that would take more than
siamese.images.MAX_DECODE_BYTES to decode is refused (400) before it is decoded, at most
MAX_CONCURRENT_DECODES uploads are decoded at once, and the memory a large decode used is handed back
to the system afterwards (TRIM_AFTER_PIXELS).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import bottle
import numpy as np
from PIL import Image

from siamese.backbones import BackboneError, Embedder, get_backbone
from siamese.collection import Collection
from siamese.images import ImageRejected, load_model_input_with_size, open_rgb
from siamese.params import (
    DEFAULT_NNS,
    MAX_NNS,
    parse_count,
    parse_filters,
    parse_format,
    parse_query_string,
    parse_reprints,
    parse_steps,
    query_values,
    shorten,
)
from siamese.reprints import MAX_CANDIDATES, WORKING_SIDE
from siamese.system import process_running, return_freed_memory

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries, part headers and the small form fields
TEMPORARY_PREFIX = "siamese-upload-"
FIELDS = ("image", "nns", "step", "reprints", "format", "filter")
REPEATABLE = ("filter",)  # filter=column:value, as often as wanted
ACCEPTED_TYPES = ("image/", "application/octet-stream")  # octet-stream: what some clients send for files

MAX_CONCURRENT_DECODES = 2
"""Uploads decoded at the same time, whatever the number of request threads. Decoding is the one step
whose memory grows with the image (up to siamese.images.MAX_DECODE_BYTES, 256 MiB, for an image
decoded whole); with 8 request threads all decoding large images the process would need 8 times
that. Two keep the worst case near 0.5 GiB while a second upload need not wait for the first; the
others wait their turn (decoding takes a second or two), and the embedding itself, after the
decoding, is serialised by the model anyway (backbones.shared_embedder)."""
DECODE_WAIT_SECONDS = 60
"""How long an upload waits for a decoding slot before it is answered 503 (try again later)."""
_decode_slots = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)
TRIM_AFTER_PIXELS = 4_000_000
"""After decoding an image of this many pixels or more, the freed memory is handed back to the system
(glibc's malloc_trim): glibc otherwise keeps it in its arenas, and a server that decoded a few large
uploads stayed hundreds of MiB above its idle size. Measured: costs nothing noticeable next to the
decode (a few ms); a fixed mmap threshold did the same but made each large decode 2.5 times slower."""


class UploadError(Exception):
    """The upload cannot be searched with; `status` is the HTTP status (400, 411, 413, 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _megabytes(size: int) -> str:
    megabytes = size / (1024 * 1024)
    return f"{megabytes:.0f} MB" if megabytes >= 10 else f"{megabytes:.2g} MB"


def check_length(environ: dict, max_bytes: int | None = None) -> None:
    """Refuse a body that is too large, or of unknown length, before a byte of it is read."""
    max_bytes = MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
    content_type = environ.get("CONTENT_TYPE", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UploadError(400, "send the image as multipart/form-data with a file field 'image' (and "
                               f"optionally nns and step); got content type {shorten(content_type, 60)}")
    length = environ.get("CONTENT_LENGTH", "")
    if not length.strip():
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            raise UploadError(411, "a Content-Length header is required")
        raise UploadError(400, "the request has no body: send the image in a file field 'image'")
    try:
        size = int(length)
    except ValueError:
        raise UploadError(400, "invalid Content-Length header") from None
    if size > max_bytes + FORM_OVERHEAD_BYTES:
        raise UploadError(413, f"the upload is {_megabytes(size)}; images of at most "
                               f"{_megabytes(max_bytes)} are accepted")


def remove_stale_uploads(directory: str | None = None) -> int:
    """Delete the upload directories that a killed server left in the temporary folder (those of
    servers still running are theirs); returns how many. A server calls it when it starts."""
    removed = 0
    root = Path(directory or tempfile.gettempdir())
    for path in root.glob(f"{TEMPORARY_PREFIX}*"):
        pid = path.name[len(TEMPORARY_PREFIX):].split("-")[0]
        if not pid.isdigit() or not path.is_dir():
            continue
        if process_running(int(pid)):
            continue  # a running server's upload
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def _form_fields(request: bottle.BaseRequest) -> bottle.FormsDict:
    """The multipart body's fields, parsed as latin-1 so that any bytes parse (Bottle's UTF-8 parsing
    raises on the first byte that is not UTF-8, a 500); text is decoded as UTF-8 by the caller.

    The request's own parser is used (its spooled files are Bottle's to clean up), told the charset
    through the content type for as long as it parses."""
    environ = request.environ
    content_type = environ.get("CONTENT_TYPE", "")
    environ["CONTENT_TYPE"] = re.sub(r";\s*charset=[^;]*", "", content_type, flags=re.IGNORECASE) \
        + "; charset=latin1"
    try:
        return request.POST
    except bottle.HTTPError as error:  # Bottle's MultipartError: a malformed body
        raise UploadError(400, f"malformed multipart/form-data body ({error.body})") from None
    except ValueError as error:
        raise UploadError(400, f"malformed multipart/form-data body ({error})") from None
    finally:
        environ["CONTENT_TYPE"] = content_type


def _utf8(text: str, what: str) -> str:
    """A latin-1 parsed text field as the UTF-8 text the client meant; UploadError if it is not."""
    try:
        return text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise UploadError(400, f"{what} is not UTF-8 text; send text fields (nns, step) as UTF-8 and "
                               "the image as a file") from None


def read_form(request: bottle.BaseRequest, steps: list[int], default_nns: int = DEFAULT_NNS,
              max_nns: int = MAX_NNS, max_bytes: int | None = None
              ) -> tuple[bottle.FileUpload, int, list[int | None]]:
    """(the uploaded file, nns, steps) from a multipart request; UploadError / ParameterError otherwise.

    `max_bytes`: the largest image accepted (default MAX_UPLOAD_BYTES)."""
    max_bytes = MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
    check_length(request.environ, max_bytes)
    query_string = request.environ.get("QUERY_STRING", "")
    parameters = parse_query_string(query_string, ("nns", "step", "reprints", "format", "filter"),
                                    "POST /api/search", repeatable=REPEATABLE)
    filters = query_values(query_string, "filter")
    post = _form_fields(request)
    for name in post:
        if name not in FIELDS:
            raise UploadError(400, f"unknown field {shorten(_utf8(name, 'a field name'))}; POST /api/search "
                                   "takes a file field 'image' and the fields nns, step, reprints, format "
                                   "and filter")
        values = post.getall(name)
        if name not in REPEATABLE and (len(values) > 1 or (name != "image" and name in parameters)):
            raise UploadError(400, f"field {name!r} given more than once; give it once")
        if name != "image":
            if not all(isinstance(value, str) for value in values):
                raise UploadError(400, f"field {name!r} must be a plain value, not a file")
            if name in REPEATABLE:
                filters += [_utf8(value, f"field {name!r}") for value in values]
            else:
                parameters[name] = _utf8(values[0], f"field {name!r}")
    upload = post.get("image")
    if upload is None:
        raise UploadError(400, "field 'image' is required: the image file to search with "
                               "(multipart/form-data)")
    if not isinstance(upload, bottle.FileUpload):
        raise UploadError(400, "field 'image' must be a file (with a file name), not a text value: with "
                               "curl, -F 'image=@photo.jpg' (with @; '<' sends the bytes as text)")
    upload.raw_filename = upload.raw_filename.encode("latin-1").decode("utf-8", errors="replace")
    content_type = (upload.content_type or "").lower()
    if content_type and not content_type.startswith(ACCEPTED_TYPES):
        raise UploadError(400, f"field 'image' has content type {shorten(content_type, 60)}; send an "
                               "image (image/jpeg, image/png, ...)")
    upload.file.seek(0, os.SEEK_END)
    size = upload.file.tell()
    upload.file.seek(0)
    if size == 0:
        raise UploadError(400, "the uploaded file is empty")
    if size > max_bytes:
        raise UploadError(413, f"the image is {_megabytes(size)}; images of at most "
                               f"{_megabytes(max_bytes)} are accepted")
    nns = parse_count(parameters.get("nns"), "nns", default_nns, max_nns)
    request.environ["siamese.reprints"] = parse_reprints(parameters.get("reprints"), MAX_CANDIDATES)
    request.environ["siamese.format"] = parse_format(parameters.get("format"))
    request.environ["siamese.filters"] = parse_filters(filters)
    return upload, nns, parse_steps(parameters.get("step"), steps)


def search(request: bottle.BaseRequest, collection: Collection, embedder: Embedder | None,
           default_nns: int = DEFAULT_NNS, max_nns: int = MAX_NNS, max_bytes: int | None = None) -> dict:
    """The answer to POST /api/search: /api/neighbours' structure for an uploaded image.

    {"urn": null, "metadata": {"filename", "width", "height", "bytes"}, "model", "nns", "step",
    "steps": {"all" or "S": [{"period", "start", "end", "neighbours": [...]}], ...}}. The image is
    embedded once, whatever the number of steps asked for. `embedder`: the collection's model if
    already loaded, else it is loaded once per process.
    """
    upload, nns, steps = read_form(request, collection.steps, default_nns, max_nns, max_bytes)
    reprints = request.environ["siamese.reprints"]
    if reprints:
        collection.require_reprint_images()  # refused before the upload is decoded
    vector, metadata, image = embed_upload(upload, collection, embedder, with_image=reprints > 0)
    filters = request.environ["siamese.filters"]
    if filters:
        for name in filters:  # an unknown column refused before the upload is decoded
            collection.facets.column(name)
    answer = collection.neighbours(vector, nns, steps, reprints=reprints, query_image=image, filters=filters)
    result = {"urn": None, "metadata": metadata, "model": collection.model, "nns": answer["nns"],
              "step": answer["step"]}
    if "filters" in answer:
        result["filters"] = answer["filters"]
    if "reprints" in answer:
        result["reprints"] = answer["reprints"]
    result["steps"] = answer["steps"]
    return result


def embed_upload(upload: bottle.FileUpload, collection: Collection, embedder: Embedder | None, *,
                 with_image: bool = False) -> tuple[np.ndarray, dict, Image.Image | None]:
    """The upload's vector by the collection's model, what the answer says of the upload, and with
    `with_image` the image itself at most reprints.WORKING_SIDE on its longer side (what reprints are
    checked on; else None).

    The bytes are copied into a fresh private temporary directory (never under the client's file
    name) and read from there; the directory is removed before this returns or raises.
    """
    directory = tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-")
    try:
        path = Path(directory) / "upload"
        with open(path, "wb") as handle:
            shutil.copyfileobj(upload.file, handle)
            size = handle.tell()
        try:
            input_size = get_backbone(collection.model).input_size
        except ValueError as error:
            raise UploadError(503, f"the collection's model cannot be loaded here: {error}") from None
        pixels, (width, height) = decode_upload(path, input_size)
        try:
            vector = collection.embed(Image.fromarray(pixels), embedder)
        except BackboneError as error:
            raise UploadError(503, f"the collection's model cannot be loaded here: {error}") from None
        metadata = {"filename": upload.raw_filename, "width": width, "height": height, "bytes": size}
        return vector, metadata, decode_working_image(path) if with_image else None
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def decode_working_image(path: str | os.PathLike) -> Image.Image:
    """The upload as reprints are checked on it: upright RGB, at most WORKING_SIDE on its longer side
    (a JPEG decoded near that size), in one of the decode slots like decode_upload."""
    if not _decode_slots.acquire(timeout=DECODE_WAIT_SECONDS):
        raise UploadError(503, "the server is busy decoding other uploads; try again in a minute")
    try:
        image = open_rgb(path, draft_size=(WORKING_SIDE, WORKING_SIDE))
        image.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.BOX)
        return image
    except ImageRejected as error:
        raise UploadError(400, f"the upload cannot be used as an image: {error}") from None
    finally:
        _decode_slots.release()


def decode_upload(path: str | os.PathLike, input_size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """The model input of the image at `path` ((height, width, 3) uint8 of `input_size`) and the
    image's own upright (width, height), read from its header.

    Decoded the way the collection's images were (siamese.images.load_model_input), in one of the
    MAX_CONCURRENT_DECODES slots; UploadError 400 for an unusable image (with the reason), 503 when
    no slot frees up within DECODE_WAIT_SECONDS.
    """
    if not _decode_slots.acquire(timeout=DECODE_WAIT_SECONDS):
        raise UploadError(503, "the server is busy decoding other uploads; try again in a minute")
    try:
        pixels, (width, height) = load_model_input_with_size(path, input_size)
    except ImageRejected as error:
        raise UploadError(400, f"the upload cannot be used as an image: {error}") from None
    finally:
        _decode_slots.release()
    if width * height >= TRIM_AFTER_PIXELS:
        return_freed_memory()
    return pixels, (width, height)



"""Answers byte-identical for the same request before and after a refactor: a snapshot of what the code says.

    python bench/answer_snapshot.py --vector-dir DIR --index-dir DIR [--thumbnails DIR] [--images-root DIR]
                                    --out FILE.jsonl
    python bench/answer_snapshot.py compare BEFORE.jsonl AFTER.jsonl
    python bench/answer_snapshot.py --make-synthetic DIR
    python bench/answer_snapshot.py --make-emoji DIR [--demo-dir data/demo]

A refactor of annoy_indexer.py or app.py should not change a single byte of any answer. This script asks
the code it sits next to (its parent folder is the project root imported) a fixed, deterministic list of
questions over one collection and writes one JSON line per question:

    {"request": "GET /api/neighbours?urn=...&step=10", "status": 200, "content_type": "...", "body": "..."}

Run it from a copy of the old code and from the new code over the same collection, then `compare` the two
files: it prints every request whose answer differs (with the first differing JSON path) and exits 1, or
prints "N requests, all identical" and exits 0.

What is asked, for about six urns chosen deterministically (the first, the last, three in between, any
urn with characters that URLs treat specially, and the first urn without a thumbnail):

* the web app (`app.make_app`, called straight through WSGI): /api/neighbours (no step, step=all, every
  step size built, nns=1/5/10, vectors=true), /api/item (with and without vectors), /query (the original
  Siamese's API: plain, step=10, nns=3, vectors=true), /api/collection, /thumbnail, a handful of error
  requests, and, for a colour-histogram store (no TensorFlow needed), POST /api/search with one of the
  collection's own images. /api/random and the search page are left out: the first is random, the second
  embeds a hash of static/ and is not an answer of the indexer.
* the indexer's Python API (`annoy_indexer.AnnoyIndexer`): query_all, query, query_vector, and three
  errors. A raised exception is recorded as status -1, content type "exception", body "Type: message".
* the indexer's CLI: `annoy_indexer.py query ... --quiet` (status: its exit code; body: its stdout, plus
  its stderr when it fails, with the directories replaced by VECTOR_DIR and INDEX_DIR).

Bodies that are not UTF-8 text (thumbnails) are recorded as their SHA-256. BLAS is limited to one thread,
so that sums are added in the same order on every run whatever the load.

--make-synthetic DIR builds a small real collection without TensorFlow: 60 generated PNG images (varied
sizes, modes, colours and shapes; fixed seed), dated 1948-1975, with a metadata column named "distance"
(a name the JSON reserves) and a urn full of URL delimiters, through the project's own pipeline
(extract_vectors.py --model colour-histogram, make_thumbnails.py, annoy_indexer.py build --steps 10 1).
--make-emoji DIR builds the web-app tests' collection (tests/app_support.py: 24 Google/Twitter emoji
pairs, tests/conftest.py's selection, plus one odd urn) with the real Inception v3 (2015), its images
copied into DIR so that the collection stands alone. Both remove one thumbnail, as the tests do, so that
an answer without a thumbnail is covered too.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import mimetypes
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from urllib.parse import urlencode
from wsgiref.util import setup_testing_defaults

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image, ImageDraw  # noqa: E402

from annoy_indexer import AnnoyIndexer  # noqa: E402
from app import Collection, make_app  # noqa: E402

PLAIN_URN = re.compile(r"[A-Za-z0-9:._-]+")  # a urn outside this is "odd": it needs escaping somewhere
MAX_ODD_URNS = 2
THUMBNAIL_SCAN = 5000  # urns searched for one without a thumbnail
BOUNDARY = "answer-snapshot-7c0ffee5a1d2"
SYNTHETIC_SEED = 1948
SYNTHETIC_COUNT = 60
SYNTHETIC_ODD_URN = "odd urn/ä?#&=+%20<b>"
SYNTHETIC_ODD_ROW = 37  # not one of the rows chosen by position, so it is an urn of its own
NEWSPAPERS = ("De Telegraaf", "Het Parool", "NRC Handelsblad", "Leeuwarder Courant",
              "Trouw, editie 's-Hertogenbosch")
EMOJI_ODD_URN = "odd urn/ä ß?#&=+%20<b>&amp;🦆"  # as tests/app_support.py's ODD_URN
EMOJI_ODD_YEAR = "2012"
SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

Record = dict[str, object]


# ------------------------------------------------------------------------------------------ asking

def _body_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return f"sha256:{hashlib.sha256(body).hexdigest()} ({len(body)} bytes)"


def call_wsgi(app: Callable, method: str, path: str, query_string: str = "", body: bytes = b"",
              content_type: str = "") -> tuple[int, str, bytes]:
    """One request straight through the WSGI interface, as tests/app_support.py's call() makes it."""
    environ: dict[str, object] = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query_string}
    if method == "POST":
        environ.update({"CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)),
                        "wsgi.input": io.BytesIO(body)})
    setup_testing_defaults(environ)
    started: dict[str, object] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
        started["status"] = int(status.split()[0])
        started["headers"] = {name.lower(): value for name, value in headers}

    chunks = app(environ, start_response)
    try:
        data = b"".join(chunks)
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
    headers = started["headers"]
    assert isinstance(headers, dict)
    return int(started["status"]), headers.get("content-type", ""), data  # type: ignore[arg-type]


def multipart(fields: Sequence[tuple[str, str]], file_field: str, filename: str, data: bytes,
              content_type: str) -> tuple[bytes, str]:
    """A multipart/form-data body, made by hand: (body, its Content-Type header)."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{file_field}"; '
                 f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={BOUNDARY}"


def choose_urns(urns: Sequence[str]) -> list[str]:
    """The first, the last, three in between, and the first odd urns: deterministic, about six."""
    count = len(urns)
    positions = [0, count // 4, count // 2, (3 * count) // 4, count - 1]
    chosen = [urns[position] for position in positions]
    chosen += [urn for urn in urns if not PLAIN_URN.fullmatch(urn)][:MAX_ODD_URNS]
    return list(dict.fromkeys(chosen))


def _query(pairs: Iterable[tuple[str, str]]) -> str:
    return urlencode(list(pairs))


def _api_record(request: str, ask: Callable[[], object], directories: dict[str, Path]) -> Record:
    """A Python API call: its JSON, or the exception it raised (`directories` named by placeholders)."""
    try:
        result = ask()
    except Exception as error:  # noqa: BLE001 - the error is the answer recorded
        message = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
        for placeholder, directory in directories.items():
            message = message.replace(str(directory), placeholder)
        return {"request": request, "status": -1, "content_type": "exception",
                "body": f"{type(error).__name__}: {message}"}
    return {"request": request, "status": 200, "content_type": "application/json",
            "body": json.dumps(result, sort_keys=False, ensure_ascii=False)}


class Snapshot:
    """Asks one collection the fixed list of questions, collecting one record per question."""

    def __init__(self, vector_dir: Path, index_dir: Path, thumbnail_dir: Path | None,
                 images_root: Path) -> None:
        from siamese.vector_store import VectorStore

        self.vector_dir, self.index_dir, self.images_root = vector_dir, index_dir, images_root
        self.directories = {"VECTOR_DIR": vector_dir, "INDEX_DIR": index_dir}  # kept out of the records
        self.collection = Collection(vector_dir, index_dir, thumbnail_dir)
        self.app = make_app(self.collection)
        all_urns = VectorStore(vector_dir).urns
        self.urns = choose_urns(all_urns)
        without = next((urn for urn in all_urns[:THUMBNAIL_SCAN]
                        if self.collection_item(urn)["thumbnail"] is None), None)
        if without is not None and without not in self.urns:
            self.urns.append(without)  # an answer whose own thumbnail is null, and /thumbnail's 404 for it
        self.records: list[Record] = []

    def get(self, path: str, pairs: Iterable[tuple[str, str]] = (), method: str = "GET") -> object:
        """Ask the app; returns the answer's JSON (None when it is not JSON)."""
        query_string = _query(pairs)
        status, content_type, body = call_wsgi(self.app, method, path, query_string)
        request = f"{method} {path}" + (f"?{query_string}" if query_string else "")
        self._add({"request": request, "status": status, "content_type": content_type,
                   "body": _body_text(body)})
        try:
            return json.loads(body.decode("utf-8"))
        except ValueError:
            return None

    def post_image(self, path: Path, pairs: Sequence[tuple[str, str]], fields: Sequence[tuple[str, str]],
                   ) -> None:
        data = path.read_bytes()
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        body, header = multipart(fields, "image", path.name, data, content_type)
        query_string = _query(pairs)
        status, answer_type, answer = call_wsgi(self.app, "POST", "/api/search", query_string, body, header)
        form = "".join(f", {name}={value}" for name, value in fields)
        request = (f"POST /api/search{'?' + query_string if query_string else ''} "
                   f"(multipart: image={path.name} [{len(data)} bytes, {content_type}]{form})")
        self._add({"request": request, "status": status, "content_type": answer_type,
                   "body": _body_text(answer)})

    def _add(self, record: Record) -> None:
        if any(known["request"] == record["request"] for known in self.records):
            raise AssertionError(f"request asked twice: {record['request']}")
        self.records.append(record)

    # ---------------------------------------------------------------- the questions

    def run(self) -> list[Record]:
        info = self.get("/api/collection")
        assert isinstance(info, dict), info
        steps = [int(step) for step in info["steps"]]
        for urn in self.urns:
            self.ask_web(urn, steps)
        self.ask_web_once(steps)
        if info["model"] == "colour-histogram":
            self.ask_upload(steps)
        indexer = AnnoyIndexer(self.vector_dir, self.index_dir, metric=info["metric"], step_sizes=steps,
                               verbose=False)
        for urn in self.urns:
            self.ask_python(indexer, urn, steps)
        self.ask_python_errors(indexer, steps)
        self.ask_cli(steps)
        return self.records

    def ask_web(self, urn: str, steps: list[int]) -> None:
        neighbours = [[]] + [[("step", "all")]] + [[("step", str(step))] for step in steps]
        neighbours += [[("nns", nns)] for nns in ("1", "5", "10")]
        neighbours += [[("nns", nns), ("step", str(step))] for step in steps for nns in ("1", "5")]
        for extra in neighbours:
            self.get("/api/neighbours", [("urn", urn), *extra])
        self.get("/api/item", [("urn", urn)])
        self.get("/api/item", [("urn", urn), ("vectors", "true")])
        original = [[], [("nns", "3")]] + ([[("step", "10")]] if 10 in steps else [])
        for extra in original:
            self.get("/query", [("urn", urn), *extra])

    def ask_web_once(self, steps: list[int]) -> None:
        first = self.urns[0]
        self.get("/api/neighbours", [("urn", first), ("vectors", "true")])
        self.get("/api/neighbours", [("urn", first), ("step", str(steps[0])), ("vectors", "true")])
        self.get("/api/neighbours", [("urn", first), ("nns", "3"), ("step", "all"), ("vectors", "false")])
        self.get("/query", [("urn", first), ("vectors", "true")])
        self.get("/query", [("urn", first), ("nns", "2"), ("step", "all")])
        for urn in self.urns:  # a JPEG's hash, or a 404 for the urn without a thumbnail
            self.get("/thumbnail", [("urn", urn)])
        # errors
        self.get("/api/neighbours", [("urn", "no such urn")])
        self.get("/api/neighbours", [("urn", first), ("nns", "0")])
        self.get("/api/neighbours", [("urn", first), ("nns", "101")])
        self.get("/api/neighbours", [("urn", first), ("step", "7")])
        self.get("/api/neighbours", [("urn", first), ("nn", "5")])
        self.get("/api/neighbours", [("urn", first), ("vectors", "maybe")])
        self.get("/api/neighbours")
        self.get("/api/item", [("urn", "no such urn")])
        self.get("/api/collection", [("x", "1")])
        self.get("/query", [("urn", "no such urn")])
        self.get("/query", [("urn", first), ("step", "7")])
        self.get("/thumbnail", [("urn", "no such urn")])
        self.get("/nope")
        self.get("/api/neighbours", [("urn", first)], method="POST")

    def ask_upload(self, steps: list[int]) -> None:
        item = self.collection_item(self.urns[0])
        path = Path(item["metadata"]["path"])
        path = path if path.is_absolute() else self.images_root / path
        self.post_image(path, [], [("step", "all")])
        if 10 in steps:
            self.post_image(path, [], [("step", "10")])
        self.post_image(path, [("nns", "3")], [("step", str(steps[-1]))])

    def collection_item(self, urn: str) -> dict:
        status, _, body = call_wsgi(self.app, "GET", "/api/item", _query([("urn", urn)]))
        assert status == 200, body
        return json.loads(body)

    def ask_python(self, indexer: AnnoyIndexer, urn: str, steps: list[int]) -> None:
        def add(request: str, ask: Callable[[], object]) -> None:
            self._add(_api_record(f"python: {request}", ask, self.directories))

        add(f"query_all({urn!r}, n_nns=[5])", lambda: indexer.query_all(urn, n_nns=[5]))
        if 10 in steps:
            add(f"query_all({urn!r}, 3, vectors=True, step_sizes=[10], exclude_self=False)",
                lambda: indexer.query_all(urn, 3, vectors=True, step_sizes=[10], exclude_self=False))
        add(f"query({urn!r}, n=5)", lambda: indexer.query(urn, n=5))
        if 10 in steps:
            add(f"query({urn!r}, n=5, step=10)", lambda: indexer.query(urn, n=5, step=10))
        vector = self.collection_vector(urn)
        add(f"query_vector(vector of {urn!r}, n=5)", lambda: indexer.query_vector(vector, n=5))
        if 1 in steps:
            add(f"query_vector(vector of {urn!r}, n=4, step=1)",
                lambda: indexer.query_vector(vector, n=4, step=1))

    def collection_vector(self, urn: str) -> list[float]:
        status, _, body = call_wsgi(self.app, "GET", "/api/item", _query([("urn", urn), ("vectors", "true")]))
        assert status == 200, body
        return json.loads(body)["vector"]

    def ask_python_errors(self, indexer: AnnoyIndexer, steps: list[int]) -> None:
        first, directories = self.urns[0], self.directories
        self._add(_api_record("python: query('no such urn', n=5)", lambda: indexer.query("no such urn", n=5),
                              directories))
        self._add(_api_record(f"python: query({first!r}, n=5, step=7)",
                              lambda: indexer.query(first, n=5, step=7), directories))
        self._add(_api_record("python: query_vector([0.0, 0.0, 0.0], n=5)",
                              lambda: indexer.query_vector([0.0, 0.0, 0.0], n=5), directories))

    def ask_cli(self, steps: list[int]) -> None:
        odd = [urn for urn in self.urns if not PLAIN_URN.fullmatch(urn)]
        runs: list[tuple[str, list[str]]] = [(self.urns[0], [])]
        runs += [(urn, ["--nns", "3", "--step", "10"]) for urn in [self.urns[0], *odd[:1]] if 10 in steps]
        runs += [("no such urn", ["--nns", "3"])]
        for urn, options in runs:
            command = [sys.executable, "annoy_indexer.py", "query", str(self.vector_dir), str(self.index_dir),
                       urn, *options, "--quiet"]
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                  env={**os.environ, **SINGLE_THREAD_ENV})
            body = done.stdout
            if done.returncode != 0:
                stderr = done.stderr
                for placeholder, directory in self.directories.items():
                    stderr = stderr.replace(str(directory), placeholder)
                body += "\n--- stderr ---\n" + stderr
            request = " ".join(["cli: annoy_indexer.py query VECTOR_DIR INDEX_DIR", repr(urn), *options,
                                "--quiet"])
            self._add({"request": request, "status": done.returncode, "content_type": "text/plain",
                       "body": body})


def take_snapshot(args: argparse.Namespace) -> int:
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    vector_dir, index_dir = Path(args.vector_dir), Path(args.index_dir)
    images_root = Path(args.images_root) if args.images_root else vector_dir.parent
    thumbnail_dir = Path(args.thumbnails) if args.thumbnails else None
    snapshot = Snapshot(vector_dir, index_dir, thumbnail_dir, images_root)
    records = snapshot.run()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"{len(records)} requests over {len(snapshot.urns)} urns -> {out}")
    return 0


# ------------------------------------------------------------------------------------------ comparing

def read_records(path: Path) -> dict[str, Record]:
    records: dict[str, Record] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            records[record["request"]] = record
    return records


def _short(value: object, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def first_difference(before: object, after: object, path: str = "$") -> str | None:
    """Where two JSON values first differ (key order included), or None when they are the same."""
    if type(before) is not type(after):
        return f"{path}: {_short(before)} -> {_short(after)}"
    if isinstance(before, dict) and isinstance(after, dict):
        if list(before) != list(after):
            return f"{path}: keys {_short(list(before))} -> {_short(list(after))}"
        for key in before:
            found = first_difference(before[key], after[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(before, list) and isinstance(after, list):
        for index, (old, new) in enumerate(zip(before, after, strict=False)):
            found = first_difference(old, new, f"{path}[{index}]")
            if found:
                return found
        if len(before) != len(after):
            return f"{path}: length {len(before)} -> {len(after)}"
        return None
    return None if before == after else f"{path}: {_short(before)} -> {_short(after)}"


def body_difference(before: str, after: str) -> str:
    try:
        found = first_difference(json.loads(before), json.loads(after))
    except ValueError:
        found = None
    if found:
        return f"first difference at {found}"
    offset = next((index for index, (old, new) in enumerate(zip(before, after, strict=False)) if old != new),
                  min(len(before), len(after)))
    return (f"text differs at character {offset} (lengths {len(before)}, {len(after)}): "
            f"{before[max(0, offset - 30):offset + 50]!r} -> {after[max(0, offset - 30):offset + 50]!r}")


def compare(before_path: Path, after_path: Path) -> int:
    before, after = read_records(before_path), read_records(after_path)
    differing = 0
    for request in before.keys() - after.keys():
        differing += 1
        print(f"only in {before_path}: {request}")
    for request in after.keys() - before.keys():
        differing += 1
        print(f"only in {after_path}: {request}")
    for request, old in before.items():
        new = after.get(request)
        if new is None or new == old:
            continue
        differing += 1
        print(f"DIFFERS: {request}")
        for field in ("status", "content_type"):
            if old[field] != new[field]:
                print(f"  {field}: {old[field]!r} -> {new[field]!r}")
        if old["body"] != new["body"]:
            print(f"  body: {body_difference(str(old['body']), str(new['body']))}")
    if list(before) != [request for request in after if request in before] and not differing:
        print("the same requests, in another order")
        differing += 1
    if differing:
        print(f"{differing} of {len(before.keys() | after.keys())} requests differ")
        return 1
    print(f"{len(before)} requests, all identical")
    return 0


# ------------------------------------------------------------------------------------------ collections

def run_pipeline(csv_path: Path, directory: Path, model: str) -> tuple[Path, Path, Path]:
    """The project's own pipeline, as a user runs it: vectors, thumbnails, indices (steps 10 and 1)."""
    vector_dir, thumbnail_dir = directory / "vectors", directory / "thumbnails"
    index_dir = directory / "indices"
    env = {**os.environ, **SINGLE_THREAD_ENV}
    for command in (
            ["extract_vectors.py", str(csv_path), str(vector_dir), "--model", model, "--workers", "1",
             "--quiet"],
            ["make_thumbnails.py", str(csv_path), str(thumbnail_dir), "--workers", "1", "--quiet"],
            ["annoy_indexer.py", "build", str(vector_dir), str(index_dir), "--steps", "10", "1", "--quiet"]):
        print("$ python " + " ".join(command), flush=True)
        subprocess.run([sys.executable, *command], cwd=ROOT, check=True, env=env)
    return vector_dir, thumbnail_dir, index_dir


def remove_thumbnail(thumbnail_dir: Path, urn: str) -> None:
    """As the tests do: a urn of the collection whose thumbnail is missing (a rejected image)."""
    from siamese.thumbnails import thumbnail_filename

    (thumbnail_dir / thumbnail_filename(urn)).unlink()
    print(f"removed the thumbnail of {urn!r} on purpose")


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _new_directory(directory: Path) -> None:
    if directory.exists() and any(directory.iterdir()):
        raise SystemExit(f"answer_snapshot.py: error: {directory} is not empty; give a new folder")
    directory.mkdir(parents=True, exist_ok=True)


def synthetic_image(rng: random.Random, index: int) -> Image.Image:
    width, height = rng.randint(64, 200), rng.randint(64, 150)

    def colour() -> tuple[int, int, int]:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    image = Image.new("RGB", (width, height), colour())
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 6)):
        x0, x1 = sorted(rng.randrange(width) for _ in range(2))
        y0, y1 = sorted(rng.randrange(height) for _ in range(2))
        shape = rng.choice(("ellipse", "rectangle", "polygon", "line"))
        if shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=colour())
        elif shape == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=colour(), outline=colour())
        elif shape == "polygon":
            draw.polygon([(rng.randrange(width), rng.randrange(height)) for _ in range(rng.randint(3, 6))],
                         fill=colour())
        else:
            draw.line((x0, y0, x1, y1), fill=colour(), width=rng.randint(1, 8))
    if index % 7 == 3:
        return image.convert("L")
    if index % 11 == 5:
        image = image.convert("RGBA")
        image.putalpha(rng.randint(64, 255))
    return image


def make_synthetic(directory: Path, count: int = SYNTHETIC_COUNT) -> int:
    _new_directory(directory)
    rng = random.Random(SYNTHETIC_SEED)
    (directory / "images").mkdir()
    rows = []
    for index in range(count):
        year = 1948 if index == 0 else 1975 if index == count - 1 else rng.randint(1948, 1975)
        month, day = rng.randint(1, 12), rng.randint(1, 28)
        date = (str(year), f"{year}-{month:02d}", f"{year}-{month:02d}-{day:02d}")[index % 3]
        name = f"images/img-{index:03d}.png"
        synthetic_image(rng, index).save(directory / name)
        urn = SYNTHETIC_ODD_URN if index == SYNTHETIC_ODD_ROW else f"urn:synthetic:{index:04d}"
        title = rng.choice((f"Picture {index}", f'"Quoted", with a comma {index}', f"Café <{index}> & co",
                            f"Schöne Grüße {index} 🦆"))
        rows.append({"urn": urn, "path": name, "date": date, "title": title,
                     "newspaper": rng.choice(NEWSPAPERS), "distance": rng.choice(("", "near", "far", "0.5"))})
    csv_path = write_csv(directory / "metadata.csv", rows,
                         ["urn", "path", "date", "title", "newspaper", "distance"])
    _, thumbnail_dir, _ = run_pipeline(csv_path, directory, "colour-histogram")
    remove_thumbnail(thumbnail_dir, rows[-2]["urn"])
    print(snapshot_command(directory))
    return 0


def make_emoji(directory: Path, demo_dir: Path) -> int:
    """The web-app tests' collection (tests/app_support.py build_collection), alone in `directory`."""
    sys.path.insert(0, str(ROOT / "demo"))
    sys.path.insert(0, str(ROOT / "tests"))
    import fetch_emoji

    from conftest import select_pairs

    metadata = fetch_emoji.fetch(demo_dir)
    with open(metadata, newline="", encoding="utf-8") as handle:
        emoji_rows = list(csv.DictReader(handle))
    columns = list(emoji_rows[0])
    _new_directory(directory)
    rows = [row for pair in select_pairs(emoji_rows) for row in pair]
    for row in rows:
        target = directory / row["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(metadata.parent / row["path"], target)
    rows.append(dict(rows[0], urn=EMOJI_ODD_URN, date=EMOJI_ODD_YEAR, name="Odd <urn> & co"))
    csv_path = write_csv(directory / "metadata.csv", rows, columns)
    _, thumbnail_dir, _ = run_pipeline(csv_path, directory, "inception-v3-2015")
    remove_thumbnail(thumbnail_dir, rows[-2]["urn"])
    print(snapshot_command(directory))
    return 0


def snapshot_command(directory: Path) -> str:
    return (f"snapshot it with: python bench/answer_snapshot.py --vector-dir {directory}/vectors "
            f"--index-dir {directory}/indices --thumbnails {directory}/thumbnails --out SNAPSHOT.jsonl")


# ------------------------------------------------------------------------------------------ the CLI

def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        parser = argparse.ArgumentParser(prog="answer_snapshot.py compare",
                                         description="Compare two snapshots request by request.")
        parser.add_argument("before", type=Path)
        parser.add_argument("after", type=Path)
        arguments = parser.parse_args(argv[1:])
        for path in (arguments.before, arguments.after):
            if not path.is_file():
                parser.error(f"no such file: {path}")
        return compare(arguments.before, arguments.after)
    parser = argparse.ArgumentParser(prog="answer_snapshot.py", description=__doc__.split("\n\n")[0],
                                     epilog="compare: answer_snapshot.py compare BEFORE.jsonl AFTER.jsonl")
    parser.add_argument("--vector-dir", metavar="DIR", help="the collection's vector store")
    parser.add_argument("--index-dir", metavar="DIR", help="its indices")
    parser.add_argument("--thumbnails", metavar="DIR", help="its thumbnails")
    parser.add_argument("--images-root", metavar="DIR",
                        help="where relative image paths start, for the upload (default: the vector dir's "
                             "parent, where --make-synthetic puts the CSV)")
    parser.add_argument("--out", metavar="FILE.jsonl", help="the snapshot to write")
    parser.add_argument("--make-synthetic", metavar="DIR", type=Path,
                        help="build a small colour-histogram collection in DIR (no TensorFlow) and stop")
    parser.add_argument("--count", type=int, default=SYNTHETIC_COUNT, metavar="N",
                        help=f"images of --make-synthetic (default: {SYNTHETIC_COUNT}; indices of more "
                             "than 256 items are scanned rather than searched exhaustively: e.g. 1000)")
    parser.add_argument("--make-emoji", metavar="DIR", type=Path,
                        help="build the web-app tests' 49-emoji collection (Inception v3 2015) in DIR "
                             "and stop")
    parser.add_argument("--demo-dir", metavar="DIR", type=Path, default=ROOT / "data" / "demo",
                        help="the fetched emoji demo collection for --make-emoji (default: data/demo; "
                             "fetched with npm if missing)")
    arguments = parser.parse_args(argv)
    if arguments.make_synthetic:
        if arguments.count <= SYNTHETIC_ODD_ROW:
            parser.error(f"--count must be more than {SYNTHETIC_ODD_ROW}")
        return make_synthetic(arguments.make_synthetic.resolve(), arguments.count)
    if arguments.make_emoji:
        return make_emoji(arguments.make_emoji.resolve(), arguments.demo_dir.resolve())
    if not (arguments.vector_dir and arguments.index_dir and arguments.out):
        parser.error("--vector-dir, --index-dir and --out are required (or --make-synthetic / --make-emoji)")
    return take_snapshot(arguments)


if __name__ == "__main__":
    sys.exit(main())

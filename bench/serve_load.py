"""How many searches a second does the web app answer, and how fast, with many people at once?

    python bench/serve_load.py [--data data/demo] [--clients 16] [--requests 3000] [--duration 60]
                               [--nns 10] [--step S ...] [--threads 8] [--workers 1]
                               [--upload IMAGE ...] [--url http://127.0.0.1:PORT/]

Starts `app.py` (--workers processes of --threads request threads) on a free port of 127.0.0.1 over
the collection in --data (vectors/, indices-eucl/ or indices/, thumbnails/), unless --url names a server
already running; only 127.0.0.1 / localhost are accepted. Then --clients threads, each with its own
keep-alive connection, ask GET /api/neighbours?urn=U&nns=N[&step=S] for urns drawn at random from the
collection (and, with --upload, POST /api/search with those images), until --requests have been
answered or --duration seconds have passed, whichever comes first (one run per --step; "all" is
the whole collection). Prints a Markdown table: requests/s,
latency percentiles and the count of errors (any status but 200, or a broken connection); then, for
50 urns per step, the median answer size as JSON and gzipped, and how many repeated requests (with
the ETag) got a 304; then the memory of each server process (resident, shared, private).

The clients run in this process and the server in another, on the same machine: on 2 cores they
compete for the CPU (the table says how many cores the clients kept busy), so the figures are a lower
bound of what a server with its own machine does.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO
from urllib.parse import urlencode, urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from siamese.vector_store import VectorStore  # noqa: E402

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


FULL_SCALE_THUMBNAILS = 2000


def collection_dirs(data: Path) -> tuple[Path, Path, Path]:
    """(vectors, indices, thumbnails) of a collection folder: the demo's layout (indices-eucl/), or
    bench/index_scale.py's work directory (indices/)."""
    indices = data / "indices-eucl" if (data / "indices-eucl").is_dir() else data / "indices"
    return data / "vectors", indices, data / "thumbnails"


def sample_thumbnails(data: Path, urns: list[str], count: int = FULL_SCALE_THUMBNAILS) -> None:
    """Thumbnails for `count` urns drawn at random (a synthetic collection has no images): small JPEGs
    named as make_thumbnails.py names them, so that answers carry thumbnail URLs as a real one does."""
    from PIL import Image

    from siamese.thumbnails import thumbnail_filename

    folder = data / "thumbnails"
    if folder.is_dir() and any(folder.iterdir()):
        return
    folder.mkdir(exist_ok=True)
    rng = random.Random(3)
    for urn in rng.sample(urns, min(count, len(urns))):
        shade = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", (64, 48), shade).save(folder / thumbnail_filename(urn), quality=85)


def start_server(data: Path, threads: int, log: IO[str], workers: int = 1) -> tuple[subprocess.Popen, str]:
    """app.py on a free local port, its output to `log` (a file: a pipe nobody reads would fill up and
    block the server); returns the process and its base URL once it answers."""
    port = free_port()
    vectors, indices, thumbnails = collection_dirs(data)
    command = [sys.executable, str(ROOT / "app.py"), "--vector-dir", str(vectors),
               "--index-dir", str(indices), "--thumbnails", str(thumbnails),
               "--host", "127.0.0.1", "--port", str(port), "--threads", str(threads),
               "--workers", str(workers)]
    process = subprocess.Popen(command, stdout=log, stderr=log)
    wait_until_answering(process, port, log)
    return process, f"http://127.0.0.1:{port}/"


def wait_until_answering(process: subprocess.Popen, port: int, log, seconds: float = 180) -> None:
    """Until the app.py just started answers GET /api/collection; SystemExit with its log otherwise."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise SystemExit(f"app.py exited with status {process.returncode}: {log.read()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/api/collection")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit(f"app.py did not answer within {seconds:.0f} s")


class Load:
    """Shared by the client threads: how many requests may still start, and what each one measured."""

    def __init__(self, requests: int, duration: float) -> None:
        self.left = requests
        self.deadline = time.monotonic() + duration
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def take(self) -> bool:
        with self.lock:
            if self.left <= 0 or time.monotonic() >= self.deadline:
                return False
            self.left -= 1
            return True


BOUNDARY = "siamese-serve-load-boundary"


def upload_body(image: bytes, name: str, nns: int, step: str | None) -> bytes:
    """POST /api/search's multipart/form-data body: the image as the file field 'image', nns, step."""
    fields = {"nns": str(nns), **({} if step is None else {"step": step})}
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
             for key, value in fields.items()]
    parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def client(url: str, urns: list[str], nns: int, step: str | None, load: Load, seed: int,
           uploads: list[Path] | None = None) -> None:
    """Ask until the load is done: GET /api/neighbours for random urns, or, with `uploads`, POST
    /api/search with one of those images at random."""
    parts = urlsplit(url)
    rng = random.Random(seed)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    base = parts.path.rstrip("/") + "/api/neighbours?"
    bodies = [upload_body(path.read_bytes(), path.name, nns, step) for path in uploads or []]
    while load.take():
        query = {"urn": rng.choice(urns), "nns": nns}
        if step is not None:
            query["step"] = step
        started = time.perf_counter()
        try:
            if bodies:
                connection.request("POST", parts.path.rstrip("/") + "/api/search", body=rng.choice(bodies),
                                   headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
            else:
                connection.request("GET", base + urlencode(query))
            response = connection.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - started
            ok = response.status == 200 and body.startswith(b'{"urn"')  # (an upload's: {"urn": null, ...)
            with load.lock:
                load.latencies.append(elapsed)
                if not ok:
                    load.errors.append(f"{response.status}: {body[:200]!r}")
        except (OSError, http.client.HTTPException) as error:
            with load.lock:
                load.errors.append(f"{type(error).__name__}: {error}")
            connection.close()
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.close()


def run(url: str, urns: list[str], clients: int, requests: int, duration: float, nns: int,
        step: str | None, uploads: list[Path] | None = None) -> dict:
    def clients_on(load: Load, seed: int) -> float:
        threads = [threading.Thread(target=client, args=(url, urns, nns, step, load, seed + i, uploads))
                   for i in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started

    clients_on(Load(2 * clients, 30), 1000)  # connections opened, index pages touched: not counted
    load = Load(requests, duration)
    before = os.times()
    seconds = clients_on(load, 0)
    after = os.times()
    latencies = np.array(load.latencies) * 1000
    return {"step": ("upload, " if uploads else "") + ("all" if step is None else step), "nns": nns,
            "clients": clients,
            "requests": len(latencies), "errors": len(load.errors), "seconds": seconds,
            "per_second": len(latencies) / seconds,
            # the cores the clients themselves kept busy (they share the machine with the server)
            "client_cores": (after.user + after.system - before.user - before.system) / seconds,
            "p50": float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
            "p90": float(np.percentile(latencies, 90)) if len(latencies) else float("nan"),
            "p99": float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
            "max": float(latencies.max()) if len(latencies) else float("nan"),
            "first_errors": load.errors[:3]}


def answer_sizes(url: str, urns: list[str], nns: int, steps: list[str | None], sample: int = 50
                 ) -> list[dict]:
    """Per step: the median bytes of an answer as JSON and gzipped (Accept-Encoding: gzip), and the
    share of repeated requests (If-None-Match: the ETag just received) answered 304 with no body."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    rows = []
    for step in steps:
        plain, packed, unchanged = [], [], 0
        for urn in random.Random(7).sample(urns, min(sample, len(urns))):
            query = {"urn": urn, "nns": nns, **({} if step is None else {"step": step})}
            path = f"{parts.path or '/'}api/neighbours?{urlencode(query)}"
            sizes = []
            for headers in ({}, {"Accept-Encoding": "gzip"}):
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                sizes.append(len(response.read()))
                etag = response.getheader("ETag")
            plain.append(sizes[0])
            packed.append(sizes[1])
            connection.request("GET", path, headers={"If-None-Match": etag or ""})
            response = connection.getresponse()
            unchanged += response.status == 304 and response.read() == b""
        rows.append({"step": "all" if step is None else step, "plain": float(np.median(plain)),
                     "gzip": float(np.median(packed)), "not_modified": unchanged / len(plain)})
    connection.close()
    return rows


def sizes_table(rows: list[dict]) -> str:
    lines = ["| step | answer bytes (JSON) | gzipped | ratio | repeated requests answered 304 |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['step']} | {row['plain']:,.0f} | {row['gzip']:,.0f} | "
                     f"{row['plain'] / max(row['gzip'], 1):.1f}x | {row['not_modified']:.0%} |")
    return "\n".join(lines)


def process_memory(pid: int) -> dict[str, float]:
    """MiB of a process from /proc/PID/smaps_rollup: resident, shared with other processes, private
    (RSS minus shared pages: what the process alone holds), and the private part's anonymous memory."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                fields[name] = int(value.split()[0]) / 1024
    return {"rss": fields.get("Rss", 0.0),
            "shared": fields.get("Shared_Clean", 0.0) + fields.get("Shared_Dirty", 0.0),
            "private": fields.get("Private_Clean", 0.0) + fields.get("Private_Dirty", 0.0),
            "anonymous": fields.get("Anonymous", 0.0)}


def server_processes(pid: int) -> list[tuple[str, int]]:
    """The server started and, with --workers above 1, its worker processes and its embedding process
    (its children)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    def is_embedding_process(child: str) -> bool:
        try:
            return b"siamese.embedding_service" in Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            return False

    embedding = [int(child) for child in children if is_embedding_process(child)]
    workers = [int(child) for child in children if int(child) not in embedding]
    return [("server" if children else "server (serves itself)", pid),
            *((f"worker {number}", child) for number, child in enumerate(workers, 1)),
            *(("embedding process (the model)", child) for child in embedding)]


def memory_table(processes: list[tuple[str, dict[str, float]]]) -> str:
    lines = ["| process | RSS MiB | shared MiB | private MiB (RSS minus shared) | of which anonymous MiB |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, memory in processes:
        lines.append(f"| {name} | {memory['rss']:,.0f} | {memory['shared']:,.0f} | {memory['private']:,.0f} "
                     f"| {memory['anonymous']:,.0f} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = ["| step | nns | clients | requests | errors | seconds | requests/s | p50 ms | p90 ms | p99 ms "
             "| max ms | clients' own CPU (cores) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['step']} | {row['nns']} | {row['clients']} | {row['requests']} "
                     f"| {row['errors']} | {row['seconds']:.1f} | {row['per_second']:.0f} "
                     f"| {row['p50']:.1f} | {row['p90']:.1f} | {row['p99']:.1f} | {row['max']:.1f} "
                     f"| {row['client_cores']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serve_load.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo",
                        help="collection folder with vectors/, indices-eucl/ (or indices/), thumbnails/ "
                             "(default: data/demo). Full scale: the work directory of "
                             "`bench/index_scale.py --work-dir DIR --keep` (426,777 synthetic vectors); "
                             f"thumbnails are made for {FULL_SCALE_THUMBNAILS:,} of its urns")
    parser.add_argument("--url", help="a running server on this machine (default: start app.py)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default: 16)")
    parser.add_argument("--requests", type=int, default=3000,
                        help="requests per run, at most (default: 3000)")
    parser.add_argument("--duration", type=float, default=60, help="seconds per run, at most (default: 60)")
    parser.add_argument("--nns", type=int, default=10, help="neighbours asked for (default: 10)")
    parser.add_argument("--step", nargs="+", default=["all"], metavar="S",
                        help="'all' (whole collection) and/or step sizes, or lists of them as the page "
                             "asks (all,1: the whole collection and the years in one answer); one run "
                             "each (default: all)")
    parser.add_argument("--threads", type=int, default=8, help="waitress threads of the server started")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes of the server started (app.py --workers; default: 1)")
    parser.add_argument("--upload", type=Path, nargs="+", metavar="IMAGE",
                        help="also run each --step as uploads: POST /api/search with one of these images at "
                             "random (the collection's model must be one the server can load)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1 or not 0 < args.duration <= 600:
        parser.error("--clients and --requests must be at least 1, --duration from 0 to 600 seconds")
    if not all(re.fullmatch(r"(all|\d+)(,(all|\d+))*", step) for step in args.step):
        parser.error("--step takes 'all', whole numbers, or comma-separated lists of them (all,1)")
    missing = [str(path) for path in args.upload or [] if not path.is_file()]
    if missing:
        parser.error(f"--upload takes image files; not a file: {', '.join(missing)}")
    steps = [None if step == "all" else step for step in args.step]
    if args.url and urlsplit(args.url).hostname not in LOCAL_HOSTS:
        parser.error("--url must be a server on this machine (127.0.0.1 or localhost)")
    urns = VectorStore(collection_dirs(args.data)[0]).urns
    if args.url is None:
        sample_thumbnails(args.data, urns)
    process = None
    url = args.url
    rows = []
    with tempfile.TemporaryFile("w+") as log:
        if url is None:
            process, url = start_server(args.data, args.threads, log, args.workers)
        try:
            for step in steps:
                row = run(url, urns, args.clients, args.requests, args.duration, args.nns, step)
                rows.append(row)
                if row["first_errors"]:
                    print(f"errors with step {row['step']}: {row['first_errors']}", file=sys.stderr)
            for step in steps if args.upload else []:
                row = run(url, urns, args.clients, args.requests, args.duration, args.nns, step, args.upload)
                rows.append(row)
                if row["first_errors"]:
                    print(f"errors with {row['step']}: {row['first_errors']}", file=sys.stderr)
            sizes = answer_sizes(url, urns, args.nns, steps)
            memory = [(name, process_memory(pid)) for name, pid in server_processes(process.pid)] \
                if process is not None else []
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
    print(f"{len(urns)} images, {os.cpu_count()} CPU cores, server: "
          f"{f'{args.workers} worker(s) x {args.threads} threads' if process else 'as running'}")
    print(table(rows))
    print()
    print(sizes_table(sizes))
    if memory:
        print()
        print("Memory of the server's processes after the runs (/proc/PID/smaps_rollup):")
        print(memory_table(memory))
    if args.json:
        print(json.dumps(rows, indent=1))
    return 1 if any(row["errors"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

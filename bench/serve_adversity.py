"""The web server under adversity (issue 9, "no server taken down"): figures for docs/benchmarks.md.

    python bench/serve_adversity.py [--periods 1500] [--per-period 2] [--workdir DIR]
                                    [--compare-with CHECKOUT] [--soft-nofile 1024]

Runs `python app.py` as a separate process on 127.0.0.1 (loopback only; every wait is bounded) and
measures, over a synthetic collection of --periods yearly periods (--per-period 16-d vectors each,
indexed with step 1, as a timeline of 1,500 thin years is):

* the start: seconds from launch to the first answer, with the soft open-file limit many systems
  give (--soft-nofile), and the descriptors the process then holds;
* 100 connections at once, each a timeline search (/api/neighbours?step=1): errors, p50, p99;
* then, over a small collection (50 periods) that any version starts with: 150 connections left open
  and idle (half of them with half a request line) and 20 GETs of /api/collection one after the other
  (p50, slowest, timed out after 3 s), the descriptors held meanwhile;
* a POST of 300 MB to /api/search: seconds to its answer, the body bytes the client got to send,
  and the most the server spooled to its temporary directory (its TMPDIR, a folder of its own, read
  from the sizes of the files it holds open there).

With --compare-with, the same runs against another checkout of the project (e.g. the code before
siamese/serving.py: `git archive <commit> | tar -x -C DIR`), its collections built by its own code.
Prints a Markdown table, one column per checkout. Collections are kept in --workdir and rebuilt when
the code that writes them changes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import os
import resource
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL_PERIODS = 50
START_TIMEOUT = 300  # seconds
POST_BYTES = 300 * 1024 * 1024
IDLE_CONNECTIONS = 150
TIMED_GETS = 20
CONCURRENT = 100

BUILD = """
import sys
from pathlib import Path
import numpy as np
from siamese.index_build import IndexConfig, build_indices
from siamese.vector_store import VectorStore, VectorStoreWriter
directory, periods, per_period = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
count = periods * per_period
vectors = np.random.default_rng(0).standard_normal((count, 16)).astype(np.float32)
items = [{"urn": f"urn:bench:{i}", "year": 500 + i % periods, "date": f"{500 + i % periods:04d}-05-01",
          "path": f"images/{i}.jpg", "metadata": {"title": f"image {i}"}} for i in range(count)]
with VectorStoreWriter(directory / "vectors", "bench-model", 16) as writer:
    writer.append(vectors, items)
build_indices(VectorStore(directory / "vectors"), directory / "indices", IndexConfig(step_sizes=(1,)),
              verbose=False)
"""


def code_version(checkout: Path) -> str:
    """A hash of the code that writes a collection: a cached one is rebuilt when it changes."""
    digest = hashlib.sha1()
    for name in ("vector_store.py", "index_build.py", "index_dir.py", "projection.py"):
        path = checkout / "siamese" / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def build(checkout: Path, workdir: Path, periods: int, per_period: int) -> Path:
    directory = workdir / f"{periods}x{per_period}-{code_version(checkout)}"
    if not (directory / "built").exists():
        subprocess.run(["rm", "-rf", str(directory)], check=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", BUILD, str(directory), str(periods), str(per_period)],
                       cwd=checkout, check=True, timeout=3600)
        (directory / "built").write_text(f"{time.perf_counter() - started:.1f} s\n")
    return directory


# ------------------------------------------------------------------------------------ the server

class Server:
    """`python app.py` of `checkout` over `collection` on a free port, its TMPDIR a folder of its own."""

    def __init__(self, checkout: Path, collection: Path, workdir: Path, soft_nofile: int | None) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.temporary = workdir / f"tmp-{self.port}"
        self.temporary.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"server-{self.port}.log"

        def limit() -> None:
            if soft_nofile:
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft_nofile, hard), hard))

        with open(self.log, "wb") as log:
            self.started = time.perf_counter()
            self.process = subprocess.Popen(
                [sys.executable, "app.py", "--vector-dir", str(collection / "vectors"), "--index-dir",
                 str(collection / "indices"), "--port", str(self.port), "--threads", "8"],
                cwd=checkout, stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=limit,
                env={**os.environ, "TMPDIR": str(self.temporary)})

    def wait_until_serving(self) -> float | str:
        """Seconds from launch to the first answer, or why there was none."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return f"exited ({self.last_error()})"
            with contextlib.suppress(OSError, http.client.HTTPException):
                if get(self.port, "/api/collection", 5)[0] == 200:
                    return time.perf_counter() - self.started
            time.sleep(0.1)
        return f"no answer in {START_TIMEOUT} s"

    def last_error(self) -> str:
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1][:100] if lines else "no output"

    def descriptors(self) -> list[str]:
        targets = []
        with contextlib.suppress(OSError):
            for entry in os.listdir(f"/proc/{self.process.pid}/fd"):
                with contextlib.suppress(OSError):
                    targets.append(f"{entry} {os.readlink(f'/proc/{self.process.pid}/fd/{entry}')}")
        return targets

    def spooled_bytes(self) -> int:
        """Bytes in the files the server holds open in its temporary folder (spooled request bodies)."""
        total = 0
        for line in self.descriptors():
            number, target = line.split(" ", 1)
            if target.startswith(str(self.temporary)):
                with contextlib.suppress(OSError):
                    total += os.stat(f"/proc/{self.process.pid}/fd/{number}").st_size
        return total

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        subprocess.run(["rm", "-rf", str(self.temporary)], check=False)


def get(port: int, path: str, timeout: float) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


# ------------------------------------------------------------------------------------ the figures

def concurrent_searches(server: Server, count: int, items: int) -> dict[str, str]:
    urns = [f"urn:bench:{i * 37 % items}" for i in range(count)]
    barrier = threading.Barrier(count, timeout=60)

    def one(urn: str) -> tuple[bool, float]:
        try:
            barrier.wait()
            started = time.perf_counter()
            status, _ = get(server.port, f"/api/neighbours?urn={urn}&step=1&nns=10&vectors=false", 120)
            return status == 200, time.perf_counter() - started
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError):
            return False, float("nan")

    with ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(one, urns))
    times = [seconds for ok, seconds in results if ok]
    return {f"{count} connections at once (timeline searches): errors": f"{count - len(times)}",
            "… p50": milliseconds(statistics.median(times)) if times else "–",
            "… p99": milliseconds(percentile(times, 0.99)) if times else "–",
            "… server still up": "yes" if server.alive() else f"no ({server.last_error()})"}


def idle_connections(server: Server) -> dict[str, str]:
    idle = []
    try:
        for index in range(IDLE_CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            if index % 2:
                sock.sendall(b"GET /api/collection HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            idle.append(sock)
        time.sleep(0.5)
        times, timeouts = [], 0
        for _ in range(TIMED_GETS):
            started = time.perf_counter()
            try:
                get(server.port, "/api/collection", 3)
                times.append(time.perf_counter() - started)
            except (OSError, http.client.HTTPException):
                timeouts += 1
                if timeouts == 3:  # it is not going to answer: do not wait 3 s twenty times
                    break
        held = len(server.descriptors())
    finally:
        for sock in idle:
            sock.close()
    tried = len(times) + timeouts
    return {f"GET with {IDLE_CONNECTIONS} idle connections open: p50":
                milliseconds(statistics.median(times)) if times else "–",
            "… slowest": milliseconds(max(times)) if times else "–",
            "… timed out (3 s)": f"{timeouts} of {tried}",
            "… descriptors held by the server": f"{held:,}"}


def huge_post(server: Server) -> dict[str, str]:
    """POST 300 MB (Content-Length given) the way a client does: headers, then the body, stopping when
    an answer comes or the server closes."""
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], server.spooled_bytes())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    head = (f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {POST_BYTES}\r\n"
            "Content-Type: multipart/form-data; boundary=bench\r\n\r\n").encode()
    chunk = b"\0" * (1 << 20)
    sent, status, answered = 0, "no answer", None
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(head)
            with contextlib.suppress(OSError):
                while sent < POST_BYTES and not select.select([sock], [], [], 0)[0]:
                    sock.sendall(chunk)
                    sent += len(chunk)
                    if time.perf_counter() - started > 120:
                        break
            with contextlib.suppress(OSError):
                data = sock.recv(4096)
                answered = time.perf_counter() - started
                status = data.split(b"\r\n", 1)[0].decode("latin-1")[9:] or "closed, no answer"
    finally:
        time.sleep(0.2)
        done.set()
        watcher.join()
    return {"POST of 300 MB: answer": status,
            "… time to the answer": milliseconds(answered) if answered is not None else "–",
            "… body sent before it": f"{sent / (1 << 20):,.0f} MB",
            "… spooled to the server's TMPDIR, at most": f"{peak[0] / (1 << 20):,.0f} MB"}


def measure(checkout: Path, workdir: Path, periods: int, per_period: int, soft_nofile: int) -> dict:
    figures: dict[str, str] = {}
    timeline = build(checkout, workdir, periods, per_period)
    small = build(checkout, workdir, SMALL_PERIODS, 2)
    server = Server(checkout, timeline, workdir, soft_nofile)
    try:
        start = server.wait_until_serving()
        label = f"start, {periods:,} yearly periods (soft open-file limit {soft_nofile})"
        figures[label] = f"{start:.2f} s" if isinstance(start, float) else start
        if isinstance(start, float):
            figures["… descriptors held after the start"] = f"{len(server.descriptors()):,}"
            figures.update(concurrent_searches(server, CONCURRENT, periods * per_period))
    finally:
        server.stop()
    server = Server(checkout, small, workdir, None)
    try:
        start = server.wait_until_serving()
        if not isinstance(start, float):
            figures["small collection"] = start
            return figures
        figures.update(idle_connections(server))
        figures.update(huge_post(server))
        figures["… server still up"] = "yes" if server.alive() else f"no ({server.last_error()})"
    finally:
        server.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--periods", type=int, default=1500)
    parser.add_argument("--per-period", type=int, default=2)
    parser.add_argument("--soft-nofile", type=int, default=1024,
                        help="the soft open-file limit the timeline server starts with (default 1024)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/siamese-serve-adversity"))
    parser.add_argument("--compare-with", type=Path, metavar="CHECKOUT")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    checkouts = {"this checkout": ROOT}
    if args.compare_with:
        checkouts = {f"{args.compare_with.name}": args.compare_with.resolve(), **checkouts}
    columns = {}
    for name, checkout in checkouts.items():
        print(f"measuring {name} ({checkout}) ...", file=sys.stderr, flush=True)
        columns[name] = measure(checkout, args.workdir / name.replace(" ", "-"), args.periods,
                                args.per_period, args.soft_nofile)
    rows = list(dict.fromkeys(row for figures in reversed(columns.values()) for row in figures))
    print(f"{args.periods:,} yearly periods of {args.per_period} vectors (16-d), step 1; 8 request threads; "
          f"{os.cpu_count()} cores\n")
    print("| | " + " | ".join(columns) + " |")
    print("| --- | " + " | ".join("---" for _ in columns) + " |")
    for row in rows:
        print(f"| {row} | " + " | ".join(figures.get(row, "–") for figures in columns.values()) + " |")


if __name__ == "__main__":
    main()

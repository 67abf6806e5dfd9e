"""A 600-dpi newspaper page scan (250 megapixels, JPEG) through extraction, thumbnails and an upload:
does it pass, and what peak memory does each take?

    python bench/page_scan.py [--width 18000] [--height 14000] [--data data/demo] [--workdir DIR]

Writes a grey JPEG page of --width x --height pixels (columns of "text" lines and a few pictures made
of the demo's emoji, so that it compresses like a scan, not like a blank page) and runs, each in a
fresh process whose peak RSS (ru_maxrss) is its own:

  extract      extract_vectors.py on a CSV naming the page (the real model, inception-v3-2015), and
               on one small image instead, for the model's own share
  thumbnails   make_thumbnails.py --workers 1
  upload       app.py --workers 1 --preload-model over --data's collection; the page POSTed to
               /api/search; the server's peak RSS before and after it (the model is loaded before)

and then checks that a PNG declaring 100,000 x 100,000 pixels is refused, naming --max-pixels.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
PEAK = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, done.returncode)")


def make_page(path: Path, width: int, height: int, data: Path) -> None:
    """A grey page: ruled 'text' lines in columns, and pictures pasted from the demo's images."""
    page = Image.new("L", (width, height), 235)
    draw = ImageDraw.Draw(page)
    rng = np.random.default_rng(0)
    column = width // 6
    for x in range(0, width, column):
        for y in range(200, height - 200, 60):
            length = int(column * rng.uniform(0.5, 0.92))
            draw.line([(x + 80, y), (x + 80 + length, y)], fill=int(rng.integers(20, 90)), width=18)
    pictures = sorted((data / "images").rglob("*.png"))[:40]
    for number, picture in enumerate(pictures):
        with Image.open(picture) as image:
            tile = image.convert("L").resize((1200, 1200))
        page.paste(tile, (int(rng.integers(0, width - 1200)), int(rng.integers(0, height - 1200))))
        if number > 30:
            break
    page.save(path, quality=80)


def peak_of(command: list[str]) -> tuple[int, int]:
    """(peak RSS in MiB of `command` run in a fresh process, its exit status)."""
    done = subprocess.run([sys.executable, "-c", PEAK, *command], capture_output=True, text=True, check=True)
    peak, status = done.stdout.splitlines()[-1].split()  # after what the command itself printed
    return int(peak), int(status)


def high_water_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(port: int, data: bytes, name: str) -> tuple[int, bytes]:
    boundary = "page-scan-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", "/api/search", body=body,
                       headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = connection.getresponse()
    return response.status, response.read()


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> None:
    """A tiny PNG whose header declares width x height pixels."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + checksum
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=18_000)
    parser.add_argument("--height", type=int, default=14_000)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo",
                        help="a collection with vectors/, indices-eucl/ (or indices/), images/ "
                             "(default: the demo)")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="page-scan-"))
    work.mkdir(parents=True, exist_ok=True)
    page = work / "page.jpg"
    started = time.perf_counter()
    make_page(page, args.width, args.height, args.data)
    megapixels = args.width * args.height / 1e6
    print(f"page: {args.width} x {args.height} = {megapixels:.0f} megapixels, "
          f"{page.stat().st_size / 1e6:.1f} MB JPEG (made in {time.perf_counter() - started:.0f} s)")
    csv_path = work / "page.csv"
    csv_path.write_text(f"urn,path,date\npage:1,{page},1950\nbomb:1,{work / 'bomb.png'},1950\n")
    bomb_png(work / "bomb.png")
    rows = []
    peak, status = peak_of([sys.executable, str(ROOT / "extract_vectors.py"), str(csv_path),
                            str(work / "vectors"), "--quiet"])
    rejects = (work / "vectors" / "rejects.csv").read_text()
    stored = json.loads((work / "vectors" / "store.json").read_text())["count"]
    rows.append(("extract_vectors.py (inception-v3-2015)", peak, f"exit {status}, {stored} stored"))
    small = sorted((args.data / "images").rglob("*.png"))[0]  # the same run with one small image instead
    (work / "small.csv").write_text(f"urn,path,date\nsmall:1,{small},1950\n")
    peak, status = peak_of([sys.executable, str(ROOT / "extract_vectors.py"), str(work / "small.csv"),
                            str(work / "vectors-small"), "--quiet"])
    rows.append(("  the same with one small PNG instead (the model's own share)", peak, f"exit {status}"))
    peak, status = peak_of([sys.executable, str(ROOT / "make_thumbnails.py"), str(csv_path),
                            str(work / "thumbs"), "--quiet", "--workers", "1"])
    thumbnails = [path.name for path in (work / "thumbs").glob("*.jpg")]
    rows.append(("make_thumbnails.py --workers 1", peak, f"exit {status}, {len(thumbnails)} written"))
    indices = args.data / "indices-eucl" if (args.data / "indices-eucl").is_dir() else args.data / "indices"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--vector-dir",
                               str(args.data / "vectors"), "--index-dir", str(indices), "--port", str(port),
                               "--workers", "1", "--preload-model"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/api/collection")
                maps = Path(f"/proc/{server.pid}/maps").read_text()
                if "libtensorflow" in maps:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        time.sleep(10)  # the model built, not only its library mapped
        before = high_water_mib(server.pid)
        status, body = post(port, page.read_bytes(), "page.jpg")
        after = high_water_mib(server.pid)
        bomb_status, bomb_body = post(port, (work / "bomb.png").read_bytes(), "bomb.png")
    finally:
        server.terminate()
        server.wait(timeout=30)
    rows.append(("app.py upload (POST /api/search), server peak", after,
                 f"HTTP {status}; peak {before:.0f} MiB before the upload (model loaded), "
                 f"+{after - before:.0f} MiB"))
    print("\n| step | peak RSS MiB | outcome |\n| --- | ---: | --- |")
    for name, peak, outcome in rows:
        print(f"| {name} | {peak:,.0f} | {outcome} |")
    bomb_rejects = [line for line in rejects.splitlines() if line.startswith("bomb:1")]
    print(f"\nbomb (PNG declaring 100,000 x 100,000): extraction rejects it: {bomb_rejects}; upload: "
          f"HTTP {bomb_status} {json.loads(bomb_body).get('error', bomb_body[:200])!r}")
    return 0 if status == 200 and stored == 1 and len(thumbnails) == 1 and bomb_status == 400 else 1


if __name__ == "__main__":
    sys.exit(main())

"""What hostile uploads do to a server's memory: small files that are large images, posted to the real app.

    python bench/upload_memory.py [--data DIR] [--checkout DIR] [--threads 8] [--count 6] [--workdir DIR]

Starts `app.py` (waitress, --threads request threads) on a free port of 127.0.0.1 over the collection
in --data (vectors/, indices-eucl/), or over a colour-histogram collection of 60 generated drawings
built first (tests/app_support.py; no TensorFlow). Then posts to POST /api/search, --count at a time
one after the other and then --count at once, each of:

- a 9400x9400 RGBA PNG of 0.35 MB (337 MiB decoded: refused, 400, since issue 9),
- a 9000x9000 16-bit grey PNG (154 MiB decoded),
- a 7000x7000 float TIFF (187 MiB decoded),
- an 8000x6000 JPEG (183 MiB at full size; the model needs 299x299 or less),

and reports the server's resident memory (VmRSS of /proc/PID/status) when idle, after each group,
the most seen while it ran (sampled every 20 ms) and the peak (VmHWM). The target: the server stays
under 1 GiB above its idle size. `--checkout DIR` starts that checkout's app.py instead (e.g. the code
before the change, `git archive HEAD | tar -x -C DIR`), against the same images and collection.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))

from PIL import Image, ImageDraw  # noqa: E402
from serve_load import wait_until_answering  # noqa: E402  (bench/, the script's own folder)
from test_decode_memory import texture, write_huge_rgba_png, write_png_rows  # noqa: E402

MIB = 1024 * 1024
TARGET_MIB = 1024


def make_images(directory: Path) -> dict[str, Path]:
    """The four kinds of upload, written once into `directory` (each under the 20 MB upload limit)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"9400x9400 RGBA PNG": directory / "huge.png", "9000x9000 16-bit PNG": directory / "grey16.png",
             "7000x7000 float TIFF": directory / "float.tif", "8000x6000 JPEG": directory / "large.jpg"}
    if not paths["9400x9400 RGBA PNG"].exists():
        write_huge_rgba_png(paths["9400x9400 RGBA PNG"])
    if not paths["9000x9000 16-bit PNG"].exists():
        side = 9000
        plain = (np.full(side, 20000, ">u2")).tobytes()
        textured = [(np.tile(row, side // 256 + 1)[:side].astype(">u2") * 200).tobytes()
                    for row in texture(256, 256)]
        write_png_rows(paths["9000x9000 16-bit PNG"], side, side, "I;16",
                       lambda y: textured[y % 256] if y < 512 else plain)
    if not paths["7000x7000 float TIFF"].exists():
        array = np.full((7000, 7000), 0.25, np.float32)
        array[:500] = np.tile(texture(500, 500).astype(np.float32) / 255, (1, 14))
        Image.fromarray(array).save(paths["7000x7000 float TIFF"], compression="tiff_adobe_deflate")
        del array
    if not paths["8000x6000 JPEG"].exists():
        image = Image.new("RGB", (8000, 6000), (200, 180, 150))
        draw = ImageDraw.Draw(image)
        for index in range(40):
            x, y = (index * 977) % 7000, (index * 613) % 5000
            draw.ellipse((x, y, x + 900, y + 700), fill=((index * 40) % 256, 90, 255 - index * 5))
        image.paste(Image.fromarray(texture(1000, 1000)).convert("RGB"), (3000, 2000))
        image.save(paths["8000x6000 JPEG"], quality=85)
    return paths


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(checkout: Path, vector_dir: Path, index_dir: Path, threads: int,
                 log) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, str(checkout / "app.py"), "--vector-dir", str(vector_dir), "--index-dir",
               str(index_dir), "--host", "127.0.0.1", "--port", str(port), "--threads", str(threads)]
    process = subprocess.Popen(command, stdout=log, stderr=log, cwd=checkout)
    wait_until_answering(process, port, log)
    return process, port


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of the process, in MiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values


class Sampler:
    """The largest VmRSS seen while a group runs (every 20 ms, in a thread)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.most, self.running = pid, 0.0, True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while self.running:
            self.most = max(self.most, memory(self.pid)["VmRSS"])
            time.sleep(0.02)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return self.most


def post(port: int, path: Path, content_type: str) -> tuple[int, str]:
    """POST /api/search with the image; (status, the error message or "")."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n")
    body = head.encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request("POST", "/api/search?nns=5", body,
                           {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = connection.getresponse()
        answer = response.read()
    except OSError as error:
        return 0, f"{type(error).__name__}: {error}"
    finally:
        connection.close()
    message = ""
    if response.status != 200:
        try:
            message = json.loads(answer).get("error", "")
        except ValueError:
            message = answer[:200].decode(errors="replace")
    return response.status, message


CONTENT_TYPES = {".png": "image/png", ".tif": "image/tiff", ".jpg": "image/jpeg"}


def run_group(port: int, pid: int, path: Path, count: int, concurrent: bool) -> dict:
    sampler = Sampler(pid)
    started = time.perf_counter()
    results: list[tuple[int, str]] = []
    content_type = CONTENT_TYPES[path.suffix]
    if concurrent:
        threads = [threading.Thread(target=lambda: results.append(post(port, path, content_type)))
                   for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        results = [post(port, path, content_type) for _ in range(count)]
    seconds = time.perf_counter() - started
    most = sampler.stop()
    statuses = sorted({status for status, _ in results})
    messages = sorted({message for _, message in results if message})
    return {"statuses": statuses, "messages": messages, "seconds": seconds, "most": most, **memory(pid)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a collection: DIR/vectors and DIR/indices-eucl "
                                                   "(default: a generated colour-histogram collection)")
    parser.add_argument("--checkout", type=Path, default=ROOT,
                        help="whose app.py to start (default: this one)")
    parser.add_argument("--threads", type=int, default=8, help="the server's request threads (default: 8)")
    parser.add_argument("--count", type=int, default=6, help="uploads per group (default: 6)")
    parser.add_argument("--workdir", type=Path,
                        help="where images and the collection go (default: a temp dir)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="upload-memory-"))
    clock = time.perf_counter()
    images = make_images(workdir / "images")
    if args.data:
        vector_dir, index_dir = args.data / "vectors", args.data / "indices-eucl"
    else:
        from app_support import build_histogram_collection

        collection_dir = workdir / "collection"
        if not (collection_dir / "indices").exists():
            build_histogram_collection(collection_dir)
        vector_dir, index_dir = collection_dir / "vectors", collection_dir / "indices"
    print(f"images and collection ready in {time.perf_counter() - clock:.0f} s ({workdir})", file=sys.stderr)
    sizes = ", ".join(f"{name} {path.stat().st_size / 1e6:.2f} MB" for name, path in images.items())
    print(f"app.py of {args.checkout}, {args.threads} request threads; uploads: {sizes}\n")

    with open(workdir / "server.log", "w+") as log:
        process, port = start_server(args.checkout, vector_dir, index_dir, args.threads, log)
        try:
            time.sleep(1.0)
            idle = memory(process.pid)["VmRSS"]
            print(f"idle: VmRSS {idle:.0f} MiB\n")
            print("| uploads | answers | seconds | VmRSS after | most VmRSS during | VmHWM so far |")
            print("| --- | --- | ---: | ---: | ---: | ---: |")
            most = idle
            for name, path in images.items():
                for concurrent in (False, True):
                    result = run_group(port, process.pid, path, args.count, concurrent)
                    most = max(most, result["most"], result["VmRSS"])
                    answers = ", ".join(map(str, result["statuses"]))
                    if result["messages"]:
                        answers += ": " + "; ".join(message[:90] for message in result["messages"])
                    print(f"| {args.count} x {name}, {'at once' if concurrent else 'one by one'} | {answers} "
                          f"| {result['seconds']:.1f} | {result['VmRSS']:.0f} MiB | {result['most']:.0f} MiB "
                          f"| {result['VmHWM']:.0f} MiB |", flush=True)
            final = memory(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)
    growth = max(most, final["VmHWM"]) - idle
    verdict = "within" if growth < TARGET_MIB else "OVER"
    print(f"\nidle {idle:.0f} MiB, at the end {final['VmRSS']:.0f} MiB, most seen {most:.0f} MiB, peak "
          f"(VmHWM) {final['VmHWM']:.0f} MiB: {growth:.0f} MiB above idle, {verdict} the target of "
          f"{TARGET_MIB} MiB")
    return 0 if growth < TARGET_MIB else 1


if __name__ == "__main__":
    sys.exit(main())

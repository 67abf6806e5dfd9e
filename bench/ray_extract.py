"""Extraction on Ray against the plain pipeline, in images/s, on this one machine.

    python bench/ray_extract.py [--csv METADATA_CSV | --n-images 512 --size 640x480]
                                [--batch-size 32] [--repeats 3] [--model inception-v3-2015]
                                [--port 6390] [--only plain,ray-1,ray-2,two-nodes]

Four ways to fill a fresh vector store from the same collection, each loading the model in the run
(as the command line does):
  plain      extract_vectors(): decoding threads and the model in this process
  ray-1      extract_vectors_on_ray() on a new local cluster (address "local", started and stopped by
             the run, as `--ray` does on a machine without a cluster): 1 actor with every core
  ray-2      the same with 2 actors, half the cores each
  two-nodes  a head and a worker node started here as two processes (`ray start --head` and `ray start
             --address`, half the cores each) before the runs, which connect to the head's address as
             `extract_vectors.py --ray HOST:PORT` would; both nodes are stopped at the end, also on
             Ctrl-C, an error or a kill of this script
Each way runs on the whole collection and on its first quarter, in turns with the other ways (so that
the machine's other load falls on all of them). Reported, as medians of --repeats:
  end to end  the whole collection's images over its run's wall time, start-up included
  marginal    the images/s of the three quarters the whole run has beyond the quarter run: the rate
              once running, start-up left out (what a collection of 400,000 images sees)
  start-up    what the whole run took beyond its images at the marginal rate (Ray's start, loading
              the model in the actors)
and each way's ratio to plain (the target for Ray on one machine: >= 0.8). The default collection is
generated: JPEGs of smooth random colour with grain, about what a photograph costs to decode. Figures
only, never asserted.
"""

from __future__ import annotations

import argparse
import csv
import functools
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from extract_vectors import extract_vectors  # noqa: E402
from siamese.backbones import DEFAULT_BACKBONE  # noqa: E402
from siamese.ray_extract import extract_vectors_on_ray  # noqa: E402
from siamese.system import end_with_parent  # noqa: E402

WAYS = ("plain", "ray-1", "ray-2", "two-nodes")


def make_collection(folder: Path, n_images: int, size: tuple[int, int]) -> Path:
    """`n_images` JPEGs of smooth random colour with grain, and their metadata CSV."""
    rng = np.random.default_rng(0)
    width, height = size
    rows = []
    for index in range(n_images):
        coarse = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
        grain = rng.normal(0, 12, (height, width, 1)).astype(np.int16)
        pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:05d}.jpg", quality=90)
        rows.append({"urn": f"synthetic:{index}", "path": f"{index:05d}.jpg",
                     "date": str(1900 + index % 100)})
    return write_rows(folder / "metadata.csv", rows)


def write_rows(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def seconds_of(run: Callable[..., object], metadata: Path, vector_dir: Path, n_images: int) -> float:
    """The wall time of one run into a fresh store (all its images stored, or the bench stops)."""
    started = time.perf_counter()
    report = run(metadata, vector_dir)
    seconds = time.perf_counter() - started
    if report.stored != n_images:
        raise SystemExit(f"a run stored {report.stored} of {n_images} images; rejects: {report.rejects[:3]}")
    return seconds


class TwoNodes:
    """A head and a worker node, each a `ray start --block` process of its own with `cpus` CPUs, in their
    own temporary directory (so nothing else on this machine finds or joins them). Stopped on exit:
    SIGTERM to the two processes we started, which drain and stop their nodes' processes; the kernel
    sends them that SIGTERM too should this process be killed (PR_SET_PDEATHSIG)."""

    def __init__(self, port: int, cpus: int, temp_dir: Path) -> None:
        self.port, self.cpus, self.temp_dir = port, cpus, temp_dir
        self.processes: list[subprocess.Popen] = []
        self.env = dict(os.environ, RAY_AUTH_MODE="token")  # Ray 2.60's default; the token in ~/.ray
        self.env.pop("RAY_ADDRESS", None)
        self.address = f"127.0.0.1:{port}"

    def start(self, *args: str, log: str) -> None:
        ray = str(Path(sys.executable).with_name("ray"))
        command = [ray, "start", "--block", f"--num-cpus={self.cpus}", "--disable-usage-stats", *args]
        parent = os.getpid()
        with open(self.temp_dir / log, "wb") as output:
            self.processes.append(subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
                preexec_fn=lambda: end_with_parent(parent, signal.SIGTERM)))

    def __enter__(self) -> TwoNodes:
        import ray

        os.environ["RAY_AUTH_MODE"] = "token"  # this process connects by address: it must send the token
        try:
            self.start("--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                       "--include-dashboard=false", f"--temp-dir={self.temp_dir}", log="head.log")
            self._wait_for_nodes(ray, 1)
            self.start(f"--address={self.address}", "--node-ip-address=127.0.0.1", log="worker.log")
            self._wait_for_nodes(ray, 2)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_for_nodes(self, ray, count: int, timeout: float = 90) -> None:
        """Until the cluster has `count` alive nodes (asked in a short-lived connection)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(process.poll() is not None for process in self.processes):
                break
            try:
                ray.init(address=self.address, logging_level=logging.ERROR, log_to_driver=False)
                alive = sum(1 for node in ray.nodes() if node.get("Alive"))
            except Exception:  # noqa: BLE001 - not up yet
                alive = 0
            finally:
                ray.shutdown()
            if alive >= count:
                return
            time.sleep(1)
        logs = "\n".join((self.temp_dir / name).read_text(errors="replace")[-1500:]
                         for name in ("head.log", "worker.log") if (self.temp_dir / name).exists())
        raise SystemExit(f"the two-node cluster did not come up with {count} node(s):\n{logs}")

    def __exit__(self, *exc_info: object) -> None:
        for process in reversed(self.processes):  # the worker first, then the head
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--csv", type=Path, help="a collection's metadata CSV (default: a generated one)")
    parser.add_argument("--n-images", type=int, default=512, help="generated images (default 512)")
    parser.add_argument("--size", default="640x480", metavar="WxH", help="of the generated JPEGs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each way; medians are shown")
    parser.add_argument("--model", default=DEFAULT_BACKBONE)
    parser.add_argument("--port", type=int, default=6390, help="the two-node cluster's head port")
    parser.add_argument("--only", default=",".join(WAYS), help=f"ways to run, of {', '.join(WAYS)}")
    args = parser.parse_args()
    ways = [way.strip() for way in args.only.split(",") if way.strip()]
    if unknown := set(ways) - set(WAYS):
        parser.error(f"--only: unknown way(s) {', '.join(sorted(unknown))}; choose from {', '.join(WAYS)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `kill` stops the two nodes too
    cores = os.cpu_count() or 1
    half = max(1, cores // 2)

    with tempfile.TemporaryDirectory(prefix="siamese-ray-bench-") as work:
        work = Path(work)
        if args.csv is None:
            width, height = (int(value) for value in args.size.lower().split("x"))
            print(f"generating {args.n_images} {width}x{height} JPEGs ...", file=sys.stderr)
            metadata = make_collection(work, args.n_images, (width, height))
        else:
            metadata = args.csv
        with open(metadata, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        quarter = write_rows(work / "quarter.csv", rows[: max(1, len(rows) // 4)])
        sizes = {metadata: len(rows), quarter: max(1, len(rows) // 4)}
        common = {"images_root": metadata.parent, "model": args.model, "batch_size": args.batch_size,
                  "progress": False}
        runs: dict[str, Callable[..., object]] = {
            "plain": functools.partial(extract_vectors, **common),
            "ray-1": functools.partial(extract_vectors_on_ray, address="local", n_actors=1,
                                       cpus_per_actor=cores, **common),
            "ray-2": functools.partial(extract_vectors_on_ray, address="local", n_actors=2,
                                       cpus_per_actor=half, **common),
        }
        times: dict[str, dict[Path, list[float]]] = {way: {metadata: [], quarter: []} for way in ways}
        serial = iter(range(1_000_000))

        def measure(way: str, run: Callable[..., object]) -> None:
            for csv_path, n_images in sizes.items():
                seconds = seconds_of(run, csv_path, work / f"v{next(serial)}", n_images)
                times[way][csv_path].append(seconds)
                print(f"{way}: {n_images} images in {seconds:.1f} s", file=sys.stderr)

        for _ in range(args.repeats):  # in turns, so that the machine's other load falls on every way
            for way in (way for way in ways if way in runs):
                measure(way, runs[way])
        if "two-nodes" in ways:
            temp_dir = Path(tempfile.mkdtemp(prefix="sr-", dir="/tmp"))  # short: Ray's socket paths
            try:
                with TwoNodes(args.port, half, temp_dir) as cluster:
                    for _ in range(args.repeats):
                        measure("two-nodes", functools.partial(extract_vectors_on_ray,
                                                               address=cluster.address, **common))
            finally:
                shutil.rmtree(temp_dir, ignore_errors=True)

    n_whole, n_quarter = sizes[metadata], sizes[quarter]
    figures = {}
    for way in ways:
        whole = statistics.median(times[way][metadata])
        marginal = (n_whole - n_quarter) / max(1e-9, whole - statistics.median(times[way][quarter]))
        figures[way] = (n_whole / whole, marginal, whole - n_whole / marginal)
    source = f"generated {args.size} JPEGs" if args.csv is None else str(metadata)
    print(f"{n_whole} images ({source}; quarter runs of {n_quarter}), model {args.model}, batch "
          f"{args.batch_size}, {cores} cores, medians of {args.repeats}")
    print(f"{'way':<10} {'end to end img/s':>16} {'marginal img/s':>14} {'start-up s':>10} "
          f"{'end to end / plain':>18} {'marginal / plain':>16}")
    base = figures.get("plain")
    for way, (end_to_end, marginal, startup) in figures.items():
        ratios = f"{end_to_end / base[0]:>18.2f} {marginal / base[1]:>16.2f}" if base else ""
        print(f"{way:<10} {end_to_end:>16.2f} {marginal:>14.2f} {startup:>10.1f} {ratios}")


if __name__ == "__main__":
    main()

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

from PIL import Image

from conftest import ROOT, write_csv
from make_thumbnails import make_thumbnails
from siamese.thumbnails import thumbnail_filename


def collection(tmp_path: Path) -> Path:
    Image.new("RGB", (1200, 900), (200, 10, 10)).save(tmp_path / "big.jpg")
    Image.new("RGBA", (64, 64), (0, 0, 255, 0)).save(tmp_path / "small.png")
    (tmp_path / "broken.png").write_text("not an image")
    rows = [{"urn": "ddd:010:mpeg21:a0001", "path": "big.jpg", "date": "1950"},
            {"urn": "ddd:010-mpeg21-a0001", "path": "small.png", "date": "1951"},
            {"urn": "ddd:broken", "path": "broken.png", "date": "1952"},
            {"urn": "ddd:bad-date", "path": "small.png", "date": "1952-99"}]
    return write_csv(tmp_path / "meta.csv", rows)


def test_thumbnails_are_at_most_max_height_keep_aspect_and_never_upscale(tmp_path):
    counts = make_thumbnails(collection(tmp_path), tmp_path / "thumbs", max_height=300,
                             workers=2, progress=False)
    assert counts == {"written": 2, "skipped": 0, "rejected": 2}
    with Image.open(tmp_path / "thumbs" / thumbnail_filename("ddd:010:mpeg21:a0001")) as big:
        assert big.format == "JPEG" and big.size == (400, 300)
    with Image.open(tmp_path / "thumbs" / thumbnail_filename("ddd:010-mpeg21-a0001")) as small:
        assert small.size == (64, 64)
        assert small.getpixel((5, 5))[0] > 240  # transparent shown as white, not black
    with open(tmp_path / "thumbs" / "rejects.csv", newline="") as handle:
        reasons = {row["urn"]: row["reason"] for row in csv.DictReader(handle)}
    assert "not an image" in reasons["ddd:broken"]
    assert "CSV line" in reasons["ddd:bad-date"]


def test_existing_thumbnails_are_skipped_so_a_rerun_resumes(tmp_path):
    meta = collection(tmp_path)
    make_thumbnails(meta, tmp_path / "thumbs", workers=1, progress=False)
    kept = tmp_path / "thumbs" / thumbnail_filename("ddd:010:mpeg21:a0001")
    kept.write_bytes(b"marker")  # a second run must not touch it
    missing = tmp_path / "thumbs" / thumbnail_filename("ddd:010-mpeg21-a0001")
    missing.unlink()
    counts = make_thumbnails(meta, tmp_path / "thumbs", workers=1, progress=False)
    assert counts["written"] == 1 and counts["skipped"] == 1
    assert kept.read_bytes() == b"marker" and missing.exists()
    assert not list((tmp_path / "thumbs").glob(".*.tmp"))


def test_file_names_are_safe_distinct_and_reversible():
    urns = ["ddd:010:mpeg21:a0001", "ddd-010-mpeg21-a0001", "a/b", "../etc/passwd", ".hidden",
            "urn with spaces", "x" * 400]
    names = [thumbnail_filename(urn) for urn in urns]
    assert len(set(names)) == len(names)
    for urn, name in zip(urns, names, strict=True):
        assert "/" not in name and not name.startswith(".") and len(name.encode()) <= 210
        if not name.startswith("sha1-"):
            assert unquote(name[: -len(".jpg")]) == urn


def test_cli_bad_input_is_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "make_thumbnails.py"),
                             str(tmp_path / "nope.csv"), str(tmp_path / "t")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "not found" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, str(ROOT / "make_thumbnails.py"),
                             str(collection(tmp_path)), str(tmp_path / "t"), "--max-height", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "max_height" in result.stderr


def test_the_fast_path_names_urns_exactly_as_percent_encoding_does():
    """Thumbnail names and URLs are a contract with the files already made: the str.replace shortcut for
    plain urns must give what quote() and urlencode() give, for every kind of urn."""
    from urllib.parse import quote, urlencode

    from app import _thumbnail_query
    from siamese.thumbnails import percent_encoded

    urns = ["ddd:010123456:mpeg21:a0001", "urn:nbn:nl:ui:13-abc", "a_b.c~d-e", ".hidden", "", "a b/c",
            "é:ü", "x?y&z=1#f", "100%", "+plus+", "tab\there", "emoji:google:1f600", "ddd::", "~"]
    for urn in urns:
        assert percent_encoded(urn) == quote(urn, safe="")
        assert _thumbnail_query(urn) == urlencode({"urn": urn})
    assert thumbnail_filename(".hidden") == "%2Ehidden.jpg"
    assert thumbnail_filename("ddd:010:mpeg21:a0001") == "ddd%3A010%3Ampeg21%3Aa0001.jpg"


def test_max_pixels_reaches_the_thumbnail_workers(tmp_path):
    """--max-pixels is set in the processes that decode (a pool of workers), not only in the parent."""
    Image.new("L", (3000, 2000), 128).save(tmp_path / "page.jpg", quality=80)
    Image.new("RGB", (200, 100), (1, 2, 3)).save(tmp_path / "small.png")
    write_csv(tmp_path / "meta.csv", [{"urn": "page:1", "path": "page.jpg", "date": "1950"},
                                      {"urn": "small:1", "path": "small.png", "date": "1951"}])
    done = subprocess.run([sys.executable, str(ROOT / "make_thumbnails.py"), str(tmp_path / "meta.csv"),
                           str(tmp_path / "thumbs"), "--workers", "2", "--quiet", "--max-pixels", "5M"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "thumbs" / "rejects.csv", newline="") as handle:
        reasons = {row["urn"]: row["reason"] for row in csv.DictReader(handle)}
    assert set(reasons) == {"page:1"}
    assert "3000x2000 is 6 megapixels, over the limit of 5 (--max-pixels" in reasons["page:1"]
    assert (tmp_path / "thumbs" / thumbnail_filename("small:1")).exists()
    refused = subprocess.run([sys.executable, str(ROOT / "make_thumbnails.py"), str(tmp_path / "meta.csv"),
                              str(tmp_path / "thumbs"), "--max-pixels", "lots"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--max-pixels" in refused.stderr and "Traceback" not in refused.stderr

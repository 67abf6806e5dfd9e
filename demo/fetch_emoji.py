"""Fetch the demo collection: the same 3,786 emoji drawn by Google and by Twitter, with release years.

    python demo/fetch_emoji.py DATA_DIR [--makers google twitter] [--limit N]

The images come from the npm packages emoji-datasource-google and emoji-datasource-twitter (16.0.0),
fetched with `npm pack` (a package registry, not a URL, so it works offline of the wider internet);
nothing is installed. Writes DATA_DIR/images/<maker>/<unified>.png and DATA_DIR/metadata.csv with the
columns urn, path, date, maker, name, category, subcategory, unified, added_in. The date is the year of
the Emoji version that added the emoji, so the timeline spans 2010-2024. Re-running reuses what is there.

Licences: Google's images Apache-2.0, Twitter's (Twemoji) CC-BY-4.0.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

PACKAGE_VERSION = "16.0.0"
MAKERS = ("google", "twitter")
# Emoji version -> the year it was released (Unicode/Emoji release dates).
RELEASE_YEAR = {"0.6": 2010, "0.7": 2014, "1.0": 2015, "2.0": 2015, "3.0": 2016, "4.0": 2016,
                "5.0": 2017, "11.0": 2018, "12.0": 2019, "12.1": 2019, "13.0": 2020, "13.1": 2020,
                "14.0": 2021, "15.0": 2022, "15.1": 2023, "16.0": 2024}
COLUMNS = ["urn", "path", "date", "maker", "name", "category", "subcategory", "unified", "added_in"]


def npm_pack(package: str, download_dir: Path) -> Path:
    """The package's tarball, fetched with `npm pack` unless it is already in `download_dir`."""
    name, version = package.rsplit("@", 1)
    tarball = download_dir / f"{name}-{version}.tgz"
    if tarball.is_file():
        return tarball
    if shutil.which("npm") is None:
        raise SystemExit("fetch_emoji.py: error: npm is needed to fetch the demo collection "
                         "(apt-get install npm, or install Node.js)")
    download_dir.mkdir(parents=True, exist_ok=True)
    partial = download_dir / "partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    subprocess.run(["npm", "pack", "--silent", package], cwd=partial, check=True,
                   stdout=subprocess.DEVNULL)
    os.replace(partial / tarball.name, tarball)
    partial.rmdir()
    return tarball


def emoji_rows(emoji_json: list[dict]) -> list[dict]:
    """One row per emoji image (skin-tone variants included), with its release year."""
    rows = []
    for emoji in emoji_json:
        variants = [(emoji, "")] + [(variant, f" ({tone})") for tone, variant in
                                    sorted((emoji.get("skin_variations") or {}).items())]
        for variant, tone in variants:
            rows.append({"unified": variant["unified"].lower(), "image": variant["image"],
                         "added_in": variant["added_in"], "name": emoji["name"].title() + tone,
                         "category": emoji["category"], "subcategory": emoji["subcategory"],
                         "has": {maker: variant.get(f"has_img_{maker}", False) for maker in MAKERS}})
    return rows


def fetch(data_dir: Path, makers: tuple[str, ...] = MAKERS, limit: int | None = None) -> Path:
    """Fetch the images of `makers` into data_dir and write the metadata CSV; returns its path.

    `limit` keeps the first N emoji (in the packages' order) for a quick, small collection.
    """
    download_dir = data_dir / "npm"
    emoji_json = None
    wanted: list[dict] | None = None
    rows_out = []
    for maker in makers:
        tarball = npm_pack(f"emoji-datasource-{maker}@{PACKAGE_VERSION}", download_dir)
        image_dir = data_dir / "images" / maker
        image_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball, "r:gz") as archive:
            if emoji_json is None:
                emoji_json = json.load(archive.extractfile("package/emoji.json"))
                wanted = emoji_rows(emoji_json)[:limit]
            prefix = f"package/img/{maker}/64/"
            needed = {row["image"] for row in wanted if row["has"][maker]}
            for member in archive:
                name = member.name[len(prefix):] if member.name.startswith(prefix) else None
                if name not in needed or not member.isfile():
                    continue
                target = image_dir / name
                if not target.exists():
                    data = archive.extractfile(member).read()
                    temporary = target.with_name(f".{name}.tmp")
                    temporary.write_bytes(data)
                    os.replace(temporary, target)
        for row in wanted:
            if row["has"][maker]:
                rows_out.append({
                    "urn": f"emoji:{maker}:{row['unified']}",
                    "path": f"images/{maker}/{row['image']}",
                    "date": str(RELEASE_YEAR[row["added_in"]]),
                    "maker": maker, "name": row["name"], "category": row["category"],
                    "subcategory": row["subcategory"], "unified": row["unified"],
                    "added_in": row["added_in"]})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows_out)
    metadata = data_dir / "metadata.csv"
    temporary = metadata.with_name(".metadata.csv.tmp")
    temporary.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(temporary, metadata)
    return metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fetch_emoji.py", description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", metavar="DATA_DIR", type=Path, help="folder to write into")
    parser.add_argument("--makers", nargs="+", choices=MAKERS, default=list(MAKERS))
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N emoji (per maker)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    try:
        metadata = fetch(args.data_dir, tuple(args.makers), args.limit)
    except (subprocess.CalledProcessError, OSError, tarfile.TarError) as error:
        print(f"fetch_emoji.py: error: {error}", file=sys.stderr)
        return 2
    with open(metadata, encoding="utf-8") as handle:
        count = sum(1 for _ in handle) - 1
    print(f"{count} images listed in {metadata}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

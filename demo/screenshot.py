"""Take docs/screenshot.png: the search page of a running server, in Debian's headless Chromium.

    python demo/screenshot.py [--url http://127.0.0.1:8080/] [--urn emoji:google:1f600] [--step 1]
                              [--out docs/screenshot.png] [--width 1440] [--height 1200]
    python demo/screenshot.py --map "year=2016" --out docs/map.png     the map page (docs/map.png)

Start the server first (python app.py --vector-dir data/demo/vectors --index-dir data/demo/indices-eucl
--thumbnails data/demo/thumbnails).
Uses the system's Chromium (apt-get install chromium), never a browser downloaded by Playwright.
"""

from __future__ import annotations

import argparse
import sys
from urllib.parse import urlencode

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="screenshot.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080/", help="the server's page")
    parser.add_argument("--urn", default="emoji:google:1f600", help="the image to search from")
    parser.add_argument("--step", type=int, default=1, help="the timeline's period length")
    parser.add_argument("--out", default="docs/screenshot.png", help="the PNG to write")
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--map", metavar="QUERY", help="the map page instead, with this query string "
                                                        "(e.g. year=2016; '' for none)")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # bypass_csp: the page forbids eval, which wait_for_function uses; nothing else changes
        page = browser.new_page(viewport={"width": args.width, "height": args.height}, bypass_csp=True)
        if args.map is not None:
            page.goto(args.url + "map" + ("?" + args.map if args.map else ""))
            page.wait_for_selector("body[data-map-ready=drawn]")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=args.out, full_page=True)  # the themes over time too, below the map
            browser.close()
            print(f"wrote {args.out}")
            return 0
        page.goto(args.url + "?" + urlencode({"urn": args.urn, "step": args.step}))
        page.wait_for_selector("#timeline .period")
        page.wait_for_load_state("networkidle")
        page.wait_for_function("[...document.images].filter((image) => image.getBoundingClientRect().top "
                               "< window.innerHeight).every((image) => image.complete)")  # lazy ones below
        page.screenshot(path=args.out)
        browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What every command-line tool shares: one-line usage errors, CSV reports, and how a run ends.

A researcher running five tools should meet one convention: a mistake is one line naming the tool
and what is wrong (exit status 2), Ctrl-C says what was kept and how to resume (130), a closed output
pipe (`| head`) ends quietly (141), and the reports of rows or files that were skipped are CSV files
replaced atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from siamese.vector_store import write_atomically


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus a pointer to --help), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_max_pixels_option(parser: argparse.ArgumentParser) -> None:
    """--max-pixels, the same in every tool that reads images (siamese/images.py: MAX_PIXELS); the
    tool calls images.set_max_pixels(args.max_pixels)."""
    from siamese.images import DEFAULT_MAX_PIXELS, parse_pixels

    def pixels(text: str) -> int:
        try:
            return parse_pixels(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parser.add_argument("--max-pixels", type=pixels, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"refuse images with more pixels, before decoding them (default "
                             f"{DEFAULT_MAX_PIXELS // 1_000_000}M: a 600-dpi broadsheet page is about 250M; "
                             "a number of pixels, or megapixels with M)")


def write_csv_report(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A report of what a run skipped (rejects.csv, import-report.csv), replaced atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_atomically(path, buffer.getvalue().encode("utf-8"))


def run_command(prog: str, command: Callable[[], int], errors: tuple[type[BaseException], ...],
                interrupted: str) -> int:
    """Run `command`, turning the expected failures into the shared convention.

    `errors`: the exceptions that mean bad input or a bad file (a one-line message, status 2);
    `interrupted`: what to tell after Ctrl-C (what was kept, how to resume).
    """
    try:
        return command()
    except BrokenPipeError:  # `... | head` closed the pipe: not an error of ours or of the input
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except errors as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error  # not its repr
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; {interrupted}", file=sys.stderr)
        return 130

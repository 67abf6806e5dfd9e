"""The metadata CSV reader loses no row: an unbalanced quote or an overlong field rejects one row, with its
line, and every other row is read (issue 9, "never a silent loss")."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import siamese.metadata as metadata
from siamese.metadata import (
    FIELD_LIMIT,
    MAX_RECORD_LINES,
    MetadataError,
    csv_rows,
    read_metadata,
    read_metadata_columns,
)

pytestmark = pytest.mark.fast  # no model, no browser: make test-fast

HEADER = "urn,path,date,title\n"


def rows_text(count: int = 200, titles: dict[int, str] | None = None) -> str:
    """A CSV of `count` good rows u1..uN (row i on line i + 1), with some titles replaced as given."""
    titles = titles or {}
    return HEADER + "".join(f"u{i},p{i}.png,1950,{titles.get(i, f'title {i}')}\n"
                            for i in range(1, count + 1))


def write(tmp_path: Path, text: str, name: str = "meta.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))  # no newline translation: the lines are exactly these
    return path


def urns(records) -> list[str]:
    return [record.urn for record in records]


def test_a_quote_opened_in_row_51_and_closed_in_row_151_swallows_no_row(tmp_path):
    """csv alone reads rows 51..151 as one row (100 of 200 kept); the line that opened the quote is
    rejected instead, and row 151's stray closing quote is just a character of its title."""
    path = write(tmp_path, rows_text(titles={51: '"opened here', 151: 'closed here"'}))
    records, rejected = read_metadata(path)
    assert urns(records) == [f"u{i}" for i in range(1, 201) if i != 51]
    assert [(row.line, row.urn, row.path) for row in rejected] == [(52, "u51", "p51.png")]
    assert rejected[0].reason.startswith('unbalanced quote (") opened here')
    assert "not swallowed" in rejected[0].reason
    assert records[149].urn == "u151" and records[149].metadata["title"] == 'closed here"'
    assert records[50].urn == "u52" and records[50].metadata["title"] == "title 52"


def test_a_second_quote_opened_at_a_field_start_is_rejected_on_its_own_line(tmp_path):
    path = write(tmp_path, rows_text(titles={51: '"opened here', 151: '"opened again'}))
    records, rejected = read_metadata(path)
    assert urns(records) == [f"u{i}" for i in range(1, 201) if i not in (51, 151)]
    assert [(row.line, row.urn) for row in rejected] == [(52, "u51"), (152, "u151")]


@pytest.mark.parametrize("opened, reason", [(195, "line 197 reads as a row of its own"),
                                            (200, "the file ends before it is closed")])
def test_a_quote_never_closed_near_the_end_loses_only_its_own_line(tmp_path, opened, reason):
    path = write(tmp_path, rows_text(titles={opened: '"never closed'}))
    records, rejected = read_metadata(path)
    assert urns(records) == [f"u{i}" for i in range(1, 201) if i != opened]
    assert [(row.line, row.urn) for row in rejected] == [(opened + 1, f"u{opened}")]
    assert reason in rejected[0].reason


def test_a_quote_left_open_over_lines_that_are_not_rows_ends_after_the_line_limit(tmp_path):
    """Continuation lines that do not read as rows (too few fields) are taken as a quoted field's text
    only up to MAX_RECORD_LINES lines; then the opening line is rejected and each line read on its own."""
    notes = [f"note {i}, part\n" for i in range(MAX_RECORD_LINES + 5)]
    text = HEADER + 'u1,p1.png,1950,"a long note\n' + "".join(notes) + "u2,p2.png,1950,t\n"
    records, rejected = read_metadata(write(tmp_path, text))
    assert urns(records) == ["u2"]
    assert rejected[0].line == 2 and f"not closed within {MAX_RECORD_LINES} lines" in rejected[0].reason
    # each note line is read as a row of its own: too short, rejected with its own line number
    assert [row.line for row in rejected[1:]] == list(range(3, 3 + len(notes)))
    assert all(row.reason == "empty path" or "date" in row.reason for row in rejected[1:])


def test_a_quoted_title_may_span_up_to_the_line_limit(tmp_path):
    def title(lines: int) -> str:
        return '"' + "\n".join(f"line {i}, of the title" for i in range(lines)) + '"'

    text = (HEADER + f"u1,p1.png,1950,{title(MAX_RECORD_LINES)}\n"
            + f"u2,p2.png,1950,{title(MAX_RECORD_LINES + 1)}\n" + "u3,p3.png,1950,t\n")
    records, rejected = read_metadata(write(tmp_path, text))
    assert records[0].urn == "u1" and records[0].metadata["title"].count("\n") == MAX_RECORD_LINES - 1
    assert urns(records) == ["u1", "u3"]
    opened = 2 + MAX_RECORD_LINES
    assert (rejected[0].line, rejected[0].urn) == (opened, "u2")
    assert [row.line for row in rejected[1:]] == list(range(opened + 1, opened + 1 + MAX_RECORD_LINES))


def test_legitimate_quoted_commas_and_newlines_are_kept_and_lines_counted_from_where_a_row_starts(
        tmp_path):
    text = ("urn,path,date,title,newspaper\r\n"
            'a,a.png,1950,"Zeep, water\r\nen lucht",Trouw\r\n'
            'b,b.png,someday,"Twee\nregels",NRC\r\n'
            "c,c.png,1951,Auto,NRC\r\n"
            "d,d.png,1951-13,Fiets,NRC\r\n")
    records, rejected = read_metadata(write(tmp_path, text))
    assert [(r.urn, r.metadata) for r in records] == [
        ("a", {"title": "Zeep, water\r\nen lucht", "newspaper": "Trouw"}),
        ("c", {"title": "Auto", "newspaper": "NRC"})]
    # b starts on line 4 (a spans lines 2 and 3) and ends on line 5; d is on line 7
    assert [(row.line, row.urn) for row in rejected] == [(4, "b"), (7, "d")]


def test_a_field_over_the_limit_rejects_its_row_and_the_run_goes_on(tmp_path):
    path = write(tmp_path, rows_text(titles={100: "x" * 200_000, 150: '"' + "y" * 200_000 + '"'}))
    records, rejected = read_metadata(path)
    assert urns(records) == [f"u{i}" for i in range(1, 201) if i not in (100, 150)]
    assert [(row.line, row.urn) for row in rejected] == [(101, "u100"), (151, "u150")]
    assert rejected[0].reason == (f"field 'title' is 200,000 characters long, over the limit of "
                                  f"{FIELD_LIMIT:,}")


def test_a_field_at_the_limit_is_kept_and_a_long_urn_is_shortened_in_the_reject(tmp_path):
    text = HEADER + f"u1,p1.png,1950,{'x' * FIELD_LIMIT}\n" + f"{'u' * 200_000},p2.png,1950,t\n"
    records, rejected = read_metadata(write(tmp_path, text))
    assert urns(records) == ["u1"] and len(records[0].metadata["title"]) == FIELD_LIMIT
    assert rejected[0].line == 3 and "'urn' is 200,000 characters" in rejected[0].reason
    assert len(rejected[0].urn) < 1000 and rejected[0].path == "p2.png"


def test_a_header_left_inside_a_quote_is_refused_not_read_as_an_empty_collection(tmp_path):
    with pytest.raises(MetadataError, match=r"header row \(line 1\) opens a quote"):
        read_metadata(write(tmp_path, 'urn,path,date,"title\na,a.png,1950,x\nb,b.png,1950,y\n'))
    with pytest.raises(MetadataError, match="header row"):
        read_metadata_columns(write(tmp_path, 'urn,"name\na,x\n'))


def test_the_urn_only_csv_gets_the_same_protection(tmp_path):
    titles = {i: '"opened' if i == 51 else f"t{i}" for i in range(1, 201)}
    text = "urn,title\n" + "".join(f"u{i},{title}\n" for i, title in titles.items())
    text += "u7,again\n,no urn\n" + "u300,long " + "z" * 200_000 + "\n"
    rejected: list = []
    columns = read_metadata_columns(write(tmp_path, text), rejected=rejected)
    assert sorted(columns) == sorted(f"u{i}" for i in range(1, 201) if i != 51)
    assert columns["u52"].metadata == {"title": "t52"}
    assert [(row.line, row.urn) for row in rejected] == [(52, "u51"), (202, "u7"), (203, ""), (204, "u300")]
    assert "unbalanced quote" in rejected[0].reason and "duplicate" in rejected[1].reason
    assert read_metadata_columns(write(tmp_path, text)).keys() == columns.keys()  # `rejected` optional


def test_the_line_check_stops_a_reader_that_would_lose_lines(tmp_path, monkeypatch):
    """The guard behind the promise: a reader that dropped the lines after an unbalanced quote (instead
    of reading them again) is stopped with MetadataError rather than returning fewer rows."""
    monkeypatch.setattr(metadata._Lines, "again", lambda self, lines: None)
    with pytest.raises(MetadataError, match="internal check failed"):
        read_metadata(write(tmp_path, rows_text(titles={51: '"opened here'})))


def test_extract_vectors_stores_every_good_row_of_the_quote_scenario(tmp_path):
    from extract_vectors import extract_vectors

    images = tmp_path / "images"
    images.mkdir()
    for i in range(1, 201):
        Image.new("RGB", (8, 8), (i, 255 - i, 3 * i % 256)).save(images / f"p{i}.png")
    path = write(tmp_path, rows_text(titles={51: '"opened here', 151: 'closed here"'}))
    report = extract_vectors(path, tmp_path / "v", images_root=images, model="colour-histogram",
                             workers=1, progress=False)
    assert report.stored == 199
    with open(tmp_path / "v" / "rejects.csv", newline="", encoding="utf-8") as handle:
        reasons = {row["urn"]: row["reason"] for row in csv.DictReader(handle)}
    assert list(reasons) == ["u51"] and reasons["u51"].startswith('CSV line 52: unbalanced quote')


# Property: whatever the text, every physical line is a row, part of a quoted row, a rejected row or a
# blank line; rows of their own are never swallowed; nothing but MetadataError is raised.

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def texts(*pieces: str, max_size: int) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(pieces), max_size=max_size).map("".join)


junk = texts('"', '"', ",", ",", "\n", "\r", "\r\n", " ", "a", "1950", "\x00", "é", max_size=30)


def physical_lines(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return list(handle)


def check_lines_accounted_for(path: Path, required: tuple[str, ...]) -> list:
    lines = physical_lines(path)
    with csv_rows(path, required) as rows:
        rows = list(rows)
    width = len(next(csv.reader(lines[:1]), []))
    covered: list[int] = []
    for row in rows:
        assert row.lines >= 1 and (row.problem is None or row.lines == 1 or "field" in row.problem)
        assert row.lines <= MAX_RECORD_LINES
        covered.extend(range(row.line, row.line + row.lines))
        for number in range(row.line + 1, row.line + row.lines):  # no row of its own swallowed
            assert len(next(csv.reader(lines[number - 1:number]), [])) != width, f"line {number} swallowed"
    assert covered == sorted(set(covered)), "rows overlap"
    uncovered = set(range(2, len(lines) + 1)) - set(covered)
    assert set(covered) <= set(range(2, len(lines) + 1))
    assert all(lines[number - 1] in ("\n", "\r", "\r\n") for number in uncovered), "a line was lost"
    return rows


@SETTINGS
@given(pieces=st.lists(st.one_of(junk, st.none()), max_size=30))
def test_good_rows_among_random_quotes_commas_and_newlines_are_all_read(tmp_path, pieces):
    """Lines of junk (random quotes, commas, newlines) between good rows: every good row is a record."""
    good = [f"good{i},g{i}.png,1951,t {i}\n" for i in range(len(pieces))]
    text = HEADER + "".join(row if piece is None else piece + "\n"
                            for piece, row in zip(pieces, good, strict=True))
    path = write(tmp_path, text)
    rows = check_lines_accounted_for(path, metadata.REQUIRED_COLUMNS)
    records, rejected = read_metadata(path)
    assert len(records) + len(rejected) == len(rows)
    kept = {record.urn: record.path for record in records}
    for piece, row in zip(pieces, good, strict=True):
        if piece is None:
            urn, image = row.split(",")[:2]
            assert kept.get(urn) == image, f"{urn} lost in {text!r}"


@SETTINGS
@given(header=st.sampled_from(["", "urn,path,date\n", "\ufeffurn,path,date,title\r\n", "urn\r", " urn ,x\n"]),
       body=texts('"', ",", "\n", "\r", "urn", "path", "date", "x", "1950", "\ufeff", "\x00", max_size=60),
       required=st.sampled_from([metadata.REQUIRED_COLUMNS, ("urn",)]))
def test_any_text_is_read_with_every_line_accounted_for_or_refused_as_a_file(tmp_path, header, body,
                                                                              required):
    path = write(tmp_path, header + body)
    try:
        rows = check_lines_accounted_for(path, required)
        if required == ("urn",):
            rejected: list = []
            columns = read_metadata_columns(path, rejected=rejected)
            assert len(columns) + len(rejected) == len(rows)
        else:
            records, rejected = read_metadata(path)
            assert len(records) + len(rejected) == len(rows)
    except MetadataError as error:  # the file as a whole: no header, or one left inside a quote
        assert "internal check" not in str(error)
        assert any(words in str(error) for words in ("column", "header row", "not a readable CSV"))

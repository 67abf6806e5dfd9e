from __future__ import annotations

from pathlib import Path

import pytest

from siamese.metadata import MetadataError, parse_year, read_metadata

pytestmark = pytest.mark.fast  # no model, no browser: make test-fast


@pytest.mark.parametrize("date, year", [("1950", 1950), ("1950-03", 1950), ("1994-12-31", 1994),
                                        (" 2001-01-01 ", 2001)])
def test_dates_in_the_three_allowed_forms(date, year):
    assert parse_year(date) == year


@pytest.mark.parametrize("date", ["", "50", "1950/03/01", "1950-13", "1950-02-30", "March 1950",
                                  "19500", "1950-1-1"])
def test_other_dates_are_refused_with_the_forms_named(date):
    with pytest.raises(ValueError, match=r"YYYY|real date"):
        parse_year(date)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meta.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_rows_become_records_with_other_columns_as_metadata(tmp_path):
    path = write(tmp_path, "\ufeffurn,path,date,title,newspaper\n"
                           "ddd:1:a,a.jpg,1950-03-02,Zeep,Trouw\n"
                           "ddd:2:b,/abs/b.jpg,1961,Auto,NRC\n")
    records, rejected = read_metadata(path)
    assert rejected == []
    assert [(r.urn, r.year, r.date) for r in records] == [("ddd:1:a", 1950, "1950-03-02"),
                                                          ("ddd:2:b", 1961, "1961")]
    assert records[0].metadata == {"title": "Zeep", "newspaper": "Trouw"}
    assert records[0].resolve(tmp_path) == tmp_path / "a.jpg"
    assert records[1].resolve(tmp_path) == Path("/abs/b.jpg")
    assert records[0].to_item() == {"urn": "ddd:1:a", "date": "1950-03-02", "year": 1950,
                                    "path": "a.jpg",
                                    "metadata": {"title": "Zeep", "newspaper": "Trouw"}}


def test_bad_rows_are_rejected_with_reasons_and_the_rest_kept(tmp_path):
    path = write(tmp_path, "urn,path,date\n"
                           "a,a.jpg,1950\n"
                           ",b.jpg,1950\n"
                           "c,,1950\n"
                           "a,a2.jpg,1951\n"
                           "d,d.jpg,someday\n"
                           "e,e.jpg,1950,extra\n"
                           "f,f.jpg,1950\n")
    records, rejected = read_metadata(path)
    assert [r.urn for r in records] == ["a", "f"]
    reasons = {row.line: row.reason for row in rejected}
    assert reasons[3] == "empty urn"
    assert reasons[4] == "empty path"
    assert "duplicate" in reasons[5]
    assert "someday" in reasons[6]
    assert "more fields" in reasons[7]


def test_missing_columns_name_what_is_needed(tmp_path):
    with pytest.raises(MetadataError, match="missing column.*date"):
        read_metadata(write(tmp_path, "urn,path\na,a.jpg\n"))
    with pytest.raises(MetadataError, match="not found"):
        read_metadata(tmp_path / "nope.csv")
    (tmp_path / "latin1.csv").write_bytes("urn,path,date\nä,a.jpg,1950\n".encode("latin-1"))
    with pytest.raises(MetadataError, match="UTF-8"):
        read_metadata(tmp_path / "latin1.csv")


def test_semicolon_and_tab_separated_csvs_are_read_like_comma_separated_ones(tmp_path):
    """What a Dutch spreadsheet writes (the comma is the decimal sign there): fields split by ';', a
    quoted field keeping its own ';' and ','; and a tab-separated export."""
    semicolons = write(tmp_path, 'urn;path;date;title\nddd:1;a.jpg;1950-03-01;"Zeep; wit, fris"\n'
                                 "ddd:2;b.jpg;1951;Kaas\n")
    records, rejected = read_metadata(semicolons)
    assert not rejected
    assert [(r.urn, r.path, r.year, r.metadata) for r in records] == [
        ("ddd:1", "a.jpg", 1950, {"title": "Zeep; wit, fris"}), ("ddd:2", "b.jpg", 1951, {"title": "Kaas"})]
    tabs = tmp_path / "tabs.csv"
    tabs.write_text("urn\tpath\tdate\nddd:3\tc d.jpg\t1952\n")
    assert [(r.urn, r.path) for r in read_metadata(tabs)[0]] == [("ddd:3", "c d.jpg")]
    extra = tmp_path / "extra.csv"  # a row with more fields than the header is still rejected
    extra.write_text("urn;path;date\nddd:4;d.jpg;1953;surplus\nddd:5;e.jpg;1954\n")
    records, rejected = read_metadata(extra)
    assert [r.urn for r in records] == ["ddd:5"] and "more fields" in rejected[0].reason


def test_required_columns_may_be_written_in_any_case(tmp_path):
    records, _ = read_metadata(write(tmp_path, "URN,Path,Date,Title\nddd:1,a.jpg,1950,Zeep\n"))
    assert [(r.urn, r.path, r.date, r.metadata) for r in records] == [
        ("ddd:1", "a.jpg", "1950", {"Title": "Zeep"})]
    both = tmp_path / "both.csv"  # a column named exactly so wins; the other is metadata
    both.write_text("urn,URN,path,date\nddd:2,other,b.jpg,1951\n")
    records, _ = read_metadata(both)
    assert records[0].urn == "ddd:2" and records[0].metadata == {"URN": "other"}


def test_a_folder_given_as_the_csv_is_named_as_one(tmp_path):
    with pytest.raises(MetadataError, match="is a folder; give the metadata CSV file itself"):
        read_metadata(tmp_path)

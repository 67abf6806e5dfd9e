"""import_siamese.py: the original Siamese's vector folder into a vector store, over real vectors of real
images in the original layout (original_support.py)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

import import_siamese
from conftest import write_csv
from import_siamese import REPORT_FILE, SiameseImportError, main
from import_siamese import import_siamese as run_import
from original_support import OriginalLayout, write_original_layout
from siamese.original_names import UrnRestorer, file_stem, urn_from_resolver_link
from siamese.vector_store import StoreError, VectorStore, VectorStoreWriter


@pytest.fixture(scope="module")
def layout(tmp_path_factory, app_collection) -> OriginalLayout:
    return write_original_layout(tmp_path_factory.mktemp("original"), VectorStore(app_collection.vector_dir))


@pytest.fixture(scope="module")
def imported(tmp_path_factory, layout) -> tuple[Path, import_siamese.ImportReport]:
    """The layout imported with its metadata CSV, once for the module."""
    vector_dir = tmp_path_factory.mktemp("imported") / "vectors"
    return vector_dir, run_import(layout.old_dir, vector_dir, layout.metadata_csv, progress=False)


def read_report(vector_dir: Path) -> list[dict]:
    with open(vector_dir / REPORT_FILE, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def copy_layout(layout: OriginalLayout, directory: Path) -> Path:
    return Path(shutil.copytree(layout.old_dir, directory / "old"))


# ----------------------------------------------------------------------------- restoring the collection


def test_every_restorable_urn_comes_back_exactly_with_its_year_vector_and_csv_columns(layout, imported):
    vector_dir, report = imported
    store = VectorStore(vector_dir)
    assert sorted(store.urns) == sorted(layout.restorable)
    assert report.imported == store.count == len(layout.restorable) and report.already_stored == 0
    assert store.model == "inception-v3-2015" and store.n_dimensions == 2048
    for urn in layout.restorable:
        row = store.row_of(urn)
        item = store.items[row]
        year = layout.years[urn]
        assert (item["year"], item["date"]) == (year, str(year))
        assert item["path"] == f"{year}/{file_stem(urn)}.jpg"  # where the original kept the image
        assert set(item["metadata"]) == {"name", "maker"}
        assert np.array_equal(store.vectors[row], layout.vectors[urn])  # bit for bit


def test_urns_with_their_own_dashes_are_restored_from_the_metadata_csv(layout, imported):
    store = VectorStore(imported[0])
    dashed = [urn for urn in layout.restorable if urn not in layout.kb_or_plain]
    assert any(":" in urn and "-" in urn for urn in dashed) and any(":" not in urn for urn in dashed)
    assert all(urn in store for urn in dashed)
    with_dash = [urn for urn in dashed if "-" in urn]
    assert with_dash and not any(urn.replace("-", ":") in store for urn in with_dash)  # original's reading


def test_a_name_the_metadata_csv_leaves_ambiguous_is_reported_not_guessed(layout, imported):
    vector_dir, report = imported
    store = VectorStore(vector_dir)
    name = f"{layout.years[layout.ambiguous]}/{file_stem(layout.ambiguous)}.npy"
    assert layout.ambiguous not in store and layout.ambiguous.replace(":", "-", 1) not in store
    [row] = read_report(vector_dir)
    assert row["file"] == name and row["imported"] == "no" and row["reason"].startswith("ambiguous")
    assert layout.ambiguous in row["reason"]  # the candidates are named
    assert "1 files not imported (1 ambiguous)" in report.summary(vector_dir)


def test_without_metadata_only_kb_urns_and_plain_names_are_imported_then_a_csv_adds_the_rest(
        layout, tmp_path):
    vector_dir = tmp_path / "vectors"
    report = run_import(layout.old_dir, vector_dir, progress=False)
    store = VectorStore(vector_dir)
    assert sorted(store.urns) == sorted(layout.kb_or_plain) and store.items[0]["metadata"] == {}
    skipped = {row["file"] for row in read_report(vector_dir)}
    assert len(skipped) == len(layout.urns) - len(layout.kb_or_plain) == len(report.problems)
    assert all(reason.startswith("ambiguous") and "--metadata" in reason for _, _, reason in report.problems)

    again = run_import(layout.old_dir, vector_dir, layout.metadata_csv, progress=False)  # resumes
    assert again.already_stored == len(layout.kb_or_plain)
    assert again.imported == len(layout.restorable) - len(layout.kb_or_plain)
    assert sorted(VectorStore(vector_dir).urns) == sorted(layout.restorable)


def test_dashes_as_colons_imports_undecidable_names_as_the_original_read_them(layout, tmp_path):
    vector_dir = tmp_path / "vectors"
    report = run_import(layout.old_dir, vector_dir, dashes_as_colons=True, progress=False)
    store = VectorStore(vector_dir)
    assert store.count == len(layout.urns) and not report.problems
    guessed = [urn for urn in layout.urns if urn not in layout.kb_or_plain]
    assert sorted(urn for _, urn, _ in report.notes) == sorted(file_stem(urn).replace("-", ":")
                                                                 for urn in guessed)
    assert {row["imported"] for row in read_report(vector_dir)} == {"yes"}


def test_the_restoring_rule():
    restorer = UrnRestorer(["a:b-c", "x:y-z", "x-y:z", "plain-name"])
    assert restorer.restore("a-b-c").urn == "a:b-c"  # the CSV decides
    assert restorer.restore("x-y-z").urn is None  # two CSV urns share the name
    assert restorer.restore("plain-name").urn == "plain-name"
    assert restorer.restore("ddd-010850436-mpeg21-a0001").urn == "ddd:010850436:mpeg21:a0001"
    assert restorer.restore("KBNRC01-000028496-mpeg21-a0065").urn == "KBNRC01:000028496:mpeg21:a0065"
    assert restorer.restore("no_dash").urn == "no_dash"
    assert restorer.restore("already:colons").urn == "already:colons"
    assert restorer.restore("some-other-name").urn is None
    assert UrnRestorer(dashes_as_colons=True).restore("some-other-name").urn == "some:other:name"


def test_delpher_resolver_links_give_their_urn():
    urn = "ddd:010850436:mpeg21:a0001"
    for link in (f"http://resolver.kb.nl/resolve?urn={urn}", f"https://resolver.kb.nl/resolve?urn={urn}",
                 f"http://RESOLVER.kb.nl/resolve?urn={urn}&role=image"):
        assert urn_from_resolver_link(link) == urn
    for other in (urn, "http://example.org/resolve?urn=x", "http://resolver.kb.nl/resolve", "emoji:a-b"):
        assert urn_from_resolver_link(other) == other


# ----------------------------------------------------------------------------- bad input, never a traceback


def test_bad_files_and_folders_are_reported_and_skipped(layout, tmp_path, capsys):
    old = copy_layout(layout, tmp_path)
    bad = old / "1950"
    bad.mkdir()
    np.save(bad / "ddd-000000001-mpeg21-a0001.npy", np.zeros(1000, np.float32))
    np.save(bad / "ddd-000000002-mpeg21-a0001.npy", np.zeros((1, 2048), np.float32))
    np.save(bad / "ddd-000000003-mpeg21-a0001.npy", np.zeros(2048, np.int64))
    np.save(bad / "ddd-000000004-mpeg21-a0001.npy", np.full(2048, np.nan, np.float32))
    np.save(bad / "ddd-000000005-mpeg21-a0001.npy", np.array([{"a": 1}], dtype=object))
    (bad / "ddd-000000006-mpeg21-a0001.npy").write_bytes(b"not numpy at all")
    (bad / "ddd-000000007-mpeg21-a0001.npy").write_bytes(b"")
    np.savez(bad / "ddd-000000008-mpeg21-a0001.npy", a=np.zeros(2048))
    shutil.move(bad / "ddd-000000008-mpeg21-a0001.npy.npz", bad / "ddd-000000008-mpeg21-a0001.npy")
    (bad / "notes.txt").write_text("x")
    (bad / "folder.npy").mkdir()
    (old / "misc").mkdir()
    np.save(old / "misc" / "ddd-000000009-mpeg21-a0001.npy", np.zeros(2048, np.float32))
    np.save(old / "ddd-000000010-mpeg21-a0001.npy", np.zeros(2048, np.float32))
    first = layout.urns[0]  # the same urn again in another year
    np.save(old / "1950" / f"{file_stem(first)}.npy", layout.vectors[first])
    vector_dir = tmp_path / "vectors"

    assert main([str(old), str(vector_dir), "--metadata", str(layout.metadata_csv), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "see" in out and REPORT_FILE in out
    assert VectorStore(vector_dir).count == len(layout.restorable)
    reasons = {row["file"]: row["reason"] for row in read_report(vector_dir)}
    expected = {"1950/ddd-000000001-mpeg21-a0001.npy": "bad file: shape (1000,)",
                "1950/ddd-000000002-mpeg21-a0001.npy": "bad file: shape (1, 2048)",
                "1950/ddd-000000003-mpeg21-a0001.npy": "bad file: dtype int64",
                "1950/ddd-000000004-mpeg21-a0001.npy": "bad file: NaN",
                "1950/ddd-000000005-mpeg21-a0001.npy": "bad file: not a readable",
                "1950/ddd-000000006-mpeg21-a0001.npy": "bad file: not a readable",
                "1950/ddd-000000007-mpeg21-a0001.npy": "bad file: not a readable",
                "1950/ddd-000000008-mpeg21-a0001.npy": "bad file: an .npz archive",
                "1950/notes.txt": "not a .npy file", "1950/folder.npy": "not a .npy file",
                "misc/": "not a year folder", "ddd-000000010-mpeg21-a0001.npy": "not in a year folder",
                f"1950/{file_stem(first)}.npy": "duplicate urn"}
    for name, reason in expected.items():
        assert reasons.get(name, "").startswith(reason), (name, reasons.get(name))
    assert len(reasons) == len(expected) + 1  # and the ambiguous name


def test_the_command_line_reports_what_cannot_start(layout, tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "v")]) == 2
    no_urn = tmp_path / "no-urn.csv"
    no_urn.write_text("name,year\na,1950\n")
    assert main([str(layout.old_dir), str(tmp_path / "v"), "--metadata", str(no_urn)]) == 2
    assert main([str(layout.old_dir), str(tmp_path / "v"), "--metadata", str(tmp_path / "none.csv")]) == 2
    VectorStoreWriter(tmp_path / "other", "colour-histogram", 512).close()
    assert main([str(layout.old_dir), str(tmp_path / "other"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("import_siamese.py: error:") == 4 and "Traceback" not in err
    assert "no such folder" in err and "no 'urn' column" in err and "not found" in err
    assert "colour-histogram" in err
    with pytest.raises(SiameseImportError):
        run_import(layout.old_dir, tmp_path / "v", batch_size=0)


def test_the_model_name_is_recorded_and_can_be_overridden(layout, tmp_path, capsys):
    vector_dir = tmp_path / "vectors"
    assert main([str(layout.old_dir), str(vector_dir), "--model", "my-inception", "--quiet"]) == 0
    assert VectorStore(vector_dir).model == "my-inception"
    with pytest.raises(StoreError):  # the store's model is checked on a second import
        run_import(layout.old_dir, vector_dir, progress=False)


# ----------------------------------------------------------------------------- streaming and resuming


def test_the_import_streams_in_batches_and_resumes_after_an_interruption(layout, tmp_path, monkeypatch,
                                                                         capsys):
    vector_dir = tmp_path / "vectors"
    batches: list[int] = []
    original_append = VectorStoreWriter.append

    def interrupted_append(self, vectors, items):
        if len(batches) == 2:
            raise KeyboardInterrupt
        batches.append(len(items))
        original_append(self, vectors, items)

    monkeypatch.setattr(VectorStoreWriter, "append", interrupted_append)
    arguments = [str(layout.old_dir), str(vector_dir), "--metadata", str(layout.metadata_csv),
                 "--batch-size", "5"]
    assert main(arguments) == 130
    out, err = capsys.readouterr()
    assert "run the same command again" in err and "importing" in err  # the progress bar
    assert batches == [5, 5] and VectorStore(vector_dir).count == 10

    monkeypatch.setattr(VectorStoreWriter, "append", original_append)
    report = run_import(layout.old_dir, vector_dir, layout.metadata_csv, batch_size=5, progress=False)
    assert (report.already_stored, report.imported) == (10, len(layout.restorable) - 10)
    store = VectorStore(vector_dir)
    assert sorted(store.urns) == sorted(layout.restorable)
    for urn in layout.restorable:
        assert np.array_equal(store.vectors[store.row_of(urn)], layout.vectors[urn])


def test_the_csvs_path_and_date_replace_ours_only_where_the_date_agrees_with_the_folder(layout, tmp_path):
    agrees, disagrees, bad = layout.kb_or_plain[:3]
    rows = [{"urn": agrees, "path": "scans/a.jp2", "date": f"{layout.years[agrees]}-05-17", "title": "A"},
            {"urn": disagrees, "path": "", "date": "1234-01-01", "title": "B"},
            {"urn": bad, "path": "", "date": "soon", "title": "C"}]
    csv_path = write_csv(tmp_path / "some.csv", rows)
    vector_dir = tmp_path / "vectors"
    report = run_import(layout.old_dir, vector_dir, csv_path, progress=False)
    store = VectorStore(vector_dir)
    item = store.items[store.row_of(agrees)]
    assert (item["path"], item["date"], item["metadata"]) == ("scans/a.jp2", rows[0]["date"], {"title": "A"})
    for urn in (disagrees, bad):
        item = store.items[store.row_of(urn)]
        assert item["date"] == str(layout.years[urn]) and item["path"].endswith(".jpg")
    assert sorted(urn for _, urn, _ in report.notes) == sorted([disagrees, bad])
    assert all("the folder's is kept" in reason for _, _, reason in report.notes)
    assert {row["imported"] for row in read_report(vector_dir) if row["urn"] in (disagrees, bad)} == {"yes"}

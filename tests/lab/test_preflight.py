"""Checks before training (normlab.lab.preflight) that need no model: the output folder."""

import pytest

from normlab.lab import preflight, store


def test_check_out_refuses_a_file_where_the_report_goes(tmp_path):
    """It was found after every run had trained, and blamed --out ("out='.../report' is a file")."""
    (tmp_path / "report").write_text("notes")
    with pytest.raises(store.StoreError) as info:
        preflight.check_out(tmp_path)
    assert str(info.value) == (
        f"Invalid `out`: expected {tmp_path / 'report'}, where the grid writes its report, to be a folder "
        f"or not to exist. Received: out='{tmp_path}', where {tmp_path / 'report'} is a file. Remove or "
        "rename that file, or pass another --out.")
    (tmp_path / "report").unlink()
    (tmp_path / "report").mkdir()
    preflight.check_out(tmp_path)  # a report folder from an earlier grid is fine
    preflight.check_out(tmp_path / "new")  # as is a folder still to be made


def test_check_out_refuses_an_empty_path(tmp_path, monkeypatch):
    """An empty path is the current folder: the grid planned its runs there."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(store.StoreError, match=r"Invalid `out`: expected a non-empty folder path \(an empty one "
                                               r"would be the current folder\)\. Received: out=''\. Pass --out"):
        preflight.check_out("")

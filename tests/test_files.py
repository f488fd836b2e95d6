"""Folder swaps: a complete new folder replaces an old one by renames, and a failed swap puts the
old one back."""

import os

import pytest

from rerankit.files import swap_in

pytestmark = pytest.mark.smoke


def _folder(path, text):
    path.mkdir()
    (path / "file.txt").write_text(text)
    return path


def test_a_swap_puts_the_new_folder_in_place_and_the_old_one_aside(tmp_path):
    target, previous = tmp_path / "graph", tmp_path / "graph.previous"
    swap_in(_folder(tmp_path / "first", "one"), target, previous)
    assert (target / "file.txt").read_text() == "one" and not previous.exists()
    swap_in(_folder(tmp_path / "second", "two"), target, previous)
    assert (target / "file.txt").read_text() == "two"
    assert (previous / "file.txt").read_text() == "one"  # the caller deletes it
    assert not (tmp_path / "first").exists() and not (tmp_path / "second").exists()


def test_a_failed_swap_leaves_the_old_folder_in_place(tmp_path, monkeypatch):
    target, previous = _folder(tmp_path / "graph", "old"), tmp_path / "graph.previous"
    staging = _folder(tmp_path / "staging", "new")
    rename = os.replace

    def refuse_the_new_one(source, destination):
        if os.fspath(source) == os.fspath(staging):
            raise OSError("disk says no")
        rename(source, destination)

    monkeypatch.setattr(os, "replace", refuse_the_new_one)
    with pytest.raises(OSError, match="disk says no"):
        swap_in(staging, target, previous)
    assert (target / "file.txt").read_text() == "old" and not previous.exists()
    assert (staging / "file.txt").read_text() == "new"

"""The one atomic writer: files and staged folders."""

from __future__ import annotations

import os

import pytest

from prompt_tuning import files


def test_write_atomic_takes_text_and_bytes(tmp_path):
  files.write_atomic(tmp_path / "sub" / "a.txt", "héllo\n")
  files.write_atomic(tmp_path / "sub" / "b.bin", b"\x00\x01")
  assert (tmp_path / "sub" / "a.txt").read_text(encoding="utf-8") == "héllo\n"
  assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
  assert sorted(os.listdir(tmp_path / "sub")) == ["a.txt", "b.bin"]


def test_staging_dir_is_removed_unless_renamed(tmp_path):
  final = tmp_path / "out"
  with pytest.raises(OSError, match="disk full"):
    with files.staging_dir(str(final)) as staging:
      files.write_synced(os.path.join(staging, "x"), b"1")
      raise OSError("disk full")
  assert not os.listdir(tmp_path)
  with files.staging_dir(str(final)) as staging:
    files.write_synced(os.path.join(staging, "x"), b"1")
    os.rename(staging, final)
  assert os.listdir(tmp_path) == ["out"] and (final / "x").read_bytes() == b"1"

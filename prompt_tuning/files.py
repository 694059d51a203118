"""Writing files and folders so that no reader ever sees half of one.

The project's one way to write atomically: a file goes to a temporary file
beside it and is renamed over it; a folder is written in a staging folder
beside it and renamed into place. Standard library only (jax is imported
where a process index is needed), so scripts/refresh_lock.py, which must
not import the package, loads this file by path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from typing import Iterator, Optional, Union


def write_atomic(path: Union[str, os.PathLike], data: Union[str, bytes]
                 ) -> None:
  """Writes `data` (text as UTF-8) to `path` atomically.

  It goes to a temporary file in the same folder (created if missing),
  flushed to disk, then renamed over `path`; on failure the temporary file
  is removed and an existing `path` is left as it was.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory,
                             prefix=f".{os.path.basename(path)}.",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data.encode("utf-8") if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_text_on_process_0(path: str, text: str) -> Optional[str]:
  """`write_atomic` on process 0 only; returns `path`, or None elsewhere."""
  import jax  # pylint: disable=g-import-not-at-top  # See the module doc.

  if jax.process_index() != 0:
    return None
  write_atomic(path, text)
  return path


def write_synced(path: str, data: bytes) -> None:
  """Writes `data` and flushes it to disk (a file inside a staging folder,
  which is renamed into place as a whole)."""
  with open(path, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


@contextlib.contextmanager
def staging_dir(final: str) -> Iterator[str]:
  """A new folder beside `final` to write into, then rename to `final`.

  Removed on exit unless it was renamed away, so a failed write leaves
  nothing behind. Its name is unique per process and call.
  """
  final = os.path.abspath(os.fspath(final))
  parent = os.path.dirname(final)
  os.makedirs(parent, exist_ok=True)
  staging = os.path.join(
      parent, f".{os.path.basename(final)}.tmp-{os.getpid()}-"
      f"{uuid.uuid4().hex[:8]}")
  os.makedirs(staging)
  try:
    yield staging
  finally:
    if os.path.exists(staging):
      shutil.rmtree(staging, ignore_errors=True)


def remove_stale_staging(parent: str) -> list[str]:
  """Removes the staging folders and files (`.<name>.tmp-<pid>-<id>`) a
  killed writer left in `parent`; returns their names. Call only when no
  other process writes there (a binary's start-up)."""
  if not os.path.isdir(parent):
    return []
  stale = [name for name in os.listdir(parent)
           if name.startswith(".") and ".tmp-" in name]
  for name in stale:
    path = os.path.join(parent, name)
    if os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      os.remove(path)
  return stale

"""Writing small text files so that no reader ever sees half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Optional

import jax


def write_text_on_process_0(path: str, text: str) -> Optional[str]:
  """Writes `text` to `path` atomically, on process 0 only.

  The text goes to a temporary file in the same folder (created if
  missing), flushed to disk, then renamed over `path`; on failure the
  temporary file is removed and an existing `path` is left as it was.

  Returns:
    `path`, or None on the other processes.
  """
  if jax.process_index() != 0:
    return None
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory,
                             prefix=f".{os.path.basename(path)}.",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
  return path

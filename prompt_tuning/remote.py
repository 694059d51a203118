"""Remote paths (gs://, s3://) fail fast when their store cannot be reached.

TensorStore and gfile retry an unreachable object store for minutes; a user
without network access should get one line instead.
"""

from __future__ import annotations

import socket
import threading
from typing import Optional


# Object stores a remote path may name, and the host that serves each.
_REMOTE_HOSTS = {"gs": "storage.googleapis.com", "s3": "s3.amazonaws.com"}
REMOTE_TIMEOUT_S = 10.0


def check_reachable(path: str, what: str,
                    timeout_s: float = REMOTE_TIMEOUT_S) -> None:
  """Fails within `timeout_s` when a gs:// (or s3://) path's object store
  cannot be reached, instead of the minutes TensorStore and gfile spend
  retrying. Local paths and other schemes pass unchecked.

  Raises:
    FileNotFoundError: naming the path, what it is, and the fix.
  """
  scheme = path.split("://", 1)[0] if "://" in path else None
  host = _REMOTE_HOSTS.get(scheme or "")
  if host is None:
    return
  # In a thread: name resolution has no timeout of its own.
  result: list[Optional[BaseException]] = []

  def connect() -> None:
    try:
      socket.create_connection((host, 443), timeout=timeout_s).close()
      result.append(None)
    except OSError as e:
      result.append(e)

  thread = threading.Thread(target=connect, daemon=True)
  thread.start()
  thread.join(timeout_s)
  if not result or result[0] is not None:
    reason = "no answer" if not result else (result[0].strerror or
                                             type(result[0]).__name__)
    raise FileNotFoundError(
        f"{what} {path!r}: cannot reach {host} ({reason} within "
        f"{timeout_s:g} s); check the network, or copy the files to a local "
        "folder and point to it.")

"""Drops C++ library log lines from a stream; forwards everything else.

Run as a child process by `console.filter_native_logs` with the binary's
file descriptor 2 (what TensorFlow's and XLA's C++ code write to) on its
stdin and the real stderr on its stdout. Standard library only, so it starts
in milliseconds without importing the package.

Dropped: absl/glog-style INFO and WARNING lines (`I1202 05:45:00.123 42
port.cc:153] ...`), ERROR lines known to be harmless here (`KNOWN_HARMLESS`),
and absl's "before absl::InitializeLog()" notice. Kept: FATAL and other
ERROR lines, and anything not in that format (a crash dump, a Python fatal
error). It ignores Ctrl-C and reads to the end, so output written just
before the binary dies still arrives.
"""

from __future__ import annotations

import os
import re
import signal
import sys

# absl and glog: severity, MMDD, time, thread id, file:line]. absl writes
# "I0000 00:00:1796190730.465436" before absl::InitializeLog().
_NATIVE_LOG = re.compile(
    rb"^(?P<severity>[IWEF])\d{4} \d\d:\d\d:[\d.]+\s+\d+\s+\S+:\d+\] (?P<text>.*)")
_BEFORE_INIT_NOTICE = (
    b"WARNING: All log messages before absl::InitializeLog() is called are"
    b" written to STDERR")
# ERROR lines that say nothing the user can act on: TensorFlow (which only
# feeds data here) finding no CUDA driver on a machine without a GPU.
KNOWN_HARMLESS = (re.compile(rb"failed call to cuInit"),)


def keep(line: bytes) -> bool:
  """Whether one line (without its newline) reaches the user."""
  if line.startswith(_BEFORE_INIT_NOTICE):
    return False
  match = _NATIVE_LOG.match(line)
  if match is None:
    return True
  severity = match.group("severity")
  if severity in (b"I", b"W"):
    return False
  if severity == b"E":
    return not any(p.search(match.group("text")) for p in KNOWN_HARMLESS)
  return True


def _write_all(fd: int, data: bytes) -> None:
  while data:
    data = data[os.write(fd, data):]


def filter_stream(read_fd: int, write_fd: int) -> None:
  """Copies `read_fd` to `write_fd` line by line, dropping what `keep`
  rejects, until end of file."""
  pending = b""
  while True:
    chunk = os.read(read_fd, 65536)
    if not chunk:
      break
    pending += chunk
    *lines, pending = pending.split(b"\n")
    out = b"".join(line + b"\n" for line in lines if keep(line))
    if out:
      _write_all(write_fd, out)
  if pending and keep(pending):
    _write_all(write_fd, pending)


if __name__ == "__main__":
  # Ctrl-C reaches the whole process group; the binary decides what to do,
  # and its last words still pass through here.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  filter_stream(sys.stdin.fileno(), sys.stdout.fileno())

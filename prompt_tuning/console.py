"""What the binaries print: their own screens, and one line per warning that
needs the user.

The libraries under the binaries log start-up banners and advice meant for
other setups: TensorFlow's C++ banners (oneDNN, "could not find cuda
drivers", a cuInit error on a machine without a GPU), seqio's advice to
cache tasks (our runs resume at their data position, so it does not apply)
and tf.data's note on a partly read cache (the training iterator is dropped
on purpose). A new user reads them as failures. By default the binaries show
only their start screen, progress, end screen and errors, plus one line for
each warning the user must act on, naming the action (`ACTIONABLE`).

`--verbosity=N` (absl's levels: -2 error ... 0 info, 1 debug) or
PROMPT_TUNING_RAW_LOGS=1 brings every library's raw log back.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import subprocess
import sys
from typing import Callable, Iterator, Optional, Sequence, TextIO

from prompt_tuning import native_log_filter

RAW_LOGS_ENV = "PROMPT_TUNING_RAW_LOGS"

_OUR_PACKAGES = ("prompt_tuning", "prompt_tuning.tasks")


def first_line(error: "BaseException | str", max_chars: Optional[int] = None
               ) -> str:
  """An error's message as one line for a one-line report: its first line
  (libraries append tracebacks and advice below it), the undecodable byte of
  a UnicodeDecodeError instead of Python's long text, and at most max_chars
  characters where the message may quote a whole file."""
  if isinstance(error, UnicodeDecodeError):
    return f"byte 0x{error.object[error.start]:02x} is not UTF-8"
  text = str(error).strip()
  line = text.splitlines()[0] if text else type(error).__name__
  if max_chars is not None and len(line) > max_chars:
    return line[:max_chars] + "..."
  return line


def verbosity_from_argv(argv: Sequence[str]) -> Optional[int]:
  """The value of absl's `--verbosity=N` / `-v N` in `argv`, else None.

  Read from the raw arguments because TensorFlow loads (and reads its log
  level) before the binaries parse their flags.
  """
  for i, arg in enumerate(argv):
    for name in ("--verbosity", "-v", "--v"):
      value = None
      if arg.startswith(name + "="):
        value = arg[len(name) + 1:]
      elif arg == name and i + 1 < len(argv):
        value = argv[i + 1]
      if value is not None:
        try:
          return int(value)
        except ValueError:
          return None  # The flag parser reports the bad value.
  return None


def raw_logs_requested(argv: Optional[Sequence[str]] = None) -> bool:
  argv = sys.argv[1:] if argv is None else argv
  return (os.environ.get(RAW_LOGS_ENV, "") not in ("", "0")
          or verbosity_from_argv(argv) is not None)


def filter_native_logs(argv: Optional[Sequence[str]] = None) -> None:
  """Routes the process's C++ logs through `native_log_filter`.

  TensorFlow 2.21 and XLA log through absl's C++ logging, which ignores
  TF_CPP_MIN_LOG_LEVEL before absl::InitializeLog() and writes straight to
  file descriptor 2. So fd 2 becomes a pipe into a small child process that
  drops INFO/WARNING lines and forwards the rest to the real stderr, while
  Python's `sys.stderr` keeps writing to the real stderr directly (a TTY
  stays a TTY for the progress bar). The child reads to the end of the pipe,
  so nothing is lost if this process is killed.

  For binaries only: call it first thing in a process that runs one, before
  TensorFlow loads. Does nothing when raw logs are requested or when called
  again.
  """
  global _filter
  if _filter is not None or raw_logs_requested(argv):
    return
  sys.stderr.flush()
  real_stderr = os.dup(2)
  read_end, write_end = os.pipe()
  child = subprocess.Popen(
      [sys.executable, "-I", "-S", native_log_filter.__file__],
      stdin=read_end, stdout=real_stderr, stderr=real_stderr)
  os.close(read_end)
  os.dup2(write_end, 2)
  os.close(write_end)
  sys.stderr = os.fdopen(real_stderr, "w", buffering=1,
                         encoding=sys.stderr.encoding,
                         errors=sys.stderr.errors)
  _filter = child
  atexit.register(_close_filter)


_filter: Optional[subprocess.Popen] = None


def _close_filter() -> None:
  """Gives fd 2 back to the real stderr and lets the filter drain, so its
  last lines print before the shell prompt."""
  global _filter
  if _filter is None:
    return
  sys.stderr.flush()
  os.dup2(sys.stderr.fileno(), 2)  # Closes this process's end of the pipe.
  try:
    _filter.wait(timeout=5)
  except subprocess.TimeoutExpired:
    pass  # A child process of ours still holds the pipe; it drains later.
  _filter = None


def _truncation_note(record: logging.LogRecord) -> str:
  """seqio's "*may be* insufficient": some eval examples fill a length."""
  given, longest = (record.args if isinstance(record.args, tuple)
                    and len(record.args) == 2 else ({}, {}))
  full = sorted(k for k, v in given.items()
                if isinstance(v, int) and longest.get(k) == v)
  lengths = ", ".join(f"{k}={given[k]}" for k in full) or str(given)
  return (f"some evaluation examples fill TASK_FEATURE_LENGTHS ({lengths})"
          " and may be cut; raise those lengths (--gin.TASK_FEATURE_LENGTHS="
          "\"{...}\") to evaluate them whole")


# Third-party warnings that need the user: (message pattern, the one line
# printed instead). Every other third-party record below ERROR is dropped.
ACTIONABLE: tuple[tuple[re.Pattern[str],
                        Callable[[logging.LogRecord], str]], ...] = (
    (re.compile(r"Given sequence lengths \*may be\* insufficient"),
     _truncation_note),
)


def _package_dirs() -> tuple[str, ...]:
  """Folders of our code (tasks/ is mapped into the package by setup.py)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  dirs = []
  for name in _OUR_PACKAGES:
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.submodule_search_locations:
      dirs.extend(os.path.realpath(p) + os.sep
                  for p in spec.submodule_search_locations)
  return tuple(dirs)


class UserLineHandler(logging.Handler):
  """Prints what the user must see as one line each; drops the rest.

  * our own warnings and errors: `warning: ...` / `error: ...`;
  * third-party warnings in `ACTIONABLE`: `note: <the action>`, once each;
  * third-party errors: `error (<logger>): <first line>`;
  * everything else (INFO, library advice, banners): nothing.
  """

  def __init__(self, stream: TextIO):
    super().__init__(logging.WARNING)
    self._stream = stream
    self._ours = _package_dirs()
    self._printed: set[str] = set()

  def _is_ours(self, record: logging.LogRecord) -> bool:
    if record.name == "py.warnings":
      # A captured `warnings.warn`: "<file>:<line>: <Category>: <message>".
      path = record.getMessage().split(":", 1)[0]
    else:
      path = record.pathname
    return os.path.realpath(path).startswith(self._ours)

  @staticmethod
  def _text(record: logging.LogRecord) -> str:
    message = record.getMessage()
    if record.name == "py.warnings":  # Drop "<file>:<line>: <Category>: ".
      message = message.split(": ", 2)[-1]
    return (message.strip().splitlines() or [""])[0]

  def line_for(self, record: logging.LogRecord) -> Optional[str]:
    if record.levelno < logging.WARNING:
      return None
    if self._is_ours(record):
      kind = "error" if record.levelno >= logging.ERROR else "warning"
      return f"{kind}: {self._text(record)}"
    for pattern, note in ACTIONABLE:
      if pattern.search(str(record.msg)):
        return f"note: {note(record)}"
    if record.levelno >= logging.ERROR:
      return f"error ({record.name}): {self._text(record)}"
    return None

  def emit(self, record: logging.LogRecord) -> None:
    try:
      line = self.line_for(record)
      if line is None or line in self._printed:
        return
      self._printed.add(line)
      self._stream.write(line + "\n")
      self._stream.flush()
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


def _python_level(verbosity: int) -> int:
  """absl's verbosity (1 debug, 0 info, -1 warning, -2 error, -3 fatal)."""
  return {1: logging.DEBUG, 0: logging.INFO, -1: logging.WARNING,
          -2: logging.ERROR}.get(max(min(verbosity, 1), -3), logging.CRITICAL)


@contextlib.contextmanager
def log_policy(verbosity: Optional[int] = None,
               stream: Optional[TextIO] = None) -> Iterator[None]:
  """Routes Python logging (absl's, TensorFlow's, warnings) for a binary run.

  With raw logs (`verbosity` set or PROMPT_TUNING_RAW_LOGS=1) every record
  at or above absl's level goes to stderr as it is; otherwise through
  `UserLineHandler`. The root logger's handlers and level, and the
  `tensorflow` and `absl` loggers' settings, are restored on exit, so
  calling a binary in-process leaves logging as it was.
  """
  stream = sys.stderr if stream is None else stream
  raw = verbosity is not None or raw_logs_requested(())
  root = logging.getLogger()
  # TensorFlow's logger prints through its own handler unless root has one.
  side_loggers = [logging.getLogger(n) for n in ("tensorflow", "absl")]
  saved = (root.handlers[:], root.level,
           [(lg, lg.handlers[:], lg.propagate, lg.level) for lg in side_loggers])
  if raw:
    handler: logging.Handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(
        "%(levelname).1s %(name)s %(filename)s:%(lineno)d] %(message)s"))
    level = _python_level(0 if verbosity is None else verbosity)
  else:
    handler = UserLineHandler(stream)
    level = logging.WARNING
  root.handlers = [handler]
  root.setLevel(level)
  for lg in side_loggers:
    lg.handlers, lg.propagate = [], True
    lg.setLevel(logging.NOTSET)
  logging.captureWarnings(True)
  try:
    yield
  finally:
    logging.captureWarnings(False)
    root.handlers, root.level = saved[0], saved[1]
    for lg, handlers, propagate, lvl in saved[2]:
      lg.handlers, lg.propagate = handlers, propagate
      lg.setLevel(lvl)

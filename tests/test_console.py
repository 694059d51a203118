"""What the binaries print: the C++ log filter and the Python log policy.

The end-to-end check (a real run prints only its screens) is in
test_binaries.py; these pin the rules on the exact lines seen from
TensorFlow 2.21, seqio and absl.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import threading
import warnings

import pytest

from prompt_tuning import console
from prompt_tuning import native_log_filter

# Lines a fresh install printed before this filter existed.
NOISE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are"
    b" written to STDERR",
    b"I0000 00:00:1796190517.480785    2236 port.cc:153] oneDNN custom"
    b" operations are on. You may see slightly different numerical results",
    b"I0000 00:00:1796190517.485785    2236 cudart_stub.cc:31] Could not find"
    b" cuda drivers on your machine, GPU will not be used.",
    b"E0000 00:00:1796190520.231313    2236 cuda_platform.cc:52] failed call"
    b" to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR"
    b" (303)",
    b"W0000 00:00:1796190586.153087    2236 cache_dataset_ops.cc:912] The"
    b" calling iterator did not fully read the dataset being cached.",
    b"I1202 05:45:00.123456   42 gcs_file_system.cc:100] glog style",
]
KEPT = [
    b"F0000 00:00:1796190586.153087    2236 some_op.cc:1] Check failed: x",
    b"E0000 00:00:1796190586.153087    2236 gcs_file_system.cc:7] Could not"
    b" resolve host: storage.googleapis.com",
    b"Traceback (most recent call last):",
    b"Fatal Python error: Segmentation fault",
    b"step 100/600  loss/token 5.0285",
    b"",
]


@pytest.mark.parametrize("line", NOISE)
def test_the_filter_drops_library_chatter(line):
  assert not native_log_filter.keep(line)


@pytest.mark.parametrize("line", KEPT)
def test_the_filter_keeps_fatal_errors_and_everything_else(line):
  assert native_log_filter.keep(line)


def test_filter_stream_keeps_order_and_a_last_line_without_newline():
  read_end, write_end = os.pipe()
  out_read, out_write = os.pipe()
  text = b"\n".join([NOISE[1], KEPT[0], NOISE[3], KEPT[2]]) + b"\nlast"
  worker = threading.Thread(target=native_log_filter.filter_stream,
                            args=(read_end, out_write))
  worker.start()
  # Written in pieces that split lines, as a pipe delivers them.
  for i in range(0, len(text), 7):
    os.write(write_end, text[i:i + 7])
  os.close(write_end)
  worker.join(timeout=10)
  os.close(out_write)
  with os.fdopen(out_read, "rb") as f:
    assert f.read() == KEPT[0] + b"\n" + KEPT[2] + b"\nlast"
  os.close(read_end)


def test_the_filter_child_survives_ctrl_c_and_drains():
  """Ctrl-C reaches the whole process group: the filter must keep reading
  so the binary's last words still arrive."""
  child = subprocess.Popen(
      [sys.executable, "-I", "-S", native_log_filter.__file__],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
  child.stdin.write(NOISE[2] + b"\nfirst\n")
  child.stdin.flush()
  assert child.stdout.readline() == b"first\n"  # Running, handler set.
  child.send_signal(2)  # SIGINT
  child.stdin.write(b"after ctrl-c\n")
  out, _ = child.communicate(timeout=30)
  assert out == b"after ctrl-c\n"
  assert child.returncode == 0


@pytest.mark.parametrize("argv, expected", [
    ([], None), (["--verbosity=1"], 1), (["--verbosity", "-1"], -1),
    (["-v", "0"], 0), (["--v=2"], 2), (["--verbosity=x"], None),
    (["--gin.X=1", "--verbosity=0"], 0)])
def test_verbosity_is_read_from_the_raw_arguments(argv, expected):
  assert console.verbosity_from_argv(argv) == expected


def test_raw_logs_by_environment(monkeypatch):
  monkeypatch.setenv(console.RAW_LOGS_ENV, "1")
  assert console.raw_logs_requested([])
  monkeypatch.setenv(console.RAW_LOGS_ENV, "0")
  assert not console.raw_logs_requested([])
  assert console.raw_logs_requested(["--verbosity=0"])


def _record(name, level, msg, args=(), pathname="/elsewhere/seqio/x.py"):
  return logging.LogRecord(name, level, pathname, 1, msg, args, None)


def _lines(*records) -> list[str]:
  stream = io.StringIO()
  handler = console.UserLineHandler(stream)
  for record in records:
    handler.handle(record)
  return stream.getvalue().splitlines()


def test_seqio_truncation_warning_becomes_one_actionable_note():
  msg = ("Given sequence lengths *may be* insufficient for some evaluation"
         " inputs or targets. ...\n Got: %s,\n Max Lengths: %s")
  record = _record("absl", logging.WARNING, msg,
                   ({"inputs": 128, "targets": 64},
                    {"inputs": 128, "targets": 40}))
  lines = _lines(record, record)  # Said once, however often logged.
  assert lines == [
      "note: some evaluation examples fill TASK_FEATURE_LENGTHS (inputs=128)"
      " and may be cut; raise those lengths (--gin.TASK_FEATURE_LENGTHS="
      "\"{...}\") to evaluate them whole"]


def test_library_advice_and_info_are_dropped_and_errors_kept():
  ours = os.path.join(os.path.dirname(console.__file__), "evaluation.py")
  lines = _lines(
      _record("absl", logging.WARNING,
              "Using an uncached FunctionDataset for training is not"
              " recommended since ..."),
      _record("tensorflow", logging.INFO, "Assets written to: ..."),
      _record("orbax", logging.ERROR, "Could not save\ndetails"),
      _record("root", logging.WARNING, "%r has no task", ("mix",), ours),
      _record("root", logging.INFO, "Restored step 3", (), ours))
  assert lines == ["error (orbax): Could not save",
                   "warning: 'mix' has no task"]


def test_our_warnings_warn_is_shown_as_one_line_and_others_are_not():
  stream = io.StringIO()
  ours = os.path.join(os.path.dirname(console.__file__), "methods",
                      "initializers.py")
  with console.log_policy(stream=stream):
    warnings.warn_explicit("prompt length 9 exceeds the population",
                           UserWarning, ours, 7)
    warnings.warn_explicit("old API", FutureWarning,
                           "/site-packages/jax/x.py", 3)
  assert stream.getvalue().splitlines() == [
      "warning: prompt length 9 exceeds the population"]


def test_log_policy_restores_logging():
  root = logging.getLogger()
  before = (root.handlers[:], root.level)
  tf_logger = logging.getLogger("tensorflow")
  tf_before = (tf_logger.handlers[:], tf_logger.propagate)
  with console.log_policy(stream=io.StringIO()):
    assert isinstance(root.handlers[0], console.UserLineHandler)
  with console.log_policy(verbosity=0, stream=io.StringIO()):
    assert root.level == logging.INFO
  assert (root.handlers, root.level) == before
  assert (tf_logger.handlers, tf_logger.propagate) == tf_before

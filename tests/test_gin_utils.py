"""The T5X-style command line of the binaries: flags, gin files, errors."""

from __future__ import annotations

import os
import types

import gin
import jax
import pytest

import prompt_tuning as pt
from prompt_tuning import gin_paths
from prompt_tuning import gin_utils

CALLS = []  # What the stand-in binary was called with, in order.


@gin.configurable
def gin_utils_test_binary(*, steps: int, name: str = "none",
                          rate: float = 0.0, method=None):
  """A stand-in binary: records its gin-supplied arguments."""
  CALLS.append(dict(steps=steps, name=name, rate=rate, method=method))
  return CALLS[-1]


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  CALLS.clear()
  yield
  gin.clear_config()


def _run(*argv):
  return gin_utils.run(gin_utils_test_binary, list(argv))


def _usage_error(capsys, *argv) -> str:
  """Runs, expects a usage error; returns its one-line message."""
  with pytest.raises(SystemExit) as exit_info:
    _run(*argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "error: " in err, err
  assert not CALLS, "the binary ran despite a usage error"
  return err


def _write(path, text):
  path.write_text(text)
  return path


def test_later_gin_file_overrides_earlier(tmp_path):
  _write(tmp_path / "a.gin",
         "gin_utils_test_binary.steps = 1\ngin_utils_test_binary.rate = 0.5\n")
  _write(tmp_path / "b.gin", "gin_utils_test_binary.steps = 2\n")
  out = _run("--gin_file=a.gin", f"--gin_file={tmp_path / 'b.gin'}",
             f"--gin_search_paths={tmp_path}")
  assert out["steps"] == 2 and out["rate"] == 0.5


def test_gin_flags_become_bindings_after_files(tmp_path):
  _write(tmp_path / "run.gin",
         "STEPS = 1\ngin_utils_test_binary.steps = %STEPS\n"
         "gin_utils_test_binary.name = 'from file'\n")
  out = _run(f"--gin_file={tmp_path / 'run.gin'}", "--gin.STEPS=10",
             # What the shell passes for --gin.gin_utils_test_binary.name=\"..\"
             '--gin.gin_utils_test_binary.name="/tmp/it\'s here"',
             "--gin.gin_utils_test_binary.rate=0.25")
  assert out == dict(steps=10, name="/tmp/it's here", rate=0.25, method=None)


@pytest.mark.parametrize("order, rate", [
    (("--gin_bindings=gin_utils_test_binary.rate = 1.0",
      "--gin.gin_utils_test_binary.rate=2.0"), 2.0),
    (("--gin.gin_utils_test_binary.rate=2.0",
      "--gin_bindings=gin_utils_test_binary.rate = 1.0"), 1.0),
])
def test_bindings_and_gin_flags_apply_in_command_line_order(order, rate):
  out = _run("--gin_bindings=gin_utils_test_binary.steps = 3", *order)
  assert out["steps"] == 3 and out["rate"] == rate


def test_rewrite_gin_args_keeps_other_args_and_value_text():
  rewritten = gin_utils.rewrite_gin_args(
      ["--gin_file=x.gin", "--gin.MODEL_DIR='/a=b'",
       "--gin.train.eval_period=5"])
  assert rewritten == ["--gin_file=x.gin", "--gin_bindings=MODEL_DIR = '/a=b'",
                       "--gin_bindings=train.eval_period = 5"]


def test_t5x_logging_flags_are_accepted():
  assert gin_utils.parse_flags(["--alsologtostderr"]).log_to_stderr
  assert not gin_utils.parse_flags([]).log_to_stderr


def test_search_paths_split_on_commas_and_repeat(tmp_path):
  flags = gin_utils.parse_flags(
      ["--gin_search_paths=/a,/b", "--gin_search_paths", "/c"])
  assert flags.gin_search_paths == ("/a", "/b", "/c")
  paths = gin_utils.gin_search_paths(flags.gin_search_paths)
  assert paths == [".", "/a", "/b", "/c", gin_paths.gin_search_path()]


def test_shipped_gin_files_found_without_flags(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # Not the repository: only the shipped dir.
  out = _run("--gin_file=methods/prompt_tuning.gin", "--gin.PROMPT_LENGTH=7",
             "--gin.gin_utils_test_binary.method=%METHOD",
             "--gin.gin_utils_test_binary.steps=1")
  assert isinstance(out["method"], pt.PromptTuning)
  assert out["method"].length == 7


def test_unknown_parameter_names_binding_and_parameters(capsys):
  err = _usage_error(capsys, "--gin.gin_utils_test_binary.stepz=3")
  assert "'gin_utils_test_binary.stepz = 3'" in err
  assert "no parameter 'stepz'" in err and "steps, name, rate, method" in err


def test_unknown_configurable_names_it(capsys):
  err = _usage_error(capsys, "--gin_bindings=no_such_fn.x = 1")
  assert "'no_such_fn.x = 1'" in err and "No configurable matching" in err


def test_unquoted_string_value_suggests_quotes(capsys):
  err = _usage_error(capsys, "--gin.gin_utils_test_binary.steps=1",
                     "--gin.gin_utils_test_binary.name=/tmp/run")
  assert "--gin.gin_utils_test_binary.name=\"'/tmp/run'\"" in err


def test_missing_gin_file_names_file_search_paths_and_guess(capsys, tmp_path):
  err = _usage_error(capsys, "--gin_file=methods/prompt_tunning.gin",
                     f"--gin_search_paths={tmp_path}")
  assert "methods/prompt_tunning.gin not found" in err
  assert str(tmp_path) in err and gin_paths.gin_search_path() in err
  assert "did you mean methods/prompt_tuning.gin?" in err


def test_missing_file_fails_before_earlier_files_are_parsed(capsys, tmp_path):
  # The first file's import would register a configurable; a typo in the
  # second must stop the run before any of that happens.
  _write(tmp_path / "a.gin", "import no_such_module_xyz\n")
  err = _usage_error(capsys, f"--gin_file={tmp_path / 'a.gin'}",
                     "--gin_file=missing.gin")
  assert "missing.gin not found" in err


def test_failed_import_in_gin_file_names_file_and_line(capsys, tmp_path):
  bad = _write(tmp_path / "bad.gin", "\nimport no_such_module_xyz\n")
  err = _usage_error(capsys, f"--gin_file={bad}")
  assert f"({bad}, line 2)" in err and "no_such_module_xyz" in err


def test_gin_file_syntax_error_names_file_and_line(capsys, tmp_path):
  bad = _write(tmp_path / "bad.gin", "gin_utils_test_binary.steps = 1\n"
               "gin_utils_test_binary.name = /x\n")
  err = _usage_error(capsys, f"--gin_file={bad}")
  assert f"gin file {bad}:" in err and "line 2" in err


def test_unset_model_config_macro_suggests_model_files(capsys):
  err = _usage_error(capsys, "--gin.gin_utils_test_binary.steps=1",
                     "--gin.gin_utils_test_binary.method=%MODEL_CONFIG")
  assert "macro MODEL_CONFIG is used by gin_utils_test_binary.method" in err
  assert "--gin_file=models/<name>.gin" in err
  assert "models/from_checkpoint.gin" in err


def test_unset_macro_suggests_gin_flag(capsys):
  err = _usage_error(capsys, "--gin_bindings=gin_utils_test_binary.steps = %S")
  assert "macro S is used by gin_utils_test_binary.steps" in err
  assert "--gin.S=VALUE" in err


def test_required_macro_not_overridden(capsys):
  err = _usage_error(capsys, "--gin_bindings=S = %gin.REQUIRED",
                     "--gin_bindings=gin_utils_test_binary.steps = %S")
  assert "macro S is required" in err and "--gin.S=VALUE" in err


def test_unbound_binary_argument(capsys):
  err = _usage_error(capsys)
  assert "gin_utils_test_binary.steps is not set" in err


def test_usage_error_from_binary_is_one_line_exit_2(capsys):
  @gin.configurable
  def gin_utils_test_failing():
    raise gin_utils.UsageError("MODEL_DIR holds another run:\npick a new one")

  with pytest.raises(SystemExit) as exit_info:
    gin_utils.run(gin_utils_test_failing, [])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.endswith(
      "error: MODEL_DIR holds another run: pick a new one\n")


@pytest.mark.parametrize("argv, expected", [
    (["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
    (["run.gin"], "unexpected argument 'run.gin'"),
    (["--gin.STEPS"], "'--gin.STEPS' has no value"),
    (["--process_index=1"], "need --coordinator_address"),
    (["--coordinator_address=h:1", "--process_count=2", "--process_index=2"],
     "--process_index=2 must be below --process_count=2"),
])
def test_bad_flags(capsys, argv, expected):
  assert expected in _usage_error(capsys, *argv)


def test_help_lists_flags(capsys):
  with pytest.raises(SystemExit) as exit_info:
    _run("--help")
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  for flag in ("--gin_file", "--gin_bindings", "--gin_search_paths",
               "--tfds_data_dir", "--coordinator_address", "--process_count",
               "--process_index", "--gin.NAME=VALUE"):
    assert flag in out
  assert "A stand-in binary" in out and not CALLS


def _fake_seqio(monkeypatch):
  calls = []
  fake = types.ModuleType("seqio")
  fake.set_tfds_data_dir_override = calls.append
  monkeypatch.setitem(__import__("sys").modules, "seqio", fake)
  return calls


def test_tfds_data_dir_sets_seqio_override(monkeypatch, tmp_path):
  calls = _fake_seqio(monkeypatch)
  _run("--gin.gin_utils_test_binary.steps=1", f"--tfds_data_dir={tmp_path}")
  assert calls == [str(tmp_path)]


def test_no_tfds_data_dir_leaves_seqio_alone(monkeypatch):
  calls = _fake_seqio(monkeypatch)
  _run("--gin.gin_utils_test_binary.steps=1")
  assert not calls


def test_coordinator_flags_initialize_distributed_before_gin(monkeypatch):
  events = []
  monkeypatch.setattr(
      jax.distributed, "initialize",
      lambda **kwargs: events.append(("initialize", kwargs)))
  monkeypatch.setattr(gin_utils, "parse_gin",
                      lambda *a: events.append(("parse_gin",)) or
                      gin.parse_config("gin_utils_test_binary.steps = 1"))
  _run("--coordinator_address=10.0.0.1:1234", "--process_count=2",
       "--process_index=1")
  assert events == [
      ("initialize", dict(coordinator_address="10.0.0.1:1234",
                          num_processes=2, process_id=1)),
      ("parse_gin",)]
  assert CALLS


def test_single_process_does_not_initialize_distributed(monkeypatch):
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda **kwargs: pytest.fail("initialize called"))
  assert not gin_utils.initialize_distributed(None, None, None)


def test_rejected_process_flags_are_a_usage_error(monkeypatch):
  def initialize(**kwargs):
    raise ValueError("Number of processes must be defined.")

  monkeypatch.setattr(jax.distributed, "initialize", initialize)
  with pytest.raises(gin_utils.UsageError, match="--process_count=N"):
    gin_utils.initialize_distributed("h:1", None, None)


def test_write_config_then_operative_config(tmp_path):
  # A file's macro that nothing reads is kept in config.gin (a --gin one is
  # refused: test_bad_input.py).
  extra = tmp_path / "extra.gin"
  extra.write_text("unused_macro = 'x'\n")
  _run("--gin_bindings=gin_utils_test_binary.steps = 4",
       f"--gin_file={extra}")
  model_dir = tmp_path / "run"
  path = gin_utils.write_config(str(model_dir))
  assert path == str(model_dir / "config.gin")
  assert "unused_macro" in (model_dir / "config.gin").read_text()
  gin_utils.write_operative_config(str(model_dir))
  text = (model_dir / "config.gin").read_text()
  assert "gin_utils_test_binary.steps = 4" in text
  assert "unused_macro" not in text  # Only what the run used.
  assert os.listdir(model_dir) == ["config.gin"]  # No temp files left.


def test_write_config_is_atomic(tmp_path, monkeypatch):
  gin.parse_config("gin_utils_test_binary.steps = 4")
  (tmp_path / "config.gin").write_text("old")

  def fail(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", fail)
  with pytest.raises(OSError, match="disk full"):
    gin_utils.write_config(str(tmp_path))
  assert (tmp_path / "config.gin").read_text() == "old"
  assert os.listdir(tmp_path) == ["config.gin"]


def test_write_config_only_on_process_0(tmp_path, monkeypatch):
  gin.parse_config("gin_utils_test_binary.steps = 4")
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  assert gin_utils.write_config(str(tmp_path / "run")) is None
  assert gin_utils.write_operative_config(str(tmp_path / "run")) is None
  assert not (tmp_path / "run").exists()

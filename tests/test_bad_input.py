"""Bad input to the binaries, as a new user types it: each case exits with a
non-zero status, prints exactly one line that names the bad value and the
fix, and leaves no file behind or changed. Then what must survive an
interruption: Ctrl-C and SIGTERM (one line; SIGTERM saves the step first),
a damaged newest checkpoint, a kill between a checkpoint and its export,
and metric rows logged twice.

The binaries run in this process through the same entry point as the
command line (`gin_utils.run(<binary>)`), so one import of TensorFlow and
JAX serves every case; the signal cases run real subprocesses.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import gin
import numpy as np
import pytest

from prompt_tuning import eval as eval_lib
from prompt_tuning import gin_utils
from prompt_tuning import train as train_lib

import test_binaries
from test_binaries import LENGTHS, files_under, train_flags


def _task_module(name: str, inputs: str, targets: str) -> str:
  """A module registering a copy-like task `name` whose every split holds
  the examples of the two Python literals (lists of bytes)."""
  return f'''
import seqio, tensorflow as tf
import seqio_test_tasks
from prompt_tuning.tasks import metrics
if "{name}" not in seqio.TaskRegistry.names():
  seqio.TaskRegistry.add(
      "{name}",
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None:
              tf.data.Dataset.from_tensor_slices(
                  {{"inputs": tf.constant({inputs}, tf.string),
                    "targets": tf.constant({targets}, tf.string)}}),
          splits=("train", "validation")),
      preprocessors=[seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features={{k: seqio.Feature(seqio_test_tasks.VOCABULARY)
                       for k in ("inputs", "targets")}},
      metric_fns=[metrics.accuracy])
'''


# Latin-1 text (0xe9 is "é" there, not UTF-8), and no examples at all.
LATIN1_TASK_MODULE = _task_module(
    "pt_test_latin1", "[b'copy: caf\\xe9'] * 16", "[b'caf\\xe9'] * 16")
EMPTY_TASK_MODULE = _task_module("pt_test_empty", "[]", "[]")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
  return test_binaries._orbax_base(tmp_path_factory.mktemp("bad_base"),
                                   test_binaries.TINY)


@pytest.fixture(autouse=True)
def _fresh_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def run_binary(main_fn, argv, capfd) -> tuple[int, list[str]]:
  """(exit status, the non-empty stderr lines) of one in-process run."""
  capfd.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    gin_utils.run(main_fn, list(argv))
  err = capfd.readouterr().err
  # In-process, TensorFlow's own C++ start-up lines reach the same stderr
  # (the command line filters them: test_binaries.py checks that).
  return exit_info.value.code, [
      line for line in err.splitlines()
      if line and not test_binaries._NOT_OURS.search(line)]


def snapshot(path) -> dict[str, bytes]:
  path = pathlib.Path(path)
  return {name: (path / name).read_bytes() for name in files_under(path)
          if (path / name).is_file()}


def _replace(flags, name, value):
  """train_flags with --gin.NAME set to value (replaced, not added)."""
  prefix = f"--gin.{name}="
  return [f for f in flags if not f.startswith(prefix)] + [prefix + value]


def _changed(flags, change) -> list[str]:
  """flags with a case's change: {NAME: value} replaces --gin.NAME, a list
  adds flags."""
  flags = list(flags)
  if isinstance(change, dict):
    for name, value in change.items():
      flags = _replace(flags, name, value)
    return flags
  return flags + list(change)


# (case id, flags to change as {NAME: value} or extra flags, what the line
# must contain). MODEL_DIR is a fresh path unless the case sets it.
TRAIN_CASES = [
    ("macro_typo", ["--gin.TRAIN_STEP=2"], "did you mean --gin.TRAIN_STEPS"),
    ("macro_lower_case", ["--gin.train_steps=2"], "train_steps"),
    ("steps_text", {"TRAIN_STEPS": "'ten'"}, "TRAIN_STEPS='ten'"),
    ("steps_zero", {"TRAIN_STEPS": "0"}, "TRAIN_STEPS=0"),
    ("steps_negative", {"TRAIN_STEPS": "-5"}, "TRAIN_STEPS=-5"),
    ("steps_float", {"TRAIN_STEPS": "10.5"}, "TRAIN_STEPS=10.5"),
    ("lengths_int", {"TASK_FEATURE_LENGTHS": "128"},
     "TASK_FEATURE_LENGTHS=128"),
    ("lengths_zero", {"TASK_FEATURE_LENGTHS": "{'inputs': 0, 'targets': 4}"},
     "TASK_FEATURE_LENGTHS"),
    ("lengths_missing_feature", {"TASK_FEATURE_LENGTHS": "{'inputs': 24}"},
     "no length for the features"),
    ("batch_zero", {"BATCH_SIZE": "0"}, "BATCH_SIZE=0"),
    ("batch_float", {"BATCH_SIZE": "16.5"}, "BATCH_SIZE=16.5"),
    ("batch_text", {"BATCH_SIZE": "'8'"}, "BATCH_SIZE='8'"),
    ("lr_huge", ["--gin.adafactor.learning_rate=1e30"], "1e+30"),
    ("lr_negative", ["--gin.adafactor.learning_rate=-0.1"], "-0.1"),
    ("lr_zero", ["--gin.adafactor.learning_rate=0"], "learning_rate=0"),
    ("lr_infinite", ["--gin.adafactor.learning_rate=1e999"], "inf"),
    ("lr_text", ["--gin.adafactor.learning_rate='fast'"], "'fast'"),
    ("eval_period_zero", ["--gin.train.eval_period=0"], "eval_period=0"),
    ("checkpoint_period_text", ["--gin.train.checkpoint_period='10'"],
     "checkpoint_period='10'"),
    ("keep_checkpoints_zero", ["--gin.train.keep_checkpoints=0"],
     "keep_checkpoints=0"),
    ("microbatches_zero", ["--gin.train.num_microbatches=0"],
     "num_microbatches=0"),
    ("unknown_option", ["--gin.train.no_such_option=3"], "no_such_option"),
    ("unquoted_string", {"MODEL_DIR": "/tmp/unquoted"}, "MODEL_DIR"),
    ("binding_without_value", ["--gin.TRAIN_STEPS"], "--gin.TRAIN_STEPS"),
    ("unknown_flag", ["--gin_fiel=runs/prompt_finetune.gin"], "gin_fiel"),
    ("gin_file_typo", ["--gin_file=runs/prompt_finetun.gin"],
     "did you mean runs/prompt_finetune.gin"),
    ("unknown_task", {"MIXTURE_OR_TASK_NAME": "'pt_test_cpy'"},
     "pt_test_cpy"),
    ("task_name_empty", {"MIXTURE_OR_TASK_NAME": "''"},
     "MIXTURE_OR_TASK_NAME=''"),
    ("missing_base", {"INITIAL_CHECKPOINT_PATH": "'/nonexistent/base'"},
     "/nonexistent/base"),
    ("unreachable_gs_base",
     {"INITIAL_CHECKPOINT_PATH": "'gs://no-network-bucket/base'"},
     "cannot reach storage.googleapis.com"),
    ("model_dir_in_proc", {"MODEL_DIR": "'/proc/prompt_tuning_run'"},
     "not writable"),
]


@pytest.mark.parametrize("case,change,expected", TRAIN_CASES,
                         ids=[c[0] for c in TRAIN_CASES])
def test_train_bad_input_is_one_line_and_writes_nothing(
    base, tmp_path, capfd, case, change, expected):
  model_dir = tmp_path / "run"
  flags = _changed(train_flags(base, model_dir), change)
  status, lines = run_binary(train_lib.train, flags, capfd)
  assert status in (1, 2), (case, lines)
  assert len(lines) == 1 and "error" in lines[0], (case, lines)
  assert expected in lines[0], (case, lines)
  assert not model_dir.exists(), files_under(model_dir)


def test_model_dir_that_is_a_file_or_under_a_file(base, tmp_path, capfd):
  blocker = tmp_path / "blocker"
  blocker.write_text("keep me")
  for model_dir, expected in ((blocker, "is a file"),
                              (blocker / "run", "cannot be created")):
    flags = _replace(list(train_flags(base, model_dir)), "MODEL_DIR",
                     f"'{model_dir}'")
    status, lines = run_binary(train_lib.train, flags, capfd)
    assert status == 1 and len(lines) == 1 and expected in lines[0], lines
    assert blocker.read_text() == "keep me"


def test_an_empty_task_fails_before_model_dir(base, tmp_path, capfd,
                                              monkeypatch):
  (tmp_path / "empty_task_module.py").write_text(EMPTY_TASK_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  model_dir = tmp_path / "run"
  flags = _replace(list(train_flags(base, model_dir)),
                   "MIXTURE_OR_TASK_NAME", "'pt_test_empty'")
  flags = _replace(flags, "MIXTURE_OR_TASK_MODULE", "'empty_task_module'")
  status, lines = run_binary(train_lib.train, flags, capfd)
  assert status == 1 and len(lines) == 1, lines
  assert "'pt_test_empty' gives no 'train' examples" in lines[0]
  assert not model_dir.exists()


def test_a_relative_gin_path_works_as_a_config(monkeypatch):
  """config="gin/runs/demo.gin" from the repository root: a path that
  exists is read as it is, whatever gin's search paths hold."""
  from prompt_tuning.checkpoints import loader  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(test_binaries.TESTS.parent)
  gin_utils.parse_gin([], [], ())  # search paths as a binary sets them
  assert loader.resolve_config("gin/runs/demo.gin").vocab_size == 259


def test_a_latin1_task_fails_before_training(base, tmp_path, capfd,
                                            monkeypatch):
  """Its text would fail only at the first evaluation, after training."""
  (tmp_path / "latin1_task_module.py").write_text(LATIN1_TASK_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  model_dir = tmp_path / "run"
  flags = _changed(train_flags(base, model_dir), {
      "MIXTURE_OR_TASK_NAME": "'pt_test_latin1'",
      "MIXTURE_OR_TASK_MODULE": "'latin1_task_module'"})
  status, lines = run_binary(train_lib.train, flags, capfd)
  assert status == 1 and len(lines) == 1, lines
  assert ("task 'pt_test_latin1', split 'validation', example 0: field "
          "'inputs_pretokenized' is not UTF-8" in lines[0]), lines
  assert "byte 0xe9" in lines[0] and not model_dir.exists()


def test_eval_output_dir_unwritable_fails_before_evaluating(base, tmp_path,
                                                            capfd):
  flags = test_binaries.eval_flags(base, tmp_path / "no_run",
                                   "/proc/prompt_tuning_eval")
  status, lines = run_binary(eval_lib.evaluate, flags, capfd)
  assert status == 1 and len(lines) == 1, lines
  assert "EVAL_OUTPUT_DIR" in lines[0] and "not writable" in lines[0]


# ----------------------------------------------------------------------------
# A finished 4-step run, and what resuming it wrongly does.


@pytest.fixture(scope="module")
def finished_run(base, tmp_path_factory) -> pathlib.Path:
  model_dir = tmp_path_factory.mktemp("finished") / "run"
  gin.clear_config()
  gin_utils.run(train_lib.train, list(train_flags(base, model_dir)))
  gin.clear_config()
  return model_dir


RESUME_CASES = [
    ("past_train_steps", {"TRAIN_STEPS": "2"},
     "already holds checkpoint_4, past TRAIN_STEPS=2"),
    ("other_prompt_length", {"PROMPT_LENGTH": "5"},
     "prompt/prompt of shape (4, 16)"),
    ("other_method", ["--gin_file=methods/prefix_tuning.gin"],
     "this run's METHOD (PrefixTuning)"),
]


@pytest.mark.parametrize("case,change,expected", RESUME_CASES,
                         ids=[c[0] for c in RESUME_CASES])
def test_a_run_that_cannot_resume_is_refused_and_left_as_it_was(
    base, finished_run, capfd, case, change, expected):
  before = snapshot(finished_run)
  flags = _changed(train_flags(base, finished_run), change)
  status, lines = run_binary(train_lib.train, flags, capfd)
  assert status == 1 and len(lines) == 1, (case, lines)
  assert expected in lines[0], (case, lines)
  assert snapshot(finished_run) == before


def _damage(checkpoint: pathlib.Path) -> None:
  for path in (checkpoint / "params").rglob("*"):
    if path.is_file() and path.stat().st_size > 64:
      path.write_bytes(path.read_bytes()[:16])  # truncated data files


@pytest.mark.parametrize("case", ["damaged_checkpoint", "other_prompt_length"])
def test_eval_of_a_checkpoint_it_cannot_use_is_one_line(
    base, finished_run, tmp_path, capfd, case):
  run = _copy_run(finished_run, tmp_path / "run")
  flags = list(test_binaries.eval_flags(base, run / "checkpoint_4",
                                        tmp_path / "eval"))
  if case == "damaged_checkpoint":
    _damage(run / "checkpoint_4")
    expected = "cannot be read"
  else:
    flags = _replace(flags, "PROMPT_LENGTH", "5")
    expected = "prompt/prompt (4, 16)"
  status, lines = run_binary(eval_lib.evaluate, flags, capfd)
  assert status == 1 and len(lines) == 1 and expected in lines[0], lines
  assert not (tmp_path / "eval").exists()


def _copy_run(source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(source, target)
  return target


def _metric_steps(path: pathlib.Path) -> list[int]:
  return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_resume_repairs_what_a_kill_left(base, finished_run, tmp_path, capfd):
  """A kill between checkpoint_4's commit and its export, after metric rows
  past the newest checkpoint were logged: continuing to 6 steps writes the
  missing export and keeps each step's row once."""
  run = _copy_run(finished_run, tmp_path / "run")
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(run / "numpy_checkpoints" / "checkpoint_4")
  rows = (run / "train" / "metrics.jsonl")
  rows.write_text(rows.read_text() + json.dumps({"step": 5, "loss": 1.0})
                  + "\n" + '{"step": 6, "lo')  # cut off mid-write
  flags = _replace(list(train_flags(base, run)), "TRAIN_STEPS", "6")
  gin_utils.run(train_lib.train, flags)
  assert (run / "numpy_checkpoints" / "checkpoint_4" / "prompt.npy").is_file()
  assert (run / "numpy_checkpoints" / "checkpoint_6" / "prompt.npy").is_file()
  steps = _metric_steps(rows)
  assert steps == sorted(set(steps)) and steps[-1] == 6, steps


def test_a_damaged_newest_checkpoint_is_set_aside(base, finished_run,
                                                 tmp_path, capfd):
  run = _copy_run(finished_run, tmp_path / "run")
  _damage(run / "checkpoint_4")
  flags = _replace(list(train_flags(base, run)), "TRAIN_STEPS", "6")
  capfd.readouterr()
  gin_utils.run(train_lib.train, flags)
  err = capfd.readouterr().err
  assert "checkpoint_4" in err and "resuming from the previous" in err, err
  assert (run / "checkpoint_4.corrupt").is_dir()  # kept, not deleted
  assert (run / "checkpoint_6").is_dir() and (run / "checkpoint_2").is_dir()


def test_a_changed_learning_rate_takes_effect_on_resume(base, finished_run,
                                                       tmp_path, capfd):
  run = _copy_run(finished_run, tmp_path / "run")
  flags = _replace(list(train_flags(base, run)), "TRAIN_STEPS", "6")
  flags.append("--gin.adafactor.learning_rate=0.05")
  capfd.readouterr()
  gin_utils.run(train_lib.train, flags)
  err = capfd.readouterr().err
  assert "learning_rate changed on resume" in err and "0.05" in err, err
  lines = (run / "train" / "metrics.jsonl").read_text().splitlines()
  assert json.loads(lines[-1])["learning_rate"] == pytest.approx(0.05)


# ----------------------------------------------------------------------------
# Signals: real subprocesses.


def _start(flags) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=str(test_binaries.TESTS),
             JAX_PLATFORMS="cpu")
  for name in ("PROMPT_TUNING_TRACEBACK", "PROMPT_TUNING_RAW_LOGS"):
    env.pop(name, None)
  return subprocess.Popen(
      [sys.executable, "-m", "prompt_tuning.train", *flags], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(model_dir: pathlib.Path, process, step: int,
                         timeout: float = 240) -> None:
  deadline = time.time() + timeout
  while not (model_dir / f"checkpoint_{step}").is_dir():
    assert process.poll() is None, process.communicate()
    assert time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.2)


@pytest.mark.parametrize("signum,status,expected", [
    (signal.SIGINT, 130, "interrupted at step"),
    (signal.SIGTERM, 143, "stopped by SIGTERM at step"),
])
def test_a_signal_mid_run_is_one_line_and_the_run_resumes(
    base, tmp_path, signum, status, expected):
  model_dir = tmp_path / "run"
  # Far more steps than the run can take before the signal: a tiny model
  # runs hundreds of steps a second, and on a loaded machine a 400-step run
  # once finished before the signal reached it.
  flags = _replace(list(train_flags(base, model_dir, steps=100_000)),
                   "train.checkpoint_period", "50")
  process = _start(flags)
  _wait_for_checkpoint(model_dir, process, 50)
  process.send_signal(signum)
  _, stderr = process.communicate(timeout=240)
  lines = [line for line in stderr.splitlines()  # minus progress lines
           if line and not test_binaries._NOT_OURS.search(line)
           and not line.startswith("step ")]
  assert process.returncode == status, stderr
  assert len(lines) == 1 and expected in lines[0], stderr
  assert "rerun the same command" in lines[0]
  steps = sorted(int(p.name.split("_")[1]) for p in
                 model_dir.glob("checkpoint_*"))
  if signum == signal.SIGTERM:  # The step it stopped at was saved.
    stopped = int(lines[0].split("at step ")[1].split(":")[0])
    assert steps[-1] == stopped
    assert (model_dir / "numpy_checkpoints" / f"checkpoint_{stopped}").is_dir()
  assert steps and steps[0] == 50


# ----------------------------------------------------------------------------
# The kill harness: 20 SIGKILLs, then the state of an uninterrupted run.

KILL_STEPS = 400


def _kill_flags(base, model_dir):
  flags = _replace(list(train_flags(base, model_dir, steps=KILL_STEPS)),
                   "train.checkpoint_period", "4")
  return _replace(flags, "train.eval_period", str(KILL_STEPS))


def _run_to_end(flags, moment="none", step=0) -> int:
  env = dict(os.environ, PYTHONPATH=str(test_binaries.TESTS),
             JAX_PLATFORMS="cpu")
  wrapper = str(test_binaries.TESTS / "kill_wrapper.py")
  return subprocess.run(
      [sys.executable, wrapper, moment, str(step), "--", *flags], env=env,
      capture_output=True, text=True, timeout=600, check=False).returncode


def _newest(model_dir: pathlib.Path) -> int:
  steps = [int(p.name.split("_")[1]) for p in model_dir.glob("checkpoint_*")
           if p.is_dir() and p.name.split("_")[1].isdigit()]
  return max(steps, default=0)


def _restored(path: pathlib.Path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(np.asarray, ocp.StandardCheckpointer().restore(path))


@pytest.mark.slow
def test_twenty_kills_end_where_an_uninterrupted_run_ends(base, tmp_path):
  """SIGKILL at 20 moments: 6 planted (3 mid-save, 3 between a checkpoint's
  commit and its export) and 14 from outside at random times, each after
  the run made progress. Every restart resumes; at the end the prompt and
  optimizer state are bit-identical to an uninterrupted run's, every
  committed checkpoint has its export, and each metric file holds each
  step once."""
  reference = tmp_path / "reference"
  assert _run_to_end(_kill_flags(base, reference)) == 0
  run = tmp_path / "killed"
  flags = _kill_flags(base, run)
  rng = np.random.default_rng(0)
  planted = [("save", 8), ("export", 12), ("save", 20), ("export", 24),
             ("save", 32), ("export", 36)]
  kills = 0
  for moment, step in planted:
    assert _run_to_end(flags, moment, step) == -signal.SIGKILL
    kills += 1
  while kills < 20:
    process = _start(flags)
    start = _newest(run)
    while _newest(run) <= start and process.poll() is None:
      time.sleep(0.05)
    time.sleep(float(rng.uniform(0.0, 0.3)))
    if process.poll() is not None:
      break
    process.send_signal(signal.SIGKILL)
    process.communicate()
    kills += 1
  assert kills == 20, f"the run finished after {kills} kills"
  assert _run_to_end(flags) == 0  # The last restart finishes the run.
  final = f"checkpoint_{KILL_STEPS}"
  assert ((run / "numpy_checkpoints" / final / "prompt.npy").read_bytes()
          == (reference / "numpy_checkpoints" / final / "prompt.npy"
              ).read_bytes())
  for item in ("params", "opt_state"):
    got, want = _restored(run / final / item), _restored(
        reference / final / item)
    assert jax_tree_equal(got, want), item
  committed = sorted(p.name for p in run.glob("checkpoint_*")
                     if p.is_dir() and p.name.split("_")[1].isdigit())
  exported = sorted(p.name for p in (run / "numpy_checkpoints").iterdir())
  assert committed == exported, (committed, exported)
  for path in [run / "train" / "metrics.jsonl",
               *run.glob("*/metrics.jsonl"),
               *run.glob("inference_eval/*-metrics.jsonl")]:
    steps = _metric_steps(path)
    assert steps == sorted(set(steps)), (path, steps)
  assert _metric_steps(run / "train" / "metrics.jsonl") == list(
      range(1, KILL_STEPS + 1))


def jax_tree_equal(a, b) -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  return tree_a == tree_b and all(
      np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))

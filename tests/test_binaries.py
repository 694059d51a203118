"""The binaries from the command line, as a T5X user runs them.

`python -m prompt_tuning.train|eval|infer` with the shipped gin files, on a
tiny Orbax base (it stores its architecture: models/from_checkpoint.gin)
and the tiny seqio tasks of `seqio_test_tasks` (imported through
MIXTURE_OR_TASK_MODULE). Also: bad input gives one line and no files, and
two processes (`jax.distributed`, gloo on CPU) train like one.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import random_checkpoint
from prompt_tuning.checkpoints import orbax_params
from prompt_tuning.models import configs

TESTS = pathlib.Path(__file__).resolve().parent
LENGTHS = "{'inputs': 24, 'targets': 12}"

TINY = pt.TransformerConfig(
    architecture="encoder_decoder", vocab_size=264, emb_dim=16, num_heads=4,
    head_dim=4, mlp_dim=32, num_encoder_layers=2, num_decoder_layers=2,
    mlp_activations=("gelu", "linear"), norm="rms",
    relative_attention_num_buckets=8, relative_attention_max_distance=16)


# A GPT-2 whose 39-row position table cannot hold a 4-row prompt with 24
# input and 12 target tokens.
SHORT_GPT2 = configs.gpt2("small", vocab_size=264, emb_dim=16, num_heads=2,
                          head_dim=8, mlp_dim=32, num_decoder_layers=1,
                          max_position_embeddings=39)


def _orbax_base(directory, config) -> str:
  path = str(directory / "base")
  orbax_params.save_params(path, random_checkpoint.random_params(config),
                           config)
  return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
  return _orbax_base(tmp_path_factory.mktemp("orbax_base"), TINY)


def binary(name: str, *flags: str, devices: int = 1, check: bool = True,
           timeout: int = 300) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(TESTS), JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  for name_ in ("PROMPT_TUNING_TRACEBACK", "PROMPT_TUNING_RAW_LOGS",
                "TF_CPP_MIN_LOG_LEVEL"):
    env.pop(name_, None)
  result = subprocess.run(
      [sys.executable, "-m", f"prompt_tuning.{name}", *flags], env=env,
      capture_output=True, text=True, timeout=timeout, check=False)
  if check and result.returncode:
    raise AssertionError(f"{name} failed ({result.returncode}):\n"
                         f"{result.stdout}\n{result.stderr}")
  return result


def train_flags(base: str, model_dir, *extra: str, steps: int = 4):
  return (
      "--gin_file=models/from_checkpoint.gin",
      "--gin_file=methods/prompt_tuning.gin",
      "--gin_file=runs/prompt_finetune.gin",
      "--gin.PROMPT_LENGTH=4",
      "--gin.MIXTURE_OR_TASK_NAME='pt_test_copy'",
      "--gin.MIXTURE_OR_TASK_MODULE='seqio_test_tasks'",
      f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
      f"--gin.TRAIN_STEPS={steps}",
      "--gin.BATCH_SIZE=8",
      f"--gin.MODEL_DIR='{model_dir}'",
      f"--gin.INITIAL_CHECKPOINT_PATH='{base}'",
      "--gin.train.eval_period=4", "--gin.train.checkpoint_period=2",
      "--gin.train.log_period=1",
      *extra)


def eval_flags(base: str, checkpoint, output_dir, *extra: str):
  return (
      "--gin_file=models/from_checkpoint.gin",
      "--gin_file=methods/prompt_tuning.gin",
      "--gin_file=runs/prompt_eval.gin",
      "--gin.PROMPT_LENGTH=4",
      "--gin.MIXTURE_OR_TASK_NAME='pt_test_copy'",
      "--gin.MIXTURE_OR_TASK_MODULE='seqio_test_tasks'",
      f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
      "--gin.BATCH_SIZE=8",
      f"--gin.INITIAL_CHECKPOINT_PATH='{base}'",
      f"--gin.CHECKPOINT_PATH='{checkpoint}'",
      f"--gin.EVAL_OUTPUT_DIR='{output_dir}'",
      *extra)


def infer_flags(base: str, checkpoint, output_dir, *extra: str):
  flags = [f.replace("runs/prompt_eval.gin", "runs/prompt_infer.gin")
           for f in eval_flags(base, checkpoint, output_dir)
           if not f.startswith("--gin.EVAL_OUTPUT_DIR")]
  return (*flags, f"--gin.INFER_OUTPUT_DIR='{output_dir}'",
          "--gin.DatasetConfig.split='validation'", *extra)


@pytest.fixture(scope="module")
def train_run(base, tmp_path_factory
              ) -> tuple[pathlib.Path, subprocess.CompletedProcess]:
  model_dir = tmp_path_factory.mktemp("cli") / "run"
  return model_dir, binary("train", *train_flags(base, model_dir))


@pytest.fixture(scope="module")
def trained(train_run) -> pathlib.Path:
  model_dir, result = train_run
  assert "== train" in result.stdout and "== done: step 4" in result.stdout
  return model_dir


# What a binary must not print: C++ log lines (absl/glog format, absl's
# pre-InitializeLog notice), Python library log records, TF/CUDA chatter.
_NOT_OURS = re.compile(
    r"^([IWEF]\d{4} |WARNING: All log messages before|WARNING:absl|"
    r"WARNING:tensorflow)|cuda|oneDNN|FunctionDataset|tensorflow",
    re.IGNORECASE)


def our_stderr(result: subprocess.CompletedProcess) -> list[str]:
  return [line for line in result.stderr.strip().splitlines() if line]


def test_a_run_prints_only_its_screens(train_run):
  """No TensorFlow, CUDA or absl lines: the start screen, progress lines,
  the end screen and our own one-line notes only."""
  _, result = train_run
  lines = result.stdout.splitlines() + result.stderr.splitlines()
  assert not [line for line in lines if _NOT_OURS.search(line)], (
      result.stdout + result.stderr)
  assert all(line.startswith(("step ", "note: ")) for line in
             our_stderr(result)), result.stderr


def test_verbosity_brings_the_raw_logs_back(base, tmp_path):
  result = binary("train", *train_flags(base, tmp_path / "run", steps=1),
                  "--verbosity=0")
  assert "Gin config:" in result.stderr  # An INFO record, raw.


def files_under(path) -> list[str]:
  path = pathlib.Path(path)
  return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if (
      path.exists()) else []


def test_train_writes_a_t5x_style_model_dir(trained):
  names = files_under(trained)
  for expected in ("config.gin", "model_info.json", "checkpoint_2",
                   "checkpoint_4", "numpy_checkpoints/checkpoint_4/prompt.npy",
                   "train/metrics.jsonl", "training_eval/metrics.jsonl"):
    assert expected in names, names
  assert any(n.startswith("train/events.out.tfevents") for n in names)
  assert any(n.startswith("inference_eval/") for n in names), names
  # The operative config records what ran, e.g. the prompt length.
  config = (trained / "config.gin").read_text()
  assert "PromptTuning.length = 4" in config or "PROMPT_LENGTH = 4" in config
  assert len(np.load(trained / "numpy_checkpoints" / "checkpoint_4" /
                     "prompt.npy")) == 4


def test_eval_and_infer_on_the_trained_prompt(base, trained, tmp_path):
  for source in (trained, trained / "numpy_checkpoints" / "checkpoint_4" /
                 "prompt.npy"):
    out = tmp_path / f"eval_{source.name}"
    result = binary("eval", *eval_flags(base, source, out))
    assert "sequence_accuracy" in result.stdout
    assert any("metrics" in n and n.endswith(".jsonl")
               for n in files_under(out)), files_under(out)
  out = tmp_path / "infer"
  binary("infer", *infer_flags(base, trained, out))
  [path] = [p for p in pathlib.Path(out).glob("*.jsonl")]
  records = [json.loads(line) for line in path.read_text().splitlines()]
  assert len(records) == 16  # the whole validation split
  for record in records:
    assert record["inputs"].startswith("copy: ")
    assert set(record) >= {"inputs", "targets", "outputs"}


@pytest.mark.parametrize("case", [
    "unknown_binding", "missing_checkpoint", "unknown_task",
    "lengths_over_budget"])
def test_bad_input_is_one_line_and_writes_nothing(base, tmp_path, case):
  model_dir = tmp_path / "run"
  extra, expected = {
      "unknown_binding": (["--gin.train.no_such_option=3"],
                          "no_such_option"),
      "missing_checkpoint": (
          [f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path}/nowhere'"],
          "nowhere"),
      "unknown_task": (["--gin.MIXTURE_OR_TASK_NAME='pt_test_cpy'"],
                       "pt_test_cpy"),
      "lengths_over_budget": (
          ["--gin.INITIAL_CHECKPOINT_PATH="
           f"'{_orbax_base(tmp_path, SHORT_GPT2)}'"], "39"),
  }[case]
  result = binary("train", *train_flags(base, model_dir, *extra),
                  check=False)
  assert result.returncode in (1, 2), result.stderr
  lines = our_stderr(result)
  assert len(lines) == 1 and "error" in lines[0] and expected in lines[0], (
      result.stderr)
  assert not model_dir.exists()


def test_wrong_prompt_shape_is_one_line_and_writes_nothing(base, tmp_path):
  prompt = tmp_path / "prompt.npy"
  np.save(prompt, np.zeros((5, 16), np.float32))
  out = tmp_path / "eval"
  result = binary("eval", *eval_flags(base, prompt, out), check=False)
  assert result.returncode in (1, 2)
  lines = our_stderr(result)
  assert len(lines) == 1 and "(5, 16)" in lines[0] and "(4, 16)" in lines[0]
  assert files_under(out) == []


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one(base, tmp_path):
  """jax.distributed with gloo on CPU: 2 processes x 2 devices vs 1 x 4.

  Unshuffled, each process reads every other example, so the global batch
  holds the same examples as the single process's (rows in another order).
  """
  common = ("--gin.train/DatasetConfig.shuffle=False",
            "--gin.train.train_eval_dataset_cfg=None",
            "--gin.train.infer_eval_dataset_cfg=None")
  single = binary("train", *train_flags(base, tmp_path / "one", *common,
                                        steps=3), devices=4)
  del single
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=str(TESTS), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             TF_CPP_MIN_LOG_LEVEL="3")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "prompt_tuning.train",
       *train_flags(base, tmp_path / "two", *common, steps=3),
       f"--coordinator_address=localhost:{port}", "--process_count=2",
       f"--process_index={i}"], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, f"{out}\n{err}"
  assert "2 processes" in outputs[0][0]

  def losses(run):
    path = tmp_path / run / "train" / "metrics.jsonl"
    return [json.loads(l)["loss"] for l in path.read_text().splitlines()]

  np.testing.assert_allclose(losses("two"), losses("one"), rtol=1e-5)
  prompt = "numpy_checkpoints/checkpoint_3/prompt.npy"
  np.testing.assert_allclose(np.load(tmp_path / "two" / prompt),
                             np.load(tmp_path / "one" / prompt), atol=1e-5)


@pytest.mark.parametrize("name", ["train", "eval", "infer"])
def test_console_scripts_are_installed(name):
  script = os.path.join(os.path.dirname(sys.executable),
                        f"prompt_tuning.{name}")
  assert os.path.isfile(script), (
      f"{script} is missing: `pip install -e .` installs the console scripts")
  result = subprocess.run([script, "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  for flag in ("--gin_file", "--gin_bindings", "--gin_search_paths",
               "--tfds_data_dir", "--coordinator_address"):
    assert flag in result.stdout

"""The binaries called from Python with their parts and no gin config.

`train()`, `evaluate()` and `infer()` receive the model, its params and the
mesh as arguments, as T5X's train receives its model and partitioner; gin
only builds them for the command line (test_train.py and test_binaries.py
cover that path). Same tiny T5.1.1 and copy task as test_train.py, so the
compiled programs are shared through the XLA cache.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import gin
import jax
import numpy as np
import optax
import pytest

import prompt_tuning as pt
from prompt_tuning import data
from prompt_tuning import eval as eval_lib
from prompt_tuning import infer as infer_lib
from prompt_tuning import partitioning
from prompt_tuning import random_checkpoint
from prompt_tuning import run_checkpoints
from prompt_tuning import train as train_lib
from prompt_tuning import param_split
from prompt_tuning.checkpoints import t5x

import seqio_test_tasks
from test_train import TINY

TASK = seqio_test_tasks.COPY
LENGTHS = seqio_test_tasks.FEATURE_LENGTHS
METHOD = pt.PromptTuning(length=4)
TRAIN = data.DatasetConfig(TASK, LENGTHS, "train", 8, True)
VALIDATION = data.DatasetConfig(TASK, LENGTHS, "validation", 8, False)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("base") / "checkpoint_0")
  t5x.write_t5x_checkpoint(random_checkpoint.random_params(TINY), path)
  return path


def one_device_mesh():
  return partitioning.make_mesh(data=1, model=1, num_devices=1)


def load(base, mesh=None):
  """pt.load_pretrained's (model, params): what a notebook would pass."""
  model, variables = pt.load_pretrained(base, config=TINY, method=METHOD,
                                        mesh=mesh)
  return model, variables["params"]


def train(model_dir, total_steps, **parts) -> train_lib.TrainResult:
  return train_lib.train(
      **parts, model_dir=str(model_dir), train_dataset_cfg=TRAIN,
      optimizer=optax.adam(1e-2), total_steps=total_steps,
      checkpoint_period=2, log_period=1)


@pytest.fixture(scope="module")
def python_run(tiny_base, tmp_path_factory):
  """Three steps trained from Python with gin cleared: (model, the params
  as loaded, numpy copies of them, the result, the run dir)."""
  gin.clear_config()
  mesh = one_device_mesh()
  model, params = load(tiny_base, mesh)
  initial = jax.tree.map(np.array, params)
  run_dir = tmp_path_factory.mktemp("python_run") / "run"
  result = train(run_dir, 3, model=model, params=params, mesh=mesh)
  return model, params, initial, result, run_dir


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_train_from_python_saves_checkpoints_and_moves_only_the_prompt(
    python_run, tiny_base):
  model, params, initial, result, run_dir = python_run
  assert result.step == 3
  saved = run_checkpoints.RunCheckpoints(str(run_dir))
  assert saved.all_steps() == [2, 3]  # checkpoint_period=2, and the end
  metrics = (run_dir / "train" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in metrics] == [1, 2, 3]
  trained, frozen = param_split.split(result.params, model.trainable_patterns)
  start, base = param_split.split(initial, model.trainable_patterns)
  assert jax.tree.structure(frozen) == jax.tree.structure(base)
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(base)):
    np.testing.assert_array_equal(np.asarray(a), b)
  [prompt] = jax.tree.leaves(trained)
  assert not np.allclose(np.asarray(prompt), jax.tree.leaves(start)[0])
  # The last checkpoint holds the trained prompt (and its .npy export).
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      trained)
  restored, step = run_checkpoints.restore_params(str(run_dir), abstract)
  assert step == 3
  np.testing.assert_array_equal(np.asarray(jax.tree.leaves(restored)[0]),
                                np.asarray(prompt))
  np.testing.assert_array_equal(
      np.load(run_dir / "numpy_checkpoints" / "checkpoint_3" / "prompt.npy"),
      np.asarray(prompt))
  # The caller's params are not donated or changed: still the loaded ones.
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(initial)):
    np.testing.assert_array_equal(np.asarray(a), b)
  # load_pretrained recorded the base, as load_model does on the command
  # line; the run names it.
  assert model.base_path == os.path.abspath(tiny_base)
  info = json.loads((run_dir / "model_info.json").read_text())
  assert info["initial_checkpoint_path"] == model.base_path


def test_a_python_run_resumes_on_its_params_mesh_and_refuses_another_base(
    tiny_base, tmp_path):
  run_dir = tmp_path / "run"
  # No mesh: the one load_pretrained placed the params on (one device).
  model, params = load(tiny_base)
  train(run_dir, 2, model=model, params=params)
  result = train(run_dir, 3, model=model, params=params)
  assert result.step == 3
  assert run_checkpoints.RunCheckpoints(str(run_dir)).all_steps() == [2, 3]
  # The same weights under another path are another base to the run.
  other = tmp_path / "other" / "checkpoint_0"
  shutil.copytree(tiny_base, other)
  other_model, other_params = load(str(other))
  with pytest.raises(ValueError, match="holds a run on the base"):
    train(run_dir, 4, model=other_model, params=other_params)
  assert run_checkpoints.RunCheckpoints(str(run_dir)).all_steps() == [2, 3]


def test_parts_that_do_not_fit_are_rejected_before_model_dir(tiny_base,
                                                            tmp_path):
  if jax.device_count() < 2:
    pytest.skip("needs 2 simulated devices (see conftest.py)")
  run_dir = tmp_path / "run"
  model, params = load(tiny_base, one_device_mesh())
  two = partitioning.make_mesh(data=2, model=1, num_devices=2)
  with pytest.raises(ValueError, match="placed on 1 device.*mesh's 2"):
    train(run_dir, 1, model=model, params=params, mesh=two)
  with pytest.raises(ValueError, match="model and params together"):
    train(run_dir, 1, model=model, mesh=two)
  with pytest.raises(ValueError, match="TRAIN_STEPS=0 must be a whole number >= 1"):
    train(run_dir, 0, model=model, params=params)
  assert not run_dir.exists()


def test_evaluate_and_infer_from_python_read_the_runs_checkpoint(
    python_run, tmp_path):
  model, params, initial, _, run_dir = python_run
  mesh = one_device_mesh()
  parts = dict(model=model, params=params, mesh=mesh, dataset_cfg=VALIDATION)
  metrics = eval_lib.evaluate(**parts, checkpoint_path=str(run_dir),
                              output_dir=str(tmp_path / "eval"))
  assert 0.0 <= metrics[TASK]["sequence_accuracy"] <= 100.0
  [line] = (tmp_path / "eval" / f"{TASK}-metrics.jsonl").read_text(
  ).splitlines()
  assert json.loads(line)["step"] == 3  # the run's newest checkpoint
  paths = infer_lib.infer(**parts, checkpoint_path=str(run_dir),
                          output_dir=str(tmp_path / "infer"))
  assert paths == {TASK: str(tmp_path / "infer" /
                             f"{TASK}-checkpoint_3.jsonl")}
  trained = [json.loads(line) for line in
             pathlib.Path(paths[TASK]).read_text().splitlines()]
  assert len(trained) == seqio_test_tasks.SPLITS["validation"]
  logged = [json.loads(line) for line in (
      tmp_path / "eval" / f"{TASK}-000003.jsonl").read_text().splitlines()]
  assert [r["outputs"] for r in trained] == [r["prediction"] for r in logged]
  # The caller's params hold the fresh prompt; decoding with it (as a
  # prompt file) scores differently, so the runs' prompt was swapped in.
  fresh = tmp_path / "fresh.npy"
  np.save(fresh, initial["prompt"]["prompt"])
  paths = infer_lib.infer(**parts, checkpoint_path=str(fresh),
                          output_dir=str(tmp_path / "infer"))
  untrained = [json.loads(line) for line in
               pathlib.Path(paths[TASK]).read_text().splitlines()]
  assert ([r["score"] for r in untrained]
          != pytest.approx([r["score"] for r in trained], abs=1e-6))


def test_evaluate_the_base_itself_with_no_checkpoint(tiny_base, tmp_path):
  """CHECKPOINT_PATH=None scores the base as loaded (zero-shot, prompt
  design); `num_examples` keeps the split's first N. A method with fresh
  parameters is refused: its untrained prompt would be noise."""
  mesh = one_device_mesh()
  model, variables = pt.load_pretrained(tiny_base, config=TINY,
                                        method=pt.ModelTuning(), mesh=mesh)
  parts = dict(model=model, params=variables["params"], mesh=mesh,
               dataset_cfg=VALIDATION)
  metrics = eval_lib.evaluate(**parts, checkpoint_path=None,
                              output_dir=str(tmp_path / "eval"),
                              num_examples=3)
  assert 0.0 <= metrics[TASK]["sequence_accuracy"] <= 100.0
  [line] = (tmp_path / "eval" / f"{TASK}-metrics.jsonl").read_text(
  ).splitlines()
  assert json.loads(line)["step"] == 0
  examples = (tmp_path / "eval" / f"{TASK}-000000.jsonl").read_text(
  ).splitlines()
  assert len(examples) == 3
  prompted, prompted_vars = load(tiny_base, mesh)
  with pytest.raises(ValueError, match="PromptTuning adds untrained"):
    eval_lib.evaluate(model=prompted, params=prompted_vars, mesh=mesh,
                      dataset_cfg=VALIDATION, checkpoint_path=None,
                      output_dir=str(tmp_path / "refused"))
  with pytest.raises(ValueError, match="num_examples=0 must be >= 1"):
    eval_lib.evaluate(**parts, checkpoint_path=None, num_examples=0,
                      output_dir=str(tmp_path / "refused"))
  assert not (tmp_path / "refused").exists()

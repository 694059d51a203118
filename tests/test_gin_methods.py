"""The shipped gin/methods files bind METHOD to the method a user expects."""

import os

import gin
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import gin_paths


@gin.configurable
def _selected(method=gin.REQUIRED):
  return method


@pytest.fixture
def parse():
  gin.clear_config()
  gin.add_config_file_search_path(gin_paths.gin_search_path())

  def _parse(name, bindings=()):
    gin.clear_config()
    gin.parse_config_files_and_bindings(
        [f"methods/{name}.gin"],
        list(bindings) + ["_selected.method = %METHOD"],
        finalize_config=False)
    return _selected()

  yield _parse
  gin.clear_config()


def test_prompt_tuning_file(parse):
  method = parse("prompt_tuning", ["PROMPT_LENGTH = 20"])
  assert isinstance(method, pt.PromptTuning) and method.length == 20
  values = np.asarray(method.initializer(np.array([0, 1], np.uint32),
                                         (20, 4)))
  assert values.shape == (20, 4) and np.abs(values).max() <= 0.5


def test_initializer_files_compose_with_prompt_tuning(parse, tmp_path):
  embedding = np.arange(40, dtype=np.float32).reshape(10, 4)
  method = parse("from_sampled_vocab", ["from_sampled_vocab.population_size"
                                        " = 3"])
  with pytest.warns(UserWarning, match="with replacement"):
    rows = np.asarray(method.initializer(np.array([0, 1], np.uint32),
                                         (100, 4), embedding))
  assert set(rows[:, 0].tolist()) <= {0.0, 4.0, 8.0}
  np.save(tmp_path / "p.npy", np.ones((100, 4), np.float32))
  method = parse("from_file", [f"PROMPT_FILE = '{tmp_path / 'p.npy'}'"])
  np.testing.assert_array_equal(
      method.initializer(None, (100, 4)), np.ones((100, 4)))


def test_prefix_and_model_tuning_files(parse):
  method = parse("prefix_tuning")
  assert isinstance(method, pt.PrefixTuning)
  assert method.reparameterization == "mlp" and method.length == 10
  assert isinstance(parse("model_tuning"), pt.ModelTuning)


def test_every_method_file_parses(parse):
  names = sorted(f[:-4] for f in os.listdir(
      os.path.join(gin_paths.gin_search_path(), "methods"))
                 if f.endswith(".gin"))
  needs = {"from_class_labels": ["CLASS_LABELS = [[3], [4]]",
                                 "VOCABULARY = None"],
           "from_file": ["PROMPT_FILE = 'unused.npy'"],
           "multitask_prompt": ["NUM_TASKS = 3"],
           "mpt": ["NUM_TASKS = 3"]}
  for name in names:
    assert isinstance(parse(name, needs.get(name, [])), pt.methods.base.Method)

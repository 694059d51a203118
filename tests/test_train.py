"""The `train` binary's loop: it learns, freezes, resumes, and ignores the mesh.

Runs call `train()` in-process with gin bindings (the command-line front is
tested in test_binaries.py) on tiny models and the tiny seqio tasks of
`seqio_test_tasks`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import gin
import jax
import numpy as np
import optax
import pytest

import prompt_tuning as pt
from prompt_tuning import data
from prompt_tuning import optimizers
from prompt_tuning import random_checkpoint
from prompt_tuning import run_checkpoints
from prompt_tuning import train as train_lib
from prompt_tuning import param_split
from prompt_tuning.checkpoints import t5x

import hf_models
import seqio_test_tasks

TASK = seqio_test_tasks.COPY
LENGTHS = seqio_test_tasks.FEATURE_LENGTHS

TINY = pt.TransformerConfig(
    architecture="encoder_decoder", vocab_size=264, emb_dim=16, num_heads=4,
    head_dim=4, mlp_dim=32, num_encoder_layers=2, num_decoder_layers=2,
    mlp_activations=("gelu", "linear"), norm="rms",
    relative_attention_num_buckets=8, relative_attention_max_distance=16)


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> str:
  """A random tiny T5.1.1 written as a T5X checkpoint."""
  path = str(tmp_path_factory.mktemp("base") / "checkpoint_0")
  t5x.write_t5x_checkpoint(random_checkpoint.random_params(TINY), path)
  return path


def dataset(split="train", shuffle=True, batch_size=8) -> data.DatasetConfig:
  return data.DatasetConfig(TASK, LENGTHS, split, batch_size, shuffle)


def bind_model(base, config=TINY, method=None, mesh=(1, 1)):
  gin.bind_parameter("load_model.initial_checkpoint_path", base)
  gin.bind_parameter("load_model.model_config", config)
  gin.bind_parameter("load_model.method",
                     method or pt.PromptTuning(length=4))
  gin.bind_parameter("make_mesh.data", mesh[0])
  gin.bind_parameter("make_mesh.model", mesh[1])
  gin.bind_parameter("make_mesh.num_devices", mesh[0] * mesh[1])


# One fixed batch (the 16 validation examples, unshuffled): the loss of a
# random tiny base falls visibly within a few steps.
ONE_BATCH = data.DatasetConfig(TASK, LENGTHS, "validation", 16, False)


def run(model_dir, total_steps, **kwargs) -> train_lib.TrainResult:
  options = dict(model_dir=str(model_dir), train_dataset_cfg=dataset(),
                 optimizer=optimizers.adafactor(), total_steps=total_steps,
                 eval_period=1000, checkpoint_period=4, log_period=1)
  options.update(kwargs)
  return train_lib.train(**options)


def train_losses(model_dir) -> list[float]:
  path = pathlib.Path(model_dir) / "train" / "metrics.jsonl"
  return [json.loads(line)["loss_per_token"]
          for line in path.read_text().splitlines()]


def tree_digest(directory) -> dict[str, str]:
  return {str(p.relative_to(directory)): hashlib.sha256(
      p.read_bytes()).hexdigest()
          for p in sorted(pathlib.Path(directory).rglob("*")) if p.is_file()}


def assert_frozen_untouched(result, base, config, method, base_dir):
  """Trainable params moved; frozen ones equal the base bit for bit."""
  model, initial = pt.load_pretrained(base, config=config, method=method)
  initial = initial["params"]
  trained, frozen = param_split.split(result.params, model.trainable_patterns)
  start, base_params = param_split.split(initial, model.trainable_patterns)
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(base_params)):
    assert np.asarray(a).dtype == np.asarray(b).dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert jax.tree.structure(frozen) == jax.tree.structure(base_params)
  for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(start)):
    assert not np.array_equal(np.asarray(a), np.asarray(b))
  del base_dir


def test_training_lowers_the_loss_and_moves_only_the_prompt(tiny_base,
                                                            tmp_path):
  before = tree_digest(os.path.dirname(tiny_base))
  method = pt.PromptTuning(length=4)
  bind_model(tiny_base, method=method)
  result = run(tmp_path / "run", total_steps=24, keep_checkpoints=3,
               optimizer=optimizers.adafactor(learning_rate=1.0))
  losses = train_losses(tmp_path / "run")
  assert len(losses) == 24
  assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05
  assert_frozen_untouched(result, tiny_base, TINY, method, tmp_path)
  # The base checkpoint's files are byte-identical after the run.
  assert tree_digest(os.path.dirname(tiny_base)) == before
  run_dir = tmp_path / "run"
  # Only trainable params + optimizer state are saved, never the base.
  saved = run_checkpoints.RunCheckpoints(str(run_dir))
  assert saved.all_steps() == [16, 20, 24]  # keep_checkpoints=3
  assert sorted(p.name for p in (run_dir / "numpy_checkpoints").iterdir()) == [
      "checkpoint_16", "checkpoint_20", "checkpoint_24"]
  prompt = np.load(run_dir / "numpy_checkpoints" / "checkpoint_24" /
                   "prompt.npy")
  np.testing.assert_array_equal(prompt,
                                np.asarray(result.params["prompt"]["prompt"]))
  assert (run_dir / "config.gin").is_file()
  info = json.loads((run_dir / "model_info.json").read_text())
  assert info["initial_checkpoint_path"] == os.path.abspath(tiny_base)


def test_input_iterators_are_not_autotuned_and_skip_for_resume():
  # Destroying an autotuned tf.data iterator waits on the autotuner's thread:
  # 25-45 s idle at the end of 400-step study runs before it was turned off.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ds = tf.data.Dataset.range(10).batch(2)
  assert ds.options().autotune.enabled is None
  assert data.without_autotune(ds).options().autotune.enabled is False
  assert [b.tolist() for b in data.iterate(ds, skip=3)] == [[6, 7], [8, 9]]
  assert [int(x) for x in data.numpy_iterator(ds.unbatch())] == list(range(10))


def test_t5x_fixture_as_base(shared_fixtures, tmp_path):
  base = str(shared_fixtures / "t5x_t5_1_1_tiny" / "checkpoint_3")
  before = tree_digest(base)
  method = pt.PromptTuning(length=3)
  bind_model(base, config="t5_1_1_tiny", method=method)
  result = run(tmp_path / "run", total_steps=12, train_dataset_cfg=ONE_BATCH,
               optimizer=optimizers.adafactor(learning_rate=1.0))
  losses = train_losses(tmp_path / "run")
  assert np.mean(losses[-3:]) < np.mean(losses[:3])
  assert_frozen_untouched(result, base, "t5_1_1_tiny", method, tmp_path)
  assert tree_digest(base) == before


def test_hugging_face_base(tmp_path):
  _, base = hf_models.tiny_t5_v1_1(tmp_path / "hf", vocab_size=264)
  before = tree_digest(base)
  method = pt.PromptTuning(length=3)
  bind_model(base, config=None, method=method)
  result = run(tmp_path / "run", total_steps=12, train_dataset_cfg=ONE_BATCH,
               optimizer=optimizers.adafactor(learning_rate=1.0))
  losses = train_losses(tmp_path / "run")
  assert np.mean(losses[-3:]) < np.mean(losses[:3])
  assert_frozen_untouched(result, base, None, method, tmp_path)
  assert tree_digest(base) == before


class _Killed(Exception):
  pass


def test_kill_and_resume_equals_an_uninterrupted_run(tiny_base, tmp_path,
                                                     monkeypatch):
  bind_model(tiny_base)
  full = run(tmp_path / "full", total_steps=10)

  real_iterate = data.iterate

  def dies_after_six_batches(ds, skip=0):
    for i, batch in enumerate(real_iterate(ds, skip)):
      if skip == 0 and i == 6:
        raise _Killed()  # after checkpoint_4, in the middle of step 7
      yield batch

  monkeypatch.setattr(data, "iterate", dies_after_six_batches)
  with pytest.raises(_Killed):
    run(tmp_path / "resumed", total_steps=10)
  saved = run_checkpoints.RunCheckpoints(str(tmp_path / "resumed"))
  assert saved.latest_step() == 4
  # A save killed half-way leaves only Orbax's temporary dir: never read.
  partial = tmp_path / "resumed" / "checkpoint_8.orbax-checkpoint-tmp-1"
  (partial / "params").mkdir(parents=True)
  (partial / "params" / "garbage").write_text("half a checkpoint")
  resumed = run(tmp_path / "resumed", total_steps=10)
  assert resumed.step == full.step == 10
  for a, b in zip(jax.tree.leaves(full.params),
                  jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Steps 5..10 of the resumed run saw the batches the full run saw.
  np.testing.assert_allclose(train_losses(tmp_path / "resumed")[-6:],
                             train_losses(tmp_path / "full")[-6:],
                             rtol=1e-6)


def test_a_2x4_mesh_gives_the_single_device_loss(tiny_base, tmp_path):
  if jax.device_count() < 8:
    pytest.skip("needs 8 simulated devices (see conftest.py)")
  bind_model(tiny_base, mesh=(1, 1))
  single = run(tmp_path / "single", total_steps=3, checkpoint_period=100)
  gin.clear_config()
  bind_model(tiny_base, mesh=(2, 4))
  mesh = run(tmp_path / "mesh", total_steps=3, checkpoint_period=100)
  np.testing.assert_allclose(train_losses(tmp_path / "mesh"),
                             train_losses(tmp_path / "single"), atol=1e-5)
  prompt = mesh.params["prompt"]["prompt"]
  assert prompt.sharding.mesh.shape == {"data": 2, "model": 4}
  # The mesh sums gradients in another order (float32 round-off ~1e-7);
  # Adafactor divides each update by the gradient's RMS, which can magnify
  # that to ~1e-5 in an element after three steps at learning rate 0.3.
  for a, b in zip(jax.tree.leaves(single.params),
                  jax.tree.leaves(mesh.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tiny_base, tmp_path):
  bind_model(tiny_base)
  run(tmp_path / "run", total_steps=4)
  before = tree_digest(tmp_path / "run" / "checkpoint_4")
  # z_loss = nan makes every later loss NaN.
  gin.bind_parameter("load_model.z_loss", float("nan"))
  with pytest.raises(FloatingPointError, match="step 5: the loss is nan"):
    run(tmp_path / "run", total_steps=8)
  saved = run_checkpoints.RunCheckpoints(str(tmp_path / "run"))
  assert saved.all_steps() == [4]
  assert tree_digest(tmp_path / "run" / "checkpoint_4") == before


def test_a_non_finite_update_is_not_applied(tiny_base, tmp_path):
  """Finite loss and gradients, but an update that overflows the params."""
  bind_model(tiny_base)
  with pytest.raises(FloatingPointError, match="step 1"):
    run(tmp_path / "run", total_steps=2,
        optimizer=optax.sgd(float("inf")))
  assert not (tmp_path / "run" / "checkpoint_2").exists()


GPT2_TINY = pt.TransformerConfig(
    architecture="decoder_only", vocab_size=264, emb_dim=16, num_heads=2,
    head_dim=8, mlp_dim=32, num_encoder_layers=0, num_decoder_layers=3,
    mlp_activations=("gelu_new",), norm="layer", norm_epsilon=1e-5,
    use_bias=True, position_embedding="absolute",
    max_position_embeddings=64, logits_via_embedding=True,
    scale_tied_logits=False, scale_attention_logits=True)


@pytest.fixture(scope="module")
def gpt2_base(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("gpt2_base") / "checkpoint_0")
  t5x.write_t5x_checkpoint(random_checkpoint.random_params(GPT2_TINY, seed=1),
                           path)
  return path


# Every method through the binary's loop, with decoding evaluation: the
# seqio features reach each method (MSP reads encoder-decoder features on a
# decoder-only LM; the multitask prompt picks its task from the leading
# input token, 'c' = byte 99 + 3 offset = id 102 -> task 102 - 102 = 0).
METHODS = {
    "prefix_tuning": (TINY, pt.PrefixTuning(length=3)),
    "model_tuning": (TINY, pt.ModelTuning()),
    "multitask": (TINY, pt.MultiTaskPrompt(num_tasks=2, length=3,
                                           task_token_offset=102)),
    "msp": (GPT2_TINY, pt.MultiStagePrompting(length=3, separator_id=259)),
    "gpt2_prompt": (GPT2_TINY, pt.PromptTuning(length=3)),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_and_decodes_through_the_loop(
    name, tiny_base, gpt2_base, tmp_path):
  config, method = METHODS[name]
  base = gpt2_base if config is GPT2_TINY else tiny_base
  bind_model(base, config=config, method=method)
  eval_cfg = data.DatasetConfig(TASK, LENGTHS, "validation", 8, False)
  result = run(tmp_path / "run", total_steps=2, eval_period=2,
               train_eval_dataset_cfg=None, infer_eval_dataset_cfg=eval_cfg)
  [metrics] = result.metrics["inference_eval"].values()
  assert 0.0 <= metrics["sequence_accuracy"] <= 100.0
  model, initial = pt.load_pretrained(base, config=config, method=method)
  trained, frozen = param_split.split(result.params, model.trainable_patterns)
  start, base_params = param_split.split(initial["params"],
                                       model.trainable_patterns)
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(base_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  moved = [not np.array_equal(np.asarray(a), np.asarray(b))
           for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(start))]
  assert any(moved)
  exported = tmp_path / "run" / "numpy_checkpoints" / "checkpoint_2"
  assert exported.exists() == (name in ("prefix_tuning", "gpt2_prompt"))


def test_frozen_weights_in_bfloat16_and_dropout_from_gin(tiny_base,
                                                        tmp_path):
  bind_model(tiny_base)
  plain = run(tmp_path / "plain", total_steps=1)
  gin.bind_parameter("load_model.param_dtype", "bfloat16")
  gin.bind_parameter("load_model.dropout_rate", 0.3)
  result = run(tmp_path / "bf16", total_steps=1)
  prompt = result.params["prompt"]["prompt"]
  assert prompt.dtype == np.float32  # the method's params stay float32
  frozen = [x for path, x in jax.tree_util.tree_leaves_with_path(
      result.params) if "prompt" not in jax.tree_util.keystr(path)]
  assert {x.dtype for x in frozen} == {np.dtype(jax.numpy.bfloat16)}
  [first_plain] = train_losses(tmp_path / "plain")
  [first] = train_losses(tmp_path / "bf16")
  assert np.isfinite(first) and first != first_plain
  del plain


def test_a_vocabulary_larger_than_the_embedding_table_is_rejected(tmp_path):
  _, base = hf_models.tiny_t5_v1_1(tmp_path / "hf")  # 128 embedding rows
  bind_model(base, config=None)
  with pytest.raises(ValueError, match="has 259 ids.*has 128 rows"):
    run(tmp_path / "run", total_steps=1)
  assert not (tmp_path / "run").exists()


def test_the_end_screen_compares_untrained_and_trained_with_examples(
    tiny_base, tmp_path, capsys):
  """eval_untrained evaluates before the first step; the end screen shows
  both metrics and held-out examples with the output before and after."""
  bind_model(tiny_base)
  eval_cfg = data.DatasetConfig(TASK, LENGTHS, "validation", 8, False)
  run(tmp_path / "run", total_steps=2, eval_period=2,
      train_eval_dataset_cfg=None, infer_eval_dataset_cfg=eval_cfg,
      eval_untrained=True, infer_eval_examples=8, show_examples=2)
  out = capsys.readouterr().out
  assert f"inference_eval {TASK} untrained (step 0)" in out
  assert f"inference_eval {TASK} trained (step 2)" in out
  examples = out.split(f"== examples: {TASK} (held out)")[1]
  assert examples.count("reference") == 2
  assert examples.count("before") == 2 and examples.count("after") == 2
  logged = sorted(p.name for p in (tmp_path / "run" / "inference_eval")
                  .glob(f"{TASK}-0*.jsonl"))
  assert logged == [f"{TASK}-000000.jsonl", f"{TASK}-000002.jsonl"]
  lines = (tmp_path / "run" / "inference_eval" / logged[0]).read_text()
  assert len(lines.splitlines()) == 8  # infer_eval_examples

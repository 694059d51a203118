"""Pretraining with the ordinary binaries: random init, GPT-2's initializers,
T5's schedule, a run's checkpoint as the next stage's base, and shipped
bases by name."""

from __future__ import annotations

import json

import jax
import numpy as np
import optax
import pytest

import prompt_tuning as pt
from prompt_tuning import optimizers
from prompt_tuning import run_checkpoints
from prompt_tuning import runtime
from prompt_tuning import train_step
from prompt_tuning.checkpoints import loader
from prompt_tuning.checkpoints import shipped
from prompt_tuning.models import configs

TINY_T5 = pt.TransformerConfig(
    architecture="encoder_decoder", vocab_size=64, emb_dim=8, num_heads=2,
    head_dim=4, mlp_dim=16, num_encoder_layers=1, num_decoder_layers=1,
    relative_attention_num_buckets=4, relative_attention_max_distance=8)


def _flat(params):
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_random_init_is_only_for_model_tuning():
  with pytest.raises(ValueError, match="every weight trains"):
    runtime.load_model(None, model_config=TINY_T5,
                       method=pt.PromptTuning(length=2))
  with pytest.raises(ValueError, match="every weight trains"):
    runtime.load_model(None, model_config=TINY_T5,
                       method=pt.ModelTuning(trainable=[".*encoder.*"]))
  model, params = runtime.load_model(None, model_config=TINY_T5,
                                     method=pt.ModelTuning(), random_seed=3)
  expected = loader.random_params(TINY_T5, seed=3)
  got, want = _flat(params), _flat(expected)
  assert set(got) == set(want)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name])
  assert model.base_path is None


def test_gpt2_starts_from_gpt2s_initializers():
  config = configs.from_gin("bible_gpt2_small")
  assert config.init_std == 0.02
  flat = _flat(loader.random_params(config, seed=0))
  layers = config.num_decoder_layers
  [embedding] = [v for k, v in flat.items()
                 if k.endswith("token_embedder/embedding")]
  assert abs(embedding.std() - 0.02) < 1e-3
  assert abs(flat["decoder/layers_0/self_attention/query/kernel"].std()
             - 0.02) < 1e-3
  residual = 0.02 / np.sqrt(2 * layers)
  assert abs(flat["decoder/layers_0/mlp/wo/kernel"].std() - residual) < 5e-4
  assert not flat["decoder/layers_0/mlp/wo/bias"].any()
  # With these, a random GPT-2's loss starts near log(vocab), not at ~60.
  model = pt.build_model(config)
  ids = np.random.default_rng(0).integers(3, 8000, (2, 16))
  batch = {"decoder_input_tokens": ids, "decoder_target_tokens": ids,
           "decoder_loss_weights": np.ones_like(ids)}
  loss, metrics = model.loss_fn(loader.random_params(config), batch,
                                dropout_rng=None)
  per_token = float(loss) / float(metrics["weight_sum"])
  assert 0.7 * np.log(config.vocab_size) < per_token < 1.1 * np.log(
      config.vocab_size)


def test_rsqrt_decay_is_t5s_schedule():
  schedule = optimizers.rsqrt_decay(base_learning_rate=1.0, warmup_steps=100)
  assert float(schedule(0)) == pytest.approx(0.1)
  assert float(schedule(99)) == pytest.approx(0.1)
  assert float(schedule(399)) == pytest.approx(0.05)


def test_a_model_tuning_run_is_the_next_stages_base(tmp_path):
  """INITIAL_CHECKPOINT_PATH may name a pretraining run (T5X habit): its
  newest checkpoint loads as a whole model, architecture included."""
  params = jax.tree.map(np.asarray, loader.random_params(TINY_T5, seed=1))
  state = train_step.TrainState(step=np.int32(7), params=params,
                             opt_state=optax.sgd(0.1).init(params))
  run_dir = tmp_path / "stage1"
  checkpoints = run_checkpoints.RunCheckpoints(str(run_dir))
  checkpoints.save(state, {"initial_checkpoint_path": None})
  checkpoints.close()
  (run_dir / "model_info.json").write_text(json.dumps(
      {"config": shipped.config_to_json(TINY_T5)}))
  for path in (run_dir, run_dir / "checkpoint_7"):
    model, variables = pt.load_pretrained(str(path))
    assert model.config == TINY_T5
    got, want = _flat(variables["params"]), _flat(params)
    for name in want:
      np.testing.assert_array_equal(got[name], want[name])


def test_a_prompt_run_is_not_a_base(tmp_path):
  prompt = {"prompt": {"prompt": np.zeros((2, 8), np.float32)}}
  state = train_step.TrainState(step=np.int32(1), params=prompt,
                             opt_state=optax.sgd(0.1).init(prompt))
  checkpoints = run_checkpoints.RunCheckpoints(str(tmp_path / "run"))
  checkpoints.save(state, {})
  checkpoints.close()
  with pytest.raises(ValueError, match="only its method's parameters"):
    pt.load_pretrained(str(tmp_path / "run"), config=TINY_T5)


def test_an_unknown_name_lists_the_shipped_bases():
  with pytest.raises(FileNotFoundError, match="shipped base's name"):
    pt.load_pretrained("bible_t5_nonesuch")

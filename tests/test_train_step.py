"""The training step: only trainable params move, with their optimizer
state alone; microbatches add up; a non-finite step changes nothing."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import prompt_tuning as pt
from prompt_tuning import data
from prompt_tuning import optimizers
from prompt_tuning import partitioning
from prompt_tuning import train_step
from prompt_tuning.models import configs

T5 = configs.t5_1_1("tiny", vocab_size=64, emb_dim=8, head_dim=4,
                    relative_attention_num_buckets=8,
                    relative_attention_max_distance=6)
BATCH = {
    "encoder_input_tokens": np.array([[5, 6, 7, 1], [8, 1, 0, 0],
                                      [9, 9, 1, 0], [3, 4, 5, 1]]),
    "decoder_input_tokens": np.array([[0, 9, 10], [0, 12, 0], [0, 7, 1],
                                      [0, 2, 3]]),
    "decoder_target_tokens": np.array([[9, 10, 1], [12, 1, 0], [7, 1, 0],
                                       [2, 3, 1]]),
}


@pytest.fixture(scope="module")
def prompt_model():
  model = pt.build_model(T5, method=pt.PromptTuning(length=3))
  params = nn.meta.unbox(model.get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 4),
                              "decoder_input_tokens": (1, 3)})["params"])
  return model, params


def test_adafactor_prompt_training_lowers_the_loss(prompt_model):
  model, params = prompt_model
  optimizer = optimizers.adafactor()  # the paper's settings, lr 0.3
  state, frozen = train_step.init_state(model, params, optimizer)
  step = train_step.make_train_step(model, optimizer)
  losses = []
  for _ in range(8):
    state, metrics = step(state, frozen, BATCH, None)
    train_step.check_finite(metrics, int(state.step))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0]
  assert int(state.step) == 8
  assert set(state.params) == {"prompt"}


def test_steps_compile_once_and_donate_the_state(prompt_model):
  model, params = prompt_model
  optimizer = optimizers.adafactor()
  state, frozen = train_step.init_state(model, params, optimizer)
  step = train_step.make_train_step(model, optimizer)
  for i in range(3):
    before = jax.tree.leaves(state.params)
    batch = {k: np.roll(v, i, axis=0) for k, v in BATCH.items()}
    state, _ = step(state, frozen, batch, None)
    # The old state's buffers were handed to XLA for the new state.
    assert all(x.is_deleted() for x in before)
  # New batches of the same shapes reuse the one compiled step.
  assert step._cache_size() == 1  # pylint: disable=protected-access
  assert not any(x.is_deleted() for x in jax.tree.leaves(frozen))


def test_a_step_on_a_mesh_constrains_activations_and_compiles_once():
  # Loaded params are placed as P(None, None) where XLA writes P(), and the
  # optimizer's scalars start uncommitted; neither may cost a recompile.
  model = pt.build_model(T5, method=pt.PromptTuning(length=3))
  boxed = model.get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 4),
                              "decoder_input_tokens": (1, 3)})["params"]
  mesh = partitioning.make_mesh(data=2, model=4)
  params = jax.tree.map(
      lambda b: jax.device_put(b.value, partitioning.logical_to_sharding(
          b.names, mesh, shape=b.value.shape)),
      boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  optimizer = optimizers.adafactor()
  state, frozen = train_step.init_state(model, params, optimizer)
  step = train_step.make_train_step(model, optimizer, mesh=mesh)
  batch = data.to_global(BATCH, mesh)
  # The models' logical-axis constraints reach the program.
  assert "sharding_constraint" in step.lower(state, frozen, batch,
                                             None).as_text()
  for _ in range(3):
    state, _ = step(state, frozen, batch, None)
  assert step._cache_size() == 1  # pylint: disable=protected-access


def test_optimizer_state_covers_only_trainable_params(prompt_model):
  model, params = prompt_model
  state, frozen = train_step.init_state(model, params, optimizers.adam())
  assert "prompt" not in frozen and "encoder" in frozen
  trainable_bytes = sum(x.nbytes for x in jax.tree.leaves(state.params))
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
  # Adam: one first and one second moment per trainable tensor, nothing else.
  assert sum(x.nbytes for x in moments) == 2 * trainable_bytes


def test_microbatches_add_up_to_the_full_batch(prompt_model):
  model, params = prompt_model
  optimizer = optax.sgd(0.1)
  results = []
  for k in (1, 2):
    state, frozen = train_step.init_state(model, params, optimizer)
    state, metrics = train_step.make_train_step(model, optimizer, k)(
        state, frozen, BATCH, None)
    results.append((state.params, metrics))
  np.testing.assert_allclose(results[0][1]["loss"], results[1][1]["loss"],
                             rtol=1e-5)
  np.testing.assert_allclose(results[0][0]["prompt"]["prompt"],
                             results[1][0]["prompt"]["prompt"], atol=1e-6)
  with pytest.raises(ValueError, match="not divisible"):
    state, frozen = train_step.init_state(model, params, optimizer)
    train_step.make_train_step(model, optimizer, 3)(state, frozen, BATCH, None)


def test_non_finite_step_keeps_the_state_and_fails_clearly(prompt_model):
  model, params = prompt_model
  optimizer = optax.sgd(0.1)
  state, frozen = train_step.init_state(model, params, optimizer)
  before = np.asarray(state.params["prompt"]["prompt"]).copy()
  broken = jax.tree.map(lambda x: x, frozen)
  broken["encoder"]["encoder_norm"]["scale"] = jnp.full((8,), jnp.nan)
  state, metrics = train_step.make_train_step(model, optimizer)(
      state, broken, BATCH, None)
  np.testing.assert_array_equal(state.params["prompt"]["prompt"], before)
  assert int(state.step) == 0
  with pytest.raises(FloatingPointError, match="step 0: the loss is nan"):
    train_step.check_finite(metrics, int(state.step))


def test_rsqrt_schedule_warms_up_then_decays():
  schedule = optimizers.rsqrt_schedule(7e-4, 4000)
  np.testing.assert_allclose(schedule(0), 7e-4 / 4000, rtol=1e-6)
  np.testing.assert_allclose(schedule(3999), 7e-4, rtol=1e-6)
  np.testing.assert_allclose(schedule(15999), 7e-4 * 0.5, rtol=1e-6)

"""The jitted training step over the trainable subtree only.

Frozen weights are an input of the step, never part of its state: they get
no gradient buffers and no optimizer state (docs/design.md §1), so a
run's state is the trainable params, the optimizer state and the step.
Gradients are accumulated over microbatches with `lax.scan`; a step whose
loss or gradients are not finite leaves the state unchanged, and
`check_finite` turns that into one clear error for the training loop.
A step whose update would make a parameter non-finite counts as such.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from prompt_tuning import model_wrappers
from prompt_tuning import partitioning
from prompt_tuning import param_split

Params = Any
Batch = Mapping[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """What a run saves: step, trainable params and their optimizer state."""

  step: jax.Array
  params: Params
  opt_state: Any


def init_state(model: model_wrappers.BaseModel, params: Params,
               optimizer: optax.GradientTransformation
               ) -> tuple[TrainState, Params]:
  """(state over the trainable subtree, the frozen rest).

  The state gets its own copy of the trainable arrays: the step donates its
  state, and the caller's params must stay usable.
  """
  train, frozen = param_split.split(params, model.trainable_patterns)
  state = TrainState(jnp.zeros((), jnp.int32), train, optimizer.init(train))
  if isinstance(jax.tree.leaves(train)[0], jax.core.Tracer):
    return state, frozen  # under jit / eval_shape: nothing is placed yet
  # A compiled copy gives the state its own buffers, in the placements the
  # step's outputs will have: the step counter and optimizer scalars are
  # born uncommitted while the params sit on a mesh, and a loaded param's
  # sharding may be spelled differently from XLA's for the same placement
  # (P(None, None) vs P()). Either would make the second step compile again.
  return jax.jit(lambda s: jax.tree.map(jnp.copy, s))(state), frozen


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(
          f"batch size {x.shape[0]} is not divisible by num_microbatches="
          f"{num_microbatches}; pick a divisor of the batch size.")
    return x.reshape((num_microbatches, -1) + x.shape[1:])
  return jax.tree.map(lambda x: split(jnp.asarray(x)), dict(batch))


def _learning_rate(opt_state: Any) -> Optional[jax.Array]:
  """The learning rate an `optax.inject_hyperparams` state holds (the one
  its last update used; `optimizers.learning_rate` reads the same), or None.
  """
  hyperparams = getattr(opt_state, "hyperparams", None)
  if not hyperparams or "learning_rate" not in hyperparams:
    return None
  return hyperparams["learning_rate"]


def make_train_step(model: model_wrappers.BaseModel,
                    optimizer: optax.GradientTransformation,
                    num_microbatches: int = 1, *,
                    mesh: Optional[Mesh] = None,
                    rules: partitioning.Rules = partitioning.LOGICAL_AXIS_RULES
                    ) -> Callable[..., tuple[TrainState, dict[str, Any]]]:
  """A jitted `step(state, frozen, batch, dropout_rng) -> (state, metrics)`.

  The loss is summed over microbatches (T5X's accumulation: with the default
  unnormalized loss, k microbatches give exactly the full batch's gradient).
  `dropout_rng` None trains without dropout. The state buffers are donated.
  The metrics include the update's `learning_rate` when the optimizer keeps
  it in its state, so the loop can read it with the step's other metrics,
  one step late, without waiting for the step after (whose dispatch
  donates this step's state).
  With a `mesh`, the step is traced on it under `rules`, so the models'
  activation sharding constraints (logical axis names) take effect.
  """
  if num_microbatches < 1:
    raise ValueError(f"num_microbatches={num_microbatches} must be >= 1.")

  def loss_and_grads(train, frozen, batch, rng):
    def loss(t):
      value, metrics = model.loss_fn(param_split.merge(t, frozen), batch, rng)
      return value, metrics
    return jax.value_and_grad(loss, has_aux=True)(train)

  def step(state: TrainState, frozen: Params, batch: Batch,
           dropout_rng: Optional[jax.Array] = None):
    if num_microbatches == 1:
      (loss, metrics), grads = loss_and_grads(state.params, frozen, batch,
                                              dropout_rng)
    else:
      micro = _split_microbatches(batch, num_microbatches)

      def accumulate(carry, inputs):
        index, mb = inputs
        rng = (None if dropout_rng is None
               else jax.random.fold_in(dropout_rng, index))
        (loss, metrics), grads = loss_and_grads(state.params, frozen, mb, rng)
        carry = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
        return carry, None

      zeros = jax.eval_shape(
          lambda: loss_and_grads(state.params, frozen,
                                 jax.tree.map(lambda x: x[0], micro),
                                 dropout_rng))
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
      init = (zeros[0][0], zeros[0][1], zeros[1])
      (loss, metrics, grads), _ = jax.lax.scan(
          accumulate, init, (jnp.arange(num_microbatches), micro))
      metrics = dict(metrics, accuracy=metrics["accuracy"] / num_microbatches)
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.params)
    new = TrainState(state.step + 1, optax.apply_updates(state.params,
                                                         updates), opt_state)
    # The updated params are checked too: an absurd learning rate can turn
    # finite gradients into inf params, which must never be saved.
    finite = jnp.isfinite(loss) & jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(x)) for x in
         jax.tree.leaves((grads, new.params))]))
    # A non-finite step changes nothing, so the last good state survives.
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = dict(metrics, loss=loss, finite=finite,
                   grad_norm=optax.tree.norm(grads))
    learning_rate = _learning_rate(new.opt_state)
    if learning_rate is not None:
      metrics["learning_rate"] = learning_rate
    return new, metrics

  if mesh is not None:
    unconstrained = step

    def step(*args):  # pylint: disable=function-redefined
      with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), \
          nn.logical_axis_rules(rules):
        return unconstrained(*args)

  return jax.jit(step, donate_argnums=(0,))


def check_finite(metrics: Mapping[str, Any], step: int) -> None:
  """Raises one clear error when a step's loss or gradients were not finite."""
  if not bool(metrics["finite"]):
    raise FloatingPointError(
        f"step {step}: the loss is {float(metrics['loss'])} (or a gradient is "
        "not finite); the step was not applied and the last good state is "
        "kept. Lower the learning rate, check the inputs for empty targets, "
        "or hold the frozen weights in float32.")

"""Optimizers for the trainable subtree, with the papers' settings.

Lester et al. 2021 train prompts with Adafactor: learning rate 0.3
(constant), decay_rate 0.8, no parameter scaling, weight decay 1e-5. Tan et
al. 2022 train MSP with Adam(0.9, 0.98, eps 1e-9) and the Transformer
schedule: linear warmup to the peak over 4000 steps, then rsqrt decay. Both
are gin-configurable; the optimizer only ever sees trainable parameters.
Both keep their hyper-parameters in the optimizer state
(`optax.inject_hyperparams`), so the learning rate can be reported.
"""

from __future__ import annotations

from typing import Optional

import gin
import jax
import jax.numpy as jnp
import optax


@gin.configurable
def rsqrt_schedule(peak: float, warmup_steps: int) -> optax.Schedule:
  """peak * min(step / warmup, sqrt(warmup / step)), steps counted from 1."""
  if warmup_steps < 1:
    raise ValueError(f"warmup_steps={warmup_steps} must be >= 1.")

  def schedule(count):
    step = jnp.asarray(count, jnp.float32) + 1.0
    return peak * jnp.minimum(step / warmup_steps,
                              jnp.sqrt(warmup_steps / step))
  return schedule


@gin.configurable
def rsqrt_decay(base_learning_rate: float = 1.0,
                warmup_steps: int = 10_000) -> optax.Schedule:
  """T5's pretraining schedule: base / sqrt(max(step, warmup_steps)).

  Constant for the first `warmup_steps` (0.01 with T5's 10,000), then
  inverse-square-root decay; no linear warmup (Adafactor does not need it).
  """
  if warmup_steps < 1:
    raise ValueError(f"warmup_steps={warmup_steps} must be >= 1.")

  def schedule(count):
    step = jnp.asarray(count, jnp.float32) + 1.0
    return base_learning_rate * jax.lax.rsqrt(
        jnp.maximum(step, float(warmup_steps)))
  return schedule


@gin.configurable
def adafactor(learning_rate: float = 0.3, decay_rate: float = 0.8,
              multiply_by_parameter_scale: bool = False,
              weight_decay_rate: Optional[float] = 1e-5,
              clipping_threshold: Optional[float] = 1.0,
              min_dim_size_to_factor: int = 128
              ) -> optax.GradientTransformation:
  """Adafactor with prompt tuning's defaults (constant learning rate)."""
  # Only the learning rate is a traced hyper-parameter; the rest steer
  # Python control flow (e.g. which dims to factor) and must stay static.
  return optax.inject_hyperparams(
      optax.adafactor, static_args=("decay_rate", "multiply_by_parameter_scale",
                                    "weight_decay_rate", "clipping_threshold",
                                    "min_dim_size_to_factor"))(
      learning_rate=learning_rate, decay_rate=decay_rate,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      weight_decay_rate=weight_decay_rate,
      clipping_threshold=clipping_threshold,
      min_dim_size_to_factor=min_dim_size_to_factor)


@gin.configurable
def adam(learning_rate: float = 7e-4, b1: float = 0.9, b2: float = 0.98,
         eps: float = 1e-9, warmup_steps: Optional[int] = 4000,
         weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Adam(W) with MSP's defaults; warmup_steps None keeps lr constant."""
  lr = (learning_rate if warmup_steps is None
        else rsqrt_schedule(learning_rate, warmup_steps))
  return optax.inject_hyperparams(optax.adamw)(
      lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def learning_rate(opt_state) -> Optional[float]:
  """The learning rate the last update used, for progress and summaries.

  Both optimizers here keep it in their state (`inject_hyperparams`); a
  user's own optax transformation may not, then None.
  """
  hyperparams = getattr(opt_state, "hyperparams", None)
  if not hyperparams or "learning_rate" not in hyperparams:
    return None
  return float(hyperparams["learning_rate"])

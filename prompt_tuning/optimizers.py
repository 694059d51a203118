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

import logging
import math
from typing import Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np
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


# The largest learning rate accepted: far above any the papers use (0.3
# for prompts, 1e-3 for model tuning), far below what only blows a prompt
# up (1e30 trains silently to prompt values of 1e30).
MAX_LEARNING_RATE = 100.0


def check_learning_rate(value, name: str) -> None:
  """A learning rate (or a schedule's peak) must be finite, > 0 and at most
  MAX_LEARNING_RATE; schedules given as functions are not checked."""
  if callable(value):
    return
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"{name}={value!r} must be a number, e.g. "
                     f"--gin.{name}=0.3.")
  if not math.isfinite(value) or not 0 < value <= MAX_LEARNING_RATE:
    raise ValueError(
        f"{name}={value!r} is not a usable learning rate: it must be finite "
        f"and in (0, {MAX_LEARNING_RATE:g}] (prompt tuning uses 0.3 with "
        "Adafactor, model tuning 1e-3).")


def with_current_hyperparams(restored, fresh):
  """A restored optimizer state whose hyper-parameters (`inject_hyperparams`:
  the learning rate) are this run's, not the checkpoint's: a changed
  learning rate on resume takes effect (with a warning) instead of being
  silently replaced by the saved one. Works on a TrainState or any
  optimizer-state tree."""
  if hasattr(restored, "opt_state") and hasattr(fresh, "opt_state"):
    return restored.replace(opt_state=with_current_hyperparams(
        restored.opt_state, fresh.opt_state))
  if hasattr(restored, "hyperparams") and hasattr(fresh, "hyperparams"):
    for key, now in fresh.hyperparams.items():
      before = restored.hyperparams.get(key)
      if before is not None and not np.allclose(np.asarray(before),
                                                np.asarray(now)):
        logging.warning("%s changed on resume: %s in the checkpoint, %s now; "
                        "using %s.", key, np.asarray(before).item(),
                        np.asarray(now).item(), np.asarray(now).item())
    return restored._replace(
        hyperparams=dict(fresh.hyperparams),
        inner_state=with_current_hyperparams(restored.inner_state,
                                             fresh.inner_state))
  if isinstance(restored, tuple) and hasattr(restored, "_fields"):
    return type(restored)(*(with_current_hyperparams(r, f)
                            for r, f in zip(restored, fresh)))
  if isinstance(restored, (tuple, list)) and len(restored) == len(fresh):
    return type(restored)(with_current_hyperparams(r, f)
                          for r, f in zip(restored, fresh))
  if isinstance(restored, dict) and isinstance(fresh, dict):
    return {k: with_current_hyperparams(v, fresh.get(k, v))
            for k, v in restored.items()}
  return restored


@gin.configurable
def adafactor(learning_rate: float = 0.3, decay_rate: float = 0.8,
              multiply_by_parameter_scale: bool = False,
              weight_decay_rate: Optional[float] = 1e-5,
              clipping_threshold: Optional[float] = 1.0,
              min_dim_size_to_factor: int = 128
              ) -> optax.GradientTransformation:
  """Adafactor with prompt tuning's defaults (constant learning rate)."""
  check_learning_rate(learning_rate, "adafactor.learning_rate")
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
  check_learning_rate(learning_rate, "adam.learning_rate")
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

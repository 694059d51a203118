"""Token cross-entropy with T5X's options: label smoothing, z-loss, normalizing."""

from __future__ import annotations

from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

LossNormalizer = Union[None, float, str]
_NORMALIZERS = ("NUM_REAL_TARGET_TOKENS", "NUM_TOTAL_TARGET_TOKENS",
                "AVERAGE_PER_SEQUENCE")


def token_log_likelihood(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """log p(target) per token: logits [b, L, V], targets [b, L] -> [b, L]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def weighted_cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, *,
    label_smoothing: float = 0.0, z_loss: float = 0.0,
    loss_normalizing_factor: LossNormalizer = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns (total loss, z-loss part, weight sum) over [b, L] tokens.

  Label smoothing spreads `label_smoothing` over the other V-1 classes and
  subtracts the smoothed distribution's entropy, so a perfect model scores 0
  (T5X's convention). z_loss adds z_loss * log(Z)^2 to keep logits bounded.
  `loss_normalizing_factor`: None sums; a number divides; or one of
  NUM_REAL_TARGET_TOKENS, NUM_TOTAL_TARGET_TOKENS, AVERAGE_PER_SEQUENCE.
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  normalizer = -(confidence * np.log(confidence)
                 + (vocab - 1) * low * np.log(low + 1e-20)) if label_smoothing else 0.0
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_probs = logits - log_z[..., None]
  target_log_prob = jnp.take_along_axis(log_probs, targets[..., None],
                                        axis=-1)[..., 0]
  if label_smoothing:
    sum_log_prob = jnp.sum(log_probs, axis=-1)
    smoothed = (confidence * target_log_prob
                + low * (sum_log_prob - target_log_prob))
    token_loss = -smoothed - normalizer
  else:
    token_loss = -target_log_prob
  token_z_loss = z_loss * jnp.square(log_z)
  weights = weights.astype(jnp.float32)
  token_loss = (token_loss + token_z_loss) * weights
  token_z_loss = token_z_loss * weights
  weight_sum = jnp.sum(weights)

  if loss_normalizing_factor == "AVERAGE_PER_SEQUENCE":
    per_sequence = jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), 1e-8)
    token_loss = token_loss / per_sequence
    token_z_loss = token_z_loss / per_sequence
    divisor = 1.0
  else:
    divisor = _divisor(loss_normalizing_factor, weights)
  return (jnp.sum(token_loss) / divisor, jnp.sum(token_z_loss) / divisor,
          weight_sum)


def _divisor(loss_normalizing_factor: LossNormalizer,
             weights: jax.Array) -> Union[float, jax.Array]:
  if loss_normalizing_factor is None:
    return 1.0
  if isinstance(loss_normalizing_factor, (int, float)):
    return float(loss_normalizing_factor)
  if loss_normalizing_factor == "NUM_REAL_TARGET_TOKENS":
    return jnp.maximum(jnp.sum(weights), 1e-8)
  if loss_normalizing_factor == "NUM_TOTAL_TARGET_TOKENS":
    return float(np.prod(weights.shape))
  raise ValueError(
      f"loss_normalizing_factor={loss_normalizing_factor!r}; use None, a "
      f"number, or one of {_NORMALIZERS}.")


def check_normalizer(loss_normalizing_factor: LossNormalizer) -> None:
  """Fails early (at model construction) on an unknown normalizer name."""
  if isinstance(loss_normalizing_factor, str) and (
      loss_normalizing_factor not in _NORMALIZERS):
    raise ValueError(
        f"loss_normalizing_factor={loss_normalizing_factor!r}; use None, a "
        f"number, or one of {_NORMALIZERS}.")


def maybe_weights(targets: jax.Array,
                  weights: Optional[jax.Array]) -> jax.Array:
  """T5X's default: every non-padding (id > 0) target counts."""
  return (targets > 0).astype(jnp.float32) if weights is None else weights

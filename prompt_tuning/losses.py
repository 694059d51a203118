"""Token cross-entropy with T5X's options: label smoothing, z-loss, normalizing."""

from __future__ import annotations

import functools
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


def token_accuracy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """1.0 where argmax(logits) == target, else 0.0: logits [b, L, V] -> [b, L].

  Argmax's rule (the first of tied maxima wins) from plain reductions: the
  target's logit is the maximum and no earlier class reaches it. XLA:CPU
  runs a variadic argmax over a 32k vocabulary several times slower than
  these max and sum reductions.
  """
  logits = logits.astype(jnp.float32)
  top = jnp.max(logits, axis=-1, keepdims=True)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)
  classes = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  earlier_top = jnp.sum(
      ((logits == top) & (classes < targets[..., None])).astype(jnp.float32),
      axis=-1)
  return ((target_logit[..., 0] == top[..., 0])
          & (earlier_top == 0)).astype(jnp.float32)


def weighted_cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, *,
    label_smoothing: float = 0.0, z_loss: float = 0.0,
    loss_normalizing_factor: LossNormalizer = None,
    segment_ids: Optional[jax.Array] = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns (total loss, z-loss part, weight sum) over [b, L] tokens.

  Label smoothing spreads `label_smoothing` over the other V-1 classes and
  subtracts the smoothed distribution's entropy, so a perfect model scores 0
  (T5X's convention). z_loss adds z_loss * log(Z)^2 to keep logits bounded.
  `loss_normalizing_factor`: None sums; a number divides; or one of
  NUM_REAL_TARGET_TOKENS, NUM_TOTAL_TARGET_TOKENS, AVERAGE_PER_SEQUENCE.
  Per-token losses never depend on packing; `segment_ids` int [b, L] of
  packed rows (T5X's `decoder_segment_ids`) only make AVERAGE_PER_SEQUENCE
  average per packed example rather than per row, as T5X does.
  """
  token_loss, log_z = _token_loss(logits.astype(jnp.float32), targets,
                                  label_smoothing, z_loss)
  token_z_loss = z_loss * jnp.square(log_z)
  weights = weights.astype(jnp.float32)
  token_loss = token_loss * weights
  token_z_loss = token_z_loss * weights
  weight_sum = jnp.sum(weights)

  if loss_normalizing_factor == "AVERAGE_PER_SEQUENCE":
    if segment_ids is None:
      per_sequence = jnp.sum(weights, axis=-1, keepdims=True)
    else:
      per_sequence = _sum_per_segment(weights, segment_ids)
    per_sequence = jnp.maximum(per_sequence, 1e-8)
    token_loss = token_loss / per_sequence
    token_z_loss = token_z_loss / per_sequence
    divisor = 1.0
  else:
    divisor = _divisor(loss_normalizing_factor, weights)
  return (jnp.sum(token_loss) / divisor, jnp.sum(token_z_loss) / divisor,
          weight_sum)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _token_loss(logits: jax.Array, targets: jax.Array, label_smoothing: float,
                z_loss: float) -> tuple[jax.Array, jax.Array]:
  """(cross-entropy + z-loss, log Z) per token: [b, L, V] -> 2 x [b, L].

  The gradient is written out, as T5X does: (softmax * (1 + 2 z_loss log Z)
  - soft targets) in one pass over the logits, with the one-hot targets
  made on the fly. Autodiff of the forward would materialize a [b, L, V]
  scatter of the target gradient and a separate softmax pass.
  """
  return _token_loss_fwd(logits, targets, label_smoothing, z_loss)[0]


def _smoothing(label_smoothing: float, vocab: int) -> tuple[float, float, float]:
  """(target weight, other-class weight, entropy of that distribution)."""
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  entropy = -(confidence * np.log(confidence)
              + (vocab - 1) * low * np.log(low + 1e-20)) if label_smoothing else 0.0
  return confidence, low, entropy


def _token_loss_fwd(logits, targets, label_smoothing, z_loss):
  confidence, low, entropy = _smoothing(label_smoothing, logits.shape[-1])
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_log_prob = jnp.take_along_axis(logits, targets[..., None],
                                        axis=-1)[..., 0] - log_z
  if label_smoothing:
    # Soft targets: `low` on every class, `confidence` on the target; minus
    # their entropy so that a perfect model scores 0 (T5X's convention).
    sum_log_prob = jnp.sum(logits - log_z[..., None], axis=-1)
    cross_entropy = -(confidence * target_log_prob
                      + low * (sum_log_prob - target_log_prob)) - entropy
  else:
    cross_entropy = -target_log_prob
  token_loss = cross_entropy + z_loss * jnp.square(log_z)
  return (token_loss, log_z), (logits, targets, log_z)


def _token_loss_bwd(label_smoothing, z_loss, residuals, cotangents):
  logits, targets, log_z = residuals
  d_loss, d_log_z = cotangents
  confidence, low, _ = _smoothing(label_smoothing, logits.shape[-1])
  probs = jnp.exp(logits - log_z[..., None])
  is_target = jax.lax.broadcasted_iota(
      jnp.int32, logits.shape, logits.ndim - 1) == targets[..., None]
  soft_targets = jnp.where(is_target, confidence, low)
  # d(log Z)/d logits = softmax; cross-entropy adds -soft targets (they sum
  # to 1), z-loss 2 z_loss log Z softmax.
  prob_scale = d_loss * (1.0 + 2.0 * z_loss * log_z) + d_log_z
  d_logits = prob_scale[..., None] * probs - d_loss[..., None] * soft_targets
  return d_logits, None


_token_loss.defvjp(_token_loss_fwd, _token_loss_bwd)


def _sum_per_segment(weights: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """Each token's packed example's weight sum: [b, L] -> [b, L].

  Ids (row, segment) are numbered row * (L + 1) + segment (segment ids are
  at most L), so one segment_sum over b * (L + 1) slots does every row.
  """
  batch, length = weights.shape
  ids = (jnp.arange(batch)[:, None] * (length + 1)
         + segment_ids.astype(jnp.int32))
  sums = jax.ops.segment_sum(weights.reshape(-1), ids.reshape(-1),
                             num_segments=batch * (length + 1))
  return sums[ids]


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

"""Autoregressive decoding loops over a KV cache.

The caller supplies `step_fn(tokens [b, 1], cache) -> (logits [b, V], cache)`
and the logits that predict the first token (from a prefill); the loop only
picks tokens. Examples stop independently at EOS or at their own budget.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

StepFn = Callable[[jax.Array, Any], tuple[jax.Array, Any]]


def _filter_logits(logits: jax.Array, topk: int, topp: float) -> jax.Array:
  """Keeps the top-k tokens and/or the smallest set with mass >= top-p."""
  masked = jnp.finfo(jnp.float32).min
  if topk:
    kth = jax.lax.top_k(logits, topk)[0][:, -1:]
    logits = jnp.where(logits < kth, masked, logits)
  if topp:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # The cut-off logit is the first whose preceding mass already reaches p.
    cutoff_index = jnp.sum(cumulative - jax.nn.softmax(sorted_logits, -1)
                           < topp, axis=-1, keepdims=True) - 1
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, masked, logits)
  return logits


def temperature_sample(step_fn: StepFn, first_logits: jax.Array, cache: Any,
                       *, max_decode_len: int, eos_id: int,
                       budgets: Optional[jax.Array] = None,
                       rng: Optional[jax.Array] = None,
                       temperature: float = 0.0, topk: int = 0,
                       topp: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Greedy (temperature 0) or sampled decoding.

  Args:
    first_logits: [batch, vocab], predicting the first output token.
    max_decode_len: output width; also the default per-example budget.
    budgets: int [batch], most tokens each example may produce.
  Returns:
    tokens [batch, max_decode_len] (EOS kept, zeros after it) and the sum of
    log p(token) under the model for the produced tokens [batch].
  """
  batch = first_logits.shape[0]
  if budgets is None:
    budgets = jnp.full((batch,), max_decode_len, jnp.int32)
  if rng is None:
    rng = jax.random.PRNGKey(0)

  def pick(logits, key):
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    if temperature == 0.0:
      token = jnp.argmax(logits, axis=-1)
    else:
      filtered = _filter_logits(logits.astype(jnp.float32) / temperature,
                                topk, topp)
      token = jax.random.categorical(key, filtered, axis=-1)
    token = token.astype(jnp.int32)
    return token, jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]

  def cond(state):
    i, _, _, _, done, _, _ = state
    return (i < max_decode_len) & ~jnp.all(done)

  def body(state):
    i, tokens, cache, logits, done, score, key = state
    key, sub = jax.random.split(key)
    token, log_prob = pick(logits, sub)
    token = jnp.where(done, 0, token)
    score = score + jnp.where(done, 0.0, log_prob)
    tokens = tokens.at[:, i].set(token)
    done = done | (token == eos_id) | (i + 1 >= budgets)
    logits, cache = jax.lax.cond(
        (i + 1 < max_decode_len) & ~jnp.all(done),
        lambda: step_fn(token[:, None], cache),
        lambda: (logits, cache))
    return i + 1, tokens, cache, logits, done, score, key

  state = (jnp.asarray(0), jnp.zeros((batch, max_decode_len), jnp.int32),
           cache, first_logits.astype(jnp.float32), budgets <= 0,
           jnp.zeros((batch,), jnp.float32), rng)
  _, tokens, _, _, _, score, _ = jax.lax.while_loop(cond, body, state)
  return tokens, score

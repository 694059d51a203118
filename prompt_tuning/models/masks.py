"""Attention masks: bool [batch, 1, q_len, kv_len], True = may attend.

Masks are built here from explicit validity / region vectors and handed to
the attention primitive; no layer derives them from token ids on its own.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def attention_mask(query_valid: jax.Array, key_valid: jax.Array) -> jax.Array:
  """[batch, q] and [batch, k] bools -> [batch, 1, q, k]."""
  return (query_valid[:, None, :, None] & key_valid[:, None, None, :])


def causal_mask(batch: int, length: int) -> jax.Array:
  """Lower-triangular [batch, 1, length, length]."""
  idx = jnp.arange(length)
  mask = idx[None, :] <= idx[:, None]
  return jnp.broadcast_to(mask, (batch, 1, length, length))


def decoder_self_mask(batch: int, length: int,
                      causal_attention: Optional[jax.Array] = None
                      ) -> jax.Array:
  """Causal mask, opened bidirectionally inside the prefix-LM input region.

  With right padding a causal mask already keeps real tokens off padding, so
  this mask needs no token ids (GPT-2's id 0 is a real token, not padding).

  Args:
    causal_attention: [batch, length] bool/int, 1 over the inputs that attend
      to each other bidirectionally (T5X's `decoder_causal_attention`), or
      None for a purely causal LM.
  """
  mask = causal_mask(batch, length)
  if causal_attention is not None:
    region = causal_attention.astype(bool)
    mask = mask | attention_mask(region, region)
  return mask


def cache_mask(cache_index: jax.Array, chunk_mask: jax.Array,
               cache_length: int) -> jax.Array:
  """Mask over all cache slots for a chunk written at `cache_index`.

  Slots before an example's index hold earlier tokens and are visible; slots
  of the chunk follow `chunk_mask`; later slots (stale or empty) are hidden.

  Args:
    cache_index: int [batch], first slot of this chunk per example.
    chunk_mask: bool [batch, 1, q, q] among the chunk's own tokens.
  Returns:
    bool [batch, 1, q, cache_length].
  """
  q = chunk_mask.shape[-1]
  slot = jnp.arange(cache_length)[None, :]
  offset = slot - cache_index[:, None]                      # [batch, cache]
  earlier = offset < 0
  in_chunk = (offset >= 0) & (offset < q)
  gathered = jnp.take_along_axis(
      chunk_mask,
      jnp.broadcast_to(jnp.clip(offset, 0, q - 1)[:, None, None, :],
                       chunk_mask.shape[:3] + (cache_length,)),
      axis=-1)
  return (earlier[:, None, None, :]
          | (in_chunk[:, None, None, :] & gathered))

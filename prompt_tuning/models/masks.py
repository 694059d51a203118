"""Attention masks: bool [batch, 1, q_len, kv_len], True = may attend.

Masks are built here from explicit validity / region / segment vectors and
handed to the attention primitive; no layer derives them from token ids on
its own.

Packing (T5X's `pack=True`) puts several examples in one row, numbered by
segment ids [batch, length]: 1, 2, 3, ... per packed example, 0 = padding.
Every mask here takes optional segment ids and then also requires query and
key to share a segment, so a packed example never sees its neighbours:
encoder self-attention, decoder self-attention (causal within the segment,
and a prefix-LM region opens only inside its own segment) and
cross-attention (decoder segment s sees encoder segment s only). Without
segment ids (unpacked rows) the masks are exactly what they were.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def segment_mask(query_segment_ids: jax.Array,
                 key_segment_ids: jax.Array) -> jax.Array:
  """Same packed example: int [batch, q] and [batch, k] -> bool [b, 1, q, k].

  Padding (segment 0) matches only padding; `attention_mask` and the
  validity vectors keep real tokens off it.
  """
  return (query_segment_ids[:, None, :, None]
          == key_segment_ids[:, None, None, :])


def attention_mask(query_valid: jax.Array, key_valid: jax.Array,
                   query_segment_ids: Optional[jax.Array] = None,
                   key_segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """[batch, q] and [batch, k] bools -> [batch, 1, q, k].

  With segment ids (packed rows: int [batch, q] and [batch, k], both or
  neither) a query also sees only keys of its own segment.
  """
  mask = query_valid[:, None, :, None] & key_valid[:, None, None, :]
  if (query_segment_ids is None) != (key_segment_ids is None):
    raise ValueError(
        "attention_mask takes segment ids for both queries and keys or for "
        "neither; a packed batch has both (e.g. decoder_segment_ids and "
        "encoder_segment_ids for cross-attention).")
  if query_segment_ids is not None:
    mask = mask & segment_mask(query_segment_ids, key_segment_ids)
  return mask


def causal_mask(batch: int, length: int) -> jax.Array:
  """Lower-triangular [batch, 1, length, length]."""
  idx = jnp.arange(length)
  mask = idx[None, :] <= idx[:, None]
  return jnp.broadcast_to(mask, (batch, 1, length, length))


def decoder_self_mask(batch: int, length: int,
                      causal_attention: Optional[jax.Array] = None,
                      segment_ids: Optional[jax.Array] = None
                      ) -> jax.Array:
  """Causal mask, opened bidirectionally inside the prefix-LM input region.

  With right padding a causal mask already keeps real tokens off padding, so
  this mask needs no token ids (GPT-2's id 0 is a real token, not padding).
  Packed rows keep padding at the end too (segment 0 after the last
  example), so the same holds within each segment.

  Args:
    causal_attention: [batch, length] bool/int, 1 over the inputs that attend
      to each other bidirectionally (T5X's `decoder_causal_attention`; in a
      packed row, each example's own inputs), or None for a purely causal LM.
    segment_ids: int [batch, length] of packed rows (T5X's
      `decoder_segment_ids`), or None for one example per row. Then both the
      causal part and the prefix-LM region are limited to the own segment.
  Returns:
    bool [batch, 1, length, length].
  """
  mask = causal_mask(batch, length)
  if causal_attention is not None:
    region = causal_attention.astype(bool)
    mask = mask | attention_mask(region, region)
  if segment_ids is not None:
    mask = mask & segment_mask(segment_ids, segment_ids)
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

"""The one attention primitive (docs/design.md §2).

Every use of attention in this library goes through `MultiHeadAttention`:
plain self/cross attention, cached decoding, soft prompts (which are just
longer inputs), KV prefixes and MSP stages (an external `kv_prefix` placed
before the keys) and stages that hand their keys/values on (the returned
`KeyValue`). Masks and position biases are explicit inputs built by the
caller over [prefix ; keys], so position conventions live in one visible place.
"""

from __future__ import annotations

from typing import Optional, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.models import layers

# Finite so that a fully masked row (a padding query) stays finite.
_MASKED_LOGIT = -1e10


@flax.struct.dataclass
class KeyValue:
  """Projected keys and values, each [batch, length, heads, head_dim].

  With `layout` "bhdk" they are [batch, heads, head_dim, length] instead: the
  operand layout XLA's batched dots take, so keys/values that are read many
  times (cross-attention in every decoding step) are not transposed on every
  read.
  """

  key: jax.Array
  value: jax.Array
  layout: str = flax.struct.field(pytree_node=False, default="blhd")

  @property
  def length_axis(self) -> int:
    return 1 if self.layout == "blhd" else 3

  def to_layout(self, layout: str) -> "KeyValue":
    """The same keys/values in `layout`; leading axes (e.g. a stack's
    layers) stay in front."""
    if layout == self.layout:
      return self
    lead = self.key.ndim - 4
    # blhd -> bhdk takes axes (b, h, d, l); bhdk -> blhd takes (b, l, h, d).
    last = (0, 2, 3, 1) if layout == "bhdk" else (0, 3, 1, 2)
    order = tuple(range(lead)) + tuple(lead + a for a in last)
    return KeyValue(jnp.transpose(self.key, order),
                    jnp.transpose(self.value, order), layout)


# einsum specs (logits, output) per key/value layout.
_EINSUMS = {
    "blhd": ("bqhd,bkhd->bhqk", "bhqk,bkhd->bqhd"),
    "bhdk": ("bqhd,bhdk->bhqk", "bhqk,bhdk->bqhd"),
}


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          *, mask: Optional[jax.Array] = None,
                          bias: Optional[jax.Array] = None,
                          scale: float = 1.0,
                          dropout_rate: float = 0.0,
                          dropout_rng: Optional[jax.Array] = None,
                          dtype: jnp.dtype = jnp.float32,
                          kv_layout: str = "blhd",
                          prefix: Optional[KeyValue] = None) -> jax.Array:
  """softmax(q k^T * scale + bias, masked) v, with logits in float32.

  Args:
    query: [batch, q_len, heads, head_dim].
    key, value: [batch, kv_len, heads, head_dim], or with kv_layout "bhdk"
      [batch, heads, head_dim, kv_len].
    mask: bool [batch, 1 or heads, q_len, kv_len]; False hides a key.
    bias: [batch or 1, heads, q_len, kv_len], added to the logits.
    prefix: keys/values attended before `key`/`value`, in its own layout;
      then mask and bias cover [prefix_len + kv_len]. The two blocks share
      one softmax but are never joined, so a decoding step copies neither
      its cache nor a long prefix (MSP's prompt and source states).
  Returns:
    [batch, q_len, heads, head_dim].
  """
  blocks = [KeyValue(key, value, kv_layout)]
  if prefix is not None:
    blocks.insert(0, prefix)
  logits = jnp.concatenate(
      [jnp.einsum(_EINSUMS[b.layout][0], query, b.key.astype(query.dtype),
                  preferred_element_type=jnp.float32) for b in blocks],
      axis=-1) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, _MASKED_LOGIT)
  weights = jax.nn.softmax(logits, axis=-1)
  if dropout_rate > 0.0 and dropout_rng is not None:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  weights = weights.astype(dtype)
  out, start = 0, 0
  for b in blocks:
    length = b.key.shape[b.length_axis]
    out = out + jnp.einsum(_EINSUMS[b.layout][1],
                           weights[..., start:start + length],
                           b.value.astype(dtype))
    start += length
  return out


class MultiHeadAttention(nn.Module):
  """Projections + `dot_product_attention`, with optional prefix and cache.

  Attributes:
    num_heads, head_dim: heads x per-head width; kernels are [embed, h*d].
    use_bias: biased projections (GPT-2).
    scale_logits: divide logits by sqrt(head_dim) (GPT-2); T5 does not.
  """

  num_heads: int
  head_dim: int
  use_bias: bool = False
  scale_logits: bool = False
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: Optional[jax.Array],
               inputs_kv: Union[jax.Array, KeyValue], *,
               mask: Optional[jax.Array] = None,
               bias: Optional[jax.Array] = None,
               kv_prefix: Optional[KeyValue] = None,
               cache_slots: Optional[jax.Array] = None,
               deterministic: bool = True) -> tuple[jax.Array, KeyValue]:
    """Attends from inputs_q to [kv_prefix ; inputs_kv (or the cache)].

    Args:
      inputs_q: [batch, q_len, embed]; None only projects inputs_kv and
        returns (None, its KeyValue in the "bhdk" layout): cross-attention
        keys/values computed once before decoding, not at every step.
      inputs_kv: [batch, kv_len, embed] (inputs_q itself for self-attention),
        or a KeyValue projected earlier, used as is.
      mask, bias: over [prefix_len + keys], see `dot_product_attention`. With
        a cache the keys are all cache slots: [prefix_len + cache_len].
      kv_prefix: external keys/values placed before the keys (prefix tuning,
        MSP stage prompts), [batch, prefix_len, heads, head_dim] or in the
        "bhdk" layout; attended in place, never joined to the keys.
      cache_slots: int [batch, q_len]; when given (cached decoding), this
        call's keys/values are written into the 'cache' collection at these
        slots and the queries attend over the whole cache.
    Returns:
      ([batch, q_len, embed], the KeyValue projected from inputs_kv alone).
    """
    joined = self.num_heads * self.head_dim
    project = lambda name, axes: layers.Dense(
        joined, axes, self.use_bias, self.dtype, name=name)
    split = lambda x: x.reshape(x.shape[:2] + (self.num_heads, self.head_dim))
    axes = ("batch", "length", "heads", "kv")
    if isinstance(inputs_kv, KeyValue):
      new_kv = inputs_kv
    else:
      new_kv = KeyValue(*(
          nn.with_logical_constraint(
              split(project(name, ("embed", "joined_kv"))(inputs_kv)), axes)
          for name in ("key", "value")))
    if inputs_q is None:
      return None, new_kv.to_layout("bhdk")
    query = split(project("query", ("embed", "joined_kv"))(inputs_q))
    query = nn.with_logical_constraint(query, axes)
    attended = new_kv
    if cache_slots is not None:
      attended = self._update_cache(new_kv.key, new_kv.value, cache_slots)

    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng("dropout")
    scale = 1.0 / np.sqrt(self.head_dim) if self.scale_logits else 1.0
    out = dot_product_attention(
        query, attended.key, attended.value, mask=mask, bias=bias,
        scale=scale, dropout_rate=self.dropout_rate, dropout_rng=dropout_rng,
        dtype=self.dtype, kv_layout=attended.layout, prefix=kv_prefix)
    out = out.reshape(out.shape[:2] + (joined,))
    out = layers.Dense(inputs_q.shape[-1], ("joined_kv", "embed"),
                       self.use_bias, self.dtype, name="out")(out)
    return nn.with_logical_constraint(out, ("batch", "length", "embed")), new_kv

  def _update_cache(self, key: jax.Array, value: jax.Array,
                    slots: jax.Array) -> KeyValue:
    """Writes [batch, q_len, h, d] at `slots`; returns the full cache.

    The cache is held as [batch, h, d, cache_len] ("bhdk"), the layout every
    decoding step's dots read, so steps do not transpose it. The first call
    (under `init`) only creates it, sized by its input: callers initialise
    with a dummy input of the maximum length, as in T5X.
    """
    is_initialized = self.has_variable("cache", "cached_key")
    batch, length, heads, head_dim = key.shape
    shape = (batch, heads, head_dim, length)
    cached_key = self.variable("cache", "cached_key", jnp.zeros, shape,
                               key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, shape,
                                 value.dtype)
    rows = jnp.arange(batch)[:, None]
    # Advanced indices around two slices: the target is [batch, q, h, d].
    full_key = cached_key.value.at[rows, :, :, slots].set(key)
    full_value = cached_value.value.at[rows, :, :, slots].set(value)
    if is_initialized:
      cached_key.value = full_key
      cached_value.value = full_value
    return KeyValue(full_key, full_value, "bhdk")

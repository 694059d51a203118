"""External keys/values placed before an attention's own keys, in every layer.

Prefix tuning, MSP stage prompts and MSP's carried-over source states are all
a `KvPrefix`: per-layer keys and values, which of them each example may see,
and the positions they occupy (or none). The stacks in `transformer.py` hand
one layer's slice to the attention primitive and widen the mask and the
relative-position bias over [prefix ; keys] here, in one visible place.
"""

from __future__ import annotations

from typing import Callable, Optional

import flax
import jax
import jax.numpy as jnp

from prompt_tuning.models.attention import KeyValue


@flax.struct.dataclass
class KvPrefix:
  """Keys/values for one attention kind across a stack.

  Attributes:
    key, value: [layers, batch or 1, P, heads, head_dim], or in the "bhdk"
      layout [layers, batch or 1, heads, head_dim, P] (what a decoding step
      reads without transposing; see `to_layout`).
    valid: bool [batch, P]; None: every prefix slot is visible to every query.
    positions: int [batch or 1, P]; None: the prefix takes no positions, so
      relative-position models add no bias for it (MSP's convention). With
      positions, relative biases are computed against them (the reference
      prefix-tuning convention: the prefix holds positions 0..P-1).
  """

  key: jax.Array
  value: jax.Array
  valid: Optional[jax.Array] = None
  positions: Optional[jax.Array] = None
  layout: str = flax.struct.field(pytree_node=False, default="blhd")

  @property
  def length(self) -> int:
    return self.key.shape[2 if self.layout == "blhd" else 4]

  def layer(self, index: int, batch: int) -> KeyValue:
    """Layer `index`'s keys and values, [batch, P, heads, head_dim] (or
    [batch, heads, head_dim, P] in the "bhdk" layout)."""
    shape = (batch,) + self.key.shape[2:]
    return KeyValue(jnp.broadcast_to(self.key[index], shape),
                    jnp.broadcast_to(self.value[index], shape), self.layout)

  def to_layout(self, layout: str) -> "KvPrefix":
    """The same prefix with every layer's keys/values in `layout`."""
    kv = KeyValue(self.key, self.value, self.layout).to_layout(layout)
    return self.replace(key=kv.key, value=kv.value, layout=layout)

  def extend_mask(self, mask: jax.Array) -> jax.Array:
    """[batch, 1, q, k] -> [batch, 1, q, P + k]; prefix seen by every query."""
    batch, _, q, _ = mask.shape
    if self.valid is None:
      visible = jnp.ones((batch, 1, q, self.length), bool)
    else:
      visible = jnp.broadcast_to(self.valid[:, None, None, :].astype(bool),
                                 (batch, 1, q, self.length))
    return jnp.concatenate([visible, mask], axis=-1)

  def extend_bias(self, bias: Optional[jax.Array], query_positions: jax.Array,
                  relpos: Optional[Callable[[jax.Array, jax.Array], jax.Array]]
                  ) -> Optional[jax.Array]:
    """[b, heads, q, k] -> [b, heads, q, P + k]; None stays None."""
    if bias is None:
      return None
    if self.positions is None or relpos is None:
      prefix_bias = jnp.zeros(bias.shape[:3] + (self.length,), bias.dtype)
    else:
      positions = jnp.broadcast_to(
          self.positions, (query_positions.shape[0], self.length))
      prefix_bias = relpos(query_positions, positions).astype(bias.dtype)
      prefix_bias = jnp.broadcast_to(prefix_bias,
                                     bias.shape[:3] + (self.length,))
    bias = jnp.broadcast_to(bias, prefix_bias.shape[:1] + bias.shape[1:])
    return jnp.concatenate([prefix_bias, bias], axis=-1)


def stack_key_values(per_layer: list[KeyValue]) -> KeyValue:
  """Per-layer [batch, L, h, d] keys/values -> [layers, batch, L, h, d]."""
  return KeyValue(jnp.stack([kv.key for kv in per_layer]),
                  jnp.stack([kv.value for kv in per_layer]))

"""The few layers every network here is built from.

Parameters are created in float32 and boxed with logical axis names (T5X's
names: vocab, embed, mlp, joined_kv, heads, relpos_buckets, abspos_buckets);
computation runs in the configured activation dtype. Kernels are 2D [in, out]
with heads joined, which is how T5X checkpoints store them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[..., jax.Array]

default_kernel_init = nn.initializers.variance_scaling(
    1.0, "fan_in", "truncated_normal")

_ACTIVATION_FNS = {
    # jax's gelu defaults to the tanh approximation: T5X's "gelu" and HF's
    # "gelu_new" (used by GPT-2 and by T5's gated-gelu) are both this one.
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu"
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "linear": lambda x: x,
}


def logical_param(module: nn.Module, name: str, init: Initializer,
                  shape: Sequence[int], axes: tuple[str, ...]) -> jax.Array:
  """A float32 parameter carrying logical axis names (one per dim)."""
  if len(axes) != len(shape):
    raise ValueError(f"{name}: axes {axes} do not match shape {shape}.")
  return module.param(name, nn.with_logical_partitioning(init, axes),
                      tuple(shape), jnp.float32)


class Dense(nn.Module):
  """y = x @ kernel (+ bias); kernel [in, features]."""

  features: int
  kernel_axes: tuple[str, str]
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = default_kernel_init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., in] -> [..., features]."""
    kernel = logical_param(self, "kernel", self.kernel_init,
                           (x.shape[-1], self.features), self.kernel_axes)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = logical_param(self, "bias", nn.initializers.zeros,
                           (self.features,), self.kernel_axes[1:])
      y = y + bias.astype(self.dtype)
    return y


class Embed(nn.Module):
  """Token (or absolute position) table [num_embeddings, features]."""

  num_embeddings: int
  features: int
  axes: tuple[str, str] = ("vocab", "embed")
  dtype: jnp.dtype = jnp.float32
  embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

  def setup(self):
    self.embedding = logical_param(
        self, "embedding", self.embedding_init,
        (self.num_embeddings, self.features), self.axes)

  def __call__(self, ids: jax.Array) -> jax.Array:
    """ids: [...] int -> [..., features]."""
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

  def attend(self, query: jax.Array) -> jax.Array:
    """Logits against every row: query [..., features] -> [..., rows]."""
    return jnp.dot(query.astype(self.dtype),
                   self.embedding.T.astype(self.dtype))


class Norm(nn.Module):
  """T5's RMS norm (scale only) or LayerNorm (scale and bias), in float32."""

  kind: str = "rms"
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., embed] -> same shape, activation dtype."""
    features = x.shape[-1]
    x = x.astype(jnp.float32)
    scale = logical_param(self, "scale", nn.initializers.ones, (features,),
                          ("embed",))
    if self.kind == "rms":
      variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
      y = x * jax.lax.rsqrt(variance + self.epsilon) * scale
    else:
      bias = logical_param(self, "bias", nn.initializers.zeros, (features,),
                           ("embed",))
      mean = jnp.mean(x, axis=-1, keepdims=True)
      variance = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
      y = (x - mean) * jax.lax.rsqrt(variance + self.epsilon) * scale + bias
    return y.astype(self.dtype)


class MlpBlock(nn.Module):
  """Gated or plain MLP: wo(prod_i act_i(wi_i(x)))."""

  mlp_dim: int
  activations: tuple[str, ...]
  use_bias: bool = False
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    """x: [batch, length, embed] -> [batch, length, embed]."""
    hidden = None
    for i, activation in enumerate(self.activations):
      # T5X names a single projection `wi`, gated ones `wi_0`, `wi_1`, ...
      name = "wi" if len(self.activations) == 1 else f"wi_{i}"
      h = Dense(self.mlp_dim, ("embed", "mlp"), self.use_bias, self.dtype,
                name=name)(x)
      h = _ACTIVATION_FNS[activation](h)
      hidden = h if hidden is None else hidden * h
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
    hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
    return Dense(x.shape[-1], ("mlp", "embed"), self.use_bias, self.dtype,
                 name="wo")(hidden)


def relative_position_bucket(relative_position: jax.Array, *,
                             bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
  """T5's log-spaced buckets of (key position - query position).

  Small distances get a bucket each; larger ones share log-spaced buckets up
  to max_distance. Bidirectional buckets split the range by sign.
  """
  bucket = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    bucket = (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  large = max_exact + (
      jnp.log(n.astype(jnp.float32) / max_exact + np.finfo(np.float32).eps)
      / np.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
  """Per-head bias from bucketed relative positions, shared by a stack."""

  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query_positions: jax.Array,
               key_positions: jax.Array) -> jax.Array:
    """[batch, q] and [batch, k] positions -> bias [batch, heads, q, k]."""
    rel_embedding = logical_param(
        self, "rel_embedding", nn.initializers.normal(stddev=1.0),
        (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"))
    relative = key_positions[:, None, :] - query_positions[:, :, None]
    buckets = relative_position_bucket(
        relative, bidirectional=self.bidirectional,
        num_buckets=self.num_buckets, max_distance=self.max_distance)
    bias = jnp.take(rel_embedding, buckets, axis=1)  # [heads, batch, q, k]
    return jnp.transpose(bias, (1, 0, 2, 3)).astype(self.dtype)

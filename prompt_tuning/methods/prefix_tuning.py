"""Prefix tuning (Li & Liang 2021): learned keys/values before every layer's
own keys, for chosen attention kinds.

A prefix table is [layers, 2 (key, value), P, heads, head_dim], produced by
one of three parameterizations:
  "none"    the table itself is the parameter;
  "mlp"     Li & Liang's: embedding [P, emb] -> Linear(emb, mid) -> tanh ->
            Linear(mid, layers*2*heads*head_dim) (PEFT's prefix_projection);
  "scaled"  MSP's: max(alpha, 1) * table, alpha a learned scalar (init 1).
`fold` computes the table once so inference and export use "none".

Positions ("shift", the default) follow Li & Liang's code and PEFT: the
prefix counts as the first P positions, so absolute-position models start
the inputs at position P and relative-position models bias the prefix keys
as positions 0..P-1. "none" gives the prefix no positions (MSP's stage
prompts): inputs start at 0 and relative models add no bias for it.

Packed batches (pack=True) are supported and exact: the prefix is the same
constant keys/values for every example and attends to nothing itself, so
every packed example sees it as it would unpacked; its positions shift each
example's own restarted positions (`decoder_positions` + P), and its
relative biases are computed against those per-example positions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from prompt_tuning.methods import base
from prompt_tuning.methods import initializers
from prompt_tuning.models import layers
from prompt_tuning.models import transformer
from prompt_tuning.models.configs import TransformerConfig
from prompt_tuning.models.kv_prefix import KvPrefix

KINDS = ("encoder_self", "decoder_self", "cross")
TABLE_AXES = ("layers", "kv_pair", "prompt", "prompt_heads", "kv")
REPARAMETERIZATIONS = ("none", "mlp", "scaled")


class PrefixTable(nn.Module):
  """One attention kind's [layers, 2, P, heads, head_dim] prefix table."""

  num_layers: int
  length: int
  num_heads: int
  head_dim: int
  emb_dim: int
  reparameterization: str = "none"
  mlp_dim: int = 512
  dropout_rate: float = 0.0
  initializer: initializers.Initializer = initializers.normal(0.02)

  @nn.compact
  def __call__(self, deterministic: bool = True) -> jax.Array:
    shape = (self.num_layers, 2, self.length, self.num_heads, self.head_dim)
    if self.reparameterization == "mlp":
      # Same layout as PEFT's prompt_embeddings -> past_key_values: output
      # features split as [layers * 2, heads, head_dim].
      hidden = base.method_param(self, "embedding", self.initializer,
                                 (self.length, self.emb_dim),
                                 ("prompt", "prompt_embed"))
      hidden = layers.Dense(self.mlp_dim, ("prompt_embed", "prompt_mlp"),
                            use_bias=True, name="mlp_in")(hidden)
      hidden = jnp.tanh(hidden)
      flat = layers.Dense(
          self.num_layers * 2 * self.num_heads * self.head_dim,
          ("prompt_mlp", "prompt_embed"), use_bias=True,
          name="mlp_out")(hidden)
      table = flat.reshape(self.length, self.num_layers, 2, self.num_heads,
                           self.head_dim).transpose(1, 2, 0, 3, 4)
    else:
      table = base.method_param(self, "kv", self.initializer, shape,
                                TABLE_AXES)
      if self.reparameterization == "scaled":
        alpha = base.method_param(self, "scale", lambda *_: jnp.ones(()),
                                  (), ())
        table = jnp.maximum(alpha, 1.0) * table
    return nn.Dropout(self.dropout_rate)(table, deterministic=deterministic)


@gin.configurable
@dataclasses.dataclass(frozen=True, eq=False)
class PrefixTuning(base.Method):
  """Per-layer key/value prefixes of `length` slots.

  Attributes:
    length: P, prefix slots per layer.
    kinds: attention kinds that get a prefix: encoder_self, decoder_self,
      cross (encoder-decoder); decoder-only models have decoder_self only.
      None: every kind the architecture has.
    reparameterization: "none", "mlp" or "scaled" (see the module doc).
    mlp_dim: hidden width of the "mlp" reparameterization.
    positions: "shift" (prefix holds positions 0..P-1, as PEFT) or "none".
    dropout_rate: dropout on the prefix table while training.
    initializer: of the table ("none"/"scaled") or the MLP's embedding.
  """

  length: int = 10
  kinds: Optional[Sequence[str]] = None
  reparameterization: str = "none"
  mlp_dim: int = 512
  positions: str = "shift"
  dropout_rate: float = 0.0
  initializer: initializers.Initializer = initializers.normal(0.02)
  trainable: Optional[Sequence[str]] = None
  default_trainable = (r"prefix/.*",)

  def __post_init__(self):
    if self.length < 1:
      raise ValueError(f"PrefixTuning length={self.length} must be >= 1.")
    if self.reparameterization not in REPARAMETERIZATIONS:
      raise ValueError(f"reparameterization={self.reparameterization!r}; "
                       f"choose one of {REPARAMETERIZATIONS}.")
    if self.positions not in ("shift", "none"):
      raise ValueError(f"positions={self.positions!r}; choose 'shift' "
                       "(prefix holds the first P positions) or 'none'.")
    if self.kinds is not None:
      object.__setattr__(self, "kinds", tuple(self.kinds))
      unknown = set(self.kinds) - set(KINDS)
      if unknown or not self.kinds:
        raise ValueError(f"kinds={self.kinds}; choose from {KINDS}.")

  def positions_taken(self) -> int:
    return self.length if self.positions == "shift" else 0

  def kinds_for(self, config: TransformerConfig) -> tuple[str, ...]:
    available = (KINDS if config.architecture == "encoder_decoder"
                 else ("decoder_self",))
    kinds = available if self.kinds is None else self.kinds
    missing = set(kinds) - set(available)
    if missing:
      raise ValueError(f"kinds {sorted(missing)} do not exist in a "
                       f"{config.architecture} model (it has {available}).")
    return tuple(kinds)

  def check_config(self, config: TransformerConfig) -> None:
    super().check_config(config)
    self.kinds_for(config)

  def table(self, config: TransformerConfig, kind: str) -> PrefixTable:
    layers_ = (config.num_encoder_layers if kind == "encoder_self"
               else config.num_decoder_layers)
    return PrefixTable(
        num_layers=layers_, length=self.length, num_heads=config.num_heads,
        head_dim=config.head_dim, emb_dim=config.emb_dim,
        reparameterization=self.reparameterization, mlp_dim=self.mlp_dim,
        dropout_rate=self.dropout_rate, initializer=self.initializer,
        name=kind)

  def networks(self) -> Mapping[str, type[nn.Module]]:
    return {"encoder_decoder": PrefixEncoderDecoder, "decoder_only": PrefixDecoderOnly}


class Prefixes(nn.Module):
  """All prefix tables of a model, under `prefix/<kind>/...`."""

  method: Any
  config: TransformerConfig

  @nn.compact
  def __call__(self, deterministic: bool = True) -> dict[str, jax.Array]:
    return {kind: self.method.table(self.config, kind)(deterministic)
            for kind in self.method.kinds_for(self.config)}


class _PrefixHooks(transformer.MethodHooks):
  """kv_prefix / position_offset from the `prefix` submodule."""

  def kv_prefix(self, kind: str, batch: int,
                features: Mapping[str, jax.Array],
                deterministic: bool = True) -> Optional[KvPrefix]:
    del batch, features
    tables = self.prefix(deterministic)
    if kind not in tables:
      return None
    table = tables[kind]
    positions = None
    if self.method.positions == "shift" and kind != "cross":
      positions = jnp.arange(self.method.length, dtype=jnp.int32)[None]
    return KvPrefix(key=table[:, 0][:, None], value=table[:, 1][:, None],
                    positions=positions)

  def position_offset(self, kind: str) -> int:
    if (self.method.positions == "shift" and kind != "cross"
        and kind in self.method.kinds_for(self.config)):
      return self.method.length
    return 0

  def init_method_params(self) -> None:
    self.prefix()


class PrefixEncoderDecoder(_PrefixHooks, transformer.EncoderDecoder):
  method: Any = None

  def setup(self):
    super().setup()
    self.prefix = Prefixes(self.method, self.config)


class PrefixDecoderOnly(_PrefixHooks, transformer.DecoderOnly):
  method: Any = None

  def setup(self):
    super().setup()
    self.prefix = Prefixes(self.method, self.config)


def fold(model, variables: Mapping[str, Any]):
  """(model, variables) with every reparameterized prefix computed once.

  The result uses reparameterization "none": the direct [layers, 2, P,
  heads, head_dim] tables under `prefix/<kind>/kv`, for inference and
  export. Dropout is off while folding.
  """
  method = model.method
  if not isinstance(method, PrefixTuning):
    raise TypeError(f"fold applies to PrefixTuning models, not {method!r}.")
  tables = model.module.apply({"params": variables["params"]},
                              method=lambda m: m.prefix(True))
  folded = dataclasses.replace(method, reparameterization="none")
  params = {k: v for k, v in variables["params"].items() if k != "prefix"}
  params["prefix"] = {kind: {"kv": table} for kind, table in tables.items()}
  new_model = folded.build_model(
      model.config, eos_id=model.eos_id,
      label_smoothing=model.label_smoothing, z_loss=model.z_loss,
      loss_normalizing_factor=model.loss_normalizing_factor,
      decoding_options=model.decoding_options)
  return new_model, {**variables, "params": flax.core.unfreeze(params)}

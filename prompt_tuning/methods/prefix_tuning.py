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
import numpy as np

from prompt_tuning.checkpoints import export
from prompt_tuning.methods import base
from prompt_tuning.methods import initializers
from prompt_tuning.models import hooks as hooks_lib
from prompt_tuning.models import layers
from prompt_tuning.models.configs import TransformerConfig
from prompt_tuning.models.kv_prefix import KvPrefix

KINDS = export.PREFIX_KINDS
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
  param_scope = "prefix"
  export_formats = ("npy", "peft")

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

  def hooks(self, config: TransformerConfig) -> "Prefixes":
    return Prefixes(config, self)

  def export_arrays(self, params, model) -> dict[str, np.ndarray]:
    """One folded [layers, 2, P, heads, head_dim] table per kind."""
    return {export.prefix_file(kind): table
            for kind, table in self._tables(params, model).items()}

  def _tables(self, params, model) -> dict[str, np.ndarray]:
    if self.reparameterization != "none":
      _, folded = fold(model, {"params": params})
      params = folded["params"]
    return export.prefix_params(params)

  def peft_adapter(self, params, model):
    """PEFT's PREFIX_TUNING: decoder self-attention prefixes only."""
    config = model.config
    kinds = self.kinds_for(config)
    if kinds != ("decoder_self",):
      raise ValueError(
          f"prefix kinds {kinds}: PEFT's prefix tuning reaches decoder "
          "self-attention only (T5's encoder and cross-attention get no "
          "prefix), so only PrefixTuning(kinds=('decoder_self',)) can be "
          "exported to PEFT; use format='npy'.")
    if self.positions != "shift":
      raise ValueError(
          f"positions={self.positions!r}: PEFT always counts the prefix as "
          "the first P positions (positions='shift'); use format='npy'.")
    table = self._tables(params, model)["decoder_self"]
    layers_, _, length, heads, head_dim = table.shape
    if config.architecture == "encoder_decoder":
      table = _t5_peft_layer_order(table)
    # Row p = [layer 0 key | layer 0 value | layer 1 key | ...], each chunk
    # split head-major: PEFT views it as [P, 2 * layers, heads, head_dim].
    flat = table.transpose(2, 0, 1, 3, 4).reshape(length, -1)
    adapter = {
        "peft_type": "PREFIX_TUNING",
        # PEFT sizes and splits the table by token_dim; heads * head_dim is
        # what the attention needs (d_model, except in T5-11B).
        "token_dim": heads * head_dim,
        # Explicit, so a T5 whose decoder depth differs from its encoder's
        # (PEFT's default reads num_layers, the encoder's) still lines up.
        "num_layers": layers_,
        # T5 needs 2: PEFT then builds the encoder-decoder cache (1
        # crashes).
        "num_transformer_submodules": (
            2 if config.architecture == "encoder_decoder" else 1),
        "prefix_projection": False,
        "encoder_hidden_size": heads * head_dim,
    }
    return adapter, {"prompt_embeddings": flat}


class Prefixes(hooks_lib.MethodHooks):
  """PrefixTuning's hooks: every prefix table of the model, under
  `prefix/<kind>/...`."""

  @nn.compact
  def __call__(self, deterministic: bool = True) -> dict[str, jax.Array]:
    return {kind: self.method.table(self.config, kind)(deterministic)
            for kind in self.method.kinds_for(self.config)}

  def kv_prefix(self, kind: str, batch: int,
                features: Mapping[str, jax.Array],
                deterministic: bool = True) -> Optional[KvPrefix]:
    del batch, features
    tables = self(deterministic)
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

  def init_params(self, embedding: jax.Array) -> None:
    del embedding
    self()


def _t5_peft_layer_order(table: np.ndarray) -> np.ndarray:
  """Our per-layer [layers, 2, P, h, d] table in PEFT's T5 slot order.

  PEFT (checked on 0.21) duplicates the table for the cross-attention half
  it later discards and splits it in fours, so T5 decoder layer i reads
  key/value slot 2i mod layers, not i. With an odd depth that is a
  permutation; with an even one layers i and i + layers/2 share a slot (and
  half the slots are never read), so only tables tied that way export.
  """
  layers_ = table.shape[0]
  slots = np.zeros_like(table)
  owner: dict[int, int] = {}
  for i in range(layers_):
    slot = (2 * i) % layers_
    if slot in owner:
      j = owner[slot]
      if not np.array_equal(table[i], table[j]):
        raise ValueError(
            f"decoder layers {j} and {i} have different prefixes, but PEFT's "
            f"T5 prefix tuning gives both the same slot ({slot}) of its "
            f"table: with an even number of decoder layers ({layers_}), "
            f"layer i always shares layer i + {layers_ // 2}'s prefix there. "
            "This prefix cannot be expressed as a PEFT adapter; use "
            "format='npy' (or a model with an odd number of decoder layers).")
    else:
      owner[slot] = i
      slots[slot] = table[i]
  return slots


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
                              method=lambda m: m.hooks(True))
  folded = dataclasses.replace(method, reparameterization="none")
  params = {k: v for k, v in variables["params"].items() if k != "prefix"}
  params["prefix"] = {kind: {"kv": table} for kind, table in tables.items()}
  new_model = folded.build_model(
      model.config, eos_id=model.eos_id,
      label_smoothing=model.label_smoothing, z_loss=model.z_loss,
      loss_normalizing_factor=model.loss_normalizing_factor,
      decoding_options=model.decoding_options)
  return new_model, {**variables, "params": flax.core.unfreeze(params)}

"""Encoder and decoder stacks, and the two network shapes built from them.

`EncoderDecoder` is T5 (1.0, 1.1, mT5) with T5X parameter names;
`DecoderOnly` is both the T5X-style decoder-only LM and the GPT-2 family,
which differ only in `TransformerConfig` switches. Stacks take *embedded*
inputs plus explicit positions and masks, so methods can insert soft prompts
or KV prefixes without touching this file.

Packed rows (T5X's `pack=True`, seqio's packing feature converters) hold
several examples each, described by the `PACKING_FEATURES`:
`*_segment_ids` int [batch, length] (1, 2, ... per packed example, 0 =
padding) and `*_positions` int [batch, length] (restarting at 0 for each
packed example). The segment ids go into every mask (`masks.py`): encoder
and decoder self-attention and cross-attention stay inside one example. The
positions replace the shared 0..L-1: GPT-2's learned absolute position
embeddings read them, and T5's relative position buckets are computed from
them. That makes relative positions exact by construction: a query and a key
of the same example get bucket(pos_k - pos_q), the distance they have
unpacked; pairs from different examples get meaningless distances, but those
pairs are masked. (seqio packs each example as one contiguous run, so row
distances would agree within a segment as well; reading the given positions
keeps exactness independent of that, at the price of a per-example bias
[batch, heads, q, k] instead of one shared [1, heads, q, k].)
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.models import attention as attention_lib
from prompt_tuning.models import combine as combine_lib
from prompt_tuning.models import hooks as hooks_lib
from prompt_tuning.models import layers
from prompt_tuning.models import masks
from prompt_tuning.models.attention import KeyValue
from prompt_tuning.models.configs import TransformerConfig
from prompt_tuning.models.hooks import MethodHooks
from prompt_tuning.models.kv_prefix import KvPrefix
from prompt_tuning.models.kv_prefix import stack_key_values

ACTIVATION_AXES = ("batch", "length", "embed")

# T5X's packing features (seqio's converters with pack=True add them).
PACKING_FEATURES = ("encoder_segment_ids", "encoder_positions",
                    "decoder_segment_ids", "decoder_positions")


def _norm(cfg: TransformerConfig, name: Optional[str] = None) -> layers.Norm:
  return layers.Norm(cfg.norm, cfg.norm_epsilon, cfg.activation_dtype,
                     name=name)


def _attention(cfg: TransformerConfig, name: str):
  return attention_lib.MultiHeadAttention(
      num_heads=cfg.num_heads, head_dim=cfg.head_dim, use_bias=cfg.use_bias,
      scale_logits=cfg.scale_attention_logits, dropout_rate=cfg.dropout_rate,
      dtype=cfg.activation_dtype, name=name)


def _relpos(cfg: TransformerConfig, bidirectional: bool,
            name: Optional[str] = None):
  return layers.RelativePositionBias(
      num_buckets=cfg.relative_attention_num_buckets,
      max_distance=cfg.relative_attention_max_distance,
      num_heads=cfg.num_heads, bidirectional=bidirectional,
      dtype=cfg.activation_dtype, name=name)


def _shared_positions(length: int) -> jax.Array:
  """Positions 0..length-1 as [1, length]: every example has the same, so
  position biases are computed once and broadcast over the batch."""
  return jnp.arange(length, dtype=jnp.int32)[None, :]


def _attention_sublayer(cfg: TransformerConfig, x: jax.Array,
                        inputs_kv: Optional[jax.Array], *, norm_name: str,
                        attention_name: str, deterministic: bool,
                        **attention_kwargs) -> tuple[jax.Array, KeyValue]:
  """x + dropout(attention(norm(x), ...)); self-attention if inputs_kv None.

  Called inside a layer's compact method, so the modules belong to it.
  Returns the new activations and the keys/values this call projected.
  """
  h = _norm(cfg, norm_name)(x)
  h, new_kv = _attention(cfg, attention_name)(
      h, h if inputs_kv is None else inputs_kv, deterministic=deterministic,
      **attention_kwargs)
  return x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic), \
      new_kv


def _mlp_sublayer(cfg: TransformerConfig, x: jax.Array,
                  deterministic: bool) -> jax.Array:
  """x + dropout(mlp(norm(x)))."""
  h = _norm(cfg, "pre_mlp_layer_norm")(x)
  h = layers.MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.use_bias,
                      cfg.dropout_rate, cfg.activation_dtype, name="mlp")(
                          h, deterministic)
  x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
  return nn.with_logical_constraint(x, ACTIVATION_AXES)


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + MLP, each with a residual connection."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array, *, mask: jax.Array,
               bias: Optional[jax.Array], kv_prefix: Optional[KeyValue],
               deterministic: bool) -> jax.Array:
    """x: [batch, length, embed] -> same."""
    x, _ = _attention_sublayer(
        self.config, x, None, norm_name="pre_attention_layer_norm",
        attention_name="attention", mask=mask, bias=bias, kv_prefix=kv_prefix,
        deterministic=deterministic)
    return _mlp_sublayer(self.config, x, deterministic)


class DecoderLayer(nn.Module):
  """Self-attention (+ cross-attention) + MLP, pre-norm, residual."""

  config: TransformerConfig
  has_cross_attention: bool

  @nn.compact
  def __call__(self, x: Optional[jax.Array], *, mask: Optional[jax.Array],
               bias: Optional[jax.Array],
               encoded: Union[None, jax.Array, KeyValue],
               cross_mask: Optional[jax.Array],
               cache_slots: Optional[jax.Array],
               self_prefix: Optional[KeyValue] = None,
               cross_prefix: Optional[KeyValue] = None,
               deterministic: bool) -> tuple[jax.Array, KeyValue]:
    """x: [batch, q, embed]; encoded: [batch, k, embed] -> [batch, q, embed].

    Also returns this layer's self-attention keys/values of x (MSP hands
    them from one stage to the next). `encoded` may be this layer's
    cross-attention KeyValue, projected once before decoding; with x None
    the layer only projects `encoded` and returns (None, that KeyValue).
    """
    cfg = self.config
    if x is None:
      return _attention(cfg, "encoder_decoder_attention")(None, encoded)
    x, self_kv = _attention_sublayer(
        cfg, x, None, norm_name="pre_self_attention_layer_norm",
        attention_name="self_attention", mask=mask, bias=bias,
        kv_prefix=self_prefix, cache_slots=cache_slots,
        deterministic=deterministic)
    if self.has_cross_attention:
      x, _ = _attention_sublayer(
          cfg, x, encoded, norm_name="pre_cross_attention_layer_norm",
          attention_name="encoder_decoder_attention", mask=cross_mask,
          kv_prefix=cross_prefix, deterministic=deterministic)
    return _mlp_sublayer(cfg, x, deterministic), self_kv


class Encoder(nn.Module):
  """T5 encoder stack over embedded inputs (bidirectional relative bias)."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, embedded: jax.Array, *, positions: jax.Array,
               mask: jax.Array, prefix: Optional[KvPrefix] = None,
               deterministic: bool = True) -> jax.Array:
    """embedded [batch, L, embed], positions [batch or 1, L], mask [b, 1, L, L].

    `positions` are each token's position within its example (per packed
    example in packed rows), from which the relative bias is computed;
    `prefix` adds per-layer keys/values before each layer's own keys.
    """
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout_rate)
    x = dropout(embedded, deterministic=deterministic)
    relpos = _relpos(cfg, True, "relpos_bias")
    bias = relpos(positions, positions)
    if prefix is not None:
      mask = prefix.extend_mask(mask)
      bias = prefix.extend_bias(bias, positions, relpos)
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(
          x, mask=mask, bias=bias,
          kv_prefix=None if prefix is None else prefix.layer(i, x.shape[0]),
          deterministic=deterministic)
    x = _norm(cfg, "encoder_norm")(x)
    return dropout(x, deterministic=deterministic)


class DecodeCacheState(nn.Module):
  """Per-example write index and slot positions of a decoder's KV cache."""

  @nn.compact
  def __call__(self, positions: Optional[jax.Array], chunk_mask: jax.Array,
               cache_advance: Optional[jax.Array], position_offset: int = 0):
    """Places a chunk of q tokens; see `masks.cache_mask`.

    Returns (query positions [b, q], mask over all cache slots [b, 1, q, C],
    positions of all slots [b, C], write slots [b, q]).
    """
    batch, q = chunk_mask.shape[0], chunk_mask.shape[-1]
    is_initialized = self.has_variable("cache", "cache_index")
    cache_index = self.variable("cache", "cache_index", jnp.zeros, (batch,),
                                jnp.int32)
    # Created under `init` with the dummy chunk's length = cache length.
    cached_positions = self.variable("cache", "cached_positions", jnp.zeros,
                                     (batch, q), jnp.int32)
    index = cache_index.value
    slots = index[:, None] + jnp.arange(q, dtype=jnp.int32)[None, :]
    positions = (slots if positions is None else positions) + position_offset
    rows = jnp.arange(batch)[:, None]
    key_positions = cached_positions.value.at[rows, slots].set(positions)
    mask = masks.cache_mask(index, chunk_mask, key_positions.shape[1])
    if is_initialized:
      advance = (jnp.full((batch,), q, jnp.int32) if cache_advance is None
                 else cache_advance.astype(jnp.int32))
      cache_index.value = index + advance
      cached_positions.value = key_positions
    return positions, mask, key_positions, slots


class Decoder(nn.Module):
  """Decoder stack with its embeddings, logits and optional KV cache.

  In decode mode the 'cache' collection holds, besides each layer's keys and
  values, a per-example write index and the position of every cached slot, so
  examples of different lengths decode side by side and relative biases use
  the true positions.
  """

  config: TransformerConfig
  has_cross_attention: bool
  shared_embedding: Optional[layers.Embed] = None

  def setup(self):
    cfg = self.config
    if self.shared_embedding is None:
      self.token_embedder = layers.Embed(
          cfg.vocab_size, cfg.emb_dim, dtype=cfg.activation_dtype)
    if cfg.position_embedding == "absolute":
      self.position_embedder = layers.Embed(
          cfg.max_position_embeddings, cfg.emb_dim,
          axes=("abspos_buckets", "embed"), dtype=cfg.activation_dtype,
          embedding_init=nn.initializers.normal(stddev=0.01))
    else:
      self.relpos_bias = _relpos(cfg, bidirectional=False)
    # Named by flax as layers_0, layers_1, ... (T5X's names).
    self.layers = [DecoderLayer(cfg, self.has_cross_attention)
                   for _ in range(cfg.num_decoder_layers)]
    self.decoder_norm = _norm(cfg)
    if not cfg.logits_via_embedding:
      self.logits_dense = layers.Dense(
          cfg.vocab_size, ("embed", "vocab"), dtype=cfg.activation_dtype)
    self.dropout = nn.Dropout(cfg.dropout_rate)
    self.cache_state = DecodeCacheState()

  def _embedder(self) -> layers.Embed:
    return self.shared_embedding or self.token_embedder

  def embed(self, tokens: jax.Array) -> jax.Array:
    """[batch, length] ids -> [batch, length, embed] (no positions yet)."""
    return self._embedder()(tokens)

  def cross_key_values(self, encoded: jax.Array) -> tuple[KeyValue, ...]:
    """Every layer's cross-attention keys/values of the encoder output.

    Decoding computes them once and passes them as `encoded`, instead of
    projecting [batch, k, embed] again at every step (HF's cross-attention
    cache; T5X re-projects).
    """
    return tuple(layer(None, mask=None, bias=None, encoded=encoded,
                       cross_mask=None, cache_slots=None, deterministic=True)[1]
                 for layer in self.layers)

  def __call__(self, embedded: jax.Array, *,
               positions: Optional[jax.Array] = None,
               self_mask: Optional[jax.Array] = None,
               encoded: Union[None, jax.Array, tuple[KeyValue, ...]] = None,
               cross_mask: Optional[jax.Array] = None,
               decode: bool = False,
               cache_advance: Optional[jax.Array] = None,
               self_prefix: Optional[KvPrefix] = None,
               cross_prefix: Optional[KvPrefix] = None,
               position_offset: int = 0,
               return_kv: bool = False,
               logits_at: Optional[jax.Array] = None,
               deterministic: bool = True):
    """Runs the stack; returns float32 logits [batch, q, vocab].

    Args:
      embedded: [batch, q, embed] token (and prompt) embeddings.
      positions: int [batch or 1, q], each token's position within its
        example (packed rows: `decoder_positions`, restarting at 0 per
        example); default 0..q-1 as [1, q], or the cache slots when
        decoding. `position_offset` is added either way.
      self_mask: bool [batch, 1, q, q] among these q tokens; default causal
        (packed rows pass `masks.decoder_self_mask` with segment ids).
        When decoding, earlier cache slots are added as visible.
      encoded, cross_mask: encoder output [batch, k, embed] (or its
        `cross_key_values`, one KeyValue per layer) and [b, 1, q, k].
      decode: write this chunk into the cache and attend over the cache.
      cache_advance: int [batch], how far each example's write index moves
        after this chunk (default q); prefill of padded prompts passes the
        true prompt lengths so decoding continues right after each prompt.
      self_prefix, cross_prefix: per-layer keys/values before the
        self-attention keys (or the cache) and the cross-attention keys.
      position_offset: added to the positions (prefixes that hold the first
        positions of every example, as in the reference prefix tuning).
      return_kv: also return every layer's self-attention keys/values of
        these q tokens, [layers, batch, q, heads, head_dim].
      logits_at: int [batch]; logits only at this position of each example,
        [batch, 1, vocab] (a prefill needs just the last prompt token's).
    """
    cfg = self.config
    batch, q = embedded.shape[:2]
    if self_mask is None:
      self_mask = masks.causal_mask(batch, q)
    cache_slots = None
    if decode:
      positions, self_mask, key_positions, cache_slots = self.cache_state(
          positions, self_mask, cache_advance, position_offset)
    else:
      if positions is None:
        positions = _shared_positions(q)
      positions = positions + position_offset
      key_positions = positions

    x = embedded
    bias = None
    if cfg.position_embedding == "absolute":
      x = x + self.position_embedder(positions)
    else:
      bias = self.relpos_bias(positions, key_positions)
    if self_prefix is not None:
      self_mask = self_prefix.extend_mask(self_mask)
      bias = self_prefix.extend_bias(
          bias, positions,
          None if cfg.position_embedding == "absolute" else self.relpos_bias)
    if cross_prefix is not None:
      cross_mask = cross_prefix.extend_mask(cross_mask)
    x = self.dropout(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ACTIVATION_AXES)
    new_kvs = []
    for i, layer in enumerate(self.layers):
      x, kv = layer(
          x, mask=self_mask, bias=bias,
          encoded=encoded[i] if isinstance(encoded, tuple) else encoded,
          cross_mask=cross_mask, cache_slots=cache_slots,
          self_prefix=(None if self_prefix is None
                       else self_prefix.layer(i, batch)),
          cross_prefix=(None if cross_prefix is None
                        else cross_prefix.layer(i, batch)),
          deterministic=deterministic)
      new_kvs.append(kv)
    if logits_at is not None:
      x = jnp.take_along_axis(x, logits_at[:, None, None], axis=1)
    x = self.decoder_norm(x)
    x = self.dropout(x, deterministic=deterministic)
    if cfg.logits_via_embedding:
      if cfg.scale_tied_logits:
        x = x * (cfg.emb_dim ** -0.5)
      logits = self._embedder().attend(x)
    else:
      logits = self.logits_dense(x)
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    logits = logits.astype(jnp.float32)
    if return_kv:
      return logits, stack_key_values(new_kvs)
    return logits

def _attach_hooks(network: nn.Module) -> None:
  """Creates the network's hooks child (inside `setup`), named by the
  method's parameter scope so its parameters keep their names."""
  method = network.method
  hooks_module = (MethodHooks(network.config) if method is None
                  else method.hooks(network.config))
  setattr(network, hooks_lib.param_scope(method), hooks_module)


class _Network(nn.Module):
  """What both networks share: the method's hooks and the packing check."""

  config: TransformerConfig
  # The frozen-dataclass method whose hooks module this network carries
  # (None: the plain pretrained model).
  method: Any = None

  @property
  def hooks(self) -> MethodHooks:
    return getattr(self, hooks_lib.param_scope(self.method))

  @property
  def extra_features(self) -> tuple[str, ...]:
    """Batch features besides T5X's that the method reads (the model
    wrappers pass exactly these through)."""
    return () if self.method is None else self.method.extra_features

  def _token_table(self) -> jax.Array:
    raise NotImplementedError

  def init_method_params(self) -> None:
    """Creates the method's parameters; `load_pretrained` calls it with the
    frozen base loaded, so initializers can read the token table."""
    self.hooks.init_params(self._token_table())

  def check_packing(self, features: Mapping[str, Any]) -> None:
    """Raises when the attached method cannot take packed rows.

    `features` holds a call's features (None = absent); any of
    `PACKING_FEATURES` among them marks packed rows, and the method's
    `check_packing` raises its one error (e.g. a soft prompt is one per row).
    """
    given = [k for k in PACKING_FEATURES if features.get(k) is not None]
    if given and self.method is not None:
      self.method.check_packing(f"the batch has {', '.join(given)}")


class EncoderDecoder(_Network):
  """T5-style encoder-decoder (T5X `Transformer` names and methods)."""

  # Decoding starts from this id (T5's BOS, 0).
  decoder_start_token_id = 0

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim,
                                       dtype=cfg.activation_dtype)
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg, has_cross_attention=True,
                           shared_embedding=self.token_embedder)
    _attach_hooks(self)

  def _token_table(self) -> jax.Array:
    return self.token_embedder.embedding

  def _input_layout(self, encoder_input_tokens: jax.Array,
                    features: Mapping[str, jax.Array]):
    """(tokens, prompt or None, Layout or None) of the encoder input."""
    joined = self.hooks.input_prompt(encoder_input_tokens, features,
                                     self._token_table())
    if joined is None:
      return encoder_input_tokens, None, None
    return joined.tokens, joined.prompt, joined.layout(joined.tokens)

  def embed_inputs(self, encoder_input_tokens: jax.Array,
                   features: Mapping[str, jax.Array]
                   ) -> tuple[jax.Array, jax.Array]:
    """Encoder input embeddings [batch, L', embed] and validity [batch, L']
    (L' = L + P with a soft prompt joined by the method's layout)."""
    tokens, prompt, layout = self._input_layout(encoder_input_tokens,
                                                features)
    embedded = self.token_embedder(tokens)
    if prompt is None:
      return embedded, tokens > 0
    return combine_lib.combine(prompt, embedded, layout), layout.valid

  def encoded_valid(self, encoder_input_tokens: jax.Array,
                    features: Mapping[str, jax.Array]) -> jax.Array:
    """Which encoder outputs cross-attention may see: [batch, L']."""
    tokens, prompt, layout = self._input_layout(encoder_input_tokens,
                                                features)
    return tokens > 0 if prompt is None else layout.valid

  def encode(self, encoder_input_tokens: jax.Array, *,
             encoder_segment_ids: Optional[jax.Array] = None,
             encoder_positions: Optional[jax.Array] = None,
             enable_dropout: bool = False, **features) -> jax.Array:
    """[batch, L] ids (0 = padding) -> [batch, L', embed].

    Packed rows add encoder_segment_ids and encoder_positions, int
    [batch, L] (see the module doc): self-attention stays inside each
    example and relative biases use the per-example positions.
    """
    self.check_packing(dict(features, encoder_segment_ids=encoder_segment_ids,
                            encoder_positions=encoder_positions))
    hooks = self.hooks
    embedded, valid = self.embed_inputs(encoder_input_tokens, features)
    batch, length = valid.shape
    positions = (_shared_positions(length) if encoder_positions is None
                 else encoder_positions)
    return self.encoder(
        embedded,
        positions=positions + hooks.position_offset("encoder_self"),
        mask=masks.attention_mask(valid, valid, encoder_segment_ids,
                                  encoder_segment_ids),
        prefix=hooks.kv_prefix("encoder_self", batch, features,
                               not enable_dropout),
        deterministic=not enable_dropout)

  def cross_key_values(self, encoded: jax.Array) -> tuple[KeyValue, ...]:
    """The decoder's cross-attention keys/values of `encoded`, per layer;
    `decode` accepts them in place of `encoded`."""
    return self.decoder.cross_key_values(encoded)

  def decoding_memory(self, encoded: jax.Array) -> tuple[KeyValue, ...]:
    """What every cached decoding step reads in place of `encoded`, computed
    once per call: the cross-attention keys/values (HF's cross-attention
    cache; T5X projects them again at every step)."""
    return self.cross_key_values(encoded)

  def decode(self, encoded: Union[jax.Array, tuple[KeyValue, ...]],
             encoder_input_tokens: jax.Array,
             decoder_input_tokens: jax.Array, *,
             decoder_positions: Optional[jax.Array] = None,
             decoder_segment_ids: Optional[jax.Array] = None,
             encoder_segment_ids: Optional[jax.Array] = None,
             enable_dropout: bool = False, decode: bool = False,
             **features) -> jax.Array:
    """Logits [batch, q, vocab] for decoder inputs [batch, q].

    Packed rows add decoder_positions and decoder_segment_ids [batch, q] and
    encoder_segment_ids [batch, L]: self-attention is causal within each
    example, and decoder segment s attends to encoder segment s only.
    """
    self.check_packing(dict(features, decoder_positions=decoder_positions,
                            decoder_segment_ids=decoder_segment_ids,
                            encoder_segment_ids=encoder_segment_ids))
    hooks = self.hooks
    batch, q = decoder_input_tokens.shape
    cross_mask = masks.attention_mask(
        jnp.ones((batch, q), bool),
        self.encoded_valid(encoder_input_tokens, features),
        decoder_segment_ids, encoder_segment_ids)
    return self.decoder(
        self.decoder.embed(decoder_input_tokens), positions=decoder_positions,
        self_mask=masks.decoder_self_mask(batch, q,
                                          segment_ids=decoder_segment_ids),
        encoded=encoded, cross_mask=cross_mask, decode=decode,
        self_prefix=hooks.kv_prefix("decoder_self", batch, features,
                                    not enable_dropout),
        cross_prefix=hooks.kv_prefix("cross", batch, features,
                                     not enable_dropout),
        position_offset=hooks.position_offset("decoder_self"),
        deterministic=not enable_dropout)

  def __call__(self, encoder_input_tokens: jax.Array,
               decoder_input_tokens: jax.Array,
               decoder_target_tokens: Optional[jax.Array] = None, *,
               enable_dropout: bool = False,
               decode: bool = False, **features) -> jax.Array:
    del decoder_target_tokens  # causal masking keeps real tokens off padding
    encoded = self.encode(encoder_input_tokens, enable_dropout=enable_dropout,
                          **features)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       enable_dropout=enable_dropout, decode=decode,
                       **features)


class DecoderOnly(_Network):
  """Decoder-only LM: T5X-style (relative bias, prefix LM) or GPT-2 family."""

  def setup(self):
    self.decoder = Decoder(self.config, has_cross_attention=False)
    _attach_hooks(self)

  def _token_table(self) -> jax.Array:
    return self.decoder.token_embedder.embedding

  def __call__(self, decoder_input_tokens: jax.Array,
               decoder_target_tokens: Optional[jax.Array] = None, *,
               decoder_causal_attention: Optional[jax.Array] = None,
               decoder_positions: Optional[jax.Array] = None,
               decoder_segment_ids: Optional[jax.Array] = None,
               enable_dropout: bool = False, decode: bool = False,
               cache_advance: Optional[jax.Array] = None,
               logits_at: Optional[jax.Array] = None,
               **features) -> jax.Array:
    """Logits [batch, q, vocab] for inputs [batch, q].

    `decoder_causal_attention` [batch, q] marks the prefix-LM input region; it
    only changes the mask when `config.prefix_lm` is set. `logits_at` int
    [batch] gives logits [batch, 1, vocab] at that input position only.
    Packed rows add decoder_positions and decoder_segment_ids [batch, q]:
    attention is causal (and the prefix-LM region bidirectional) within each
    example only, and positions restart per example.

    A soft prompt (the `input_prompt` hook) is placed by its layout and, when
    decoding, written into the cache ahead of the inputs; its logits are
    removed, so outputs line up with the inputs.
    """
    del decoder_target_tokens
    self.check_packing(dict(features, decoder_positions=decoder_positions,
                            decoder_segment_ids=decoder_segment_ids))
    region = decoder_causal_attention if self.config.prefix_lm else None
    joined = self.hooks.input_prompt(decoder_input_tokens, features,
                                     self._token_table())
    if joined is None:
      batch, q = decoder_input_tokens.shape
      return self._run(
          self.decoder.embed(decoder_input_tokens),
          positions=decoder_positions,
          self_mask=masks.decoder_self_mask(batch, q, region,
                                            decoder_segment_ids),
          decode=decode, cache_advance=cache_advance, logits_at=logits_at,
          features=features, enable_dropout=enable_dropout)
    # Only placement matters here (GPT-2's id 0 is a real token, so the
    # layout's validity is not used): right padding keeps causal masks right.
    layout = joined.layout(jnp.ones_like(joined.tokens))
    prompt_length = layout.source.shape[1] - joined.tokens.shape[1]
    if cache_advance is not None:
      cache_advance = cache_advance + prompt_length
    if logits_at is not None:
      # The input position's place among prompt and inputs.
      logits_at = jnp.take_along_axis(layout.input_position,
                                      logits_at[:, None], axis=1)[:, 0]
    logits = self._run(
        combine_lib.combine(joined.prompt, self.decoder.embed(joined.tokens),
                            layout),
        positions=None, self_mask=prompted_self_mask(layout, region),
        decode=decode, cache_advance=cache_advance, logits_at=logits_at,
        features=features, enable_dropout=enable_dropout)
    return logits if logits_at is not None else combine_lib.drop_prompt(
        logits, layout)

  def _run(self, embedded: jax.Array, *, positions: Optional[jax.Array],
           self_mask: jax.Array, decode: bool,
           cache_advance: Optional[jax.Array],
           logits_at: Optional[jax.Array], features: Mapping[str, jax.Array],
           enable_dropout: bool) -> jax.Array:
    """The decoder stack over embedded inputs, with the method's prefix."""
    hooks = self.hooks
    return self.decoder(
        embedded, positions=positions, self_mask=self_mask, decode=decode,
        cache_advance=cache_advance,
        self_prefix=hooks.kv_prefix("decoder_self", embedded.shape[0],
                                    features, not enable_dropout),
        position_offset=hooks.position_offset("decoder_self"),
        logits_at=logits_at, deterministic=not enable_dropout)

  def decode_step(self, decoder_input_tokens: jax.Array,
                  **features) -> jax.Array:
    """One cached decoding step after a prefill: [batch, 1] -> logits. The
    prefill already wrote any soft prompt into the cache."""
    batch = decoder_input_tokens.shape[0]
    return self._run(
        self.decoder.embed(decoder_input_tokens), positions=None,
        self_mask=masks.decoder_self_mask(batch, 1), decode=True,
        cache_advance=None, logits_at=None, features=features,
        enable_dropout=False)


def prompted_self_mask(layout: combine_lib.Layout,
                       region: Optional[jax.Array]) -> jax.Array:
  """Decoder-only self-attention mask over [prompt and tokens].

  Causal over the combined sequence (the prompt comes before the tokens
  it steers); with a prefix-LM input region [batch, L], the region grows to
  cover the prompt rows, which then attend bidirectionally with the inputs.
  Returns bool [batch, 1, P+L, P+L].
  """
  batch, length = layout.source.shape
  if region is not None:
    region = combine_lib.extend(region, layout, 1)
  return masks.decoder_self_mask(batch, length, region)


def build_module(config: TransformerConfig, method: Any = None) -> nn.Module:
  """The network for a config, carrying `method`'s hooks (if any)."""
  if config.architecture == "encoder_decoder":
    return EncoderDecoder(config, method=method)
  return DecoderOnly(config, method=method)

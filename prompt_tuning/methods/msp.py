"""Multi-stage prompting, MSP (Tan et al., ACL 2022), for decoder-only LMs.

A frozen decoder-only LM (GPT-2 family, mGPT, the T5X-style decoder-only LM)
translates in three stages (the second repeatable), each with its own
per-layer key/value prompt placed before the stage's keys as past
keys/values (a `KvPrefix`):

  1. encoding:    the source under past = [encoding prompt]; each layer's
                  source keys/values are kept (without the prompt).
  2. re-encoding: the same source again under past = [re-encoding prompt ;
                  stage-1 source KV]: every token sees all (valid) stage-1
                  states and the causal prefix of itself. With
                  `num_reencoding_stages` n > 1 this repeats, each pass on
                  the previous pass's KV under its own prompt.
  3. decoding:    the target, starting with the separator, under past =
                  [decoding prompt ; re-encoded source KV]. Stage-1 KV is
                  not seen here. Cached decoding stores target tokens only
                  and passes the same past on every step.

Prompts use the paper's scaled reparameterization: stage s's prompt is
max(alpha_s, 1) * phi_s, alpha_s a learned scalar initialised to 1. As in
the authors' PLM4MT, there are 2 + n stages (encoding, n re-encoding passes,
decoding), each with its own phi and alpha; with `shared_prompt` every stage
uses one phi and one alpha. The paper's two ablations are options: n = 0
(no re-encoding: decoding reads the encoding stage's states) and
`scaled_reparameterization=False` (the prompt is phi itself, no alpha).

Masks are causal in every stage, as in the paper, whatever
`config.prefix_lm` says. A prompt reaches the next stage's keys only from
one layer up (layer 0's keys project the embeddings alone), so the encoding
prompt changes the re-encoded keys from layer 2 on: it needs 3+ layers.

Positions restart at 0 in every stage: source tokens hold 0..Ls-1 in stages
1 and 2, target tokens 0..Lt-1 in stage 3. Past keys/values (prompts and
carried source states) take no positions, so absolute-position models (GPT-2)
add position embeddings to each stage's own tokens only, and relative-position
models (T5X-style) add zero bias between a token and any past slot.

Batches use encoder-decoder feature names (`encoder_input_tokens` = source,
0 = padding; `decoder_input_tokens`, `decoder_target_tokens`,
`decoder_loss_weights`), so seqio's encoder-decoder feature converter and
`EncoderDecoderModel`'s loss_fn / score_batch / predict_batch work as they
are; the loss covers target tokens only. Source padding (id 0) never reaches
real tokens: it is masked out of every stage's keys and carried states.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from prompt_tuning import model_wrappers
from prompt_tuning import param_split
from prompt_tuning.methods import base
from prompt_tuning.methods import initializers
from prompt_tuning.models import hooks as hooks_lib
from prompt_tuning.models import masks
from prompt_tuning.models import transformer
from prompt_tuning.models.configs import TransformerConfig
from prompt_tuning.models.kv_prefix import KvPrefix

# Stage s reads phi[s] and alpha[s] (index 0 of both when shared): the
# encoding stage is 0, re-encoding pass i (from 0) is 1 + i and decoding is
# the last, 1 + n.
ENCODING = 0
STAGE_PROMPT_AXES = ("stages", "layers", "kv_pair", "prompt", "prompt_heads",
                     "kv")
SCALE_AXES = ("stages",)
# `<extra_id_0>` of the mT5 SentencePiece vocabulary (250,100 pieces), the
# separator between source and target in the MSP paper's mGPT.
MGPT_SEPARATOR_ID = 250099


@flax.struct.dataclass
class SourceStates:
  """One stage's per-layer source keys/values, batch first (beam tiling
  repeats every leaf along axis 0).

  Attributes:
    key, value: [batch, layers, Ls, heads, head_dim].
    valid: bool [batch, Ls]; False marks source padding.
  """

  key: jax.Array
  value: jax.Array
  valid: jax.Array


def reencoding(i: int) -> int:
  """The stage index of re-encoding pass i (0-based)."""
  return 1 + i


def decoding(num_reencoding_stages: int) -> int:
  """The stage index of decoding, after n re-encoding passes."""
  return 1 + num_reencoding_stages


class StagePrompts(hooks_lib.MethodHooks):
  """MSP's parameters: phi [S, layers, 2, P, heads, head_dim] and alpha [S]
  (none without scaled reparameterization), S = 2 + n stages, or S = 1
  shared by all of them. `MspDecoderOnly` drives
  the stages itself, so of the hooks only `init_params` is overridden."""

  @nn.compact
  def __call__(self, stage: int) -> jax.Array:
    """Stage `stage`'s prompt max(alpha, 1) * phi: [layers, 2, P, h, d]."""
    m, cfg = self.method, self.config
    phi = base.method_param(
        self, "prompts", m.initializer,
        (m.num_stages, cfg.num_decoder_layers, 2, m.length, cfg.num_heads,
         cfg.head_dim), STAGE_PROMPT_AXES)
    index = 0 if m.num_stages == 1 else stage
    if not m.scaled_reparameterization:
      return phi[index]
    alpha = base.method_param(self, "scales", nn.initializers.ones,
                              (m.num_stages,), SCALE_AXES)
    return jnp.maximum(alpha[index], 1.0) * phi[index]

  def init_params(self, embedding: jax.Array) -> None:
    del embedding
    self(ENCODING)


@gin.configurable
@dataclasses.dataclass(frozen=True, eq=False)
class MultiStagePrompting(base.Method):
  """MSP's encoding, re-encoding and decoding prompts (decoder-only LMs).

  Attributes:
    length: P, prompt slots per layer and stage (the paper uses 128).
    num_reencoding_stages: n, how many re-encoding passes (paper: 1); each
      has its own prompt and scale. 0 is the paper's "w/o re-encoding"
      ablation: decoding reads the encoding stage's source states.
    scaled_reparameterization: each stage's prompt is max(alpha, 1) * phi
      (the paper's); False: phi alone, no alpha (its ablation).
    shared_prompt: one phi and one alpha for all 2 + n stages (PLM4MT's
      `share_prompt`).
    separator_id: the token that starts the target (stage 3's first input
      and the decoding start). Default: mGPT's `<extra_id_0>`; set it for
      other vocabularies.
    initializer: of phi; Glorot-uniform per [P, heads * head_dim] slice.
    trainable: regexes overriding which parameters train.
  """

  length: int = 128
  num_reencoding_stages: int = 1
  scaled_reparameterization: bool = True
  shared_prompt: bool = False
  separator_id: int = MGPT_SEPARATOR_ID
  initializer: initializers.Initializer = (
      initializers.xavier_uniform_per_slice())
  trainable: Optional[Sequence[str]] = None
  default_trainable = (r"msp/.*",)
  param_scope = "msp"
  architectures = ("decoder_only",)
  packing_unsupported = (
      "MSP carries each row's source keys/values into its re-encoding and "
      "decoding stages as one block, so in a packed row every example would "
      "attend to all the row's sources")

  def __post_init__(self):
    if self.length < 1:
      raise ValueError(f"MultiStagePrompting length={self.length} must be "
                       ">= 1.")
    if self.num_reencoding_stages < 0:
      raise ValueError(
          f"num_reencoding_stages={self.num_reencoding_stages} must be >= 0 "
          "(0: no re-encoding, the paper's ablation; 1: the paper's MSP).")
    if self.separator_id < 0:
      raise ValueError(f"separator_id={self.separator_id} must be a token id "
                       ">= 0.")

  def check_config(self, config: TransformerConfig) -> None:
    super().check_config(config)
    if self.separator_id >= config.vocab_size:
      raise ValueError(
          f"separator_id={self.separator_id} is outside the model's "
          f"vocabulary of {config.vocab_size}; pass the id of the separator "
          "token of this vocabulary (mGPT: <extra_id_0> = "
          f"{MGPT_SEPARATOR_ID}).")

  @property
  def num_stages(self) -> int:
    """How many (phi, alpha) pairs: 2 + n, or 1 when shared."""
    return 1 if self.shared_prompt else 2 + self.num_reencoding_stages

  def hooks(self, config: TransformerConfig) -> StagePrompts:
    return StagePrompts(config, self)

  def build_module(self, config: TransformerConfig) -> "MspDecoderOnly":
    """MSP's three stages replace the decoder-only forward pass."""
    self.check_config(config)
    return MspDecoderOnly(config, method=self)

  def wrapper_class(self, config: TransformerConfig
                    ) -> type[model_wrappers.BaseModel]:
    """Source/target batches: the encoder-decoder features and wrapper."""
    del config
    return model_wrappers.EncoderDecoderModel

  def num_params(self, config: TransformerConfig) -> int:
    """MSP's parameter count for `config`, from shapes only (no arrays)."""
    params = nn.meta.unbox(self.build_model(config).abstract_params())
    return param_split.count(params["msp"])


def _past(prompt: jax.Array, source: Optional[SourceStates],
          batch: int) -> KvPrefix:
  """[prompt ; source states] as a position-less KvPrefix.

  Args:
    prompt: [layers, 2, P, heads, head_dim].
    source: the previous stage's states, or None (stage 1).
  Returns:
    keys/values [layers, batch or 1, P (+ Ls), heads, head_dim]; valid masks
    the source padding.
  """
  key, value = prompt[:, 0][:, None], prompt[:, 1][:, None]
  if source is None:
    return KvPrefix(key=key, value=value)
  shape = (key.shape[0], batch) + key.shape[2:]
  join = lambda p, s: jnp.concatenate(
      [jnp.broadcast_to(p.astype(s.dtype), shape), jnp.swapaxes(s, 0, 1)],
      axis=2)
  valid = jnp.concatenate(
      [jnp.ones((batch, prompt.shape[2]), bool), source.valid], axis=1)
  return KvPrefix(key=join(key, source.key), value=join(value, source.value),
                  valid=valid)


def _positions(batch: int, length: int) -> jax.Array:
  """Each stage's own tokens hold positions 0..length-1."""
  return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32),
                          (batch, length))


class MspDecoderOnly(transformer.DecoderOnly):
  """A frozen DecoderOnly (params under decoder/...) driven in MSP's three
  stages, with the encoder-decoder interface (encode / decode / __call__)."""

  @property
  def decoder_start_token_id(self) -> int:
    """Where decoding starts (read by EncoderDecoderModel's predict)."""
    return self.method.separator_id

  def _decoding_prompt(self) -> jax.Array:
    return self.hooks(decoding(self.method.num_reencoding_stages))

  def _check_length(self, length: int, what: str) -> None:
    limit = self.config.max_position_embeddings
    if self.config.position_embedding == "absolute" and length > limit:
      raise ValueError(
          f"{what} length {length} exceeds the model's "
          f"{limit} positions; MSP restarts positions in each stage, so "
          f"source and target must each fit; truncate them to {limit}.")

  def _source_stage(self, embedded: jax.Array, valid: jax.Array,
                    prompt: jax.Array, previous: Optional[SourceStates],
                    deterministic: bool) -> SourceStates:
    """One pass of the source [batch, Ls, embed] under [prompt ; previous]."""
    batch, length = valid.shape
    # Causal among the source, and padding hidden from every query.
    mask = masks.causal_mask(batch, length) & valid[:, None, None, :]
    # The logits are unused; under jit XLA drops their computation (run
    # eagerly, they cost one LM-head matmul per source stage).
    _, kv = self.decoder(
        embedded, positions=_positions(batch, length), self_mask=mask,
        self_prefix=_past(prompt, previous, batch), return_kv=True,
        deterministic=deterministic)
    return SourceStates(key=jnp.swapaxes(kv.key, 0, 1),
                        value=jnp.swapaxes(kv.value, 0, 1), valid=valid)

  def source_states(self, encoder_input_tokens: jax.Array, *,
                    enable_dropout: bool = False,
                    **features) -> list[SourceStates]:
    """Every source stage's states: [encoding, re-encoding 1, ..., n].

    encoder_input_tokens: [batch, Ls] ids, 0 = padding.
    """
    self.check_packing(features)
    self._check_length(encoder_input_tokens.shape[1], "source")
    deterministic = not enable_dropout
    valid = jnp.asarray(encoder_input_tokens) > 0
    embedded = self.decoder.embed(encoder_input_tokens)
    states = [self._source_stage(embedded, valid, self.hooks(ENCODING), None,
                                 deterministic)]
    for i in range(self.method.num_reencoding_stages):
      states.append(self._source_stage(embedded, valid,
                                       self.hooks(reencoding(i)), states[-1],
                                       deterministic))
    return states

  def encode(self, encoder_input_tokens: jax.Array, *,
             enable_dropout: bool = False, **features) -> SourceStates:
    """The re-encoded source: keys/values [batch, layers, Ls, h, d]."""
    return self.source_states(encoder_input_tokens,
                              enable_dropout=enable_dropout, **features)[-1]

  def decoding_memory(self, encoded: SourceStates) -> KvPrefix:
    """Stage 3's past [decoding prompt ; re-encoded source], joined once.

    Decoding passes it to every step in place of `encoded`, in the "bhdk"
    layout the steps' dots read: otherwise each step would join prompt and
    source states again ([layers, batch, P + Ls, heads, head_dim]) and
    transpose them.
    """
    batch = encoded.valid.shape[0]
    return _past(self._decoding_prompt(), encoded, batch).to_layout("bhdk")

  def decode(self, encoded: SourceStates | KvPrefix,
             encoder_input_tokens: jax.Array,
             decoder_input_tokens: jax.Array, *,
             decoder_positions: Optional[jax.Array] = None,
             enable_dropout: bool = False, decode: bool = False,
             **features) -> jax.Array:
    """Stage 3: logits [batch, q, vocab] for decoder inputs [batch, q].

    `encoded` is the re-encoded source, or its `decoding_memory`.

    Full (non-decode) inputs follow seqio's encoder-decoder converter, which
    puts 0 in column 0; that column becomes the separator. Decode-mode
    inputs are taken as they are (predict starts from the separator).
    """
    del encoder_input_tokens  # the source is in `encoded`
    self.check_packing(dict(features, decoder_positions=decoder_positions))
    batch, q = decoder_input_tokens.shape
    # In decode mode this catches the cache-sizing call (q = cache length).
    self._check_length(q, "target")
    tokens = jnp.asarray(decoder_input_tokens)
    if not decode:
      tokens = tokens.at[:, 0].set(self.method.separator_id)
      if decoder_positions is None:
        decoder_positions = _positions(batch, q)
    return self.decoder(
        self.decoder.embed(tokens), positions=decoder_positions,
        decode=decode,
        self_prefix=(encoded if isinstance(encoded, KvPrefix)
                     else _past(self._decoding_prompt(), encoded, batch)),
        deterministic=not enable_dropout)

  def __call__(self, encoder_input_tokens: jax.Array,
               decoder_input_tokens: jax.Array,
               decoder_target_tokens: Optional[jax.Array] = None, *,
               enable_dropout: bool = False, decode: bool = False,
               **features) -> jax.Array:
    """All three stages: logits [batch, q, vocab] for the target."""
    del decoder_target_tokens  # causal masking keeps real tokens off padding
    encoded = self.encode(encoder_input_tokens, enable_dropout=enable_dropout,
                          **features)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       enable_dropout=enable_dropout, decode=decode,
                       **features)

"""Prompt tuning (Lester et al. 2021): a learned [P, H] soft prompt joined to
the embedded inputs of a frozen model.

Encoder-decoder: the prompt joins the encoder input (fully visible inside
the encoder, and cross-attention sees its outputs). Decoder-only: the prompt
joins the decoder input (before the tokens, or after BOS), the prefix-LM
region grows to cover it, and its logits are removed, so outputs and losses
line up with the tokens. Positions: the prompt occupies positions like any
token (PEFT's convention), so inputs start at position P after a prefix
prompt.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence, Union

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.methods import base
from prompt_tuning.methods import combine as combine_lib
from prompt_tuning.methods import initializers
from prompt_tuning.models import masks
from prompt_tuning.models import transformer
from prompt_tuning.models.configs import TransformerConfig

PROMPT_AXES = ("prompt", "prompt_embed")


class SoftPrompt(nn.Module):
  """The [P, H] prompt: a parameter, or a constant when serving a file."""

  length: int
  features: int
  initializer: initializers.Initializer = initializers.uniform(0.5)
  constant: Optional[np.ndarray] = None

  @nn.compact
  def __call__(self, embedding: Optional[jax.Array] = None) -> jax.Array:
    """embedding: the token table [vocab, H] for data-dependent inits."""
    if self.constant is not None:
      return jnp.asarray(self.constant, jnp.float32)
    return base.method_param(self, "prompt", self.initializer,
                             (self.length, self.features), PROMPT_AXES,
                             embedding)


def load_prompt(source: Union[str, os.PathLike, np.ndarray],
                what: str = "the served prompt") -> np.ndarray:
  """A float32 [P, H] prompt from an array or a .npy path; errors name
  `what` and the file."""
  name = "(an array)"
  if isinstance(source, (str, os.PathLike)):
    name = repr(os.fspath(source))
    if not os.path.exists(source):
      raise FileNotFoundError(f"{what} file {name} does not exist; pass the "
                              ".npy written by pt.export_prompt.")
    source = np.load(source)
  array = np.asarray(source, np.float32)
  if array.ndim != 2:
    raise ValueError(f"{what} {name} must be [P, H]; got shape "
                     f"{array.shape}.")
  return array


@gin.configurable
@dataclasses.dataclass(frozen=True, eq=False)
class PromptTuning(base.Method):
  """A soft prompt of `length` rows.

  Attributes:
    length: P, the number of prompt rows.
    initializer: see `prompt_tuning.methods.initializers` (paper default:
      uniform(0.5); from_sampled_vocab and from_class_labels do better).
    combine: where the prompt goes: "prefix", "after_bos", "suffix",
      "suffix_before_eos" (encoder inputs only), or a layout function.
    prompt: serve a fixed prompt instead of training one: a [P, H] array or
      a .npy path. It becomes a constant (no parameter, nothing to train);
      `length` is taken from it.
    trainable: regexes overriding which parameters train.
  """

  length: int = 100
  initializer: initializers.Initializer = initializers.uniform(0.5)
  combine: Union[str, combine_lib.LayoutFn] = "prefix"
  prompt: Optional[Any] = None
  trainable: Optional[Sequence[str]] = None
  default_trainable = (r"prompt/.*",)
  packing_unsupported = (
      "prompt tuning places one soft prompt per row; a packed row holds "
      "several examples, which would share that one prompt (and, through "
      "it, see each other)")

  def __post_init__(self):
    if self.prompt is not None:
      constant = load_prompt(self.prompt)
      object.__setattr__(self, "prompt", constant)
      object.__setattr__(self, "length", constant.shape[0])
      if self.trainable is None:
        object.__setattr__(self, "trainable", ())
    if self.length < 1:
      raise ValueError(f"PromptTuning length={self.length} must be >= 1.")
    combine_lib.get_layout(self.combine)  # fails early on unknown names

  @classmethod
  def from_file(cls, path: Union[str, os.PathLike], **kwargs) -> "PromptTuning":
    """An inference-only prompt served from a .npy file."""
    return cls(prompt=path, **kwargs)

  def positions_taken(self) -> int:
    return self.length

  def layout_fn(self) -> combine_lib.LayoutFn:
    return combine_lib.get_layout(self.combine)

  def check_config(self, config: TransformerConfig) -> None:
    super().check_config(config)
    if self.prompt is not None and self.prompt.shape[1] != config.emb_dim:
      raise ValueError(
          f"the served prompt is {self.prompt.shape}, but the model's "
          f"embeddings are {config.emb_dim} wide.")
    if (config.architecture == "decoder_only"
        and self.combine not in ("prefix", "after_bos")):
      raise ValueError(
          f"combine={self.combine!r}: decoder-only models take the prompt "
          "before their tokens ('prefix') or after BOS ('after_bos'); "
          "suffix prompts would follow the targets.")

  def soft_prompt(self, config: TransformerConfig) -> SoftPrompt:
    return SoftPrompt(self.length, config.emb_dim, self.initializer,
                      self.prompt, name="prompt")

  def networks(self) -> Mapping[str, type[nn.Module]]:
    return {"encoder_decoder": PromptEncoderDecoder, "decoder_only": PromptDecoderOnly}


class PromptEncoderDecoder(transformer.EncoderDecoder):
  """EncoderDecoder whose encoder input carries a soft prompt."""

  method: Any = None

  def setup(self):
    super().setup()
    self.prompt = self.method.soft_prompt(self.config)

  def soft_prompt(self, tokens: jax.Array, features: Mapping[str, jax.Array]
                  ) -> tuple[jax.Array, jax.Array]:
    """(input tokens, prompt [P, H] or [batch, P, H]); multitask overrides."""
    del features
    return tokens, self.prompt(self.token_embedder.embedding)

  def init_method_params(self) -> None:
    self.soft_prompt(jnp.ones((1, 1), jnp.int32), {})

  def _layout(self, tokens: jax.Array) -> combine_lib.Layout:
    return self.method.layout_fn()(tokens, self.method.length)

  def embed_inputs(self, encoder_input_tokens, features):
    tokens, prompt = self.soft_prompt(encoder_input_tokens, features)
    layout = self._layout(tokens)
    embedded = combine_lib.combine(prompt, self.token_embedder(tokens), layout)
    return embedded, layout.valid

  def encoded_valid(self, encoder_input_tokens, features):
    tokens, _ = self.soft_prompt(encoder_input_tokens, features)
    return self._layout(tokens).valid


class PromptDecoderOnly(transformer.DecoderOnly):
  """DecoderOnly whose input carries a soft prompt; logits exclude it."""

  method: Any = None

  def setup(self):
    super().setup()
    self.prompt = self.method.soft_prompt(self.config)

  def soft_prompt(self, tokens, features):
    del features
    return tokens, self.prompt(self.decoder.token_embedder.embedding)

  def init_method_params(self) -> None:
    self.soft_prompt(jnp.ones((1, 1), jnp.int32), {})

  def __call__(self, decoder_input_tokens, decoder_target_tokens=None, *,
               decoder_causal_attention=None, decoder_positions=None,
               enable_dropout=False, decode=False, cache_advance=None,
               logits_at=None, **features):
    """As DecoderOnly; the prompt (P rows) is placed by the layout and, when
    decoding, written into the cache ahead of the inputs."""
    del decoder_target_tokens
    self.check_packing(dict(features, decoder_positions=decoder_positions))
    tokens, prompt = self.soft_prompt(decoder_input_tokens, features)
    # Only placement matters here (GPT-2's id 0 is a real token, so the
    # layout's validity is not used): right padding keeps causal masks right.
    layout = self.method.layout_fn()(jnp.ones_like(tokens), self.method.length)
    embedded = combine_lib.combine(prompt, self.decoder.embed(tokens), layout)
    region = (decoder_causal_attention if self.config.prefix_lm else None)
    if cache_advance is not None:
      cache_advance = cache_advance + self.method.length
    if logits_at is not None:
      # The input position's place among prompt and inputs.
      logits_at = jnp.take_along_axis(layout.input_position,
                                      logits_at[:, None], axis=1)[:, 0]
    logits = self.decoder(
        embedded, self_mask=decoder_prompt_mask(layout, region),
        decode=decode, cache_advance=cache_advance, logits_at=logits_at,
        deterministic=not enable_dropout)
    return logits if logits_at is not None else combine_lib.drop_prompt(
        logits, layout)


def decoder_prompt_mask(layout: combine_lib.Layout,
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

"""The contract between a method and the two networks (docs/design.md §3).

A method (`prompt_tuning.methods`) builds one Flax module, a `MethodHooks`
subclass that holds its parameters and overrides the hooks it needs. Both
networks, `EncoderDecoder` and `DecoderOnly`, own that module as a child
named by the method's `param_scope` (so its parameters live under
`prompt/...`, `prefix/...`, `msp/...`) and call every hook below at fixed
points. The defaults are the plain frozen model, so a network without a
method behaves exactly as the pretrained one.

Which hooks a network calls, and where:

  hook               EncoderDecoder             DecoderOnly
  input_prompt       encoder input              decoder input (prefill)
  kv_prefix          encoder_self, decoder_self, decoder_self
                     cross
  position_offset    per kind, as kv_prefix     decoder_self
  init_params        `load_pretrained`, with the frozen base loaded
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

import flax.linen as nn
import jax

from prompt_tuning.models.combine import Layout
from prompt_tuning.models.configs import TransformerConfig
from prompt_tuning.models.kv_prefix import KvPrefix

Features = Mapping[str, jax.Array]


class InputPrompt(NamedTuple):
  """A soft prompt to join to a network's input tokens."""

  # int [batch, L]: the tokens the prompt joins (a method may strip some,
  # e.g. a leading task token).
  tokens: jax.Array
  # float [P, H] (one prompt for every row) or [batch, P, H] (per example).
  prompt: jax.Array
  # tokens [batch, L] -> Layout: where the P rows go among the tokens.
  layout: Callable[[jax.Array], Layout]


class MethodHooks(nn.Module):
  """Every hook a method may override, with the plain model's defaults.

  `config` is the network's config and `method` the frozen-dataclass
  method that built this module (None for the plain network).
  """

  config: Optional[TransformerConfig] = None
  method: Any = None

  def input_prompt(self, tokens: jax.Array, features: Features,
                   embedding: jax.Array) -> Optional[InputPrompt]:
    """A soft prompt for the input `tokens` [batch, L], or None.

    `embedding` is the frozen token table [vocab, H] (data-dependent
    initializers read it). The network embeds the returned tokens, joins the
    prompt by the layout, masks and positions the joined sequence, and (in
    decoder-only models) removes the prompt's logits again.
    """
    del tokens, features, embedding
    return None

  def kv_prefix(self, kind: str, batch: int, features: Features,
                deterministic: bool = True) -> Optional[KvPrefix]:
    """Keys/values placed before one attention kind's own keys:
    'encoder_self', 'decoder_self' or 'cross'."""
    del kind, batch, features, deterministic
    return None

  def position_offset(self, kind: str) -> int:
    """How many positions a prefix holds before the inputs of `kind`."""
    del kind
    return 0

  def init_params(self, embedding: jax.Array) -> None:
    """Creates the method's parameters without a batch; `load_pretrained`
    calls it with the frozen base loaded, so initializers can read
    `embedding` [vocab, H]."""
    del embedding


def param_scope(method: Any) -> str:
  """The name of a network's hooks child: the top-level name of the
  method's parameters ("method_hooks" where it has none)."""
  scope = None if method is None else method.param_scope
  return scope or "method_hooks"

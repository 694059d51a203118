"""What every parameter-efficient method is: a frozen-dataclass recipe.

A method builds the Flax module (a network subclass overriding the hooks of
`models.transformer.MethodHooks`), names the T5X-interface wrapper that
drives it, and says which parameters train; `method_param` is how its
modules create their parameters. The same objects are what gin
binds and what a notebook passes to `pt.load_pretrained(..., method=...)`.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax

from prompt_tuning import model_wrappers
from prompt_tuning.methods import initializers
from prompt_tuning.models import transformer
from prompt_tuning.models.configs import TransformerConfig


class Method:
  """Base of PromptTuning, PrefixTuning, MultiStagePrompting, ...

  Subclasses are frozen dataclasses with a `trainable` field: None takes
  `default_trainable`, a sequence of regexes (full match against "/"-joined
  parameter names such as "prompt/prompt") overrides it.
  """

  trainable: Optional[Sequence[str]] = None
  default_trainable: tuple[str, ...] = ()
  # Architectures the method supports ('encoder_decoder', 'decoder_only').
  architectures: tuple[str, ...] = ("encoder_decoder", "decoder_only")
  # Why the method cannot take packed rows (T5X's pack=True: several
  # examples per row), or None when it can: then the network's segment
  # masks and per-example positions keep each example exact.
  packing_unsupported: Optional[str] = None

  def trainable_patterns(self) -> tuple[str, ...]:
    return tuple(self.default_trainable if self.trainable is None
                 else self.trainable)

  def check_config(self, config: TransformerConfig) -> None:
    if config.architecture not in self.architectures:
      raise ValueError(
          f"{type(self).__name__} works with {self.architectures} models, "
          f"not a {config.architecture!r} one.")

  def positions_taken(self) -> int:
    """Sequence positions the method's inputs occupy (the input budget)."""
    return 0

  def check_packing(self, source: str) -> None:
    """Raises the method's one packing error when it cannot take packed
    rows; `source` says where packing was seen (a batch's packing features,
    or DatasetConfig.pack=True)."""
    if self.packing_unsupported is None:
      return
    raise ValueError(
        f"{type(self).__name__} cannot take packed batches ({source}): "
        f"{self.packing_unsupported}. Set pack=False "
        "(--gin.DatasetConfig.pack=False, or the scoped "
        "train/DatasetConfig.pack where a gin file sets it; seqio's "
        "feature converters: pack=False).")

  def check_batch(self, batch) -> None:
    """Checks a batch's values before the compiled model sees them (the
    wrappers call it outside jit, where values are concrete)."""
    del batch

  def networks(self) -> Mapping[str, type[nn.Module]]:
    """The network class per architecture that carries this method (its
    hooks); an architecture left out gets the plain network."""
    return {}

  def build_module(self, config: TransformerConfig) -> nn.Module:
    """The network with this method attached."""
    self.check_config(config)
    network = self.networks().get(config.architecture)
    if network is None:
      return transformer.build_module(config)
    return network(config, method=self)

  def wrapper_class(self, config: TransformerConfig
                    ) -> type[model_wrappers.BaseModel]:
    """The T5X-interface wrapper (which features the batches carry)."""
    if config.architecture == "encoder_decoder":
      return model_wrappers.EncoderDecoderModel
    return model_wrappers.DecoderOnlyModel

  def build_model(self, config: TransformerConfig,
                  **kwargs) -> model_wrappers.BaseModel:
    return self.wrapper_class(config)(
        config, module=self.build_module(config), method=self, **kwargs)


def method_param(module: nn.Module, name: str,
                 initializer: initializers.Initializer,
                 shape: Sequence[int], axes: tuple[str, ...],
                 embedding: Optional[jax.Array] = None) -> jax.Array:
  """A float32 method parameter with logical axes; its initializer may read
  the frozen token embedding (sampled vocabulary, class labels, text) or be
  a Flax/JAX initializer."""
  init = lambda rng, shape: initializers.initialize(initializer, rng, shape,
                                                    embedding)
  return module.param(name, nn.with_logical_partitioning(init, axes),
                      tuple(shape))

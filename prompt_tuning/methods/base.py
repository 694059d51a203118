"""What every parameter-efficient method is: a frozen-dataclass recipe.

A method builds the Flax module (a network subclass overriding the hooks of
`models.transformer.MethodHooks`), names the T5X-interface wrapper that
drives it, and says which parameters train. The same objects are what gin
binds and what a notebook passes to `pt.load_pretrained(..., method=...)`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn

from prompt_tuning import model_wrappers
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

  def check_batch(self, batch) -> None:
    """Checks a batch's values before the compiled model sees them (the
    wrappers call it outside jit, where values are concrete)."""
    del batch

  def build_module(self, config: TransformerConfig) -> nn.Module:
    """The network with this method attached."""
    self.check_config(config)
    return transformer.build_module(config)

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

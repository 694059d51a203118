"""What every parameter-efficient method is: a frozen-dataclass recipe.

A method declares, in one place (docs/design.md §3):
  - its hooks module (`hooks`): a `models.hooks.MethodHooks` subclass holding
    its parameters under `param_scope`, which both networks call;
  - which parameters train, which architectures and batches it takes, and
    which batch features it reads (`extra_features`);
  - its capabilities: the export formats it writes (`export_formats`,
    `export_arrays`, `peft_adapter`) and the parameter a prompt `.npy` file
    fills (`prompt_file_param`).
Nothing outside `methods/` checks a method's type: it asks these. The same
objects are what gin binds and what a notebook passes to
`pt.load_pretrained(..., method=...)`; `method_param` is how hooks modules
create their parameters.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np

from prompt_tuning import model_wrappers
from prompt_tuning.methods import initializers
from prompt_tuning.models import combine as combine_lib
from prompt_tuning.models import hooks as hooks_lib
from prompt_tuning.models import transformer
from prompt_tuning.models.configs import TransformerConfig

Params = Any


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
  # Top-level name of the method's parameters (its hooks module's name in
  # the network), e.g. "prompt" -> prompt/prompt; None: it adds none.
  param_scope: Optional[str] = None
  # Batch features besides T5X's that the network must receive (e.g.
  # task_ids); the model wrappers pass exactly these through.
  extra_features: tuple[str, ...] = ()
  # Formats `pt.export_prompt` can write for this method ("npy", "peft");
  # run checkpoints also hold the "npy" files of methods that have them.
  export_formats: tuple[str, ...] = ()
  # "/"-joined name of the [P, H] parameter that a prompt .npy file (what
  # export format "npy" writes) fills when serving; None: no such file.
  prompt_file_param: Optional[str] = None

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

  def hooks(self, config: TransformerConfig) -> hooks_lib.MethodHooks:
    """The unbound hooks module the networks attach (no hooks here)."""
    return hooks_lib.MethodHooks(config, self)

  def build_module(self, config: TransformerConfig) -> nn.Module:
    """The network with this method's hooks attached."""
    self.check_config(config)
    return transformer.build_module(config, method=self)

  def wrapper_class(self, config: TransformerConfig
                    ) -> type[model_wrappers.BaseModel]:
    """The T5X-interface wrapper (which features the batches carry)."""
    return model_wrappers.wrapper_class(config)

  def build_model(self, config: TransformerConfig,
                  **kwargs) -> model_wrappers.BaseModel:
    return self.wrapper_class(config)(
        config, module=self.build_module(config), method=self, **kwargs)

  # Capabilities: what the export and serving code may ask of a method.

  def export_arrays(self, params: Params, model: Any
                    ) -> dict[str, np.ndarray]:
    """{file name: float32 array} that export format "npy" writes."""
    del params, model
    raise ValueError(
        f"{type(self).__name__}: format='npy' writes PromptTuning's [P, H] "
        "prompt and PrefixTuning's tables; save other methods' parameters "
        "with their checkpoints.")

  def peft_adapter(self, params: Params, model: Any
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(adapter_config entries, adapter tensors by PEFT's names, with
    "prompt_embeddings" first) of a PEFT adapter computing exactly what this
    method computes."""
    del params, model
    raise ValueError(
        f"{type(self).__name__} has no PEFT counterpart; format='peft' "
        "exports PromptTuning, PrefixTuning and MultitaskPromptTuning. Use "
        "format='npy'.")



class SoftPromptMethod(Method):
  """A method whose hooks join a soft prompt of `length` rows to the input
  tokens where `combine` puts it (subclasses define both fields): prompt
  tuning, multitask prompts and MPT."""

  param_scope = "prompt"

  def positions_taken(self) -> int:
    return self.length

  def layout_fn(self) -> combine_lib.LayoutFn:
    return combine_lib.get_layout(self.combine)

  def layout(self, tokens: jax.Array) -> combine_lib.Layout:
    """Where the prompt goes among `tokens` [batch, L]."""
    return self.layout_fn()(tokens, self.length)

  def check_config(self, config: TransformerConfig) -> None:
    super().check_config(config)
    if (config.architecture == "decoder_only"
        and self.combine not in ("prefix", "after_bos")):
      raise ValueError(
          f"combine={self.combine!r}: decoder-only models take the prompt "
          "before their tokens ('prefix') or after BOS ('after_bos'); "
          "suffix prompts would follow the targets.")

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


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

from prompt_tuning.checkpoints import export
from prompt_tuning.checkpoints import npy
from prompt_tuning.methods import base
from prompt_tuning.models import combine as combine_lib
from prompt_tuning.methods import initializers
from prompt_tuning.models import hooks as hooks_lib
from prompt_tuning.models.configs import TransformerConfig

PROMPT_AXES = ("prompt", "prompt_embed")


class SoftPrompt(hooks_lib.MethodHooks):
  """PromptTuning's hooks: the [P, H] prompt joined to the input tokens (a
  parameter, or a constant when serving a file)."""

  @nn.compact
  def __call__(self, embedding: Optional[jax.Array] = None) -> jax.Array:
    """embedding: the token table [vocab, H] for data-dependent inits."""
    method = self.method
    if method.prompt is not None:
      return jnp.asarray(method.prompt, jnp.float32)
    return base.method_param(self, "prompt", method.initializer,
                             (method.length, self.config.emb_dim),
                             PROMPT_AXES, embedding)

  def input_prompt(self, tokens, features, embedding):
    del features
    return hooks_lib.InputPrompt(tokens, self(embedding), self.method.layout)

  def init_params(self, embedding: jax.Array) -> None:
    self(embedding)


def load_prompt(source: Union[str, os.PathLike, np.ndarray],
                what: str = "the prompt") -> np.ndarray:
  """A float32 [P, H] prompt from an array or a .npy path; errors name
  `what` and the file.

  Raises:
    FileNotFoundError: no file at the path.
    ValueError: not a readable .npy file (see `npy.load`), not [P, H], no
      rows, or NaN / Inf values (a prompt from a run whose loss diverged
      would give NaN scores and empty outputs).
  """
  name = "(an array)"
  if isinstance(source, (str, os.PathLike)):
    name = repr(os.fspath(source))
    source = npy.load(source, f"{what} file")
  try:
    array = np.asarray(source, np.float32)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{what} {name} is not a numeric [P, H] array "
                     f"({type(source).__name__}: {e}).") from e
  if array.ndim != 2:
    raise ValueError(f"{what} {name} must be [P, H] (prompt rows x the model "
                     f"width); got shape {array.shape}.")
  if array.shape[0] == 0:
    raise ValueError(f"{what} {name} is empty (shape {array.shape}); a "
                     "prompt has P >= 1 rows.")
  npy.check_finite(array, f"{what} {name}",
                   "export the prompt again from a checkpoint whose loss was "
                   "finite")
  return array


@gin.configurable
@dataclasses.dataclass(frozen=True, eq=False)
class PromptTuning(base.SoftPromptMethod):
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
  export_formats = ("npy", "peft")
  prompt_file_param = "prompt/prompt"
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

  def check_config(self, config: TransformerConfig) -> None:
    super().check_config(config)
    if self.prompt is not None and self.prompt.shape[1] != config.emb_dim:
      raise ValueError(
          f"the served prompt is {self.prompt.shape}, but the model's "
          f"embeddings are {config.emb_dim} wide.")

  def hooks(self, config: TransformerConfig) -> SoftPrompt:
    return SoftPrompt(config, self)

  def export_arrays(self, params, model) -> dict[str, np.ndarray]:
    del model
    prompt = self._prompt_array(params)
    return {} if prompt is None else {export.PROMPT_FILE: prompt}

  def _prompt_array(self, params) -> Optional[np.ndarray]:
    """The float32 [P, H] prompt (the served constant or the parameter)."""
    if self.prompt is not None:
      return np.asarray(self.prompt, np.float32)
    return export.prompt_param(params)

  def peft_adapter(self, params, model):
    """PEFT's PROMPT_TUNING: one [P, H] table before the (encoder) input."""
    config = model.config
    adapter = peft_prompt_config(self, config, "PROMPT_TUNING")
    prompt = self._prompt_array(params)
    if prompt is None:
      raise ValueError("the params hold no prompt/prompt to export.")
    if prompt.shape[1] != config.emb_dim:
      raise ValueError(f"the prompt is {prompt.shape}, but the model's "
                       f"embeddings are {config.emb_dim} wide.")
    return adapter, {"prompt_embeddings": prompt}


def peft_prompt_config(method: base.SoftPromptMethod,
                       config: TransformerConfig,
                       peft_type: str) -> dict[str, Any]:
  """The adapter_config entries of PEFT's soft-prompt methods, after
  checking PEFT places the prompt as `method` does."""
  if method.combine != "prefix":
    raise ValueError(
        f"combine={method.combine!r}: PEFT places the prompt before the "
        "inputs only; export a combine='prefix' prompt, or use "
        "format='npy'.")
  is_t5 = config.architecture == "encoder_decoder"
  return {
      "peft_type": peft_type,
      "token_dim": config.emb_dim,
      # What PEFT fills in from the transformers config (T5: encoder depth).
      "num_layers": (config.num_encoder_layers if is_t5
                     else config.num_decoder_layers),
      # One [P, H] table for the encoder input; PEFT's T5 default of 2 would
      # expect [2P, H] and never read the second half.
      "num_transformer_submodules": 1,
      "prompt_tuning_init": "RANDOM",
  }

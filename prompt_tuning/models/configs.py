"""Architecture configs: one dataclass describes every network we build.

T5.1.1, T5 1.0, mT5, the T5X-style decoder-only LM and the GPT-2 family differ
only in a handful of switches (norm kind, biases, position scheme, activation,
how logits are made), so they share one config and one set of layers.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Literal, Optional

import gin
from gin import config_parser
import jax.numpy as jnp

from prompt_tuning import gin_paths

Architecture = Literal["encoder_decoder", "decoder_only"]

_ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_exact", "linear", "silu")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyper-parameters of one network; `__post_init__` rejects impossible ones."""

  # Which network: T5-style encoder-decoder, or a decoder-only LM.
  architecture: Architecture = "encoder_decoder"
  # Rows of the token embedding table (T5: 32128, padded from 32100).
  vocab_size: int = 32128
  # Model width H.
  emb_dim: int = 512
  # Attention heads and per-head width; heads * head_dim need not equal emb_dim.
  num_heads: int = 8
  head_dim: int = 64
  # Hidden width of the MLP block.
  mlp_dim: int = 2048
  # Depth of each stack (num_encoder_layers is ignored for decoder-only).
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  # One entry per input projection; ("gelu", "linear") is T5.1.1's gated GELU
  # (wi_0, wi_1), ("relu",) is T5 1.0's single `wi`, ("gelu_new",) is GPT-2.
  mlp_activations: tuple[str, ...] = ("gelu", "linear")
  # "rms": T5's scale-only RMS norm; "layer": LayerNorm with scale and bias.
  norm: Literal["rms", "layer"] = "rms"
  norm_epsilon: float = 1e-6
  # Biases on every projection (GPT-2) or none (T5).
  use_bias: bool = False
  # "relative": T5 bucketed bias; "absolute": learned position table (GPT-2).
  position_embedding: Literal["relative", "absolute"] = "relative"
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  # Rows of the absolute position table (GPT-2: n_positions).
  max_position_embeddings: int = 1024
  # Tie logits to the token embedding (T5 1.0, GPT-2) instead of logits_dense.
  logits_via_embedding: bool = False
  # T5 1.0 rescales tied logits by 1/sqrt(emb_dim); GPT-2 does not.
  scale_tied_logits: bool = True
  # Divide attention logits by sqrt(head_dim) (GPT-2); T5 folds it into init.
  scale_attention_logits: bool = False
  # Decoder-only only: inputs (prefix) attend bidirectionally (prefix LM).
  prefix_lm: bool = False
  dropout_rate: float = 0.0
  # Activation dtype; parameters are always created in float32.
  dtype: str = "float32"
  # How random weights start (pretraining from scratch; loaded bases ignore
  # it). None: T5X's (fan-in variance scaling, unit-normal embeddings).
  # A number: GPT-2's, normal(init_std) kernels and embeddings, with each
  # residual branch's output projection scaled by 1/sqrt(2 * layers).
  init_std: Optional[float] = None

  def __post_init__(self):
    if self.architecture not in ("encoder_decoder", "decoder_only"):
      raise ValueError(
          f"architecture={self.architecture!r}; use 'encoder_decoder' or "
          "'decoder_only'.")
    for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                 "num_decoder_layers"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name}={getattr(self, name)} must be positive.")
    if self.architecture == "encoder_decoder" and self.num_encoder_layers <= 0:
      raise ValueError(
          f"num_encoder_layers={self.num_encoder_layers} must be positive for "
          "an encoder-decoder model.")
    unknown = [a for a in self.mlp_activations if a not in _ACTIVATIONS]
    if not self.mlp_activations or unknown:
      raise ValueError(
          f"mlp_activations={self.mlp_activations!r}; each must be one of "
          f"{_ACTIVATIONS}.")
    if self.norm not in ("rms", "layer"):
      raise ValueError(f"norm={self.norm!r}; use 'rms' or 'layer'.")
    if self.position_embedding not in ("relative", "absolute"):
      raise ValueError(
          f"position_embedding={self.position_embedding!r}; use 'relative' or "
          "'absolute'.")
    if self.prefix_lm and self.architecture != "decoder_only":
      raise ValueError("prefix_lm=True only applies to decoder_only models.")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"dropout_rate={self.dropout_rate} must be in [0, 1).")
    try:
      jnp.dtype(self.dtype)
    except TypeError as e:
      raise ValueError(
          f"dtype={self.dtype!r} is not a dtype; use 'float32' or "
          "'bfloat16'.") from e

  @property
  def activation_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  def replace(self, **changes) -> TransformerConfig:
    return dataclasses.replace(self, **changes)


# The named presets are the shipped gin files (gin/models/<family>_<size>.gin),
# the one place their sizes are written; users override them in gin as in
# T5X (`TransformerConfig.emb_dim = ...`) or here with keyword overrides.


def t5_1_1(size: str = "small", **overrides) -> TransformerConfig:
  """T5.1.1 / LM-adapted T5.1.1: gated GELU, untied logits, RMS norm.

  The sizes are gin/models/t5_1_1_<size>.gin (tiny, small, base, large, xl,
  xxl); `overrides` replace fields of that config.
  """
  return _preset("t5_1_1", size, overrides)


def mt5(size: str = "small", **overrides) -> TransformerConfig:
  """mT5: the T5.1.1 architecture with a 250,112-row vocabulary
  (gin/models/mt5_<size>.gin)."""
  return _preset("mt5", size, overrides)


def gpt2(size: str = "small", **overrides) -> TransformerConfig:
  """GPT-2 family: LayerNorm with bias, biased projections, tied LM head
  (gin/models/gpt2_<size>.gin: small, medium, large, xl)."""
  return _preset("gpt2", size, overrides)


def mgpt(**overrides) -> TransformerConfig:
  """mGPT as used by MSP (Tan et al. 2022): GPT-2 medium shape (24 layers,
  width 1024, 16 heads) over the 250,100-piece mT5 SentencePiece vocabulary
  (gin/models/mgpt.gin)."""
  return from_gin("mgpt").replace(**overrides)


def _preset(family: str, size: str, overrides) -> TransformerConfig:
  prefix = f"{family}_"
  sizes = sorted(name[len(prefix):] for name in _shipped_models()
                 if name.startswith(prefix))
  if size not in sizes:
    raise ValueError(f"size={size!r}; known sizes: {sizes}.")
  return from_gin(prefix + size).replace(**overrides)


def t5_1_0(size: str = "small", **overrides) -> TransformerConfig:
  """Original T5: ReLU MLP, logits via the shared embedding.

  No gin files ship for T5 1.0, so its sizes are written only here.
  """
  if size not in _T5_1_0_SIZES:
    raise ValueError(f"size={size!r}; known sizes: {sorted(_T5_1_0_SIZES)}.")
  emb, heads, head_dim, mlp, layers = _T5_1_0_SIZES[size]
  defaults = dict(
      architecture="encoder_decoder", vocab_size=32128, emb_dim=emb,
      num_heads=heads, head_dim=head_dim, mlp_dim=mlp,
      num_encoder_layers=layers, num_decoder_layers=layers,
      mlp_activations=("relu",), logits_via_embedding=True)
  return TransformerConfig(**{**defaults, **overrides})


# (emb_dim, num_heads, head_dim, mlp_dim, num_layers)
_T5_1_0_SIZES = {
    "small": (512, 8, 64, 2048, 6),
    "base": (768, 12, 64, 3072, 12),
    "large": (1024, 16, 64, 4096, 24),
    "3b": (1024, 32, 128, 16384, 24),
    "11b": (1024, 128, 128, 65536, 24),
}


# --- Reading a gin model file without gin's global state.

# How gin may name the class: TransformerConfig, configs.TransformerConfig,
# prompt_tuning.models.configs.TransformerConfig.
_QUALIFIED_NAME = f"{__name__}.TransformerConfig"


def _models_dir() -> str:
  return os.path.join(gin_paths.gin_search_path(), "models")


def _shipped_models() -> list[str]:
  return sorted(f[:-4] for f in os.listdir(_models_dir()) if f.endswith(".gin"))


def from_gin(name_or_path: str) -> TransformerConfig:
  """The config a gin model file binds, e.g. "t5_1_1_base" or a .gin path.

  Shipped names resolve under the installed gin/models/. The file is read
  with gin's public parser, following its includes (looked up under the
  shipped gin dir, then next to the including file): its unscoped
  `TransformerConfig.<field> = <literal>` bindings, a later one winning,
  over the dataclass defaults. Other statements (imports, macros such as
  `MODEL_CONFIG = @TransformerConfig()`, other configurables) are skipped.
  gin's global state is neither read nor changed.

  Raises:
    FileNotFoundError: no such file or shipped model, or a missing include.
    ValueError: a TransformerConfig binding whose value is not a literal
      (a %macro or @reference), or that names no field.
  """
  path = name_or_path
  if not os.path.isfile(path):
    path = os.path.join(_models_dir(), f"{name_or_path}.gin")
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"no gin model file {name_or_path!r}: not a file, and not one of "
          f"the shipped models {_shipped_models()}.")
  fields: dict[str, object] = {}
  _read_bindings(path, fields, ())
  return TransformerConfig(**fields)


@dataclasses.dataclass(frozen=True)
class _NotLiteral:
  text: str  # As written: %MACRO or @ref().


class _LiteralsOnly(config_parser.ParserDelegate):
  """Leaves macros and references unresolved (gin's own delegate would look
  them up in the global registry)."""

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return _NotLiteral(f"@{scoped_configurable_name}{'()' if evaluate else ''}")

  def macro(self, macro_name):
    return _NotLiteral(f"%{macro_name}")


def _read_bindings(path: str, fields: dict[str, object],
                   including: tuple[str, ...]) -> None:
  """Adds the TransformerConfig bindings of `path`, and of the files it
  includes at the point of each include, to `fields` in order."""
  if os.path.realpath(path) in including:
    raise ValueError(f"gin file {path} includes itself (through "
                     f"{' -> '.join(including)}).")
  including += (os.path.realpath(path),)
  with open(path, encoding="utf-8") as f:
    statements = list(config_parser.ConfigParser(f, _LiteralsOnly()))
  names = {field.name for field in dataclasses.fields(TransformerConfig)}
  for statement in statements:
    at = f"{path}, line {statement.location.line_num}"
    if isinstance(statement, config_parser.IncludeStatement):
      _read_bindings(_included(statement.filename, path, at), fields,
                     including)
    elif (isinstance(statement, config_parser.BindingStatement)
          and statement.arg_name and not statement.scope
          and _QUALIFIED_NAME.endswith(f".{statement.selector}")):
      binding = f"{statement.selector}.{statement.arg_name}"
      if statement.arg_name not in names:
        raise ValueError(
            f"{binding} ({at}): TransformerConfig has no field "
            f"{statement.arg_name!r}; its fields: {sorted(names)}.")
      not_literal = _not_literal(statement.value)
      if not_literal is not None:
        raise ValueError(
            f"{binding} = {not_literal} ({at}) is not a literal value; "
            "configs.from_gin reads numbers, strings, booleans, None and "
            "tuples of them, not macros or @references.")
      fields[statement.arg_name] = statement.value


def _included(filename: str, path: str, at: str) -> str:
  """An include's file: under the shipped gin dir (as gin's default search
  path in the binaries), else next to the including file."""
  places = (gin_paths.gin_search_path(), os.path.dirname(path))
  for place in places:
    candidate = os.path.join(place, filename)  # Absolute: filename itself.
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(
      f"included gin file {filename!r} ({at}) not found under "
      f"{' or '.join(places)}.")


def _not_literal(value) -> Optional[str]:
  """The first macro or reference in `value`, as written; None if none."""
  if isinstance(value, _NotLiteral):
    return value.text
  if isinstance(value, dict):
    value = [*value.keys(), *value.values()]
  parts = value if isinstance(value, (list, tuple)) else ()
  return next((t for t in map(_not_literal, parts) if t is not None), None)

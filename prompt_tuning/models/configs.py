"""Architecture configs: one dataclass describes every network we build.

T5.1.1, T5 1.0, mT5, the T5X-style decoder-only LM and the GPT-2 family differ
only in a handful of switches (norm kind, biases, position scheme, activation,
how logits are made), so they share one config and one set of layers.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import gin
import jax.numpy as jnp

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


def t5_1_1(size: str = "small", **overrides) -> TransformerConfig:
  """T5.1.1 / LM-adapted T5.1.1: gated GELU, untied logits, RMS norm."""
  return _t5(_T5_1_1_SIZES, size, ("gelu", "linear"), False, overrides)


def mt5(size: str = "small", **overrides) -> TransformerConfig:
  """mT5: the T5.1.1 architecture with a 250,112-row vocabulary."""
  return t5_1_1(size, **{"vocab_size": 250112, **overrides})


def t5_1_0(size: str = "small", **overrides) -> TransformerConfig:
  """Original T5: ReLU MLP, logits via the shared embedding."""
  return _t5(_T5_1_0_SIZES, size, ("relu",), True, overrides)


def _t5(sizes, size, activations, tied, overrides) -> TransformerConfig:
  if size not in sizes:
    raise ValueError(f"size={size!r}; known sizes: {sorted(sizes)}.")
  emb, heads, head_dim, mlp, layers = sizes[size]
  defaults = dict(
      architecture="encoder_decoder", vocab_size=32128, emb_dim=emb,
      num_heads=heads, head_dim=head_dim, mlp_dim=mlp,
      num_encoder_layers=layers, num_decoder_layers=layers,
      mlp_activations=activations, logits_via_embedding=tied)
  return TransformerConfig(**{**defaults, **overrides})


def gpt2(size: str = "small", **overrides) -> TransformerConfig:
  """GPT-2 family: LayerNorm with bias, biased projections, tied LM head."""
  if size not in _GPT2_SIZES:
    raise ValueError(f"size={size!r}; known sizes: {sorted(_GPT2_SIZES)}.")
  emb, heads, layers = _GPT2_SIZES[size]
  defaults = dict(
      architecture="decoder_only", vocab_size=50257, emb_dim=emb,
      num_heads=heads, head_dim=emb // heads, mlp_dim=4 * emb,
      num_encoder_layers=0, num_decoder_layers=layers,
      mlp_activations=("gelu_new",), norm="layer", norm_epsilon=1e-5,
      use_bias=True, position_embedding="absolute",
      max_position_embeddings=1024, logits_via_embedding=True,
      scale_tied_logits=False, scale_attention_logits=True, init_std=0.02)
  return TransformerConfig(**{**defaults, **overrides})


def mgpt(**overrides) -> TransformerConfig:
  """mGPT as used by MSP (Tan et al. 2022): GPT-2 medium shape (24 layers,
  width 1024, 16 heads) over the 250,100-piece mT5 SentencePiece vocabulary."""
  return gpt2("medium", **{"vocab_size": 250100, **overrides})


# (emb_dim, num_heads, head_dim, mlp_dim, num_layers)
_T5_1_1_SIZES = {
    "tiny": (4, 2, 2, 8, 2),  # the shape of ../shared/fixtures' T5X checkpoint
    "small": (512, 6, 64, 1024, 8),
    "base": (768, 12, 64, 2048, 12),
    "large": (1024, 16, 64, 2816, 24),
    "xl": (2048, 32, 64, 5120, 24),
    "xxl": (4096, 64, 64, 10240, 24),
}
_T5_1_0_SIZES = {
    "small": (512, 8, 64, 2048, 6),
    "base": (768, 12, 64, 3072, 12),
    "large": (1024, 16, 64, 4096, 24),
    "3b": (1024, 32, 128, 16384, 24),
    "11b": (1024, 128, 128, 65536, 24),
}
# (emb_dim, num_heads, num_layers)
_GPT2_SIZES = {
    "small": (768, 12, 12),
    "medium": (1024, 16, 24),
    "large": (1280, 20, 36),
    "xl": (1600, 25, 48),
}


def from_gin(name_or_path: str) -> TransformerConfig:
  """The config a gin model file binds, e.g. "t5_1_1_base" or a .gin path.

  Shipped names resolve under the installed gin/models/. The file is parsed
  in isolation: bindings already in gin's global state neither leak into the
  result nor get changed by it.
  """
  import os  # pylint: disable=g-import-not-at-top
  from prompt_tuning import gin_paths  # pylint: disable=g-import-not-at-top
  search_path = gin_paths.gin_search_path()
  path = name_or_path
  if not os.path.isfile(path):
    path = os.path.join(search_path, "models", f"{name_or_path}.gin")
    if not os.path.isfile(path):
      shipped = sorted(f[:-4] for f in os.listdir(
          os.path.join(search_path, "models")) if f.endswith(".gin"))
      raise FileNotFoundError(
          f"no gin model file {name_or_path!r}: not a file, and not one of "
          f"the shipped models {shipped}.")
  with _isolated_gin_config() as gin_config:
    # Only the shipped dir: includes like 'models/t5_1_1.gin' resolve there.
    gin_config._LOCATION_PREFIXES[:] = [search_path]  # pylint: disable=protected-access
    gin.parse_config_file(path)
    return TransformerConfig()


class _isolated_gin_config:  # pylint: disable=invalid-name
  """Snapshot/restore of gin's global bindings around a private parse."""

  def __enter__(self):
    import copy  # pylint: disable=g-import-not-at-top
    from gin import config as gin_config  # pylint: disable=g-import-not-at-top
    self._module = gin_config
    self._saved = (copy.deepcopy(gin_config._CONFIG),  # pylint: disable=protected-access
                   list(gin_config._LOCATION_PREFIXES))  # pylint: disable=protected-access
    self._unlock = gin.unlock_config()
    self._unlock.__enter__()
    gin_config._CONFIG.clear()  # pylint: disable=protected-access
    return gin_config

  def __exit__(self, *exc):
    config, prefixes = self._saved
    self._module._CONFIG.clear()  # pylint: disable=protected-access
    self._module._CONFIG.update(config)  # pylint: disable=protected-access
    self._module._LOCATION_PREFIXES[:] = prefixes  # pylint: disable=protected-access
    self._unlock.__exit__(*exc)
    return False

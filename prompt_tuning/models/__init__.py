"""Flax networks: T5 encoder-decoder, T5X-style decoder-only, GPT-2 family."""

from prompt_tuning.models.configs import TransformerConfig
from prompt_tuning.models.transformer import build_module

"""Config "S" (issue 6) and the pieces every benchmark shares for it.

A T5.1.1-style encoder-decoder: d_model 512, 8 heads x 64, gated-GELU d_ff
1024, 6 + 6 layers, vocab 32128, untied logits, float32; batch 8, inputs 128,
targets 32; P = 20. One random model is built with transformers and saved;
ours loads that directory (`pt.load_pretrained`), so both sides run the same
weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Shape:
  """A T5.1.1-style model and batch shape."""

  d_model: int = 512  # embedding width
  num_heads: int = 8
  d_kv: int = 64  # per-head width
  d_ff: int = 1024  # gated-GELU hidden width (two input projections)
  num_layers: int = 6  # encoder layers; the decoder has as many
  vocab: int = 32128
  batch: int = 8
  inputs: int = 128  # encoder input length (before the prompt)
  targets: int = 32  # decoder length
  length: int = 20  # P: prompt / prefix length

  def __post_init__(self):
    for field in dataclasses.fields(self):
      if getattr(self, field.name) < 1:
        raise ValueError(f"{field.name}={getattr(self, field.name)} must be "
                         ">= 1.")


CONFIG_S = Shape()
SMALL = Shape(d_model=64, num_heads=4, d_kv=16, d_ff=128, num_layers=2,
              vocab=512, batch=2, inputs=16, targets=8, length=4)


def build_hf_model(s: Shape):
  """A random T5.1.1-style model with an lm_head of its own."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  config = transformers.T5Config(
      vocab_size=s.vocab, d_model=s.d_model, d_kv=s.d_kv, d_ff=s.d_ff,
      num_heads=s.num_heads, num_layers=s.num_layers,
      num_decoder_layers=s.num_layers, feed_forward_proj="gated-gelu",
      tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0,
      pad_token_id=0, eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(config)
  # transformers 5 still ties lm_head to `shared` when tie_word_embeddings
  # is False; give it its own weight and drop the tie (tests/hf_models.py).
  model.lm_head.weight = torch.nn.Parameter(
      torch.randn(s.vocab, s.d_model) * s.d_model ** -0.5)
  model.all_tied_weights_keys.pop("lm_head.weight", None)
  assert model.lm_head.weight is not model.shared.weight
  return model


def make_batch(s: Shape) -> dict[str, Any]:
  """A fixed random batch, no padding: T5X feature names, numpy int32."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  targets = rng.integers(2, s.vocab, (s.batch, s.targets), dtype=np.int32)
  return {
      "encoder_input_tokens": rng.integers(2, s.vocab, (s.batch, s.inputs),
                                           dtype=np.int32),
      "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
      "decoder_target_tokens": targets,
  }


# ----------------------------------------------------------------------------
# Ours.


# What `our_method` builds: prompt tuning, a decoder-self-attention prefix
# (what PEFT's T5 prefix reaches), model tuning.
METHODS = ("prompt", "prefix", "model")


def our_method(method: str, s: Shape):
  import prompt_tuning as pt  # pylint: disable=g-import-not-at-top
  if method == "prompt":
    return pt.PromptTuning(length=s.length)
  if method == "prefix":
    # PEFT's T5 prefix reaches decoder self-attention only; match its work.
    return pt.PrefixTuning(length=s.length, kinds=("decoder_self",))
  return pt.ModelTuning()


def hf_inputs(batch) -> dict[str, Any]:
  """The batch as transformers' T5 keyword arguments (torch long tensors)."""
  import torch  # pylint: disable=g-import-not-at-top
  tokens = lambda key: torch.tensor(batch[key], dtype=torch.long)
  return {"input_ids": tokens("encoder_input_tokens"),
          "attention_mask": (tokens("encoder_input_tokens") > 0).long(),
          "decoder_input_ids": tokens("decoder_input_tokens"),
          "labels": tokens("decoder_target_tokens")}


def add_shape_args(parser) -> None:
  """--small and one --<field> override per Shape field."""
  parser.add_argument("--small", action="store_true",
                      help="a tiny shape for a quick check (not config S)")
  for field in dataclasses.fields(Shape):
    parser.add_argument(f"--{field.name}", type=int, default=None,
                        help=f"override config S's {field.name}")


def shape_from_args(args) -> Shape:
  """Config S (or SMALL with --small) with the command line's overrides."""
  shape = SMALL if args.small else CONFIG_S
  return dataclasses.replace(shape, **{
      f.name: getattr(args, f.name) for f in dataclasses.fields(Shape)
      if getattr(args, f.name) is not None})

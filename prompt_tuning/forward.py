"""Loads a model and prints one forward pass and a greedy decode.

  python -m prompt_tuning.forward                       # random tiny T5.1.1
  python -m prompt_tuning.forward --checkpoint DIR [--config t5_1_1_base]

DIR is a Hugging Face dir, a T5X checkpoint dir or an Orbax checkpoint. With
no checkpoint, a tiny T5.1.1 is initialised at random, written as a T5X
checkpoint to a temporary dir and read back through `load_pretrained`, so the
whole loading path runs on a fresh machine with no downloads.
"""

from __future__ import annotations

import argparse
import tempfile

import flax
import jax
import numpy as np

import prompt_tuning as pt
from prompt_tuning.checkpoints import t5x
from prompt_tuning.models import configs


def _random_t5x_checkpoint(directory: str, config_name: str) -> str:
  config = configs.from_gin(config_name)
  model = pt.build_model(config)
  variables = model.get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 8),
                              "decoder_input_tokens": (1, 8)})
  params = flax.linen.meta.unbox(variables["params"])
  path = f"{directory}/checkpoint_0"
  t5x.write_t5x_checkpoint(jax.device_get(params), path)
  return path


def _example_batch(model: pt.EncoderDecoderModel | pt.DecoderOnlyModel,
                   vocab_size: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  inputs = rng.integers(2, min(vocab_size, 1000), size=(2, 8), dtype=np.int32)
  inputs[1, 5:] = 0  # the second example is shorter: padding
  targets = rng.integers(2, min(vocab_size, 1000), size=(2, 6),
                         dtype=np.int32)
  if isinstance(model, pt.EncoderDecoderModel):
    return {"encoder_input_tokens": inputs,
            "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
            "decoder_target_tokens": targets}
  return {"decoder_input_tokens": inputs,
          "decoder_target_tokens": np.pad(inputs[:, 1:], ((0, 0), (0, 1))),
          "decoder_causal_attention": (inputs > 0).astype(np.int32)}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", help="HF, T5X or Orbax checkpoint dir")
  parser.add_argument("--config", default=None,
                      help="gin model name or .gin file (T5X checkpoints)")
  args = parser.parse_args(argv)

  with tempfile.TemporaryDirectory() as tmp:
    path = args.checkpoint
    config = args.config
    if path is None:
      config = config or "t5_1_1_tiny"
      path = _random_t5x_checkpoint(tmp, config)
      print(f"No --checkpoint: wrote a random {config} T5X checkpoint to "
            f"{path}")
    model, variables = pt.load_pretrained(path, config=config)
    params = variables["params"]
    cfg = model.config
    count = sum(x.size for x in jax.tree.leaves(params))
    print(f"Model: {cfg.architecture}, {count:,} parameters "
          f"(emb {cfg.emb_dim}, {cfg.num_heads} heads x {cfg.head_dim}, "
          f"vocab {cfg.vocab_size})")
    batch = _example_batch(model, cfg.vocab_size)
    logits = model.compute_logits(params, batch, None)
    print(f"Logits {tuple(logits.shape)}; first example, first position, "
          f"top-5 ids: {np.argsort(-np.asarray(logits[0, 0]))[:5].tolist()}")
    print("Per-example log-likelihood of the targets:",
          np.round(np.asarray(model.score_batch(params, batch)), 4).tolist())
    print("Greedy decode:",
          np.asarray(model.predict_batch(params, batch)).tolist())


if __name__ == "__main__":
  main()

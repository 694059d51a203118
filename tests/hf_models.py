"""Tiny random Hugging Face models saved to disk, shared by format and parity
tests. Needs torch and transformers; import it after
`pytest.importorskip("torch")`.

Each builder returns `(torch_model, path)`: the model in eval mode and a dir
written in `fmt`:
  "safetensors"  `save_pretrained` default (model.safetensors)
  "sharded"      safetensors shards + model.safetensors.index.json
  "bin"          pytorch_model.bin (transformers 5 only writes safetensors, so
                 we torch.save the state dict as transformers 4 did, tied
                 duplicates included)
  "bin_sharded"  pytorch_model-0000k-of-0000n.bin + pytorch_model.bin.index.json
  "bf16"         safetensors with every weight in bfloat16 (the torch model is
                 cast too, so its state dict is the reference)
  "bf16_bin"     pytorch_model.bin in bfloat16
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import transformers

FORMATS = ("safetensors", "sharded", "bin", "bin_sharded", "bf16", "bf16_bin")
_SHARD_BYTES = 20_000  # splits each tiny model into several shards


def _perturb(model: torch.nn.Module) -> None:
  """Adds noise to every weight, so norm scales are not all 1 and biases not
  all 0: a mapping that swaps two of them must show up."""
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))


def tiny_t5_v1_1(tmp_path, fmt: str = "safetensors", vocab_size: int = 128):
  """T5.1.1-style: gated GELU, untied LM head, logits not rescaled."""
  torch.manual_seed(0)
  config = transformers.T5Config(
      feed_forward_proj="gated-gelu", tie_word_embeddings=False, d_model=16,
      d_kv=4, num_heads=4, d_ff=32, num_layers=2, num_decoder_layers=2,
      vocab_size=vocab_size, relative_attention_num_buckets=8,
      relative_attention_max_distance=20, decoder_start_token_id=0,
      pad_token_id=0, eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(config)
  # transformers 5 turns tie_word_embeddings=False into
  # scale_decoder_outputs=False and still ties lm_head to shared; give it a
  # weight of its own, and drop the tie so save_pretrained writes it.
  model.lm_head.weight = torch.nn.Parameter(
      torch.randn(vocab_size, 16) * 0.25)
  model.all_tied_weights_keys.pop("lm_head.weight", None)
  assert model.lm_head.weight is not model.shared.weight
  _perturb(model)
  return model.eval(), _save(model, os.path.join(tmp_path, "t5_v1_1_" + fmt),
                             fmt)


def tiny_t5_v1_0(tmp_path, fmt: str = "safetensors"):
  """Original-T5-style: ReLU MLP, LM head tied to `shared` and rescaled."""
  torch.manual_seed(1)
  config = transformers.T5Config(
      feed_forward_proj="relu", d_model=16, d_kv=4, num_heads=4, d_ff=32,
      num_layers=2, num_decoder_layers=2, vocab_size=128,
      relative_attention_num_buckets=8, relative_attention_max_distance=20,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(config)
  assert model.lm_head.weight is model.shared.weight
  _perturb(model)
  return model.eval(), _save(model, os.path.join(tmp_path, "t5_v1_0_" + fmt),
                             fmt)


def tiny_gpt2(tmp_path, fmt: str = "safetensors"):
  """GPT-2 (GPT2LMHeadModel: names under "transformer.", tied head)."""
  torch.manual_seed(2)
  # bos/eos default to 50256, outside this vocabulary.
  config = transformers.GPT2Config(
      n_embd=16, n_head=4, n_layer=2, n_positions=64, vocab_size=128,
      bos_token_id=127, eos_token_id=127)
  model = transformers.GPT2LMHeadModel(config)
  _perturb(model)
  return model.eval(), _save(model, os.path.join(tmp_path, "gpt2_" + fmt),
                             fmt)


def _save(model, path: str, fmt: str) -> str:
  if fmt not in FORMATS:
    raise ValueError(f"fmt={fmt!r}; use one of {FORMATS}.")
  if fmt.startswith("bf16"):
    model.to(torch.bfloat16)
    fmt = {"bf16": "safetensors", "bf16_bin": "bin"}[fmt]
  if fmt == "safetensors":
    model.save_pretrained(path)
  elif fmt == "sharded":
    model.save_pretrained(path, max_shard_size=_SHARD_BYTES)
    assert os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
  elif fmt in ("bin", "bin_sharded"):
    os.makedirs(path, exist_ok=True)
    model.config.save_pretrained(path)
    state = model.state_dict()
    if fmt == "bin":
      torch.save(state, os.path.join(path, "pytorch_model.bin"))
    else:
      _save_bin_shards(state, path)
  return path


def _save_bin_shards(state, path: str) -> None:
  shards, size = [{}], 0
  for name, t in state.items():
    if size > _SHARD_BYTES:
      shards.append({})
      size = 0
    shards[-1][name] = t
    size += t.numel() * t.element_size()
  assert len(shards) > 1
  weight_map = {}
  for k, shard in enumerate(shards):
    file = f"pytorch_model-{k + 1:05d}-of-{len(shards):05d}.bin"
    # clone: torch.save would otherwise store each tensor's whole storage
    torch.save({n: t.clone() for n, t in shard.items()},
               os.path.join(path, file))
    weight_map.update(dict.fromkeys(shard, file))
  with open(os.path.join(path, "pytorch_model.bin.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)


# Batches for parity tests: right padding, unequal lengths.


def random_tokens(rng, lengths, width, low=2, high=128):
  """[len(lengths), width] int32: row i holds lengths[i] random ids."""
  tokens = np.zeros((len(lengths), width), np.int32)
  for i, n in enumerate(lengths):
    tokens[i, :n] = rng.integers(low, high, n)
  return tokens


def t5_batch():
  """Three encoder-decoder examples (inputs 9/5/2, targets 7/3/1 ids)."""
  rng = np.random.default_rng(0)
  inputs = random_tokens(rng, [9, 5, 2], 9)
  targets = random_tokens(rng, [7, 3, 1], 7)
  return {"encoder_input_tokens": inputs,
          "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
          "decoder_target_tokens": targets,
          "decoder_loss_weights": (targets > 0).astype(np.float32)}

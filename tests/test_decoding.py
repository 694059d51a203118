"""Cached decoding equals the full forward pass, step by step, and the
decoding loop's EOS / budget / sampling rules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import decoding
from prompt_tuning.models import configs

CONFIGS = {
    "t5_1_1": configs.t5_1_1("tiny", vocab_size=64, emb_dim=8, head_dim=4,
                             relative_attention_num_buckets=8,
                             relative_attention_max_distance=6),
    "prefix_lm": configs.t5_1_1("tiny", vocab_size=64, emb_dim=8, head_dim=4,
                                architecture="decoder_only", prefix_lm=True,
                                relative_attention_num_buckets=8,
                                relative_attention_max_distance=6),
    "gpt2": configs.gpt2("small", vocab_size=64, emb_dim=8, num_heads=2,
                         head_dim=4, mlp_dim=32, num_decoder_layers=2,
                         max_position_embeddings=32),
}


def _params(model):
  shapes = {"encoder_input_tokens": (1, 4), "decoder_input_tokens": (1, 4)}
  return nn.meta.unbox(model.get_initial_variables(
      jax.random.PRNGKey(1), shapes)["params"])


def _init_cache(model, params, *args, **kwargs):
  return model._init_cache(model.module.apply, {"params": params}, *args,  # pylint: disable=protected-access
                           **kwargs)


def test_encoder_decoder_cache_equals_full_forward():
  model = pt.build_model(CONFIGS["t5_1_1"])
  params = _params(model)
  rng = np.random.default_rng(0)
  inputs = rng.integers(2, 64, (2, 7)).astype(np.int32)
  inputs[1, 4:] = 0
  targets = rng.integers(2, 64, (2, 9)).astype(np.int32)
  decoder_inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
  full = model.compute_logits(params, {
      "encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs,
      "decoder_target_tokens": targets})

  apply = model.module.apply
  encoded = apply({"params": params}, inputs, method="encode")
  cache = _init_cache(model, params, encoded, inputs,
                      jnp.zeros((2, 9), jnp.int32), method="decode")
  for step in range(9):
    logits, state = apply({"params": params, "cache": cache}, encoded,
                          inputs, decoder_inputs[:, step:step + 1],
                          decode=True, mutable=["cache"], method="decode")
    cache = state["cache"]
    np.testing.assert_allclose(logits[:, 0], full[:, step], atol=1e-5)


@pytest.mark.parametrize("name", ["prefix_lm", "gpt2"])
def test_decoder_only_prefill_and_steps_equal_full_forward(name):
  """Prompts of different lengths prefill together, then decode token by
  token; every step's logits equal the full (uncached) forward pass."""
  config = CONFIGS[name]
  model = pt.build_model(config)
  params = _params(model)
  rng = np.random.default_rng(0)
  length, prompt_lengths = 10, np.array([5, 2], np.int32)
  tokens = rng.integers(2, 64, (2, length)).astype(np.int32)
  region = (np.arange(length)[None] < prompt_lengths[:, None]).astype(np.int32)
  full = model.compute_logits(params, {
      "decoder_input_tokens": tokens, "decoder_target_tokens": tokens,
      "decoder_causal_attention": region})

  apply = model.module.apply
  prompts = tokens * region
  cache = _init_cache(model, params, prompts)
  logits, state = apply({"params": params, "cache": cache}, prompts,
                        decoder_causal_attention=region, decode=True,
                        cache_advance=prompt_lengths, mutable=["cache"])
  for i, n in enumerate(prompt_lengths):
    np.testing.assert_allclose(logits[i, :n], full[i, :n], atol=1e-5)
  cache = state["cache"]
  for step in range(4):
    positions = prompt_lengths + step
    next_tokens = tokens[np.arange(2), positions][:, None]
    logits, state = apply({"params": params, "cache": cache}, next_tokens,
                          decode=True, mutable=["cache"])
    cache = state["cache"]
    np.testing.assert_allclose(logits[:, 0], full[np.arange(2), positions],
                               atol=1e-5)


def test_prefix_lm_mask_changes_prompt_logits_and_causal_does_not():
  """The prefix-LM region really is bidirectional (a later input token moves
  an earlier position's logits); outside it, the model stays causal."""
  model = pt.build_model(CONFIGS["prefix_lm"])
  params = _params(model)
  tokens = np.array([[5, 6, 7, 8, 9, 10]], np.int32)
  region = np.array([[1, 1, 1, 0, 0, 0]], np.int32)
  changed = tokens.copy()
  changed[0, 2] = 11  # inside the region
  later = tokens.copy()
  later[0, 5] = 11  # after the region
  logits = lambda t: np.asarray(model.compute_logits(params, {
      "decoder_input_tokens": t, "decoder_target_tokens": t,
      "decoder_causal_attention": region}))
  assert not np.allclose(logits(tokens)[0, 0], logits(changed)[0, 0])
  np.testing.assert_allclose(logits(tokens)[0, :5], logits(later)[0, :5],
                             atol=1e-6)


def _table_step(table):
  """A fake model: the next logits depend only on the last token."""
  def step(tokens, cache):
    return table[tokens[:, 0]], cache
  return step


def test_greedy_stops_at_eos_and_pads_with_zeros():
  vocab = 6
  table = jnp.full((vocab, vocab), -10.0)
  table = table.at[2, 3].set(0).at[3, 1].set(0).at[4, 4].set(0)
  first = jnp.stack([table[2], table[4]])  # example 0: 3 then EOS (1)
  tokens, scores = decoding.temperature_sample(
      _table_step(table), first, None, max_decode_len=5, eos_id=1)
  np.testing.assert_array_equal(tokens, [[3, 1, 0, 0, 0], [4, 4, 4, 4, 4]])
  assert scores[0] > scores[1]  # fewer, likelier tokens


def test_budget_limits_each_example():
  table = jnp.zeros((4, 4)).at[:, 2].set(5.0)
  first = jnp.stack([table[0], table[0]])
  tokens, _ = decoding.temperature_sample(
      _table_step(table), first, None, max_decode_len=4, eos_id=1,
      budgets=jnp.array([4, 2]))
  np.testing.assert_array_equal(tokens, [[2, 2, 2, 2], [2, 2, 0, 0]])


def test_sampling_with_topk_1_is_greedy():
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.normal(size=(8, 8)), jnp.float32)
  first = table[jnp.array([1, 5, 7])]
  greedy, _ = decoding.temperature_sample(
      _table_step(table), first, None, max_decode_len=6, eos_id=99)
  sampled, _ = decoding.temperature_sample(
      _table_step(table), first, None, max_decode_len=6, eos_id=99,
      temperature=1.0, topk=1, rng=jax.random.PRNGKey(3))
  np.testing.assert_array_equal(greedy, sampled)


def test_topp_keeps_only_the_nucleus():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = decoding._filter_logits(logits, topk=0, topp=0.7)  # pylint: disable=protected-access
  assert np.isfinite(kept[0, :2]).all() and kept[0, 0] == logits[0, 0]
  assert (np.asarray(kept[0, 2:]) < -1e30).all()

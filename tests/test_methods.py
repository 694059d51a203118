"""Prompt tuning and prefix tuning inside the networks: masks, positions,
decoding with a prompt, served constant prompts, trainable/frozen split."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import prompt_tuning as pt
from prompt_tuning import param_split
from prompt_tuning.models import combine
from prompt_tuning.methods import initializers
from prompt_tuning.methods.model_tuning import ModelTuning
from prompt_tuning.methods.prefix_tuning import PrefixTuning
from prompt_tuning.methods.prefix_tuning import fold
from prompt_tuning.methods.soft_prompt import PromptTuning
from prompt_tuning.models.transformer import prompted_self_mask as decoder_prompt_mask
from prompt_tuning.models import configs

T5 = configs.t5_1_1("tiny", vocab_size=64, emb_dim=8, head_dim=4,
                    relative_attention_num_buckets=8,
                    relative_attention_max_distance=6)
PREFIX_LM = T5.replace(architecture="decoder_only", prefix_lm=True)
GPT2 = configs.gpt2("small", vocab_size=64, emb_dim=8, num_heads=2,
                    head_dim=4, mlp_dim=32, num_decoder_layers=2,
                    max_position_embeddings=32)
SHAPES = {"encoder_input_tokens": (1, 4), "decoder_input_tokens": (1, 4)}

ENC_DEC_BATCH = {
    "encoder_input_tokens": np.array([[5, 6, 7, 1], [8, 1, 0, 0]]),
    "decoder_input_tokens": np.array([[0, 9, 10, 11], [0, 12, 0, 0]]),
    "decoder_target_tokens": np.array([[9, 10, 11, 1], [12, 1, 0, 0]]),
}
DEC_BATCH = {
    "decoder_input_tokens": np.array([[5, 6, 7, 9, 10, 0], [8, 2, 12, 0, 0,
                                                             0]]),
    "decoder_target_tokens": np.array([[6, 7, 9, 10, 1, 0], [2, 12, 1, 0, 0,
                                                              0]]),
    "decoder_loss_weights": np.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0,
                                                            0]]),
    "decoder_causal_attention": np.array([[1, 1, 1, 0, 0, 0],
                                          [1, 1, 0, 0, 0, 0]]),
}


def _init(config, method, seed=0):
  model = pt.build_model(config, method=method)
  params = nn.meta.unbox(model.get_initial_variables(
      jax.random.PRNGKey(seed), SHAPES)["params"])
  return model, params


def _batch(model_or_config):
  features = pt.build_model(model_or_config).FEATURES if isinstance(
      model_or_config, pt.TransformerConfig) else model_or_config.FEATURES
  return ENC_DEC_BATCH if "encoder_input_tokens" in features else DEC_BATCH


def test_decoder_prompt_mask_prefix_lm_covers_the_prompt():
  layout = combine.prefix_layout(jnp.ones((1, 3), jnp.int32), 2)
  region = jnp.array([[1, 1, 0]])
  expected = np.array([
      # prompt, prompt, in, in, target
      [1, 1, 1, 1, 0],
      [1, 1, 1, 1, 0],
      [1, 1, 1, 1, 0],
      [1, 1, 1, 1, 0],
      [1, 1, 1, 1, 1],
  ], bool)
  np.testing.assert_array_equal(decoder_prompt_mask(layout, region)[0, 0],
                                expected)
  causal = np.tril(np.ones((5, 5), bool))
  np.testing.assert_array_equal(decoder_prompt_mask(layout, None)[0, 0],
                                causal)


def test_encoder_prompt_is_visible_both_ways_and_padding_is_not():
  model, params = _init(T5, PromptTuning(length=2))
  batch = dict(ENC_DEC_BATCH)
  scores = model.score_batch(params, batch)
  # Changing a padding token changes nothing; changing a prompt row changes
  # every example (cross-attention and the encoder both see the prompt).
  padded = dict(batch, encoder_input_tokens=batch["encoder_input_tokens"]
                .copy())
  padded["encoder_input_tokens"][1, 3] = 0
  np.testing.assert_array_equal(model.score_batch(params, padded), scores)
  moved = jax.tree.map(lambda x: x, params)
  moved["prompt"]["prompt"] = params["prompt"]["prompt"].at[1].add(1.0)
  assert np.all(np.abs(model.score_batch(moved, batch) - scores) > 1e-6)


@pytest.mark.parametrize("config", [GPT2, PREFIX_LM],
                         ids=["gpt2", "prefix_lm"])
def test_decoder_only_prompt_logits_line_up_with_tokens(config):
  """Logits keep the token length; the prompt precedes every token."""
  model, params = _init(config, PromptTuning(length=3))
  logits = model.compute_logits(params, DEC_BATCH)
  assert logits.shape == (2, 6, 64)
  # Equal to the plain network fed [prompt ; tokens] embeddings, minus the
  # prompt's logits.
  plain = pt.build_model(config)
  base = {k: v for k, v in params.items() if k != "prompt"}
  tokens = DEC_BATCH["decoder_input_tokens"]
  region = np.pad(DEC_BATCH["decoder_causal_attention"], ((0, 0), (3, 0)),
                  constant_values=1)

  def forward(module):
    embedded = module.decoder.embed(jnp.asarray(tokens))
    prompt = jnp.broadcast_to(params["prompt"]["prompt"], (2, 3, 8))
    joined = jnp.concatenate([prompt, embedded], axis=1)
    mask = pt.models.masks.decoder_self_mask(
        2, 9, jnp.asarray(region) if config.prefix_lm else None)
    return module.decoder(joined, self_mask=mask)

  expected = nn.apply(forward, plain.module)({"params": base})[:, 3:]
  np.testing.assert_allclose(logits, expected, atol=1e-5)


def _greedy_by_full_forward(model, params, batch, steps):
  """Greedy decoding by re-running the full (uncached) forward each step."""
  if model.config.architecture == "encoder_decoder":
    out = np.zeros((2, steps), np.int32)
    for i in range(steps):
      dec_in = np.pad(out[:, :i], ((0, 0), (1, steps - i - 1)))
      logits = model.compute_logits(params, dict(
          batch, decoder_input_tokens=dec_in, decoder_target_tokens=dec_in))
      out[:, i] = np.argmax(logits[:, i], -1)
    return out
  region = batch["decoder_causal_attention"]
  lengths = region.sum(-1)
  tokens = batch["decoder_input_tokens"] * region
  out = np.zeros_like(tokens)
  for i in range(tokens.shape[1] - lengths.min()):
    logits = model.compute_logits(params, dict(
        batch, decoder_input_tokens=tokens, decoder_target_tokens=tokens))
    for b in range(2):
      pos = lengths[b] + i
      if pos < tokens.shape[1]:
        tokens[b, pos] = np.argmax(logits[b, pos - 1])
        out[b, i] = tokens[b, pos]
  return out


@pytest.mark.parametrize("config,method", [
    (T5, PromptTuning(length=3)),
    (GPT2, PromptTuning(length=3)),
    (PREFIX_LM, PromptTuning(length=3)),
    (T5, PrefixTuning(length=2)),
    (GPT2, PrefixTuning(length=2)),
    (PREFIX_LM, PrefixTuning(length=2, positions="none")),
], ids=["t5-prompt", "gpt2-prompt", "prefixlm-prompt", "t5-prefix",
        "gpt2-prefix", "prefixlm-prefix-nopos"])
def test_cached_greedy_decoding_equals_full_forward(config, method):
  """Caches sized for prompt + input, prefill, outputs without the prompt."""
  model, params = _init(config, method, seed=3)
  batch = _batch(config)
  got = np.asarray(model.predict_batch(params, batch))
  expected = _greedy_by_full_forward(model, params, batch, got.shape[1])
  # EOS ends an example: compare up to and including the first EOS.
  for row_got, row_expected in zip(got, expected):
    stop = (list(row_got).index(1) + 1) if 1 in row_got else len(row_got)
    np.testing.assert_array_equal(row_got[:stop], row_expected[:stop])


def test_served_prompt_is_a_constant_with_the_same_outputs(tmp_path):
  prompt = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
  np.save(tmp_path / "prompt.npy", prompt)
  trained, params = _init(T5, PromptTuning(
      length=3, initializer=initializers.from_array(prompt)))
  served = pt.build_model(T5, method=PromptTuning.from_file(
      tmp_path / "prompt.npy"))
  base = {k: v for k, v in params.items() if k != "prompt"}
  served_params = nn.meta.unbox(served.get_initial_variables(
      jax.random.PRNGKey(0), SHAPES)["params"])
  assert "prompt" not in served_params
  assert served.method.trainable_patterns() == ()
  np.testing.assert_allclose(served.score_batch(base, ENC_DEC_BATCH),
                             trained.score_batch(params, ENC_DEC_BATCH),
                             atol=1e-6)


def test_served_prompt_of_the_wrong_width_fails_clearly():
  with pytest.raises(ValueError, match="embeddings are 8 wide"):
    pt.build_model(T5, method=PromptTuning(prompt=np.zeros((3, 5))))


def test_suffix_prompt_is_rejected_for_decoder_only():
  with pytest.raises(ValueError, match="decoder-only"):
    pt.build_model(GPT2, method=PromptTuning(length=2, combine="suffix"))


def _prefix_positions_logits(config, positions):
  model, params = _init(config, PrefixTuning(length=2, positions=positions))
  return model, params, model.compute_logits(params, _batch(config))


@pytest.mark.parametrize("config", [GPT2, PREFIX_LM], ids=["gpt2", "relpos"])
def test_prefix_positions_shift_vs_none(config):
  """'shift': the inputs start at position P (absolute) and the prefix keys
  sit at 0..P-1 (relative); 'none': inputs start at 0, prefix unbiased."""
  model, params, shifted = _prefix_positions_logits(config, "shift")
  none_model = pt.build_model(config, method=PrefixTuning(
      length=2, positions="none"))
  unshifted = none_model.compute_logits(params, _batch(config))
  assert not np.allclose(shifted, unshifted, atol=1e-4)
  # Hand-built: the plain decoder with the prefix tables as KvPrefix.
  table = params["prefix"]["decoder_self"]["kv"]
  plain = pt.build_model(config)
  base = {k: v for k, v in params.items() if k != "prefix"}
  tokens = jnp.asarray(DEC_BATCH["decoder_input_tokens"])
  for mode, got in (("shift", shifted), ("none", unshifted)):
    def forward(module, mode=mode):
      region = (jnp.asarray(DEC_BATCH["decoder_causal_attention"])
                if config.prefix_lm else None)
      prefix = pt.models.kv_prefix.KvPrefix(
          key=table[:, 0][:, None], value=table[:, 1][:, None],
          positions=(jnp.arange(2)[None] if mode == "shift" else None))
      return module.decoder(
          module.decoder.embed(tokens),
          self_mask=pt.models.masks.decoder_self_mask(2, 6, region),
          self_prefix=prefix, position_offset=2 if mode == "shift" else 0)
    np.testing.assert_allclose(
        got, nn.apply(forward, plain.module)({"params": base}), atol=1e-5)


@pytest.mark.parametrize("kind", ["encoder_self", "decoder_self", "cross"])
def test_each_prefix_kind_alone_steers_the_model(kind):
  """A prefix on any one attention kind reaches the outputs: every
  example's score differs from the plain frozen model's."""
  model, params = _init(T5, PrefixTuning(length=2, kinds=[kind]))
  base = {k: v for k, v in params.items() if k != "prefix"}
  plain = pt.build_model(T5).score_batch(base, ENC_DEC_BATCH)
  scores = model.score_batch(params, ENC_DEC_BATCH)
  assert np.all(np.abs(scores - plain) > 1e-6)


def test_prefix_kinds_select_attentions():
  model, params = _init(T5, PrefixTuning(length=2, kinds=["cross"]))
  assert set(params["prefix"]) == {"cross"}
  with pytest.raises(ValueError, match="do not exist"):
    pt.build_model(GPT2, method=PrefixTuning(kinds=["cross"]))
  with pytest.raises(ValueError, match="choose from"):
    PrefixTuning(kinds=["encoder"])


@pytest.mark.parametrize("reparameterization", ["mlp", "scaled"])
def test_fold_gives_the_same_scores(reparameterization):
  model, params = _init(T5, PrefixTuning(
      length=2, reparameterization=reparameterization, mlp_dim=6))
  if reparameterization == "scaled":
    params["prefix"]["cross"]["scale"] = jnp.asarray(2.5)
  folded_model, folded = fold(model, {"params": params})
  assert folded_model.method.reparameterization == "none"
  assert set(folded["params"]["prefix"]["cross"]) == {"kv"}
  np.testing.assert_allclose(
      folded_model.score_batch(folded["params"], ENC_DEC_BATCH),
      model.score_batch(params, ENC_DEC_BATCH), atol=1e-5)


def test_prefix_dropout_applies_only_with_a_dropout_rng():
  model, params = _init(GPT2, PrefixTuning(length=2, dropout_rate=0.5))
  plain = model.compute_logits(params, DEC_BATCH)
  dropped = model.compute_logits(params, DEC_BATCH, jax.random.PRNGKey(0))
  assert not np.allclose(plain, dropped, atol=1e-4)
  no_dropout, _ = _init(GPT2, PrefixTuning(length=2))
  np.testing.assert_allclose(no_dropout.compute_logits(params, DEC_BATCH),
                             plain, atol=1e-6)


def test_scaled_prefix_uses_max_of_alpha_and_one():
  model, params = _init(GPT2, PrefixTuning(length=2,
                                           reparameterization="scaled"))
  table = lambda alpha: model.module.apply(
      {"params": {**params, "prefix": {"decoder_self": {
          "kv": params["prefix"]["decoder_self"]["kv"],
          "scale": jnp.asarray(alpha)}}}},
      method=lambda m: m.prefix())["decoder_self"]
  kv = params["prefix"]["decoder_self"]["kv"]
  np.testing.assert_allclose(table(0.3), kv)
  np.testing.assert_allclose(table(2.0), 2.0 * kv)


def test_mlp_prefix_layout_matches_hand_computation():
  model, params = _init(GPT2, PrefixTuning(length=2, reparameterization="mlp",
                                           mlp_dim=6))
  p = params["prefix"]["decoder_self"]
  hidden = np.tanh(p["embedding"] @ p["mlp_in"]["kernel"] + p["mlp_in"]["bias"])
  flat = hidden @ p["mlp_out"]["kernel"] + p["mlp_out"]["bias"]  # [P, 2*2*8]
  table = model.module.apply({"params": params},
                             method=lambda m: m.prefix())["decoder_self"]
  # Row p holds [layer0 key | layer0 value | layer1 key | layer1 value],
  # each heads x head_dim: PEFT's past_key_values order.
  for layer in range(2):
    for kv in range(2):
      chunk = flat[:, (2 * layer + kv) * 8:(2 * layer + kv + 1) * 8]
      np.testing.assert_allclose(table[layer, kv], chunk.reshape(2, 2, 4),
                                 atol=1e-6)


METHODS = {
    "prompt": (T5, PromptTuning(length=2)),
    "prefix_mlp": (T5, PrefixTuning(length=2, reparameterization="mlp",
                                    mlp_dim=4)),
    "gpt2_prompt": (GPT2, PromptTuning(length=2)),
    "model_norms": (T5, ModelTuning(trainable=[r".*layer_norm/scale"])),
    "msp": (GPT2, pt.MultiStagePrompting(length=2, separator_id=3)),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_gradient_step_changes_only_trainable_tensors(name):
  config, method = METHODS[name]
  model, params = _init(config, method)
  train, frozen = param_split.split(params, model.trainable_patterns)
  batch = _batch(model)

  def loss(train_params):
    return model.loss_fn(param_split.merge(train_params, frozen), batch,
                         None)[0]

  optimizer = optax.sgd(0.5)
  grads = jax.grad(loss)(train)
  updates, _ = optimizer.update(grads, optimizer.init(train), train)
  new_params = param_split.merge(optax.apply_updates(train, updates), frozen)
  flat_old = param_split._flat(params)  # pylint: disable=protected-access
  flat_new = param_split._flat(new_params)  # pylint: disable=protected-access
  assert flat_old.keys() == flat_new.keys()
  changed = {n for n in flat_old
             if not np.array_equal(flat_old[n], flat_new[n])}
  expected = {n for n in flat_old
              if param_split.is_trainable(n, model.trainable_patterns)}
  assert changed == expected and expected
  for n in set(flat_old) - expected:  # bit-identical, same dtype
    assert flat_new[n] is flat_old[n] or np.array_equal(
        np.asarray(flat_new[n]).view(np.uint8),
        np.asarray(flat_old[n]).view(np.uint8))


def test_trainable_patterns_that_match_nothing_fail_clearly():
  _, params = _init(T5, PromptTuning(length=2))
  with pytest.raises(ValueError, match="match no parameter"):
    param_split.split(params, [r"encoder/prompt"])


def _sequence_score(model, params, batch, tokens):
  """Summed log-prob of decoded `tokens` [batch, L] (through EOS) by a plain
  forward pass: what beam search with alpha=0 must report."""
  length = tokens.shape[1]
  eos = np.where((tokens == 1).any(1), (tokens == 1).argmax(1), length - 1)
  weights = (np.arange(length)[None] <= eos[:, None]).astype(np.float32)
  if "encoder_input_tokens" in model.FEATURES:
    return model.score_batch(params, dict(
        batch, decoder_input_tokens=np.pad(tokens[:, :-1], ((0, 0), (1, 0))),
        decoder_target_tokens=tokens, decoder_loss_weights=weights))
  region = batch["decoder_causal_attention"]
  lengths = region.sum(1)
  full = batch["decoder_input_tokens"] * region
  targets = np.zeros_like(full)
  loss_weights = np.zeros(full.shape, np.float32)
  for b in range(full.shape[0]):
    n = int(min(eos[b] + 1, full.shape[1] - lengths[b]))
    full[b, lengths[b]:lengths[b] + n] = tokens[b, :n]
    targets[b, lengths[b] - 1:lengths[b] - 1 + n] = tokens[b, :n]
    loss_weights[b, lengths[b] - 1:lengths[b] - 1 + n] = 1
  return model.score_batch(params, dict(
      batch, decoder_input_tokens=full, decoder_target_tokens=targets,
      decoder_loss_weights=loss_weights))


@pytest.mark.parametrize("config,method", [
    (T5, PromptTuning(length=3)),
    (GPT2, PrefixTuning(length=2)),
    (GPT2, pt.MultiStagePrompting(length=2, separator_id=3)),
], ids=["t5-prompt", "gpt2-prefix", "gpt2-msp"])
def test_beam_search_through_the_wrapper(config, method):
  """Beam scores (alpha 0) are the model's log-probs of the returned
  sequences, best first, and the best is at least as likely as greedy."""
  model, params = _init(config, method, seed=5)
  batch = _batch(model)
  tokens, aux = model.predict_batch_with_aux(
      params, batch, decoder_params={"alpha": 0.0}, num_decodes=3,
      return_all_decodes=True)
  assert tokens.shape[:2] == (2, 3)
  scores = np.asarray(aux["scores"])
  assert np.all(np.diff(scores, axis=1) <= 1e-6)
  for beam in range(3):
    np.testing.assert_allclose(
        scores[:, beam],
        _sequence_score(model, params, batch, np.asarray(tokens[:, beam])),
        atol=1e-4)
  greedy = np.asarray(model.predict_batch(params, batch))
  greedy_score = _sequence_score(model, params, batch, greedy)
  assert np.all(scores[:, 0] >= greedy_score - 1e-5)


def test_mgpt_parameter_counts_match_the_msp_paper():
  """P=128 on mGPT: prompt tuning 131K, prefix tuning (MLP, mid 512) ~26M,
  MSP ~19M trainable parameters (Tan et al. 2022)."""
  mgpt = configs.mgpt()
  count = lambda method: pt.param_split.count_trainable(
      pt.build_model(mgpt, method=method))[0]
  assert count(pt.PromptTuning(length=128)) == 128 * 1024
  # embedding [P, 1024] + Linear(1024, 512) + Linear(512, 24 * 2 * 1024)
  assert count(pt.PrefixTuning(length=128, reparameterization="mlp")) == (
      128 * 1024 + 1024 * 512 + 512 + 512 * 49152 + 49152)
  assert count(pt.MultiStagePrompting(length=128)) == (
      3 * 24 * 2 * 128 * 1024 + 3)

"""loss_fn options (label smoothing, z-loss, normalizers) and predict options,
checked against formulas written out independently here."""

import flax.linen as nn
import jax
import numpy as np
import pytest
import scipy.special

import prompt_tuning as pt
from prompt_tuning import losses
from prompt_tuning.models import configs

CONFIG = configs.t5_1_1("tiny", vocab_size=32)


@pytest.fixture(scope="module")
def params():
  model = pt.build_model(CONFIG)
  return nn.meta.unbox(model.get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 3),
                              "decoder_input_tokens": (1, 3)})["params"])


BATCH = {"encoder_input_tokens": np.array([[4, 5, 6, 1], [7, 1, 0, 0]]),
         "decoder_input_tokens": np.array([[0, 9, 10], [0, 11, 0]]),
         "decoder_target_tokens": np.array([[9, 10, 1], [11, 1, 0]])}
WEIGHTS = (BATCH["decoder_target_tokens"] > 0).astype(np.float32)


def test_plain_loss_is_the_negative_summed_score(params):
  model = pt.build_model(CONFIG)
  loss, metrics = model.loss_fn(params, BATCH, None)
  np.testing.assert_allclose(loss, -model.score_batch(params, BATCH).sum(),
                             rtol=1e-6)
  assert float(metrics["weight_sum"]) == WEIGHTS.sum()


def test_label_smoothing_and_z_loss_match_written_out_formula(params):
  smoothing, z = 0.1, 1e-3
  model = pt.build_model(CONFIG, label_smoothing=smoothing, z_loss=z,
                         loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
  loss, metrics = model.loss_fn(params, BATCH, None)

  logits = np.asarray(model.compute_logits(params, BATCH), np.float64)
  vocab = logits.shape[-1]
  soft = np.full(logits.shape, smoothing / (vocab - 1))
  np.put_along_axis(soft, BATCH["decoder_target_tokens"][..., None],
                    1 - smoothing, -1)
  log_z = scipy.special.logsumexp(logits, -1)
  cross_entropy = -(soft * (logits - log_z[..., None])).sum(-1)
  minimum = -(soft * np.log(soft)).sum(-1)  # a perfect model's loss
  token = cross_entropy - minimum + z * log_z ** 2
  expected = (token * WEIGHTS).sum() / WEIGHTS.sum()
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["z_loss"],
                             (z * log_z ** 2 * WEIGHTS).sum() / WEIGHTS.sum(),
                             rtol=1e-5)


@pytest.mark.parametrize("smoothing, z", [(0.0, 0.0), (0.1, 1e-3)])
def test_written_out_gradient_equals_autodiff_of_the_formula(smoothing, z):
  """The custom VJP against jax.grad of the plain formula, log Z's too."""
  rng = np.random.default_rng(1)
  logits = jax.numpy.asarray(rng.normal(size=(2, 3, 17)) * 3, np.float32)
  targets = rng.integers(0, 17, size=(2, 3))
  weights = np.array([[1.0, 1.0, 0.0], [0.5, 1.0, 2.0]], np.float32)

  def ours(logits):
    loss, z_loss, _ = losses.weighted_cross_entropy(
        logits, targets, weights, label_smoothing=smoothing, z_loss=z)
    return loss + 0.3 * z_loss  # reaches log Z's cotangent too

  def reference(logits):
    soft = jax.numpy.where(
        np.arange(17) == targets[..., None], 1 - smoothing,
        smoothing / 16)
    log_z = jax.nn.logsumexp(logits, -1)
    entropy = -jax.numpy.sum(soft * jax.numpy.log(soft + 1e-20), -1)
    token = (-jax.numpy.sum(soft * (logits - log_z[..., None]), -1)
             - entropy + 1.3 * z * log_z ** 2)
    return jax.numpy.sum(token * weights)

  np.testing.assert_allclose(ours(logits), reference(logits), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(reference)(logits),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalizer, divisor", [
    (None, 1.0), (4.0, 4.0), ("NUM_REAL_TARGET_TOKENS", WEIGHTS.sum()),
    ("NUM_TOTAL_TARGET_TOKENS", WEIGHTS.size)])
def test_loss_normalizers(params, normalizer, divisor):
  plain, _ = pt.build_model(CONFIG).loss_fn(params, BATCH, None)
  model = pt.build_model(CONFIG, loss_normalizing_factor=normalizer)
  np.testing.assert_allclose(model.loss_fn(params, BATCH, None)[0],
                             plain / divisor, rtol=1e-6)


def test_average_per_sequence(params):
  model = pt.build_model(CONFIG)
  per_example = -np.asarray(model.score_batch(params, BATCH))
  averaged = pt.build_model(CONFIG,
                            loss_normalizing_factor="AVERAGE_PER_SEQUENCE")
  np.testing.assert_allclose(averaged.loss_fn(params, BATCH, None)[0],
                             (per_example / WEIGHTS.sum(-1)).sum(), rtol=1e-6)


def test_bad_loss_options_are_named():
  with pytest.raises(ValueError, match="NUM_TOKENS"):
    pt.build_model(CONFIG, loss_normalizing_factor="NUM_TOKENS")
  with pytest.raises(ValueError, match="label_smoothing"):
    pt.build_model(CONFIG, label_smoothing=1.0)
  with pytest.raises(KeyError, match="decoder_target_tokens"):
    pt.build_model(CONFIG).loss_fn({}, {"encoder_input_tokens": 1}, None)


def test_several_samples_per_example_come_best_first(params):
  model = pt.build_model(CONFIG, decoding_options=pt.DecodingOptions(
      temperature=1.0))
  tokens, aux = model.predict_batch_with_aux(
      params, BATCH, jax.random.PRNGKey(0), num_decodes=3,
      return_all_decodes=True)
  assert tokens.shape[:2] == (BATCH["encoder_input_tokens"].shape[0], 3)
  assert np.all(np.diff(np.asarray(aux["scores"]), axis=1) <= 0)
  with pytest.raises(ValueError, match="beam search is deterministic"):
    pt.DecodingOptions(temperature=1.0, beam_size=2)


def test_decoder_params_override_decoding_options(params):
  model = pt.build_model(CONFIG)
  greedy = model.predict_batch(params, BATCH)
  sampled, _ = model.predict_batch_with_aux(
      params, BATCH, jax.random.PRNGKey(0),
      decoder_params={"temperature": 1.0, "topk": 1})
  np.testing.assert_array_equal(greedy, sampled)


def test_decoder_only_prompt_with_targets_prepends_each_prompt():
  config = configs.gpt2("small", vocab_size=32, emb_dim=8, num_heads=2,
                        head_dim=4, mlp_dim=16, num_decoder_layers=1,
                        max_position_embeddings=16)
  model = pt.build_model(config, eos_id=999)
  params = nn.meta.unbox(model.get_initial_variables(
      jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 3)})["params"])
  tokens = np.array([[3, 4, 5, 0, 0, 0], [6, 0, 0, 0, 0, 0]])
  batch = {"decoder_input_tokens": tokens,
           "decoder_causal_attention": (tokens > 0).astype(np.int32)}
  new = np.asarray(model.predict_batch(params, batch))
  full, _ = model.predict_batch_with_aux(params, batch,
                                         prompt_with_targets=True)
  np.testing.assert_array_equal(full[0], [3, 4, 5, *new[0, :3]])
  np.testing.assert_array_equal(full[1], [6, *new[1, :5]])
  assert not new[0, 3:].any()  # budget: 6 - 3 new tokens for the first row


def test_token_log_likelihood_picks_targets():
  logits = np.log(np.array([[[0.2, 0.8], [0.6, 0.4]]], np.float32))
  np.testing.assert_allclose(
      losses.token_log_likelihood(logits, np.array([[1, 0]])),
      np.log([[0.8, 0.6]]), rtol=1e-6)


def test_token_accuracy_follows_argmax_including_ties():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 11)).astype(np.float32)
  logits[0, 0] = 0.0  # all tied: argmax is class 0
  logits[1, 1, [2, 7]] = 9.0  # tied maxima at 2 and 7: argmax is 2
  targets = rng.integers(0, 11, size=(3, 5))
  targets[0, 0], targets[1, 1], targets[1, 2] = 4, 7, 3
  targets[2] = np.argmax(logits[2], -1)  # a row that is all correct
  expected = (np.argmax(logits, -1) == targets).astype(np.float32)
  got = np.asarray(losses.token_accuracy(logits, targets))
  np.testing.assert_array_equal(got, expected)
  assert got[2].all() and not got[1, 1] and not got[0, 0]
  targets[1, 1] = 2  # the first of the tied maxima counts
  assert np.asarray(losses.token_accuracy(logits, targets))[1, 1] == 1.0

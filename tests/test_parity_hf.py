"""Parity with Hugging Face transformers (PyTorch, CPU) on identical weights.

Tiny random models are saved with HF, loaded through `pt.load_pretrained`,
and compared on padded batches of unequal lengths: logits within 1e-4,
per-example `score_batch` equal to HF's summed log-likelihood, and greedy
decoding with our KV cache equal to HF's greedy `generate` token for token.
Sequences are longer than the relative-attention max_distance (20), so every
bucket branch (exact, log-spaced, clamped) is exercised.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import hf_models  # pylint: disable=g-import-not-at-top,wrong-import-position

import prompt_tuning as pt  # pylint: disable=wrong-import-position

LOGITS_ATOL = 1e-4


def _random_tokens(rng, lengths, width, low=2, high=128):
  tokens = np.zeros((len(lengths), width), np.int32)
  for i, n in enumerate(lengths):
    tokens[i, :n] = rng.integers(low, high, n)
  return tokens


@pytest.fixture(scope="module", params=["t5_v1_1", "t5_v1_0"])
def t5(request, hf_tmp):
  builder = {"t5_v1_1": hf_models.tiny_t5_v1_1,
             "t5_v1_0": hf_models.tiny_t5_v1_0}[request.param]
  torch_model, path = builder(hf_tmp)
  model, variables = pt.load_pretrained(path)
  return torch_model, model, variables["params"]


@pytest.fixture(scope="module")
def gpt2(hf_tmp):
  torch_model, path = hf_models.tiny_gpt2(hf_tmp)
  model, variables = pt.load_pretrained(path, eos_id=127)
  return torch_model, model, variables["params"]


def _t5_batch():
  rng = np.random.default_rng(0)
  inputs = _random_tokens(rng, [24, 13, 3], 24)
  targets = _random_tokens(rng, [22, 9, 1], 22)
  return {"encoder_input_tokens": inputs,
          "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
          "decoder_target_tokens": targets}


def _t5_reference(torch_model, batch):
  with torch.no_grad():
    out = torch_model(
        input_ids=torch.tensor(batch["encoder_input_tokens"]).long(),
        attention_mask=torch.tensor(batch["encoder_input_tokens"] > 0).long(),
        decoder_input_ids=torch.tensor(batch["decoder_input_tokens"]).long())
  return out.logits.numpy()


def _summed_log_likelihood(logits, targets, weights):
  log_probs = torch.log_softmax(torch.tensor(logits), -1)
  picked = log_probs.gather(-1, torch.tensor(targets).long()[..., None])[..., 0]
  return (picked.numpy() * weights).sum(-1)


def test_t5_logits_match_hf(t5):
  torch_model, model, params = t5
  batch = _t5_batch()
  ours = np.asarray(model.compute_logits(params, batch))
  ref = _t5_reference(torch_model, batch)
  real = batch["decoder_target_tokens"] > 0
  np.testing.assert_allclose(ours[real], ref[real], atol=LOGITS_ATOL, rtol=0)


def test_t5_score_batch_matches_hf_log_likelihood(t5):
  torch_model, model, params = t5
  batch = _t5_batch()
  ref = _summed_log_likelihood(_t5_reference(torch_model, batch),
                               batch["decoder_target_tokens"],
                               batch["decoder_target_tokens"] > 0)
  np.testing.assert_allclose(np.asarray(model.score_batch(params, batch)),
                             ref, rtol=1e-5, atol=1e-4)


def test_t5_greedy_decode_matches_hf_generate(t5):
  torch_model, model, params = t5
  inputs = _t5_batch()["encoder_input_tokens"]
  max_len = 12
  ours = np.asarray(model.predict_batch(
      params, {"encoder_input_tokens": inputs,
               "decoder_target_tokens": np.zeros((3, max_len), np.int32)}))
  for i, row in enumerate(inputs):
    real = row[row > 0]
    ref = torch_model.generate(
        torch.tensor(real[None]).long(), max_new_tokens=max_len,
        do_sample=False, num_beams=1).numpy()[0, 1:]  # drop the BOS
    ref = np.pad(ref, (0, max_len - len(ref)))  # HF stops at EOS
    np.testing.assert_array_equal(ours[i], ref)


def _gpt2_batch():
  rng = np.random.default_rng(1)
  lengths = [20, 11, 2]
  # id 0 is a real GPT-2 token: include it to show it is not padding.
  tokens = _random_tokens(rng, lengths, 20, low=0, high=127)
  tokens[1, 0] = 0
  weights = np.zeros(tokens.shape, np.float32)
  for i, n in enumerate(lengths):
    weights[i, :n - 1] = 1.0
  return {"decoder_input_tokens": tokens,
          "decoder_target_tokens": np.pad(tokens[:, 1:], ((0, 0), (0, 1))),
          "decoder_loss_weights": weights}, lengths


def _gpt2_reference(torch_model, batch, lengths):
  mask = np.zeros_like(batch["decoder_input_tokens"])
  for i, n in enumerate(lengths):
    mask[i, :n] = 1
  with torch.no_grad():
    return torch_model(
        input_ids=torch.tensor(batch["decoder_input_tokens"]).long(),
        attention_mask=torch.tensor(mask).long()).logits.numpy(), mask


def test_gpt2_logits_match_hf(gpt2):
  torch_model, model, params = gpt2
  batch, lengths = _gpt2_batch()
  ref, mask = _gpt2_reference(torch_model, batch, lengths)
  ours = np.asarray(model.compute_logits(params, batch))
  np.testing.assert_allclose(ours[mask > 0], ref[mask > 0],
                             atol=LOGITS_ATOL, rtol=0)


def test_gpt2_score_batch_matches_hf_log_likelihood(gpt2):
  torch_model, model, params = gpt2
  batch, lengths = _gpt2_batch()
  ref_logits, _ = _gpt2_reference(torch_model, batch, lengths)
  ref = _summed_log_likelihood(ref_logits, batch["decoder_target_tokens"],
                               batch["decoder_loss_weights"])
  np.testing.assert_allclose(np.asarray(model.score_batch(params, batch)),
                             ref, rtol=1e-5, atol=1e-4)


def test_gpt2_greedy_decode_matches_hf_generate(gpt2):
  torch_model, model, params = gpt2
  batch, _ = _gpt2_batch()
  width, prompt_lengths = 24, [9, 4, 1]
  prompts = np.zeros((3, width), np.int32)
  region = np.zeros((3, width), np.int32)
  for i, n in enumerate(prompt_lengths):
    prompts[i, :n] = batch["decoder_input_tokens"][i, :n]
    region[i, :n] = 1
  ours = np.asarray(model.predict_batch(
      params, {"decoder_input_tokens": prompts,
               "decoder_causal_attention": region}))
  for i, n in enumerate(prompt_lengths):
    ref = torch_model.generate(
        torch.tensor(prompts[i:i + 1, :n]).long(),
        attention_mask=torch.ones(1, n).long(), max_new_tokens=width - n,
        do_sample=False, num_beams=1, pad_token_id=127).numpy()[0, n:]
    np.testing.assert_array_equal(ours[i, :len(ref)], ref)
    assert not ours[i, len(ref):].any()

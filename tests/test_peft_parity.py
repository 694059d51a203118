"""Parity with Hugging Face PEFT (PyTorch, CPU) on identical weights and
identical prompt / prefix values.

Each case loads a tiny random transformers model through `pt.load_pretrained`
with a method whose values are fixed (`initializers.from_array`), builds the
PEFT model holding the same values, and compares per-example summed target
log-likelihoods (within 1e-4) on padded batches of unequal lengths and greedy
decodes (token for token). The adapter `export_prompt(..., format="peft")`
writes must reproduce our scores through `peft.PeftModel.from_pretrained`.

PEFT 0.21's conventions that the cases pin down: the soft prompt holds
positions 0..P-1 (T5: encoder input only); a prefix holds positions 0..P-1
(GPT-2 inputs start at P; T5 decoder relative bias sees it at 0..P-1); T5
prefixes reach decoder self-attention only, and decoder layer i reads slot
2i mod layers of PEFT's table.
"""

from __future__ import annotations

import copy
import os
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
# pylint: disable=g-import-not-at-top,wrong-import-position,g-bad-import-order
import hf_models
import jax
import transformers

import prompt_tuning as pt
from prompt_tuning.checkpoints import export
from prompt_tuning.methods import initializers
from prompt_tuning.methods.prefix_tuning import PrefixTuning
from prompt_tuning.methods.soft_prompt import PromptTuning
# pylint: enable=g-import-not-at-top,wrong-import-position,g-bad-import-order

# transformers' deprecation inside PEFT, and PEFT's note that it drops the
# position ids its own generate passes for prompt tuning.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:.*is_gradient_checkpointing.*:FutureWarning"),
    pytest.mark.filterwarnings(
        "ignore:Position ids are not supported:UserWarning"),
]

P = 5  # prompt / prefix length (distinct from heads=4 and every length)
H, HEADS, HEAD_DIM = 16, 4, 4
MLP_DIM = 24
GPT2_EOS = 127
SCORE_TOL = dict(rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------
# Tiny base models.


def _tiny_t5_three_decoder_layers(tmp_path):
  """T5 1.0-style, 2 encoder and 3 decoder layers: an odd decoder depth,
  where PEFT's T5 prefix slots are a permutation of the layers."""
  torch.manual_seed(3)
  config = transformers.T5Config(
      feed_forward_proj="relu", d_model=H, d_kv=HEAD_DIM, num_heads=HEADS,
      d_ff=32, num_layers=2, num_decoder_layers=3, vocab_size=128,
      relative_attention_num_buckets=8, relative_attention_max_distance=20,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(config)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  path = os.path.join(tmp_path, "t5_3_decoder_layers")
  model.save_pretrained(path)
  return model.eval(), path


@pytest.fixture(scope="module")
def bases(hf_tmp):
  """{name: (torch model, saved dir)}; PEFT models wrap deep copies."""
  return {"t5": hf_models.tiny_t5_v1_1(hf_tmp),
          "t5_3": _tiny_t5_three_decoder_layers(hf_tmp),
          "gpt2": hf_models.tiny_gpt2(hf_tmp)}


# ----------------------------------------------------------------------------
# Batches: right padding, unequal lengths.


_t5_batch = hf_models.t5_batch
_random_tokens = hf_models.random_tokens
GPT2_LENGTHS = (12, 7, 3)


def _gpt2_batch():
  rng = np.random.default_rng(1)
  # id 0 is a real GPT-2 token; 127 is EOS, kept out of the inputs.
  tokens = _random_tokens(rng, GPT2_LENGTHS, 12, low=0, high=GPT2_EOS)
  weights = np.zeros(tokens.shape, np.float32)
  region = np.zeros(tokens.shape, np.int32)
  for i, n in enumerate(GPT2_LENGTHS):
    weights[i, n // 2:n - 1] = 1.0  # targets: the second half
    region[i, :n // 2] = 1
  return {"decoder_input_tokens": tokens,
          "decoder_target_tokens": np.pad(tokens[:, 1:], ((0, 0), (0, 1))),
          "decoder_loss_weights": weights,
          "decoder_causal_attention": region}


T5_DECODE_LEN = 8
GPT2_WIDTH, GPT2_PROMPT_LENGTHS = 14, (7, 4, 1)


def _gpt2_prompts():
  tokens = _gpt2_batch()["decoder_input_tokens"]
  prompts = np.zeros((3, GPT2_WIDTH), np.int32)
  region = np.zeros((3, GPT2_WIDTH), np.int32)
  for i, n in enumerate(GPT2_PROMPT_LENGTHS):
    prompts[i, :n] = tokens[i, :n]
    region[i, :n] = 1
  return prompts, region


# ----------------------------------------------------------------------------
# Reference: PEFT on torch.


def _summed_log_likelihood(logits, targets, weights):
  log_probs = torch.log_softmax(torch.as_tensor(logits), -1)
  picked = log_probs.gather(-1, torch.as_tensor(targets).long()[..., None])
  return (picked[..., 0].numpy() * weights).sum(-1)


def _peft_scores(peft_model, arch, batch):
  """Summed target log-likelihoods [batch] (of a plain model too)."""
  with torch.no_grad():
    if arch == "t5":
      inputs = torch.as_tensor(batch["encoder_input_tokens"]).long()
      logits = peft_model(
          input_ids=inputs, attention_mask=(inputs > 0).long(),
          decoder_input_ids=torch.as_tensor(
              batch["decoder_input_tokens"]).long()).logits
    else:
      tokens = torch.as_tensor(batch["decoder_input_tokens"]).long()
      mask = torch.zeros_like(tokens)
      for i, n in enumerate(GPT2_LENGTHS):
        mask[i, :n] = 1
      logits = peft_model(input_ids=tokens, attention_mask=mask).logits
      # Prompt tuning returns the P virtual positions too; drop them.
      logits = logits[:, -tokens.shape[1]:]
  return _summed_log_likelihood(logits, batch["decoder_target_tokens"],
                                batch["decoder_loss_weights"])


def _peft_greedy(peft_model, arch):
  """PEFT's generate, one example at a time (no padding inside PEFT)."""
  outputs = []
  with torch.no_grad():
    if arch == "t5":
      for row in _t5_batch()["encoder_input_tokens"]:
        real = torch.as_tensor(row[row > 0][None]).long()
        out = peft_model.generate(
            input_ids=real, attention_mask=torch.ones_like(real),
            max_new_tokens=T5_DECODE_LEN, do_sample=False,
            num_beams=1).numpy()[0, 1:]  # drop the decoder start token
        outputs.append(np.pad(out, (0, T5_DECODE_LEN - len(out))))
    else:
      prompts, _ = _gpt2_prompts()
      for row, n in zip(prompts, GPT2_PROMPT_LENGTHS):
        ids = torch.as_tensor(row[None, :n]).long()
        out = peft_model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids),
            max_new_tokens=GPT2_WIDTH - n, do_sample=False, num_beams=1,
            pad_token_id=GPT2_EOS, eos_token_id=GPT2_EOS).numpy()[0, n:]
        outputs.append(out)
  return outputs


def _in_memory_peft(base, peft_config, weights):
  """get_peft_model on a copy of `base`, prompt encoder set to `weights`
  ({parameter name: array} under prompt_encoder["default"])."""
  model = peft.get_peft_model(copy.deepcopy(base), peft_config).eval()
  encoder = model.prompt_encoder["default"]
  params = dict(encoder.named_parameters())
  assert set(params) == set(weights), (sorted(params), sorted(weights))
  with torch.no_grad():
    for name, value in weights.items():
      params[name].copy_(torch.tensor(np.asarray(value, np.float32)))
  return model


# ----------------------------------------------------------------------------
# Ours.


class _Ours:
  """A loaded model with its jitted score / greedy functions."""

  def __init__(self, path, method, arch):
    kwargs = {"eos_id": GPT2_EOS} if arch == "gpt2" else {}
    self.model, variables = pt.load_pretrained(path, method=method, **kwargs)
    self.params = variables["params"]
    self.arch = arch
    self._score = jax.jit(self.model.score_batch)
    self._predict = jax.jit(self.model.predict_batch)

  def scores(self):
    batch = _t5_batch() if self.arch == "t5" else _gpt2_batch()
    return np.asarray(self._score(self.params, batch))

  def greedy(self):
    if self.arch == "t5":
      batch = {"encoder_input_tokens": _t5_batch()["encoder_input_tokens"],
               "decoder_target_tokens": np.zeros((3, T5_DECODE_LEN),
                                                 np.int32)}
    else:
      prompts, region = _gpt2_prompts()
      batch = {"decoder_input_tokens": prompts,
               "decoder_causal_attention": region}
    return np.asarray(self._predict(self.params, batch))


def _our_table_from_peft(flat, num_layers, t5_slots):
  """PEFT's [P, layers * 2 * H] prefix table as our [layers, 2, P, h, d].

  GPT-2 layer i reads slot i; PEFT's T5 decoder layer i reads slot
  2i mod layers (its encoder-decoder cache duplicates then splits by four).
  """
  slots = flat.reshape(P, num_layers, 2, HEADS, HEAD_DIM).transpose(
      1, 2, 0, 3, 4)
  if not t5_slots:
    return slots
  return np.stack([slots[(2 * i) % num_layers] for i in range(num_layers)])


def _random(shape, seed):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------
# Cases: our model + the matching PEFT config and prompt-encoder weights.

CASES = ("t5_prompt", "gpt2_prompt", "gpt2_prefix", "gpt2_prefix_mlp",
         "t5_prefix_2_layers", "t5_prefix_3_layers")


def _build_case(name, bases):
  arch = "t5" if name.startswith("t5") else "gpt2"
  task = "SEQ_2_SEQ_LM" if arch == "t5" else "CAUSAL_LM"
  base_name = "t5_3" if name == "t5_prefix_3_layers" else arch
  base, path = bases[base_name]
  if name.endswith("_prompt"):
    prompt = _random((P, H), seed=10)
    ours = _Ours(path, PromptTuning(
        length=P, initializer=initializers.from_array(prompt)), arch)
    config = peft.PromptTuningConfig(
        task_type=task, num_virtual_tokens=P, num_transformer_submodules=1)
    weights = {"embedding.weight": prompt}
  elif name == "gpt2_prefix_mlp":
    ours = _Ours(path, PrefixTuning(
        length=P, reparameterization="mlp", mlp_dim=MLP_DIM,
        initializer=initializers.normal(1.0)), arch)
    mlp = jax.tree.map(np.asarray, ours.params["prefix"]["decoder_self"])
    config = peft.PrefixTuningConfig(
        task_type=task, num_virtual_tokens=P, prefix_projection=True,
        encoder_hidden_size=MLP_DIM)
    # torch Linear weights are [out, in]; flax kernels [in, out].
    weights = {"embedding.weight": mlp["embedding"],
               "transform.0.weight": mlp["mlp_in"]["kernel"].T,
               "transform.0.bias": mlp["mlp_in"]["bias"],
               "transform.2.weight": mlp["mlp_out"]["kernel"].T,
               "transform.2.bias": mlp["mlp_out"]["bias"]}
  else:
    num_layers = base.config.num_decoder_layers if arch == "t5" else (
        base.config.n_layer)
    flat = _random((P, num_layers * 2 * H), seed=11)
    table = _our_table_from_peft(flat, num_layers, t5_slots=arch == "t5")
    ours = _Ours(path, PrefixTuning(
        length=P, kinds=("decoder_self",), positions="shift",
        initializer=initializers.from_array(table)), arch)
    # num_layers explicit: PEFT would read T5's encoder depth.
    config = peft.PrefixTuningConfig(
        task_type=task, num_virtual_tokens=P, num_layers=num_layers)
    weights = {"embedding.weight": flat}
  return types.SimpleNamespace(
      name=name, arch=arch, base=base, path=path, ours=ours,
      peft=_in_memory_peft(base, config, weights))


@pytest.fixture(scope="module", params=CASES)
def case(request, bases):
  return _build_case(request.param, bases)


# ----------------------------------------------------------------------------
# Tests.


def test_scores_match_peft(case):
  batch = _t5_batch() if case.arch == "t5" else _gpt2_batch()
  ours = case.ours.scores()
  np.testing.assert_allclose(ours, _peft_scores(case.peft, case.arch, batch),
                             **SCORE_TOL)
  # The plain base scores differently: the prompt / prefix is in effect.
  plain = _peft_scores(case.base, case.arch, batch)
  assert np.abs(ours - plain).min() > 1e-2


# The other cases decode through the same code paths (MLP: only the table
# differs; 2 T5 decoder layers: only the slot mapping, checked by scores).
@pytest.mark.parametrize("case", ["t5_prompt", "gpt2_prompt", "gpt2_prefix",
                                  "t5_prefix_3_layers"], indirect=True)


def test_greedy_decode_matches_peft_generate(case):
  ours = case.ours.greedy()
  for i, ref in enumerate(_peft_greedy(case.peft, case.arch)):
    np.testing.assert_array_equal(ours[i, :len(ref)], ref)
    assert not ours[i, len(ref):].any()


def test_exported_adapter_matches_ours(case, tmp_path):
  out = export.export_prompt(
      {"params": case.ours.params}, tmp_path / "adapter", format="peft",
      model=case.ours.model, base_model_name_or_path=case.path)
  loaded = peft.PeftModel.from_pretrained(copy.deepcopy(case.base), out)
  loaded.eval()
  assert loaded.peft_config["default"].inference_mode
  ref = _peft_scores(loaded, case.arch, _t5_batch() if case.arch == "t5"
                     else _gpt2_batch())
  np.testing.assert_allclose(case.ours.scores(), ref, **SCORE_TOL)
  # The stored table is the in-memory model's (folded for the MLP; T5 with
  # an even depth leaves slots PEFT never reads, so only scores compare).
  if case.name != "t5_prefix_2_layers":
    got = loaded.prompt_encoder["default"].embedding.weight.detach().numpy()
    with torch.no_grad():
      want = case.peft.get_prompt_embedding_to_save("default").numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_prefix_positions_none_differs_from_peft(bases):
  """positions="none" (inputs start at 0, the prefix has no position) is not
  PEFT's convention: same table, different scores; it equals HF fed the
  prefix as a cache with positions 0..L-1."""
  base, path = bases["gpt2"]
  layers_ = base.config.n_layer
  flat = _random((P, layers_ * 2 * H), seed=12)
  table = _our_table_from_peft(flat, layers_, t5_slots=False)
  ours = _Ours(path, PrefixTuning(
      length=P, positions="none",
      initializer=initializers.from_array(table)), "gpt2").scores()
  peft_model = _in_memory_peft(
      base, peft.PrefixTuningConfig(task_type="CAUSAL_LM",
                                    num_virtual_tokens=P),
      {"embedding.weight": flat})
  batch = _gpt2_batch()
  ref = _peft_scores(peft_model, "gpt2", batch)
  assert np.abs(ours - ref).max() > 1e-2

  tokens = torch.as_tensor(batch["decoder_input_tokens"]).long()
  mask = torch.zeros_like(tokens)
  for i, n in enumerate(GPT2_LENGTHS):
    mask[i, :n] = 1
  kv = torch.as_tensor(table)  # [layers, 2, P, heads, head_dim]
  cache = transformers.DynamicCache([
      (kv[i, 0].transpose(0, 1)[None].expand(3, -1, -1, -1),
       kv[i, 1].transpose(0, 1)[None].expand(3, -1, -1, -1))
      for i in range(layers_)])
  with torch.no_grad():
    logits = base(
        input_ids=tokens, past_key_values=cache,
        attention_mask=torch.cat([torch.ones(3, P).long(), mask], 1),
        position_ids=torch.arange(tokens.shape[1])[None].expand(3, -1)).logits
  np.testing.assert_allclose(
      ours, _summed_log_likelihood(logits, batch["decoder_target_tokens"],
                                   batch["decoder_loss_weights"]),
      **SCORE_TOL)

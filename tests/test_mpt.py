"""Multitask prompt tuning (MPT): parity with PEFT's MultitaskPromptTuning on
identical weights (T5 and GPT-2, a mixed-task batch: logits, scores and
greedy decodes), mixed-task batches equal per-task batches, the prompt is
shared * (cols @ rows) by hand, only the MPT parameters train, and packed
batches are refused.

PEFT's T5 case sets num_transformer_submodules=1: the prompt goes on the
encoder input only (PEFT's seq2seq default of 2 also prepends a second
prompt to the decoder input in forward, though not in generate).
"""

from __future__ import annotations

import copy
import os
import types

import flax.linen as nn
import jax
import numpy as np
import pytest

import hf_models
import prompt_tuning as pt
from prompt_tuning import partitioning
from prompt_tuning import param_split
from prompt_tuning.checkpoints import export
from prompt_tuning.methods import initializers as inits
from prompt_tuning.methods.mpt import MultitaskPromptTuning
from prompt_tuning.models import configs

# transformers' deprecation inside PEFT, and PEFT's note that it drops the
# position ids its own generate passes for prompt tuning.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:.*is_gradient_checkpointing.*:FutureWarning"),
    pytest.mark.filterwarnings(
        "ignore:Position ids are not supported:UserWarning"),
]

NUM_TASKS, P, RANKS = 3, 5, 2
TASK_IDS = np.array([2, 0, 1], np.int32)  # the parity batches' tasks


def _random(shape, seed, scale=1.0):
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(
      np.float32)


def _fixed(h, num_tasks=NUM_TASKS, length=P, ranks=RANKS, seed=0):
  """A method with random fixed values and the values themselves."""
  values = {"prompt_embeddings": _random((length, h), seed),
            "prefix_task_cols": _random((num_tasks, length, ranks), seed + 1),
            "prefix_task_rows": _random((num_tasks, ranks, h), seed + 2)}
  method = MultitaskPromptTuning(
      num_tasks=num_tasks, length=length, num_ranks=ranks,
      initializer=inits.from_array(values["prompt_embeddings"]),
      cols_initializer=inits.from_array(values["prefix_task_cols"]),
      rows_initializer=inits.from_array(values["prefix_task_rows"]))
  return method, values


def _by_hand(values, task):
  return values["prompt_embeddings"] * (
      values["prefix_task_cols"][task] @ values["prefix_task_rows"][task])


# ----------------------------------------------------------------------------
# (a) Parity with PEFT on identical weights.
# ----------------------------------------------------------------------------

SCORE_TOL = dict(rtol=1e-5, atol=1e-4)
LOGIT_TOL = dict(rtol=1e-5, atol=2e-5)
GPT2_EOS = 127
GPT2_LENGTHS = (12, 7, 3)
T5_DECODE_LEN = 6


_tokens = hf_models.random_tokens


def _t5_batch():
  return {**hf_models.t5_batch(), "task_ids": TASK_IDS}


def _gpt2_batch():
  rng = np.random.default_rng(1)
  tokens = _tokens(rng, GPT2_LENGTHS, 12, low=0, high=GPT2_EOS)
  weights = np.zeros(tokens.shape, np.float32)
  for i, n in enumerate(GPT2_LENGTHS):
    weights[i, :n - 1] = 1.0
  return {"decoder_input_tokens": tokens,
          "decoder_target_tokens": np.pad(tokens[:, 1:], ((0, 0), (0, 1))),
          "decoder_loss_weights": weights,
          "task_ids": TASK_IDS}


def _peft_logits(torch, model, arch, batch, task_ids=TASK_IDS):
  """PEFT's logits over our batch's target positions [batch, L, vocab]."""
  with torch.no_grad():
    task_ids = torch.as_tensor(task_ids).long()
    if arch == "t5":
      inputs = torch.as_tensor(batch["encoder_input_tokens"]).long()
      targets = torch.as_tensor(batch["decoder_target_tokens"]).long()
      # With one transformer submodule PEFT passes labels, not
      # decoder_input_ids, on to T5, which shifts them right itself.
      return model(input_ids=inputs, attention_mask=(inputs > 0).long(),
                   labels=torch.where(targets > 0, targets, -100),
                   task_ids=task_ids).logits.numpy()
    tokens = torch.as_tensor(batch["decoder_input_tokens"]).long()
    mask = torch.zeros_like(tokens)
    for i, n in enumerate(GPT2_LENGTHS):
      mask[i, :n] = 1
    logits = model(input_ids=tokens, attention_mask=mask,
                   task_ids=task_ids).logits
    return logits[:, -tokens.shape[1]:].numpy()  # drop the P prompt rows


def _summed(logits, batch):
  log_probs = jax.nn.log_softmax(np.asarray(logits, np.float64), -1)
  picked = np.take_along_axis(
      np.asarray(log_probs), batch["decoder_target_tokens"][..., None], -1)
  return (picked[..., 0] * batch["decoder_loss_weights"]).sum(-1)


def _peft_greedy(torch, model, arch):
  """PEFT's generate, one example at a time, each with its task."""
  outputs = []
  with torch.no_grad():
    if arch == "t5":
      for row, task in zip(_t5_batch()["encoder_input_tokens"], TASK_IDS):
        real = torch.as_tensor(row[row > 0][None]).long()
        out = model.generate(
            input_ids=real, attention_mask=torch.ones_like(real),
            task_ids=torch.tensor([int(task)]), max_new_tokens=T5_DECODE_LEN,
            do_sample=False, num_beams=1).numpy()[0, 1:]
        outputs.append(np.pad(out, (0, T5_DECODE_LEN - len(out))))
    else:
      tokens = _gpt2_batch()["decoder_input_tokens"]
      for row, n, task in zip(tokens, (5, 4, 2), TASK_IDS):
        ids = torch.as_tensor(row[None, :n]).long()
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids),
            task_ids=torch.tensor([int(task)]), max_new_tokens=8 - n,
            do_sample=False, num_beams=1, pad_token_id=GPT2_EOS,
            eos_token_id=GPT2_EOS).numpy()[0, n:]
        outputs.append(out)
  return outputs


def _our_greedy(case):
  if case.arch == "t5":
    batch = {"encoder_input_tokens": _t5_batch()["encoder_input_tokens"],
             "decoder_target_tokens": np.zeros((3, T5_DECODE_LEN), np.int32),
             "task_ids": TASK_IDS}
  else:
    tokens = _gpt2_batch()["decoder_input_tokens"]
    prompts = np.zeros((3, 8), np.int32)
    region = np.zeros((3, 8), np.int32)
    for i, n in enumerate((5, 4, 2)):
      prompts[i, :n] = tokens[i, :n]
      region[i, :n] = 1
    batch = {"decoder_input_tokens": prompts,
             "decoder_causal_attention": region, "task_ids": TASK_IDS}
  return np.asarray(jax.jit(case.model.predict_batch)(case.params, batch))


@pytest.fixture(scope="module")
def torch_peft():
  torch = pytest.importorskip("torch")
  peft = pytest.importorskip("peft")
  return torch, peft


@pytest.fixture(scope="module", params=["t5", "gpt2"])
def case(request, torch_peft, hf_tmp):
  """Our model and PEFT's on the same tiny base with the same MPT values."""
  torch, peft = torch_peft
  arch = request.param
  if arch == "t5":
    base, path = hf_models.tiny_t5_v1_1(hf_tmp)
    task_type, extra, kwargs = "SEQ_2_SEQ_LM", {
        "num_transformer_submodules": 1}, {}
  else:
    base, path = hf_models.tiny_gpt2(hf_tmp)
    task_type, extra, kwargs = "CAUSAL_LM", {}, {"eos_id": GPT2_EOS}
  method, values = _fixed(16, seed=10)
  model, variables = pt.load_pretrained(path, method=method, **kwargs)
  config = peft.MultitaskPromptTuningConfig(
      task_type=task_type, num_virtual_tokens=P, num_tasks=NUM_TASKS,
      num_ranks=RANKS, **extra)
  peft_model = peft.get_peft_model(copy.deepcopy(base), config).eval()
  encoder = peft_model.prompt_encoder["default"]
  named = dict(encoder.named_parameters())
  # Same names as PEFT's saved adapter (its in-memory shared prompt is the
  # embedding's weight).
  peft_values = {"embedding.weight": values["prompt_embeddings"],
                 "prefix_task_cols": values["prefix_task_cols"],
                 "prefix_task_rows": values["prefix_task_rows"]}
  assert set(named) == set(peft_values)
  with torch.no_grad():
    for name, value in peft_values.items():
      assert tuple(named[name].shape) == value.shape
      named[name].copy_(torch.as_tensor(value))
  return types.SimpleNamespace(
      arch=arch, model=model, params=variables["params"], values=values,
      base=base, peft=peft_model, torch=torch, peft_lib=peft)


def test_parameters_and_prompts_are_pefts(case):
  ours = jax.tree.map(np.asarray, case.params["prompt"])
  assert set(ours) == set(case.values)
  for name, value in case.values.items():
    np.testing.assert_array_equal(ours[name], value)
  # Each example's prompt: ours, PEFT's prompt encoder and by hand.
  prompts = np.asarray(case.model.module.apply(
      {"params": case.params}, TASK_IDS,
      method=lambda module, ids: module.prompt(ids)))
  torch = case.torch
  with torch.no_grad():
    peft_prompts = case.peft.prompt_encoder["default"](
        torch.arange(P)[None].expand(3, -1),
        torch.as_tensor(TASK_IDS).long()).numpy()
  np.testing.assert_allclose(prompts, peft_prompts, rtol=1e-6, atol=1e-6)
  for row, task in enumerate(TASK_IDS):
    np.testing.assert_allclose(prompts[row], _by_hand(case.values, task),
                               rtol=1e-5, atol=1e-6)


def test_mixed_task_logits_and_scores_match_peft(case):
  batch = _t5_batch() if case.arch == "t5" else _gpt2_batch()
  ours = np.asarray(case.model.compute_logits(case.params, batch))
  ref = _peft_logits(case.torch, case.peft, case.arch, batch)
  real = batch["decoder_loss_weights"] > 0
  np.testing.assert_allclose(ours[real], ref[real], **LOGIT_TOL)
  scores = np.asarray(jax.jit(case.model.score_batch)(case.params, batch))
  np.testing.assert_allclose(scores, _summed(ref, batch), **SCORE_TOL)
  # The task matters: every example scores differently under another task,
  # and differently from the plain base.
  other = _peft_logits(case.torch, case.peft, case.arch, batch,
                       task_ids=(TASK_IDS + 1) % NUM_TASKS)
  assert np.abs(scores - _summed(other, batch)).min() > 1e-2
  with case.torch.no_grad():
    plain = case.peft.get_base_model()
    if case.arch == "t5":
      inputs = case.torch.as_tensor(batch["encoder_input_tokens"]).long()
      plain_logits = plain(
          input_ids=inputs, attention_mask=(inputs > 0).long(),
          decoder_input_ids=case.torch.as_tensor(
              batch["decoder_input_tokens"]).long()).logits.numpy()
    else:
      plain_logits = plain(input_ids=case.torch.as_tensor(
          batch["decoder_input_tokens"]).long()).logits.numpy()
  assert np.abs(scores - _summed(plain_logits, batch)).min() > 1e-2


def test_mixed_task_greedy_decodes_match_peft_generate(case):
  ours = _our_greedy(case)
  for i, ref in enumerate(_peft_greedy(case.torch, case.peft, case.arch)):
    np.testing.assert_array_equal(ours[i, :len(ref)], ref)


# ----------------------------------------------------------------------------
# Tiny configs of our own for the rest.
# ----------------------------------------------------------------------------

H = 8
CONFIGS = {
    "t5": configs.t5_1_1("tiny", vocab_size=64, emb_dim=H, head_dim=4,
                         relative_attention_num_buckets=8,
                         relative_attention_max_distance=6),
    "gpt2": configs.gpt2("small", vocab_size=64, emb_dim=H, num_heads=2,
                         head_dim=4, mlp_dim=32, num_decoder_layers=2,
                         max_position_embeddings=32),
}
SHAPES = {"encoder_input_tokens": (1, 6), "decoder_input_tokens": (1, 5)}
MIXED_IDS = np.array([2, 0, 1, 2, 0], np.int32)


def _init(model, seed=0):
  return nn.meta.unbox(model.get_initial_variables(
      jax.random.PRNGKey(seed), SHAPES)["params"])


def _batch(arch):
  """5 right-padded examples of mixed tasks."""
  rng = np.random.default_rng(0)
  targets = rng.integers(2, 60, (5, 5)).astype(np.int32)
  targets[1, 3:] = 0
  targets[3, 4:] = 0
  if arch == "t5":
    inputs = rng.integers(2, 60, (5, 6)).astype(np.int32)
    inputs[0, 4:] = 0
    inputs[2, 2:] = 0
    return {"encoder_input_tokens": inputs,
            "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
            "decoder_target_tokens": targets, "task_ids": MIXED_IDS}
  tokens = rng.integers(2, 60, (5, 8)).astype(np.int32)
  region = (np.arange(8)[None] < np.array([2, 3, 4, 2, 3])[:, None]
            ).astype(np.int32)
  tokens[4, 6:] = 0
  return {"decoder_input_tokens": tokens,
          "decoder_target_tokens": np.pad(tokens[:, 1:], ((0, 0), (0, 1))),
          "decoder_causal_attention": region, "task_ids": MIXED_IDS}


def _rows(batch, rows):
  return {k: v[rows] for k, v in batch.items()}


@pytest.fixture(scope="module", params=["t5", "gpt2"])
def mixed(request):
  arch = request.param
  method, _ = _fixed(H, length=3, seed=20)
  model = pt.build_model(CONFIGS[arch], method=method)
  return arch, model, _init(model)


# ----------------------------------------------------------------------------
# (b) Mixed-task batches equal per-task batches.
# ----------------------------------------------------------------------------


def test_mixed_batch_equals_per_task_batches(mixed):
  arch, model, params = mixed
  batch = _batch(arch)
  score = jax.jit(model.score_batch)
  predict = jax.jit(model.predict_batch)
  scores = np.asarray(score(params, batch))
  decodes = np.asarray(predict(params, batch))
  for task in range(NUM_TASKS):
    rows = np.flatnonzero(MIXED_IDS == task)
    alone = _rows(batch, rows)  # a batch of this task's examples only
    np.testing.assert_allclose(scores[rows], score(params, alone),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(decodes[rows], predict(params, alone))
  # The task ids are read: one task for every row changes the others.
  same = np.asarray(score(params, {**batch, "task_ids": np.zeros(5, np.int32)}))
  assert np.abs(scores - same)[MIXED_IDS != 0].min() > 1e-3


def test_loss_gradient_reaches_only_the_batch_tasks(mixed):
  arch, model, params = mixed
  batch = {**_batch(arch), "task_ids": np.array([2, 0, 2, 0, 0], np.int32)}
  train, frozen = param_split.split(params, model.trainable_patterns)
  grads = jax.grad(lambda t: model.loss_fn(param_split.merge(t, frozen), batch,
                                           None)[0])(train)["prompt"]
  assert np.abs(grads["prompt_embeddings"]).max() > 0
  for name in ("prefix_task_cols", "prefix_task_rows"):
    g = np.asarray(grads[name])
    assert not g[1].any()  # task 1 is not in the batch
    assert np.abs(g[0]).max() > 0 and np.abs(g[2]).max() > 0


# ----------------------------------------------------------------------------
# (c) The prompt by hand; what trains.
# ----------------------------------------------------------------------------


def test_prompt_is_shared_times_task_low_rank_matrix_by_hand():
  shared = np.array([[1., 2., 3., 4., 5., 6., 7., 8.],
                     [-1., 0., 1., 0., -1., 0., 1., 0.]], np.float32)
  cols = np.array([[[1.], [2.]], [[0.5], [-1.]]], np.float32)  # [2, 2, 1]
  rows = np.array([[[1., 1., 1., 1., 2., 2., 2., 2.]],
                   [[3., 0., 3., 0., 3., 0., 3., 0.]]], np.float32)
  method = MultitaskPromptTuning(
      num_tasks=2, length=2, num_ranks=1,
      initializer=inits.from_array(shared),
      cols_initializer=inits.from_array(cols),
      rows_initializer=inits.from_array(rows))
  model = pt.build_model(CONFIGS["t5"], method=method)
  params = _init(model)
  expected = {
      0: np.array([[1, 2, 3, 4, 10, 12, 14, 16],
                   [-2, 0, 2, 0, -4, 0, 4, 0]], np.float32),
      1: np.array([[1.5, 0, 4.5, 0, 7.5, 0, 10.5, 0],
                   [3, 0, -3, 0, 3, 0, -3, 0]], np.float32)}
  tokens = np.array([[5, 6, 1], [7, 1, 0], [8, 9, 1]], np.int32)
  task_ids = np.array([1, 0, 1], np.int32)
  # Through the real input path: the prefix layout puts the prompt first.
  embedded, valid = model.module.apply(
      {"params": params}, tokens, {"task_ids": task_ids},
      method="embed_inputs")
  for row, task in enumerate(task_ids):
    np.testing.assert_allclose(embedded[row, :2], expected[int(task)],
                               rtol=1e-6)
  np.testing.assert_array_equal(valid[:, :2], True)
  assert embedded.shape[1] == 2 + tokens.shape[1]


@pytest.mark.parametrize("arch", ["t5", "gpt2"])
def test_only_the_mpt_parameters_train(arch):
  method = MultitaskPromptTuning(num_tasks=4, length=3, num_ranks=2)
  model = pt.build_model(CONFIGS[arch], method=method)
  params = _init(model)
  train, frozen = param_split.split(params, model.trainable_patterns)
  assert set(train) == {"prompt"}
  assert set(train["prompt"]) == {"prompt_embeddings", "prefix_task_cols",
                                  "prefix_task_rows"}
  assert "prompt" not in frozen
  counted, _ = param_split.count_trainable(model)
  assert counted == 3 * H + 4 * 3 * 2 + 4 * 2 * H
  # PEFT's default scale for the task matrices; the library's for the prompt.
  p = train["prompt"]
  assert 0 < np.abs(p["prompt_embeddings"]).max() <= 0.5
  assert np.std(np.concatenate([p["prefix_task_cols"].ravel(),
                                p["prefix_task_rows"].ravel()])) < 0.05


def test_parameters_have_logical_axes_that_replicate():
  model = pt.build_model(CONFIGS["t5"], method=MultitaskPromptTuning(
      num_tasks=2, length=3, num_ranks=2))
  boxed = model.get_initial_variables(jax.random.PRNGKey(0),
                                      SHAPES)["params"]["prompt"]
  assert boxed["prompt_embeddings"].names == ("prompt", "prompt_embed")
  assert boxed["prefix_task_cols"].names == ("tasks", "prompt", "prompt_rank")
  assert boxed["prefix_task_rows"].names == ("tasks", "prompt_rank",
                                             "prompt_embed")
  mesh = partitioning.make_mesh(data=4, model=2)
  for leaf in boxed.values():
    sharding = partitioning.logical_to_sharding(leaf.names, mesh,
                                                shape=leaf.value.shape)
    assert all(axis is None for axis in sharding.spec)


# ----------------------------------------------------------------------------
# (d) Packing and other errors.
# ----------------------------------------------------------------------------


def test_packed_batch_is_refused():
  model = pt.build_model(CONFIGS["t5"], method=MultitaskPromptTuning(
      num_tasks=2, length=2))
  params = _init(model)
  tokens = np.array([[3, 4, 1, 9, 1, 0], [5, 1, 6, 7, 1, 0]], np.int32)
  segments = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 2, 2, 2, 0]], np.int32)
  positions = np.array([[0, 1, 2, 0, 1, 0], [0, 1, 0, 1, 2, 0]], np.int32)
  packed = {"encoder_input_tokens": tokens, "encoder_segment_ids": segments,
            "encoder_positions": positions,
            "decoder_input_tokens": np.pad(tokens[:, :-1], ((0, 0), (1, 0))),
            "decoder_target_tokens": tokens, "decoder_segment_ids": segments,
            "decoder_positions": positions,
            "task_ids": np.array([0, 1], np.int32)}
  with pytest.raises(ValueError, match="possibly of different tasks") as info:
    model.loss_fn(params, packed, None)
  message = str(info.value)
  assert "MultitaskPromptTuning cannot take packed batches" in message
  assert "--gin.DatasetConfig.pack=False" in message
  # The network itself and the data pipeline's check say the same.
  with pytest.raises(ValueError, match="possibly of different tasks"):
    model.module.apply({"params": params}, tokens, packed[
        "decoder_input_tokens"], encoder_segment_ids=segments,
                       task_ids=packed["task_ids"])
  with pytest.raises(ValueError, match="DatasetConfig.pack=True"):
    model.method.check_packing("DatasetConfig.pack=True")


def test_task_id_errors(mixed):
  arch, model, params = mixed
  batch = _batch(arch)
  with pytest.raises(KeyError, match="batch lacks task_ids"):
    model.score_batch(params, {k: v for k, v in batch.items()
                               if k != "task_ids"})
  with pytest.raises(ValueError, match=r"task ids \[3\] are out of range"):
    model.score_batch(params, {**batch, "task_ids": np.array(
        [0, 1, 3, 2, 0], np.int32)})
  # Under a caller's jit: NaN for the bad rows, never another task's prompt.
  scores = np.asarray(jax.jit(model.score_batch)(params, {
      **batch, "task_ids": np.array([0, -1, 2, 3, 1], np.int32)}))
  assert np.isnan(scores[[1, 3]]).all() and np.isfinite(scores[[0, 2, 4]]).all()


def test_bad_configurations_are_rejected():
  with pytest.raises(ValueError, match="num_ranks=0"):
    MultitaskPromptTuning(num_ranks=0)
  with pytest.raises(ValueError, match="num_tasks=0"):
    MultitaskPromptTuning(num_tasks=0)
  with pytest.raises(ValueError, match="decoder-only"):
    pt.build_model(CONFIGS["gpt2"], method=MultitaskPromptTuning(
        combine="suffix"))


def test_npy_export_refuses_mpt(tmp_path):
  model = pt.build_model(CONFIGS["t5"], method=MultitaskPromptTuning(
      num_tasks=2, length=2))
  variables = {"params": _init(model)}
  with pytest.raises(ValueError, match="PromptTuning"):
    export.export_prompt(variables, tmp_path / "b", model=model)
  assert not os.path.exists(tmp_path / "b")


def test_peft_export_loads_in_peft_with_our_logits(case, tmp_path):
  """Our MPT params, exported as a PEFT adapter and loaded by
  PeftModel.from_pretrained on the same base, give our logits per task."""
  out = export.export_prompt({"params": case.params}, tmp_path / "adapter",
                             format="peft", model=case.model)
  loaded = case.peft_lib.PeftModel.from_pretrained(
      copy.deepcopy(case.base), out).eval()
  batch = _t5_batch() if case.arch == "t5" else _gpt2_batch()
  ours = np.asarray(case.model.compute_logits(case.params, batch))
  ref = _peft_logits(case.torch, loaded, case.arch, batch)
  real = batch["decoder_loss_weights"] > 0
  np.testing.assert_allclose(ours[real], ref[real], **LOGIT_TOL)


# ----------------------------------------------------------------------------
# Starting a target task from source tasks (PEFT's init modes).
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["AVERAGE_SOURCE_TASKS", "exact_source_task",
                                  "only_source_shared"])
def test_from_source_starts_the_target_as_peft_does(init):
  _, source = _fixed(H, length=3, seed=30)
  method = MultitaskPromptTuning.from_source(source, init=init, task=2)
  assert (method.num_tasks, method.length) == (1, 3)
  params = _init(pt.build_model(CONFIGS["t5"], method=method))["prompt"]
  np.testing.assert_array_equal(params["prompt_embeddings"],
                                source["prompt_embeddings"])
  cols, rows = params["prefix_task_cols"], params["prefix_task_rows"]
  assert cols.shape == ((1, 3, RANKS) if init != "only_source_shared"
                        else (1, 3, 1))
  if init == "AVERAGE_SOURCE_TASKS":
    np.testing.assert_allclose(cols[0], source["prefix_task_cols"].mean(0),
                               rtol=1e-6)
    np.testing.assert_allclose(rows[0], source["prefix_task_rows"].mean(0),
                               rtol=1e-6)
  elif init == "exact_source_task":
    np.testing.assert_array_equal(cols[0], source["prefix_task_cols"][2])
    np.testing.assert_array_equal(rows[0], source["prefix_task_rows"][2])
  with pytest.raises(ValueError, match="choose one of"):
    MultitaskPromptTuning.from_source(source, init="text")

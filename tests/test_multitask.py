"""Multitask prompts: hand-computed prompts per mode, mixed-task batches equal
per-task runs (scores and greedy decodes), task tokens equal task_ids, and a
prompt bank equals single-task PromptTuning models."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import partitioning
from prompt_tuning.methods import initializers as inits
from prompt_tuning.methods.multitask import MultiTaskPrompt
from prompt_tuning.methods.multitask import per_task
from prompt_tuning.methods.soft_prompt import PromptTuning
from prompt_tuning.models import configs

VOCAB = 64
CONFIGS = {
    "t5": configs.t5_1_1("tiny", vocab_size=VOCAB, emb_dim=8, head_dim=4,
                         relative_attention_num_buckets=8,
                         relative_attention_max_distance=6),
    "gpt2": configs.gpt2("small", vocab_size=VOCAB, emb_dim=8, num_heads=2,
                         head_dim=4, mlp_dim=32, num_decoder_layers=2,
                         max_position_embeddings=32),
}
H = 8
NUM_TASKS = 3
# Mixed-batch tests: a shared row then two task rows, all random.
METHOD = MultiTaskPrompt(num_tasks=NUM_TASKS, mode="concat_length",
                         shared_length=1, task_length=2)
TASK_IDS = np.array([2, 0, 1, 2, 0], np.int32)
SHAPES = {"encoder_input_tokens": (1, 6), "decoder_input_tokens": (1, 5)}
# Task-token mode: the id of <extra_id_0>, seqio's last; task K's token is
# OFFSET - K (<extra_id_K>).
OFFSET = VOCAB - 1


def _init(model, seed=0):
  return nn.meta.unbox(model.get_initial_variables(
      jax.random.PRNGKey(seed), SHAPES)["params"])


def _add_prompt(model, base, boxed=False):
  """Base params + the method's, made as load_pretrained makes them (no
  batch, no full-model init)."""
  _, state = model.module.apply(
      {"params": base}, method="init_method_params", mutable=["params"],
      rngs={"params": jax.random.PRNGKey(0)})
  return state["params"] if boxed else nn.meta.unbox(state["params"])


def _base(params):
  return {k: v for k, v in params.items() if k != "prompt"}


def _batch(arch: str) -> dict[str, np.ndarray]:
  """5 right-padded examples; decoder-only rows carry a 2-4 token prompt."""
  rng = np.random.default_rng(0)
  targets = rng.integers(2, 60, (5, 5)).astype(np.int32)
  targets[1, 3:] = 0
  targets[3, 4:] = 0
  if arch == "t5":
    inputs = rng.integers(2, 60, (5, 6)).astype(np.int32)
    inputs[0, 4:] = 0
    inputs[2, 2:] = 0
    inputs[4] = 0  # a padding row, as in T5X's last eval batch
    return {"encoder_input_tokens": inputs,
            "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
            "decoder_target_tokens": targets,
            "task_ids": TASK_IDS}
  tokens = rng.integers(2, 60, (5, 8)).astype(np.int32)
  prompt_lengths = np.array([2, 3, 4, 2, 3])
  region = (np.arange(8)[None] < prompt_lengths[:, None]).astype(np.int32)
  tokens[4, 6:] = 0
  return {"decoder_input_tokens": tokens,
          "decoder_target_tokens": np.pad(tokens[:, 1:], ((0, 0), (0, 1))),
          "decoder_causal_attention": region,
          "task_ids": TASK_IDS}


class Jitted:
  """A model with jitted scoring and decoding: one compile per batch shape
  (eager decoding would recompile its loop on every call)."""

  def __init__(self, model):
    self.model = model
    self.score = jax.jit(model.score_batch)
    self.predict = jax.jit(model.predict_batch)


def _mixed(arch):
  model = pt.build_model(CONFIGS[arch], method=METHOD)
  return arch, Jitted(model), _init(model)


@pytest.fixture(scope="module")
def t5_mixed():
  return _mixed("t5")


@pytest.fixture(scope="module")
def gpt2_mixed():
  return _mixed("gpt2")


@pytest.fixture(params=["t5", "gpt2"])
def mixed(request):
  return request.getfixturevalue(f"{request.param}_mixed")


# ----------------------------------------------------------------------------
# Prompts per mode, by hand.
# ----------------------------------------------------------------------------

_R = np.random.default_rng(7)
S_ADD, T_ADD = _R.normal(size=(2, H)), _R.normal(size=(3, 2, H))
S_LEN, T_LEN = _R.normal(size=(1, H)), _R.normal(size=(3, 2, H))
S_FEAT, T_FEAT = _R.normal(size=(2, 3)), _R.normal(size=(3, 2, H - 3))
MODES = {
    "add": (dict(length=2, shared_initializer=inits.from_array(S_ADD),
                 task_initializer=inits.from_array(T_ADD)),
            lambda t: S_ADD + T_ADD[t]),
    "concat_length": (dict(shared_length=1, task_length=2,
                           shared_initializer=inits.from_array(S_LEN),
                           task_initializer=inits.from_array(T_LEN)),
                      lambda t: np.concatenate([S_LEN, T_LEN[t]], 0)),
    "concat_features": (dict(length=2, shared_features=3,
                             shared_initializer=inits.from_array(S_FEAT),
                             task_initializer=inits.from_array(T_FEAT)),
                        lambda t: np.concatenate([S_FEAT, T_FEAT[t]], 1)),
    "task_only": (dict(length=2, task_initializer=inits.from_array(T_ADD)),
                  lambda t: T_ADD[t]),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_each_mode_gives_hand_computed_prompt(mode, t5_mixed):
  kwargs, expected = MODES[mode]
  method = MultiTaskPrompt(num_tasks=3, mode=mode, **kwargs)
  model = pt.build_model(CONFIGS["t5"], method=method)
  params = _add_prompt(model, _base(t5_mixed[2]))
  assert ("shared" in params["prompt"]) == (mode != "task_only")
  tokens = np.array([[5, 6, 1], [7, 1, 0], [8, 9, 1]], np.int32)
  task_ids = np.array([2, 0, 1], np.int32)
  # Through the real input path: the prefix layout puts the prompt first.
  embedded, valid = model.module.apply(
      {"params": params}, tokens, {"task_ids": task_ids},
      method="embed_inputs")
  for row, task in enumerate(task_ids):
    np.testing.assert_allclose(embedded[row, :method.length], expected(task),
                               rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(valid[:, :method.length], True)


def test_default_task_part_is_zero_for_add_and_uniform_otherwise(t5_mixed):
  base = _base(t5_mixed[2])
  add = _add_prompt(pt.build_model(CONFIGS["t5"], method=MultiTaskPrompt(
      num_tasks=2, length=3)), base)["prompt"]
  np.testing.assert_array_equal(add["tasks"], 0.0)
  assert 0 < np.abs(add["shared"]).max() <= 0.5
  only = _add_prompt(pt.build_model(CONFIGS["t5"], method=MultiTaskPrompt(
      num_tasks=2, length=3, mode="task_only")), base)["prompt"]
  assert 0 < np.abs(only["tasks"]).max() <= 0.5
  assert not np.allclose(only["tasks"][0], only["tasks"][1])


def test_per_task_applies_a_prompt_initializer_to_each_task():
  a, b = np.ones((2, H)), 2 * np.ones((2, H))
  table = per_task(inits.from_array(a), inits.from_array(b))(
      jax.random.PRNGKey(0), (2, 2, H))
  np.testing.assert_array_equal(table, np.stack([a, b]))
  drawn = per_task(inits.uniform(0.5))(jax.random.PRNGKey(0), (2, 2, H))
  assert not np.allclose(drawn[0], drawn[1])
  with pytest.raises(ValueError, match="one per task"):
    per_task(inits.uniform(), inits.uniform())(jax.random.PRNGKey(0),
                                                (3, 2, H))


def test_params_have_task_axis_that_replicates(t5_mixed):
  model = pt.build_model(CONFIGS["t5"], method=METHOD)
  boxed = _add_prompt(model, _base(t5_mixed[2]), boxed=True)["prompt"]
  assert boxed["tasks"].names == ("tasks", "prompt", "prompt_embed")
  assert boxed["shared"].names == ("prompt", "prompt_embed")
  mesh = partitioning.make_mesh(data=4, model=2)
  sharding = partitioning.logical_to_sharding(
      boxed["tasks"].names, mesh, shape=boxed["tasks"].value.shape)
  assert all(axis is None for axis in sharding.spec)


def test_task_token_model_initializes_without_a_batch(t5_mixed):
  """module.init (dummy all-ones inputs) and load_pretrained's
  init_method_params both build the prompt from task 0, not the token."""
  model = pt.build_model(CONFIGS["t5"], method=MultiTaskPrompt(
      num_tasks=3, length=2, task_token_offset=OFFSET))
  for params in (_init(model), _add_prompt(model, _base(t5_mixed[2]))):
    assert params["prompt"]["shared"].shape == (2, H)
    assert params["prompt"]["tasks"].shape == (3, 2, H)


# ----------------------------------------------------------------------------
# Mixed-task batches.
# ----------------------------------------------------------------------------


def _one_task(batch, task):
  return {**batch, "task_ids": np.full_like(TASK_IDS, task)}


def test_mixed_batch_scores_equal_per_task_scores(mixed):
  """Each example scores as in a batch where every example has its task."""
  arch, model, params = mixed
  batch = _batch(arch)
  scores = model.score(params, batch)
  for task in range(NUM_TASKS):
    rows = TASK_IDS == task
    np.testing.assert_allclose(
        scores[rows], model.score(params, _one_task(batch, task))[rows],
        rtol=1e-5, atol=1e-5)
  # The task really matters: the same examples under other tasks differ.
  other = model.score(params, {**batch, "task_ids": (TASK_IDS + 1) % 3})
  assert np.all(np.abs(np.asarray(other) - np.asarray(scores)) > 1e-4)


def test_mixed_batch_greedy_decodes_equal_per_task_decodes(mixed):
  arch, model, params = mixed
  batch = _batch(arch)
  tokens = model.predict(params, batch)
  for task in range(NUM_TASKS):
    rows = TASK_IDS == task
    np.testing.assert_array_equal(
        tokens[rows], model.predict(params, _one_task(batch, task))[rows])


def test_loss_gradient_reaches_only_the_batch_tasks(mixed):
  arch, model, params = mixed
  batch = {**_batch(arch), "task_ids": np.array([0, 2, 0, 2, 2], np.int32)}
  grads = jax.jit(jax.grad(
      lambda p: model.model.loss_fn(p, batch, None)[0]))(params)
  tasks = np.asarray(grads["prompt"]["tasks"])
  assert np.abs(tasks[0]).max() > 0 and np.abs(tasks[2]).max() > 0
  np.testing.assert_array_equal(tasks[1], 0.0)
  assert np.abs(np.asarray(grads["prompt"]["shared"])).max() > 0


# ----------------------------------------------------------------------------
# Leading task token (google-research/prompt-tuning's convention).
# ----------------------------------------------------------------------------


def _with_task_tokens(batch):
  """The batch without task_ids, each input led by its task's token as
  prompt-tuning's add_sentinel_to_beginning(offset=K) writes it:
  vocab_size - (K + 1), i.e. <extra_id_K>."""
  tokens = {k: v for k, v in batch.items() if k != "task_ids"}
  tokens["encoder_input_tokens"] = np.concatenate(
      [(VOCAB - (TASK_IDS + 1))[:, None], batch["encoder_input_tokens"]], 1)
  # The all-padding row has no task token; it uses task 0 (its task id).
  tokens["encoder_input_tokens"][4] = 0
  assert TASK_IDS[4] == 0
  return tokens


def test_task_token_equals_task_ids_feature_with_token_removed(t5_mixed):
  _, feature_model, params = t5_mixed
  token_model = Jitted(pt.build_model(CONFIGS["t5"], method=MultiTaskPrompt(
      num_tasks=NUM_TASKS, mode="concat_length", shared_length=1,
      task_length=2, task_token_offset=OFFSET)))
  assert token_model.model.module.extra_features == ()
  batch = _batch("t5")
  token_batch = _with_task_tokens(batch)
  np.testing.assert_allclose(
      token_model.score(params, token_batch),
      feature_model.score(params, batch), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(
      token_model.predict(params, token_batch),
      feature_model.predict(params, batch))


# ----------------------------------------------------------------------------
# A prompt bank of single-task prompts.
# ----------------------------------------------------------------------------


def test_prompt_bank_equals_single_task_prompt_models(mixed, tmp_path):
  arch, _, mixed_params = mixed
  rng = np.random.default_rng(3)
  prompts = [rng.uniform(-0.5, 0.5, (3, H)).astype(np.float32)
             for _ in range(NUM_TASKS)]
  paths = []
  for i, prompt in enumerate(prompts):
    paths.append(tmp_path / f"task{i}.npy")
    np.save(paths[-1], prompt)
  bank = MultiTaskPrompt.from_files(paths)
  assert (bank.num_tasks, bank.length, bank.mode) == (3, 3, "task_only")
  model = pt.build_model(CONFIGS[arch], method=bank)
  assert model.trainable_patterns == ()
  params = _base(mixed_params)
  assert "prompt" not in _add_prompt(model, params)  # a constant
  batch = _batch(arch)
  scores = jax.jit(model.score_batch)(params, batch)
  for task, prompt in enumerate(prompts):
    single = pt.build_model(CONFIGS[arch], method=PromptTuning(prompt=prompt))
    rows = TASK_IDS == task
    plain = {k: v for k, v in batch.items() if k != "task_ids"}
    np.testing.assert_allclose(
        scores[rows], jax.jit(single.score_batch)(params, plain)[rows],
        rtol=1e-5, atol=1e-5)


def test_prompt_bank_row_k_serves_extra_id_k(t5_mixed):
  """A bank read with prompt-tuning's task tokens: row K for <extra_id_K>."""
  params = _base(t5_mixed[2])
  rng = np.random.default_rng(4)
  table = rng.uniform(-0.5, 0.5, (NUM_TASKS, 3, H)).astype(np.float32)
  bank = pt.build_model(CONFIGS["t5"], method=MultiTaskPrompt(
      prompts=table, task_token_offset=OFFSET))
  batch = _batch("t5")
  scores = jax.jit(bank.score_batch)(params, _with_task_tokens(batch))
  plain = {k: v for k, v in batch.items() if k != "task_ids"}
  for task in range(NUM_TASKS):
    single = pt.build_model(CONFIGS["t5"],
                            method=PromptTuning(prompt=table[task]))
    rows = TASK_IDS == task
    np.testing.assert_allclose(
        scores[rows], jax.jit(single.score_batch)(params, plain)[rows],
        rtol=1e-5, atol=1e-5)


def test_prompt_bank_accepts_arrays_and_a_stacked_table():
  table = np.arange(2 * 3 * H, dtype=np.float32).reshape(2, 3, H)
  from_list = MultiTaskPrompt.from_files([table[0], table[1]])
  stacked = MultiTaskPrompt(prompts=table)
  np.testing.assert_array_equal(from_list.prompts, table)
  np.testing.assert_array_equal(stacked.prompts, table)


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------


def test_missing_task_ids_is_a_clear_error(mixed):
  arch, model, params = mixed
  batch = {k: v for k, v in _batch(arch).items() if k != "task_ids"}
  with pytest.raises(KeyError, match="batch lacks task_ids"):
    model.model.score_batch(params, batch)


@pytest.mark.parametrize("bad", [3, -1])
def test_out_of_range_task_id_is_an_error(mixed, bad):
  arch, model, params = mixed
  batch = {**_batch(arch), "task_ids": np.array([0, 1, bad, 2, 0], np.int32)}
  with pytest.raises(ValueError, match=rf"task ids \[{bad}\] are out of "
                     "range for 3 tasks"):
    model.model.score_batch(params, batch)


def test_out_of_range_task_id_under_jit_gives_nan_not_another_task(
    t5_mixed):
  _, model, params = t5_mixed
  batch = {**_batch("t5"), "task_ids": np.array([0, 1, 3, 2, -1], np.int32)}
  scores = np.asarray(model.score(params, batch))
  assert np.isnan(scores[[2, 4]]).all()
  assert np.isfinite(scores[[0, 1, 3]]).all()


def test_out_of_range_task_token_is_an_error(t5_mixed):
  params = t5_mixed[2]
  model = pt.build_model(CONFIGS["t5"], method=MultiTaskPrompt(
      num_tasks=NUM_TASKS, mode="concat_length", shared_length=1,
      task_length=2, task_token_offset=OFFSET))
  batch = _batch("t5")
  batch["encoder_input_tokens"][:, 0] = OFFSET - 3  # <extra_id_3>: task 3
  with pytest.raises(ValueError, match=r"task ids \[3\] are out of range.*"
                     "first encoder token.*<extra_id_K>, ids 61..63"):
    model.score_batch(params, batch)


def test_mismatched_bank_shapes_name_the_file(tmp_path):
  np.save(tmp_path / "a.npy", np.zeros((3, H), np.float32))
  np.save(tmp_path / "b.npy", np.zeros((4, H), np.float32))
  with pytest.raises(ValueError, match=r"task 1's prompt .*b\.npy.* \(4, 8\)"):
    MultiTaskPrompt.from_files([tmp_path / "a.npy", tmp_path / "b.npy"])
  with pytest.raises(FileNotFoundError, match="missing.npy"):
    MultiTaskPrompt.from_files([tmp_path / "a.npy", tmp_path / "missing.npy"])
  with pytest.raises(ValueError, match="embeddings are 8 wide"):
    pt.build_model(CONFIGS["t5"], method=MultiTaskPrompt.from_files(
        [np.zeros((3, 4), np.float32)]))


def test_bad_configurations_are_rejected():
  with pytest.raises(ValueError, match="mode="):
    MultiTaskPrompt(num_tasks=2, mode="mean")
  with pytest.raises(ValueError, match="num_tasks"):
    MultiTaskPrompt(length=2)
  with pytest.raises(ValueError, match="shared_length"):
    MultiTaskPrompt(num_tasks=2, mode="concat_length", task_length=2)
  with pytest.raises(ValueError, match="shared_features"):
    MultiTaskPrompt(num_tasks=2, mode="concat_features")
  with pytest.raises(ValueError, match=r"must be in \(0, 8\)"):
    pt.build_model(CONFIGS["t5"], method=MultiTaskPrompt(
        num_tasks=2, mode="concat_features", shared_features=8))
  with pytest.raises(ValueError, match="decoder-only models take it from"):
    pt.build_model(CONFIGS["gpt2"], method=MultiTaskPrompt(
        num_tasks=2, task_token_offset=OFFSET))
  with pytest.raises(ValueError, match="task_token_offset=2 is too small "
                     "for 3 tasks.*<extra_id_0>"):
    MultiTaskPrompt(num_tasks=3, task_token_offset=2)
  with pytest.raises(ValueError, match="task_token_offset=64 is outside the "
                     "model's vocabulary of 64"):
    pt.build_model(CONFIGS["t5"], method=MultiTaskPrompt(
        num_tasks=3, task_token_offset=VOCAB))

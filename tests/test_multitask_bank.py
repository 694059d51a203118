"""Multitask prompts trained with google-research/prompt-tuning, loaded as
ours: their shared prompt and flattened task table, written as they write
them (a T5X checkpoint with their variable names, their Checkpointer's
numpy_checkpoints files, extract_variable's .npy), give a bank whose row K
is what their combine function computes for task K, and an example led by
<extra_id_K> gets that prompt. The reference below is written entry by
entry from their definitions, not with this package's reshapes."""

from __future__ import annotations

import flax.linen as nn
import gin
import jax
import ml_dtypes
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning.checkpoints import t5x
from prompt_tuning.methods import multitask_bank
from prompt_tuning.methods.multitask import MultiTaskPrompt
from prompt_tuning.models import configs

VOCAB = 64
H = 8
CONFIG = configs.t5_1_1("tiny", vocab_size=VOCAB, emb_dim=H, head_dim=4,
                        relative_attention_num_buckets=8,
                        relative_attention_max_distance=6)
OFFSET = VOCAB - 1  # the id of <extra_id_0>; <extra_id_K> is OFFSET - K
NUM_TASKS = 3
SHARED = "encoder/prompt/prompt/shared_prompt"
TASKS = "encoder/prompt/prompt/task_prompts/embedding"


def _their_parts(mode: str) -> tuple[np.ndarray, np.ndarray]:
  """(shared_prompt [P_s, H_s], task_prompts/embedding [3, S]) as their
  modules hold them: each task's part built, then flattened row-major."""
  rng = np.random.default_rng(sorted(multitask_bank.MODES).index(mode))
  if mode == "add":  # P_s = 2; each task a [2, 8] part
    shared, parts = rng.normal(size=(2, H)), rng.normal(size=(3, 2, H))
  elif mode == "concat_length":  # P_s = 2, P_t = 3
    shared, parts = rng.normal(size=(2, H)), rng.normal(size=(3, 3, H))
  elif mode == "concat_features":  # H_s = 5, H_t = 3
    shared, parts = rng.normal(size=(2, 5)), rng.normal(size=(3, 2, 3))
  else:  # project: H_s = 4 -> H_t = 8; kernel [H_t, H_s] then bias [H_t]
    shared = rng.normal(size=(2, 4))
    kernels, biases = rng.normal(size=(3, H, 4)), rng.normal(size=(3, H))
    parts = [np.concatenate([np.ravel(k), b]) for k, b in zip(kernels, biases)]
  tasks = np.stack([np.ravel(part) for part in parts])
  return shared.astype(np.float32), tasks.astype(np.float32)


def _their_prompt(mode: str, shared: np.ndarray, row: np.ndarray
                  ) -> np.ndarray:
  """One task's [P, H] prompt as their combine function defines it,
  entry by entry from the flat row."""
  p_s, h_s = shared.shape
  if mode == "add":
    return np.array([[shared[p, h] + row[p * h_s + h] for h in range(h_s)]
                     for p in range(p_s)])
  if mode == "concat_length":
    task = [[row[p * h_s + h] for h in range(h_s)]
            for p in range(row.size // h_s)]
    return np.array(shared.tolist() + task)
  if mode == "concat_features":
    h_t = row.size // p_s
    return np.array([shared[p].tolist() + [row[p * h_t + h]
                                           for h in range(h_t)]
                     for p in range(p_s)])
  h_t = row.size // (h_s + 1)  # project: out[p, t] = shared[p] . k[t] + b[t]
  return np.array([[sum(float(shared[p, s]) * row[t * h_s + s]
                        for s in range(h_s)) + row[h_t * h_s + t]
                    for t in range(h_t)] for p in range(p_s)])


def _their_checkpoint(tmp_path, shared, tasks, name="checkpoint_1100"):
  """A T5X checkpoint of their prompted model: frozen base variables plus
  the prompt module's under encoder/prompt/prompt."""
  params = {
      "token_embedder": {"embedding": np.ones((VOCAB, H), np.float32)},
      "encoder": {"prompt": {"prompt": {
          "shared_prompt": shared, "task_prompts": {"embedding": tasks}}}},
  }
  return t5x.write_t5x_checkpoint(params, tmp_path / "model" / name)


def _save_like_them(path, array):
  """np.save through a file handle, as their scripts and Checkpointer do
  (so no .npy is appended)."""
  with open(path, "wb") as f:
    np.save(f, array)
  return path


def _source(kind: str, tmp_path, shared, tasks) -> dict:
  """MultiTaskPrompt.from_prompt_tuning arguments for one kind of source."""
  if kind == "t5x_dir":
    return dict(checkpoint=_their_checkpoint(tmp_path, shared, tasks))
  if kind == "t5x_file_target_paths":  # as extract_variable's flag reads
    ckpt = _their_checkpoint(tmp_path, shared, tasks)
    return dict(checkpoint=f"{ckpt}/checkpoint",
                shared_variable="target/" + SHARED,
                tasks_variable="/target/" + TASKS)
  if kind == "numpy_checkpoints":  # their Checkpointer's prompt files
    directory = tmp_path / "model" / "numpy_checkpoints" / "checkpoint_1100"
    directory.mkdir(parents=True)
    _save_like_them(directory / SHARED.replace("/", "."), shared)
    _save_like_them(directory / TASKS.replace("/", "."), tasks)
    return dict(checkpoint=directory)
  assert kind == "extracted_npy"  # scripts/extract_variable.py --output_path
  return dict(shared=_save_like_them(tmp_path / "shared_prompt.npy", shared),
              tasks=_save_like_them(tmp_path / "task_prompts.npy", tasks))


SOURCES = ("t5x_dir", "t5x_file_target_paths", "numpy_checkpoints",
           "extracted_npy")


@pytest.mark.parametrize("kind", SOURCES)
@pytest.mark.parametrize("mode", multitask_bank.MODES)
def test_bank_row_k_is_their_combine_of_task_k(mode, kind, tmp_path):
  shared, tasks = _their_parts(mode)
  bank = MultiTaskPrompt.from_prompt_tuning(
      mode=mode, **_source(kind, tmp_path, shared, tasks))
  assert bank.mode == "task_only" and bank.num_tasks == NUM_TASKS
  assert bank.prompts.shape[2] == H
  for k in range(NUM_TASKS):
    np.testing.assert_allclose(bank.prompts[k],
                               _their_prompt(mode, shared, tasks[k]),
                               rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def base_params():
  model = pt.build_model(CONFIG, method=MultiTaskPrompt(num_tasks=1,
                                                        length=1))
  params = nn.meta.unbox(model.get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 6),
                              "decoder_input_tokens": (1, 5)})["params"])
  return {k: v for k, v in params.items() if k != "prompt"}


# Examples as their data writes them: <extra_id_K> first for task K.
TOKENS = np.array([[OFFSET - 2, 5, 6, 1], [OFFSET - 0, 7, 1, 0],
                   [OFFSET - 1, 8, 9, 1]], np.int32)


def _prompts_seen(method, base):
  """The first P embedded positions of TOKENS' rows, through the model's
  input path (the task token read and removed)."""
  model = pt.build_model(CONFIG, method=method)
  _, state = model.module.apply(
      {"params": base}, method="init_method_params", mutable=["params"],
      rngs={"params": jax.random.PRNGKey(0)})
  embedded, _ = model.module.apply({"params": nn.meta.unbox(state["params"])},
                                   TOKENS, {}, method="embed_inputs")
  return np.asarray(embedded[:, :method.length])


@pytest.mark.parametrize("mode", multitask_bank.MODES)
def test_extra_id_k_gets_their_task_k_prompt(mode, base_params, tmp_path):
  shared, tasks = _their_parts(mode)
  bank = MultiTaskPrompt.from_prompt_tuning(
      _their_checkpoint(tmp_path, shared, tasks), mode=mode,
      task_token_offset=OFFSET)
  seen = _prompts_seen(bank, base_params)
  for row, token in enumerate(TOKENS[:, 0]):
    np.testing.assert_allclose(
        seen[row], _their_prompt(mode, shared, tasks[OFFSET - token]),
        rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["add", "concat_length", "concat_features"])
def test_our_trainable_mode_starts_at_their_prompts(mode, base_params,
                                                    tmp_path):
  """frozen=False: parameters of our equivalent mode, holding their values,
  give the same prompts as their combine."""
  shared, tasks = _their_parts(mode)
  method = MultiTaskPrompt.from_prompt_tuning(
      _their_checkpoint(tmp_path, shared, tasks), mode=mode, frozen=False,
      task_token_offset=OFFSET)
  assert method.mode == mode and method.prompts is None
  assert method.num_tasks == NUM_TASKS
  seen = _prompts_seen(method, base_params)
  for row, token in enumerate(TOKENS[:, 0]):
    np.testing.assert_allclose(
        seen[row], _their_prompt(mode, shared, tasks[OFFSET - token]),
        rtol=1e-5, atol=1e-5)


def test_their_class_names_and_gin(tmp_path):
  shared, tasks = _their_parts("concat_length")
  ckpt = _their_checkpoint(tmp_path, shared, tasks)
  by_class = MultiTaskPrompt.from_prompt_tuning(
      ckpt, mode="multitask_prompts.ConcatMultiTaskPrompt")
  gin.clear_config()
  try:
    gin.parse_config(f"""
        MultiTaskPrompt.prompts = @bank_from_prompt_tuning()
        MultiTaskPrompt.task_token_offset = {OFFSET}
        bank_from_prompt_tuning.checkpoint = "{ckpt}"
        bank_from_prompt_tuning.mode = "ConcatMultiTaskPrompt"
    """)
    from_gin = MultiTaskPrompt()
  finally:
    gin.clear_config()
  assert from_gin.task_token_offset == OFFSET
  np.testing.assert_array_equal(from_gin.prompts, by_class.prompts)
  assert by_class.length == 5  # their P_s = 2 plus P_t = 3
  assert multitask_bank.canonical_mode("concat") == "concat_length"


def test_bfloat16_extraction_loads(tmp_path):
  """extract_variable --restore_dtype=bfloat16 writes bfloat16 .npy."""
  shared, tasks = (a.astype(ml_dtypes.bfloat16) for a in _their_parts("add"))
  bank = MultiTaskPrompt.from_prompt_tuning(
      mode="add", **_source("extracted_npy", tmp_path, shared, tasks))
  want = _their_prompt("add", shared.astype(np.float32),
                       tasks[1].astype(np.float32))
  np.testing.assert_allclose(bank.prompts[1], want, rtol=1e-6)


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------


def test_table_of_another_mode_names_shape_and_fix():
  shared, tasks = _their_parts("concat_length")  # [2, 8], [3, 24]
  with pytest.raises(ValueError) as error:
    multitask_bank.bank_from_prompt_tuning(shared=shared, tasks=tasks,
                                           mode="add")
  message = str(error.value)
  assert ("task table (3, 24) does not fit mode='add' (AddMultiTaskPrompt) "
          "with the shared prompt (2, 8)") in message
  assert "[num_tasks, P_s * H_s] = [num_tasks, 2 * 8]" in message
  assert ("it fits mode 'concat_length' or 'concat_features' "
          "(ConcatMultiTaskPrompt / ConcatFeaturesMultiTaskPrompt): pass the "
          "mode of the class their gin file binds") in message


@pytest.mark.parametrize("shared_shape, tasks_shape, match", [
    ((2, H), (3, 15), r"task table \(3, 15\) does not fit mode='add'.*no mode "
     "fits it: pass shared_prompt and task_prompts/embedding of the same"),
    ((2, H), (3, 2, H), r"task table has shape \(3, 2, 8\); prompt-tuning "
     r"saves it flattened as \[num_tasks, S\].*MultiTaskPrompt\(prompts="),
    ((2 * H,), (3, 16), r"shared prompt has shape \(16,\); prompt-tuning "
     r"saves it as \[P_s, H_s\]"),
])
def test_unsupported_shape_is_one_clear_error(shared_shape, tasks_shape,
                                              match):
  with pytest.raises(ValueError, match=match):
    MultiTaskPrompt.from_prompt_tuning(
        mode="add", shared=np.zeros(shared_shape), tasks=np.zeros(tasks_shape))


def test_other_mistakes_are_clear_errors(tmp_path):
  shared, tasks = _their_parts("project")
  with pytest.raises(ValueError, match="'project'.*no trainable counterpart"):
    MultiTaskPrompt.from_prompt_tuning(shared=shared, tasks=tasks,
                                       mode="project", frozen=False)
  with pytest.raises(ValueError, match="mode='mean'.*AddMultiTaskPrompt"):
    MultiTaskPrompt.from_prompt_tuning(shared=shared, tasks=tasks,
                                       mode="mean")
  with pytest.raises(ValueError, match="either `checkpoint`.*or both"):
    MultiTaskPrompt.from_prompt_tuning(tmp_path, shared=shared, mode="add")
  with pytest.raises(ValueError, match="`tasks` is missing"):
    MultiTaskPrompt.from_prompt_tuning(shared=shared, mode="add")
  # A single-task run's checkpoint: the names there are listed.
  single = t5x.write_t5x_checkpoint(
      {"encoder": {"prompt": {"prompt": {"prompt": np.zeros((2, H))}}}},
      tmp_path / "single" / "checkpoint_5")
  with pytest.raises(ValueError, match=r"no variable 'encoder/prompt/prompt/"
                     r"shared_prompt'.*\['encoder/prompt/prompt/prompt'\]"):
    MultiTaskPrompt.from_prompt_tuning(single, mode="add")
  # A bank wider than the model (their parts joined in the wrong mode).
  wide = MultiTaskPrompt.from_prompt_tuning(
      shared=np.zeros((2, H)), tasks=np.zeros((3, 2 * H)),
      mode="concat_features")
  with pytest.raises(ValueError, match="embeddings are 8 wide"):
    pt.build_model(CONFIG, method=wide)

"""Bad input through the Python API and the binaries: one clear line.

Every case calls the real API (the model wrappers, prompt and checkpoint
readers, the inference writer, `evaluate`) or runs the real binary, and
checks the error's type, that its message is one line naming the bad value
(file, feature, task), and that no file appeared or changed. Tiny models
only; the binaries reuse test_binaries.py's tiny Orbax base and flags.
"""

from __future__ import annotations

import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import data
from prompt_tuning import eval as eval_lib
from prompt_tuning import evaluation
from prompt_tuning import partitioning
from prompt_tuning import random_checkpoint
from prompt_tuning.checkpoints import loader
from prompt_tuning.checkpoints import orbax_params
from prompt_tuning.checkpoints import t5x
from prompt_tuning.methods import initializers
from prompt_tuning.models import configs
from prompt_tuning.serving import bank

import seqio_test_tasks
from test_binaries import TINY
from test_binaries import base  # pylint: disable=unused-import  # A fixture.
from test_binaries import binary
from test_binaries import eval_flags
from test_binaries import infer_flags
from test_binaries import our_stderr

GPT2 = configs.gpt2("small", vocab_size=264, emb_dim=16, num_heads=2,
                    head_dim=8, mlp_dim=32, num_decoder_layers=1,
                    max_position_embeddings=64)


# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


def snapshot(path) -> dict[str, tuple[int, int]]:
  """{relative path: (size, mtime)} of everything under `path`."""
  path = pathlib.Path(path)
  return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in sorted(path.rglob("*"))}


def one_line(error: BaseException) -> str:
  """The error's message, checked to be one line (gin's "In call to
  configurable" note, added when gin builds the object, aside)."""
  message = str(error).split("\n  In call to configurable")[0]
  assert message and "\n" not in message, repr(message)
  return message


def assert_raises_one_line(exc_type, call, *needles, watch=None):
  """`call()` raises `exc_type` with one line holding every needle;
  nothing under `watch` appears or changes."""
  before = snapshot(watch) if watch is not None else None
  with pytest.raises(exc_type) as info:
    call()
  message = one_line(info.value)
  for needle in needles:
    assert str(needle) in message, (needle, message)
  if watch is not None:
    assert snapshot(watch) == before
  return message


# ----------------------------------------------------------------------------
# 1. Model wrappers: token ids are checked before the compiled call.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def t5():
  model, variables = loader.init_random(TINY, method=pt.PromptTuning(length=4))
  return model, variables["params"]


@pytest.fixture(scope="module")
def gpt2():
  model, variables = loader.init_random(GPT2, method=pt.PromptTuning(length=2))
  return model, variables["params"]


def t5_batch(**overrides):
  batch = {"encoder_input_tokens": np.array([[5, 6, 7, 1, 0]], np.int32),
           "decoder_input_tokens": np.array([[0, 5, 6, 1]], np.int32),
           "decoder_target_tokens": np.array([[5, 6, 1, 0]], np.int32)}
  batch.update(overrides)
  return batch


def run_method(model, params, method, batch):
  if method == "score_batch":
    return model.score_batch(params, batch)
  if method == "predict_batch":
    return model.predict_batch(params, batch)
  if method == "predict_batch_with_aux":
    return model.predict_batch_with_aux(params, batch, num_decodes=2)
  return model.loss_fn(params, batch, None)


METHODS = ("score_batch", "predict_batch", "predict_batch_with_aux",
           "loss_fn")

# (case, batch, exception, needles): every one on every method.
T5_CASES = {
    # The README's T5 ids on a 264-id base: NaN scores before.
    "out_of_vocabulary_id": (
        t5_batch(encoder_input_tokens=np.array([[8774, 10, 1, 0, 0]])),
        ValueError, ("encoder_input_tokens", "8774", "264 ids")),
    "out_of_vocabulary_jax_array": (
        t5_batch(decoder_target_tokens=jnp.array([[5, 300, 1, 0]])),
        ValueError, ("decoder_target_tokens", "300", "0..263")),
    "negative_id": (
        t5_batch(decoder_input_tokens=np.array([[0, -3, 6, 1]], np.int32)),
        ValueError, ("decoder_input_tokens", "negative id -3")),
    # "indices must have an integer type" before.
    "float_ids": (
        t5_batch(encoder_input_tokens=np.array([[5., 6, 1, 0, 0]],
                                               np.float32)),
        TypeError, ("encoder_input_tokens", "float32", "integers")),
    "all_padding_encoder_input": (
        t5_batch(encoder_input_tokens=np.zeros((1, 5), np.int32)),
        ValueError, ("encoder_input_tokens", "no tokens at all")),
    "batch_sizes_disagree": (
        t5_batch(encoder_input_tokens=np.array([[5, 6, 1, 0, 0]] * 2,
                                               np.int32)),
        ValueError, ("batch size", "encoder_input_tokens 2",
                     "decoder_target_tokens 1")),
    "one_dimensional_batch": (
        t5_batch(encoder_input_tokens=np.array([5, 6, 1, 0, 0], np.int32)),
        ValueError, ("encoder_input_tokens", "(5,)", "[batch, length]")),
    "empty_batch": (
        {k: v[:0] for k, v in t5_batch().items()},
        ValueError, ("empty", "(0, 5)")),
    "text_instead_of_ids": (
        t5_batch(encoder_input_tokens="translate: hello"),
        TypeError, ("encoder_input_tokens", "'translate: hello'",
                    "vocab.encode")),
    "ragged_rows": (
        t5_batch(encoder_input_tokens=[[5, 6, 1], [5, 1]]),
        TypeError, ("encoder_input_tokens", "not an array")),
    "no_positions": (
        t5_batch(encoder_input_tokens=np.zeros((1, 0), np.int32)),
        ValueError, ("encoder_input_tokens", "no positions")),
    "weights_shape_disagrees": (
        t5_batch(decoder_loss_weights=np.ones((1, 3), np.float32)),
        ValueError, ("decoder_loss_weights", "(1, 3)", "(1, 4)")),
    "not_a_dict": (
        [np.array([[5, 6, 1]])], TypeError, ("dict", "list")),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", sorted(T5_CASES))
def test_bad_batch_is_one_clear_error(t5, case, method, tmp_path,
                                      monkeypatch):
  model, params = t5
  batch, exc, needles = T5_CASES[case]
  monkeypatch.chdir(tmp_path)
  message = assert_raises_one_line(
      exc, lambda: run_method(model, params, method, batch), *needles,
      watch=tmp_path)
  what = "predict_batch" if method.startswith("predict") else method
  assert message.startswith(f"{what}: "), message


def test_decoder_only_out_of_vocabulary_prompt(gpt2):
  model, params = gpt2
  batch = {"decoder_input_tokens": np.array([[0, 5, 999, 0]], np.int32),
           "decoder_target_tokens": np.array([[5, 999, 0, 0]], np.int32),
           "decoder_causal_attention": np.array([[1, 1, 1, 0]], np.int32)}
  assert_raises_one_line(ValueError,
                         lambda: model.predict_batch(params, batch),
                         "decoder_input_tokens", "999", "264 ids")


def test_padding_rows_and_good_batches_still_run(t5):
  """A padding row (T5X's last eval batch) and a batch without targets'
  values pass; ids pass as lists too."""
  model, params = t5
  batch = t5_batch(
      encoder_input_tokens=np.array([[5, 6, 1, 0, 0], [0] * 5], np.int32),
      decoder_input_tokens=np.array([[0, 5, 6, 1], [0] * 4], np.int32),
      decoder_target_tokens=np.array([[5, 6, 1, 0], [0] * 4], np.int32))
  scores = model.score_batch(params, batch)
  assert np.all(np.isfinite(np.asarray(scores)))
  listed = {k: v.tolist() for k, v in t5_batch().items()}
  assert np.isfinite(float(model.score_batch(params, listed)[0]))


def test_under_a_callers_jit_shapes_are_checked_values_are_not(t5):
  """Inside jit the ids are tracers: no value check (and no concretization
  error), but shapes are known and still checked."""
  model, params = t5
  score = jax.jit(model.score_batch)
  assert np.isfinite(float(score(params, t5_batch())[0]))
  bad = t5_batch(encoder_input_tokens=np.array([[5, 6, 1, 0, 0]] * 2,
                                               np.int32))
  assert_raises_one_line(ValueError, lambda: score(params, bad),
                         "batch size")


# ----------------------------------------------------------------------------
# 2 and 3. Prompt files: NaN/Inf values and files that are not .npy arrays.
# ----------------------------------------------------------------------------


def _write(directory: pathlib.Path, kind: str) -> pathlib.Path:
  """A bad prompt file (or directory) of `kind` under `directory`."""
  path = directory / "prompt.npy"
  good = np.ones((4, 16), np.float32)
  if kind == "nan":
    good[0, 0], good[1, 1] = np.nan, np.inf
    np.save(path, good)
  elif kind == "text":
    path.write_text("0.1 0.2 0.3\n")
  elif kind == "empty_file":
    path.write_bytes(b"")
  elif kind == "directory":
    path = directory / "prompts"
    path.mkdir()
    np.save(path / "prompt.npy", good)
  elif kind == "rank3":
    np.save(path, np.ones((2, 4, 16), np.float32))
  elif kind == "truncated":
    np.save(path, good)
    path.write_bytes(path.read_bytes()[:100])
  elif kind == "pickled":
    np.save(path, np.array([{"prompt": 1}], dtype=object), allow_pickle=True)
  elif kind == "no_rows":
    np.save(path, np.zeros((0, 16), np.float32))
  elif kind == "npz":
    path = directory / "prompt.npz"
    np.savez(path, prompt=good)
  return path


PROMPT_CASES = {
    "nan": (ValueError, ("2 non-finite values", "1 NaN, 1 Inf")),
    "text": (ValueError, ("not a .npy array file",)),
    "empty_file": (ValueError, ("empty (0 bytes)",)),
    "directory": (ValueError, ("is a directory",)),
    "rank3": (ValueError, ("(2, 4, 16)", "[P, H]")),
    "truncated": (ValueError, ("truncated or corrupt .npy",)),
    "pickled": (ValueError, ("pickled Python objects",)),
    "no_rows": (ValueError, ("(0, 16)",)),
    "npz": (ValueError, ("zip archive",)),
}


@pytest.mark.parametrize("kind", sorted(PROMPT_CASES))
def test_bad_prompt_file_from_file(tmp_path, kind):
  path = _write(tmp_path, kind)
  exc, needles = PROMPT_CASES[kind]
  message = assert_raises_one_line(
      exc, lambda: pt.PromptTuning.from_file(path), *needles, watch=tmp_path)
  assert str(path) in message
  assert "allow_pickle" not in message


@pytest.mark.parametrize("kind", ["nan", "text", "empty_file", "truncated"])
def test_bad_prompt_file_in_a_serving_bank(tmp_path, kind):
  path = _write(tmp_path, kind)
  exc, needles = PROMPT_CASES[kind]
  message = assert_raises_one_line(
      exc, lambda: bank.load_prompt_dir(tmp_path), *needles, watch=tmp_path)
  assert "task 'prompt'" in message and str(path) in message


def test_bad_prompt_file_as_an_initializer(tmp_path):
  path = _write(tmp_path, "nan")
  assert_raises_one_line(
      ValueError, lambda: initializers.from_npy(path)(None, (4, 16)),
      "from_npy", str(path), "2 non-finite", watch=tmp_path)
  text = tmp_path / "text.npy"
  text.write_text("hello")
  assert_raises_one_line(
      ValueError, lambda: initializers.from_npy(text)(None, (4, 16)),
      str(text), "not a .npy array file", watch=tmp_path)


def test_bad_prompt_in_a_multitask_bank(tmp_path):
  good = tmp_path / "good.npy"
  np.save(good, np.ones((4, 16), np.float32))
  bad = _write(tmp_path, "nan")
  assert_raises_one_line(
      ValueError, lambda: pt.MultiTaskPrompt.from_files([good, bad]),
      "task 1's prompt", str(bad), "non-finite", watch=tmp_path)


def test_missing_prompt_file(tmp_path):
  assert_raises_one_line(
      FileNotFoundError,
      lambda: pt.PromptTuning.from_file(tmp_path / "nope.npy"), "nope.npy",
      "does not exist", watch=tmp_path)


# ----------------------------------------------------------------------------
# 3. Base checkpoint files that are truncated or corrupt.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def t5x_base(tmp_path_factory) -> pathlib.Path:
  path = tmp_path_factory.mktemp("t5x") / "checkpoint_0"
  t5x.write_t5x_checkpoint(random_checkpoint.random_params(TINY), str(path),
                           inline_max_size=1024)
  return path


def corrupt_t5x(good: pathlib.Path, directory: pathlib.Path,
                kind: str) -> pathlib.Path:
  """A copy of `good` with its msgpack file or a zarr chunk damaged."""
  path = directory / "base" / "checkpoint_0"
  shutil.copytree(good, path)
  file = path / "checkpoint"
  raw = file.read_bytes()
  if kind == "truncated":
    file.write_bytes(raw[:len(raw) // 2])
  elif kind == "0xff":
    damaged = bytearray(raw)
    start = raw.index(b"encoder")  # inside a name, after a valid header
    damaged[start + 1:start + 4] = b"\xff\xff\xff"
    file.write_bytes(bytes(damaged))
  elif kind == "zarr_chunk":
    chunk = next(p for p in sorted(path.glob("target.*/*"))
                 if not p.name.startswith("."))
    chunk.write_bytes(chunk.read_bytes()[:10])
  return path


T5X_CASES = {
    # "Unpack failed: incomplete input" before.
    "truncated": ("checkpoint", "truncated or corrupt T5X checkpoint file",
                  "incomplete input"),
    # "'utf-8' codec can't decode byte 0xff" before.
    "0xff": ("checkpoint", "truncated or corrupt T5X checkpoint file",
             "0xff"),
    "zarr_chunk": ("target.", "truncated or corrupt zarr array"),
}


@pytest.mark.parametrize("kind", sorted(T5X_CASES))
def test_corrupt_t5x_base(t5x_base, tmp_path, kind):
  path = corrupt_t5x(t5x_base, tmp_path, kind)
  message = assert_raises_one_line(
      ValueError, lambda: pt.load_pretrained(str(path), config=TINY),
      *T5X_CASES[kind], watch=tmp_path)
  assert str(path) in message and "copy the whole checkpoint" in message


@pytest.mark.parametrize("name", ["_METADATA", "_CHECKPOINT_METADATA",
                                  "array_data"])
def test_corrupt_orbax_base(tmp_path, name):
  path = tmp_path / "orbax"
  orbax_params.save_params(str(path), random_checkpoint.random_params(TINY),
                           TINY)
  if name == "array_data":  # The largest chunk file of the arrays, garbled.
    file = max((p for p in path.glob("ocdbt.process_*/d/*")),
               key=lambda p: p.stat().st_size)
    file.write_bytes(b"\xff" * file.stat().st_size)
    needle = "reading its arrays failed"
  else:
    file = path / name
    file.write_bytes(file.read_bytes()[:40])
    needle = name
  message = assert_raises_one_line(
      ValueError, lambda: pt.load_pretrained(str(path)),
      "truncated or corrupt Orbax checkpoint", needle, watch=tmp_path)
  assert str(path) in message


HF_CASES = {
    "config_0xff": ("config.json", "0xff"),
    "truncated_safetensors": ("model.safetensors", "ends at byte"),
    "safetensors_header_cut": ("model.safetensors", "header claims"),
}


@pytest.mark.parametrize("kind", sorted(HF_CASES))
def test_corrupt_hugging_face_base(tmp_path, kind):
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  path = tmp_path / "hf"
  path.mkdir()
  (path / "config.json").write_text('{"model_type": "t5", "d_model": 16}')
  weights = path / "model.safetensors"
  safetensors_numpy.save_file(
      {"shared.weight": np.ones((264, 16), np.float32)}, str(weights))
  raw = weights.read_bytes()
  if kind == "config_0xff":
    (path / "config.json").write_bytes(b'{"model_type": "t5\xff"}')
  elif kind == "truncated_safetensors":
    weights.write_bytes(raw[:len(raw) // 2])
  else:
    weights.write_bytes(raw[:40])
  name, needle = HF_CASES[kind]
  assert_raises_one_line(
      ValueError, lambda: pt.load_pretrained(str(path)), str(path / name),
      "truncated or corrupt Hugging Face checkpoint file", needle,
      watch=tmp_path)


# ----------------------------------------------------------------------------
# 2. JSON outputs never hold NaN.
# ----------------------------------------------------------------------------


def test_inferences_with_a_nan_score_are_not_written(tmp_path):
  path = tmp_path / "out" / "task-x.jsonl"
  records = [{"inputs": "a", "targets": "b", "outputs": "c", "score": -1.0},
             {"inputs": "d", "targets": "e", "outputs": "",
              "score": float("nan")}]
  assert_raises_one_line(
      ValueError, lambda: evaluation.write_inferences(str(path), records),
      str(path), "example 1", "score", "NaN", watch=tmp_path)
  assert not path.parent.exists()
  # An empty beam slot scores -inf: written as null, valid JSON.
  evaluation.write_inferences(str(path), [
      {"outputs": ["a", ""], "score": [np.float32(-2.5), float("-inf")]}])
  assert path.read_text() == '{"outputs": ["a", ""], "score": [-2.5, null]}\n'


@pytest.mark.parametrize("task", [seqio_test_tasks.RANK,
                                  seqio_test_tasks.COPY])
def test_evaluate_refuses_nan_scores(tmp_path, task):
  """A base that computes NaN: the task (scored, or decoded) is named, and
  seqio writes no NaN metrics or inferences (nor the output dir)."""
  mesh = partitioning.make_mesh(data=1, model=1, num_devices=1)
  model, variables = loader.init_random(TINY, method=pt.ModelTuning(),
                                        mesh=mesh)
  params = jax.tree.map(lambda x: x * jnp.nan, variables["params"])
  out = tmp_path / "eval"
  dataset = data.DatasetConfig(task,
                             seqio_test_tasks.FEATURE_LENGTHS, "validation",
                             8, False)
  assert_raises_one_line(
      ValueError, lambda: eval_lib.evaluate(
          model=model, params=params, mesh=mesh, dataset_cfg=dataset,
          checkpoint_path=None, output_dir=str(out), num_examples=3),
      f"task {task!r}", "NaN or Inf")
  assert not out.exists()


# ----------------------------------------------------------------------------
# The binaries: one line on stderr, exit status != 0, no output dir.
# ----------------------------------------------------------------------------


def assert_binary_refuses(name, flags, out, *needles):
  result = binary(name, *flags, check=False)
  assert result.returncode != 0, result.stdout + result.stderr
  lines = our_stderr(result)
  assert len(lines) == 1 and "error: " in lines[0], result.stderr
  for needle in needles:
    assert str(needle) in lines[0], (needle, lines[0])
  assert not pathlib.Path(out).exists()
  return lines[0]


def test_infer_refuses_a_nan_prompt(base, tmp_path):
  """Before: 16 empty outputs with "score": NaN (not JSON), exit 0."""
  prompt = _write(tmp_path, "nan")
  out = tmp_path / "infer"
  assert_binary_refuses("infer", infer_flags(base, prompt, out), out,
                        prompt, "2 non-finite values")


def test_infer_refuses_a_text_file_named_npy(base, tmp_path):
  prompt = _write(tmp_path, "text")
  out = tmp_path / "infer"
  line = assert_binary_refuses("infer", infer_flags(base, prompt, out), out,
                               prompt, "not a .npy array file")
  assert "allow_pickle" not in line


@pytest.mark.parametrize("kind", ["truncated", "0xff"])
def test_binaries_refuse_a_corrupt_t5x_base(base, t5x_base, tmp_path, kind):
  bad = corrupt_t5x(t5x_base, tmp_path, kind)
  prompt = tmp_path / "prompt.npy"
  np.save(prompt, np.ones((4, 16), np.float32))
  out = tmp_path / "out"
  name, flags = (("infer", infer_flags) if kind == "truncated"
                 else ("eval", eval_flags))
  assert_binary_refuses(
      name, flags(str(bad), prompt, out), out, bad / "checkpoint",
      "truncated or corrupt T5X checkpoint")

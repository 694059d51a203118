"""Prompt initializers: ranges, vocabulary rows, saved values, errors."""

from __future__ import annotations

import math
import warnings

import flax.linen as nn
import jax
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning.checkpoints import lazy
from prompt_tuning.checkpoints import t5x
from prompt_tuning.methods import initializers as inits
from prompt_tuning.methods.multitask import per_task
from prompt_tuning.models import configs

RNG = jax.random.PRNGKey(0)
# A tiny token table [vocab=10, H=3]: row i is [3i, 3i+1, 3i+2].
EMBEDDING = np.arange(30, dtype=np.float32).reshape(10, 3)


class FakeVocabulary:
  """Whitespace tokenizer over a fixed word -> ids table."""

  TABLE = {"great": [4, 5], "awful": [7], "is": [2], "it": [3]}

  def encode(self, s: str) -> list[int]:
    return [i for word in s.split() for i in self.TABLE[word]]


def _row_set(array) -> set[tuple[float, ...]]:
  return {tuple(row) for row in np.asarray(array).tolist()}


# ----------------------------------------------------------------------------
# Random.
# ----------------------------------------------------------------------------


def test_uniform_range_and_moments():
  x = np.asarray(inits.uniform(0.5)(RNG, (100, 64)))
  assert x.dtype == np.float32 and x.shape == (100, 64)
  assert x.min() >= -0.5 and x.max() < 0.5
  assert x.min() < -0.49 and x.max() > 0.49  # fills the whole range
  assert abs(x.mean()) < 0.01
  np.testing.assert_allclose(x.std(), 0.5 / math.sqrt(3), rtol=0.02)


def test_normal_stddev():
  x = np.asarray(inits.normal(stddev=0.2)(RNG, (100, 64)))
  assert x.dtype == np.float32
  assert abs(x.mean()) < 0.01
  np.testing.assert_allclose(x.std(), 0.2, rtol=0.03)


def test_random_initializers_ignore_a_flax_dtype_argument():
  # flax calls init(rng, shape, dtype); the third slot must not break them.
  x = inits.uniform()(RNG, (2, 3), np.float32)
  assert x.shape == (2, 3)


@pytest.mark.parametrize("scale_name,factory", [
    ("scale", lambda: inits.uniform(0.0)),
    ("stddev", lambda: inits.normal(-1.0)),
])
def test_random_initializers_reject_nonpositive_scale(scale_name, factory):
  with pytest.raises(ValueError, match=f"{scale_name} must be > 0"):
    factory()


def test_xavier_per_slice_limit_from_one_slice():
  # MSP-like [stages, layers, 2, P, heads, head_dim]: fan_in = P = 10,
  # fan_out = heads * head_dim = 2 * 7 = 14, limit = sqrt(6 / 24) = 0.5.
  shape = (2, 3, 2, 10, 2, 7)
  x = np.asarray(inits.xavier_uniform_per_slice()(RNG, shape))
  assert x.shape == shape and x.dtype == np.float32
  assert np.abs(x).max() <= 0.5
  assert np.abs(x).max() > 0.49
  # Every [P, heads, head_dim] slice has the same spread.
  slice_max = np.abs(x).reshape(12, -1).max(axis=1)
  assert slice_max.min() > 0.45


def test_xavier_per_slice_on_plain_table():
  # [P=20, H=4] with length_axis=-2: limit = sqrt(6 / 24) = 0.5.
  x = np.asarray(inits.xavier_uniform_per_slice(length_axis=-2)(
      RNG, (20, 4)))
  assert np.abs(x).max() <= 0.5 and np.abs(x).max() > 0.45


def test_xavier_per_slice_length_axis_out_of_range():
  with pytest.raises(ValueError, match=r"length_axis -3 is out of range for "
                     r"shape \(5, 4\); use -2"):
    inits.xavier_uniform_per_slice()(RNG, (5, 4))


# ----------------------------------------------------------------------------
# Sampled vocabulary.
# ----------------------------------------------------------------------------


def test_sampled_vocab_rows_are_distinct_rows_of_the_population():
  x = inits.from_sampled_vocab(population_size=6)(RNG, (4, 3), EMBEDDING)
  assert x.dtype == np.float32 and x.shape == (4, 3)
  rows = _row_set(x)
  assert len(rows) == 4  # without replacement
  assert rows <= _row_set(EMBEDDING[:6])


def test_sampled_vocab_population_clamped_to_vocab():
  x = inits.from_sampled_vocab(population_size=5000)(RNG, (10, 3), EMBEDDING)
  assert _row_set(x) == _row_set(EMBEDDING)  # all 10 rows, each once


def test_sampled_vocab_warns_when_sampling_with_replacement():
  with pytest.warns(UserWarning, match=r"prompt length 5 exceeds the "
                    r"population of 3 tokens.*with replacement"):
    x = inits.from_sampled_vocab(population_size=3)(RNG, (5, 3), EMBEDDING)
  assert _row_set(x) <= _row_set(EMBEDDING[:3])


def test_sampled_vocab_does_not_warn_without_replacement():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    inits.from_sampled_vocab(population_size=3)(RNG, (3, 3), EMBEDDING)


def test_sampled_vocab_needs_embedding():
  with pytest.raises(ValueError, match=r"needs the model's token embedding; "
                     r"load the model with pt.load_pretrained"):
    inits.from_sampled_vocab()(RNG, (4, 3))


def test_sampled_vocab_needs_model_width():
  with pytest.raises(ValueError, match=r"embedding width 3.*shape \(4, 5\)"):
    inits.from_sampled_vocab()(RNG, (4, 5), EMBEDDING)


def test_sampled_vocab_rejects_empty_population():
  with pytest.raises(ValueError, match="population_size must be >= 1, got 0"):
    inits.from_sampled_vocab(population_size=0)


# ----------------------------------------------------------------------------
# Flax/JAX initializers (key, shape, dtype), as the prompt-tuning project's
# gin files pass them, wherever an initializer is accepted.
# ----------------------------------------------------------------------------


def test_flax_initializer_as_class_labels_fallback():
  init = inits.from_class_labels([[4], [7]], fallback=nn.initializers.zeros)
  x = np.asarray(init(RNG, (5, 3), EMBEDDING))
  np.testing.assert_array_equal(x[:2], EMBEDDING[[4, 7]])
  np.testing.assert_array_equal(x[2:], 0.0)
  init = inits.from_text([2, 3], fallback=nn.initializers.uniform(0.5))
  x = np.asarray(init(RNG, (4, 3), EMBEDDING))
  np.testing.assert_array_equal(x[:2], EMBEDDING[[2, 3]])
  assert 0 < np.abs(x[2:]).max() <= 0.5


def test_initialize_passes_ours_the_embedding_and_flax_a_dtype():
  got = inits.initialize(nn.initializers.constant(2.0), RNG, (2, 3), EMBEDDING)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, np.full((2, 3), 2.0))
  got = inits.initialize(inits.from_sampled_vocab(), RNG, [4, 3], EMBEDDING)
  assert _row_set(got) <= _row_set(EMBEDDING)


@pytest.mark.parametrize("method", [
    pt.PromptTuning(length=4, initializer=nn.initializers.normal(0.02)),
    pt.MultiTaskPrompt(num_tasks=2, length=4,
                       shared_initializer=nn.initializers.zeros,
                       task_initializer=per_task(nn.initializers.ones)),
], ids=["prompt_tuning", "multitask"])
def test_flax_initializers_make_method_params(method):
  config = configs.t5_1_1("tiny", vocab_size=16, emb_dim=8, head_dim=4)
  params = nn.meta.unbox(pt.build_model(config, method=method).module.init(
      RNG, method="init_method_params")["params"]["prompt"])
  if "prompt" in params:
    assert params["prompt"].shape == (4, 8)
    assert 0 < np.std(params["prompt"]) < 0.05
  else:
    np.testing.assert_array_equal(params["shared"], np.zeros((4, 8)))
    np.testing.assert_array_equal(params["tasks"], np.ones((2, 4, 8)))


def test_initializer_of_the_wrong_shape_is_named():
  with pytest.raises(ValueError, match=r"returned shape \(3,\) for a "
                     r"parameter of shape \(2, 3\)"):
    inits.initialize(lambda key, shape, dtype: np.zeros(3), RNG, (2, 3))


# ----------------------------------------------------------------------------
# Class labels and text.
# ----------------------------------------------------------------------------


def test_class_labels_average_subword_embeddings():
  fallback = inits.from_array(np.full((4, 3), -1.0))
  init = inits.from_class_labels(["great", "awful", [1, 3, 8]],
                                 FakeVocabulary(), fallback=fallback)
  x = np.asarray(init(RNG, (4, 3), EMBEDDING))
  np.testing.assert_allclose(x[0], EMBEDDING[[4, 5]].mean(axis=0))  # 13.5..
  np.testing.assert_allclose(x[0], [13.5, 14.5, 15.5])
  np.testing.assert_allclose(x[1], EMBEDDING[7])
  np.testing.assert_allclose(x[2], [12.0, 13.0, 14.0])  # mean of rows 1, 3, 8
  np.testing.assert_array_equal(x[3], [-1.0, -1.0, -1.0])


def test_class_labels_default_fallback_samples_the_vocabulary():
  init = inits.from_class_labels([[4], [7]])
  x = np.asarray(init(RNG, (5, 3), EMBEDDING))
  np.testing.assert_array_equal(x[:2], EMBEDDING[[4, 7]])
  assert _row_set(x[2:]) <= _row_set(EMBEDDING)


def test_class_labels_with_real_sentencepiece(shared_fixtures):
  sentencepiece = pytest.importorskip("sentencepiece")
  sp = sentencepiece.SentencePieceProcessor(
      model_file=str(shared_fixtures / "t5_sentencepiece.model"))
  table = np.random.default_rng(0).normal(size=(32128, 4)).astype(np.float32)
  init = inits.from_class_labels(["positive", "negative"], sp)
  x = np.asarray(init(RNG, (3, 4), table))
  for row, label in enumerate(["positive", "negative"]):
    np.testing.assert_allclose(x[row], table[sp.encode(label)].mean(axis=0),
                               rtol=1e-6)


def test_class_labels_more_than_prompt_length():
  init = inits.from_class_labels([[1], [2], [3]])
  with pytest.raises(ValueError, match=r"3 labels do not fit a prompt of "
                     r"length 2; use a prompt length >= 3"):
    init(RNG, (2, 3), EMBEDDING)


def test_class_labels_empty_tokenization():
  vocab = FakeVocabulary()
  vocab.TABLE = dict(vocab.TABLE, blank=[])
  with pytest.raises(ValueError, match=r"label 'blank' tokenizes to no tokens"):
    inits.from_class_labels(["great", "blank"], vocab)


def test_class_labels_strings_need_vocabulary():
  with pytest.raises(ValueError, match=r"label 'great' is a string but no "
                     r"`vocabulary` was given"):
    inits.from_class_labels(["great"])


def test_class_labels_single_string_is_rejected():
  with pytest.raises(ValueError, match=r"got the single string 'great'; wrap "
                     r"it in a list"):
    inits.from_class_labels("great", FakeVocabulary())


def test_class_labels_token_id_beyond_vocab():
  with pytest.raises(ValueError, match=r"token id 12 but the embedding has "
                     r"only 10 rows"):
    inits.from_class_labels([[12]])(RNG, (2, 3), EMBEDDING)


def test_class_labels_need_embedding():
  with pytest.raises(ValueError, match="needs the model's token embedding"):
    inits.from_class_labels([[1]])(RNG, (2, 3))


def test_text_rows_first_then_fallback():
  fallback = inits.from_array(np.zeros((5, 3)))
  init = inits.from_text("it is great", FakeVocabulary(), fallback=fallback)
  x = np.asarray(init(RNG, (5, 3), EMBEDDING))
  np.testing.assert_array_equal(x[:4], EMBEDDING[[3, 2, 4, 5]])
  np.testing.assert_array_equal(x[4], [0.0, 0.0, 0.0])


def test_text_as_token_ids():
  x = inits.from_text([9, 0])(RNG, (2, 3), EMBEDDING)
  np.testing.assert_array_equal(x, EMBEDDING[[9, 0]])


def test_text_longer_than_prompt():
  init = inits.from_text("it is great", FakeVocabulary())
  with pytest.raises(ValueError, match=r"'it is great' is 4 tokens, longer "
                     r"than the prompt length 3"):
    init(RNG, (3, 3), EMBEDDING)


def test_text_string_needs_vocabulary():
  with pytest.raises(ValueError, match="is a string but no `vocabulary`"):
    inits.from_text("it is")


# ----------------------------------------------------------------------------
# Saved values.
# ----------------------------------------------------------------------------


def test_from_array_returns_float32_copy():
  x = inits.from_array(np.arange(6, dtype=np.int64).reshape(2, 3))(
      RNG, (2, 3))
  assert x.dtype == np.float32
  np.testing.assert_array_equal(x, [[0, 1, 2], [3, 4, 5]])


def test_from_array_shape_mismatch():
  with pytest.raises(ValueError, match=r"shape \(2, 3\) but the prompt "
                     r"parameter has shape \(3, 2\)"):
    inits.from_array(np.zeros((2, 3)))(RNG, (3, 2))


def test_from_npy_reads_exported_prompt(shared_fixtures):
  path = shared_fixtures / "prompt_5x256.npy"
  x = inits.from_npy(path)(RNG, (5, 256))
  assert x.dtype == np.float32  # the file itself is float64
  np.testing.assert_array_equal(x, np.load(path).astype(np.float32))


def test_from_npy_shape_mismatch(tmp_path):
  path = tmp_path / "prompt.npy"
  np.save(path, np.zeros((5, 4), np.float32))
  with pytest.raises(ValueError, match=r"prompt.npy' has shape \(5, 4\) but "
                     r"the prompt parameter has shape \(10, 4\)"):
    inits.from_npy(path)(RNG, (10, 4))


def test_from_npy_missing_file(tmp_path):
  path = tmp_path / "nope.npy"
  init = inits.from_npy(path)  # configuring does not touch the file
  with pytest.raises(FileNotFoundError, match="nope.npy"):
    init(RNG, (5, 4))


# ----------------------------------------------------------------------------
# T5X checkpoints (the real tiny T5.1.1 fixture: emb 4, vocab 32128).
# ----------------------------------------------------------------------------


@pytest.fixture(name="ckpt")
def _ckpt(shared_fixtures):
  return shared_fixtures / "t5x_t5_1_1_tiny" / "checkpoint_3"


def test_t5x_variable_returned_as_is(ckpt):
  x = inits.from_t5x_checkpoint(ckpt, "encoder/relpos_bias/rel_embedding")(
      RNG, (2, 4))
  want = lazy.read_all(
      t5x.read_t5x_checkpoint(ckpt)["encoder/relpos_bias/rel_embedding"])
  assert x.dtype == np.float32
  np.testing.assert_array_equal(x, want)


def test_t5x_embedding_feeds_sampled_vocab(ckpt):
  init = inits.from_t5x_checkpoint(
      ckpt, "token_embedder/embedding",
      then=inits.from_sampled_vocab(population_size=50))
  x = init(RNG, (6, 4))
  table = lazy.read_all(t5x.read_t5x_checkpoint(ckpt)[
      "token_embedder/embedding"])
  rows = _row_set(x)
  assert len(rows) == 6 and rows <= _row_set(table[:50])


def test_t5x_embedding_feeds_class_labels(ckpt):
  init = inits.from_t5x_checkpoint(
      ckpt, "token_embedder/embedding",
      then=inits.from_class_labels([[100, 200], [300]]))
  x = np.asarray(init(RNG, (3, 4)))
  table = lazy.read_all(t5x.read_t5x_checkpoint(ckpt)[
      "token_embedder/embedding"])
  np.testing.assert_allclose(x[0], table[[100, 200]].mean(axis=0), rtol=1e-6)
  np.testing.assert_array_equal(x[1], table[300])


def test_t5x_paths_as_the_prompt_tuning_project_writes_them(ckpt):
  """Its gin files name the variable with a leading target/ and may point
  at the checkpoint's msgpack file."""
  want = inits.from_t5x_checkpoint(
      ckpt, "token_embedder/embedding",
      then=inits.from_sampled_vocab(population_size=50))(RNG, (6, 4))
  for path in (ckpt, ckpt / "checkpoint"):
    for variable in ("target/token_embedder/embedding",
                     "/target/token_embedder/embedding"):
      got = inits.from_t5x_checkpoint(
          path, variable,
          then=inits.from_sampled_vocab(population_size=50))(RNG, (6, 4))
      np.testing.assert_array_equal(got, want)


def test_t5x_unknown_variable_lists_names(ckpt):
  init = inits.from_t5x_checkpoint(ckpt, "prompt/prompt")
  with pytest.raises(ValueError, match=r"no variable 'prompt/prompt'.*"
                     r"available names include \[.*\] \(52 in all\)"):
    init(RNG, (2, 4))


def test_t5x_variable_shape_mismatch(ckpt):
  init = inits.from_t5x_checkpoint(ckpt, "encoder/relpos_bias/rel_embedding")
  with pytest.raises(ValueError, match=r"rel_embedding' in .* has shape "
                     r"\(2, 4\) but the prompt parameter has shape \(3, 4\)"):
    init(RNG, (3, 4))

"""Pretraining objectives (tasks/pretraining.py) on hand-written examples.

Span corruption must reproduce T5's algorithm (the mask -> sentinels step
exactly, the random mask's counts and shape, T5's 512 -> 568 / 114
lengths) and lose no token; prefix LM and causal LM must split text
without losing or reordering tokens; all must be deterministic per seed;
and the registered tasks must produce EOS-terminated examples that fit.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning.tasks import pretraining

VOCABULARY = seqio.ByteVocabulary(extra_ids=100)
V = VOCABULARY.vocab_size  # 359: 3 specials + 256 bytes + 100 extra ids
EOS = VOCABULARY.eos_id
FEATURES = {k: seqio.Feature(VOCABULARY, add_eos=True)
            for k in ("inputs", "targets")}
PREFIX = "test_pretraining_objectives"


def _seeds(a: int, b: int = 0) -> list[tf.Tensor]:
  return [tf.constant([a, b]), tf.constant([a, b + 1])]


def _mask(length: int, seed: int) -> np.ndarray:
  return pretraining.random_spans_noise_mask(length, _seeds(seed)).numpy()


def _runs(mask: np.ndarray) -> list[tuple[bool, int]]:
  """(is_noise, length) of each maximal run of the mask, in order."""
  runs = []
  for value in mask.tolist():
    if runs and runs[-1][0] == value:
      runs[-1] = (value, runs[-1][1] + 1)
    else:
      runs.append((value, 1))
  return runs


def _reassemble(inputs: Sequence[int], targets: Sequence[int]) -> list[int]:
  """Each sentinel in inputs replaced by the span after it in targets."""
  spans, current = {}, None
  for token in targets:
    if token >= V - 100:
      current = token
      spans[current] = []
    else:
      spans[current].append(token)
  out = []
  for token in inputs:
    out.extend(spans.pop(token) if token >= V - 100 else [token])
  assert not spans, f"sentinels {sorted(spans)} of targets not in inputs"
  return out


def _dataset(docs: Iterable[Sequence[int]]) -> tf.data.Dataset:
  docs = [list(d) for d in docs]
  return tf.data.Dataset.from_generator(
      lambda: ({"targets": np.array(d, np.int32)} for d in docs),
      output_signature={"targets": tf.TensorSpec([None], tf.int32)})


def _run(preprocessor, docs, lengths, features=FEATURES, seed=0):
  with seqio.map_seed_manager(seed):
    ds = preprocessor(_dataset(docs), sequence_length=lengths,
                      output_features=features)
  return [{k: v.tolist() for k, v in ex.items()}
          for ex in ds.as_numpy_iterator()]


# ---------------------------------------------------------- span corruption


def test_sentinels_for_a_hand_written_mask():
  tokens = list(range(10, 20))
  mask = [False, False, True, True, False, False, False, True, False, False]
  inputs, targets = pretraining.spans_to_sentinels(
      tf.constant(tokens), tf.constant(mask), V)
  assert inputs.numpy().tolist() == [10, 11, V - 1, 14, 15, 16, V - 2, 18, 19]
  assert targets.numpy().tolist() == [V - 1, 12, 13, V - 2, 17]


def test_sentinels_when_the_mask_starts_and_ends_with_noise():
  inputs, targets = pretraining.spans_to_sentinels(
      tf.constant([10, 11, 12, 13, 14]),
      tf.constant([True, True, False, False, True]), V)
  assert inputs.numpy().tolist() == [V - 1, 12, 13, V - 2]
  assert targets.numpy().tolist() == [V - 1, 10, 11, V - 2, 14]


def test_no_noise_keeps_inputs_and_empties_targets():
  inputs, targets = pretraining.spans_to_sentinels(
      tf.constant([5, 6, 7]), tf.constant([False] * 3), V)
  assert inputs.numpy().tolist() == [5, 6, 7]
  assert targets.numpy().tolist() == []


@pytest.mark.parametrize("length, noise, spans", [
    (10, 2, 1), (37, 6, 2), (100, 15, 5), (568, 85, 28)])
def test_random_mask_counts_and_interleaving(length, noise, spans):
  assert noise == round(length * 0.15)
  assert spans == max(1, round(noise / 3))
  for seed in range(5):
    mask = _mask(length, seed)
    assert mask.shape == (length,)
    assert mask.sum() == noise
    runs = _runs(mask)
    # Non-noise first, then alternating, ending with a noise span.
    assert [is_noise for is_noise, _ in runs] == [False, True] * spans
    assert sum(n for is_noise, n in runs if is_noise) == noise


def test_random_mask_is_deterministic_per_seed():
  np.testing.assert_array_equal(_mask(100, 3), _mask(100, 3))
  assert not np.array_equal(_mask(100, 3), _mask(100, 4))
  # Each of the two seeds matters (noise and non-noise span lengths).
  first = pretraining.random_spans_noise_mask(100, _seeds(3, 0)).numpy()
  other = pretraining.random_spans_noise_mask(
      100, [tf.constant([3, 0]), tf.constant([9, 9])]).numpy()
  assert not np.array_equal(first, other)


def test_mean_noise_span_length_is_three_and_lengths_vary():
  rng = np.random.default_rng(0)
  lengths = []
  for seed, length in enumerate(rng.integers(20, 400, size=200)):
    lengths += [n for is_noise, n in _runs(_mask(int(length), seed))
                if is_noise]
  assert abs(np.mean(lengths) - 3.0) < 0.1
  # Random segmentation, not fixed-size spans.
  assert min(lengths) == 1 and max(lengths) >= 8


def test_python_counts_match_the_tf_mask():
  for length in range(1, 120):
    noise, spans = pretraining.noise_counts(length)
    mask = _mask(length, length)
    assert mask.sum() == noise, length
    assert sum(is_noise for is_noise, _ in _runs(mask)) == spans, length


def test_lengths_helper_reproduces_t5():
  assert pretraining.span_corruption_lengths(512, 0.15, 3.0) == (568, 114)
  assert pretraining.noise_counts(568) == (85, 28)

  def corrupted(n):
    noise, spans = pretraining.noise_counts(n)
    return n - noise + spans + 1, noise + spans + 1

  assert corrupted(568) == (512, 114)
  assert corrupted(569)[0] == 513  # one more raw token no longer fits
  assert all(corrupted(n)[0] <= 512 and corrupted(n)[1] <= 114
             for n in range(1, 569))


def test_corruption_reassembles_the_original_tokens():
  rng = np.random.default_rng(1)
  for seed in range(40):
    tokens = rng.integers(3, 250, size=int(rng.integers(2, 300))).tolist()
    mask = pretraining.random_spans_noise_mask(len(tokens), _seeds(seed))
    inputs, targets = pretraining.spans_to_sentinels(
        tf.constant(tokens, tf.int32), mask, V)
    inputs, targets = inputs.numpy().tolist(), targets.numpy().tolist()
    assert _reassemble(inputs, targets) == tokens
    sentinels = [t for t in targets if t >= V - 100]
    assert sentinels == list(range(V - 1, V - 1 - len(sentinels), -1))
    assert [t for t in inputs if t >= V - 100] == sentinels


def test_span_corruption_pipeline_fits_and_loses_nothing():
  rng = np.random.default_rng(2)
  docs = [rng.integers(3, 250, size=n).tolist() for n in (5, 80, 1, 140)]
  raw, targets_length = pretraining.span_corruption_lengths(32)
  lengths = {"inputs": 32, "targets": targets_length}
  examples = _run(pretraining.span_corruption, docs, lengths)
  # Concatenated (4 docs < 128), cut into raw-length chunks, corrupted.
  assert len(examples) == -(-226 // raw)
  stream = []
  for ex in examples:
    assert 1 <= len(ex["inputs"]) <= 31 and len(ex["targets"]) <= 31
    assert len(ex["targets"]) <= targets_length - 1
    stream += _reassemble(ex["inputs"], ex["targets"])
  assert stream == [t for d in docs for t in d]
  assert _run(pretraining.span_corruption, docs, lengths) == examples
  assert _run(pretraining.span_corruption, docs, lengths, seed=1) != examples


def test_span_corruption_rejects_short_targets_and_missing_sentinels():
  with pytest.raises(ValueError, match="at least 114"):
    pretraining.span_corruption(_dataset([[5]]), {"inputs": 512,
                                                  "targets": 100}, FEATURES)
  no_extra = {k: seqio.Feature(seqio.ByteVocabulary(), add_eos=True)
              for k in ("inputs", "targets")}
  with pytest.raises(ValueError, match="extra ids"):
    pretraining.span_corruption(_dataset([[5]]), {"inputs": 512,
                                                  "targets": 114}, no_extra)


# ----------------------------------------------------------------- prefix LM


def test_prefix_split_point_is_bounded_and_varies_with_seed():
  splits = [int(pretraining.random_prefix_length(40, [s, 7], 100, 100))
            for s in range(60)]
  assert all(1 <= k <= 39 for k in splits)
  assert len(set(splits)) > 20
  assert splits == [int(pretraining.random_prefix_length(40, [s, 7], 100,
                                                         100))
                    for s in range(60)]
  # Capacities: inputs at most 25, targets at most 20 of 40 tokens.
  bounded = [int(pretraining.random_prefix_length(40, [s, 0], 25, 20))
             for s in range(60)]
  assert min(bounded) >= 20 and max(bounded) <= 25


def test_prefix_lm_keeps_every_token_in_order():
  rng = np.random.default_rng(3)
  docs = [rng.integers(3, 250, size=n).tolist() for n in (2, 17, 30)]
  lengths = {"inputs": 21, "targets": 11}  # 20 + 10 raw tokens per chunk
  splits = set()
  for seed in range(8):
    examples = _run(pretraining.prefix_lm, docs, lengths, seed=seed)
    assert len(examples) == 3
    for ex, doc in zip(examples, docs):
      assert ex["inputs"] and ex["targets"]
      assert len(ex["inputs"]) <= 20 and len(ex["targets"]) <= 10
      assert ex["inputs"] + ex["targets"] == doc
    assert len(examples[0]["inputs"]) == 1  # 2 tokens: one each
    assert len(examples[2]["inputs"]) == 20  # 30 tokens fit only 20 + 10
    splits.add(len(examples[1]["inputs"]))  # 17 tokens: anywhere in 7..16
  assert len(splits) > 2


def test_prefix_lm_chunks_long_text_to_the_combined_length():
  doc = list(range(3, 73))  # 70 tokens -> chunks of 30, 30, 10
  examples = _run(pretraining.prefix_lm, [doc], {"inputs": 21,
                                                  "targets": 11})
  assert [len(e["inputs"]) + len(e["targets"]) for e in examples] == [
      30, 30, 10]
  assert [t for e in examples for t in e["inputs"] + e["targets"]] == doc


# ----------------------------------------------------------------- causal LM


def test_split_tokens_exact_lengths_nothing_lost():
  docs = [list(range(3, 13)), [50], list(range(100, 104))]
  ds = pretraining.split_tokens(_dataset(docs), 4)
  chunks = [ex["targets"].tolist() for ex in ds.as_numpy_iterator()]
  assert chunks == [[3, 4, 5, 6], [7, 8, 9, 10], [11, 12], [50],
                    [100, 101, 102, 103]]


def test_causal_lm_ends_each_text_with_eos():
  docs = [list(range(3, 13)), [50, 51]]
  features = {"targets": seqio.Feature(VOCABULARY, add_eos=False)}
  examples = _run(pretraining.causal_lm, docs, {"targets": 4}, features)
  assert [e["targets"] for e in examples] == [
      [3, 4, 5, 6], [7, 8, 9, 10], [11, 12, EOS], [50, 51, EOS]]
  # T5's per-chunk EOS convention: room is left for the EOS of each chunk.
  features = {"targets": seqio.Feature(VOCABULARY, add_eos=True)}
  examples = _run(pretraining.causal_lm, docs, {"targets": 4}, features)
  assert [e["targets"] for e in examples] == [
      [3, 4, 5], [6, 7, 8], [9, 10, 11], [12], [50, 51]]


# ---------------------------------------------------------- registered tasks


TEXTS = ("In the beginning, God created the heavens and the earth.",
         "Jesus wept.",
         "The earth was formless and empty. Darkness was on the surface of "
         "the deep and God's Spirit was hovering over the surface of the "
         "waters.")


def _texts(split: str, shuffle_files: bool,
           seed: int | None = None) -> tf.data.Dataset:
  del split, shuffle_files, seed
  return tf.data.Dataset.from_tensor_slices(
      {"text": list(TEXTS), "id": list(range(len(TEXTS)))})


@pytest.fixture(scope="module")
def task_names():
  source = seqio.FunctionDataSource(_texts, splits=("train",))
  names = pretraining.register_pretraining_tasks(PREFIX, source, VOCABULARY)
  yield names
  for name in names:
    seqio.TaskRegistry.remove(name)


def _task_examples(name: str, lengths, seed: int = 0):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(lengths, split="train", shuffle=False, seed=seed)
  return [{k: v.tolist() for k, v in ex.items()}
          for ex in ds.as_numpy_iterator()]


def _ids(text: str) -> list[int]:
  return VOCABULARY.encode(text)


def test_registered_names_and_no_metrics(task_names):
  assert task_names == (f"{PREFIX}_span_corruption", f"{PREFIX}_prefix_lm",
                        f"{PREFIX}_causal_lm")
  for name in task_names:
    task = seqio.get_mixture_or_task(name)
    assert not task.metric_fns
  causal = seqio.get_mixture_or_task(task_names[2])
  assert set(causal.output_features) == {"targets"}
  assert not causal.output_features["targets"].add_eos


def test_span_corruption_task_end_to_end(task_names):
  _, targets_length = pretraining.span_corruption_lengths(64)
  lengths = {"inputs": 64, "targets": targets_length}
  examples = _task_examples(task_names[0], lengths)
  stream = []
  for ex in examples:
    assert set(ex) == {"inputs", "targets"}
    assert ex["inputs"][-1] == EOS and ex["targets"][-1] == EOS
    assert len(ex["inputs"]) <= 64 and len(ex["targets"]) <= targets_length
    stream += _reassemble(ex["inputs"][:-1], ex["targets"][:-1])
  assert stream == [t for text in TEXTS for t in _ids(text)]
  assert _task_examples(task_names[0], lengths) == examples
  assert _task_examples(task_names[0], lengths, seed=1) != examples


def test_prefix_lm_task_end_to_end(task_names):
  lengths = {"inputs": 48, "targets": 40}
  examples = _task_examples(task_names[1], lengths)
  stream = []
  for ex in examples:
    assert ex["inputs"][-1] == EOS and ex["targets"][-1] == EOS
    assert len(ex["inputs"]) <= 48 and len(ex["targets"]) <= 40
    assert len(ex["inputs"]) >= 2 and len(ex["targets"]) >= 2
    stream += ex["inputs"][:-1] + ex["targets"][:-1]
  assert stream == [t for text in TEXTS for t in _ids(text)]


def test_causal_lm_task_end_to_end(task_names):
  examples = _task_examples(task_names[2], {"targets": 32})
  assert all(len(ex["targets"]) <= 32 for ex in examples)
  ends = [ex["targets"][-1] == EOS for ex in examples]
  assert sum(ends) == len(TEXTS)  # one EOS per text, at its last chunk
  assert [t for ex in examples for t in ex["targets"]] == [
      t for text in TEXTS for t in _ids(text) + [EOS]]

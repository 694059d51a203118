"""The demo task and the metrics the tasks use.

`demo_reverse_words` must give the same batches everywhere (the README demo
and its numbers depend on it), end every feature with EOS, and hold its
validation words out of train; the metric functions must agree with
hand-computed values and with sacrebleu itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import sacrebleu
import seqio

from prompt_tuning.tasks import demo
from prompt_tuning.tasks import metrics

import seqio_test_tasks

EOS = 1


def _converted(split: str) -> list[dict[str, np.ndarray]]:
  ds = seqio.get_dataset(
      demo.TASK_NAME, demo.FEATURE_LENGTHS,
      feature_converter=seqio.EncDecFeatureConverter(pack=False),
      dataset_split=split, shuffle=False, num_epochs=1, verbose=False)
  return list(ds.as_numpy_iterator())


def test_reverse_words_on_a_hand_written_example():
  assert demo.reverse_words("apple river stone green") == (
      "green stone river apple")


def test_every_target_is_its_input_reversed():
  for split in demo.SPLITS:
    for inputs, targets in demo.examples(split):
      assert inputs.startswith("reverse: ")
      words = inputs[len("reverse: "):].split()
      assert len(words) == demo.WORDS_PER_EXAMPLE
      assert set(words) <= set(demo.WORDS)
      assert targets.split() == words[::-1]


def test_split_sizes_and_validation_held_out_of_train():
  assert len(demo.WORDS) == 200
  for split, (count, _) in demo.SPLITS.items():
    assert len(demo.examples(split)) == count
  train = {inputs for inputs, _ in demo.examples("train")}
  for split in ("validation", "test"):
    assert not train & {inputs for inputs, _ in demo.examples(split)}


def test_batches_have_encoder_decoder_features_ending_in_eos():
  rows = _converted("validation")
  assert len(rows) == 64
  vocab = seqio.ByteVocabulary()
  assert vocab.vocab_size == 259
  for row, (inputs, targets) in zip(rows, demo.examples("validation")):
    assert set(row) >= {"encoder_input_tokens", "decoder_input_tokens",
                        "decoder_target_tokens", "decoder_loss_weights"}
    assert row["encoder_input_tokens"].shape == (48,)
    assert row["decoder_target_tokens"].shape == (32,)
    for key, text in (("encoder_input_tokens", inputs),
                      ("decoder_target_tokens", targets)):
      tokens = row[key][row[key] != 0]
      # Nothing was cut: the text and its EOS are all there.
      assert tokens[-1] == EOS and EOS not in tokens[:-1]
      assert vocab.decode(tokens[:-1].tolist()) == text
      assert tokens[:-1].tolist() == [b + 3 for b in text.encode("utf-8")]


def test_batches_are_the_same_on_every_read():
  first, second = _converted("validation"), _converted("validation")
  for a, b in zip(first, second):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_longest_possible_example_fits_the_feature_lengths():
  longest = max(len(w) for w in demo.WORDS)
  n = demo.WORDS_PER_EXAMPLE
  words_bytes = n * longest + (n - 1)  # words and the spaces between them
  assert len("reverse: ") + words_bytes + 1 <= demo.FEATURE_LENGTHS["inputs"]
  assert words_bytes + 1 <= demo.FEATURE_LENGTHS["targets"]


def test_task_reports_sequence_accuracy_and_bleu():
  task = seqio.get_mixture_or_task(demo.TASK_NAME)
  assert task.predict_metric_fns == [metrics.sequence_accuracy, metrics.bleu]
  assert not task.score_metric_fns


def test_sequence_accuracy_on_known_predictions():
  targets = ["b a", "d c", "f e", "h g"]
  predictions = ["b a", "c d", "f e", "h g "]
  # Exact match only: "c d" (wrong order) and "h g " (extra space) miss.
  assert metrics.sequence_accuracy(targets, predictions) == {
      "sequence_accuracy": 50.0}
  assert metrics.sequence_accuracy([], []) == {"sequence_accuracy": 0.0}


def test_bleu_equals_sacrebleu_corpus_bleu():
  targets = ["green stone river apple", "zero snow lion jump",
             "zebra tea call arm"]
  predictions = ["green stone river apple", "zero lion snow jump",
                 "zebra tea arm"]
  expected = sacrebleu.corpus_bleu(predictions, [targets]).score
  assert metrics.bleu(targets, predictions) == {"bleu": pytest.approx(
      expected, abs=1e-9)}
  assert 0.0 < expected < 100.0
  assert metrics.bleu(targets, targets)["bleu"] == pytest.approx(100.0)


def test_mean_score_and_length_mismatch():
  assert metrics.mean_score(["a", "b"], [-1.0, -3.0]) == {"mean_score": -2.0}
  with pytest.raises(ValueError, match="2 targets but 1"):
    metrics.sequence_accuracy(["a", "b"], ["a"])


def test_runtime_test_tasks_register_once_and_fit_their_lengths():
  names = seqio_test_tasks.register()
  assert names == seqio_test_tasks.register()
  copy, rank, mixture = (seqio.get_mixture_or_task(n) for n in names)
  assert copy.predict_metric_fns == [metrics.sequence_accuracy]
  assert rank.score_metric_fns == [metrics.mean_score]
  assert not rank.predict_metric_fns
  assert {t.name for t in mixture.tasks} == {copy.name, rank.name}
  lengths = seqio_test_tasks.FEATURE_LENGTHS
  for split, count in seqio_test_tasks.SPLITS.items():
    rows = list(copy.get_dataset(lengths, split=split, shuffle=False)
                .as_numpy_iterator())
    assert len(rows) == count
    for row in rows:
      for key in ("inputs", "targets"):  # EOS-terminated, nothing cut
        assert row[key][-1] == EOS
        assert seqio_test_tasks.VOCABULARY.decode(row[key][:-1].tolist()) == (
            row[f"{key}_pretokenized"].decode())
      assert row["targets_pretokenized"].decode() == (
          row["inputs_pretokenized"].decode()[len("copy: "):])

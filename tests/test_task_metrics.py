"""The (Super)GLUE metric functions on predictions with hand-computed scores.

Each expected value is worked out by hand in the comment next to it (or, for
Matthews correlation, also checked against Pearson's r of the 0/1 labels,
which it equals for two classes). The last tests run seqio's own Evaluator
on mock data, so that postprocessors and metrics meet as in an eval run.
"""

from __future__ import annotations

from pathlib import Path

import gin
import numpy as np
import pytest
import seqio
from seqio import metrics as seqio_metrics

from prompt_tuning.tasks import glue
from prompt_tuning.tasks import metrics
from prompt_tuning.tasks import superglue

from mock_tfds import mock_tfds


def test_accuracy_counts_invalid_predictions_as_wrong():
  # 3 of 4 right.
  assert metrics.accuracy([0, 1, 1, 0], [0, 1, -1, 0]) == {"accuracy": 75.0}
  assert metrics.accuracy([], []) == {"accuracy": 0.0}


def test_f1_with_invalid_predictions():
  # The -1 (target 1) becomes 0: tp = 2 (items 0, 4), fp = 1 (item 2),
  # fn = 1 (item 1); F1 = 2*2 / (2*2 + 1 + 1) = 2/3.
  out = metrics.f1_score_with_invalid([1, 1, 0, 0, 1], [1, -1, 1, 0, 1])
  assert out == {"f1": pytest.approx(200 / 3)}
  # No positive anywhere: 0, not a division error.
  assert metrics.f1_score_with_invalid([0, 0], [0, 0]) == {"f1": 0.0}


def test_cb_macro_f1_is_the_mean_over_three_classes():
  targets = [0, 0, 1, 2, 2, 1]
  predictions = [0, 1, 1, 2, 0, -1]
  # class 0: tp 1, fp 1 (item 4), fn 1 (item 1) -> 2/4 = 0.5
  # class 1: tp 1, fp 1 (item 1), fn 1 (item 5) -> 2/4 = 0.5
  # class 2: tp 1, fp 0, fn 1 (item 4)          -> 2/3
  cb_f1 = metrics.mean_multiclass_f1(3)
  assert cb_f1(targets, predictions) == {
      "mean_3class_f1": pytest.approx(100 * (0.5 + 0.5 + 2 / 3) / 3)}
  # A class absent from targets and predictions scores 0, as in sklearn.
  assert cb_f1([0, 1], [0, 1]) == {"mean_3class_f1": pytest.approx(200 / 3)}
  with pytest.raises(ValueError, match="num_classes=1"):
    metrics.mean_multiclass_f1(1)


def test_matthews_correlation():
  targets = [1, 1, 1, 0, 0, 0, 1, 0]
  predictions = [1, 0, 1, 0, 1, 0, 1, 0]
  # tp 3, fn 1, fp 1, tn 3: (3*3 - 1*1) / sqrt(4*4*4*4) = 8/16.
  out = metrics.matthews_corrcoef(targets, predictions)
  assert out == {"matthews_corrcoef": pytest.approx(50.0)}
  assert out["matthews_corrcoef"] == pytest.approx(
      100 * np.corrcoef(targets, predictions)[0, 1])
  # Perfectly wrong is -100; a constant prediction is 0 (denominator 0).
  assert metrics.matthews_corrcoef([0, 1], [1, 0]) == {
      "matthews_corrcoef": pytest.approx(-100.0)}
  assert metrics.matthews_corrcoef([0, 1, 1], [1, 1, 1]) == {
      "matthews_corrcoef": 0.0}


def test_matthews_correlation_with_an_invalid_prediction():
  # Labels {-1, 0, 1}; confusion rows = targets, columns = predictions
  # (order -1, 0, 1): t0: [0, 1, 1], t1: [1, 0, 1]. n = 4, correct c = 2,
  # true counts t = (0, 2, 2), predicted p = (1, 1, 2).
  # (c*n - t.p) / sqrt((n^2 - p.p)(n^2 - t.t)) = (8 - 6) / sqrt(10 * 8).
  out = metrics.matthews_corrcoef([0, 0, 1, 1], [0, 1, -1, 1])
  assert out == {"matthews_corrcoef": pytest.approx(100 * 2 / np.sqrt(80))}


def _multirc(group, value):
  return {"value": value, "group": group}


def test_multirc_f1a_over_all_answers_and_exact_match_per_question():
  # Question (0, 0) has three answer options, (0, 1) two, (1, 2) one.
  groups = [(0, 0)] * 3 + [(0, 1)] * 2 + [(1, 2)]
  gold = [1, 0, 1, 0, 1, 1]
  guess = [1, 0, 0, 0, 1, -1]
  targets = [_multirc(g, v) for g, v in zip(groups, gold)]
  predictions = [{"value": v} for v in guess]
  # F1a over the 6 options; -1 (target 1) counts as 0: tp 2, fp 0, fn 2.
  assert metrics.multirc_f1_over_all_answers(targets, predictions) == {
      "f1a": pytest.approx(100 * 4 / 6)}
  # Only question (0, 1) is right in every option: 1 of 3.
  assert metrics.multirc_exact_match(targets, predictions) == {
      "exact_match": pytest.approx(100 / 3)}


def test_multirc_exact_match_groups_by_question_not_by_order():
  targets = [_multirc((0, 1), 1), _multirc((0, 2), 0), _multirc((0, 1), 0)]
  predictions = [{"value": 1}, {"value": 0}, {"value": 1}]
  # (0, 1): options 0 and 2, the second wrong; (0, 2): right. 1 of 2.
  assert metrics.multirc_exact_match(targets, predictions) == {
      "exact_match": 50.0}


def test_squad_normalization():
  assert metrics.normalize_squad("The  Port, of Dover!") == "port of dover"
  assert metrics.normalize_squad("An apple a day") == "apple day"


def test_record_takes_the_max_over_answers_once_per_query():
  answers = ["Dover", "Port of Dover"]
  targets = [
      {"value": answers, "group": (0, 0)},  # one copy per answer ...
      {"value": answers, "group": (0, 0)},
      {"value": ["Mr. Smith"], "group": (0, 1)},
  ]
  predictions = [
      {"value": "the Port of Dover."},  # = "port of dover": EM 1, F1 1
      {"value": "something else"},      # ... of which only the first counts
      {"value": "Smith"},               # vs "mr smith": EM 0, F1 2/3
  ]
  out = metrics.record_squad(targets, predictions)
  # F1 of "smith" vs "mr smith": precision 1, recall 1/2 -> 2/3.
  assert out == {"em": pytest.approx(50.0),
                 "f1": pytest.approx(100 * (1 + 2 / 3) / 2)}


def test_squad_max_over_answers_and_no_answers():
  # "dover" vs "dover": EM 1; vs "port of dover": F1 0.5 (max is 1).
  assert metrics.squad([["Port of Dover", "Dover"]], ["Dover"]) == {
      "em": 100.0, "f1": 100.0}
  # "port" vs "port of dover": precision 1, recall 1/3 -> F1 1/2.
  assert metrics.squad([["Port of Dover"]], ["port"]) == {
      "em": 0.0, "f1": pytest.approx(50.0)}
  assert metrics.squad([[]], ["x"]) == {"em": 0.0, "f1": 0.0}


def test_axg_gender_parity_and_accuracy():
  targets = [{"value": v, "idx": i} for i, v in enumerate([0, 0, 1, 1, 0, 1])]
  targets.append({"value": 0, "idx": 7})  # its pair (6) is missing
  predictions = [1, 1, 1, 0, 0, 0, 0]
  # Pairs (0, 1) agree, (2, 3) differ, (4, 5) agree: 2 of 3.
  # Right: items 2, 4, 6: 3 of 7.
  out = metrics.gender_parity(targets, predictions)
  assert out == {"gender_parity": pytest.approx(200 / 3),
                 "accuracy": pytest.approx(300 / 7)}


def test_rank_classification_picks_the_best_label_per_example():
  # Two CB-like examples, 3 labels each; example 5's gold label is 2,
  # example 9's is 0. The rows arrive in any order.
  rows = [((9, 1), False, -0.5), ((5, 0), False, -3.0), ((5, 2), True, -1.0),
          ((9, 0), True, -2.0), ((5, 1), False, -2.0), ((9, 2), False, -4.0)]
  targets = [(idx, ok, 1.0, 2) for idx, ok, _ in rows]
  scores = [score for _, _, score in rows]
  metric = metrics.rank_classification(
      [metrics.accuracy, metrics.mean_multiclass_f1(3)])
  # Predictions: example 5 -> label 2 (right), example 9 -> label 1 (wrong).
  # F1: class 0: fn 1 -> 0; class 1: fp 1 -> 0; class 2: tp 1 -> 1.
  assert metric(targets, scores) == {
      "accuracy": 50.0, "mean_3class_f1": pytest.approx(100 / 3)}


def test_rank_classification_for_axg_keeps_the_pair_index():
  targets = [((0, 0), True, 1.0, 2), ((0, 1), False, 1.0, 2),
             ((1, 0), False, 1.0, 2), ((1, 1), True, 1.0, 2)]
  scores = [-1.0, -2.0, -1.0, -3.0]  # both choose label 0
  metric = metrics.rank_classification([metrics.gender_parity],
                                       targets_with_idx=True)
  assert metric(targets, scores) == {"gender_parity": 100.0,
                                     "accuracy": 50.0}


def test_unlabeled_rank_examples_count_as_wrong():
  targets = [((0, 0), False, 1.0, 2), ((0, 1), False, 1.0, 2)]
  metric = metrics.rank_classification([metrics.accuracy])
  assert metric(targets, [-1.0, -2.0]) == {"accuracy": 0.0}


@pytest.mark.parametrize("fn,kind", [
    (metrics.accuracy, "PREDICTION"),
    (metrics.f1_score_with_invalid, "PREDICTION"),
    (metrics.mean_multiclass_f1(3), "PREDICTION"),
    (metrics.matthews_corrcoef, "PREDICTION"),
    (metrics.multirc_f1_over_all_answers, "PREDICTION"),
    (metrics.multirc_exact_match, "PREDICTION"),
    (metrics.record_squad, "PREDICTION"),
    (metrics.gender_parity, "PREDICTION"),
    (metrics.rank_classification([metrics.accuracy]), "SCORE"),
    (metrics.mean_score, "SCORE"),
])
def test_seqio_reads_each_metric_kind_from_its_signature(fn, kind):
  metric = seqio_metrics.LegacyMetric.empty(fn, None)
  assert metric.model_output_type == getattr(seqio_metrics.ModelOutputType,
                                             kind)


def test_lengths_must_match():
  with pytest.raises(ValueError, match="2 targets but 1"):
    metrics.accuracy([0, 1], [0])


# --- Through seqio's evaluator (postprocessors + metrics, as in eval runs) ---

LENGTHS = {"inputs": 64, "targets": 64}  # no mock answer is cut
T5_MODEL = (Path(__file__).resolve().parents[2] / "shared" / "fixtures" /
            "t5_sentencepiece.model")


@pytest.fixture(scope="module")
def mocked():
  if not T5_MODEL.exists():
    pytest.skip(f"no T5 vocabulary fixture at {T5_MODEL}")
  gin.bind_parameter("vocabulary_paths.t5", str(T5_MODEL))
  with mock_tfds(num_examples=8):
    yield


def _evaluate(name: str, split: str, predict=None, score=None):
  evaluator = seqio.Evaluator(
      mixture_or_task_name=name, eval_split=split, sequence_length=LENGTHS,
      feature_converter=seqio.EncDecFeatureConverter(pack=False),
      async_compute_metrics=False)
  (task,) = evaluator.eval_tasks
  examples = list(evaluator.cached_task_datasets[name].as_numpy_iterator())
  fns = {}
  vocabulary = task.output_features["targets"].vocabulary

  def padded(tokens):  # decodes come padded to the targets length
    return np.pad(tokens, (0, LENGTHS["targets"] - len(tokens)))

  if predict:
    fns["predict_fn"] = lambda ds: [
        (i, padded(predict(examples[i], vocabulary)))
        for i, _ in ds.as_numpy_iterator()]
  if score:
    fns["score_fn"] = lambda ds: [(i, score(examples[i]))
                                  for i, _ in ds.as_numpy_iterator()]
  future, _ = evaluator.evaluate(compute_metrics=True, **fns)
  return future.result()[name], examples


def _gold_tokens(example, vocabulary):
  del vocabulary
  return example["targets"]


@pytest.mark.parametrize("name,split,keys", [
    (superglue.task_name("cb"), "validation", ("accuracy",)),
    (superglue.task_name("multirc", "taskless_"), "validation",
     ("exact_match",)),
    (superglue.task_name("axg", "task_index_"), "test", ("accuracy",)),
    (superglue.task_name("record"), "validation", ("em", "f1")),
])
def test_evaluator_scores_gold_predictions_at_100(mocked, name, split, keys):
  del mocked
  result, examples = _evaluate(name, split, predict=_gold_tokens)
  assert examples
  for key in keys:
    assert result[key] == pytest.approx(100.0), (key, result)


def test_evaluator_rank_classification_takes_the_best_scored_label(mocked):
  del mocked
  name = superglue.task_name("cb", "taskless_", rank=True)
  # The correct label scores -1, the others -5: every example is right.
  result, examples = _evaluate(
      name, "validation", score=lambda ex: -1.0 if ex["is_correct"] else -5.0)
  assert len(examples) == 8 * 3  # one row per example and label
  assert result["accuracy"] == 100.0
  # Reversed scores: every example picks a wrong label.
  result, _ = _evaluate(
      name, "validation", score=lambda ex: -5.0 if ex["is_correct"] else -1.0)
  assert result["accuracy"] == 0.0


def test_evaluator_maps_qqp_words_onto_mrpc_labels(mocked):
  del mocked
  to_qqp = {"equivalent": "duplicate", "not_equivalent": "not_duplicate"}

  def qqp_words(example, vocabulary):
    word = to_qqp[example["targets_pretokenized"].decode()]
    return np.array(vocabulary.encode(word) + [1], np.int32)

  result, _ = _evaluate(glue.transfer_name("qqp", "mrpc"), "validation",
                        predict=qqp_words)
  assert result["accuracy"] == 100.0

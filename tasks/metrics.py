"""Metric functions for seqio tasks, in T5's conventions.

seqio picks a metric's kind from its positional arguments: `(targets,
predictions)` scores decoded text, `(targets, scores)` scores the model's
log-likelihood of the targets. Each returns a dict of named floats; every
metric is in percent (0-100), as T5 and the (Super)GLUE papers report them.
The keys of one task's metrics must differ (seqio refuses duplicates).

Targets and predictions reach these functions after the task's
postprocessor: class ids for classification (-1 for a prediction that is no
label word; it counts as wrong), and small dicts where a metric needs more
than the label (MultiRC's question, ReCoRD's answer list, AX-g's pair index).

Generic: `sequence_accuracy`, `bleu`, `mean_score`, `accuracy`,
`f1_score_with_invalid`, `mean_multiclass_f1`, `matthews_corrcoef`, `squad`.
SuperGLUE's official ones: `multirc_f1_over_all_answers` (F1a),
`multirc_exact_match` (EM grouped by question), `record_squad` (max over
answers, one prediction per query), `gender_parity` (AX-g).
Score-based: `mean_score` and `rank_classification(...)`.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import sacrebleu

MetricFn = Callable[..., dict[str, float]]


def sequence_accuracy(targets: Sequence[str],
                      predictions: Sequence[str]) -> dict[str, float]:
  """Percent of predictions exactly equal to their target."""
  _check_same_length(targets, predictions)
  if not targets:
    return {"sequence_accuracy": 0.0}
  hits = [t == p for t, p in zip(targets, predictions)]
  return {"sequence_accuracy": 100.0 * float(np.mean(hits))}


def bleu(targets: Sequence[str],
         predictions: Sequence[str]) -> dict[str, float]:
  """sacrebleu's corpus BLEU with its defaults (13a tokenization), one ref."""
  _check_same_length(targets, predictions)
  score = sacrebleu.corpus_bleu(list(predictions), [list(targets)])
  return {"bleu": float(score.score)}


def mean_score(targets: Sequence[str],
               scores: Sequence[float]) -> dict[str, float]:
  """Mean summed log-likelihood of the targets (a score metric)."""
  _check_same_length(targets, scores)
  return {"mean_score": float(np.mean(scores)) if len(scores) else 0.0}


def _check_same_length(targets, other) -> None:
  if len(targets) != len(other):
    raise ValueError(
        f"{len(targets)} targets but {len(other)} predictions/scores; the "
        "evaluator must pass one per example.")


# --- Classification ---------------------------------------------------------


def accuracy(targets: Sequence[Any],
             predictions: Sequence[Any]) -> dict[str, float]:
  """Percent of predictions equal to their target (class ids or labels)."""
  _check_same_length(targets, predictions)
  if not len(targets):
    return {"accuracy": 0.0}
  hits = [t == p for t, p in zip(targets, predictions)]
  return {"accuracy": 100.0 * float(np.mean(hits))}


def f1_score_with_invalid(targets: Sequence[int],
                          predictions: Sequence[int]) -> dict[str, float]:
  """Binary F1 of class 1 (T5's MRPC/QQP metric).

  A prediction that is neither 0 nor 1 (no label word) counts as wrong: it
  becomes the opposite of its target.
  """
  _check_same_length(targets, predictions)
  t = np.asarray(targets, dtype=np.int64)
  p = np.asarray(predictions, dtype=np.int64).copy()
  invalid = (p != 0) & (p != 1)
  p[invalid] = 1 - t[invalid]
  return {"f1": 100.0 * _f1(t, p, 1)}


def mean_multiclass_f1(num_classes: int) -> MetricFn:
  """The unweighted mean over classes 0..num_classes-1 of each class's F1
  (CB's official "F1"); a class never predicted nor present scores 0.

  Returns a (targets, predictions) metric named `mean_<n>class_f1`.
  """
  if num_classes < 2:
    raise ValueError(f"num_classes={num_classes}: macro F1 needs >= 2.")
  name = f"mean_{num_classes}class_f1"

  def metric(targets, predictions):
    _check_same_length(targets, predictions)
    t, p = np.asarray(targets), np.asarray(predictions)
    f1s = [_f1(t, p, c) for c in range(num_classes)]
    return {name: 100.0 * float(np.mean(f1s))}

  metric.__name__ = name
  return metric


def matthews_corrcoef(targets: Sequence[int],
                      predictions: Sequence[int]) -> dict[str, float]:
  """Matthews correlation (AX-b's metric), x100, over every label seen.

  The multiclass form (Gorodkin 2004) on the confusion matrix of all labels
  in targets or predictions (an invalid prediction, -1, is its own label);
  for two labels it is the familiar (tp*tn - fp*fn) / sqrt(...). 0 when a
  side is constant (the denominator is 0).
  """
  _check_same_length(targets, predictions)
  labels = sorted(set(targets) | set(predictions))
  index = {label: i for i, label in enumerate(labels)}
  confusion = np.zeros((len(labels), len(labels)), dtype=np.float64)
  for t, p in zip(targets, predictions):
    confusion[index[t], index[p]] += 1
  n = confusion.sum()
  correct = np.trace(confusion)
  true_counts = confusion.sum(axis=1)
  pred_counts = confusion.sum(axis=0)
  numerator = correct * n - true_counts @ pred_counts
  denominator = np.sqrt((n * n - pred_counts @ pred_counts) *
                        (n * n - true_counts @ true_counts))
  mcc = numerator / denominator if denominator else 0.0
  return {"matthews_corrcoef": 100.0 * float(mcc)}


def _f1(targets: np.ndarray, predictions: np.ndarray, label: int) -> float:
  tp = np.sum((targets == label) & (predictions == label))
  fp = np.sum((targets != label) & (predictions == label))
  fn = np.sum((targets == label) & (predictions != label))
  return float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0


# --- SuperGLUE's structured tasks --------------------------------------------


def multirc_f1_over_all_answers(
    targets: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """MultiRC's F1a: binary F1 over every answer option of every question.

  Targets and predictions are the MultiRC postprocessor's dicts; only their
  "value" (0/1, or -1 for a prediction that is neither) is used.
  """
  f1 = f1_score_with_invalid([t["value"] for t in targets],
                             [p["value"] for p in predictions])["f1"]
  return {"f1a": f1}


def multirc_exact_match(
    targets: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """MultiRC's EM: percent of questions whose answer options are all right.

  Options are grouped by the target's "group" (paragraph and question ids);
  pass whole questions (a subsample that splits one changes the score).
  """
  _check_same_length(targets, predictions)
  right = collections.defaultdict(lambda: True)
  for t, p in zip(targets, predictions):
    right[t["group"]] &= t["value"] == p["value"]
  value = float(np.mean(list(right.values()))) if right else 0.0
  return {"exact_match": 100.0 * value}


_PUNCTUATION = frozenset(string.punctuation)


def normalize_squad(text: str) -> str:
  """SQuAD v1.1's answer normalization: lower case, no punctuation, no
  articles (a, an, the), single spaces."""
  text = text.lower()
  text = "".join(c for c in text if c not in _PUNCTUATION)
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _token_f1(target: str, prediction: str) -> float:
  common = (collections.Counter(target.split()) &
            collections.Counter(prediction.split()))
  same = sum(common.values())
  if not same:
    return 0.0
  precision = same / len(prediction.split())
  recall = same / len(target.split())
  return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]],
          predictions: Sequence[str]) -> dict[str, float]:
  """SQuAD exact match and token F1, each the max over an example's answers
  (after `normalize_squad`); an example with no answers scores 0."""
  _check_same_length(targets, predictions)
  ems, f1s = [], []
  for answers, prediction in zip(targets, predictions):
    prediction = normalize_squad(prediction)
    answers = [normalize_squad(a) for a in answers]
    ems.append(max((float(a == prediction) for a in answers), default=0.0))
    f1s.append(max((_token_f1(a, prediction) for a in answers), default=0.0))
  if not ems:
    return {"em": 0.0, "f1": 0.0}
  return {"em": 100.0 * float(np.mean(ems)), "f1": 100.0 * float(np.mean(f1s))}


def record_squad(targets: Sequence[Mapping[str, Any]],
                 predictions: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """ReCoRD's EM and F1: `squad` with one prediction per query.

  The ReCoRD preprocessor repeats a query once per correct answer (to train
  on each); here only the first copy of each "group" (passage and query ids)
  counts, scored against all of that query's answers ("value").
  """
  _check_same_length(targets, predictions)
  seen: set[Hashable] = set()
  answers, answer_predictions = [], []
  for t, p in zip(targets, predictions):
    if t["group"] in seen:
      continue
    seen.add(t["group"])
    answers.append(t["value"])
    answer_predictions.append(p["value"])
  return squad(answers, answer_predictions)


def gender_parity(targets: Sequence[Mapping[str, Any]],
                  predictions: Sequence[int]) -> dict[str, float]:
  """AX-g's metrics: gender parity and accuracy.

  AX-g (Winogender) comes in pairs that differ only in the pronoun's gender:
  examples with idx 2k and 2k+1. Parity is the percent of complete pairs
  whose two predictions agree, right or wrong. Targets are dicts with the
  class id ("value") and the example's "idx".
  """
  _check_same_length(targets, predictions)
  by_idx = {int(t["idx"]): p for t, p in zip(targets, predictions)}
  agree = [by_idx[i] == by_idx[i + 1] for i in by_idx
           if i % 2 == 0 and i + 1 in by_idx]
  parity = 100.0 * float(np.mean(agree)) if agree else 0.0
  hits = accuracy([t["value"] for t in targets], predictions)["accuracy"]
  return {"gender_parity": parity, "accuracy": hits}


# --- Rank classification (score-based) ---------------------------------------


def rank_classification(metric_fns: Sequence[MetricFn],
                        targets_with_idx: bool = False) -> MetricFn:
  """A (targets, scores) metric: the best-scoring label is the prediction.

  For the rank-classification tasks, which repeat each example once per
  label. Each target is the rank postprocessor's tuple (idx, is_correct,
  weight, target length) where idx = (example id, label id); each score is
  the model's log-likelihood of that label's target text. Per example the
  argmax label becomes the prediction and the correct label the target
  (-1 when none is marked, e.g. unlabeled test data); then `metric_fns`
  run on those class ids as on a decoded task. With `targets_with_idx` the
  targets are {"value": class id, "idx": example id} (for `gender_parity`).
  """
  metric_fns = tuple(metric_fns)

  def metric(targets, scores):
    _check_same_length(targets, scores)
    # example id -> [(label id, is_correct, score)]
    rows = collections.defaultdict(list)
    for (idx, is_correct, _, _), score in zip(targets, scores):
      example, label = (int(i) for i in idx)
      rows[example].append((label, bool(is_correct), float(score)))
    gold, predicted = [], []
    for example in sorted(rows):
      labels = sorted(rows[example])
      best = max(labels, key=lambda row: row[2])[0]
      correct = [label for label, ok, _ in labels if ok]
      value = correct[0] if correct else -1
      gold.append({"value": value, "idx": example}
                  if targets_with_idx else value)
      predicted.append(best)
    out = {}
    for fn in metric_fns:
      out.update(fn(gold, predicted))
    return out

  metric.__name__ = "rank_classification"
  return metric

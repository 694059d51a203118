"""Metric functions for seqio tasks, in T5's conventions.

seqio picks a metric's kind from its positional arguments: `(targets,
predictions)` scores decoded text, `(targets, scores)` scores the model's
log-likelihood of the targets. Each returns a dict of named floats; accuracy
and BLEU are in percent, as T5 reports them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import sacrebleu


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

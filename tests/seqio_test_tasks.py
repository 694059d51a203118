"""Tiny seqio tasks for the runtime tests (a helper module, not tests).

Importing this module registers them (idempotently, so pytest re-imports
and `DatasetConfig.module = 'seqio_test_tasks'` are both fine):

* `pt_test_copy`: text-to-text copying of short letter strings; predict
  metric sequence accuracy. Feature lengths {'inputs': 24, 'targets': 12}
  fit every example (EOS included).
* `pt_test_rank`: the same kind of examples, scored rather than decoded:
  its metric takes `(targets, scores)`, so the evaluator must run
  `score_batch` (mean log-likelihood of the targets).
* `pt_test_mixture`: both, mixed at equal rates.

All use seqio.ByteVocabulary (259 ids) and fixed, seeded examples.
"""

from __future__ import annotations

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.tasks import metrics

COPY = "pt_test_copy"
RANK = "pt_test_rank"
MIXTURE = "pt_test_mixture"
FEATURE_LENGTHS = {"inputs": 24, "targets": 12}
VOCABULARY = seqio.ByteVocabulary()
SPLITS = {"train": 512, "validation": 16}
_LETTERS = np.array(list("abcdefghij"))


def copy_examples(split: str, seed_offset: int = 0) -> list[tuple[str, str]]:
  """(inputs, targets) pairs: "copy: <word>" -> "<word>", 3 to 8 letters.

  Inputs are at most 6 + 8 + EOS = 15 bytes, targets 8 + EOS = 9.
  """
  seed = seed_offset + {"train": 0, "validation": 1}[split]
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(SPLITS[split]):
    word = "".join(rng.choice(_LETTERS, size=int(rng.integers(3, 9))))
    out.append((f"copy: {word}", word))
  return out


def _source(seed_offset: int) -> seqio.FunctionDataSource:
  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    inputs, targets = zip(*copy_examples(split, seed_offset))
    return tf.data.Dataset.from_tensor_slices(
        {"inputs": list(inputs), "targets": list(targets)})
  return seqio.FunctionDataSource(dataset_fn, splits=tuple(SPLITS),
                                  num_input_examples=dict(SPLITS))


def _add_task(name: str, seed_offset: int, metric_fns) -> None:
  if name in seqio.TaskRegistry.names():
    return
  seqio.TaskRegistry.add(
      name,
      source=_source(seed_offset),
      preprocessors=[seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features={k: seqio.Feature(VOCABULARY, add_eos=True)
                       for k in ("inputs", "targets")},
      metric_fns=metric_fns)


def register() -> tuple[str, str, str]:
  """Registers the tasks and the mixture once; returns their names."""
  _add_task(COPY, 0, [metrics.sequence_accuracy])
  _add_task(RANK, 100, [metrics.mean_score])
  if MIXTURE not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(MIXTURE, [(COPY, 1.0), (RANK, 1.0)])
  return COPY, RANK, MIXTURE


register()

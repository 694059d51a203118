"""GLUE in T5's text-to-text format, and zero-shot QQP <-> MRPC transfer.

TFDS `glue/<task>:2.0.0`, formatted as T5's `preprocessors.glue` does: the
dataset name, then each text feature as `<key>: <text>` (keys sorted by
name), and the label's name as the target:

  sst2  "sst2 sentence: <s>"                        -> negative | positive
  mrpc  "mrpc sentence1: <s1> sentence2: <s2>"      -> not_equivalent |
                                                       equivalent
  qqp   "qqp question1: <q1> question2: <q2>"       -> not_duplicate |
                                                       duplicate
  rte   "rte sentence1: <s1> sentence2: <s2>"       -> entailment |
                                                       not_entailment

A target for an unlabeled example (label -1, the test splits) is "<unk>".
Predictions are mapped back to class ids (-1: not a label word, counted as
wrong); metrics are T5's: accuracy, plus F1 of the positive class for MRPC
and QQP.

Registered names (T5's `v002` became `v200` with TFDS glue 2.0.0):

* `glue_<task>_v200`: the format above.
* `taskless_glue_<task>_v200`: the leading dataset-name word removed
  ("sentence1: ... sentence2: ..."), as prompt tuning trains.
* `[taskless_]glue_<source>_to_<target>_v200` for (qqp, mrpc) and (mrpc,
  qqp): evaluation-only (validation split) zero-shot transfer tasks. The
  target dataset's examples keep their own field names but carry the
  source's name word ("qqp sentence1: ... sentence2: ..." for MRPC data),
  so a model trained on the source sees its own prefix; the postprocessor
  maps the source's label words onto the target's ("duplicate" ->
  "equivalent", "not_duplicate" -> "not_equivalent" and back) before the
  target's metrics.
* Mixtures `[taskless_]glue_<source>_to_<target>_zeroshot_v200`: train on
  the source task, evaluate on its validation set and on the transfer task.

The format building blocks here (`glue_text`, `remove_first_word`,
`label_to_class_id`) are shared with the SuperGLUE tasks (superglue.py).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.tasks import metrics
from prompt_tuning.tasks import vocabularies

VERSION = "2.0.0"
NAME_VERSION = "v200"
TASKS = ("sst2", "mrpc", "qqp", "rte")
# Label names by class id, as in TFDS.
LABELS = {
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "rte": ("entailment", "not_entailment"),
}
METRICS = {
    "sst2": (metrics.accuracy,),
    "mrpc": (metrics.f1_score_with_invalid, metrics.accuracy),
    "qqp": (metrics.f1_score_with_invalid, metrics.accuracy),
    "rte": (metrics.accuracy,),
}
# (source, target) -> {source label word: target label word}.
TRANSFERS = {
    ("qqp", "mrpc"): {"duplicate": "equivalent",
                      "not_duplicate": "not_equivalent"},
    ("mrpc", "qqp"): {"equivalent": "duplicate",
                      "not_equivalent": "not_duplicate"},
}
VARIANTS = ("", "taskless_")
UNKNOWN_LABEL = "<unk>"


# --- Text preprocessors -------------------------------------------------------


def glue_text(ds: tf.data.Dataset, benchmark_name: str,
              label_names: Sequence[str],
              feature_names: Optional[Sequence[str]] = None,
              id_key: Optional[str] = "idx") -> tf.data.Dataset:
  """Formats (Super)GLUE examples as T5 does.

  inputs: `<benchmark_name> <key>: <text> <key>: <text> ...` over
  `feature_names` (default: every feature but label and idx, sorted);
  targets: `label_names[label]`, or "<unk>" for label -1. `idx` is kept
  (under `id_key`) for metrics that need it; MultiRC's nested idx becomes
  `idx/paragraph`, `idx/question`, `idx/answer`, and its HTML (<br>, <b>)
  is removed from the inputs.
  """
  labels = tf.constant(list(label_names))

  def fn(x):
    keys = feature_names or sorted(set(x) - {"label", "idx"})
    parts = [benchmark_name]
    for key in keys:
      parts += [f"{key}:", x[key]]
    inputs = tf.strings.join(parts, separator=" ")
    label = tf.cast(x["label"], tf.int32)
    targets = tf.cond(label < 0, lambda: tf.constant(UNKNOWN_LABEL),
                      lambda: tf.gather(labels, label))
    out = {}
    if benchmark_name == "multirc":
      inputs = tf.strings.regex_replace(inputs, "<br>", " ")
      inputs = tf.strings.regex_replace(inputs, "<(/)?b>", "")
      for key in ("paragraph", "question", "answer"):
        out[f"idx/{key}"] = x["idx"][key]
    elif id_key:
      out["idx"] = x[id_key]
    out["inputs"] = inputs
    out["targets"] = targets
    return out

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


@seqio.map_over_dataset
def remove_first_word(x: Mapping[str, tf.Tensor],
                      key: str = "inputs") -> dict[str, tf.Tensor]:
  """Drops `x[key]` up to and including its first space: the "taskless"
  format ("rte hypothesis: ..." -> "hypothesis: ...")."""
  x = dict(x)
  x[key] = tf.strings.regex_replace(x[key], r"^[^ ]* ", "",
                                    replace_global=False)
  return x


@seqio.map_over_dataset
def replace_first_word(x: Mapping[str, tf.Tensor], word: str,
                       key: str = "inputs") -> dict[str, tf.Tensor]:
  """Replaces the leading dataset-name word of `x[key]` with `word`."""
  x = dict(x)
  x[key] = tf.strings.regex_replace(x[key], r"^[^ ]* ", word + " ",
                                    replace_global=False)
  return x


# --- Postprocessors -----------------------------------------------------------


def label_to_class_id(text: str, label_classes: Sequence[str],
                      **unused_kwargs) -> int:
  """The index of a label word in `label_classes`, or -1 if it is none
  (for targets "<unk>" of unlabeled data; for predictions a wrong answer)."""
  return label_classes.index(text) if text in label_classes else -1


def map_label_words(text: str, mapping: Mapping[str, str],
                    **unused_kwargs) -> str:
  """`mapping[text]` when `text` is one of its keys, else `text` unchanged
  (so targets, already in the target's words, pass through)."""
  return mapping.get(text.strip(), text)


def transfer_postprocessor(text: str, mapping: Mapping[str, str],
                           label_classes: Sequence[str],
                           **kwargs: Any) -> int:
  """The source's label word mapped to the target's, then to a class id."""
  return label_to_class_id(map_label_words(text, mapping), label_classes,
                           **kwargs)


# --- Registration -------------------------------------------------------------


def task_name(task: str, variant: str = "") -> str:
  """`glue_<task>_v200` with the variant prefix ("" or "taskless_")."""
  return f"{variant}glue_{task}_{NAME_VERSION}"


def transfer_name(source: str, target: str, variant: str = "") -> str:
  return f"{variant}glue_{source}_to_{target}_{NAME_VERSION}"


def zeroshot_mixture_name(source: str, target: str, variant: str = "") -> str:
  return f"{variant}glue_{source}_to_{target}_zeroshot_{NAME_VERSION}"


def output_features() -> dict[str, seqio.Feature]:
  """inputs and targets in T5's vocabulary, each ending in EOS."""
  vocab = vocabularies.t5_vocabulary()
  return {key: seqio.Feature(vocab, add_eos=True)
          for key in ("inputs", "targets")}


def _text_preprocessors(task: str, variant: str,
                        name_word: Optional[str] = None) -> list[Any]:
  steps = [functools.partial(glue_text, benchmark_name=task,
                             label_names=LABELS[task])]
  if variant == "taskless_":
    steps.append(remove_first_word)
  elif name_word:
    steps.append(functools.partial(replace_first_word, word=name_word))
  return steps


_TOKEN_PREPROCESSORS = (
    seqio.preprocessors.tokenize,
    seqio.CacheDatasetPlaceholder(),
    seqio.preprocessors.append_eos_after_trim,
)


def _add_task(name: str, source: seqio.DataSource, preprocessors, postprocess,
              metric_fns) -> None:
  if name in seqio.TaskRegistry.names():
    return
  seqio.TaskRegistry.add(
      name, source=source,
      preprocessors=list(preprocessors) + list(_TOKEN_PREPROCESSORS),
      output_features=output_features(), postprocess_fn=postprocess,
      metric_fns=list(metric_fns))


def _source(task: str,
            splits: Sequence[str] = ("train", "validation", "test")):
  # Named splits: seqio then needs no TFDS metadata to list them.
  return seqio.TfdsDataSource(tfds_name=f"glue/{task}:{VERSION}",
                              splits=tuple(splits))


def register() -> list[str]:
  """Registers every GLUE task and mixture once; returns their names."""
  names = []
  for variant in VARIANTS:
    for task in TASKS:
      name = task_name(task, variant)
      _add_task(name, _source(task), _text_preprocessors(task, variant),
                functools.partial(label_to_class_id,
                                  label_classes=LABELS[task]),
                METRICS[task])
      names.append(name)
    for (source, target), mapping in TRANSFERS.items():
      name = transfer_name(source, target, variant)
      _add_task(
          name, _source(target, splits=("validation",)),
          _text_preprocessors(target, variant, name_word=source),
          functools.partial(transfer_postprocessor, mapping=mapping,
                            label_classes=LABELS[target]),
          METRICS[target])
      names.append(name)
      mixture = zeroshot_mixture_name(source, target, variant)
      if mixture not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(
            mixture, [task_name(source, variant), name], default_rate=1.0)
      names.append(mixture)
  return names


NAMES = tuple(register())

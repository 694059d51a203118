"""SuperGLUE in T5's text-to-text format, with the official metrics.

TFDS `super_glue/<task>:1.0.2`. Inputs and targets follow T5 (its
`glue_utils` and `preprocessors.glue`: the dataset name, then `<key>:
<text>` for each text feature, keys sorted unless noted; the label's name
as the target, "<unk>" when unlabeled):

  boolq    "boolq passage: <p> question: <q>"                 -> False | True
  cb       "cb hypothesis: <h> premise: <p>"  -> entailment | contradiction |
                                                 neutral
  copa     "copa choice1: <c1> choice2: <c2> premise: <p> question: <cause|
           effect>"                                      -> choice1 | choice2
  multirc  "multirc question: <q> answer: <a> paragraph: <p>" (<br>, <b>
           removed; one example per answer option)        -> False | True
  record   "record query: <q with @placeholder> entities: <e1>, <e2>, ...
           passage: <p>" (@highlight lines joined into sentences)
           -> one example per correct answer, that answer as the target
  rte      "rte hypothesis: <h> premise: <p>"   -> entailment | not_entailment
  wic      "wic sentence1: <s1> sentence2: <s2> word: <w>"    -> False | True
  axb      as rte (sentence1 -> premise, sentence2 -> hypothesis); test only
  axg      as rte; test only
  wsc      T5's "simple" WSC (TFDS wsc.fixed): "wsc: <text with the pronoun
           as *pronoun*>" -> the candidate referent's text. Trained on the
           examples whose candidate is the referent, evaluated on all: the
           postprocessor says whether the prediction names the candidate,
           and accuracy compares that with the label.

Metrics (in percent): accuracy (boolq, copa, rte, wic, wsc); CB macro F1
over its 3 classes (`mean_3class_f1`) and accuracy; MultiRC F1a over all
answer options (`f1a`) and exact match grouped by question
(`exact_match`); ReCoRD `em` and `f1`, max over a query's answers, one
prediction per query; AX-b `matthews_corrcoef` (and accuracy); AX-g
`gender_parity` and accuracy.

Registered names, for each variant prefix <V> in "", "taskless_",
"task_index_":

* `<V>super_glue_<task>_v102` for boolq, cb, copa, multirc, record, rte,
  wic, axb, axg;
* `<V>super_glue_wsc_v102_simple_train` (train split, correct referents
  only), `<V>super_glue_wsc_v102_simple_eval` (validation and test, all),
  and the mixture `<V>super_glue_wsc_and_dev_v102_simple` of the two;
* `<V>super_glue_<task>_v102_rank_classification` for boolq, cb, copa, rte,
  wic, axb, axg (validation and test; axb/axg test): each example repeated
  once per label word, scored by the model's log-likelihood of that label
  word; the best-scoring label is the prediction, under the task's metrics.
  Train with the plain task: the inputs and label words are the same.
* `<V>super_glue_v102_proportional`: all of the above but the rank tasks,
  each at a rate equal to its number of train examples (seqio's
  `num_input_examples`, as T5's SuperGLUE mixture; uncapped like T5's),
  0 for tasks without a train split (axb, axg, wsc eval). TFDS counts
  ReCoRD's queries (100,730) where T5 counted its one-per-answer copies.

Variants: "taskless_" removes the leading dataset-name word ("hypothesis:
... premise: ..."; "wsc:" too). "task_index_" is taskless with one token in
front of the inputs naming the task, for multitask prompts: task index K
(TASK_INDEX: boolq 0, cb 1, copa 2, multirc 3, record 4, rte 5 (also axb,
axg, cast as RTE), wic 6, wsc 7) is the sentinel `<extra_id_K>`, id
`vocab_size - 1 - K` (32099 - K with T5's 32,100 ids), as google-research's
prompt-tuning writes it, so that `MultiTaskPrompt(num_tasks=8,
task_token_offset=task_token_offset())` (32099, `<extra_id_0>`) reads the
same task from that project's preprocessed data and ours.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.tasks import glue
from prompt_tuning.tasks import metrics
from prompt_tuning.tasks import vocabularies

VERSION = "1.0.2"
NAME_VERSION = "v102"
TASKS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "axb",
         "axg")
RANK_TASKS = ("boolq", "cb", "copa", "rte", "wic", "axb", "axg")
VARIANTS = ("", "taskless_", "task_index_")
# Label names by class id, as in TFDS.
LABELS = {
    "boolq": ("False", "True"),
    "cb": ("entailment", "contradiction", "neutral"),
    "copa": ("choice1", "choice2"),
    "multirc": ("False", "True"),
    "rte": ("entailment", "not_entailment"),
    "wic": ("False", "True"),
    "axb": ("entailment", "not_entailment"),
    "axg": ("entailment", "not_entailment"),
}
# The diagnostics are cast as RTE (same name word, same task index).
_BENCHMARK_NAME = {"axb": "rte", "axg": "rte"}
# T5's explicit feature orders; the others sort their text features.
_FEATURE_NAMES = {
    "multirc": ("question", "answer", "paragraph"),
    "wic": ("sentence1", "sentence2", "word"),  # start/end indices unused.
}
_SPLITS = ("train", "validation", "test")
_TEST_ONLY = ("axb", "axg")

TASK_INDEX = {"boolq": 0, "cb": 1, "copa": 2, "multirc": 3, "record": 4,
              "rte": 5, "axb": 5, "axg": 5, "wic": 6, "wsc": 7}
NUM_TASK_INDICES = 8


# --- Task tokens (the task_index variant) -------------------------------------


def task_token_offset(vocabulary: Optional[seqio.Vocabulary] = None) -> int:
  """MultiTaskPrompt.task_token_offset for the task_index tasks: the id of
  `<extra_id_0>` (32099 for T5's vocabulary); this minus the first encoder
  token is the task index."""
  vocabulary = vocabulary or vocabularies.t5_vocabulary()
  return vocabulary.vocab_size - 1


def task_token_id(task_index: int,
                  vocabulary: Optional[seqio.Vocabulary] = None) -> int:
  """The id of task `task_index`'s leading token, `<extra_id_K>`."""
  if not 0 <= task_index < NUM_TASK_INDICES:
    raise ValueError(f"task_index={task_index} must be in "
                     f"[0, {NUM_TASK_INDICES}).")
  return task_token_offset(vocabulary) - task_index


def add_task_token(ds: tf.data.Dataset,
                   output_features: Mapping[str, seqio.Feature],
                   task_index: int, key: str = "inputs") -> tf.data.Dataset:
  """Puts task `task_index`'s token in front of the tokenized `key`."""
  token = task_token_id(task_index, output_features[key].vocabulary)

  def fn(x):
    x = dict(x)
    x[key] = tf.concat([tf.constant([token], x[key].dtype), x[key]], axis=0)
    return x

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


# --- Text preprocessors -------------------------------------------------------


def record(ds: tf.data.Dataset) -> tf.data.Dataset:
  """ReCoRD as T5 formats it: one example per correct answer (one with
  target "<unk>" when there are none), every copy keeping the full
  `answers` list and `idx/passage`, `idx/query` for the metric."""

  def fn(x):
    passage = tf.strings.regex_replace(
        x["passage"], r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
    passage = tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")
    inputs = tf.strings.join([
        "record query:", x["query"], "entities:",
        tf.strings.reduce_join(x["entities"], separator=", "), "passage:",
        passage
    ], separator=" ")
    answers = x["answers"]
    targets = tf.cond(tf.size(answers) > 0, lambda: answers,
                      lambda: tf.constant([glue.UNKNOWN_LABEL]))
    copies = tf.size(targets)
    return {
        "idx/passage": tf.fill([copies], x["idx"]["passage"]),
        "idx/query": tf.fill([copies], x["idx"]["query"]),
        "inputs": tf.fill([copies], inputs),
        "targets": targets,
        "answers": tf.tile(answers[tf.newaxis], [copies, 1]),
    }

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


# Two wsc.fixed texts whose span2_index does not point at the pronoun; T5
# fixes them by hand. Text -> (before, after) the marked pronoun.
_WSC_FIXES = {
    ("The boy continued to whip the pony , and eventually the pony threw "
     "him over. John laughed out quite loud. \"Good for him,\" he said. "): (
         "The boy continued to whip the pony , and eventually the pony "
         "threw him over. John laughed out quite loud. \"Good for ", " ,\" "
         "he said."),
    ("When they had eventually calmed down a bit , and had gotten home, Mr. "
     "Farley put the magic pebble in an iron safe . Some day they might want "
     "to use it , but really for now, what more could they wish for?"): (
         "When they had eventually calmed down a bit , and had gotten home, "
         "Mr. Farley put the magic pebble in an iron safe . Some day they "
         "might want to use ", " , but really for now, what more could they "
         "wish for?"),
}


def _wsc_marked_text(x: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """The text with its pronoun (word span2_index) shown as *span2_text*."""
  marked = tf.strings.join(["*", x["span2_text"], "*"])
  words = tf.strings.split(x["text"], sep=" ")
  count = tf.size(words, out_type=tf.int32)
  index = tf.cast(x["span2_index"], tf.int32)
  safe = tf.clip_by_value(index, 0, tf.maximum(count - 1, 0))
  joined = tf.strings.reduce_join(
      tf.concat([words[:safe], [marked], words[safe + 1:]], axis=0),
      separator=" ")
  # An index outside the text (never in the real data) leaves it unmarked.
  text = tf.where((index >= 0) & (index < count), joined, x["text"])
  for original, (before, after) in _WSC_FIXES.items():
    text = tf.where(tf.equal(x["text"], original),
                    tf.strings.join([before, marked, after]), text)
  return text


def wsc_simple(ds: tf.data.Dataset,
               correct_referent_only: bool = False) -> tf.data.Dataset:
  """T5's simple WSC: "wsc: <text with *pronoun*>" -> the candidate
  referent (span1_text), keeping `label` and `idx` for evaluation.

  `correct_referent_only` (training) keeps the examples whose candidate is
  the referent (label 1): the model learns to name the referent.
  """
  if correct_referent_only:
    ds = ds.filter(lambda x: tf.equal(x["label"], 1))

  def fn(x):
    return {
        "inputs": tf.strings.join(["wsc:", _wsc_marked_text(x)],
                                  separator=" "),
        "targets": x["span1_text"],
        "label": x["label"],
        "idx": x["idx"],
    }

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def rank_classification(ds: tf.data.Dataset,
                        label_names: Sequence[str]) -> tf.data.Dataset:
  """One copy of each formatted example per label word (the targets), for
  scoring: `idx` = [example idx, label id], `is_correct` marks the copy
  whose label word was the example's target (none for "<unk>")."""
  labels = tf.constant(list(label_names))
  count = len(label_names)

  def fn(x):
    example = tf.fill([count], tf.cast(x["idx"], tf.int32))
    return {
        "idx": tf.stack([example, tf.range(count, dtype=tf.int32)], axis=1),
        "inputs": tf.fill([count], x["inputs"]),
        "targets": labels,
        "is_correct": tf.equal(labels, x["targets"]),
    }

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


# --- Postprocessors -----------------------------------------------------------
# seqio calls them as fn(text, example=<the cached example>, is_target=...).


def multirc_postprocessor(text: str, example: Optional[Mapping] = None,
                          is_target: bool = False) -> dict[str, Any]:
  """{"value": 0/1 (-1: neither)}; targets add the question's "group"."""
  out = {"value": glue.label_to_class_id(text, LABELS["multirc"])}
  if is_target:
    out["group"] = (int(example["idx/paragraph"]),
                    int(example["idx/question"]))
  return out


def record_postprocessor(text: str, example: Optional[Mapping] = None,
                         is_target: bool = False) -> dict[str, Any]:
  """{"value": the answer}; targets: all answers and the query's group."""
  if is_target:
    return {
        "value": [_text(a) for a in example["answers"]],
        "group": (int(example["idx/passage"]), int(example["idx/query"])),
    }
  return {"value": text}


def axg_postprocessor(text: str, example: Optional[Mapping] = None,
                      is_target: bool = False) -> Any:
  """The class id; targets are {"value", "idx"} for gender parity."""
  value = glue.label_to_class_id(text, LABELS["axg"])
  if is_target:
    return {"value": value, "idx": int(example["idx"])}
  return value


_DETERMINERS = frozenset({
    "a", "an", "few", "her", "his", "each", "every", "many", "much", "my",
    "our", "some", "that", "the", "their", "these", "this", "those", "which",
    "whose", "your"
})


def _wsc_words(text: str) -> str:
  text = text.strip().lower()
  return " ".join(w for w in text.split(" ") if w not in _DETERMINERS)


def wsc_simple_postprocessor(text: str, example: Optional[Mapping] = None,
                             is_target: bool = False) -> int:
  """Targets: the label (is the candidate the referent?). Predictions: 1 if
  the predicted referent names the candidate, 0 if not, -1 if empty.

  As T5: case and determiners are ignored; one word set containing the
  other counts as naming it ("fuzzy bunny" ~ "bunny"), unless only one of
  them is possessive ("Bob" is not "Bob's hat").
  """
  if is_target:
    return int(example["label"])
  prediction = _wsc_words(text)
  if not prediction:
    return -1
  referent = _wsc_words(_text(example["targets_pretokenized"]))
  if ("'" in prediction) != ("'" in referent):
    return 0
  predicted, actual = set(prediction.split(" ")), set(referent.split(" "))
  return int(predicted <= actual or actual <= predicted)


def rank_classification_postprocessor(score: Any,
                                      example: Optional[Mapping] = None,
                                      is_target: bool = False) -> Any:
  """Targets: (idx, is_correct, weight 1.0, target length), the tuple
  `metrics.rank_classification` reads; scores pass through."""
  if is_target:
    return (tuple(int(i) for i in example["idx"]),
            bool(example["is_correct"]), 1.0, len(example["targets"]))
  return score


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# --- Metrics and postprocessors per task --------------------------------------

METRICS = {
    "boolq": (metrics.accuracy,),
    "cb": (metrics.mean_multiclass_f1(3), metrics.accuracy),
    "copa": (metrics.accuracy,),
    "multirc": (metrics.multirc_f1_over_all_answers,
                metrics.multirc_exact_match),
    "record": (metrics.record_squad,),
    "rte": (metrics.accuracy,),
    "wic": (metrics.accuracy,),
    "axb": (metrics.matthews_corrcoef, metrics.accuracy),
    "axg": (metrics.gender_parity,),
    "wsc": (metrics.accuracy,),
}


def _postprocessor(task: str):
  if task == "multirc":
    return multirc_postprocessor
  if task == "record":
    return record_postprocessor
  if task == "axg":
    return axg_postprocessor
  return functools.partial(glue.label_to_class_id, label_classes=LABELS[task])


def _rank_metric(task: str):
  return metrics.rank_classification(METRICS[task],
                                     targets_with_idx=task == "axg")


# --- Registration -------------------------------------------------------------


def task_name(task: str, variant: str = "", rank: bool = False) -> str:
  """`<variant>super_glue_<task>_v102[_rank_classification]`."""
  suffix = "_rank_classification" if rank else ""
  return f"{variant}super_glue_{task}_{NAME_VERSION}{suffix}"


def wsc_names(variant: str = "") -> tuple[str, str, str]:
  """(train task, eval task, their mixture) of simple WSC."""
  base = f"{variant}super_glue_wsc_{NAME_VERSION}_simple"
  return (f"{base}_train", f"{base}_eval",
          f"{variant}super_glue_wsc_and_dev_{NAME_VERSION}_simple")


def mixture_name(variant: str = "") -> str:
  return f"{variant}super_glue_{NAME_VERSION}_proportional"


def _format(task: str) -> list[Any]:
  """The text preprocessors that produce T5's plain format."""
  if task == "record":
    return [record]
  steps = []
  if task == "axb":
    steps.append(functools.partial(
        seqio.preprocessors.rekey,
        key_map={"premise": "sentence1", "hypothesis": "sentence2",
                 "label": "label", "idx": "idx"}))
  steps.append(functools.partial(
      glue.glue_text, benchmark_name=_BENCHMARK_NAME.get(task, task),
      label_names=LABELS[task], feature_names=_FEATURE_NAMES.get(task)))
  return steps


def _variant_steps(variant: str, text_steps: list[Any]) -> list[Any]:
  """The text steps, then the variant's edit of the inputs' text."""
  steps = list(text_steps)
  if variant:  # taskless_ and task_index_ both drop the name word.
    steps.append(glue.remove_first_word)
  return steps


def _token_steps(task: str, variant: str) -> list[Any]:
  steps = [seqio.preprocessors.tokenize]
  if variant == "task_index_":
    steps.append(functools.partial(add_task_token,
                                   task_index=TASK_INDEX[task]))
  steps += [seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim]
  return steps


def _add_task(name: str, tfds_name: str, splits: Sequence[str],
              preprocessors: list[Any], postprocess, metric_fns) -> None:
  if name in seqio.TaskRegistry.names():
    return
  seqio.TaskRegistry.add(
      name,
      source=seqio.TfdsDataSource(tfds_name=tfds_name, splits=tuple(splits)),
      preprocessors=preprocessors, output_features=glue.output_features(),
      postprocess_fn=postprocess, metric_fns=list(metric_fns))


def train_examples(task: seqio.Task) -> float:
  """A task's mixing rate: its train examples (0 without a train split)."""
  if "train" not in task.splits:
    return 0.0
  return float(task.num_input_examples("train"))


def _register_variant(variant: str) -> list[str]:
  names = []
  for task in TASKS:
    splits = ("test",) if task in _TEST_ONLY else _SPLITS
    tfds_name = f"super_glue/{task}:{VERSION}"
    text = _variant_steps(variant, _format(task))
    _add_task(task_name(task, variant), tfds_name, splits,
              text + _token_steps(task, variant), _postprocessor(task),
              METRICS[task])
    names.append(task_name(task, variant))
    if task in RANK_TASKS:
      rank_splits = ("test",) if task in _TEST_ONLY else ("validation",
                                                          "test")
      rank_text = text + [functools.partial(rank_classification,
                                            label_names=LABELS[task])]
      _add_task(task_name(task, variant, rank=True), tfds_name, rank_splits,
                rank_text + _token_steps(task, variant),
                rank_classification_postprocessor, [_rank_metric(task)])
      names.append(task_name(task, variant, rank=True))

  train, evaluation, wsc_mixture = wsc_names(variant)
  wsc_tfds = f"super_glue/wsc.fixed:{VERSION}"
  for name, splits, only_correct in ((train, ("train",), True),
                                     (evaluation, ("validation", "test"),
                                      False)):
    text = _variant_steps(variant, [functools.partial(
        wsc_simple, correct_referent_only=only_correct)])
    _add_task(name, wsc_tfds, splits, text + _token_steps("wsc", variant),
              None if only_correct else wsc_simple_postprocessor,
              () if only_correct else METRICS["wsc"])
  names += [train, evaluation]
  if wsc_mixture not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(wsc_mixture, [train, evaluation],
                              default_rate=1.0)
  names.append(wsc_mixture)

  mixture = mixture_name(variant)
  if mixture not in seqio.MixtureRegistry.names():
    members = [task_name(task, variant) for task in TASKS] + [train,
                                                               evaluation]
    seqio.MixtureRegistry.add(mixture, members, default_rate=train_examples)
  names.append(mixture)
  return names


def register() -> list[str]:
  """Registers every SuperGLUE task and mixture once; returns their names."""
  return [name for variant in VARIANTS for name in _register_variant(variant)]


NAMES = tuple(register())

"""Downstream tasks on the shipped Bible corpus, for the papers' studies.

All in the shipped bases' vocabulary (`vocabularies.bible_vocabulary()`),
and evaluated on held-out verses only: the references of
data/heldout_refs.txt, none of whose verses any pretraining document holds
in any version. No train split holds a held-out verse, nor a verse whose
text contains a held-out verse's text. data/README.md ("Downstream
classification data") has the provenance, split rules and counts;
scripts/build_downstream_data.py rebuilds the files.

* `bible_es_en_msp`: Spanish -> English verse translation in MSP's
  decoder-only format (inputs = the Spanish verse, targets = the English
  one), the reverse of bible.py's `bible_en_es_msp`, on the demo's pairs
  (data/bible_en_es.tsv.gz) minus the held-out verses in its train split.
  BLEU and chrF.
* `bible_canon` (data/bible_canon.tsv.gz): inputs = a WEB verse, bare, as
  the translation tasks' inputs are (the trained prompt is what asks);
  targets = its book's part of the canon, one of CANON_LABELS. Acts is
  history (see data/README.md). Train: 600 verses per class (apocalypse:
  all 375 it has); validation and test: every held-out verse of the 66
  books, in the canon's proportions (history the most, apocalypse 2%), so
  macro F1 is reported beside accuracy.
* `bible_paraphrase_ot`, `bible_paraphrase_nt`
  (data/bible_paraphrase.tsv.gz): inputs = "sentence1: <WEB verse>
  sentence2: <KJV verse>" (GLUE MRPC's taskless format); targets = "yes"
  when both are the same verse, "no" when the KJV one is a nearby verse of
  the same book and length. Each verse gives one pair of each, so the
  labels are balanced. Old and New Testament verses only, respectively:
  train a prompt on one and evaluate it on the other for domain transfer
  (Lester et al.'s QQP -> MRPC). Accuracy and F1 of "yes".
* `bible_paraphrase_ot_lm`, `bible_paraphrase_nt_lm` (and `_lm_rank`): the
  same pairs for decoder-only bases, written as bible.py's `_lm` tasks are:
  the inputs end in a newline instead of an EOS, so the converter joins
  them into "sentence1: ... sentence2: ...\n<label></s>" (a decoder-only
  base has learnt that what follows an EOS is an unrelated document).
* `bible_canon_rank`, `bible_paraphrase_ot_rank`, `bible_paraphrase_nt_rank`:
  rank classification, as superglue.py's `_rank_classification` tasks:
  validation and test only, each example repeated once per label word
  (`is_correct` marks the right one, `idx` = [example, label]); the
  label the model scores likeliest is the prediction, under the plain
  task's metrics. Train with the plain task: inputs and label words are
  the same.

* `bible_en_es_design`, `bible_canon_design_rank`: prompt design (Lester
  et al.'s third arm: a hand-written prompt, the model frozen, nothing
  trained), validation and test only. Translation: the English verse then
  a newline, which is how the bilingual pretraining documents hand over
  from English to Spanish (DESIGN_SEPARATOR); canon: CANON_DESIGN_PROMPT,
  which names the seven labels, before the verse, scored by rank
  classification. Evaluate the base itself on them (the eval binary with
  CHECKPOINT_PATH=None and methods/model_tuning.gin).

Classification targets are mapped back to class ids (glue's
`label_to_class_id`: -1 for a prediction that is no label word, counted as
wrong). Every file is read on first use, not at import.
"""

from __future__ import annotations

import csv
import functools
import gzip
import pathlib
from typing import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.tasks import demo
from prompt_tuning.tasks import glue
from prompt_tuning.tasks import metrics
from prompt_tuning.tasks import superglue
from prompt_tuning.tasks import vocabularies

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"
HELDOUT_FILE = DATA_DIR / "heldout_refs.txt"
CANON_FILE = DATA_DIR / "bible_canon.tsv.gz"
PARAPHRASE_FILE = DATA_DIR / "bible_paraphrase.tsv.gz"
CANON_COLUMNS = ("ref", "split", "label", "verse")
PARAPHRASE_COLUMNS = ("testament", "split", "label", "ref1", "ref2",
                      "sentence1", "sentence2")
SPLITS = ("train", "validation", "test")
RANK_SPLITS = ("validation", "test")
BUILD_COMMAND = "`python scripts/build_downstream_data.py`"

# Label words by class id.
CANON_LABELS = ("law", "history", "wisdom", "prophets", "gospels", "letters",
                "apocalypse")
PARAPHRASE_LABELS = ("no", "yes")
TESTAMENTS = ("ot", "nt")

MSP_ES_EN_TASK = "bible_es_en_msp"
TRANSLATION_DESIGN_TASK = "bible_en_es_design"
CANON_DESIGN_TASK = "bible_canon_design_rank"
# The prompts of prompt design. The translation one is the pretraining
# documents' own hand-over from an English passage to its Spanish one.
DESIGN_SEPARATOR = "\n"
CANON_DESIGN_PROMPT = ("Which part of the Bible is this verse from: law, "
                       "history, wisdom, prophets, gospels, letters or "
                       "apocalypse? Verse:")
CANON_TASK = "bible_canon"
PARAPHRASE_TASKS = {f"bible_paraphrase_{t}": t for t in TESTAMENTS}
# Decoder-only variants: the inputs end in this instead of an EOS.
LM_SUFFIX = "_lm"
LM_SEPARATOR = "\n"
RANK_SUFFIX = "_rank"

# What the shipped files hold (tests check it); seqio's mixing rates read
# these without opening the files.
NUM_EXAMPLES = {
    MSP_ES_EN_TASK: {"train": 27970, "validation": 500, "test": 500},
    CANON_TASK: {"train": 3975, "validation": 898, "test": 915},
    "bible_paraphrase_ot": {"train": 4000, "validation": 1334, "test": 1434},
    "bible_paraphrase_nt": {"train": 4000, "validation": 460, "test": 396},
}
NUM_EXAMPLES.update({name + LM_SUFFIX: NUM_EXAMPLES[name]
                     for name in PARAPHRASE_TASKS})
# Pieces, EOS included, that hold >99.8% of the inputs whole (all splits);
# targets are one label word ("apocalypse", the longest, is 6 pieces + EOS).
FEATURE_LENGTHS = {
    CANON_TASK: {"inputs": 80, "targets": 8},
    "bible_paraphrase_ot": {"inputs": 160, "targets": 8},
    "bible_paraphrase_nt": {"inputs": 160, "targets": 8},
}


# --- Data ---------------------------------------------------------------------


def _read_tsv(path: pathlib.Path,
              columns: Sequence[str]) -> tuple[tuple[str, ...], ...]:
  if not path.is_file():
    raise FileNotFoundError(
        f"the downstream data file {path} is missing; reinstall the package "
        f"(setup.py ships tasks/data/*) or rebuild it with {BUILD_COMMAND}.")
  with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
    reader = csv.reader(f, delimiter="\t")
    header = tuple(next(reader))
    if header != tuple(columns):
      raise ValueError(f"{path} has columns {header}, expected "
                       f"{tuple(columns)}; rebuild it with {BUILD_COMMAND}.")
    return tuple(tuple(row) for row in reader)


def _check_split(split: str, splits: Sequence[str] = SPLITS) -> None:
  if split not in splits:
    raise ValueError(f"no split {split!r}; use one of {list(splits)}.")


@functools.lru_cache(maxsize=None)
def heldout_refs() -> dict[str, str]:
  """{ref: set} of data/heldout_refs.txt: the verses pretraining never saw
  (sets demo_validation, demo_test, downstream_heldout)."""
  if not HELDOUT_FILE.is_file():
    raise FileNotFoundError(
        f"{HELDOUT_FILE} is missing; reinstall the package or rebuild it "
        "with `python scripts/build_pretraining_data.py`.")
  lines = HELDOUT_FILE.read_text(encoding="utf-8").splitlines()
  if lines[0] != "ref\tset":
    raise ValueError(f"{HELDOUT_FILE} starts with {lines[0]!r}, not the "
                     "header 'ref<TAB>set'; rebuild it with "
                     "`python scripts/build_pretraining_data.py`.")
  return dict(line.split("\t") for line in lines[1:])


@functools.lru_cache(maxsize=None)
def translation_pairs(split: str) -> tuple[tuple[str, str, str], ...]:
  """The demo's (ref, en, es) pairs of `split`, held-out verses removed
  from train (validation and test are held out already)."""
  _check_split(split)
  held = heldout_refs()
  return tuple(row for row in demo.verses(split)
               if split != "train" or row[0] not in held)


@functools.lru_cache(maxsize=None)
def canon_examples(split: str) -> tuple[tuple[str, str, str], ...]:
  """The split's (ref, label, WEB verse), in canonical order."""
  _check_split(split)
  return tuple((ref, label, verse) for ref, row_split, label, verse in
               _read_tsv(CANON_FILE, CANON_COLUMNS) if row_split == split)


@functools.lru_cache(maxsize=None)
def paraphrase_examples(testament: str, split: str
                        ) -> tuple[tuple[str, str, str, str, str], ...]:
  """The split's (label, ref1, ref2, WEB verse of ref1, KJV verse of
  ref2) of one testament ("ot" or "nt"): for each verse a "yes" pair, then
  its "no" pair, in canonical order."""
  _check_split(split)
  if testament not in TESTAMENTS:
    raise ValueError(f"no testament {testament!r}; use one of "
                     f"{list(TESTAMENTS)}.")
  return tuple(row[2:] for row in _read_tsv(PARAPHRASE_FILE,
                                            PARAPHRASE_COLUMNS)
               if row[0] == testament and row[1] == split)


def _translation_dataset(split: str, shuffle_files: bool,
                         seed: int | None = None) -> tf.data.Dataset:
  del shuffle_files, seed  # One in-memory "file"; seqio shuffles examples.
  refs, en, es = zip(*translation_pairs(split))
  return tf.data.Dataset.from_tensor_slices(
      {"ref": list(refs), "en": list(en), "es": list(es)})


def _canon_dataset(split: str, shuffle_files: bool,
                   seed: int | None = None) -> tf.data.Dataset:
  """{"idx", "ref", "inputs", "targets"}: the verse and its label word."""
  del shuffle_files, seed
  refs, labels, verses = zip(*canon_examples(split))
  return tf.data.Dataset.from_tensor_slices({
      "idx": tf.range(len(refs), dtype=tf.int32), "ref": list(refs),
      "inputs": list(verses), "targets": list(labels)})


def _paraphrase_dataset(testament: str) -> Callable[..., tf.data.Dataset]:
  def dataset_fn(split: str, shuffle_files: bool,
                 seed: int | None = None) -> tf.data.Dataset:
    """{"idx", "ref1", "ref2", "sentence1", "sentence2", "targets"}."""
    del shuffle_files, seed
    labels, ref1, ref2, s1, s2 = zip(*paraphrase_examples(testament, split))
    return tf.data.Dataset.from_tensor_slices({
        "idx": tf.range(len(labels), dtype=tf.int32), "ref1": list(ref1),
        "ref2": list(ref2), "sentence1": list(s1), "sentence2": list(s2),
        "targets": list(labels)})
  return dataset_fn


# --- Formats ------------------------------------------------------------------


def msp_es_en_format(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """{"en", "es"} -> MSP's {"inputs": <es>, "targets": <en>} (demo's
  `msp_format`, reversed)."""
  return dataset.map(lambda ex: {"inputs": ex["es"], "targets": ex["en"]},
                     num_parallel_calls=tf.data.AUTOTUNE)


def en_es_design_format(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """{"en", "es"} -> {"inputs": "<en>\\n", "targets": <es>}."""
  return dataset.map(
      lambda ex: {"inputs": ex["en"] + DESIGN_SEPARATOR, "targets": ex["es"]},
      num_parallel_calls=tf.data.AUTOTUNE)


@seqio.map_over_dataset
def canon_design_format(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """The verse after CANON_DESIGN_PROMPT."""
  return {**x, "inputs": tf.strings.join([CANON_DESIGN_PROMPT, x["inputs"]],
                                         separator=" ")}


@seqio.map_over_dataset
def paraphrase_format(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """MRPC's taskless T5 format (glue.py's `glue_text` without the name
  word): inputs "sentence1: <s1> sentence2: <s2>"; the label word stays
  the target, `idx`, `ref1` and `ref2` stay for checks."""
  x = dict(x)
  x["inputs"] = tf.strings.join(
      ["sentence1:", x.pop("sentence1"), "sentence2:", x.pop("sentence2")],
      separator=" ")
  return x


@seqio.map_over_dataset
def lm_separator_format(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """The inputs, then LM_SEPARATOR (their EOS is left off: `_lm` tasks)."""
  return {**x, "inputs": tf.strings.join([x["inputs"], LM_SEPARATOR])}


# --- Registration -------------------------------------------------------------


def _output_features(inputs_eos: bool = True) -> dict[str, seqio.Feature]:
  vocabulary = vocabularies.bible_vocabulary()
  return {"inputs": seqio.Feature(vocabulary, add_eos=inputs_eos),
          "targets": seqio.Feature(vocabulary, add_eos=True)}


def _add(name: str, dataset_fn, splits: Sequence[str],
         num_examples: Mapping[str, int], text_steps: list, postprocess,
         metric_fns, inputs_eos: bool = True) -> None:
  if name in seqio.TaskRegistry.names():
    return
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(
          dataset_fn, splits=tuple(splits),
          num_input_examples={s: num_examples[s] for s in splits}),
      preprocessors=[*text_steps, seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features=_output_features(inputs_eos),
      postprocess_fn=postprocess, metric_fns=list(metric_fns))


def _add_classification(name: str, dataset_fn, text_steps: list,
                        labels: Sequence[str], metric_fns,
                        inputs_eos: bool = True) -> tuple[str, str]:
  """The task and its rank-classification variant; their names."""
  _add(name, dataset_fn, SPLITS, NUM_EXAMPLES[name], text_steps,
       functools.partial(glue.label_to_class_id, label_classes=labels),
       metric_fns, inputs_eos)
  rank = name + RANK_SUFFIX
  _add(rank, dataset_fn, RANK_SPLITS, NUM_EXAMPLES[name],
       text_steps + [functools.partial(superglue.rank_classification,
                                       label_names=labels)],
       superglue.rank_classification_postprocessor,
       [metrics.rank_classification(metric_fns)], inputs_eos)
  return name, rank


CANON_METRICS = (metrics.accuracy,
                 metrics.mean_multiclass_f1(len(CANON_LABELS)))
PARAPHRASE_METRICS = (metrics.accuracy, metrics.f1_score_with_invalid)


def register() -> tuple[str, ...]:
  """Registers every task here once (idempotent); returns their names."""
  _add(MSP_ES_EN_TASK, _translation_dataset, SPLITS,
       NUM_EXAMPLES[MSP_ES_EN_TASK], [msp_es_en_format], None,
       [metrics.bleu, demo.chrf])
  names = [MSP_ES_EN_TASK]
  names += _add_classification(CANON_TASK, _canon_dataset, [], CANON_LABELS,
                               CANON_METRICS)
  _add(TRANSLATION_DESIGN_TASK, _translation_dataset, RANK_SPLITS,
       NUM_EXAMPLES[MSP_ES_EN_TASK], [en_es_design_format], None,
       [metrics.bleu, demo.chrf])
  _add(CANON_DESIGN_TASK, _canon_dataset, RANK_SPLITS,
       NUM_EXAMPLES[CANON_TASK],
       [canon_design_format, functools.partial(
           superglue.rank_classification, label_names=CANON_LABELS)],
       superglue.rank_classification_postprocessor,
       [metrics.rank_classification(CANON_METRICS)])
  names += [TRANSLATION_DESIGN_TASK, CANON_DESIGN_TASK]
  for name, testament in PARAPHRASE_TASKS.items():
    names += _add_classification(name, _paraphrase_dataset(testament),
                                 [paraphrase_format], PARAPHRASE_LABELS,
                                 PARAPHRASE_METRICS)
    names += _add_classification(
        name + LM_SUFFIX, _paraphrase_dataset(testament),
        [paraphrase_format, lm_separator_format], PARAPHRASE_LABELS,
        PARAPHRASE_METRICS, inputs_eos=False)
  return tuple(names)


NAMES = register()

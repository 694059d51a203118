"""Tasks on the shipped Bible corpus, in the shipped bases' vocabulary.

Pretraining (data/pretrain_bible.jsonl.gz: passages of the WEB, KJV and
Reina-Valera 1909; 27% of them bilingual, 18% parallel English; see
data/README.md):

* `bible_span_corruption`: T5's objective (noise 0.15, mean span 3);
* `bible_prefix_lm`: LM adaptation (a prefix in, its continuation out);
* `bible_causal_lm`: next-token prediction for decoder-only bases.

Their `validation` split (whole chapters) reports held-out pretraining loss.

Downstream, on the demo's verse pairs (data/bible_en_es.tsv.gz), whose
validation and test verses never appear in pretraining, in any version:

* `bible_en_es`, `bible_es_en`: verse translation. The input is the bare
  source verse, with no instruction words: the trained prompt (or prefix)
  is what asks for a translation. BLEU and chrF.
* `bible_en_es_lm`, `bible_es_en_lm`: the same pairs written as a
  bilingual pretraining document is, for decoder-only bases: the input is
  the source verse and a newline (no EOS), the target its translation.
  seqio's decoder-only converter joins them into `source\ntarget</s>`,
  scored on the target. (The encoder-decoder format would put an EOS
  between them, and a decoder-only base has learnt that what follows an
  EOS is an unrelated document.)
* `bible_en_es_msp`: the same pairs in MSP's decoder-only format.
"""

from __future__ import annotations

import functools
import gzip
import json
import pathlib

import seqio
import tensorflow as tf

from prompt_tuning.tasks import demo
from prompt_tuning.tasks import metrics
from prompt_tuning.tasks import pretraining
from prompt_tuning.tasks import vocabularies

PRETRAIN_FILE = pathlib.Path(__file__).resolve().parent / "data" / (
    "pretrain_bible.jsonl.gz")
PRETRAIN_PREFIX = "bible"
TRANSLATION_TASKS = {"bible_en_es": ("en", "es"), "bible_es_en": ("es", "en")}
DOCUMENT_TASKS = {"bible_en_es_lm": ("en", "es"), "bible_es_en_lm": ("es", "en")}
# What separates a bilingual document's two passages.
DOCUMENT_SEPARATOR = "\n"
MSP_TASK_NAME = "bible_en_es_msp"
# Pieces, EOS included, that hold ~99% of the demo's verses whole
# (1.3 pieces per English word, 1.4 per Spanish word).
FEATURE_LENGTHS = {"inputs": 96, "targets": 96}


@functools.lru_cache(maxsize=None)
def documents(split: str) -> tuple[str, ...]:
  """The pretraining documents of `split` ("train" or "validation")."""
  if not PRETRAIN_FILE.is_file():
    raise FileNotFoundError(
        f"the pretraining corpus {PRETRAIN_FILE} is missing; reinstall the "
        "package (setup.py ships tasks/data/*) or rebuild it with "
        "`python scripts/build_pretraining_data.py`.")
  with gzip.open(PRETRAIN_FILE, "rt", encoding="utf-8") as f:
    texts = tuple(doc["text"] for doc in map(json.loads, f)
                  if doc["split"] == split)
  if not texts:
    raise ValueError(f"the pretraining corpus has no split {split!r}; use "
                     "'train' or 'validation'.")
  return texts


def _pretraining_dataset(split: str, shuffle_files: bool,
                         seed: int | None = None) -> tf.data.Dataset:
  del shuffle_files, seed  # One in-memory "file"; seqio shuffles examples.
  return tf.data.Dataset.from_tensor_slices({"text": list(documents(split))})


def _translation_format(source: str, target: str, suffix: str = ""):
  def fmt(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.map(
        lambda ex: {"inputs": tf.strings.join([ex[source], suffix]),
                    "targets": ex[target]},
        num_parallel_calls=tf.data.AUTOTUNE)
  return fmt


def _register_translation(name: str, formatter,
                          inputs_eos: bool = True) -> None:
  if name in seqio.TaskRegistry.names():
    return
  vocabulary = vocabularies.bible_vocabulary()
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(
          demo._dataset_fn, splits=tuple(demo.NUM_EXAMPLES),  # pylint: disable=protected-access
          num_input_examples=demo.NUM_EXAMPLES),
      preprocessors=[formatter, seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features={
          "inputs": seqio.Feature(vocabulary, add_eos=inputs_eos),
          "targets": seqio.Feature(vocabulary, add_eos=True)},
      metric_fns=[metrics.bleu, demo.chrf])


def register() -> tuple[str, ...]:
  """Registers the pretraining and translation tasks once; their names."""
  # The corpus is read on first use, not at import.
  source = seqio.FunctionDataSource(
      _pretraining_dataset, splits=("train", "validation"))
  names = pretraining.register_pretraining_tasks(
      PRETRAIN_PREFIX, source, vocabularies.bible_vocabulary())
  for name, (source_lang, target_lang) in TRANSLATION_TASKS.items():
    _register_translation(name, _translation_format(source_lang, target_lang))
  for name, (source_lang, target_lang) in DOCUMENT_TASKS.items():
    _register_translation(
        name, _translation_format(source_lang, target_lang,
                                  DOCUMENT_SEPARATOR), inputs_eos=False)
  _register_translation(MSP_TASK_NAME, demo.msp_format)
  return (*names, *TRANSLATION_TASKS, *DOCUMENT_TASKS, MSP_TASK_NAME)


register()

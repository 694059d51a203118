"""Demo tasks: English -> Spanish Bible verses shipped with the package.

The README's main command trains on these, so they must run anywhere with
no download: the data is `data/bible_en_es.tsv.gz` next to this file (verse
pairs from the public-domain World English Bible and Reina-Valera 1909; see
data/README.md for provenance, licenses and how scripts/build_demo_data.py
rebuilds it), read through a seqio.FunctionDataSource (no TFDS, no network).

Registered at import, in the two formats the translation tasks use:

  demo_bible_en_es      encoder-decoder (T5):
                          inputs:  "translate English to Spanish: In the
                                    beginning, God created the heavens and
                                    the earth."
                          targets: "En el principio crió Dios los cielos y
                                    la tierra."
  demo_bible_en_es_msp  decoder-only MSP: inputs = the English verse alone,
                        targets = the Spanish one. The separator between
                        them is the model's (MultiStagePrompting puts it in
                        front of the target), not the task's.

Both use seqio.ByteVocabulary (UTF-8 bytes + pad/eos/unk = 259 ids): it
needs no vocabulary file, so the demo runs offline with a small random
model, and it covers every character (T5's SentencePiece model has no "ñ",
"¿" or "¡"). For real checkpoints the same tasks are registered with the
mT5/mGPT SentencePiece vocabulary (read from `vocabulary_paths.mt5` on
first use): `demo_bible_en_es_mt5` and `demo_bible_en_es_msp_mgpt`.

Splits: 500 validation and 500 test verses chosen by the SHA-256 of their
reference, the rest train (no held-out English or Spanish sentence is also
in train). Metrics: sacrebleu's corpus BLEU (13a) and chrF.
"""

from __future__ import annotations

import csv
import functools
import gzip
import pathlib
from typing import Sequence

import sacrebleu
import seqio
import tensorflow as tf

from prompt_tuning.tasks import metrics
from prompt_tuning.tasks import vocabularies

DATA_FILE = pathlib.Path(__file__).resolve().parent / "data" / (
    "bible_en_es.tsv.gz")
COLUMNS = ("ref", "split", "en", "es")
# What the shipped file holds (tests check it).
NUM_EXAMPLES = {"train": 28781, "validation": 500, "test": 500}
PREFIX = "translate English to Spanish: "

TASK_NAME = "demo_bible_en_es"
MSP_TASK_NAME = "demo_bible_en_es_msp"
MT5_TASK_NAME = "demo_bible_en_es_mt5"
MGPT_MSP_TASK_NAME = "demo_bible_en_es_msp_mgpt"
VOCABULARY = seqio.ByteVocabulary()
# Byte lengths, EOS included, that hold ~95% of the training verses whole
# (longer ones are cut).
FEATURE_LENGTHS = {"inputs": 264, "targets": 232}
MSP_FEATURE_LENGTHS = {"inputs": 240, "targets": 232}


@functools.lru_cache(maxsize=None)
def _rows() -> tuple[tuple[str, str, str, str], ...]:
  """Every row of the shipped file, read once per process."""
  if not DATA_FILE.is_file():
    raise FileNotFoundError(
        f"the demo data file {DATA_FILE} is missing; reinstall the package "
        "(setup.py ships tasks/data/*) or rebuild the file with "
        "`python scripts/build_demo_data.py`.")
  with gzip.open(DATA_FILE, "rt", encoding="utf-8", newline="") as f:
    reader = csv.reader(f, delimiter="\t")
    header = tuple(next(reader))
    if header != COLUMNS:
      raise ValueError(
          f"{DATA_FILE} has columns {header}, expected {COLUMNS}; rebuild "
          "it with scripts/build_demo_data.py.")
    return tuple(tuple(row) for row in reader)


@functools.lru_cache(maxsize=None)
def verses(split: str) -> tuple[tuple[str, str, str], ...]:
  """The split's (ref, en, es) verse pairs, in canonical order."""
  if split not in NUM_EXAMPLES:
    raise ValueError(f"the demo tasks have no split {split!r}; use one of "
                     f"{sorted(NUM_EXAMPLES)}.")
  return tuple((ref, en, es) for ref, row_split, en, es in _rows()
               if row_split == split)


def _dataset_fn(split: str, shuffle_files: bool,
                seed: int | None = None) -> tf.data.Dataset:
  del shuffle_files, seed  # One in-memory "file"; seqio shuffles examples.
  refs, en, es = zip(*verses(split))
  return tf.data.Dataset.from_tensor_slices(
      {"ref": list(refs), "en": list(en), "es": list(es)})


def encoder_decoder_format(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """{"en", "es"} -> T5's {"inputs": "translate English to Spanish: <en>",
  "targets": <es>}."""
  return dataset.map(
      lambda ex: {"inputs": tf.strings.join([PREFIX, ex["en"]]),
                  "targets": ex["es"]},
      num_parallel_calls=tf.data.AUTOTUNE)


def msp_format(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """{"en", "es"} -> MSP's {"inputs": <en>, "targets": <es>}."""
  return dataset.map(lambda ex: {"inputs": ex["en"], "targets": ex["es"]},
                     num_parallel_calls=tf.data.AUTOTUNE)


def chrf(targets: Sequence[str],
         predictions: Sequence[str]) -> dict[str, float]:
  """sacrebleu's corpus chrF (character 6-grams, beta 2), one reference."""
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} "
                     "predictions; the evaluator must pass one per example.")
  score = sacrebleu.corpus_chrf(list(predictions), [list(targets)])
  return {"chrf": float(score.score)}


def _register(name: str, formatter, vocabulary: seqio.Vocabulary) -> None:
  if name in seqio.TaskRegistry.names():
    return
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(
          _dataset_fn, splits=tuple(NUM_EXAMPLES),
          num_input_examples=NUM_EXAMPLES),
      preprocessors=[
          formatter,
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features={
          key: seqio.Feature(vocabulary, add_eos=True)
          for key in ("inputs", "targets")
      },
      metric_fns=[metrics.bleu, chrf],
  )


def register() -> tuple[str, ...]:
  """Registers the four demo tasks once (idempotent); returns their names.

  The mT5/mGPT variants only name their vocabulary here; its file is read
  when they first tokenize.
  """
  _register(TASK_NAME, encoder_decoder_format, VOCABULARY)
  _register(MSP_TASK_NAME, msp_format, VOCABULARY)
  _register(MT5_TASK_NAME, encoder_decoder_format,
            vocabularies.mt5_vocabulary())
  _register(MGPT_MSP_TASK_NAME, msp_format, vocabularies.mgpt_vocabulary())
  return TASK_NAME, MSP_TASK_NAME, MT5_TASK_NAME, MGPT_MSP_TASK_NAME


register()

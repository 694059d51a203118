"""The Bible translation tasks (`tasks/bible.py`) on the held-out verses:
the encoder-decoder format, and the decoder-only format written as a
bilingual pretraining document is (`source\\ntarget</s>`)."""

from __future__ import annotations

import csv
import gzip

import numpy as np
import pytest
import seqio

from prompt_tuning.tasks import bible
from prompt_tuning.tasks import demo
from prompt_tuning.tasks import vocabularies

LENGTHS = {"inputs": 64, "targets": 64}
NEWLINE, EOS = 3, 1


@pytest.fixture(scope="module")
def first_validation_pair() -> tuple[str, str]:
  with gzip.open(demo.DATA_FILE, "rt", encoding="utf-8", newline="") as f:
    row = next(r for r in csv.DictReader(f, delimiter="\t")
               if r["split"] == "validation")
  return row["en"], row["es"]


def _first(name: str, converter=None) -> dict[str, np.ndarray]:
  dataset = seqio.get_mixture_or_task(name).get_dataset(
      LENGTHS, split="validation", shuffle=False)
  if converter is not None:
    dataset = converter(dataset, LENGTHS)
  return next(iter(dataset.as_numpy_iterator()))


def test_the_separator_after_a_verse_is_one_piece():
  vocabulary = vocabularies.bible_vocabulary()
  verse = "Jesus wept."
  assert vocabulary.encode(verse + bible.DOCUMENT_SEPARATOR) == (
      vocabulary.encode(verse) + [NEWLINE])


def test_encoder_decoder_format_ends_each_side_with_eos(first_validation_pair):
  en, es = first_validation_pair
  vocabulary = vocabularies.bible_vocabulary()
  example = _first("bible_en_es")
  assert list(example["inputs"]) == vocabulary.encode(en) + [EOS]
  assert list(example["targets"]) == vocabulary.encode(es) + [EOS]


def test_document_format_is_source_newline_target(first_validation_pair):
  en, es = first_validation_pair
  vocabulary = vocabularies.bible_vocabulary()
  source = vocabulary.encode(en) + [NEWLINE]  # No EOS between the sides.
  target = vocabulary.encode(es) + [EOS]
  example = _first("bible_en_es_lm")
  assert example["inputs_pretokenized"].decode() == en + "\n"
  assert list(example["inputs"]) == source
  assert list(example["targets"]) == target

  row = _first("bible_en_es_lm", seqio.DecoderFeatureConverter(pack=False))
  n = len(source) + len(target)
  np.testing.assert_array_equal(row["decoder_target_tokens"][:n],
                                source + target)
  assert not row["decoder_target_tokens"][n:].any()
  # Scored on the translation and its EOS only; the prompt region (T5X's
  # convention: the source and one more position) is the source.
  np.testing.assert_array_equal(
      row["decoder_loss_weights"][:n], [0] * len(source) + [1] * len(target))
  assert row["decoder_causal_attention"].sum() == len(source) + 1


def test_reverse_document_task_reads_spanish_first(first_validation_pair):
  en, es = first_validation_pair
  example = _first("bible_es_en_lm")
  assert example["inputs_pretokenized"].decode() == es + "\n"
  assert example["targets_pretokenized"].decode() == en

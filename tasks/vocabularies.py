"""The vocabularies tasks and decoding share, with gin-configurable paths.

Tasks register at import time, before a binary's gin bindings are parsed,
so each vocabulary here is a seqio.Vocabulary whose file is looked up on
first use from `vocabulary_paths` (gin-configurable; the defaults name the
real public locations). Offline, point them at local copies:

  --gin.vocabulary_paths.t5="'/data/t5/sentencepiece.model'"

The same object is returned on every call, so tasks that share a
vocabulary compare equal (seqio mixtures require it).
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import gin
import seqio

# T5 / T5.1.1 (incl. LM-adapted): 32,000 pieces + 100 sentinels.
T5_SENTENCEPIECE = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
# mT5 and mGPT: 250,000 pieces + 100 sentinels.
MT5_SENTENCEPIECE = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
EXTRA_IDS = 100
# mGPT (MSP): the source/target separator and the end of a sentence.
MGPT_SEPARATOR = "<extra_id_0>"
MGPT_EOS = "</s>"


@gin.configurable
def vocabulary_paths(t5: str = T5_SENTENCEPIECE,
                     mt5: str = MT5_SENTENCEPIECE) -> dict[str, str]:
  """Where each vocabulary's files are (gs://, or a local path)."""
  return {"t5": t5, "mt5": mt5}


def _check_exists(path: str, key: str) -> None:
  if "://" in path:  # gs:// and friends: the reader reports its own errors.
    return
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"the {key} vocabulary file {path!r} does not exist; set "
        f"--gin.vocabulary_paths.{key}=\"'/path/to/sentencepiece.model'\" "
        "to a local copy.")


class ConfiguredSentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """A SentencePiece vocabulary whose model file comes from
  `vocabulary_paths()[key]` when it is first needed."""

  def __init__(self, key: str, extra_ids: int = EXTRA_IDS):
    super().__init__(None, extra_ids=extra_ids)
    self._key = key

  def _resolve(self) -> None:
    if self._sentencepiece_model_file is None:
      path = vocabulary_paths()[self._key]
      _check_exists(path, self._key)
      self._sentencepiece_model_file = path

  def _model_context(self):
    self._resolve()
    return super()._model_context()

  @property
  def sentencepiece_model_file(self) -> str:
    self._resolve()
    return self._sentencepiece_model_file

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self._key!r}, extra_ids={self.extra_ids})"


@functools.cache
def t5_vocabulary() -> seqio.Vocabulary:
  """T5's SentencePiece model + 100 extra ids (32,100 ids)."""
  return ConfiguredSentencePieceVocabulary("t5")


@functools.cache
def mt5_vocabulary() -> seqio.Vocabulary:
  """mT5's SentencePiece model + 100 extra ids (250,100 ids)."""
  return ConfiguredSentencePieceVocabulary("mt5")


def mgpt_vocabulary() -> seqio.Vocabulary:
  """mGPT's tokenizer: the mT5 SentencePiece model; `<extra_id_0>` separates
  source and target, `</s>` ends a sentence."""
  return mt5_vocabulary()


def mgpt_separator_id(vocabulary: Optional[seqio.Vocabulary] = None) -> int:
  """The id of `<extra_id_0>` (250099 with the real mT5 model)."""
  vocabulary = vocabulary or mgpt_vocabulary()
  return vocabulary.vocab_size - 1  # seqio puts extra_id_0 last


@gin.configurable
def sentencepiece_vocabulary(path: str = T5_SENTENCEPIECE,
                             extra_ids: int = EXTRA_IDS):
  """A seqio.SentencePieceVocabulary from an explicit path (gin files that
  tokenize class labels bind VOCABULARY to this)."""
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)

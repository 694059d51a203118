"""Gin-configurable vocabularies, for gin files that need a tokenizer.

`methods/from_class_labels.gin` tokenizes its labels with %VOCABULARY; a gin
file binds it with `VOCABULARY = @sentencepiece_vocabulary()`. seqio is
imported only when the vocabulary is built, so parsing stays light, and
seqio reads the model file only when it first tokenizes.
"""

from __future__ import annotations

import gin

# T5 / T5.1.1 (incl. LM-adapted): 32,000 pieces + 100 sentinels.
T5_SENTENCEPIECE = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
# mT5 and mGPT: 250,000 pieces + 100 sentinels.
MT5_SENTENCEPIECE = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"


@gin.configurable
def sentencepiece_vocabulary(path: str = T5_SENTENCEPIECE,
                             extra_ids: int = 100):
  """A seqio.SentencePieceVocabulary (T5's by default)."""
  import seqio  # pylint: disable=g-import-not-at-top
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)

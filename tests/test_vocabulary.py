"""The real T5 SentencePiece vocabulary loads through seqio as T5X uses it."""

from __future__ import annotations

import pytest
import seqio


@pytest.fixture(name="vocab")
def _vocab(shared_fixtures):
  return seqio.SentencePieceVocabulary(
      str(shared_fixtures / "t5_sentencepiece.model"), extra_ids=100)


def test_t5_vocabulary_size_and_special_ids(vocab):
  assert vocab.vocab_size == 32100  # 32,000 pieces + 100 sentinels.
  assert vocab.pad_id == 0
  assert vocab.eos_id == 1
  assert vocab.unk_id == 2


def test_t5_vocabulary_round_trips_a_sentence(vocab):
  text = "Prompt tuning steers a frozen model with 20 learned vectors."
  ids = vocab.encode(text)
  assert ids and all(3 <= i < 32000 for i in ids)
  assert vocab.decode(ids) == text


def test_first_sentinel_is_the_last_id(vocab):
  # T5 sentinels count down from the top: <extra_id_0> is 32099.
  assert vocab.encode("<extra_id_0>") == [32099]
  assert vocab.decode([32099]) == "<extra_id_0>"

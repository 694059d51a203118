"""The shipped `bible` SentencePiece vocabulary: T5's layout (pad 0, EOS 1,
UNK 2, sentinels on top, `<extra_id_0>` last), lossless on the corpus's two
languages, byte fallback for the rest, and reachable by name.

scripts/build_vocabulary.py makes tasks/data/bible_spm.model.
"""

from __future__ import annotations

import pathlib

import gin
import pytest
import sentencepiece as spm
import seqio
import tensorflow as tf

from prompt_tuning.tasks import vocabularies

MODEL = (pathlib.Path(__file__).resolve().parents[1] / "tasks" / "data" /
         "bible_spm.model")
PIECES = 8000  # as tasks/data/README.md states
SENTENCES = [
    "In the beginning, God created the heavens and the earth.",
    "En el principio crió Dios los cielos y la tierra.",
    "¿Quién subirá al monte de Jehová? ¡Oh Señor, óyeme!",
    "Él respondió: Sí, señor; añádele más, según tu acción.",
    "ÁÉÍÓÚ Ñ Ü áéíóú ñ ü — “quoted” ‘single’ the LORD’s people",
    "An English passage.\nY el pasaje en español.",
]


@pytest.fixture(scope="module")
def vocab() -> seqio.SentencePieceVocabulary:
  return seqio.SentencePieceVocabulary(str(MODEL), extra_ids=100)


@pytest.fixture(scope="module")
def pieces() -> spm.SentencePieceProcessor:
  return spm.SentencePieceProcessor(model_file=str(MODEL))


def test_special_ids_follow_t5(vocab, pieces):
  assert vocab.pad_id == 0 and pieces.id_to_piece(0) == "<pad>"
  assert vocab.eos_id == 1 and pieces.id_to_piece(1) == "</s>"
  assert vocab.unk_id == 2 and pieces.id_to_piece(2) == "<unk>"
  assert pieces.bos_id() == -1  # no BOS, as T5


def test_sentinels_are_added_on_top(vocab, pieces):
  assert pieces.get_piece_size() == PIECES
  assert not any(pieces.id_to_piece(i).startswith("<extra_id_")
                 for i in range(PIECES))
  assert vocab.vocab_size == PIECES + 100


def test_first_sentinel_is_the_last_id(vocab):
  last = vocab.vocab_size - 1
  # seqio names them as T5's model does, with a word-start mark.
  assert vocab.tokenizer.piece_to_id("▁<extra_id_0>") == last
  assert vocab.tokenizer.piece_to_id("▁<extra_id_99>") == PIECES
  assert vocab.encode("<extra_id_0>") == [last]
  assert last in vocab.encode("a <extra_id_0> b")
  assert vocab.decode([last]) == "<extra_id_0>"


@pytest.mark.parametrize("text", SENTENCES)
def test_round_trip_is_lossless(vocab, text):
  ids = vocab.encode(text)
  assert vocab.unk_id not in ids
  assert vocab.decode(ids) == text


def test_round_trip_in_tensorflow(vocab):
  for text in SENTENCES:
    ids = vocab.encode_tf(tf.constant(text))
    assert ids.numpy().tolist() == vocab.encode(text)
    assert vocab.decode_tf(ids).numpy().decode("utf-8") == text


def test_newline_is_one_piece(vocab):
  newline = vocab.tokenizer.piece_to_id("\n")
  assert newline not in (vocab.unk_id, 0)
  ids = vocab.encode("Amen.\nAmén.")
  assert ids.count(newline) == 1
  assert vocab.decode(ids) == "Amen.\nAmén."


def test_unseen_characters_fall_back_to_bytes(vocab, pieces):
  text = "Emoji 😀 y 東京"
  ids = vocab.encode(text)
  assert vocab.unk_id not in ids
  byte_pieces = [pieces.id_to_piece(i) for i in ids if pieces.is_byte(i)]
  assert byte_pieces[:4] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
  assert vocab.decode(ids) == text


def test_registered_name_gives_the_shipped_vocabulary(vocab):
  named = vocabularies.named_vocabulary("bible")
  assert named is vocabularies.bible_vocabulary()
  assert named.extra_ids == 100
  assert pathlib.Path(named.sentencepiece_model_file) == MODEL
  assert pathlib.Path(vocabularies.vocabulary_paths()["bible"]) == MODEL
  assert named.vocab_size == vocab.vocab_size
  for text in SENTENCES:
    assert named.encode(text) == vocab.encode(text)


def test_named_vocabulary_from_gin():
  # Scoped, so no unscoped binding is left for other tests.
  with gin.unlock_config():
    gin.parse_config("bible_test/named_vocabulary.name = 'bible'")
  with gin.config_scope("bible_test"):
    assert vocabularies.named_vocabulary() is vocabularies.bible_vocabulary()


def test_named_vocabulary_rejects_unknown_names():
  with pytest.raises(ValueError, match="bible"):
    vocabularies.named_vocabulary("bibel")

"""The shared vocabularies: T5 (real fixture), mGPT's separator, GPT-2 BPE.

GPT-2's byte-level BPE is checked against Hugging Face's tokenizer loaded
from the same vocab.json + merges.txt: a tiny vocabulary trained here with
the `tokenizers` library, laid out like GPT-2's (256 byte tokens from id 0,
merges, `<|endoftext|>` last).
"""

from __future__ import annotations

import contextlib
import copy
import json
import pickle
from typing import Iterator

import gin
import numpy as np
import pytest
import sentencepiece as spm
import seqio
import tensorflow as tf

from prompt_tuning.tasks import vocabularies

BPE_CORPUS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Don't stop: we'll see, they're here, I'm sure it's fine, she'd go.",
    "Numbers like 2024, 3.14159 and 1,000,000 appear in text.",
    "Café, naïve and résumé; 東京は日本の首都です。 Привет, мир!",
    "Tabs\tand\nnewlines   with    spaces.",
]

# Unicode, spaces, punctuation, numbers, contractions, control bytes.
TRICKY = [
    "Hello world!",
    "Hello  world!!  ",
    "   leading spaces and trailing   ",
    "tabs\tand\nnew\n\nlines\r\n",
    "don't you'll we've I'm she'd it's they're DON'T 's",
    "Numbers: 12345, 3.14159, -7 and 1,000,000th",
    "Café naïve résumé e\u0301 ﬁ",
    "東京は日本の首都です。Привет, мир!",
    "emoji 😀👍🏽 and 🇩🇪 flags",
    "punctuation!!! ??? ... --- (a) [b] {c} \"quoted\" 'single'",
    "UPPER lower MiXeD camelCase snake_case",
    "\x00 control \x7f bytes \u00ad soft hyphen",
    "",
    " ",
]

SUPERGLUE_RTE = ("rte sentence1: Dana Reeve, the widow of the actor "
                 "Christopher Reeve, has died of lung cancer at age 44. "
                 "sentence2: Christopher Reeve had an accident.")


@contextlib.contextmanager
def _bound(key: str, value: str) -> Iterator[None]:
  """Binds vocabulary_paths.<key> and puts the old binding back."""
  try:
    old = gin.query_parameter(f"vocabulary_paths.{key}")
  except ValueError:
    old = vocabularies.vocabulary_paths()[key]
  with gin.unlock_config():
    gin.bind_parameter(f"vocabulary_paths.{key}", value)
  try:
    yield
  finally:
    with gin.unlock_config():
      gin.bind_parameter(f"vocabulary_paths.{key}", old)


@contextlib.contextmanager
def _shared_sentencepiece(vocab, key: str, path: str) -> Iterator[None]:
  """Points a shared SentencePiece vocabulary at `path` for a while, whatever
  an earlier test resolved it to."""
  saved = (vocab._sentencepiece_model_file, vocab._model)  # pylint: disable=protected-access
  with _bound(key, path):
    vocab._sentencepiece_model_file, vocab._model = None, None  # pylint: disable=protected-access
    try:
      yield
    finally:
      vocab._sentencepiece_model_file, vocab._model = saved  # pylint: disable=protected-access


@pytest.fixture(name="gpt2_dir", scope="module")
def _gpt2_dir(tmp_path_factory):
  """vocab.json + merges.txt of a ~400-token byte-level BPE."""
  tokenizers = pytest.importorskip("tokenizers")
  folder = tmp_path_factory.mktemp("tiny_gpt2")
  trainer = tokenizers.ByteLevelBPETokenizer()
  trainer.train_from_iterator(BPE_CORPUS * 3, vocab_size=400,
                              min_frequency=1, show_progress=False)
  trainer.save_model(str(folder))
  vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
  vocab[vocabularies.GPT2_EOS] = len(vocab)  # last, as in GPT-2
  (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
  return folder


@pytest.fixture(name="hf_gpt2", scope="module")
def _hf_gpt2(gpt2_dir):
  transformers = pytest.importorskip("transformers")
  return transformers.GPT2Tokenizer.from_pretrained(str(gpt2_dir))


@pytest.fixture(name="gpt2")
def _gpt2(gpt2_dir):
  return vocabularies.GPT2Vocabulary(str(gpt2_dir))


# T5 and mGPT (SentencePiece).


def test_t5_vocabulary_tokenizes_a_superglue_example(shared_fixtures):
  vocab = vocabularies.t5_vocabulary()
  with _shared_sentencepiece(
      vocab, "t5", str(shared_fixtures / "t5_sentencepiece.model")):
    assert vocab is vocabularies.t5_vocabulary()
    assert vocab.vocab_size == 32100
    assert (vocab.pad_id, vocab.eos_id) == (0, 1)
    ids = vocab.encode(SUPERGLUE_RTE)
    assert ids and all(3 <= i < 32000 for i in ids)
    assert vocab.decode(ids + [vocab.eos_id, 0, 0]) == SUPERGLUE_RTE
    tf_ids = vocab.encode_tf(tf.constant(SUPERGLUE_RTE)).numpy().tolist()
    assert tf_ids == ids


@pytest.fixture(name="tiny_mt5", scope="module")
def _tiny_mt5(tmp_path_factory):
  """A ~200-piece SentencePiece model with T5's special ids, as mT5's."""
  folder = tmp_path_factory.mktemp("tiny_mt5")
  (folder / "corpus.txt").write_text(
      "\n".join(BPE_CORPUS + ["Das Haus ist wunderbar.", "Casa este mare."]),
      encoding="utf-8")
  spm.SentencePieceTrainer.train(
      input=str(folder / "corpus.txt"), model_prefix=str(folder / "sp"),
      vocab_size=200, hard_vocab_limit=False, character_coverage=1.0,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
  return folder / "sp.model"


def test_mgpt_separator_is_the_last_id(tiny_mt5):
  vocab = vocabularies.mgpt_vocabulary()
  assert vocab is vocabularies.mt5_vocabulary()
  with _shared_sentencepiece(vocab, "mt5", str(tiny_mt5)):
    sep = vocabularies.mgpt_separator_id()
    assert sep == vocab.vocab_size - 1
    assert vocab.decode([sep]) == vocabularies.MGPT_SEPARATOR
    assert vocab.encode(vocabularies.MGPT_SEPARATOR) == [sep]
    assert vocab.tokenizer.id_to_piece(vocab.eos_id) == vocabularies.MGPT_EOS


def test_missing_sentencepiece_file_names_the_binding(tmp_path):
  missing = str(tmp_path / "nowhere.model")
  vocab = vocabularies.ConfiguredSentencePieceVocabulary("mt5")
  with _bound("mt5", missing):
    with pytest.raises(FileNotFoundError,
                       match=r"nowhere\.model.*vocabulary_paths\.mt5"):
      _ = vocab.vocab_size
  explicit = vocabularies.sentencepiece_vocabulary(path=missing)
  with pytest.raises(FileNotFoundError,
                     match=r"nowhere\.model.*sentencepiece_vocabulary\.path"):
    explicit.encode("hi")


def test_unreadable_remote_sentencepiece_names_the_binding():
  vocab = vocabularies.ConfiguredSentencePieceVocabulary(
      "t5", path="nosuchscheme://bucket/sp.model",
      binding="vocabulary_paths.t5")
  with pytest.raises(FileNotFoundError,
                     match=r"could not read.*sp\.model.*vocabulary_paths\.t5"):
    _ = vocab.eos_id


def test_check_fits(gpt2):
  vocabularies.check_fits(gpt2, gpt2.vocab_size)
  vocabularies.check_fits(gpt2, gpt2.vocab_size + 28)  # padded tables fit
  with pytest.raises(ValueError, match=(
      rf"'targets' vocabulary.*has {gpt2.vocab_size} ids, but the model's "
      rf"embedding table has 300 rows")):
    vocabularies.check_fits(gpt2, 300, name="the 'targets' vocabulary")


# GPT-2 byte-level BPE.


def test_gpt2_default_is_the_hub_repository():
  assert vocabularies.vocabulary_paths.__wrapped__()["gpt2"] == (
      "hf://openai-community/gpt2")
  assert vocabularies.gpt2_vocabulary() is vocabularies.gpt2_vocabulary()


def test_gpt2_special_ids_follow_the_files(gpt2, hf_gpt2):
  assert gpt2.vocab_size == len(hf_gpt2) == 401
  assert gpt2.eos_id == gpt2.bos_id == hf_gpt2.eos_token_id == 400
  assert gpt2.unk_id is None and gpt2.pad_id == 0
  assert gpt2.encode("!") == [0]  # id 0 is a real token, as in GPT-2


@pytest.mark.parametrize("text", TRICKY)
def test_gpt2_matches_hugging_face(gpt2, hf_gpt2, text):
  ids = gpt2.encode(text)
  assert ids == hf_gpt2.encode(text)
  assert gpt2.decode(ids) == text
  assert gpt2.decode(ids) == hf_gpt2.decode(
      ids, clean_up_tokenization_spaces=False)


def test_gpt2_literal_end_of_text_is_eos(gpt2, hf_gpt2):
  text = "one<|endoftext|>two"
  assert gpt2.encode(text) == hf_gpt2.encode(text)
  assert gpt2.decode(gpt2.encode(text)) == "one"  # decoding stops at EOS


def test_gpt2_decode_drops_padding_after_eos_but_keeps_bangs(gpt2):
  ids = gpt2.encode("Hi!")
  assert ids[-1] == 0  # "!"
  padded = ids + [gpt2.eos_id, 0, 0, 0]
  assert gpt2.decode(padded) == "Hi!"
  batch = tf.constant([padded, gpt2.encode("!!") + [gpt2.eos_id] +
                       [0] * (len(padded) - len(gpt2.encode("!!")) - 1)])
  assert gpt2.decode_tf(batch).numpy().tolist() == [b"Hi!", b"!!"]
  assert gpt2.decode_tf(tf.constant(padded)).numpy() == b"Hi!"


def test_gpt2_cut_character_decodes_to_replacement(gpt2):
  ids = gpt2.encode("東")
  assert len(ids) > 1  # three bytes, not all merged in the tiny vocabulary
  assert "\ufffd" in gpt2.decode(ids[:-1])


def test_gpt2_in_seqio_tokenize_pipeline(gpt2):
  texts = {"inputs": ["Hello world!", "don't 12 東京"],
           "targets": ["Café naïve!", ""]}
  features = {"inputs": seqio.Feature(gpt2, add_eos=False),
              "targets": seqio.Feature(gpt2, add_eos=True)}
  ds = tf.data.Dataset.from_tensor_slices(texts)
  ds = seqio.preprocessors.tokenize(ds, features, with_eos=True)
  rows = list(ds.as_numpy_iterator())
  for n, row in enumerate(rows):
    assert row["inputs"].dtype == np.int32
    assert row["inputs"].tolist() == gpt2.encode(texts["inputs"][n])
    assert row["targets"].tolist() == (
        gpt2.encode(texts["targets"][n]) + [gpt2.eos_id])
    assert row["inputs_pretokenized"].decode() == texts["inputs"][n]
  # Batched strings tokenize to a ragged batch of the same ids.
  ragged = gpt2.encode_tf(tf.constant([texts["inputs"]]))
  assert ragged.to_list() == [[gpt2.encode(t) for t in texts["inputs"]]]


def test_gpt2_copies_compare_equal(gpt2):
  gpt2.encode("load the tables")
  for clone in (copy.deepcopy(gpt2), pickle.loads(pickle.dumps(gpt2))):
    assert clone == gpt2 and hash(clone) == hash(gpt2)
    assert clone.encode("Hello world!") == gpt2.encode("Hello world!")
  assert gpt2 != vocabularies.GPT2Vocabulary("/elsewhere")


def test_gpt2_reads_the_directory_from_gin(gpt2_dir, gpt2):
  with _bound("gpt2", str(gpt2_dir)):
    configured = vocabularies.GPT2Vocabulary()
    assert configured.encode("Hello world!") == gpt2.encode("Hello world!")


def test_gpt2_missing_files_name_the_file_and_binding(gpt2_dir, tmp_path):
  with pytest.raises(FileNotFoundError,
                     match=r"vocab\.json.*vocabulary_paths\.gpt2"):
    vocabularies.GPT2Vocabulary(str(tmp_path / "empty")).encode("x")
  (tmp_path / "vocab.json").write_bytes((gpt2_dir / "vocab.json").read_bytes())
  with pytest.raises(FileNotFoundError,
                     match=r"merges\.txt' does not exist.*gpt2_dir"):
    _ = vocabularies.GPT2Vocabulary(str(tmp_path)).vocab_size


def test_gpt2_hub_default_fetches_or_explains(gpt2_dir, monkeypatch):
  calls = []

  def fake_download(repo_id, filename, revision=None):
    calls.append((repo_id, filename, revision))
    return str(gpt2_dir / filename)

  monkeypatch.setattr(vocabularies, "_hub_download", fake_download)
  vocab = vocabularies.GPT2Vocabulary("hf://openai-community/gpt2@abc123")
  assert vocab.eos_id == 400
  assert calls == [("openai-community/gpt2", "vocab.json", "abc123"),
                   ("openai-community/gpt2", "merges.txt", "abc123")]

  def offline(repo_id, filename, revision=None):
    raise OSError("Name or service not known")

  monkeypatch.setattr(vocabularies, "_hub_download", offline)
  with pytest.raises(FileNotFoundError, match=(
      r"could not fetch 'vocab\.json'.*'openai-community/gpt2'.*"
      r"Name or service not known.*vocabulary_paths\.gpt2.*"
      r"https://huggingface\.co/openai-community/gpt2")):
    vocabularies.GPT2Vocabulary("hf://openai-community/gpt2").encode("x")


def test_gpt2_mismatched_files_are_rejected(gpt2_dir, tmp_path):
  vocab = json.loads((gpt2_dir / "vocab.json").read_text(encoding="utf-8"))
  (tmp_path / "merges.txt").write_text("#version: 0.2\nq z\n",
                                       encoding="utf-8")
  (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
  with pytest.raises(ValueError, match=r"merges\.txt' line 2 \('q z'\)"):
    vocabularies.GPT2Vocabulary(str(tmp_path)).encode("x")
  first = {vocabularies.GPT2_EOS: 0,
           **{t: i + 1 for t, i in vocab.items()
              if t != vocabularies.GPT2_EOS}}
  (tmp_path / "merges.txt").write_bytes((gpt2_dir / "merges.txt").read_bytes())
  (tmp_path / "vocab.json").write_text(json.dumps(first), encoding="utf-8")
  with pytest.raises(ValueError, match=r"id 0, which seqio uses for padding"):
    vocabularies.GPT2Vocabulary(str(tmp_path)).encode("x")

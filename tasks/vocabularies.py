"""The vocabularies tasks and decoding share, with gin-configurable paths.

Tasks register at import time, before a binary's gin bindings are parsed,
so each vocabulary here is a seqio.Vocabulary whose files are looked up on
first use from `vocabulary_paths` (gin-configurable; the defaults name the
real public locations, and for `bible` the file shipped in this package).
Offline, point them at local copies:

  --gin.vocabulary_paths.t5="'/data/t5/sentencepiece.model'"
  --gin.vocabulary_paths.gpt2="'/data/gpt2'"  # holds vocab.json, merges.txt

The same object is returned on every call, so tasks that share a
vocabulary compare equal (seqio mixtures require it). `named_vocabulary`
finds each by name ("t5", "mt5", "mgpt", "gpt2", "bible"), also from gin:

  VOCABULARY = @named_vocabulary()
  named_vocabulary.name = "bible"

GPT-2 and padding: seqio pads with id 0 (`seqio.vocabularies.PAD_ID`), and
GPT-2 has no padding token: its id 0 is "!". We keep GPT-2's ids unchanged
(so they index a GPT-2 checkpoint's embedding table as they are) and accept
seqio's id-0 padding. What that means:
  * This package's models build attention masks from lengths and regions,
    never from token ids, so a "!" attends and is attended like any token.
  * Decoding cuts at the first `<|endoftext|>`; a 0 before it is a "!",
    after it padding. Sequences therefore need their EOS (seqio's
    `add_eos=True`) for padding to be dropped.
  * seqio's feature converters set `decoder_loss_weights` to `targets != 0`,
    so a standalone "!" target gets no loss (and in the prefix-LM converter
    an input "!" gets loss weight 1). Tasks that care must weight the loss
    from lengths instead.
"""

from __future__ import annotations

import functools
import json
import math
import os
import threading
from typing import Any, Optional, Sequence

import gin
import numpy as np
import regex
import seqio
import tensorflow as tf

# T5 / T5.1.1 (incl. LM-adapted): 32,000 pieces + 100 sentinels.
T5_SENTENCEPIECE = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
# mT5 and mGPT: 250,000 pieces + 100 sentinels.
MT5_SENTENCEPIECE = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
# GPT-2's byte-level BPE (vocab.json + merges.txt) in its Hugging Face hub
# repository; `hf://owner/name[@revision]` is fetched with huggingface_hub.
GPT2_BPE = "hf://openai-community/gpt2"
GPT2_FILES = ("vocab.json", "merges.txt")
GPT2_EOS = "<|endoftext|>"
EXTRA_IDS = 100
# The project's own bases (pretrained on Bible text, English and Spanish):
# 8,000 SentencePiece pieces + 100 sentinels, shipped in data/ (built by
# scripts/build_vocabulary.py; see data/README.md).
BIBLE_SENTENCEPIECE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                   "data", "bible_spm.model")
# mGPT (MSP): the source/target separator and the end of a sentence.
MGPT_SEPARATOR = "<extra_id_0>"
MGPT_EOS = "</s>"


@gin.configurable
def vocabulary_paths(t5: str = T5_SENTENCEPIECE,
                     mt5: str = MT5_SENTENCEPIECE,
                     gpt2: str = GPT2_BPE,
                     bible: str = BIBLE_SENTENCEPIECE) -> dict[str, str]:
  """Where each vocabulary's files are (gs://, hf:// for gpt2, or local).

  t5, mt5 and bible name a SentencePiece model file; gpt2 a directory
  holding GPT-2's vocab.json and merges.txt.
  """
  return {"t5": t5, "mt5": mt5, "gpt2": gpt2, "bible": bible}


def _flag(binding: str, example: str) -> str:
  return f"--gin.{binding}=\"'{example}'\""


def _check_exists(path: str, binding: str) -> None:
  if "://" in path:  # gs:// and friends: checked when read (see _read_error).
    return
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"the vocabulary file {path!r} does not exist; set "
        f"{_flag(binding, '/path/to/sentencepiece.model')} to a local copy.")


def _read_error(path: str, binding: str, error: Exception) -> FileNotFoundError:
  return FileNotFoundError(
      f"could not read the vocabulary file {path!r} ({error}); set "
      f"{_flag(binding, '/local/copy')} to a local copy.")


def check_fits(vocabulary: seqio.Vocabulary, vocab_size_of_model: int, *,
               name: str = "the vocabulary") -> None:
  """Raises when token ids could index past the model's embedding table.

  A model may have more rows than ids (T5 pads 32,100 ids to 32,128 rows);
  fewer would make an embedding lookup read out of range.

  Args:
    vocabulary: the task's vocabulary.
    vocab_size_of_model: rows of the model's token embedding table.
    name: what the vocabulary is, for the message (e.g. a task feature).
  """
  size = vocabulary.vocab_size
  if size > vocab_size_of_model:
    raise ValueError(
        f"{name} ({vocabulary!r}) has {size} ids, but the model's embedding "
        f"table has {vocab_size_of_model} rows; use the vocabulary the model "
        "was trained with (gin: vocabulary_paths) or a model with at least "
        f"{size} rows.")


class ConfiguredSentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """A SentencePiece vocabulary whose model file comes from
  `vocabulary_paths()[key]` (or an explicit `path`) when first needed, and
  whose missing file is reported with the gin binding that fixes it."""

  def __init__(self, key: str, extra_ids: int = EXTRA_IDS, *,
               path: Optional[str] = None, binding: Optional[str] = None):
    super().__init__(None, extra_ids=extra_ids)
    self._key = key
    self._path = path
    self._binding = binding or f"vocabulary_paths.{key}"

  def _resolve(self) -> None:
    if self._sentencepiece_model_file is None:
      path = self._path or vocabulary_paths()[self._key]
      _check_exists(path, self._binding)
      self._sentencepiece_model_file = path

  def _model_context(self):
    self._resolve()
    try:
      return super()._model_context()
    except (tf.errors.OpError, OSError) as e:  # e.g. gs:// while offline.
      raise _read_error(self._sentencepiece_model_file, self._binding,
                        e) from e

  @property
  def sentencepiece_model_file(self) -> str:
    self._resolve()
    return self._sentencepiece_model_file

  def __repr__(self) -> str:
    source = self._path if self._path else self._key
    return f"{type(self).__name__}({source!r}, extra_ids={self.extra_ids})"


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


@gin.configurable  # VOCABULARY = @bible_vocabulary() for class labels.
@functools.cache
def bible_vocabulary() -> seqio.Vocabulary:
  """The project's own bases' SentencePiece model + 100 extra ids (8,100
  ids; pad 0, EOS 1, UNK 2, `<extra_id_0>` = 8099), as T5's is laid out."""
  return ConfiguredSentencePieceVocabulary("bible")


@gin.configurable
def sentencepiece_vocabulary(path: str = T5_SENTENCEPIECE,
                             extra_ids: int = EXTRA_IDS):
  """A SentencePiece vocabulary from an explicit path (gin files that
  tokenize class labels bind VOCABULARY to this)."""
  return ConfiguredSentencePieceVocabulary(
      "t5", extra_ids, path=path, binding="sentencepiece_vocabulary.path")


# GPT-2 byte-level BPE (Radford et al., 2019).

# The pre-tokenizer: English contractions, then runs of letters, of digits
# and of other symbols, each taking at most one leading space; a run of
# whitespace leaves its last space to the word after it.
_GPT2_SPLIT = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
    r"""|\s+(?!\S)|\s+""")


def _byte_symbols() -> list[str]:
  """GPT-2's printable stand-in for each byte value.

  BPE works on visible characters: the 188 bytes that print as themselves
  in Latin-1 (! to ~, ¡ to ¬, ® to ÿ) keep their code point; the other 68
  (controls, space, soft hyphen, ...) take U+0100, U+0101, ... in byte order
  (so a space is Ġ).
  """
  printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
  symbols, spare = [], 0x100
  for byte in range(256):
    if byte in printable:
      symbols.append(chr(byte))
    else:
      symbols.append(chr(spare))
      spare += 1
  return symbols


_BYTE_SYMBOLS = _byte_symbols()
_SYMBOL_BYTES = {symbol: byte for byte, symbol in enumerate(_BYTE_SYMBOLS)}


def _hub_download(repo_id: str, filename: str,
                  revision: Optional[str] = None) -> str:
  """A local (cached) copy of one file of a Hugging Face hub repository."""
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  return huggingface_hub.hf_hub_download(repo_id, filename, revision=revision)


def _gpt2_files(directory: str, binding: str) -> list[str]:
  """Local or gfile paths of vocab.json and merges.txt under `directory`."""
  fix = (f"put GPT-2's {' and '.join(GPT2_FILES)} in one directory and set "
         f"{_flag(binding, '/path/to/gpt2_dir')}")
  if directory.startswith("hf://"):
    repo_id, _, revision = directory[len("hf://"):].partition("@")
    paths = []
    for name in GPT2_FILES:
      try:
        paths.append(_hub_download(repo_id, name, revision or None))
      except Exception as e:  # pylint: disable=broad-except
        # Offline, no huggingface_hub, unknown repo: one answer, one fix.
        also = ("`pip install huggingface_hub`, or "
                if isinstance(e, ImportError) else "")
        raise FileNotFoundError(
            f"could not fetch {name!r} of the Hugging Face hub repository "
            f"{repo_id!r} ({type(e).__name__}: {e}); {also}{fix} (the files "
            f"are at https://huggingface.co/{repo_id}/tree/main).") from e
    return paths
  paths = [os.path.join(directory, name) for name in GPT2_FILES]
  for path in paths:
    try:
      found = tf.io.gfile.exists(path)
    except tf.errors.OpError as e:  # e.g. gs:// while offline.
      raise FileNotFoundError(f"could not read {path!r} ({e}); {fix}.") from e
    if not found:
      raise FileNotFoundError(f"the GPT-2 vocabulary file {path!r} does not "
                              f"exist; {fix}.")
  return paths


class _BPETables:
  """vocab.json + merges.txt, checked, in the forms encode/decode need."""

  def __init__(self, vocab_path: str, merges_path: str):
    with tf.io.gfile.GFile(vocab_path, "r") as f:
      token_ids = json.loads(f.read())
    self.token_ids: dict[str, int] = {t: int(i) for t, i in token_ids.items()}
    size = max(self.token_ids.values()) + 1
    if sorted(self.token_ids.values()) != list(range(size)):
      raise ValueError(
          f"{vocab_path!r} does not number its tokens 0..{size - 1} without "
          "gaps or repeats; it is not a GPT-2 vocab.json.")
    self.tokens = [""] * size
    for token, i in self.token_ids.items():
      self.tokens[i] = token
    lacking = [s for s in _BYTE_SYMBOLS if s not in self.token_ids]
    if lacking:
      raise ValueError(
          f"{vocab_path!r} lacks {len(lacking)} of the 256 byte tokens (e.g. "
          f"{lacking[:3]}); it is not a byte-level BPE vocabulary.")
    if GPT2_EOS not in self.token_ids:
      raise ValueError(f"{vocab_path!r} has no {GPT2_EOS!r} token.")
    self.eos_id = self.token_ids[GPT2_EOS]
    if self.eos_id == seqio.vocabularies.PAD_ID:
      raise ValueError(
          f"{vocab_path!r} gives {GPT2_EOS!r} id 0, which seqio uses for "
          "padding; number it after the merged tokens, as GPT-2 does.")

    self.ranks: dict[tuple[str, str], int] = {}
    with tf.io.gfile.GFile(merges_path, "r") as f:
      lines = f.read().split("\n")
    for number, line in enumerate(lines, start=1):
      if not line or (number == 1 and line.startswith("#version")):
        continue
      pair = tuple(line.split(" "))
      if len(pair) != 2 or pair[0] + pair[1] not in self.token_ids:
        raise ValueError(
            f"{merges_path!r} line {number} ({line!r}) is not a merge "
            f"'left right' whose result is in {vocab_path!r}; the two files "
            "must come from the same tokenizer.")
      self.ranks.setdefault(pair, len(self.ranks))


class GPT2Vocabulary(seqio.Vocabulary):
  """GPT-2's byte-level BPE (vocab.json + merges.txt) as a seqio.Vocabulary.

  Text -> UTF-8 bytes -> printable byte symbols, split by GPT-2's
  pre-tokenizer, then each piece is merged pairwise, lowest merge rank
  first, exactly as GPT-2's (and Hugging Face's) tokenizer does. Ids are
  GPT-2's own; `<|endoftext|>` is EOS (and BOS, as in GPT-2); a literal
  `<|endoftext|>` in the text encodes to it, as in Hugging Face. There is no
  unknown token (every byte has one) and no padding token: see the module
  docstring for how seqio's id-0 padding is handled.

  The files are read on first use, from `directory` or else from
  `vocabulary_paths()[key]`.
  """

  _CACHE_LIMIT = 1 << 16  # pieces whose merges are remembered

  def __init__(self, directory: Optional[str] = None, *, key: str = "gpt2"):
    super().__init__(extra_ids=0)
    self._directory = directory
    self._key = key
    self._tables: Optional[_BPETables] = None
    self._pieces: dict[str, tuple[int, ...]] = {}
    self._lock = threading.Lock()

  @property
  def _binding(self) -> str:
    return f"vocabulary_paths.{self._key}"

  def _load(self) -> _BPETables:
    if self._tables is None:
      with self._lock:
        if self._tables is None:
          directory = self._directory or vocabulary_paths()[self._key]
          self._tables = _BPETables(*_gpt2_files(directory, self._binding))
    return self._tables

  # Special ids and sizes.

  @property
  def eos_id(self) -> int:
    return self._load().eos_id

  @property
  def bos_id(self) -> int:
    return self._load().eos_id

  @property
  def unk_id(self) -> None:
    return None

  @property
  def _base_vocab_size(self) -> int:
    return len(self._load().tokens)

  # Python.

  def _merge(self, piece: str) -> tuple[int, ...]:
    """Ids of one pre-token (already as byte symbols), merges applied."""
    ids = self._pieces.get(piece)
    if ids is not None:
      return ids
    tables = self._load()
    parts = list(piece)
    while len(parts) > 1:
      rank, best = min(
          (tables.ranks.get(pair, math.inf), pair)
          for pair in zip(parts, parts[1:]))
      if rank == math.inf:
        break
      merged, i = [], 0
      while i < len(parts):  # every occurrence, left to right
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
          merged.append(parts[i] + parts[i + 1])
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    ids = tuple(tables.token_ids[part] for part in parts)
    if len(self._pieces) >= self._CACHE_LIMIT:
      self._pieces.clear()
    self._pieces[piece] = ids
    return ids

  def _encode(self, s: str) -> list[int]:
    eos_id = self._load().eos_id
    ids = []
    for n, chunk in enumerate(s.split(GPT2_EOS)):
      if n:
        ids.append(eos_id)
      for piece in _GPT2_SPLIT.findall(chunk):
        ids.extend(self._merge(
            "".join(_BYTE_SYMBOLS[b] for b in piece.encode("utf-8"))))
    return ids

  def _decode(self, ids: Sequence[int]) -> str:
    """Text up to the first EOS; ids outside the vocabulary are skipped, and
    invalid UTF-8 (a cut-off character) becomes U+FFFD as in GPT-2."""
    tables = self._load()
    symbols = []
    for i in ids:
      i = int(i)
      if i == tables.eos_id:
        break
      if 0 <= i < len(tables.tokens):
        symbols.append(tables.tokens[i])
    data = bytes(_SYMBOL_BYTES[c] for c in "".join(symbols))
    return data.decode("utf-8", errors="replace")

  # TensorFlow (seqio's tokenize preprocessor, decode_tf): Python in graph.

  def _encode_tf(self, s: tf.Tensor) -> Any:
    """A string tensor -> int32 ids: [None] for a scalar, ragged otherwise."""
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank is None:
      raise ValueError("GPT2Vocabulary.encode_tf needs a string tensor of "
                       "known rank.")

    def encode_flat(strings: np.ndarray):
      rows = [self._encode(x.decode("utf-8")) for x in strings]
      values = np.array([i for row in rows for i in row], np.int32)
      return values, np.array([len(row) for row in rows], np.int64)

    if s.shape.rank == 0:
      values, _ = tf.numpy_function(encode_flat, [s[None]],
                                    [tf.int32, tf.int64], stateful=False)
      values.set_shape([None])
      return values
    values, lengths = tf.numpy_function(
        encode_flat, [tf.reshape(s, [-1])], [tf.int32, tf.int64],
        stateful=False)
    values.set_shape([None])
    lengths.set_shape([None])
    ids = tf.RaggedTensor.from_row_lengths(values, lengths)
    outer = tf.shape(s, out_type=tf.int64)
    for axis in range(s.shape.rank - 1, 0, -1):
      ids = tf.RaggedTensor.from_uniform_row_length(ids, outer[axis])
    return ids

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int ids [..., length] -> strings [...], each up to its first EOS."""
    ids = tf.convert_to_tensor(ids)

    def decode_rows(array: np.ndarray) -> np.ndarray:
      rows = array.reshape(int(np.prod(array.shape[:-1])), array.shape[-1])
      texts = [self._decode(row.tolist()).encode("utf-8") for row in rows]
      return np.array(texts, dtype=object).reshape(array.shape[:-1])

    texts = tf.numpy_function(decode_rows, [ids], tf.string, stateful=False)
    if ids.shape.rank is not None:
      texts.set_shape(ids.shape[:-1])
    return texts

  # Identity, copying (gin deep-copies configurable arguments), printing.

  def _source(self) -> tuple[str, str]:
    return ("dir", self._directory) if self._directory else ("key", self._key)

  def __eq__(self, other: Any) -> bool:
    return (isinstance(other, GPT2Vocabulary)
            and self._source() == other._source())

  def __hash__(self) -> int:
    return hash(self._source())

  def __getstate__(self) -> dict[str, Any]:
    return {"directory": self._directory, "key": self._key}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(state["directory"], key=state["key"])

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self._source()[1]!r})"


@functools.cache
def gpt2_vocabulary() -> seqio.Vocabulary:
  """GPT-2's byte-level BPE (50,257 ids; `<|endoftext|>` = 50256 is EOS)."""
  return GPT2Vocabulary()


_NAMED = {
    "t5": t5_vocabulary,
    "mt5": mt5_vocabulary,
    "mgpt": mgpt_vocabulary,
    "gpt2": gpt2_vocabulary,
    "bible": bible_vocabulary,
}


@gin.configurable
def named_vocabulary(name: str = gin.REQUIRED) -> seqio.Vocabulary:
  """The shared vocabulary called `name` (the same object its function
  returns), so a gin file or flag can pick one by name."""
  if name not in _NAMED:
    raise ValueError(f"unknown vocabulary {name!r}; known: "
                     f"{', '.join(sorted(_NAMED))}.")
  return _NAMED[name]()

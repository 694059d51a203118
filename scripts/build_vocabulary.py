"""Builds `tasks/data/bible_spm.model`, the SentencePiece vocabulary of the
project's own small bases, from the pretraining corpus's train split.

  python scripts/build_vocabulary.py   # after build_pretraining_data.py

A unigram model with T5's conventions, so seqio and the T5-style code treat
it like T5's: pad 0, EOS 1, UNK 2, no BOS, and no sentinels in the model:
seqio adds them on top (`seqio.SentencePieceVocabulary(path, extra_ids=100)`,
`<extra_id_0>` last), as the registered `bible` vocabulary does
(tasks/vocabularies.py). Byte fallback spells any character the model lacks
(emoji, other scripts) as UTF-8 byte pieces instead of UNK. Normalization is
T5's (NMT NFKC, runs of spaces collapsed), except that a newline is one
piece of its own rather than a space: the bilingual documents separate
their two languages with one.

Training reads the documents in file order on one thread with a fixed seed,
so the same corpus gives the same model bytes (checked by building twice;
tasks/data/README.md). Needs the `sentencepiece` package, nothing else.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import io
import json
import pathlib
import sys
from typing import Iterator, Mapping, Sequence

import sentencepiece as spm

DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / "tasks" / "data"
CORPUS = DATA_DIR / "pretrain_bible.jsonl.gz"
DEFAULT_OUTPUT = DATA_DIR / "bible_spm.model"
# Pieces in the model, specials and the 256 byte pieces included; seqio's
# 100 sentinels come on top (8,100 ids). Small models must pretrain in
# about 30 minutes on 2 CPU cores, so the embedding table must stay small
# (8,100 x 256 = 2.1M parameters) while words stay short (see the README's
# pieces per word).
VOCAB_SIZE = 8000
SEED = 20240101
TRAINER_OPTIONS = dict(
    model_type="unigram",
    vocab_size=VOCAB_SIZE,
    pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
    pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
    byte_fallback=True,
    user_defined_symbols=["\n"],
    normalization_rule_name="nmt_nfkc",
    # Every character of the corpus gets a piece (two alphabets, a few
    # accented capitals); anything else falls back to bytes.
    character_coverage=1.0,
    # The whole corpus, unsampled and unshuffled, on one thread: no
    # randomness or thread timing reaches the model.
    input_sentence_size=0,
    shuffle_input_sentence=False,
    num_threads=1,
    # The longest document (WEB's Greek Esther 8:13, one verse) is ~4 KB.
    max_sentence_length=16384,
    minloglevel=2,
)


def documents(path: pathlib.Path, split: str) -> Iterator[dict[str, object]]:
  with gzip.open(path, "rt", encoding="utf-8") as f:
    for line in f:
      doc = json.loads(line)
      if doc["split"] == split:
        yield doc


def train(corpus: pathlib.Path) -> bytes:
  """The serialized model trained on the corpus's train documents."""
  spm.set_random_generator_seed(SEED)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=(str(doc["text"]) for doc in documents(corpus,
                                                               "train")),
      model_writer=model, **TRAINER_OPTIONS)
  return model.getvalue()


def pieces_per_word(model: bytes, corpus: pathlib.Path,
                    split: str = "validation") -> Mapping[str, float]:
  """Pieces per whitespace-separated word on `split`, per language and per
  version: how much longer than words the model's sequences are."""
  sp = spm.SentencePieceProcessor(model_proto=model)
  counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
  for doc in documents(corpus, split):
    for text, lang, version in zip(str(doc["text"]).split("\n"),
                                   doc["langs"], doc["versions"]):
      for key in (lang, version):
        counts[key][0] += len(sp.encode(text))
        counts[key][1] += len(text.split())
  return {key: pieces / words for key, (pieces, words) in counts.items()}


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--corpus", default=str(CORPUS))
  parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
  args = parser.parse_args(argv)
  model = train(pathlib.Path(args.corpus))
  pathlib.Path(args.output).write_bytes(model)
  print(f"wrote {args.output}: {len(model):,} bytes, {VOCAB_SIZE} pieces",
        file=sys.stderr)
  for key, value in sorted(pieces_per_word(model,
                                           pathlib.Path(args.corpus)).items()):
    print(f"pieces per word ({key}, validation): {value:.3f}")


if __name__ == "__main__":
  main()

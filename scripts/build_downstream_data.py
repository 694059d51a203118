r"""Builds the downstream classification data on the shipped Bible corpus:
`tasks/data/bible_canon.tsv.gz` and `tasks/data/bible_paraphrase.tsv.gz`.

Two public-domain English Bibles (and the Spanish one, which only the
verse alignment reads), as Debian packages them for SWORD:

  World English Bible   sword-text-web    module engWEB2015eb  (NRSVA)
  King James Version    sword-text-kjv    module engKJV2006eb  (KJV)
  Reina-Valera 1909     sword-text-sparv  module spaRV1909eb   (KJV)

Set-up (Debian/Ubuntu) and a rebuild, from the repository root:

  apt-get install -y sword-text-web sword-text-kjv sword-text-sparv \
      libsword-utils
  python scripts/build_downstream_data.py   # or --imp_dir with exports

Verse text, verse alignment and the held-out references come from
scripts/build_pretraining_data.py's functions, so a verse reads exactly as
the pretraining corpus has it, and the build checks that the held-out
references it computes are the shipped `heldout_refs.txt`. The rules:

* Evaluation verses are held-out verses only (no version of them is in
  pretraining): `demo_validation` references go to validation,
  `demo_test` to test, and `downstream_heldout` ones half to each (salted
  SHA-256 order), so one verse is in the same split in every task.
* Training verses are never held out, by reference or by text: a verse
  whose WEB, KJV or Spanish text contains a held-out verse's text (the
  verses pretraining dropped for it) is not used either.
* `bible_canon`: a WEB verse and its book's part of the canon (CANON).
  Train: up to CANON_TRAIN_PER_CLASS verses per class (salted SHA-256
  order), so the classes are near balanced; evaluation: every usable
  held-out verse, in the canon's own proportions.
* `bible_paraphrase`: a WEB verse beside a KJV verse; "yes" when both are
  the same verse, "no" when the KJV one is a nearby verse of the same book
  and about the same length (NEGATIVE_NEIGHBOURS). Every verse gives one
  pair of each, so neither sentence alone tells the label. By testament;
  train: PARAPHRASE_TRAIN_VERSES per testament.

The outputs' bytes depend only on the inputs (gzip without a timestamp).
Only the standard library is used, so it runs without the project installed.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import pathlib
import sys
from typing import Iterable, Mapping, Sequence

# scripts/ is no package: import the other builders as sibling modules.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
# pylint: disable-next=g-import-not-at-top,wrong-import-position
import build_demo_data as demo
# pylint: disable-next=g-import-not-at-top,wrong-import-position
import build_pretraining_data as pretrain

DATA_DIR = pretrain.DATA_DIR
CANON_OUTPUT = DATA_DIR / "bible_canon.tsv.gz"
PARAPHRASE_OUTPUT = DATA_DIR / "bible_paraphrase.tsv.gz"
CANON_COLUMNS = ("ref", "split", "label", "verse")
PARAPHRASE_COLUMNS = ("testament", "split", "label", "ref1", "ref2",
                      "sentence1", "sentence2")

# The Protestant canon's 66 books (SWORD's names) by part. Acts goes with
# history: the usual division of the New Testament (gospels, history,
# letters, prophecy) makes it the New Testament's history book, and it is
# narrative like Joshua..Esther, where "gospels" would mean the life of
# Jesus told four times plus the early church.
CANON = {
    "law": ("Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy"),
    "history": ("Joshua", "Judges", "Ruth", "I Samuel", "II Samuel",
                "I Kings", "II Kings", "I Chronicles", "II Chronicles",
                "Ezra", "Nehemiah", "Esther", "Acts"),
    "wisdom": ("Job", "Psalms", "Proverbs", "Ecclesiastes",
               "Song of Solomon"),
    "prophets": ("Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel",
                 "Hosea", "Joel", "Amos", "Obadiah", "Jonah", "Micah",
                 "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah",
                 "Malachi"),
    "gospels": ("Matthew", "Mark", "Luke", "John"),
    "letters": ("Romans", "I Corinthians", "II Corinthians", "Galatians",
                "Ephesians", "Philippians", "Colossians", "I Thessalonians",
                "II Thessalonians", "I Timothy", "II Timothy", "Titus",
                "Philemon", "Hebrews", "James", "I Peter", "II Peter",
                "I John", "II John", "III John", "Jude"),
    "apocalypse": ("Revelation of John",),
}
GROUP = {book: group for group, books in CANON.items() for book in books}
NEW_TESTAMENT = frozenset(
    CANON["gospels"] + ("Acts",) + CANON["letters"] + CANON["apocalypse"])
TESTAMENTS = ("ot", "nt")

# Held-out references by the split they evaluate; downstream_heldout ones
# are shared out by DOWNSTREAM_SPLIT_SALT.
HELDOUT_SPLITS = {"demo_validation": "validation", "demo_test": "test"}
DOWNSTREAM_SPLIT_SALT = "downstream_split:"
CANON_SALT = "canon_train:"
PARAPHRASE_SALT = "paraphrase_train:"
# Train examples: canon verses per class (apocalypse has fewer), and
# paraphrase verses per testament (each gives a "yes" and a "no" pair).
CANON_TRAIN_PER_CLASS = 600
PARAPHRASE_TRAIN_VERSES = 2000
# A "no" pair's KJV verse: of the pool verses nearest in canonical order
# (this many on each side, same book), the one closest in words.
NEGATIVE_NEIGHBOURS = 4
# Verses longer than this (UTF-8 bytes, either English version) are left
# out, as the demo leaves them out: genealogies and lists, rare and long.
MAX_BYTES = demo.MAX_BYTES


def book_of(ref: str) -> str:
  return pretrain.chapter_of(ref).rsplit(" ", 1)[0]


def _sha(salt: str, key: str) -> str:
  return hashlib.sha256((salt + key).encode()).hexdigest()


def read_heldout(path: pathlib.Path) -> dict[str, str]:
  """The shipped heldout_refs.txt: {ref: set}."""
  lines = path.read_text(encoding="utf-8").splitlines()
  if tuple(lines[0].split("\t")) != pretrain.HELDOUT_COLUMNS:
    raise ValueError(f"{path} starts with {lines[0]!r}, not the header "
                     f"{pretrain.HELDOUT_COLUMNS}; rebuild it with "
                     "scripts/build_pretraining_data.py.")
  return dict(line.split("\t") for line in lines[1:])


def heldout_splits(heldout: Mapping[str, str]) -> dict[str, str]:
  """{held-out ref: "validation" or "test"} (see the module docstring)."""
  splits = {ref: HELDOUT_SPLITS[s] for ref, s in heldout.items()
            if s in HELDOUT_SPLITS}
  reserve = sorted((r for r, s in heldout.items() if s not in HELDOUT_SPLITS),
                   key=lambda r: _sha(DOWNSTREAM_SPLIT_SALT, r))
  half = (len(reserve) + 1) // 2
  splits.update({r: "validation" for r in reserve[:half]})
  splits.update({r: "test" for r in reserve[half:]})
  return splits


def usable_for_training(texts: Mapping[str, Mapping[str, str]],
                        heldout: Mapping[str, str]) -> set[str]:
  """References that are not held out and none of whose verse texts (any
  version) contains a held-out verse's text: the rule pretraining drops
  verses by, applied to the reference as a whole."""
  held_texts = [texts[v.key][r] for v in pretrain.VERSIONS for r in heldout
                if r in texts[v.key]]
  candidates = [(v.key, r) for v in pretrain.VERSIONS for r in texts[v.key]
                if r not in heldout]
  hits = pretrain.containing(held_texts,
                             [texts[k][r] for k, r in candidates])
  tainted = {candidates[i][1] for i in hits}
  return {r for r in texts[pretrain.WEB.key]
          if r not in heldout and r not in tainted}


def _short(*verses: str) -> bool:
  return all(0 < len(v.encode()) <= MAX_BYTES for v in verses)


def canon_rows(texts: Mapping[str, Mapping[str, str]],
               splits: Mapping[str, str], train_refs: set[str],
               order: Mapping[str, int]) -> list[tuple[str, str, str, str]]:
  """(ref, split, label, WEB verse), in canonical order within a split."""
  web = texts[pretrain.WEB.key]
  usable = lambda r: book_of(r) in GROUP and _short(web[r])
  by_class = collections.defaultdict(list)
  for ref in train_refs:
    if usable(ref):
      by_class[GROUP[book_of(ref)]].append(ref)
  chosen = {ref: "train" for refs in by_class.values()
            for ref in sorted(refs, key=lambda r: _sha(CANON_SALT, r))[
                :CANON_TRAIN_PER_CLASS]}
  chosen.update({r: s for r, s in splits.items() if r in web and usable(r)})
  refs = sorted(chosen, key=lambda r: (_split_rank(chosen[r]), order[r]))
  return [(r, chosen[r], GROUP[book_of(r)], web[r]) for r in refs]


def _split_rank(split: str) -> int:
  return ("train", "validation", "test").index(split)


def testament(ref: str) -> str:
  """"ot" or "nt": the testament of `ref`'s book."""
  return "nt" if book_of(ref) in NEW_TESTAMENT else "ot"


def negative_partner(ref: str, pool: Sequence[str], position: int,
                     texts: Mapping[str, Mapping[str, str]]) -> str:
  """The KJV verse a "no" pair shows beside `ref`'s WEB verse.

  Of the NEGATIVE_NEIGHBOURS pool verses on each side of `ref` in
  canonical order, within its book (the nearest of the testament's pool
  when the book has no other), and repeating neither of `ref`'s texts,
  the one whose KJV word count is closest to `ref`'s (ties: the nearer,
  then the earlier): same book and length, so neither topic nor length
  gives the label away.
  """
  web, kjv = texts[pretrain.WEB.key], texts[pretrain.KJV.key]

  def fits(j: int, same_book: bool) -> bool:
    other = pool[j]
    return (kjv[other] != kjv[ref] and web[other] != web[ref] and
            (not same_book or book_of(other) == book_of(ref)))

  for same_book in (True, False):
    near = []
    for step in (-1, 1):
      j, found = position + step, 0
      while 0 <= j < len(pool) and found < NEGATIVE_NEIGHBOURS:
        if same_book and book_of(pool[j]) != book_of(ref):
          break  # The pool is in canonical order: the book has ended.
        if fits(j, same_book):
          near.append(j)
          found += 1
        j += step
    if near:
      words = len(kjv[ref].split())
      best = min(near, key=lambda j: (
          abs(len(kjv[pool[j]].split()) - words), abs(j - position), j))
      return pool[best]
  raise ValueError(f"{ref}: no verse to pair it with in a pool of "
                   f"{len(pool)}; the pool is too small.")


def paraphrase_rows(texts: Mapping[str, Mapping[str, str]],
                    splits: Mapping[str, str], train_refs: set[str],
                    aligned: set[str], order: Mapping[str, int]
                    ) -> list[tuple[str, ...]]:
  """(testament, split, label, ref1, ref2, WEB verse, KJV verse): for each
  pool verse a "yes" pair (its own KJV) and a "no" pair (a partner's)."""
  web, kjv = texts[pretrain.WEB.key], texts[pretrain.KJV.key]

  def usable(ref: str) -> bool:
    # The same verse in both versions: aligned, and of comparable length
    # (the demo's rule), so a "yes" pair never holds a neighbour's text.
    # pylint: disable-next=protected-access
    ratio_ok = pretrain._ratio_ok
    return (book_of(ref) in GROUP and ref in aligned and ref in kjv and
            _short(web[ref], kjv[ref]) and ratio_ok(web[ref], kjv[ref]))

  pools = collections.defaultdict(list)
  for ref, split in splits.items():
    if usable(ref):
      pools[testament(ref), split].append(ref)
  train = collections.defaultdict(list)
  for ref in train_refs:
    if usable(ref):
      train[testament(ref)].append(ref)
  for t, refs in train.items():
    pools[t, "train"] = sorted(refs, key=lambda r: _sha(PARAPHRASE_SALT, r))[
        :PARAPHRASE_TRAIN_VERSES]
  rows = []
  for t in TESTAMENTS:
    for split in ("train", "validation", "test"):
      pool = sorted(pools[t, split], key=order.__getitem__)
      for i, ref in enumerate(pool):
        other = negative_partner(ref, pool, i, texts)
        rows.append((t, split, "yes", ref, ref, web[ref], kjv[ref]))
        rows.append((t, split, "no", ref, other, web[ref], kjv[other]))
  return rows


def build(records: Mapping[str, Mapping[str, str]],
          demo_rows: Sequence[tuple[str, str, str, str]],
          shipped_heldout: Mapping[str, str]
          ) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
  """(canon rows, paraphrase rows) from the modules' raw records ({version
  key: {ref: OSIS}}), the demo's rows and the shipped held-out references."""
  records = {key: pretrain.clean_records(r) for key, r in records.items()}
  texts = pretrain.verse_texts(records)
  pretrain.check_matches_demo(texts, demo_rows)
  aligned = {v.key: pretrain.aligned_refs(records, v)
             for v in pretrain.ENGLISH}
  heldout = pretrain.held_out_refs(texts, aligned, demo_rows)
  if heldout != dict(shipped_heldout):
    raise ValueError(
        "the held-out references computed from these modules differ from "
        "the shipped heldout_refs.txt; rebuild the pretraining data with "
        "scripts/build_pretraining_data.py from the same package versions "
        "first (tasks/data/README.md lists them).")
  web_refs = list(records[pretrain.WEB.key])
  order = {ref: i for i, ref in enumerate(web_refs)}
  missing = set(GROUP) - {book_of(r) for r in web_refs}
  if missing:
    raise ValueError(f"the WEB module lacks the books {sorted(missing)}; "
                     "install sword-text-web 426.0-1 (see the README).")
  splits = heldout_splits(heldout)
  train_refs = usable_for_training(texts, heldout)
  canon = canon_rows(texts, splits, train_refs, order)
  paraphrase = paraphrase_rows(
      texts, splits, train_refs,
      aligned[pretrain.WEB.key] & aligned[pretrain.KJV.key], order)
  return canon, paraphrase


def summary(canon: Sequence[Sequence[str]],
            paraphrase: Sequence[Sequence[str]]) -> str:
  """Split sizes and label counts, for tasks/data/README.md."""
  lines = []
  counts = collections.Counter((row[1], row[2]) for row in canon)
  for split in ("train", "validation", "test"):
    total = sum(n for (s, _), n in counts.items() if s == split)
    lines.append(f"canon {split} {total}: " + ", ".join(
        f"{label} {counts[split, label]}" for label in CANON))
  counts = collections.Counter(tuple(row[:3]) for row in paraphrase)
  for t in TESTAMENTS:
    for split in ("train", "validation", "test"):
      lines.append(f"paraphrase_{t} {split}: yes {counts[t, split, 'yes']}, "
                   f"no {counts[t, split, 'no']}")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--imp_dir", help="a folder of `mod2imp MODULE > MODULE.imp` exports "
      f"({', '.join(v.module for v in pretrain.VERSIONS)}; default: run "
      "mod2imp)")
  parser.add_argument("--demo_data", default=str(pretrain.DEMO_DATA))
  parser.add_argument("--heldout", default=str(pretrain.DEFAULT_HELDOUT))
  parser.add_argument("--canon_output", default=str(CANON_OUTPUT))
  parser.add_argument("--paraphrase_output", default=str(PARAPHRASE_OUTPUT))
  args = parser.parse_args(argv)
  records = {}
  for v in pretrain.VERSIONS:
    imp = (pathlib.Path(args.imp_dir, f"{v.module}.imp").read_text(
        encoding="utf-8") if args.imp_dir else
           pretrain._export(v.module))  # pylint: disable=protected-access
    records[v.key] = demo.read_records(imp)
  canon, paraphrase = build(records,
                            pretrain.read_demo(pathlib.Path(args.demo_data)),
                            read_heldout(pathlib.Path(args.heldout)))
  for path, columns, rows in ((args.canon_output, CANON_COLUMNS, canon),
                              (args.paraphrase_output, PARAPHRASE_COLUMNS,
                               paraphrase)):
    data = demo.tsv_gz(rows, columns)
    pathlib.Path(path).write_bytes(data)
    print(f"wrote {path}: {len(data):,} bytes, {len(rows)} rows",
          file=sys.stderr)
  print(summary(canon, paraphrase))


if __name__ == "__main__":
  main()

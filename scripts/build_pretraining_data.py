r"""Builds `tasks/data/pretrain_bible.jsonl.gz`, the corpus the project's own
small bases pretrain on, and `tasks/data/heldout_refs.txt`, the verses it
leaves out.

Three public-domain Bibles, as Debian packages them for SWORD:

  World English Bible   sword-text-web    module engWEB2015eb  (NRSVA)
  King James Version    sword-text-kjv    module engKJV2006eb  (KJV)
  Reina-Valera 1909     sword-text-sparv  module spaRV1909eb   (KJV)

Set-up (Debian/Ubuntu) and a rebuild, from the repository root:

  apt-get install -y sword-text-web sword-text-kjv sword-text-sparv \
      libsword-utils
  python scripts/build_pretraining_data.py   # or --imp_dir with exports

Verse text comes from scripts/build_demo_data.py's functions, so a verse
reads exactly as in the demo data. What this script adds:

* Held out, in every version: the demo's validation and test references,
  DOWNSTREAM_HELDOUT more references reserved for future downstream tasks,
  and any verse whose text contains (or equals) a held-out verse's text in
  any version. `heldout_refs.txt` lists the references.
* Splits: whole chapters (the same ones in every version) go to a small
  pretraining validation split, so no validation verse has its neighbours
  or its translation in train.
* Documents: passages of consecutive verses of one chapter and version
  (PASSAGE_WORDS), and a share of bilingual documents, an English passage
  and the Spanish one of the same verses separated by a newline
  (BILINGUAL_SHARE), and a share of parallel English documents, a WEB
  passage and the KJV one (PARALLEL_SHARE). Each kept verse of each
  version is in one document.

The output's bytes depend only on the inputs (gzip without a timestamp).
Only the standard library is used, so it runs without the project installed.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import pathlib
import re
import shutil
import sys
from typing import Callable, Iterable, Iterator, Mapping, Sequence

# scripts/ is no package: import the demo builder as a sibling module.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
# pylint: disable-next=g-import-not-at-top,wrong-import-position
import build_demo_data as demo

DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / "tasks" / "data"
DEFAULT_OUTPUT = DATA_DIR / "pretrain_bible.jsonl.gz"
DEFAULT_HELDOUT = DATA_DIR / "heldout_refs.txt"
DEMO_DATA = DATA_DIR / "bible_en_es.tsv.gz"


@dataclasses.dataclass(frozen=True)
class Version:
  key: str  # in document ids and `versions`
  module: str
  package: str
  lang: str


WEB = Version("web", "engWEB2015eb", "sword-text-web", "en")
KJV = Version("kjv", "engKJV2006eb", "sword-text-kjv", "en")
RV1909 = Version("rv1909", "spaRV1909eb", "sword-text-sparv", "es")
VERSIONS = (WEB, KJV, RV1909)
ENGLISH = (WEB, KJV)

# References reserved for downstream tasks (canon classification, WEB/KJV
# paraphrase), on top of the demo's validation and test references.
DOWNSTREAM_HELDOUT = 1000
DOWNSTREAM_SALT = "downstream_heldout:"
# Share of the kept verses (all versions) whose chapters form the
# pretraining validation split.
VALIDATION_SHARE = 0.02
VALIDATION_SALT = "pretrain_validation:"
# Passages aim at PASSAGE_WORDS words and keep within MIN..MAX where the
# verses allow: a run of kept verses shorter than MIN is one short passage,
# and a verse longer than MAX is a passage of its own.
PASSAGE_WORDS = 80
MIN_PASSAGE_WORDS = 40
MAX_PASSAGE_WORDS = 120
# Share of all documents that are bilingual, and their passages' length
# per language: short enough that both halves fit in one pretraining window
# (prefix LM 64+64 tokens, span corruption 128), so every bilingual document
# shows a passage beside its translation (see tasks/data/README.md).
BILINGUAL_SHARE = 0.27
BILINGUAL_PASSAGE_WORDS = 25
MAX_BILINGUAL_PASSAGE_WORDS = 45
BILINGUAL_SALT = "bilingual:"
# Share of all documents that are parallel English: a WEB passage and the
# KJV passage of the same verses (same lengths as bilingual ones). Two
# renderings of one text side by side are where a small model learns to
# find and copy what it has already read, which translation builds on
# (see tasks/data/README.md).
PARALLEL_SHARE = 0.18
PARALLEL_SALT = "parallel:"

HELDOUT_COLUMNS = ("ref", "set")
DEMO_SETS = {"validation": "demo_validation", "test": "demo_test"}

# Whatever follows a book's closing milestone in its last record is no verse
# text: WEB's glossary after Revelation 22:21.
_BOOK_END = re.compile(r"<div\b(?=[^>]*\beID=)(?=[^>]*\btype=\"book\")[^>]*/>")
# The KJV module leaves a USFM marker for the divine name in 27 verses:
# "by my name \nd <w ...>JEHOVAH</w></divineName>".
_USFM_MARKER = re.compile(r"\\nd\b\s*")
# The KJV's paragraph signs ("¶ And God said") are print layout, not words.
_PILCROW = re.compile(r"¶\s*")


def _sha(salt: str, key: str) -> str:
  return hashlib.sha256((salt + key).encode()).hexdigest()


def chapter_of(ref: str) -> str:
  return ref.rsplit(":", 1)[0]


def verse_number(ref: str) -> int:
  return int(ref.rsplit(":", 1)[1])


def clean_records(records: Mapping[str, str]) -> dict[str, str]:
  """Raw OSIS records without the non-verse text the modules carry."""
  cleaned = {}
  for ref, osis in records.items():
    end = _BOOK_END.search(osis)
    if end:
      osis = osis[:end.start()]
    cleaned[ref] = _PILCROW.sub("", _USFM_MARKER.sub("", osis))
  return cleaned


def verse_texts(records: Mapping[str, Mapping[str, str]]
                ) -> dict[str, dict[str, str]]:
  """{version key: {ref: text}} for every non-empty verse, in module order.

  RV1909's capitalised chapter openings are put in normal case with the
  same spelling table the demo builds (from the verses WEB also has), so a
  verse here is the demo's verse to the byte.
  """
  texts = {}
  spanish = {ref: demo.plain_text(raw)
             for ref, raw in records[RV1909.key].items()}
  # A private helper of the sibling script, used so both spell alike.
  preferred = demo._preferred_case(  # pylint: disable=protected-access
      spanish[ref] for ref in records[WEB.key] if ref in spanish)
  for version in VERSIONS:
    out = {}
    for ref, raw in records[version.key].items():
      text = spanish[ref] if version is RV1909 else demo.plain_text(raw)
      if version is RV1909 and ref.endswith(":1"):
        text = demo.normal_case_opening(text, preferred)
      if text:
        out[ref] = text
    texts[version.key] = out
  return texts


def read_demo(path: pathlib.Path) -> list[tuple[str, str, str, str]]:
  """The demo's rows (ref, split, en, es)."""
  with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
    reader = csv.reader(f, delimiter="\t")
    header = tuple(next(reader))
    if header != demo.COLUMNS:
      raise ValueError(f"{path} has columns {header}, not {demo.COLUMNS}")
    return [tuple(row) for row in reader]


def check_matches_demo(texts: Mapping[str, Mapping[str, str]],
                       demo_rows: Sequence[tuple[str, str, str, str]]) -> None:
  """Raises unless every demo verse reads the same here: the text rules
  below compare strings, so they must be the same strings."""
  for ref, _, en, es in demo_rows:
    if texts[WEB.key].get(ref) != en or texts[RV1909.key].get(ref) != es:
      raise ValueError(
          f"{ref}: the demo data and the modules' text differ; rebuild "
          f"{DEMO_DATA.name} with scripts/build_demo_data.py from the same "
          "package versions first.")


def containing(needles: Iterable[str],
               haystacks: Sequence[str]) -> dict[int, str]:
  """{index of a haystack: a needle it contains as a substring}.

  Exact, and fast through a word index: texts are single-spaced, so a
  needle of 3+ words can only occur where its inner words occur as whole
  words; shorter needles are searched everywhere.
  """
  index: dict[str, set[int]] = collections.defaultdict(set)
  for i, text in enumerate(haystacks):
    for word in set(text.split()):
      index[word].add(i)
  everywhere = range(len(haystacks))
  found: dict[int, str] = {}
  for needle in sorted(set(needles)):
    words = needle.split()
    candidates = (min((index.get(w, set()) for w in words[1:-1]), key=len)
                  if len(words) >= 3 else everywhere)
    for i in candidates:
      if i not in found and needle in haystacks[i]:
        found[i] = needle
  return found


def aligned_refs(records: Mapping[str, Mapping[str, str]],
                 english: Version) -> set[str]:
  """References whose `english` and RV1909 verses hold the same verse, by
  the demo's alignment rules (versification moves, shifted chapters, book
  ends)."""
  return {ref for ref, _, _ in demo.aligned_pairs(records[english.key],
                                                  records[RV1909.key])}


def held_out_refs(texts: Mapping[str, Mapping[str, str]],
                  aligned: Mapping[str, set[str]],
                  demo_rows: Sequence[tuple[str, str, str, str]]
                  ) -> dict[str, str]:
  """{ref: set}: the demo's validation and test references, and the
  DOWNSTREAM_HELDOUT references with the smallest salted SHA-256 among
  those that name the same verse in every version holding them (aligned
  in both English-Spanish pairs, or in a book only WEB has)."""
  held = {ref: DEMO_SETS[split] for ref, split, _, _ in demo_rows
          if split in DEMO_SETS}
  web_only_books = ({chapter_of(r).rsplit(" ", 1)[0] for r in texts[WEB.key]}
                    - {chapter_of(r).rsplit(" ", 1)[0]
                       for r in texts[RV1909.key]})
  universe = aligned[WEB.key] & aligned[KJV.key]
  universe |= {r for r in texts[WEB.key]
               if chapter_of(r).rsplit(" ", 1)[0] in web_only_books}
  reserve = sorted(universe - set(held),
                   key=lambda r: _sha(DOWNSTREAM_SALT, r))
  held.update({ref: "downstream_heldout"
               for ref in reserve[:DOWNSTREAM_HELDOUT]})
  return held


def validation_chapters(kept: Mapping[str, Sequence[str]]) -> set[str]:
  """Chapters, smallest salted SHA-256 first, until they hold
  VALIDATION_SHARE of the kept verses of all versions."""
  counts = collections.Counter(chapter_of(ref) for refs in kept.values()
                               for ref in refs)
  total = sum(counts.values())
  chosen, covered = set(), 0
  for chapter in sorted(counts, key=lambda c: _sha(VALIDATION_SALT, c)):
    if covered >= VALIDATION_SHARE * total:
      break
    chosen.add(chapter)
    covered += counts[chapter]
  return chosen


def runs(refs: Sequence[str], kept: set[str]) -> Iterator[list[str]]:
  """Maximal runs of consecutive kept verses of one chapter, in `refs`'
  (module) order: a verse not kept, or missing, ends a run."""
  run: list[str] = []
  for ref in refs:
    if (ref in kept and run and chapter_of(run[-1]) == chapter_of(ref) and
        verse_number(run[-1]) + 1 == verse_number(ref)):
      run.append(ref)
      continue
    if run:
      yield run
    run = [ref] if ref in kept else []
  if run:
    yield run


def chunk(run: Sequence[str], words: Mapping[str, int],
          target_words: int = PASSAGE_WORDS) -> list[list[str]]:
  """A run of verses cut into round(total / target_words) passages (at
  least one) of about equal length: each cut at the verse end nearest its
  share of the words."""
  total = sum(words[ref] for ref in run)
  parts = max(1, round(total / target_words))
  passages, current, done = [], [], 0
  for ref in run:
    target = (len(passages) + 1) * total / parts
    if current and len(passages) < parts - 1 and (
        abs(done - target) <= abs(done + words[ref] - target)):
      passages.append(current)
      current = []
    current.append(ref)
    done += words[ref]
  passages.append(current)
  return passages


def passage_id(version_keys: Sequence[str], refs: Sequence[str]) -> str:
  """"web/Genesis 1:1-5" ("web+rv1909/..." for a bilingual document)."""
  span = refs[0] if len(refs) == 1 else f"{refs[0]}-{verse_number(refs[-1])}"
  return "+".join(version_keys) + "/" + span


def _ratio_ok(a: str, b: str) -> bool:
  """The demo's length-ratio test (lengths + 20 bytes) for one verse."""
  shorter, longer = sorted((len(a.encode()), len(b.encode())))
  return longer + 20 <= demo.MAX_LENGTH_RATIO * (shorter + 20)


@dataclasses.dataclass
class Corpus:
  documents: list[dict[str, object]]
  heldout: dict[str, str]
  excluded: collections.Counter  # (version key, reason) -> verses
  validation_chapters: set[str]


def build(records: Mapping[str, Mapping[str, str]],
          demo_rows: Sequence[tuple[str, str, str, str]]) -> Corpus:
  """The documents and held-out references from the modules' raw records
  ({version key: {ref: OSIS}}) and the demo's rows."""
  records = {key: clean_records(r) for key, r in records.items()}
  texts = verse_texts(records)
  check_matches_demo(texts, demo_rows)
  aligned = {v.key: aligned_refs(records, v) for v in ENGLISH}
  heldout = held_out_refs(texts, aligned, demo_rows)

  # Held out by reference in every version, then by text: any verse that
  # contains a held-out verse's text (of any version) as a substring.
  excluded: collections.Counter = collections.Counter()
  candidates = [(v.key, ref) for v in VERSIONS for ref in texts[v.key]
                if ref not in heldout]
  for v in VERSIONS:
    excluded[v.key, "reference"] = sum(ref in heldout for ref in texts[v.key])
  held_texts = [texts[v.key][ref] for v in VERSIONS for ref in heldout
                if ref in texts[v.key]]
  hits = containing(held_texts, [texts[k][ref] for k, ref in candidates])
  for i in hits:
    excluded[candidates[i][0], "text"] += 1
  dropped = {candidates[i] for i in hits}
  kept = {v.key: [ref for ref in texts[v.key] if ref not in heldout and
                  (v.key, ref) not in dropped] for v in VERSIONS}

  validation = validation_chapters(kept)
  split = lambda ref: ("validation" if chapter_of(ref) in validation
                       else "train")
  words = {v.key: {ref: len(texts[v.key][ref].split()) for ref in kept[v.key]}
           for v in VERSIONS}
  order = {c: i for i, c in enumerate(dict.fromkeys(
      chapter_of(ref) for v in VERSIONS for ref in records[v.key]))}
  rank = {v.key: i for i, v in enumerate(VERSIONS)}

  def passages(version: Version, consumed: set[str],
               target_words: int = PASSAGE_WORDS) -> list[list[str]]:
    usable = set(kept[version.key]) - consumed
    return [p for run in runs(list(records[version.key]), usable)
            for p in chunk(run, words[version.key], target_words)]

  def document(parts: Sequence[tuple[Version, Sequence[str]]]
               ) -> dict[str, object]:
    refs = parts[0][1]
    return {
        "id": passage_id([v.key for v, _ in parts], refs),
        "split": split(refs[0]),
        "kind": ("monolingual" if len(parts) == 1 else
                 "parallel" if parts[0][0].lang == parts[1][0].lang else
                 "bilingual"),
        "langs": [v.lang for v, _ in parts],
        "versions": [v.key for v, _ in parts],
        "text": "\n".join(" ".join(texts[v.key][r] for r in rs)
                          for v, rs in parts),
        "_first": refs[0],  # for sorting; removed before writing
    }

  # Bilingual documents start from short Spanish passages: each picks an
  # English version and an order by its hash, and qualifies when that
  # version has the same verses, aligned, of comparable length, and both
  # sides are at most MAX_BILINGUAL_PASSAGE_WORDS. Parallel documents do
  # the same from short WEB passages with the KJV.
  def candidates(first: Version, salt: str,
                 second_of: Callable[[bytes], Version],
                 alignment: Mapping[str, set[str]]
                 ) -> list[tuple[bytes, Version, Version, list[str]]]:
    found = []
    for refs in passages(first, set(), BILINGUAL_PASSAGE_WORDS):
      digest = hashlib.sha256(
          (salt + passage_id([first.key], refs)).encode()).digest()
      second = second_of(digest)
      if all(r in alignment[second.key] and r in words[second.key] and
             _ratio_ok(texts[second.key][r], texts[first.key][r])
             for r in refs) and max(
                 sum(words[v.key][r] for r in refs)
                 for v in (first, second)) <= MAX_BILINGUAL_PASSAGE_WORDS:
        found.append((digest, first, second, refs))
    return sorted(found, key=lambda c: c[0])

  bilingual = candidates(RV1909, BILINGUAL_SALT,
                         lambda digest: ENGLISH[digest[0] % 2], aligned)
  # WEB and KJV verses are aligned with each other where both are aligned
  # with RV1909 (whose versification is the KJV's).
  parallel = candidates(WEB, PARALLEL_SALT, lambda digest: KJV,
                        {KJV.key: aligned[WEB.key] & aligned[KJV.key]})

  def assemble(bilingual_count: int, parallel_count: int
               ) -> list[dict[str, object]]:
    consumed = {v.key: set() for v in VERSIONS}
    documents = []

    def take(pairs, count):
      taken = 0
      for digest, first, second, refs in pairs:
        if taken == count:
          break
        if consumed[first.key] & set(refs) or consumed[second.key] & set(refs):
          continue
        consumed[first.key].update(refs)
        consumed[second.key].update(refs)
        parts = [(second, refs), (first, refs)]
        documents.append(document(parts if digest[1] % 2 else parts[::-1]))
        taken += 1
      return taken

    take(bilingual, bilingual_count)
    take(parallel, parallel_count)
    for v in VERSIONS:
      documents += [document([(v, refs)])
                    for refs in passages(v, consumed[v.key])]
    return documents

  # The paired documents use up verses the monolingual passages would have
  # held, so the counts that make BILINGUAL_SHARE and PARALLEL_SHARE of all
  # documents are found by a few fixed-point rounds: count = share * all.
  counts = (0, 0)
  for _ in range(6):
    monolingual = len(assemble(*counts)) - sum(counts)
    total = monolingual / (1 - BILINGUAL_SHARE - PARALLEL_SHARE)
    counts = (min(len(bilingual), round(BILINGUAL_SHARE * total)),
              min(len(parallel), round(PARALLEL_SHARE * total)))
  documents = assemble(*counts)

  documents.sort(key=lambda doc: (
      order[chapter_of(doc["_first"])], verse_number(doc["_first"]),
      len(doc["versions"]), rank[doc["versions"][0]]))
  for doc in documents:
    del doc["_first"]
  leaks = containing(held_texts, [str(d["text"]) for d in documents])
  if leaks:
    i, text = next(iter(leaks.items()))
    raise AssertionError(
        f"document {documents[i]['id']} contains held-out text {text!r}")
  return Corpus(documents, heldout, excluded, validation)


def jsonl_gz(documents: Iterable[Mapping[str, object]]) -> bytes:
  """One JSON object a line, gzipped with mtime 0: same documents, same
  bytes."""
  out = io.BytesIO()
  with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0,
                     compresslevel=9) as f:
    for doc in documents:
      f.write((json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))
  return out.getvalue()


def heldout_text(heldout: Mapping[str, str],
                 order: Sequence[str]) -> str:
  """heldout_refs.txt: a header, then `ref<TAB>set` in canonical order."""
  position = {ref: i for i, ref in enumerate(order)}
  refs = sorted(heldout, key=lambda r: position[r])
  return "".join(f"{a}\t{b}\n" for a, b in [HELDOUT_COLUMNS] +
                 [(r, heldout[r]) for r in refs])


def summary(corpus: Corpus) -> str:
  """Counts for tasks/data/README.md: documents, words and UTF-8 bytes per
  split and kind, and the exclusions."""
  lines = ["| split | kind | documents | words | bytes |",
           "|---|---|---:|---:|---:|"]
  totals: dict[tuple[str, str], list[int]] = collections.defaultdict(
      lambda: [0, 0, 0])
  for doc in corpus.documents:
    text = str(doc["text"])
    for key in ((doc["split"], doc["kind"]), (doc["split"], "all"),
                ("all", doc["kind"]), ("all", "all")):
      t = totals[key]
      t[0] += 1
      t[1] += len(text.split())
      t[2] += len(text.encode())
  for split in ("train", "validation", "all"):
    for kind in ("monolingual", "bilingual", "parallel", "all"):
      d, w, b = totals[split, kind]
      lines.append(f"| {split} | {kind} | {d:,} | {w:,} | {b:,} |")
  for kind in ("bilingual", "parallel"):
    share = totals["all", kind][0] / totals["all", "all"][0]
    words = totals["all", kind][1] / totals["all", "all"][1]
    lines.append(f"{kind} share of documents: {share:.4f} (of words: "
                 f"{words:.4f})")
  lines.append("held-out references: " + ", ".join(
      f"{s} {n}" for s, n in sorted(collections.Counter(
          corpus.heldout.values()).items())))
  lines.append("excluded verses: " + ", ".join(
      f"{k} by {r} {n}" for (k, r), n in sorted(corpus.excluded.items())))
  lines.append(f"validation chapters: {len(corpus.validation_chapters)}")
  by_version = collections.Counter(
      (v, doc["split"]) for doc in corpus.documents for v in doc["versions"])
  lines.append("documents per version: " + ", ".join(
      f"{v} {s} {n}" for (v, s), n in sorted(by_version.items())))
  return "\n".join(lines)


def _export(module: str) -> str:
  if shutil.which("mod2imp") is None:
    raise SystemExit("mod2imp not found; install it with `apt-get install "
                     "libsword-utils`, or pass exports with --imp_dir.")
  try:
    return demo.export_imp(module)
  except SystemExit as e:
    raise SystemExit(f"{e} ({module} is in "
                     f"{[v.package for v in VERSIONS if v.module == module][0]}"
                     ")") from e


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--imp_dir", help="a folder of `mod2imp MODULE > MODULE.imp` exports "
      f"({', '.join(v.module for v in VERSIONS)}; default: run mod2imp)")
  parser.add_argument("--demo_data", default=str(DEMO_DATA))
  parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
  parser.add_argument("--heldout_output", default=str(DEFAULT_HELDOUT))
  args = parser.parse_args(argv)
  records = {}
  for v in VERSIONS:
    imp = (pathlib.Path(args.imp_dir, f"{v.module}.imp").read_text(
        encoding="utf-8") if args.imp_dir else _export(v.module))
    records[v.key] = demo.read_records(imp)
  corpus = build(records, read_demo(pathlib.Path(args.demo_data)))
  data = jsonl_gz(corpus.documents)
  pathlib.Path(args.output).write_bytes(data)
  order = list(dict.fromkeys(r for v in VERSIONS for r in records[v.key]))
  pathlib.Path(args.heldout_output).write_text(
      heldout_text(corpus.heldout, order), encoding="utf-8")
  print(f"wrote {args.output}: {len(data):,} bytes; {args.heldout_output}: "
        f"{len(corpus.heldout)} references", file=sys.stderr)
  print(summary(corpus))


if __name__ == "__main__":
  main()

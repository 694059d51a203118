r"""Builds `tasks/data/bible_en_es.tsv.gz`, the README demo's translation data.

Verse-aligned English-Spanish text from two public-domain Bibles, as Debian
packages them for SWORD:

  World English Bible   sword-text-web    module engWEB2015eb
  Reina-Valera 1909     sword-text-sparv  module spaRV1909eb

Set-up (Debian/Ubuntu) and a rebuild, from the repository root:

  apt-get install -y sword-text-web sword-text-sparv libsword-utils
  python scripts/build_demo_data.py

The script exports each module's raw OSIS records with `mod2imp` (or reads
.imp files given with --en_imp/--es_imp), strips the markup (footnotes,
headings, Strong's numbers, line and paragraph milestones), aligns verses by
reference, drops empty, very long and badly mismatched pairs, assigns the
splits and writes a gzipped TSV (ref, split, en, es) whose bytes depend only
on the inputs. tasks/data/README.md records the provenance and licenses.

Only the standard library is used, so it runs without the project installed.
"""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
import hashlib
import html
import io
import math
import pathlib
import re
import subprocess
import sys
from typing import Iterable, Sequence

EN_MODULE = "engWEB2015eb"
ES_MODULE = "spaRV1909eb"
DEFAULT_OUTPUT = (pathlib.Path(__file__).resolve().parents[1] / "tasks" /
                  "data" / "bible_en_es.tsv.gz")
COLUMNS = ("ref", "split", "en", "es")
# Held-out verses per split; the rest train.
HELD_OUT = {"validation": 500, "test": 500}
# Pairs with a side longer than this (UTF-8 bytes) are dropped: the demo
# runs on bytes, and the longest verses (genealogies, Esther 8:9) are rare.
MAX_BYTES = 400
# Pairs whose byte lengths differ by more than this factor are dropped: there
# one side holds text the other lacks (a verse the modules divide
# differently, a subscription RV1909 appends to a verse).
MAX_LENGTH_RATIO = 2.0

_RECORD = re.compile(r"^\$\$\$(.+) (\d+):(\d+)$")
# Elements dropped with their content: footnotes and cross-references,
# headings other than canonical psalm titles, speaker labels (Song of Songs).
_NOTE = re.compile(r"<note\b[^>]*>.*?</note>", re.S)
_HEADING = re.compile(
    r"<(title|speaker)\b(?![^>]*canonical=\"true\")[^>]*>.*?</\1>", re.S)
# Self-closing milestones that end a line, paragraph or chapter: a space.
_BREAK = re.compile(r"<(?:l|lg|lb|div|chapter|milestone|verse|p)\b[^>]*/>")
# Any other tag (<w> with Strong's numbers, <q>, <transChange>, the kept
# psalm <title>, ...): removed, its text kept.
_TAG = re.compile(r"<[^>]*>")
# Where a footnote was. SWORD's WEB has none of the whitespace around its
# notes ("God<note>...</note><w>created</w>"), so a note between two words
# becomes a space and a note before punctuation becomes nothing.
_MARK = "\x00"
_MARK_BEFORE_QUOTE = re.compile(r"\s*" + _MARK + r"\s*(?=[’”»)\]])")
_SPACES = re.compile(r"\s+")
# Neither text puts a space before these; tag and note boundaries do.
_SPACE_BEFORE_PUNCTUATION = re.compile(r" (?=[,.;:!?])")
# RV1909 sets added words (<transChange>, italics in print) with no space
# on either side: "Abram</w><transChange>de allí</transChange>". A space goes
# on both sides, except for an enclitic pronoun that ends a verb
# ("sáca</w><transChange>lo</transChange> de" reads "sácalo de").
_ADDED_WORDS = re.compile(
    r"(?<=[^\s>])</w>(<transChange\b[^>]*>)([^<]*)</transChange>(?=(<)?)")
_ENCLITICS = frozenset("lo la los las le les me te se nos os".split())
_WORD = re.compile(r"\w+")


def export_imp(module: str) -> str:
  """The module's raw records, as `mod2imp MODULE` prints them."""
  try:
    result = subprocess.run(["mod2imp", module], check=True,
                            capture_output=True)
  except FileNotFoundError as e:
    raise SystemExit(
        "mod2imp not found; install it with `apt-get install "
        "libsword-utils`, or pass the exported files with --en_imp/--es_imp."
    ) from e
  text = result.stdout.decode("utf-8")
  if "$$$" not in text:
    raise SystemExit(
        f"mod2imp printed no records for {module!r}; install its package "
        "(sword-text-web / sword-text-sparv).")
  return text


def read_records(imp: str) -> dict[str, str]:
  """`$$$Book C:V` records of an .imp export -> {"Book C:V": raw OSIS}.

  Module/testament/book headings and chapter or verse 0 (introductions,
  chapter labels) are skipped. Keeps the export's (canonical) order.
  """
  records: dict[str, str] = {}
  ref, lines = None, []
  for line in imp.splitlines() + ["$$$"]:
    if not line.startswith("$$$"):
      lines.append(line)
      continue
    if ref is not None:
      records[ref] = "\n".join(lines)
    match = _RECORD.match(line)
    ref, lines = None, []
    if match and int(match.group(2)) > 0 and int(match.group(3)) > 0:
      ref = f"{match.group(1)} {int(match.group(2))}:{int(match.group(3))}"
  return records


def _space_added_words(osis: str) -> str:
  """Spaces around RV1909's added words; enclitics stay on their verb."""

  def replace(match: re.Match[str]) -> str:
    words, tag_follows = match.group(2), match.group(3) is not None
    before = _TAG.sub("", osis[:match.start()]).split()
    verb = before[-1] if before else ""
    # A capitalised word is a verb only at a sentence start ("Dad</w>me"),
    # else a name ("Josué</w><transChange>los</transChange> circuncidó").
    sentence_start = len(before) < 2 or before[-2][-1] in ".:;!?"
    if (words in _ENCLITICS and not tag_follows and
        (verb[:1].islower() or sentence_start)):
      return "</w>" + words
    return f"</w> {words} " if tag_follows else f"</w> {words}"

  osis = _ADDED_WORDS.sub(replace, osis)
  return osis.replace("</transChange><w", "</transChange> <w")


def plain_text(osis: str) -> str:
  """A verse's reading text: markup, notes and headings removed."""
  text = _space_added_words(osis)
  text = _NOTE.sub(_MARK, text)
  text = _HEADING.sub(" ", text)
  text = _BREAK.sub(" ", text)
  text = _TAG.sub("", text)
  text = html.unescape(text)
  text = _MARK_BEFORE_QUOTE.sub("", text)
  text = _SPACES.sub(" ", text.replace(_MARK, " "))
  return _SPACE_BEFORE_PUNCTUATION.sub("", text).strip()


def _preferred_case(texts: Iterable[str]) -> dict[str, str]:
  """{UPPER: its most frequent spelling in `texts`}: "EN" -> "en",
  "MOISÉS" -> "Moisés"."""
  counts = collections.Counter(
      word for text in texts for word in _WORD.findall(text)
      if not word.isupper())
  best: dict[str, tuple[int, str]] = {}
  for word, count in counts.items():
    key = word.upper()
    if count > best.get(key, (0, ""))[0]:
      best[key] = (count, word)
  return {key: word for key, (_, word) in best.items()}


def normal_case_opening(text: str, preferred: dict[str, str]) -> str:
  """RV1909's capitalised chapter opening in normal case.

  Print sets a chapter's first word(s) in capitals: "Y YO me paré",
  "DE OCHO años era Josías", "Y MOISÉS dijo". The first run of capitalised
  words (from the first word of 2+ letters, with the one-letter words just
  before it) takes each word's most frequent spelling elsewhere, the run's
  first word capitalised: "Y yo me", "De ocho años", "Y Moisés dijo". A run
  followed by no lowercase word is an inscription ("MENE, MENE, TEKEL") and
  stays as printed.
  """
  words = list(_WORD.finditer(text))
  first = next((i for i, w in enumerate(words)
                if len(w.group()) > 1 and w.group().isupper()), None)
  if first is None:
    return text
  start = first
  while start > 0 and len(words[start - 1].group()) == 1 and (
      words[start - 1].group().isupper()):
    start -= 1
  end = first
  while end < len(words) and words[end].group().isupper():
    end += 1
  if end == len(words) or not any(c.islower() for c in words[end].group()):
    return text
  pieces, last = [], 0
  for i in range(start, end):
    word = words[i].group()
    cased = preferred.get(word, word.lower())
    if i == start:
      cased = cased[:1].upper() + cased[1:]
    pieces += [text[last:words[i].start()], cased]
    last = words[i].end()
  return "".join(pieces) + text[last:]


def _shifted(lengths: Sequence[tuple[int, int]]) -> bool:
  """Whether a chapter's (en, es) byte lengths line up better one verse
  apart somewhere: a run of verses the modules divide differently."""
  gap = lambda a, b: abs(math.log((a + 20) / (b + 20)))
  n = len(lengths)
  for i in range(n):
    window = range(max(0, i - 2), min(n, i + 3))
    same = sum(gap(*lengths[j]) for j in window) / len(window)
    for shift in (-1, 1):
      moved = [j for j in window if 0 <= j + shift < n]
      if len(moved) < 3:
        continue
      cost = sum(gap(lengths[j][0], lengths[j + shift][1])
                 for j in moved) / len(moved)
      if same > 0.3 and cost < 0.5 * same:
        return True
  return False


def aligned_pairs(en: dict[str, str],
                  es: dict[str, str]) -> list[tuple[str, str, str]]:
  """(ref, en, es) for the verses both modules align, in the English order.

  The modules use different versifications (WEB: NRSVA, RV1909: KJV), and
  RV1909's module divides some passages differently. Dropped whole, so no
  pair holds a neighbour's text:
  * a chapter where either side has an empty verse (its text moved to a
    neighbour: RV1909's Numbers 13:1 is WEB's 12:16), and the chapter after
    it, whose verses the move shifted;
  * a chapter whose verse lengths line up better one verse apart over a
    few verses (`_shifted`: RV1909's 1 Chronicles 21:16-30);
  * each book's last verse, where one side carries text that is no verse:
    RV1909's epistle subscriptions, WEB's glossary after Revelation 22:21.
  """
  en_text = {ref: plain_text(raw) for ref, raw in en.items() if ref in es}
  es_text = {ref: plain_text(es[ref]) for ref in en_text}
  preferred = _preferred_case(es_text.values())
  chapters = collections.defaultdict(list)
  for ref in en_text:
    chapters[ref.rsplit(":", 1)[0]].append(ref)
  names = list(chapters)
  emptied = {c for c, refs in chapters.items()
             if any(not en_text[r] or not es_text[r] for r in refs)}
  dropped = {c for i, c in enumerate(names)
             if c in emptied or (i and names[i - 1] in emptied)}
  dropped |= {c for c, refs in chapters.items() if _shifted(
      [(len(en_text[r].encode()), len(es_text[r].encode())) for r in refs])}
  book = lambda chapter: chapter.rsplit(" ", 1)[0]
  book_ends = {chapters[c][-1] for c, after in zip(names, names[1:] + [""])
               if book(c) != book(after)}
  pairs = []
  for chapter in names:
    if chapter in dropped:
      continue
    for ref in chapters[chapter]:
      if ref in book_ends:
        continue
      es_verse = es_text[ref]
      if ref.endswith(":1"):
        es_verse = normal_case_opening(es_verse, preferred)
      pairs.append((ref, en_text[ref], es_verse))
  return pairs


def keep(en: str, es: str) -> bool:
  """Whether a pair is a usable training example (see the constants)."""
  shorter, longer = sorted((len(en.encode()), len(es.encode())))
  if not shorter or longer > MAX_BYTES:
    return False
  # +20: short verses vary more ("You shall not commit adultery." is
  # "No adulterarás.").
  return longer + 20 <= MAX_LENGTH_RATIO * (shorter + 20)


def _rank(ref: str) -> str:
  return hashlib.sha256(ref.encode()).hexdigest()


def assign_splits(pairs: Sequence[tuple[str, str, str]]) -> list[str]:
  """Each pair's split: validation/test by the SHA-256 of the reference.

  The HELD_OUT[split] references with the smallest hashes go to validation,
  the next ones to test; train gets the rest minus any pair whose English or
  Spanish text is also held out (repeated verses, e.g. Numbers 7's
  offerings), so no held-out sentence is seen in training.
  """
  order = sorted(range(len(pairs)), key=lambda i: _rank(pairs[i][0]))
  splits = ["train"] * len(pairs)
  start = 0
  for split, count in HELD_OUT.items():
    for i in order[start:start + count]:
      splits[i] = split
    start += count
  held_out = {text for (_, en, es), split in zip(pairs, splits)
              if split != "train" for text in (en, es)}
  for i, (_, en, es) in enumerate(pairs):
    if splits[i] == "train" and (en in held_out or es in held_out):
      splits[i] = ""  # dropped
  return splits


def build(en_imp: str, es_imp: str) -> list[tuple[str, str, str, str]]:
  """Rows (ref, split, en, es) from the two modules' .imp exports."""
  en, es = read_records(en_imp), read_records(es_imp)
  pairs = [p for p in aligned_pairs(en, es) if keep(p[1], p[2])]
  return [(ref, split, en_text, es_text)
          for (ref, en_text, es_text), split in zip(pairs,
                                                    assign_splits(pairs))
          if split]


def tsv_gz(rows: Iterable[Sequence[str]],
           columns: Sequence[str] = COLUMNS) -> bytes:
  """Gzipped UTF-8 TSV with a header; mtime 0, so the same rows give the
  same bytes."""
  text = io.StringIO()
  writer = csv.writer(text, delimiter="\t", lineterminator="\n",
                      quoting=csv.QUOTE_MINIMAL)
  writer.writerow(columns)
  writer.writerows(rows)
  out = io.BytesIO()
  with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0,
                     compresslevel=9) as f:
    f.write(text.getvalue().encode("utf-8"))
  return out.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--en_imp", help=f"mod2imp export of {EN_MODULE} "
                      "(default: run mod2imp)")
  parser.add_argument("--es_imp", help=f"mod2imp export of {ES_MODULE} "
                      "(default: run mod2imp)")
  parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
  args = parser.parse_args(argv)
  en_imp = (pathlib.Path(args.en_imp).read_text(encoding="utf-8")
            if args.en_imp else export_imp(EN_MODULE))
  es_imp = (pathlib.Path(args.es_imp).read_text(encoding="utf-8")
            if args.es_imp else export_imp(ES_MODULE))
  rows = build(en_imp, es_imp)
  data = tsv_gz(rows)
  pathlib.Path(args.output).write_bytes(data)
  counts = collections.Counter(row[1] for row in rows)
  print(f"wrote {args.output}: {len(data):,} bytes, "
        + ", ".join(f"{s} {counts[s]}" for s in ("train", "validation",
                                                   "test")),
        file=sys.stderr)


if __name__ == "__main__":
  main()

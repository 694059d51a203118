"""The shipped pretraining corpus: held-out verses stay out, splits and
kinds are as tasks/data/README.md documents them.

Reads only the shipped files (no SWORD modules needed);
scripts/build_pretraining_data.py makes them.
"""

from __future__ import annotations

import collections
import csv
import functools
import gzip
import json
import pathlib
import re

import pytest

DATA = pathlib.Path(__file__).resolve().parents[1] / "tasks" / "data"
CORPUS = DATA / "pretrain_bible.jsonl.gz"
HELDOUT = DATA / "heldout_refs.txt"
DEMO = DATA / "bible_en_es.tsv.gz"
README = DATA / "README.md"
# As tasks/data/README.md states them.
BILINGUAL_SHARE = 0.27
PARALLEL_SHARE = 0.18
MAX_BILINGUAL_PASSAGE_WORDS = 45
VALIDATION_SHARE = 0.02
DOWNSTREAM_HELDOUT = 1000
FIELDS = ("id", "split", "kind", "langs", "versions", "text")
LANGS = {"web": "en", "kjv": "en", "rv1909": "es"}
# "web/Genesis 1:2-4", "kjv+rv1909/Esther (Greek) 8:13".
_ID = re.compile(r"^([a-z0-9+]+)/(.+) (\d+):(\d+)(?:-(\d+))?$")


@functools.cache
def documents() -> tuple[dict[str, object], ...]:
  with gzip.open(CORPUS, "rb") as f:
    return tuple(json.loads(line.decode("utf-8", errors="strict"))
                 for line in f)


@functools.cache
def demo_rows() -> tuple[dict[str, str], ...]:
  with gzip.open(DEMO, "rt", encoding="utf-8", newline="") as f:
    return tuple(csv.DictReader(f, delimiter="\t"))


@functools.cache
def heldout() -> dict[str, str]:
  lines = HELDOUT.read_text(encoding="utf-8").splitlines()
  assert lines[0] == "ref\tset"
  return dict(line.split("\t") for line in lines[1:])


def verses(doc_id: str) -> tuple[str, list[str]]:
  """A document's versions ("web+rv1909") and the references it holds."""
  match = _ID.match(doc_id)
  assert match, doc_id
  versions, chapter, number, first, last = match.groups()
  last = last or first
  return versions, [f"{chapter} {number}:{v}"
                    for v in range(int(first), int(last) + 1)]


def test_documents_are_well_formed():
  docs = documents()
  assert len(docs) > 20000
  for doc in docs:
    assert tuple(doc) == FIELDS, doc["id"]
    text = doc["text"]
    assert isinstance(text, str) and text.strip() == text and text
    parts = text.split("\n")
    assert all(part.strip() for part in parts), doc["id"]
    assert doc["split"] in ("train", "validation")
    assert doc["langs"] == [LANGS[v] for v in doc["versions"]]
    versions, _ = verses(doc["id"])
    assert versions == "+".join(doc["versions"])
    if doc["kind"] == "monolingual":
      assert len(parts) == 1 and len(doc["versions"]) == 1
    elif doc["kind"] == "bilingual":
      assert len(parts) == 2 and sorted(doc["langs"]) == ["en", "es"]
    else:
      assert doc["kind"] == "parallel"
      assert len(parts) == 2 and sorted(doc["versions"]) == ["kjv", "web"]
  assert len({doc["id"] for doc in docs}) == len(docs)


def _contained(needles: list[str], haystacks: list[str]) -> set[str]:
  """The needles found as substrings of any haystack. A needle of 3+ words
  (texts are single-spaced) can only be where its inner words are whole
  words, so only those haystacks are searched."""
  index = collections.defaultdict(set)
  for i, text in enumerate(haystacks):
    for word in set(text.split()):
      index[word].add(i)
  found = set()
  for needle in needles:
    words = needle.split()
    candidates = (min((index.get(w, set()) for w in words[1:-1]), key=len)
                  if len(words) >= 3 else range(len(haystacks)))
    if any(needle in haystacks[i] for i in candidates):
      found.add(needle)
  return found


def test_contained_finds_substrings_across_word_and_verse_bounds():
  haystacks = ["In the beginning, God created", "the heavens. And the earth",
               "Jesus wept. Then"]
  assert _contained(
      ["beginning, God", "ginning, God creat", "heavens. And the ea",
       "Jesus wept.", "wept. Then", "God created the heavens"],
      haystacks) == {"beginning, God", "ginning, God creat",
                     "heavens. And the ea", "Jesus wept.", "wept. Then"}


def test_no_held_out_verse_text_is_in_any_document():
  held = [row[lang] for row in demo_rows() if row["split"] != "train"
          for lang in ("en", "es")]
  assert len(held) == 2000
  found = _contained(held, [str(doc["text"]) for doc in documents()])
  assert not found, sorted(found)[:5]


def test_no_document_holds_a_held_out_reference():
  held = heldout()
  for doc in documents():
    _, refs = verses(str(doc["id"]))
    assert not set(refs) & held.keys(), doc["id"]


def test_held_out_references_cover_the_demo_splits():
  held = heldout()
  for row in demo_rows():
    if row["split"] != "train":
      assert held.get(row["ref"]) == f"demo_{row['split']}", row["ref"]
  counts = collections.Counter(held.values())
  assert counts == {"demo_validation": 500, "demo_test": 500,
                    "downstream_heldout": DOWNSTREAM_HELDOUT}


@pytest.mark.parametrize("kind,share", [("bilingual", BILINGUAL_SHARE),
                                         ("parallel", PARALLEL_SHARE)])
def test_paired_shares_are_as_documented(kind, share):
  docs = documents()
  measured = sum(doc["kind"] == kind for doc in docs) / len(docs)
  assert measured == pytest.approx(share, abs=0.01)
  assert f"{share:.0%} of the documents are {kind}" in (
      README.read_text(encoding="utf-8"))


def test_most_of_the_text_is_monolingual():
  words = collections.Counter()
  for doc in documents():
    words[doc["kind"]] += len(str(doc["text"]).split())
  assert words["monolingual"] > sum(words.values()) / 2


@pytest.mark.parametrize("kind", ["bilingual", "parallel"])
def test_a_paired_document_fits_one_pretraining_window(kind):
  """Both sides are short (at most MAX_BILINGUAL_PASSAGE_WORDS words), so
  one span-corruption or prefix-LM window holds a passage and its
  translation together."""
  sides = [len(side.split()) for doc in documents()
           if doc["kind"] == kind
           for side in str(doc["text"]).split("\n")]
  assert max(sides) <= MAX_BILINGUAL_PASSAGE_WORDS
  assert 20 <= sum(sides) / len(sides) <= 30


def test_splits_are_disjoint():
  chapters = collections.defaultdict(set)
  texts = collections.defaultdict(set)
  for doc in documents():
    _, refs = verses(str(doc["id"]))
    chapters[doc["split"]].add(refs[0].rsplit(":", 1)[0])
    texts[doc["split"]].add(doc["text"])
  assert not chapters["train"] & chapters["validation"]
  assert not texts["train"] & texts["validation"]
  docs = documents()
  share = sum(doc["split"] == "validation" for doc in docs) / len(docs)
  assert share == pytest.approx(VALIDATION_SHARE, abs=0.01)


def test_each_verse_of_each_version_is_in_one_document():
  seen = collections.Counter()
  for doc in documents():
    versions, refs = verses(str(doc["id"]))
    seen.update((v, ref) for v in versions.split("+") for ref in refs)
  assert max(seen.values()) == 1

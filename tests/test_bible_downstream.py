"""The downstream tasks on the shipped Bible corpus
(`tasks/bible_downstream.py`): registered, closed label sets, and evaluated
on held-out verses only.

The split rules are checked on the whole shipped files (plain Python,
fast); the seqio tasks are read with small `take(...)`s to tie them to
those files.
"""

from __future__ import annotations

import collections
import importlib.util
import pathlib

import numpy as np
import pytest
import seqio

import prompt_tuning.tasks  # pylint: disable=unused-import
from prompt_tuning.tasks import bible_downstream as bd
from prompt_tuning.tasks import demo
from prompt_tuning.tasks import vocabularies

ROOT = pathlib.Path(__file__).resolve().parents[1]
PLAIN = ("bible_canon", "bible_paraphrase_ot", "bible_paraphrase_nt")
RANK = tuple(name + "_rank" for name in PLAIN)
TRANSLATION = ("bible_en_es", "bible_es_en", "bible_en_es_msp",
               "bible_es_en_msp")
LABELS = {"bible_canon": ("law", "history", "wisdom", "prophets", "gospels",
                          "letters", "apocalypse"),
          "bible_paraphrase_ot": ("no", "yes"),
          "bible_paraphrase_nt": ("no", "yes")}
# Written out here, not taken from the module, so the test is a second
# opinion on the grouping data/README.md states.
NEW_TESTAMENT = frozenset((
    "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "I Corinthians",
    "II Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians",
    "I Thessalonians", "II Thessalonians", "I Timothy", "II Timothy", "Titus",
    "Philemon", "Hebrews", "James", "I Peter", "II Peter", "I John",
    "II John", "III John", "Jude", "Revelation of John"))
SOME_BOOKS = {"Genesis": "law", "Deuteronomy": "law", "Joshua": "history",
              "Esther": "history", "Acts": "history", "Job": "wisdom",
              "Psalms": "wisdom", "Song of Solomon": "wisdom",
              "Isaiah": "prophets", "Lamentations": "prophets",
              "Daniel": "prophets", "Malachi": "prophets",
              "Matthew": "gospels", "John": "gospels", "Romans": "letters",
              "Hebrews": "letters", "Jude": "letters",
              "Revelation of John": "apocalypse"}
EVAL_SPLITS = ("validation", "test")
DESIGN = ("bible_en_es_design", "bible_canon_design_rank")
# Decoder-only formats of the paraphrase tasks, and their rank variants.
PARAPHRASE_LM = ("bible_paraphrase_ot_lm", "bible_paraphrase_nt_lm")
PARAPHRASE_LM_RANK = tuple(name + "_rank" for name in PARAPHRASE_LM)


def book(ref: str) -> str:
  return ref.rsplit(" ", 1)[0]


def _rows(name: str, split: str, count: int = 20) -> list[dict]:
  task = seqio.get_mixture_or_task(name)
  dataset = task.get_dataset(None, split=split, shuffle=False).take(count)
  return [{k: v.decode() if isinstance(v, bytes) else v for k, v in r.items()}
          for r in dataset.as_numpy_iterator()]


def _refs(name: str, split: str) -> list[str]:
  """Every reference a task's split shows, from the shipped files."""
  if name == "bible_canon":
    return [ref for ref, _, _ in bd.canon_examples(split)]
  if name.startswith("bible_paraphrase_"):
    testament = name.split("_")[2]  # bible_paraphrase_<testament>[_lm]
    return [r for _, r1, r2, _, _ in bd.paraphrase_examples(testament, split)
            for r in (r1, r2)]
  return [ref for ref, _, _ in bd.translation_pairs(split)]


# --- Registry -----------------------------------------------------------------


def test_every_task_is_registered_with_the_bible_vocabulary_and_metrics():
  assert set(bd.NAMES) == {*PLAIN, *RANK, *DESIGN, *PARAPHRASE_LM,
                           *PARAPHRASE_LM_RANK, "bible_es_en_msp"}
  vocabulary = vocabularies.bible_vocabulary()
  for name in bd.NAMES:
    task = seqio.get_mixture_or_task(name)
    for feature in ("inputs", "targets"):
      assert task.output_features[feature].vocabulary == vocabulary, name
    if name == "bible_en_es_design":  # Nothing trains on prompt design.
      assert set(task.splits) == set(EVAL_SPLITS)
      assert task.predict_metric_fns and not task.score_metric_fns
    elif name in (*RANK, *PARAPHRASE_LM_RANK, "bible_canon_design_rank"):
      assert set(task.splits) == set(EVAL_SPLITS), name
      assert not task.predict_metric_fns and len(task.score_metric_fns) == 1
    else:
      assert set(task.splits) == {"train", *EVAL_SPLITS}, name
      assert task.predict_metric_fns and not task.score_metric_fns, name
  for name in TRANSLATION:  # Both directions exist in both formats.
    assert name in seqio.TaskRegistry.names(), name


def test_split_sizes_are_the_shipped_files():
  for name, sizes in bd.NUM_EXAMPLES.items():
    task = seqio.get_mixture_or_task(name)
    for split, count in sizes.items():
      assert task.num_input_examples(split) == count, (name, split)
      assert len(_refs(name, split)) == count * (
          2 if "paraphrase" in name else 1), (name, split)


def test_data_files_are_small_and_shipped_by_setup_py():
  setup = (ROOT / "setup.py").read_text(encoding="utf-8")
  assert '"prompt_tuning.tasks": ["data/*"]' in setup
  for path in (bd.CANON_FILE, bd.PARAPHRASE_FILE):
    assert path.parent == ROOT / "tasks" / "data"
    assert path.stat().st_size < 3_000_000, path


# --- Held-out verses ----------------------------------------------------------


@pytest.mark.parametrize("name", [*PLAIN, "bible_es_en_msp"])
def test_only_held_out_verses_evaluate_and_none_trains(name):
  held = bd.heldout_refs()
  train = set(_refs(name, "train"))
  assert not train & set(held), sorted(train & set(held))[:5]
  for split in EVAL_SPLITS:
    outside = set(_refs(name, split)) - set(held)
    assert not outside, sorted(outside)[:5]


def test_one_verse_is_in_the_same_split_in_every_task():
  where = collections.defaultdict(set)
  for name in (*PLAIN, "bible_es_en_msp"):
    for split in EVAL_SPLITS:
      for ref in _refs(name, split):
        where[ref].add(split)
  assert all(len(splits) == 1 for splits in where.values())
  held = bd.heldout_refs()
  for ref, (split,) in where.items():
    if held[ref].startswith("demo_"):
      assert held[ref] == "demo_" + split, ref


def test_no_train_text_is_an_evaluation_text():
  canon = {s: {v for _, _, v in bd.canon_examples(s)} for s in bd.SPLITS}
  assert not canon["train"] & (canon["validation"] | canon["test"])
  for t in bd.TESTAMENTS:
    texts = {s: {x for row in bd.paraphrase_examples(t, s) for x in row[3:]}
             for s in bd.SPLITS}
    assert not texts["train"] & (texts["validation"] | texts["test"]), t


def test_tasks_yield_the_files_examples():
  held = bd.heldout_refs()
  rows = _rows("bible_canon", "validation", 5)
  assert [r["ref"] for r in rows] == [
      ref for ref, _, _ in bd.canon_examples("validation")[:5]]
  assert all(r["ref"] in held for r in rows)
  rows = _rows("bible_paraphrase_nt", "train", 5)
  assert [r["ref1"] for r in rows] == [
      x[1] for x in bd.paraphrase_examples("nt", "train")[:5]]
  assert not {r["ref1"] for r in rows} & set(held)


# --- Labels and formats -------------------------------------------------------


@pytest.mark.parametrize("name", PLAIN)
def test_examples_have_the_fields_and_closed_labels(name):
  vocabulary = vocabularies.bible_vocabulary()
  for split in bd.SPLITS:
    for row in _rows(name, split, 10):
      assert row["targets_pretokenized"] in LABELS[name], row
      assert list(row["targets"]) == vocabulary.encode(
          row["targets_pretokenized"]) + [1]
      assert row["inputs"][-1] == 1 and len(row["inputs"]) > 2
      if name != "bible_canon":
        assert row["inputs_pretokenized"].startswith("sentence1: ")
        assert " sentence2: " in row["inputs_pretokenized"]
  labels = (collections.Counter(l for _, l, _ in bd.canon_examples(s))
            if name == "bible_canon" else
            collections.Counter(x[0] for x in bd.paraphrase_examples(
                name.rsplit("_", 1)[1], s)) for s in bd.SPLITS)
  for split, counts in zip(bd.SPLITS, labels):
    assert set(counts) == set(LABELS[name]), (split, counts)


def test_canon_labels_follow_the_book_and_train_is_near_balanced():
  by_book = collections.defaultdict(set)
  for split in bd.SPLITS:
    for ref, label, verse in bd.canon_examples(split):
      by_book[book(ref)].add(label)
      assert verse
  assert len(by_book) == 66 and all(len(v) == 1 for v in by_book.values())
  for name, label in SOME_BOOKS.items():
    assert by_book[name] == {label}, name
  train = collections.Counter(l for _, l, _ in bd.canon_examples("train"))
  assert max(train.values()) == 600 and min(train.values()) > 300, train


@pytest.mark.parametrize("testament", bd.TESTAMENTS)
def test_paraphrase_pairs_and_testaments(testament):
  for split in bd.SPLITS:
    rows = bd.paraphrase_examples(testament, split)
    yes = {r1: s2 for label, r1, r2, _, s2 in rows if label == "yes"}
    no = {r1: (r2, s2) for label, r1, r2, _, s2 in rows if label == "no"}
    assert len(yes) == len(no) == len(rows) / 2  # one of each per verse
    assert set(yes) == set(no)
    for label, r1, r2, _, _ in rows:
      assert (r1 == r2) == (label == "yes"), (r1, r2, label)
      for ref in (r1, r2):
        assert (book(ref) in NEW_TESTAMENT) == (testament == "nt"), ref
    for ref, (other, text) in no.items():
      assert text != yes[ref], ref  # the negative shows other words
    same_book = np.mean([book(r) == book(o) for r, (o, _) in no.items()])
    assert same_book > 0.95, same_book


def test_paraphrase_input_reads_like_mrpc():
  label, ref1, _, web, kjv = bd.paraphrase_examples("ot", "validation")[0]
  [row] = _rows("bible_paraphrase_ot", "validation", 1)
  assert row["inputs_pretokenized"] == f"sentence1: {web} sentence2: {kjv}"
  assert row["targets_pretokenized"] == label and row["ref1"] == ref1


@pytest.mark.parametrize("name", ["bible_paraphrase_ot", "bible_paraphrase_nt",
                                  "bible_paraphrase_ot_rank"])
def test_paraphrase_lm_format_ends_inputs_in_a_newline_not_an_eos(name):
  """The decoder-only variant: same examples and targets; the inputs end in
  the newline a bilingual document hands over with, and no EOS."""
  lm_name = name.replace("_rank", "") + "_lm" + (
      "_rank" if name.endswith("_rank") else "")
  plain, lm = _rows(name, "validation", 4), _rows(lm_name, "validation", 4)
  newline = vocabularies.bible_vocabulary().encode("\n")[-1]
  for p, l in zip(plain, lm):
    assert l["inputs_pretokenized"] == p["inputs_pretokenized"] + "\n"
    assert list(p["inputs"][-1:]) == [1]
    assert list(l["inputs"]) == list(p["inputs"][:-1]) + [newline]
    assert list(l["targets"]) == list(p["targets"]) and l["targets"][-1] == 1
  assert bd.NUM_EXAMPLES[lm_name.replace("_rank", "")] == bd.NUM_EXAMPLES[
      name.replace("_rank", "")]


def test_prompt_design_tasks_hold_the_hand_written_prompt():
  """Translation: the verse, then the newline that hands a bilingual
  pretraining document over to Spanish, then EOS; canon: the question
  naming the seven labels before the verse, one row per label."""
  ref, en, es = demo.verses("validation")[0]
  [row] = _rows("bible_en_es_design", "validation", 1)
  assert row["inputs_pretokenized"] == en + "\n"
  assert row["targets_pretokenized"] == es
  newline = vocabularies.bible_vocabulary().encode("\n")[-1]
  assert list(row["inputs"][-2:]) == [newline, 1]
  labels = LABELS["bible_canon"]
  plain = _rows("bible_canon", "validation", 1)[0]
  rows = _rows("bible_canon_design_rank", "validation", len(labels))
  for word in labels:
    assert word in bd.CANON_DESIGN_PROMPT
  assert {r["inputs_pretokenized"] for r in rows} == {
      f"{bd.CANON_DESIGN_PROMPT} {plain['inputs_pretokenized']}"}
  assert [r["targets_pretokenized"] for r in rows] == list(labels)
  assert [r["is_correct"] for r in rows] == [
      l == plain["targets_pretokenized"] for l in labels]


def test_es_en_msp_is_the_demo_pair_reversed():
  ref, en, es = demo.verses("validation")[0]
  [row] = _rows("bible_es_en_msp", "validation", 1)
  assert (row["inputs_pretokenized"], row["targets_pretokenized"]) == (es, en)
  assert ref in bd.heldout_refs()


# --- Rank classification and metrics ------------------------------------------


@pytest.mark.parametrize("name", PLAIN)
def test_rank_variant_repeats_each_example_per_label(name):
  labels = LABELS[name]
  plain = _rows(name, "validation", 2)
  rows = _rows(name + "_rank", "validation", 2 * len(labels))
  for example, (first, copies) in enumerate(
      zip(plain, (rows[:len(labels)], rows[len(labels):]))):
    assert [r["targets_pretokenized"] for r in copies] == list(labels)
    assert [r["idx"].tolist() for r in copies] == [
        [example, i] for i in range(len(labels))]
    assert {r["inputs_pretokenized"] for r in copies} == {
        first["inputs_pretokenized"]}
    assert [r["is_correct"] for r in copies] == [
        l == first["targets_pretokenized"] for l in labels]


def _score_metrics(name, targets, scores):
  task = seqio.get_mixture_or_task(name)
  out = {}
  for fn in task.score_metric_fns:
    out.update(fn(targets, scores))
  return out


def test_metrics():
  def predict(name, targets, predictions):
    task = seqio.get_mixture_or_task(name)
    out = {}
    for fn in task.predict_metric_fns:
      out.update(fn(targets, predictions))
    return out

  post = seqio.get_mixture_or_task("bible_canon").postprocess_fn
  assert [post(w) for w in ("law", "apocalypse", "Law", "")] == [0, 6, -1, -1]
  assert set(predict("bible_canon", [0, 6], [0, 1])) == {
      "accuracy", "mean_7class_f1"}
  assert predict("bible_paraphrase_nt", [1, 0], [1, 1]) == {
      "accuracy": 50.0, "f1": pytest.approx(200 / 3)}
  # Rank: example 0 is "yes" (label 1) and scores it higher; example 1 is
  # "no" but scores "yes" higher.
  targets = [((0, 0), False, 1.0, 2), ((0, 1), True, 1.0, 2),
             ((1, 0), True, 1.0, 2), ((1, 1), False, 1.0, 2)]
  assert _score_metrics("bible_paraphrase_ot_rank", targets,
                        [-3.0, -1.0, -2.0, -1.0])["accuracy"] == 50.0


def test_tasks_batch_through_the_feature_converters():
  lengths = bd.FEATURE_LENGTHS["bible_paraphrase_ot"]
  task = seqio.get_mixture_or_task("bible_paraphrase_ot")
  dataset = task.get_dataset(lengths, split="train", shuffle=False).take(8)
  batch = next(iter(seqio.EncDecFeatureConverter(pack=True)(
      dataset, lengths).batch(2).as_numpy_iterator()))
  assert batch["encoder_input_tokens"].shape == (2, lengths["inputs"])
  dataset = seqio.get_mixture_or_task("bible_canon").get_dataset(
      bd.FEATURE_LENGTHS["bible_canon"], split="train", shuffle=False)
  row = next(iter(seqio.DecoderFeatureConverter(pack=False)(
      dataset.take(1), bd.FEATURE_LENGTHS["bible_canon"]).as_numpy_iterator()))
  assert row["decoder_target_tokens"].shape == (88,)


# --- The builder's pairing rules ----------------------------------------------


@pytest.fixture(scope="module")
def builder():
  path = ROOT / "scripts" / "build_downstream_data.py"
  spec = importlib.util.spec_from_file_location("build_downstream_data", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_negative_partner_is_a_nearby_verse_of_like_length(builder):
  lengths = {"Ruth 1:1": 5, "Ruth 1:2": 9, "Ruth 1:3": 20, "Ruth 1:4": 6,
             "Ruth 1:5": 5, "Ruth 1:6": 5, "Ruth 1:7": 7, "Jonah 1:1": 5}
  web = {ref: "web " + ref for ref in lengths}
  kjv = {ref: " ".join([ref.replace(" ", "_")] + ["w"] * (n - 1))
         for ref, n in lengths.items()}
  kjv["Ruth 1:6"] = kjv["Ruth 1:5"]  # a repeated verse
  texts = {"web": web, "kjv": kjv}
  pool = list(lengths)
  # Ruth 1:5 (5 words): 1:6 repeats its text, so it is no negative; of the
  # rest, 1:1 is as long (if 4 verses away) and wins over 1:4 (6 words).
  assert builder.negative_partner("Ruth 1:5", pool, 4, texts) == "Ruth 1:1"
  assert builder.negative_partner("Ruth 1:3", pool, 2, texts) == "Ruth 1:2"
  # Jonah has no other verse in the pool: the testament's nearest, where
  # 1:6 and 1:5 are as long and 1:6 is nearer.
  assert builder.negative_partner("Jonah 1:1", pool, 7, texts) == "Ruth 1:6"


def test_held_out_splits_keep_the_demo_sets(builder):
  held = {"A 1:1": "demo_validation", "A 1:2": "demo_test",
          **{f"B 1:{i}": "downstream_heldout" for i in range(1, 11)}}
  splits = builder.heldout_splits(held)
  assert splits["A 1:1"] == "validation" and splits["A 1:2"] == "test"
  assert collections.Counter(splits.values()) == {"validation": 6, "test": 6}

"""The shipped demo tasks, their build script, and the tasks' metrics.

The README demo trains on `demo_bible_en_es`, so it must load from the
file inside the package with no TFDS or network, give the same examples
everywhere, keep its held-out verses out of train, and produce T5 /
MSP features of the documented lengths; the build script must strip
SWORD's markup without gluing words together; the metric functions must
agree with hand-computed values and with sacrebleu itself.
"""

from __future__ import annotations

import importlib.util
import pathlib
import socket

import numpy as np
import pytest
import sacrebleu
import seqio
import tensorflow_datasets as tfds

from prompt_tuning.tasks import demo
from prompt_tuning.tasks import metrics
from prompt_tuning.tasks import vocabularies

import seqio_test_tasks

EOS = 1
ROOT = pathlib.Path(__file__).resolve().parents[1]

GENESIS_1_1_EN = "In the beginning, God created the heavens and the earth."
GENESIS_1_1_ES = "En el principio crió Dios los cielos y la tierra."


@pytest.fixture(scope="module")
def build_script():
  """scripts/build_demo_data.py as a module (scripts/ is no package)."""
  path = ROOT / "scripts" / "build_demo_data.py"
  spec = importlib.util.spec_from_file_location("build_demo_data", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _first(name: str, split: str, lengths) -> dict[str, np.ndarray]:
  """The split's first preprocessed example (canonical order)."""
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(lengths, split=split, shuffle=False)
  return next(iter(ds.take(1).as_numpy_iterator()))


def _converted(name: str, lengths, converter, split: str = "validation"):
  ds = seqio.get_dataset(name, lengths, feature_converter=converter,
                         dataset_split=split, shuffle=False, num_epochs=1,
                         verbose=False)
  return list(ds.as_numpy_iterator())


def _bytes(text: str) -> list[int]:
  return [b + 3 for b in text.encode("utf-8")]  # ByteVocabulary's offset


# Loading.


def test_loads_from_the_package_file_without_tfds_or_network(monkeypatch):
  assert demo.DATA_FILE.parent == (
      pathlib.Path(demo.__file__).resolve().parent / "data")
  assert demo.DATA_FILE.is_file()

  def forbidden(*args, **kwargs):
    raise AssertionError(f"the demo task touched TFDS or the network: {args}")

  for name in ("builder", "load", "data_source"):
    monkeypatch.setattr(tfds, name, forbidden)
  monkeypatch.setattr(socket.socket, "connect", forbidden)
  monkeypatch.setattr(socket, "create_connection", forbidden)
  demo._rows.cache_clear()  # pylint: disable=protected-access
  demo.verses.cache_clear()
  task = seqio.get_mixture_or_task(demo.TASK_NAME)
  assert isinstance(task.source, seqio.FunctionDataSource)
  rows = _converted(demo.TASK_NAME, demo.FEATURE_LENGTHS,
                    seqio.EncDecFeatureConverter(pack=False), split="test")
  assert len(rows) == demo.NUM_EXAMPLES["test"]


def test_a_missing_file_says_how_to_get_it(monkeypatch, tmp_path):
  monkeypatch.setattr(demo, "DATA_FILE", tmp_path / "absent.tsv.gz")
  demo._rows.cache_clear()  # pylint: disable=protected-access
  try:
    with pytest.raises(FileNotFoundError, match="build_demo_data.py"):
      demo._rows()  # pylint: disable=protected-access
  finally:
    demo._rows.cache_clear()  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="no split 'dev'"):
    demo.verses("dev")


def test_all_four_tasks_are_registered_once():
  names = demo.register()
  assert names == demo.register() == (
      "demo_bible_en_es", "demo_bible_en_es_msp", "demo_bible_en_es_mt5",
      "demo_bible_en_es_msp_mgpt")
  for name in names:
    task = seqio.get_mixture_or_task(name)
    assert task.predict_metric_fns == [metrics.bleu, demo.chrf]
    assert not task.score_metric_fns
    assert set(task.splits) == set(demo.NUM_EXAMPLES)
  vocab = lambda n: seqio.get_mixture_or_task(n).output_features[
      "targets"].vocabulary
  assert vocab(demo.TASK_NAME) == vocab(demo.MSP_TASK_NAME) == (
      seqio.ByteVocabulary())
  assert vocab(demo.MT5_TASK_NAME) is vocabularies.mt5_vocabulary()
  assert vocab(demo.MGPT_MSP_TASK_NAME) is vocabularies.mgpt_vocabulary()


# Splits.


def test_splits_have_the_documented_sizes_and_are_disjoint():
  refs = {}
  for split, count in demo.NUM_EXAMPLES.items():
    rows = demo.verses(split)
    assert len(rows) == count
    refs[split] = {ref for ref, _, _ in rows}
    assert len(refs[split]) == count  # one row per verse
    assert all(en and es for _, en, es in rows)
  assert not refs["train"] & refs["validation"]
  assert not refs["train"] & refs["test"]
  assert not refs["validation"] & refs["test"]
  held_out = {text for split in ("validation", "test")
              for _, en, es in demo.verses(split) for text in (en, es)}
  assert not held_out & {text for _, en, es in demo.verses("train")
                         for text in (en, es)}


def test_shipped_splits_follow_the_build_scripts_rule(build_script):
  rows = demo._rows()  # pylint: disable=protected-access
  assert build_script.assign_splits([(r, en, es) for r, _, en, es in rows]) == [
      split for _, split, _, _ in rows]
  assert build_script.HELD_OUT == {
      k: v for k, v in demo.NUM_EXAMPLES.items() if k != "train"}


def test_feature_lengths_hold_95_percent_of_training_verses():
  train = demo.verses("train")
  en = np.array([len(en.encode()) + 1 for _, en, _ in train])  # + EOS
  es = np.array([len(es.encode()) + 1 for _, _, es in train])
  prefix = len(demo.PREFIX.encode())
  assert np.mean(en + prefix <= demo.FEATURE_LENGTHS["inputs"]) >= 0.95
  assert np.mean(es <= demo.FEATURE_LENGTHS["targets"]) >= 0.95
  assert np.mean(en <= demo.MSP_FEATURE_LENGTHS["inputs"]) >= 0.95
  assert np.mean(es <= demo.MSP_FEATURE_LENGTHS["targets"]) >= 0.95


# Formats, on a hand-picked verse.


def test_genesis_1_1_in_the_encoder_decoder_format():
  assert demo.verses("train")[0] == (
      "Genesis 1:1", GENESIS_1_1_EN, GENESIS_1_1_ES)
  ex = _first(demo.TASK_NAME, "train", demo.FEATURE_LENGTHS)
  inputs = ("translate English to Spanish: In the beginning, God created "
            "the heavens and the earth.")
  assert ex["inputs_pretokenized"].decode() == inputs
  assert ex["targets_pretokenized"].decode() == GENESIS_1_1_ES
  assert ex["inputs"].tolist() == _bytes(inputs) + [EOS]
  assert ex["targets"].tolist() == _bytes(GENESIS_1_1_ES) + [EOS]


def test_genesis_1_1_in_the_msp_format():
  ex = _first(demo.MSP_TASK_NAME, "train", demo.MSP_FEATURE_LENGTHS)
  assert ex["inputs_pretokenized"].decode() == GENESIS_1_1_EN
  assert ex["targets_pretokenized"].decode() == GENESIS_1_1_ES
  assert ex["inputs"].tolist() == _bytes(GENESIS_1_1_EN) + [EOS]
  # "crió": the accent is two UTF-8 bytes, each its own token.
  assert _bytes("ó") == [0xC3 + 3, 0xB3 + 3]
  assert ex["targets"].tolist() == _bytes(GENESIS_1_1_ES) + [EOS]


def test_subword_variants_share_the_formats():
  # pylint: disable-next=protected-access
  ds = demo._dataset_fn("train", False).take(1)
  encdec = next(iter(demo.encoder_decoder_format(ds).as_numpy_iterator()))
  msp = next(iter(demo.msp_format(ds).as_numpy_iterator()))
  assert encdec == {"inputs": (demo.PREFIX + GENESIS_1_1_EN).encode(),
                    "targets": GENESIS_1_1_ES.encode()}
  assert msp == {"inputs": GENESIS_1_1_EN.encode(),
                 "targets": GENESIS_1_1_ES.encode()}
  for name, formatter in ((demo.MT5_TASK_NAME, demo.encoder_decoder_format),
                          (demo.MGPT_MSP_TASK_NAME, demo.msp_format)):
    assert seqio.get_mixture_or_task(name).preprocessors[0] is formatter


def test_john_3_16_is_one_clean_verse_pair():
  (en, es), = [(en, es) for split in demo.NUM_EXAMPLES
               for ref, en, es in demo.verses(split) if ref == "John 3:16"]
  # WEB's footnote sat between "born" and "Son" with no space around it.
  assert en == ("For God so loved the world, that he gave his only born Son, "
                "that whoever believes in him should not perish, but have "
                "eternal life.")
  assert es == ("Porque de tal manera amó Dios al mundo, que ha dado á su "
                "Hijo unigénito, para que todo aquel que en él cree, no se "
                "pierda, mas tenga vida eterna.")


# Batches after the feature converters.


def test_encoder_decoder_batches():
  rows = _converted(demo.TASK_NAME, demo.FEATURE_LENGTHS,
                    seqio.EncDecFeatureConverter(pack=False))
  assert len(rows) == demo.NUM_EXAMPLES["validation"]
  lengths = {"encoder_input_tokens": 264, "decoder_input_tokens": 232,
             "decoder_target_tokens": 232, "decoder_loss_weights": 232}
  for row, (_, en, es) in zip(rows, demo.verses("validation")):
    assert {k: (v.shape, v.dtype) for k, v in row.items()} == {
        k: ((n,), np.int32) for k, n in lengths.items()}
    target = row["decoder_target_tokens"]
    expected = (_bytes(es) + [EOS])[:232]
    expected[-1] = EOS  # append_eos_after_trim: a cut target still ends
    assert target[target != 0].tolist() == expected
    assert row["decoder_loss_weights"].sum() == len(expected)
    np.testing.assert_array_equal(row["decoder_input_tokens"][1:],
                                  target[:-1])
    inputs = row["encoder_input_tokens"]
    assert inputs[inputs != 0].tolist()[:len(demo.PREFIX)] == _bytes(
        demo.PREFIX)
  assert any(len(es.encode()) + 1 > 232
             for _, _, es in demo.verses("validation"))  # cutting happens


def test_msp_batches_with_the_decoder_only_converter():
  lengths = demo.MSP_FEATURE_LENGTHS
  rows = _converted(demo.MSP_TASK_NAME, lengths,
                    seqio.DecoderFeatureConverter(pack=False))
  assert len(rows) == demo.NUM_EXAMPLES["validation"]
  total = lengths["inputs"] + lengths["targets"]
  checked = 0
  for row, (_, en, es) in zip(rows, demo.verses("validation")):
    assert {k: (v.shape, v.dtype) for k, v in row.items()} == {
        k: ((total,), np.int32) for k in (
            "decoder_input_tokens", "decoder_target_tokens",
            "decoder_loss_weights", "decoder_causal_attention")}
    source, target = _bytes(en) + [EOS], _bytes(es) + [EOS]
    if len(source) > lengths["inputs"] or len(target) > lengths["targets"]:
      continue
    checked += 1
    tokens = row["decoder_target_tokens"]
    assert tokens[tokens != 0].tolist() == source + target
    # Prefix LM: full attention over the source (and the first target
    # input), loss on the target only.
    assert row["decoder_causal_attention"].sum() == len(source) + 1
    weights = row["decoder_loss_weights"]
    assert weights.sum() == len(target)
    assert weights[len(source):len(source) + len(target)].all()
  assert checked >= 0.9 * len(rows)


def test_msp_batches_with_the_encoder_decoder_converter():
  # MultiStagePrompting reads MSP batches under T5X's encoder-decoder names.
  rows = _converted(demo.MSP_TASK_NAME, demo.MSP_FEATURE_LENGTHS,
                    seqio.EncDecFeatureConverter(pack=False))
  _, en, es = demo.verses("validation")[0]
  row = rows[0]
  assert row["encoder_input_tokens"].shape == (240,)
  assert row["decoder_target_tokens"].shape == (232,)
  source = row["encoder_input_tokens"]
  assert source[source != 0].tolist() == _bytes(en) + [EOS]
  target = row["decoder_target_tokens"]
  assert target[target != 0].tolist() == _bytes(es) + [EOS]


def test_batches_are_the_same_on_every_read():
  converter = seqio.EncDecFeatureConverter(pack=False)
  first = _converted(demo.TASK_NAME, demo.FEATURE_LENGTHS, converter, "test")
  second = _converted(demo.TASK_NAME, demo.FEATURE_LENGTHS, converter, "test")
  for a, b in zip(first, second):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


# The build script.


def test_build_script_strips_markup_without_gluing_words(build_script):
  plain = build_script.plain_text
  # WEB, Genesis 1:1: Strong's numbers and a footnote with no spaces.
  assert plain(
      '<w lemma="strong:H0430">In</w> <w lemma="strong:H0853">the</w> '
      '<w lemma="strong:H7225">beginning</w>, <w lemma="strong:H0430">God'
      '</w><note placement="foot"><reference type="annotateRef">1:1 '
      '</reference>The Hebrew word rendered “God” is “אֱלֹהִ֑ים” (Elohim).'
      '</note><w lemma="strong:H1254">created</w> the earth.') == (
          "In the beginning, God created the earth.")
  # A note before punctuation leaves no space; a section heading and
  # line milestones go; a canonical psalm title stays.
  assert plain('<title type="x-section">Heading</title>coins<note>x</note> '
               '? <l sID="a"/>Not<l eID="a"/>') == "coins? Not"
  assert plain('<title canonical="true" type="psalm">A Psalm.</title> '
               '<lg sID="g"/>Yahweh, how!') == "A Psalm. Yahweh, how!"
  # RV1909's added words: spaced, except an enclitic pronoun on its verb.
  assert plain('<w>enviada</w> <w>Abram</w><transChange type="added">de '
               'allí</transChange>, <w>sáca</w><transChange type="added">lo'
               '</transChange> <w>de</w> <w>Josué</w><transChange '
               'type="added">los</transChange> <w>circuncidó</w>') == (
                   "enviada Abram de allí, sácalo de Josué los circuncidó")
  assert plain("a &amp; b") == "a & b"


def test_build_script_reads_records_and_fixes_chapter_openings(build_script):
  imp = ("$$$[ Module Heading ]\n\n$$$Genesis 0:0\n<div/>intro\n"
         "$$$Genesis 1:0\n<chapter/>\n$$$Genesis 1:1\n<w>EN</w> el "
         "principio\n$$$II Kings 12:10\nlast\n")
  assert build_script.read_records(imp) == {
      "Genesis 1:1": "<w>EN</w> el principio", "II Kings 12:10": "last"}
  preferred = {"EN": "en", "YO": "yo", "MOISÉS": "Moisés", "OCHO": "ocho"}
  fix = lambda text: build_script.normal_case_opening(text, preferred)
  assert fix("EN el principio") == "En el principio"
  assert fix("Y YO me paré") == "Y yo me paré"
  assert fix("Y MOISÉS dijo") == "Y Moisés dijo"
  assert fix("Salmo de David. ¡OCHO años!") == "Salmo de David. ¡Ocho años!"
  assert fix("MENE, MENE, TEKEL, UPHARSIN.") == "MENE, MENE, TEKEL, UPHARSIN."


def test_build_script_drops_unusable_pairs_and_is_deterministic(
    build_script):
  keep = build_script.keep
  assert keep("You shall not commit adultery.", "No adulterarás.")
  assert not keep("", "Y Felipe dijo")
  assert not keep("a" * 401, "b" * 300)  # too long for the byte demo
  assert not keep("Grace be with you all. Amen.",
                  "La gracia sea con todos vosotros. Amén. Fué escrita á "
                  "los Hebreos desde Italia con Timoteo, y otros más.")
  rows = [("John 3:16", "train", "en\ttext", 'es "text"')]
  data = build_script.tsv_gz(rows)
  assert data == build_script.tsv_gz(rows)  # no timestamp in the gzip


# Metrics.


def test_chrf_equals_sacrebleu_corpus_chrf():
  targets = [GENESIS_1_1_ES, "No matarás.", "Jehová es mi pastor."]
  predictions = ["En el principio creó Dios el cielo y la tierra.",
                 "No matarás.", "El Señor es mi pastor."]
  expected = sacrebleu.corpus_chrf(predictions, [targets]).score
  assert demo.chrf(targets, predictions) == {"chrf": pytest.approx(
      expected, abs=1e-9)}
  assert 0.0 < expected < 100.0
  assert demo.chrf(targets, targets)["chrf"] == pytest.approx(100.0)
  with pytest.raises(ValueError, match="3 targets but 2"):
    demo.chrf(targets, predictions[:2])


def test_bleu_on_spanish_verses_equals_sacrebleu():
  targets = [GENESIS_1_1_ES, "No matarás.", "Jehová es mi pastor."]
  predictions = ["En el principio creó Dios el cielo y la tierra.",
                 "No matarás.", "El Señor es mi pastor."]
  expected = sacrebleu.corpus_bleu(predictions, [targets],
                                   tokenize="13a").score
  assert metrics.bleu(targets, predictions) == {"bleu": pytest.approx(
      expected, abs=1e-9)}
  assert 0.0 < expected < 100.0


def test_sequence_accuracy_on_known_predictions():
  targets = ["b a", "d c", "f e", "h g"]
  predictions = ["b a", "c d", "f e", "h g "]
  # Exact match only: "c d" (wrong order) and "h g " (extra space) miss.
  assert metrics.sequence_accuracy(targets, predictions) == {
      "sequence_accuracy": 50.0}
  assert metrics.sequence_accuracy([], []) == {"sequence_accuracy": 0.0}


def test_bleu_equals_sacrebleu_corpus_bleu():
  targets = ["green stone river apple", "zero snow lion jump",
             "zebra tea call arm"]
  predictions = ["green stone river apple", "zero lion snow jump",
                 "zebra tea arm"]
  expected = sacrebleu.corpus_bleu(predictions, [targets]).score
  assert metrics.bleu(targets, predictions) == {"bleu": pytest.approx(
      expected, abs=1e-9)}
  assert 0.0 < expected < 100.0
  assert metrics.bleu(targets, targets)["bleu"] == pytest.approx(100.0)


def test_mean_score_and_length_mismatch():
  assert metrics.mean_score(["a", "b"], [-1.0, -3.0]) == {"mean_score": -2.0}
  with pytest.raises(ValueError, match="2 targets but 1"):
    metrics.sequence_accuracy(["a", "b"], ["a"])


def test_runtime_test_tasks_register_once_and_fit_their_lengths():
  names = seqio_test_tasks.register()
  assert names == seqio_test_tasks.register()
  copy, rank, mixture = (seqio.get_mixture_or_task(n) for n in names)
  assert copy.predict_metric_fns == [metrics.sequence_accuracy]
  assert rank.score_metric_fns == [metrics.mean_score]
  assert not rank.predict_metric_fns
  assert {t.name for t in mixture.tasks} == {copy.name, rank.name}
  lengths = seqio_test_tasks.FEATURE_LENGTHS
  for split, count in seqio_test_tasks.SPLITS.items():
    rows = list(copy.get_dataset(lengths, split=split, shuffle=False)
                .as_numpy_iterator())
    assert len(rows) == count
    for row in rows:
      for key in ("inputs", "targets"):  # EOS-terminated, nothing cut
        assert row[key][-1] == EOS
        assert seqio_test_tasks.VOCABULARY.decode(row[key][:-1].tolist()) == (
            row[f"{key}_pretokenized"].decode())
      assert row["targets_pretokenized"].decode() == (
          row["inputs_pretokenized"].decode()[len("copy: "):])

"""Translation tasks: names, formats, batches, newstest2020 and metrics.

Offline: TFDS is mocked (`mock_tfds`; TED with hand-written talk sentences,
since random mock languages never match a real pair), sacrebleu's WMT20
test set is a real sacrebleu dataset object reading SGML files written
here, and mT5/mGPT's vocabulary is a tiny SentencePiece model trained on
this file's sentences. T5's is the real fixture when present.
"""

from __future__ import annotations

import contextlib
import itertools
import types
import unicodedata
from unittest import mock

import gin
import numpy as np
import pytest
import sacrebleu
from sacrebleu import dataset as sacrebleu_dataset
from sacrebleu.dataset import fake_sgml
import sentencepiece as spm
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from prompt_tuning.tasks import translation
from prompt_tuning.tasks import vocabularies

from conftest import SHARED_FIXTURES
from mock_tfds import mock_tfds

EOS = 1
LENGTHS = {"inputs": 32, "targets": 24}

# newstest2020 en-zh look-alikes, as sacrebleu's SGML holds them.
NEWSTEST_EN = ["The new bridge will open to traffic next month.",
               "Officials said the project cost more than expected."]
NEWSTEST_ZH = ["新大桥将于下个月通车。", "官员表示，该项目的成本超出预期。"]

# TED talk sentences (ted_multi's text is tokenized: spaces around
# punctuation); the second lacks bg, it and tr.
TED_ROWS = [
    {"bg": "Благодаря ти много , Крис .", "en": "Thank you so much , Chris .",
     "es": "Muchas gracias , Chris .", "it": "Grazie mille , Chris .",
     "ru": "Большое спасибо , Крис .", "tr": "Çok teşekkür ederim Chris ."},
    {"en": "It 's truly a great honor .", "es": "Es un gran honor .",
     "ru": "Это огромная честь ."},
]

TINY_CORPUS = [
    "translate English to German: The house is wonderful.",
    "Das Haus ist wunderbar.", "Casa este minunată.",
    *NEWSTEST_EN, *NEWSTEST_ZH,
    *(text for row in TED_ROWS for text in row.values()),
    "translate Bulgarian Spanish Italian Russian Turkish Chinese Romanian",
    "abcdefghij klmnopqrstuvwxyz 0123456789",
]


@contextlib.contextmanager
def _vocabulary_files(t5_path: str, mt5_path: str):
  """Points the shared vocabularies at these files for the module, whatever
  an earlier test module resolved them to, and puts them back after."""
  vocabs = {"t5": vocabularies.t5_vocabulary(),
            "mt5": vocabularies.mt5_vocabulary()}
  saved = {k: (v._sentencepiece_model_file, v._model)  # pylint: disable=protected-access
           for k, v in vocabs.items()}
  defaults = {"t5": vocabularies.T5_SENTENCEPIECE,
              "mt5": vocabularies.MT5_SENTENCEPIECE}
  bound = {}
  for key in vocabs:
    try:
      bound[key] = gin.query_parameter(f"vocabulary_paths.{key}")
    except ValueError:
      bound[key] = defaults[key]
  try:
    with gin.unlock_config():
      gin.bind_parameter("vocabulary_paths.t5", t5_path)
      gin.bind_parameter("vocabulary_paths.mt5", mt5_path)
    for vocab in vocabs.values():
      vocab._sentencepiece_model_file = None  # pylint: disable=protected-access
      vocab._model = None  # pylint: disable=protected-access
    yield
  finally:
    with gin.unlock_config():
      for key, value in bound.items():
        gin.bind_parameter(f"vocabulary_paths.{key}", value)
    for key, vocab in vocabs.items():
      vocab._sentencepiece_model_file, vocab._model = saved[key]  # pylint: disable=protected-access


@pytest.fixture(scope="module", autouse=True)
def tiny_mt5(tmp_path_factory):
  """A ~200-piece SentencePiece model with T5's special ids, as mT5's."""
  folder = tmp_path_factory.mktemp("tiny_mt5")
  (folder / "corpus.txt").write_text("\n".join(TINY_CORPUS) + "\n",
                                     encoding="utf-8")
  spm.SentencePieceTrainer.train(
      input=str(folder / "corpus.txt"), model_prefix=str(folder / "sp"),
      vocab_size=200, hard_vocab_limit=False, character_coverage=1.0,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
  t5_fixture = SHARED_FIXTURES / "t5_sentencepiece.model"
  model = str(folder / "sp.model")
  with _vocabulary_files(
      str(t5_fixture) if t5_fixture.exists() else model, model):
    yield vocabularies.mt5_vocabulary()


def _ted_as_dataset(builder, split, decoders=None, read_config=None,
                    **kwargs):
  """tfds' `_as_dataset` for ted_multi_translate: TED_ROWS in its format
  (per sentence, languages sorted, one translation each)."""
  del split, decoders, read_config, kwargs
  assert builder.name == "ted_multi_translate", builder.name

  def rows():
    for row in TED_ROWS:
      languages = sorted(row)
      yield {"talk_name": "chris_talk",
             "translations": {"language": languages,
                              "translation": [row[k] for k in languages]}}

  text = tf.TensorSpec((), tf.string)
  return tf.data.Dataset.from_generator(rows, output_signature={
      "talk_name": text,
      "translations": {"language": tf.TensorSpec((None,), tf.string),
                       "translation": tf.TensorSpec((None,), tf.string)}})


@contextlib.contextmanager
def _mock_data(corpus: str):
  with mock_tfds(num_examples=4):
    if corpus == "ted":
      with tfds.testing.mock_data(as_dataset_fn=_ted_as_dataset):
        yield
    else:
      yield


def _sgml(sentences, lang):
  segs = "\n".join(f'<seg id="{i}">{s}</seg>'
                   for i, s in enumerate(sentences, 1))
  return (f'<refset setid="newstest2020" srclang="any" trglang="{lang}">\n'
          '<doc sysid="ref" docid="bbc.1" genre="news" origlang="en">\n'
          f"<p>\n{segs}\n</p>\n</doc>\n</refset>\n")


@pytest.fixture(name="newstest2020")
def _newstest2020(tmp_path):
  """sacrebleu's real WMT20 dataset class over SGML files written here;
  counts downloads (there must be none)."""
  test_set = fake_sgml.FakeSGMLDataset(
      "wmt20", data=["https://data.statmt.org/wmt20/translation-task/test.tgz"],
      langpairs={"en-zh": ["sgm/newstest2020-enzh-src.en.sgm",
                           "sgm/newstest2020-enzh-ref.zh.sgm"]})
  test_set._outdir = str(tmp_path)  # pylint: disable=protected-access
  test_set._rawdir = str(tmp_path / "raw")  # pylint: disable=protected-access
  (tmp_path / "raw" / "sgm").mkdir(parents=True)
  (tmp_path / "raw/sgm/newstest2020-enzh-src.en.sgm").write_text(
      _sgml(NEWSTEST_EN, "en"), encoding="utf-8")
  (tmp_path / "raw/sgm/newstest2020-enzh-ref.zh.sgm").write_text(
      _sgml(NEWSTEST_ZH, "zh"), encoding="utf-8")
  with mock.patch.dict(sacrebleu_dataset.DATASETS, {"wmt20": test_set}), \
      mock.patch.object(test_set, "maybe_download") as download:
    yield download


def _texts(dataset: tf.data.Dataset) -> list[dict[str, str]]:
  return [{k: v.decode() for k, v in row.items()}
          for row in dataset.as_numpy_iterator()]


def _task_rows(name: str, split: str) -> list[dict[str, np.ndarray]]:
  task = seqio.get_mixture_or_task(name)
  return list(task.get_dataset(LENGTHS, split=split, shuffle=False)
              .as_numpy_iterator())


# ------------------------------------------------------------------- names


def test_every_pair_is_registered_in_both_directions_and_formats():
  pairs = ["wmt14_ende", "wmt14_deen", "wmt16_roen", "wmt16_enro",
           "wmt20_enzh", "wmt20_zhen"] + [
               f"ted_{a}{b}" for x in ("bg", "es", "it", "ru", "tr")
               for a, b in ((x, "en"), ("en", x))]
  expected = {f"{fmt}_{p}" for fmt in ("t5", "msp") for p in pairs}
  assert len(expected) == 32
  assert set(translation.TASK_NAMES) == expected
  assert expected <= set(seqio.TaskRegistry.names())
  assert translation.register() == list(translation.TASK_NAMES)  # idempotent
  assert translation.task_name("msp", "wmt14", "en", "de") == "msp_wmt14_ende"
  with pytest.raises(ValueError, match="unknown format 'gpt'"):
    translation.task_name("gpt", "wmt14", "en", "de")


def test_tasks_use_zh_bleu_for_chinese_targets_and_strip_predictions():
  for name in translation.TASK_NAMES:
    task = seqio.get_mixture_or_task(name)
    bleu = translation.bleu_zh if name.endswith("zh") else translation.bleu
    assert task.predict_metric_fns == [bleu, translation.chrf], name
    assert not task.score_metric_fns
    assert task.postprocessor is translation.postprocess
  assert translation.postprocess(" Das Haus ist wunderbar. \n") == (
      "Das Haus ist wunderbar.")
  assert translation.postprocess(b"  \xe6\x96\xb0 ", is_target=True) == "新"


def test_vocabularies_and_eos_per_format():
  t5, mt5 = vocabularies.t5_vocabulary(), vocabularies.mt5_vocabulary()
  for name in translation.TASK_NAMES:
    features = seqio.get_mixture_or_task(name).output_features
    if name.startswith("msp_"):
      expected = vocabularies.mgpt_vocabulary()
      assert not features["inputs"].add_eos  # PLM4MT: no EOS on the source
    else:
      t5_languages = name[-4:] in ("ende", "deen", "enro", "roen")
      expected = t5 if t5_languages else mt5
      assert features["inputs"].add_eos
    assert features["targets"].add_eos
    assert features["inputs"].vocabulary is expected, name
    assert features["targets"].vocabulary is expected, name


# ----------------------------------------------------------- preprocessors


def test_t5_format_on_a_wmt14_example():
  ds = tf.data.Dataset.from_tensors(
      {"de": "Das Haus ist wunderbar.", "en": "The house is wonderful."})
  assert _texts(translation.translate_t5(
      ds, source_language="en", target_language="de")) == [{
          "inputs": "translate English to German: The house is wonderful.",
          "targets": "Das Haus ist wunderbar."}]


def test_msp_format_on_a_wmt16_example():
  ds = tf.data.Dataset.from_tensors(
      {"en": "The house is wonderful.", "ro": "Casa este minunată."})
  assert _texts(translation.translate_msp(
      ds, source_language="ro", target_language="en")) == [{
          "inputs": "Casa este minunată.",
          "targets": "The house is wonderful."}]


def test_ted_pair_extracts_the_pair_and_skips_missing_languages():
  ds = _ted_as_dataset(types.SimpleNamespace(name="ted_multi_translate"),
                       "test")
  bg_en = translation.translate_t5(
      translation.ted_pair(ds, "bg", "en"), source_language="bg",
      target_language="en")
  assert _texts(bg_en) == [{
      "inputs": "translate Bulgarian to English: Благодаря ти много , Крис .",
      "targets": "Thank you so much , Chris ."}]
  en_ru = translation.translate_msp(
      translation.ted_pair(ds, "en", "ru"), source_language="en",
      target_language="ru")
  assert _texts(en_ru) == [
      {"inputs": "Thank you so much , Chris .",
       "targets": "Большое спасибо , Крис ."},
      {"inputs": "It 's truly a great honor .",
       "targets": "Это огромная честь ."}]


def test_ted_task_reads_pairs_through_seqio():
  with _mock_data("ted"):
    rows = _task_rows("t5_ted_entr", "validation")
  assert [(r["inputs_pretokenized"].decode(), r["targets_pretokenized"].decode())
          for r in rows] == [(
              "translate English to Turkish: Thank you so much , Chris .",
              "Çok teşekkür ederim Chris .")]


# ------------------------------------------------------------ newstest2020


def test_newstest2020_comes_from_sacrebleu_test_set_loader(newstest2020):
  assert translation.load_sacrebleu_test_set("wmt20", "en-zh") == (
      NEWSTEST_EN, NEWSTEST_ZH)
  rows = _task_rows("t5_wmt20_enzh", "test")
  assert [(r["inputs_pretokenized"].decode(), r["targets_pretokenized"].decode())
          for r in rows] == [
              (f"translate English to Chinese: {en}", zh)
              for en, zh in zip(NEWSTEST_EN, NEWSTEST_ZH)]
  newstest2020.assert_called()  # sacrebleu's own "download if missing" hook
  with pytest.raises(ValueError, match="no language pair 'en-xx'"):
    translation.load_sacrebleu_test_set("wmt20", "en-xx")
  with pytest.raises(ValueError, match="no test set 'wmt99'"):
    translation.load_sacrebleu_test_set("wmt99", "en-zh")


def test_newstest2020_is_not_fetched_for_train_or_validation():
  with mock_tfds(num_examples=2), mock.patch.object(
      translation, "load_sacrebleu_test_set",
      side_effect=AssertionError("fetched")):
    for split in ("train", "validation"):
      assert len(_task_rows("msp_wmt20_enzh", split)) == 2
  assert seqio.get_mixture_or_task("msp_wmt20_enzh").splits == (
      "train", "validation", "test")


def test_msp_batch_has_bare_source_and_target_with_eos(newstest2020, tiny_mt5):
  del newstest2020
  ds = seqio.get_dataset(
      "msp_wmt20_enzh", LENGTHS, dataset_split="test", shuffle=False,
      feature_converter=seqio.EncDecFeatureConverter(pack=False))
  for row, en, zh in zip(ds.as_numpy_iterator(), NEWSTEST_EN, NEWSTEST_ZH):
    source, target = tiny_mt5.encode(en), tiny_mt5.encode(zh) + [EOS]
    assert EOS not in source
    np.testing.assert_array_equal(
        row["encoder_input_tokens"],
        np.pad(source, (0, LENGTHS["inputs"] - len(source))))
    np.testing.assert_array_equal(
        row["decoder_target_tokens"],
        np.pad(target, (0, LENGTHS["targets"] - len(target))))
    # Loss on every target token, EOS included; nothing else.
    np.testing.assert_array_equal(
        row["decoder_loss_weights"], row["decoder_target_tokens"] > 0)
    # SentencePiece's default NFKC normalizer turns "，" into ",".
    assert tiny_mt5.decode(row["decoder_target_tokens"].tolist()) == (
        unicodedata.normalize("NFKC", zh))


# ----------------------------------------------------------------- batches


@pytest.mark.parametrize("converter", ["encdec", "decoder"])
def test_every_task_builds_batches(converter):
  if converter == "encdec":
    feature_converter = seqio.EncDecFeatureConverter(pack=False)
    shapes = {"encoder_input_tokens": LENGTHS["inputs"],
              **{k: LENGTHS["targets"] for k in (
                  "decoder_input_tokens", "decoder_target_tokens",
                  "decoder_loss_weights")}}
  else:  # a prefix LM: inputs then targets in one sequence
    feature_converter = seqio.DecoderFeatureConverter(pack=False)
    shapes = {k: sum(LENGTHS.values()) for k in (
        "decoder_input_tokens", "decoder_target_tokens",
        "decoder_loss_weights", "decoder_causal_attention")}
  by_corpus = itertools.groupby(translation.TASK_NAMES,
                                key=lambda n: n.split("_")[1])
  for corpus, names in by_corpus:
    with _mock_data(corpus):
      for name in names:
        ds = seqio.get_dataset(
            name, LENGTHS, dataset_split="train", shuffle=False,
            feature_converter=feature_converter)
        batch = next(ds.as_numpy_iterator())
        assert set(batch) == set(shapes), name
        for key, length in shapes.items():
          assert batch[key].dtype == np.int32, (name, key)
          assert batch[key].shape == (length,), (name, key)
        assert batch["decoder_target_tokens"].any(), name
        if converter == "encdec":
          tokens = batch["encoder_input_tokens"]
          has_eos = tokens[tokens > 0][-1] == EOS
          assert has_eos == name.startswith("t5_"), name


def test_real_t5_vocabulary_round_trips_the_t5_format(shared_fixtures):
  del shared_fixtures
  vocab = seqio.get_mixture_or_task("t5_wmt14_ende").output_features[
      "inputs"].vocabulary
  assert vocab.vocab_size == 32100
  text = "translate English to German: The house is wonderful."
  assert vocab.decode(vocab.encode(text)) == text


# ----------------------------------------------------------------- metrics

TARGETS_DE = ["Das Haus ist wunderbar.", "Die Brücke wird nächsten Monat "
              "für den Verkehr freigegeben.", "Vielen Dank, Chris."]
PREDICTIONS_DE = ["Das Haus ist wundervoll.", "Die Brücke wird im nächsten "
                  "Monat für den Verkehr geöffnet.", "Vielen Dank, Chris."]


def test_bleu_and_chrf_equal_sacrebleu_on_the_same_strings():
  bleu = sacrebleu.corpus_bleu(PREDICTIONS_DE, [TARGETS_DE]).score
  chrf = sacrebleu.corpus_chrf(PREDICTIONS_DE, [TARGETS_DE]).score
  assert 0 < bleu < 100 and 0 < chrf < 100
  assert translation.bleu(TARGETS_DE, PREDICTIONS_DE) == {
      "bleu": pytest.approx(bleu, abs=1e-9)}
  assert translation.chrf(TARGETS_DE, PREDICTIONS_DE) == {
      "chrf": pytest.approx(chrf, abs=1e-9)}
  assert translation.bleu(TARGETS_DE, TARGETS_DE)["bleu"] == pytest.approx(100)
  with pytest.raises(ValueError, match="3 targets but 2 predictions"):
    translation.bleu(TARGETS_DE, PREDICTIONS_DE[:2])


def test_chinese_targets_are_scored_with_the_zh_tokenizer():
  predictions = ["新大桥下个月通车。", "官员说，该项目的成本超出预期。"]
  zh = sacrebleu.corpus_bleu(predictions, [NEWSTEST_ZH], tokenize="zh").score
  thirteen_a = sacrebleu.corpus_bleu(predictions, [NEWSTEST_ZH]).score
  # 13a keeps each run of Chinese characters as one word: almost no match.
  assert zh > thirteen_a + 20
  assert translation.bleu_zh(NEWSTEST_ZH, predictions) == {
      "bleu": pytest.approx(zh, abs=1e-9)}
  assert translation.metric_fns("zh")[0] is translation.bleu_zh
  assert translation.metric_fns("en")[0] is translation.bleu


@pytest.mark.parametrize("name", ["demo_bible_en_es_mt5",
                                  "demo_bible_en_es_msp_mgpt"])
def test_demo_subword_variants_build_batches(name):
  """The demo's mT5 / mGPT variants (here, so this module's tiny mT5 model
  stands in for the real one); they read the shipped file, not TFDS."""
  for converter in (seqio.EncDecFeatureConverter(pack=False),
                    seqio.DecoderFeatureConverter(pack=False)):
    ds = seqio.get_dataset(name, LENGTHS, dataset_split="validation",
                           shuffle=False, feature_converter=converter)
    batch = next(ds.as_numpy_iterator())
    assert batch["decoder_target_tokens"].any(), name
    assert all(v.dtype == np.int32 for v in batch.values()), name
    assert set(batch) >= {"decoder_input_tokens", "decoder_target_tokens",
                          "decoder_loss_weights"}, name

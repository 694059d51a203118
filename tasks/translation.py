"""Translation tasks: WMT14 En-De, WMT16 Ro-En, WMT20 En-Zh and TED, in two
formats, with detokenized BLEU and chrF.

Every language pair is registered in both directions, in two formats, as
`{format}_{corpus}_{src}{tgt}`:

* format `t5`: the encoder-decoder text-to-text format of T5
  (inputs `translate English to German: <source>`, targets `<target>`,
  both ending in EOS). Vocabulary: T5's SentencePiece when T5's covers both
  languages (it was built for en, de, fr, ro), mT5's otherwise (zh, bg, es,
  it, ru, tr). Same data and text as T5's own `wmt14_ende_v003` and
  `wmt16_enro_v003`, under other names so that both registries can be
  imported together.
* format `msp`: the multi-stage prompting format (Tan et al., ACL 2022;
  THUMT/PLM4MT) for mGPT. inputs = the bare source, with no EOS (in PLM4MT
  the source is the tokens before `<extra_id_0>`); targets = the target +
  EOS. The separator is not in the text: MSP's model puts `<extra_id_0>`
  where seqio's encoder-decoder converter puts the decoder's start token,
  and the loss covers the target only. Vocabulary: mGPT's (mT5
  SentencePiece).

corpus and pairs (first = the papers' direction):

  wmt14  en-de  TFDS wmt14_translate/de-en (test: newstest2014)
  wmt16  ro-en  TFDS wmt16_translate/ro-en (test: newstest2016)
  wmt20  en-zh  train/validation: TFDS wmt19_translate/zh-en (validation:
                newstest2018); test: newstest2020 from sacrebleu's test-set
                loader, fetched only when the test split is read
  ted    bg-en, es-en, it-en, ru-en, tr-en  TFDS ted_multi_translate (talk
                sentences missing either language are skipped)

so, e.g., `t5_wmt14_ende`, `msp_wmt14_deen`, `msp_wmt16_roen`,
`t5_wmt20_enzh`, `msp_ted_bgen`, `t5_ted_entr`: 16 directions x 2 formats
= 32 tasks (`TASK_NAMES`).

Metrics: `bleu` (sacrebleu corpus BLEU on detokenized text, tokenizer
`13a`; `bleu_zh` with tokenizer `zh` for Chinese targets) and `chrf`.
The postprocessor only strips surrounding whitespace.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Optional, Sequence

import sacrebleu
from sacrebleu import dataset as sacrebleu_dataset
import seqio
import tensorflow as tf

from prompt_tuning.tasks import vocabularies

# Names as T5 writes them in `translate <Source> to <Target>: ...`.
LANGUAGE_NAMES = {
    "bg": "Bulgarian", "de": "German", "en": "English", "es": "Spanish",
    "fr": "French", "it": "Italian", "ro": "Romanian", "ru": "Russian",
    "tr": "Turkish", "zh": "Chinese",
}
# The languages T5's cc_all.32000 SentencePiece model was built for.
T5_VOCABULARY_LANGUAGES = frozenset({"en", "de", "fr", "ro"})
FORMATS = ("t5", "msp")
TED_LANGUAGES = ("bg", "es", "it", "ru", "tr")

# Versions of the TFDS datasets the tasks read.
WMT14_DE_EN = "wmt14_translate/de-en:1.0.0"
WMT16_RO_EN = "wmt16_translate/ro-en:1.0.0"
WMT19_ZH_EN = "wmt19_translate/zh-en:1.0.0"
TED_MULTI = "ted_multi_translate:1.1.0"
# sacrebleu's name for the WMT20 news test sets (newstest2020).
WMT20_TEST_SET = "wmt20"


# ---------------------------------------------------------------- metrics


def bleu(targets: Sequence[str], predictions: Sequence[str],
         tokenize: str = "13a") -> dict[str, float]:
  """Corpus BLEU (0-100) on detokenized text, one reference per example."""
  _check_same_length(targets, predictions)
  score = sacrebleu.corpus_bleu(list(predictions), [list(targets)],
                                tokenize=tokenize)
  return {"bleu": float(score.score)}


def bleu_zh(targets: Sequence[str],
            predictions: Sequence[str]) -> dict[str, float]:
  """Corpus BLEU for Chinese targets: 13a leaves a run of Chinese
  characters as one word, sacrebleu's `zh` tokenizer splits them."""
  return bleu(targets, predictions, tokenize="zh")


def chrf(targets: Sequence[str],
         predictions: Sequence[str]) -> dict[str, float]:
  """Corpus chrF (0-100; sacrebleu's defaults: 6-grams of characters, beta 2)."""
  _check_same_length(targets, predictions)
  score = sacrebleu.corpus_chrf(list(predictions), [list(targets)])
  return {"chrf": float(score.score)}


def metric_fns(target_language: str) -> list[Callable[..., dict[str, float]]]:
  """BLEU with the tokenizer the target language needs, and chrF."""
  return [bleu_zh if target_language == "zh" else bleu, chrf]


def _check_same_length(targets: Sequence[str], predictions: Sequence[str]):
  if len(targets) != len(predictions):
    raise ValueError(
        f"{len(targets)} targets but {len(predictions)} predictions; the "
        "evaluator must pass one prediction per example.")


def postprocess(text, example=None, is_target: bool = False) -> str:
  """Strips surrounding whitespace; BLEU is computed on detokenized text,
  so nothing else changes."""
  del example, is_target
  if isinstance(text, bytes):
    text = text.decode("utf-8")
  return text.strip()


# ---------------------------------------------------------- preprocessors


@seqio.map_over_dataset
def translate_t5(example: Mapping[str, tf.Tensor], source_language: str,
                 target_language: str) -> dict[str, tf.Tensor]:
  """{src: s, tgt: t} -> inputs `translate <Src> to <Tgt>: s`, targets t."""
  prefix = (f"translate {_language_name(source_language)} to "
            f"{_language_name(target_language)}: ")
  return {"inputs": tf.strings.join([prefix, example[source_language]]),
          "targets": example[target_language]}


@seqio.map_over_dataset
def translate_msp(example: Mapping[str, tf.Tensor], source_language: str,
                  target_language: str) -> dict[str, tf.Tensor]:
  """{src: s, tgt: t} -> inputs s, targets t (no task prefix: MSP's
  prompts and separator tell the model what to do)."""
  return {"inputs": example[source_language],
          "targets": example[target_language]}


def ted_pair(dataset: tf.data.Dataset, source_language: str,
             target_language: str) -> tf.data.Dataset:
  """TED's per-sentence `translations` {language: [...], translation: [...]}
  -> {src: text, tgt: text}; sentences lacking either language are dropped
  (most talks are not translated into every language)."""

  def has_both(example):
    languages = example["translations"]["language"]
    return tf.logical_and(
        tf.reduce_any(tf.equal(languages, source_language)),
        tf.reduce_any(tf.equal(languages, target_language)))

  def pick(example, language):
    translations = example["translations"]
    found = tf.where(tf.equal(translations["language"], language))
    return tf.gather(translations["translation"], found[0, 0])

  return dataset.filter(has_both).map(
      lambda ex: {source_language: pick(ex, source_language),
                  target_language: pick(ex, target_language)},
      num_parallel_calls=tf.data.AUTOTUNE)


def _language_name(code: str) -> str:
  if code not in LANGUAGE_NAMES:
    raise ValueError(f"no English name for language code {code!r}; add it to "
                     f"LANGUAGE_NAMES (known: {sorted(LANGUAGE_NAMES)}).")
  return LANGUAGE_NAMES[code]


# ------------------------------------------- newstest2020 through sacrebleu


def load_sacrebleu_test_set(test_set: str,
                            langpair: str) -> tuple[list[str], list[str]]:
  """(sources, first references) of a sacrebleu test set such as
  ("wmt20", "en-zh"); downloads it to $SACREBLEU (default ~/.sacrebleu)
  the first time."""
  datasets = sacrebleu_dataset.DATASETS
  if test_set not in datasets:
    raise ValueError(f"sacrebleu has no test set {test_set!r}; see "
                     "`sacrebleu --list` for the names.")
  test = datasets[test_set]
  if langpair not in test.langpairs:
    raise ValueError(f"sacrebleu's {test_set} has no language pair "
                     f"{langpair!r}; it has {sorted(test.langpairs)}.")
  try:
    sources = list(test.source(langpair))
    references = [refs[0].strip() for refs in test.references(langpair)]
  except OSError as e:
    raise OSError(
        f"could not read sacrebleu's {test_set} {langpair} test set ({e}); "
        "it is downloaded on first use: run `sacrebleu -t "
        f"{test_set} -l {langpair} --echo src` once with network access, or "
        "point $SACREBLEU at a directory that holds it.") from e
  if len(sources) != len(references):
    raise ValueError(f"sacrebleu's {test_set} {langpair} has "
                     f"{len(sources)} sources but {len(references)} "
                     "references; delete its files under $SACREBLEU and "
                     "fetch it again.")
  return sources, references


def _sacrebleu_dataset_fn(split: str, shuffle_files: bool,
                          seed: Optional[int] = None, *, test_set: str = "",
                          source_language: str = "",
                          target_language: str = "") -> tf.data.Dataset:
  """A test set as {src: source, tgt: reference} examples, the keys TFDS's
  translation datasets use, so the same preprocessors apply."""
  del split, shuffle_files, seed  # One split, one "file"; seqio shuffles.
  sources, references = load_sacrebleu_test_set(
      test_set, f"{source_language}-{target_language}")
  return tf.data.Dataset.from_tensor_slices(
      {source_language: sources, target_language: references})


class SplitSource(seqio.DataSource):
  """Each split from its own DataSource: WMT20 trains on TFDS's WMT19 data
  (file-sharded, sized) and tests on sacrebleu's newstest2020, which is
  fetched only when the test split is read."""

  def __init__(self, sources: Mapping[str, seqio.DataSource]):
    self._sources = dict(sources)
    super().__init__(splits=tuple(self._sources))

  def _source(self, split: str) -> seqio.DataSource:
    if split not in self._sources:
      raise ValueError(f"no split {split!r}; this source has "
                       f"{sorted(self._sources)}.")
    return self._sources[split]

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return self._source(split).list_shards(split)

  def num_input_examples(self, split: str) -> Optional[int]:
    return self._source(split).num_input_examples(split)

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *,
                  sequence_length=None, use_cached: bool = False,
                  num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # Unused, as in seqio's.
    return self._source(split).get_dataset(
        split=split, shuffle=shuffle, seed=seed, shard_info=shard_info)


# ------------------------------------------------------------ registration


def _wmt20_source(source_language: str,
                  target_language: str) -> seqio.DataSource:
  test = seqio.FunctionDataSource(
      functools.partial(_sacrebleu_dataset_fn, test_set=WMT20_TEST_SET,
                        source_language=source_language,
                        target_language=target_language),
      splits=("test",))
  return SplitSource({
      "train": seqio.TfdsDataSource(WMT19_ZH_EN, splits=("train",)),
      "validation": seqio.TfdsDataSource(WMT19_ZH_EN, splits=("validation",)),
      "test": test,
  })


# corpus -> (pairs in the papers' direction, source factory(src, tgt),
#            preprocessors that turn an example into {src: ..., tgt: ...}).
CORPORA = {
    "wmt14": ((("en", "de"),),
              lambda src, tgt: seqio.TfdsDataSource(WMT14_DE_EN), ()),
    "wmt16": ((("ro", "en"),),
              lambda src, tgt: seqio.TfdsDataSource(WMT16_RO_EN), ()),
    "wmt20": ((("en", "zh"),), _wmt20_source, ()),
    "ted": (tuple((lang, "en") for lang in TED_LANGUAGES),
            lambda src, tgt: seqio.TfdsDataSource(TED_MULTI), (ted_pair,)),
}


def task_name(fmt: str, corpus: str, source_language: str,
              target_language: str) -> str:
  """e.g. ("msp", "wmt14", "en", "de") -> "msp_wmt14_ende"."""
  if fmt not in FORMATS:
    raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}.")
  return f"{fmt}_{corpus}_{source_language}{target_language}"


def directions() -> list[tuple[str, str, str]]:
  """(corpus, src, tgt) for every pair in both directions."""
  out = []
  for corpus, (pairs, _, _) in CORPORA.items():
    for a, b in pairs:
      out += [(corpus, a, b), (corpus, b, a)]
  return out


def t5_vocabulary_for(source_language: str,
                      target_language: str) -> seqio.Vocabulary:
  """T5's vocabulary if it covers both languages, else mT5's."""
  if {source_language, target_language} <= T5_VOCABULARY_LANGUAGES:
    return vocabularies.t5_vocabulary()
  return vocabularies.mt5_vocabulary()


def output_features(fmt: str, source_language: str = "en",
                    target_language: str = "en") -> dict[str, seqio.Feature]:
  """The features of a `fmt` task; `msp` sources carry no EOS."""
  if fmt == "t5":
    vocab = t5_vocabulary_for(source_language, target_language)
    return {"inputs": seqio.Feature(vocab, add_eos=True),
            "targets": seqio.Feature(vocab, add_eos=True)}
  if fmt == "msp":
    vocab = vocabularies.mgpt_vocabulary()
    return {"inputs": seqio.Feature(vocab, add_eos=False),
            "targets": seqio.Feature(vocab, add_eos=True)}
  raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}.")


def register() -> list[str]:
  """Registers every translation task once (idempotent); returns names."""
  names = []
  for corpus, src, tgt in directions():
    _, make_source, pair_preprocessors = CORPORA[corpus]
    for fmt, translate in (("t5", translate_t5), ("msp", translate_msp)):
      name = task_name(fmt, corpus, src, tgt)
      names.append(name)
      if name in seqio.TaskRegistry.names():
        continue
      languages = dict(source_language=src, target_language=tgt)
      seqio.TaskRegistry.add(
          name,
          source=make_source(src, tgt),
          preprocessors=[
              *(functools.partial(p, **languages) for p in pair_preprocessors),
              functools.partial(translate, **languages),
              seqio.preprocessors.tokenize,
              seqio.CacheDatasetPlaceholder(),
              seqio.preprocessors.append_eos_after_trim,
          ],
          output_features=output_features(fmt, src, tgt),
          postprocess_fn=postprocess,
          metric_fns=metric_fns(tgt),
      )
  return names


TASK_NAMES = tuple(register())

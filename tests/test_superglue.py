"""SuperGLUE tasks: T5's text formats, the variants, and seqio batches.

Hand-written examples (shaped like the real TFDS records) go through each
task's own preprocessors and must give hand-written T5-format texts; every
registered task and mixture must build batches under `mock_tfds` with the
encoder-decoder and decoder-only feature converters.
"""

from __future__ import annotations

from pathlib import Path

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning.tasks import superglue
from prompt_tuning.tasks import vocabularies

from mock_tfds import mock_tfds

LENGTHS = {"inputs": 64, "targets": 8}
EOS = 1
# tf.data's graph rewrites cost more than they save on two examples.
_FAST = tf.data.Options()
_FAST.experimental_optimization.apply_default_optimizations = False
_FAST.autotune.enabled = False
T5_MODEL = (Path(__file__).resolve().parents[2] / "shared" / "fixtures" /
            "t5_sentencepiece.model")


def _tiny_sentencepiece(folder: Path) -> str:
  """A small SentencePiece model with T5's special ids, for checkouts
  without the shared fixtures; trained on the expected texts below, so they
  round-trip (ids differ from T5's; the tests never rely on them)."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  lines = [text for _, rows in EXPECTED.values() for row in rows
           for text in row]
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines * 5), model_prefix=str(folder / "tiny"),
      vocab_size=200, hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2,
      bos_id=-1, character_coverage=1.0)
  return str(folder / "tiny.model")


@pytest.fixture(scope="module", autouse=True)
def t5_vocabulary(tmp_path_factory):
  """Points vocabulary_paths.t5 at the real T5 model (or a tiny one) before
  the shared vocabulary is first used, and resolves it once."""
  path = str(T5_MODEL) if T5_MODEL.exists() else _tiny_sentencepiece(
      tmp_path_factory.mktemp("spm"))
  gin.bind_parameter("vocabulary_paths.t5", path)
  vocab = vocabularies.t5_vocabulary()
  assert vocab.vocab_size > superglue.NUM_TASK_INDICES
  return vocab


@pytest.fixture(scope="module")
def mocked():
  with mock_tfds(num_examples=8):
    yield


def _preprocessed(name: str, example: dict, tokenized: bool = False
                  ) -> list[dict]:
  """The task's preprocessors on one raw example: the texts before
  tokenization, or (tokenized) the finished token features."""
  task = seqio.get_mixture_or_task(name)
  ds = tf.data.Dataset.from_tensors(example)
  if tokenized:
    # Long enough for any vocabulary: nothing is cut.
    ds = task.preprocess_postcache(task.preprocess_precache(ds),
                                   {"inputs": 512, "targets": 16})
  else:
    for step in task.preprocessors:
      if step is seqio.preprocessors.tokenize:
        break
      ds = step(ds)
  return [{k: _py(v) for k, v in row.items()}
          for row in ds.as_numpy_iterator()]


def _py(value):
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray) and value.dtype == object:
    return [v.decode("utf-8") for v in value]
  return value


def _texts(name: str, example: dict) -> list[tuple[str, str]]:
  return [(r["inputs"], r["targets"]) for r in _preprocessed(name, example)]


# --- Hand-written examples ----------------------------------------------------

BOOLQ = {
    "question": "is the eiffel tower taller than the statue of liberty",
    "passage": ("The Eiffel Tower is 330 metres tall. The Statue of Liberty "
                "is 93 metres tall."),
    "label": 1, "idx": 7,
}
CB = {
    "premise": ("It was a complex language. Not written down but handed "
                "down. One might say it was peeled down."),
    "hypothesis": "the language was peeled down",
    "label": 0, "idx": 0,
}
COPA = {
    "premise": "My body cast a shadow over the grass.",
    "choice1": "The sun was rising.",
    "choice2": "The grass was cut.",
    "question": "cause",
    "label": 0, "idx": 0,
}
MULTIRC = {
    "paragraph": ("<b>Sent 1: </b>Susan wanted to have a birthday party.<br>"
                  "<b>Sent 2: </b>She called all of her friends.<br>"),
    "question": "Who did Susan call?",
    "answer": "All of her friends",
    "label": 1,
    "idx": {"paragraph": 0, "question": 4, "answer": 2},
}
RECORD = {
    "passage": ("(CNN) Dover harbour reopened on Monday after a week of "
                "storms, the port authority said.\n@highlight\nShips returned "
                "to Dover\n@highlight\nThe Port of Dover had been closed for a "
                "week"),
    "query": "The @placeholder authority said trade would recover quickly.",
    "entities": ["CNN", "Dover", "Port of Dover"],
    "answers": ["Dover", "Port of Dover"],
    "idx": {"passage": 3, "query": 11},
}
RTE = {
    "premise": ("Dana Reeve, the widow of the actor Christopher Reeve, has "
                "died of lung cancer at age 44."),
    "hypothesis": "Christopher Reeve had an accident.",
    "label": 1, "idx": 2,
}
WIC = {
    "word": "place",
    "sentence1": "Do you want to come over to my place later?",
    "sentence2": "A political system with no place for the less prominent "
                 "groups.",
    "start1": 31, "start2": 27, "end1": 36, "end2": 32,
    "label": 0, "idx": 5,
}
AXB = {
    "sentence1": "The cat sat on the mat.",
    "sentence2": "The cat did not sit on the mat.",
    "label": 1, "idx": 0,
}
AXG = {
    "premise": ("The nurse notified the patient that his shift would be "
                "ending in an hour."),
    "hypothesis": "The nurse's shift would be ending in an hour.",
    "label": 0, "idx": 0,
}
WSC_TEXT = ("Mark told Pete many lies about himself, which Pete included in "
            "his book. He should have been more skeptical.")
WSC_RIGHT = {"text": WSC_TEXT, "span1_index": 2, "span1_text": "Pete",
             "span2_index": 13, "span2_text": "He", "label": 1, "idx": 0}
WSC_WRONG = dict(WSC_RIGHT, span1_index=0, span1_text="Mark", label=0, idx=1)

EXPECTED = {
    "boolq": (BOOLQ, [(
        "boolq passage: The Eiffel Tower is 330 metres tall. The Statue of "
        "Liberty is 93 metres tall. question: is the eiffel tower taller than "
        "the statue of liberty", "True")]),
    "cb": (CB, [(
        "cb hypothesis: the language was peeled down premise: It was a "
        "complex language. Not written down but handed down. One might say "
        "it was peeled down.", "entailment")]),
    "copa": (COPA, [(
        "copa choice1: The sun was rising. choice2: The grass was cut. "
        "premise: My body cast a shadow over the grass. question: cause",
        "choice1")]),
    "multirc": (MULTIRC, [(
        "multirc question: Who did Susan call? answer: All of her friends "
        "paragraph: Sent 1: Susan wanted to have a birthday party. Sent 2: "
        "She called all of her friends. ", "True")]),
    "record": (RECORD, [(
        "record query: The @placeholder authority said trade would recover "
        "quickly. entities: CNN, Dover, Port of Dover passage: (CNN) Dover "
        "harbour reopened on Monday after a week of storms, the port "
        "authority said. Ships returned to Dover. The Port of Dover had been "
        "closed for a week", answer) for answer in ("Dover", "Port of Dover")
    ]),
    "rte": (RTE, [(
        "rte hypothesis: Christopher Reeve had an accident. premise: Dana "
        "Reeve, the widow of the actor Christopher Reeve, has died of lung "
        "cancer at age 44.", "not_entailment")]),
    "wic": (WIC, [(
        "wic sentence1: Do you want to come over to my place later? "
        "sentence2: A political system with no place for the less prominent "
        "groups. word: place", "False")]),
    "axb": (AXB, [(
        "rte hypothesis: The cat did not sit on the mat. premise: The cat sat "
        "on the mat.", "not_entailment")]),
    "axg": (AXG, [(
        "rte hypothesis: The nurse's shift would be ending in an hour. "
        "premise: The nurse notified the patient that his shift would be "
        "ending in an hour.", "entailment")]),
}
WSC_INPUTS = ("wsc: Mark told Pete many lies about himself, which Pete "
              "included in his book. *He* should have been more skeptical.")


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_plain_format_matches_t5(task):
  example, expected = EXPECTED[task]
  assert _texts(superglue.task_name(task), example) == expected


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_taskless_drops_the_dataset_name_word(task):
  example, expected = EXPECTED[task]
  taskless = [(inputs.split(" ", 1)[1], targets)
              for inputs, targets in expected]
  assert _texts(superglue.task_name(task, "taskless_"), example) == taskless
  assert taskless[0][0].split(" ", 1)[0].endswith(":")


def _prompt_tuning_task_token(vocabulary, task_index):
  """The token google-research/prompt-tuning's add_sentinel_to_beginning
  puts first for offset=K: `<extra_id_0>` is the last id, K counts down."""
  return vocabulary.vocab_size - (task_index + 1)


def test_task_index_puts_the_task_token_first(t5_vocabulary):
  offset = superglue.task_token_offset()
  assert offset == t5_vocabulary.vocab_size - 1
  for task in ("boolq", "cb", "rte", "axb", "wic"):
    example, [(inputs, targets)] = EXPECTED[task]
    [row] = _preprocessed(superglue.task_name(task, "task_index_"), example,
                          tokenized=True)
    index = superglue.TASK_INDEX[task]
    assert row["inputs"][0] == _prompt_tuning_task_token(t5_vocabulary, index)
    # MultiTaskPrompt(task_token_offset=offset) reads offset - token.
    assert offset - row["inputs"][0] == index
    assert row["inputs"][-1] == EOS
    assert t5_vocabulary.decode(row["inputs"][1:-1].tolist()) == (
        inputs.split(" ", 1)[1])
    assert t5_vocabulary.decode(row["targets"][:-1].tolist()) == targets


def test_task_indices_follow_prompt_tuning():
  assert superglue.TASK_INDEX == {
      "boolq": 0, "cb": 1, "copa": 2, "multirc": 3, "record": 4, "rte": 5,
      "axb": 5, "axg": 5, "wic": 6, "wsc": 7}
  with pytest.raises(ValueError, match="task_index=8"):
    superglue.task_token_id(8)


def test_task_k_is_extra_id_k_as_in_prompt_tuning():
  if not T5_MODEL.exists():
    pytest.skip(f"no T5 vocabulary fixture at {T5_MODEL}")
  vocab = seqio.SentencePieceVocabulary(str(T5_MODEL), extra_ids=100)
  assert superglue.task_token_offset(vocab) == 32099
  for task, index in superglue.TASK_INDEX.items():
    token = superglue.task_token_id(index, vocab)
    assert vocab.encode(f"<extra_id_{index}>") == [token], task
    assert token == _prompt_tuning_task_token(vocab, index)
  # prompt-tuning's multitask_prompts.sentinel_to_task(x, vocab_size=32100).
  assert 32100 - 1 - superglue.task_token_id(5, vocab) == 5


def test_multirc_keeps_its_grouping_ids():
  [row] = _preprocessed(superglue.task_name("multirc"), MULTIRC)
  assert (row["idx/paragraph"], row["idx/question"], row["idx/answer"]) == (
      0, 4, 2)


def test_record_has_one_example_per_answer_each_with_all_answers():
  rows = _preprocessed(superglue.task_name("record"), RECORD)
  assert [r["targets"] for r in rows] == ["Dover", "Port of Dover"]
  for row in rows:
    assert row["answers"] == ["Dover", "Port of Dover"]
    assert (row["idx/passage"], row["idx/query"]) == (3, 11)


def test_record_without_answers_has_one_unknown_target():
  no_answers = dict(RECORD, answers=tf.constant([], tf.string))
  rows = _texts(superglue.task_name("record"), no_answers)
  assert [t for _, t in rows] == ["<unk>"]


def test_wsc_trains_on_correct_referents_and_evaluates_on_all():
  train, evaluation, _ = superglue.wsc_names()
  for name, examples in ((train, [WSC_RIGHT]),
                         (evaluation, [WSC_RIGHT, WSC_WRONG])):
    task = seqio.get_mixture_or_task(name)
    ds = tf.data.Dataset.from_tensor_slices(
        {k: [e[k] for e in (WSC_RIGHT, WSC_WRONG)] for k in WSC_RIGHT})
    for step in task.preprocessors[:1]:
      ds = step(ds)
    rows = [{k: _py(v) for k, v in r.items()} for r in ds.as_numpy_iterator()]
    assert [(r["inputs"], r["targets"], r["label"]) for r in rows] == [
        (WSC_INPUTS, e["span1_text"], e["label"]) for e in examples]


def test_wsc_taskless_and_hand_fixed_texts():
  train, _, _ = superglue.wsc_names("taskless_")
  assert _texts(train, WSC_RIGHT) == [(WSC_INPUTS[len("wsc: "):], "Pete")]
  # A text T5 fixes by hand: span2_index points at "use", not "it".
  text = ("When they had eventually calmed down a bit , and had gotten home, "
          "Mr. Farley put the magic pebble in an iron safe . Some day they "
          "might want to use it , but really for now, what more could they "
          "wish for?")
  odd = dict(WSC_RIGHT, text=text, span1_text="the magic pebble",
             span2_text="it", span2_index=30)
  [(inputs, _)] = _texts(superglue.wsc_names()[1], odd)
  assert "want to use *it* , but" in inputs


def test_rank_classification_repeats_each_example_per_label():
  rows = _preprocessed(superglue.task_name("cb", rank=True), CB)
  inputs = EXPECTED["cb"][1][0][0]
  assert [(r["inputs"], r["targets"], r["idx"].tolist(), r["is_correct"])
          for r in rows] == [
              (inputs, "entailment", [0, 0], True),
              (inputs, "contradiction", [0, 1], False),
              (inputs, "neutral", [0, 2], False)]


# --- Postprocessors -----------------------------------------------------------


def _postprocess(name, text, example=None, is_target=False):
  task = seqio.get_mixture_or_task(name)
  return task.postprocess_fn(text, example=example, is_target=is_target)


def test_label_postprocessors_give_class_ids():
  name = superglue.task_name("cb")
  assert [_postprocess(name, t) for t in
          ("entailment", "contradiction", "neutral", "maybe", "")] == [
              0, 1, 2, -1, -1]
  assert _postprocess(superglue.task_name("boolq"), "True") == 1
  assert _postprocess(superglue.task_name("copa"), "choice2") == 1


def test_multirc_postprocessor_adds_the_question_group():
  example = {"idx/paragraph": np.int32(3), "idx/question": np.int32(9)}
  name = superglue.task_name("multirc")
  assert _postprocess(name, "True", example, is_target=True) == {
      "value": 1, "group": (3, 9)}
  assert _postprocess(name, "Maybe", example) == {"value": -1}


def test_record_postprocessor_gives_all_answers_for_targets():
  example = {"answers": np.array([b"Dover", b"Port of Dover"], object),
             "idx/passage": np.int32(3), "idx/query": np.int32(11)}
  name = superglue.task_name("record")
  assert _postprocess(name, "Dover", example, is_target=True) == {
      "value": ["Dover", "Port of Dover"], "group": (3, 11)}
  assert _postprocess(name, "the port", example) == {"value": "the port"}


def test_axg_postprocessor_keeps_the_pair_index():
  name = superglue.task_name("axg")
  assert _postprocess(name, "not_entailment", {"idx": np.int32(5)},
                      is_target=True) == {"value": 1, "idx": 5}
  assert _postprocess(name, "entailment", {"idx": np.int32(5)}) == 0


@pytest.mark.parametrize("prediction,referent,expected", [
    ("Pete", b"Pete", 1),
    ("pete", b"Pete", 1),
    ("the fuzzy bunny", b"bunny", 1),
    ("the bunny", b"a fuzzy bunny", 1),
    ("Mark", b"Pete", 0),
    ("Bob", b"Bob's hat", 0),
    ("", b"Pete", -1),
    ("the", b"Pete", -1),
])
def test_wsc_postprocessor_matches_referents_like_t5(prediction, referent,
                                                     expected):
  name = superglue.wsc_names()[1]
  example = {"targets_pretokenized": referent, "label": np.int64(1)}
  assert _postprocess(name, prediction, example) == expected
  assert _postprocess(name, "x", example, is_target=True) == 1


def test_rank_postprocessor_builds_the_metric_tuple():
  example = {"idx": np.array([4, 2], np.int32), "is_correct": np.bool_(True),
             "targets": np.array([7, 8, 1], np.int32)}
  name = superglue.task_name("rte", rank=True)
  assert _postprocess(name, "x", example, is_target=True) == (
      (4, 2), True, 1.0, 3)
  assert _postprocess(name, -1.5, example) == -1.5


def test_metrics_are_the_official_ones():
  def names(name, targets, predictions):
    task = seqio.get_mixture_or_task(name)
    out = {}
    for fn in task.predict_metric_fns:
      out.update(fn(targets, predictions))
    return sorted(out)

  assert names(superglue.task_name("cb"), [0, 1, 2], [0, 1, 1]) == [
      "accuracy", "mean_3class_f1"]
  assert names(superglue.task_name("axb"), [0, 1], [0, 1]) == [
      "accuracy", "matthews_corrcoef"]
  assert names(superglue.task_name("axg"),
               [{"value": 0, "idx": 0}, {"value": 0, "idx": 1}], [0, 0]) == [
                   "accuracy", "gender_parity"]
  group = {"value": 1, "group": (0, 0)}
  assert names(superglue.task_name("multirc"), [group], [group]) == [
      "exact_match", "f1a"]
  answers = {"value": ["x"], "group": (0, 0)}
  assert names(superglue.task_name("record"), [answers], [{"value": "x"}]) == [
      "em", "f1"]
  rank = seqio.get_mixture_or_task(superglue.task_name("cb", rank=True))
  assert not rank.predict_metric_fns and len(rank.score_metric_fns) == 1


# --- Registry and batches -----------------------------------------------------

VARIANTS = ("", "taskless_", "task_index_")
TASK_NAMES = [n for n in superglue.NAMES if n in seqio.TaskRegistry.names()]
MIXTURE_NAMES = [n for n in superglue.NAMES
                 if n in seqio.MixtureRegistry.names()]


def test_registry_lists_every_task_and_mixture():
  expected_tasks = set()
  expected_mixtures = set()
  for v in VARIANTS:
    for task in superglue.TASKS:
      expected_tasks.add(f"{v}super_glue_{task}_v102")
    for task in ("boolq", "cb", "copa", "rte", "wic", "axb", "axg"):
      expected_tasks.add(f"{v}super_glue_{task}_v102_rank_classification")
    expected_tasks |= {f"{v}super_glue_wsc_v102_simple_train",
                       f"{v}super_glue_wsc_v102_simple_eval"}
    expected_mixtures |= {f"{v}super_glue_v102_proportional",
                          f"{v}super_glue_wsc_and_dev_v102_simple"}
  assert set(TASK_NAMES) == expected_tasks
  assert set(MIXTURE_NAMES) == expected_mixtures
  assert expected_tasks <= set(seqio.TaskRegistry.names())
  assert len(superglue.register()) == len(superglue.NAMES)  # idempotent


def test_proportional_mixture_rates_are_train_sizes(mocked):
  del mocked  # every split has 8 examples
  mixture = seqio.get_mixture_or_task(superglue.mixture_name("taskless_"))
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  train, evaluation, _ = superglue.wsc_names("taskless_")
  assert rates.pop(evaluation) == 0.0
  assert rates.pop(superglue.task_name("axb", "taskless_")) == 0.0
  assert rates.pop(superglue.task_name("axg", "taskless_")) == 0.0
  assert rates.pop(train) == 8.0
  assert set(rates.values()) == {8.0} and len(rates) == 7


def _first_split(name: str) -> str:
  splits = seqio.get_mixture_or_task(name).splits
  return "train" if "train" in splits else splits[0]


@pytest.fixture(scope="module")
def built(mocked) -> dict[str, list[dict[str, np.ndarray]]]:
  """Every task and mixture's first (up to) two preprocessed examples, each
  read through seqio once (mixtures: their train split)."""
  del mocked
  out = {}
  for name in TASK_NAMES + MIXTURE_NAMES:
    provider = seqio.get_mixture_or_task(name)
    ds = provider.get_dataset(LENGTHS, split=_first_split(name),
                              shuffle=False, num_epochs=1)
    ds = ds.take(2).with_options(_FAST)
    out[name] = [{k: row[k] for k in ("inputs", "targets")}
                 for row in ds.as_numpy_iterator()]
  return out


@pytest.fixture(scope="module")
def converted(built):
  """The rows of `built`, all at once, through both feature converters."""
  rows = [row for name in built for row in built[name]]
  ds = tf.data.Dataset.from_tensor_slices({
      k: tf.ragged.constant([r[k] for r in rows], dtype=tf.int32)
      for k in ("inputs", "targets")}).map(dict)
  out = {}
  for kind, converter in (
      ("encdec", seqio.EncDecFeatureConverter(pack=False)),
      ("decoder", seqio.DecoderFeatureConverter(pack=False))):
    out[kind] = list(converter(ds, LENGTHS).as_numpy_iterator())
    assert len(out[kind]) == len(rows)
  starts, start = {}, 0
  for name in built:
    starts[name] = start
    start += len(built[name])
  return out, starts


ENCDEC = {"encoder_input_tokens": 64, "decoder_input_tokens": 8,
          "decoder_target_tokens": 8, "decoder_loss_weights": 8}
DECODER = {"decoder_input_tokens": 72, "decoder_target_tokens": 72,
           "decoder_loss_weights": 72, "decoder_causal_attention": 72}


@pytest.mark.parametrize("name", TASK_NAMES + MIXTURE_NAMES)
def test_every_task_and_mixture_builds_both_kinds_of_batches(
    name, built, converted, t5_vocabulary):
  rows = built[name]
  assert rows, f"{name} gave no examples"
  out, starts = converted
  for i, row in enumerate(rows):
    for key in ("inputs", "targets"):
      assert row[key].dtype == np.int32
      assert 1 < len(row[key]) <= LENGTHS[key]
      assert row[key][-1] == EOS
    if "task_index_" in name:
      first = superglue.task_token_offset() - row["inputs"][0]
      assert 0 <= first < superglue.NUM_TASK_INDICES
    for kind, shapes in (("encdec", ENCDEC), ("decoder", DECODER)):
      features = out[kind][starts[name] + i]
      assert {k: (v.dtype, v.shape) for k, v in features.items()} == {
          k: (np.dtype(np.int32), (n,)) for k, n in shapes.items()}
    encdec = out["encdec"][starts[name] + i]
    n = len(row["inputs"])
    np.testing.assert_array_equal(encdec["encoder_input_tokens"][:n],
                                  row["inputs"])
    decoder = out["decoder"][starts[name] + i]
    # Prefix LM: the inputs are the prefix, the loss is on the targets only.
    assert decoder["decoder_causal_attention"][:n].all()
    assert decoder["decoder_loss_weights"][:n].sum() == 0
    assert decoder["decoder_loss_weights"].sum() == len(row["targets"])


def test_seqio_get_dataset_end_to_end(mocked):
  del mocked
  name = superglue.task_name("rte", "task_index_")
  for converter, key in ((seqio.EncDecFeatureConverter(pack=False),
                          "encoder_input_tokens"),
                         (seqio.DecoderFeatureConverter(pack=False),
                          "decoder_input_tokens")):
    ds = seqio.get_dataset(name, LENGTHS, dataset_split="validation",
                           shuffle=False, num_epochs=1,
                           feature_converter=converter, batch_size=2)
    batch = next(ds.as_numpy_iterator())
    assert batch[key].dtype == np.int32 and batch[key].shape[0] == 2
  # The prefix LM's first input token (after the shifted-in 0) is RTE's.
  first = batch["decoder_input_tokens"][:, 1]
  assert (first == superglue.task_token_offset() - 5).all()


def test_t5_vocabulary_round_trips_a_superglue_example():
  if not T5_MODEL.exists():
    pytest.skip(f"no T5 vocabulary fixture at {T5_MODEL}")
  vocab = seqio.SentencePieceVocabulary(str(T5_MODEL), extra_ids=100)
  text = EXPECTED["boolq"][1][0][0]
  ids = vocab.encode(text)
  assert 10 < len(ids) < 60 and all(3 <= i < 32000 for i in ids)
  assert vocab.decode(ids) == text
  assert vocab.decode(vocab.encode("True")) == "True"

"""GLUE tasks and the zero-shot QQP <-> MRPC transfer tasks.

Hand-written GLUE records go through each task's preprocessors and must give
T5's texts; the transfer tasks must show the source's name word and map the
source's label words onto the target's classes; every task and mixture must
build batches under `mock_tfds` with both feature converters.
"""

from __future__ import annotations

from pathlib import Path

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning.tasks import glue
from prompt_tuning.tasks import vocabularies

from mock_tfds import mock_tfds

LENGTHS = {"inputs": 64, "targets": 8}
EOS = 1
T5_MODEL = (Path(__file__).resolve().parents[2] / "shared" / "fixtures" /
            "t5_sentencepiece.model")
_FAST = tf.data.Options()  # No graph rewrites for two examples.
_FAST.experimental_optimization.apply_default_optimizations = False
_FAST.autotune.enabled = False


@pytest.fixture(scope="module", autouse=True)
def t5_vocabulary(tmp_path_factory):
  """vocabulary_paths.t5 -> the real T5 model, or a tiny SentencePiece model
  (T5's special ids) in checkouts without the shared fixtures."""
  if T5_MODEL.exists():
    path = str(T5_MODEL)
  else:
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    folder = tmp_path_factory.mktemp("spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["Is the question a duplicate? Equivalent.",
                                "The quick brown fox jumps over a dog."] * 50),
        model_prefix=str(folder / "tiny"), vocab_size=100,
        hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        character_coverage=1.0)
    path = str(folder / "tiny.model")
  gin.bind_parameter("vocabulary_paths.t5", path)
  vocab = vocabularies.t5_vocabulary()
  assert vocab.vocab_size > 100
  return vocab


def _texts(name: str, example: dict) -> list[tuple[str, str]]:
  task = seqio.get_mixture_or_task(name)
  ds = tf.data.Dataset.from_tensors(example)
  for step in task.preprocessors:
    if step is seqio.preprocessors.tokenize:
      break
    ds = step(ds)
  return [(r["inputs"].decode(), r["targets"].decode())
          for r in ds.as_numpy_iterator()]


SST2 = {"sentence": "it 's a charming and often affecting journey . ",
        "label": 1, "idx": 0}
MRPC = {
    "sentence1": ("Amrozi accused his brother , whom he called \" the witness "
                  "\" , of deliberately distorting his evidence ."),
    "sentence2": ("Referring to him as only \" the witness \" , Amrozi accused "
                  "his brother of deliberately distorting his evidence ."),
    "label": 1, "idx": 0,
}
QQP = {
    "question1": "How do I improve my English speaking skills?",
    "question2": "How can I improve my spoken English?",
    "label": 1, "idx": 3,
}
RTE = {"sentence1": "No Weapons of Mass Destruction Found in Iraq Yet.",
       "sentence2": "Weapons of Mass Destruction Found in Iraq.",
       "label": 1, "idx": 0}
MRPC_TEXT = ("sentence1: Amrozi accused his brother , whom he called \" the "
             "witness \" , of deliberately distorting his evidence . "
             "sentence2: Referring to him as only \" the witness \" , Amrozi "
             "accused his brother of deliberately distorting his evidence .")
QQP_TEXT = ("question1: How do I improve my English speaking skills? "
            "question2: How can I improve my spoken English?")

EXPECTED = {
    "sst2": (SST2, "sst2 sentence: it 's a charming and often affecting "
             "journey . ", "positive"),
    "mrpc": (MRPC, "mrpc " + MRPC_TEXT, "equivalent"),
    "qqp": (QQP, "qqp " + QQP_TEXT, "duplicate"),
    "rte": (RTE, "rte sentence1: No Weapons of Mass Destruction Found in Iraq "
            "Yet. sentence2: Weapons of Mass Destruction Found in Iraq.",
            "not_entailment"),
}


@pytest.mark.parametrize("task", glue.TASKS)
def test_plain_and_taskless_formats_match_t5(task):
  example, inputs, targets = EXPECTED[task]
  assert _texts(glue.task_name(task), example) == [(inputs, targets)]
  assert _texts(glue.task_name(task, "taskless_"), example) == [
      (inputs.split(" ", 1)[1], targets)]


def test_unlabeled_examples_get_the_unknown_target():
  assert _texts(glue.task_name("rte"), dict(RTE, label=-1))[0][1] == "<unk>"


def test_transfer_tasks_use_the_source_name_word_on_target_data():
  assert _texts(glue.transfer_name("qqp", "mrpc"), MRPC) == [
      ("qqp " + MRPC_TEXT, "equivalent")]
  assert _texts(glue.transfer_name("mrpc", "qqp"), QQP) == [
      ("mrpc " + QQP_TEXT, "duplicate")]
  assert _texts(glue.transfer_name("qqp", "mrpc", "taskless_"), MRPC) == [
      (MRPC_TEXT, "equivalent")]


def _postprocess(name, text, is_target=False):
  task = seqio.get_mixture_or_task(name)
  return task.postprocess_fn(text, example={}, is_target=is_target)


def test_label_postprocessors_give_class_ids():
  name = glue.task_name("qqp")
  assert [_postprocess(name, t) for t in
          ("not_duplicate", "duplicate", "equivalent", "")] == [0, 1, -1, -1]
  assert _postprocess(glue.task_name("sst2"), "positive") == 1
  assert _postprocess(glue.task_name("rte"), "not_entailment") == 1


def test_transfer_postprocessors_map_label_words():
  qqp_to_mrpc = glue.transfer_name("qqp", "mrpc")
  # A QQP model's words, as MRPC classes (not_equivalent 0, equivalent 1).
  assert _postprocess(qqp_to_mrpc, "duplicate") == 1
  assert _postprocess(qqp_to_mrpc, "not_duplicate") == 0
  assert _postprocess(qqp_to_mrpc, " duplicate ") == 1
  assert _postprocess(qqp_to_mrpc, "maybe") == -1
  # Targets are MRPC's own words and pass through.
  assert _postprocess(qqp_to_mrpc, "equivalent", is_target=True) == 1
  assert _postprocess(qqp_to_mrpc, "not_equivalent", is_target=True) == 0
  mrpc_to_qqp = glue.transfer_name("mrpc", "qqp")
  assert _postprocess(mrpc_to_qqp, "equivalent") == 1
  assert _postprocess(mrpc_to_qqp, "not_equivalent") == 0
  assert _postprocess(mrpc_to_qqp, "duplicate", is_target=True) == 1
  assert glue.map_label_words("not_duplicate",
                              glue.TRANSFERS[("qqp", "mrpc")]) == (
                                  "not_equivalent")


def test_transfer_metrics_score_mapped_predictions():
  task = seqio.get_mixture_or_task(glue.transfer_name("qqp", "mrpc"))
  targets = [task.postprocess_fn(t, example={}, is_target=True)
             for t in ("equivalent", "equivalent", "not_equivalent",
                       "not_equivalent")]
  predictions = [task.postprocess_fn(p, example={}, is_target=False)
                 for p in ("duplicate", "not_duplicate", "not_duplicate",
                           "duplicate")]
  out = {}
  for fn in task.predict_metric_fns:
    out.update(fn(targets, predictions))
  # tp 1, fp 1, fn 1: F1 = 2/4; 2 of 4 right.
  assert out == pytest.approx({"f1": 50.0, "accuracy": 50.0})


def test_registry_names():
  expected_tasks, expected_mixtures = set(), set()
  for v in ("", "taskless_"):
    expected_tasks |= {f"{v}glue_{t}_v200" for t in glue.TASKS}
    expected_tasks |= {f"{v}glue_qqp_to_mrpc_v200",
                       f"{v}glue_mrpc_to_qqp_v200"}
    expected_mixtures |= {f"{v}glue_qqp_to_mrpc_zeroshot_v200",
                          f"{v}glue_mrpc_to_qqp_zeroshot_v200"}
  assert set(glue.NAMES) == expected_tasks | expected_mixtures
  assert expected_tasks <= set(seqio.TaskRegistry.names())
  assert expected_mixtures <= set(seqio.MixtureRegistry.names())
  for name in expected_tasks:
    if "_to_" in name:
      assert seqio.get_mixture_or_task(name).splits == ("validation",)
  assert glue.register() == list(glue.NAMES)  # idempotent


def test_zeroshot_mixture_trains_on_the_source_and_evaluates_on_the_target():
  mixture = seqio.get_mixture_or_task(
      glue.zeroshot_mixture_name("qqp", "mrpc", "taskless_"))
  assert [t.name for t in mixture.tasks] == [
      "taskless_glue_qqp_to_mrpc_v200", "taskless_glue_qqp_v200"]


ENCDEC = {"encoder_input_tokens": 64, "decoder_input_tokens": 8,
          "decoder_target_tokens": 8, "decoder_loss_weights": 8}
DECODER = {"decoder_input_tokens": 72, "decoder_target_tokens": 72,
           "decoder_loss_weights": 72, "decoder_causal_attention": 72}


@pytest.fixture(scope="module")
def batches():
  """name -> {converter kind -> first batch of 2}, read through seqio."""
  out = {}
  with mock_tfds(num_examples=8):
    for name in glue.NAMES:
      provider = seqio.get_mixture_or_task(name)
      split = "train" if "train" in provider.splits else "validation"
      out[name] = {}
      for kind, converter in (
          ("encdec", seqio.EncDecFeatureConverter(pack=False)),
          ("decoder", seqio.DecoderFeatureConverter(pack=False))):
        ds = seqio.get_dataset(name, LENGTHS, dataset_split=split,
                               shuffle=False, num_epochs=1, batch_size=2,
                               feature_converter=converter)
        out[name][kind] = next(ds.with_options(_FAST).as_numpy_iterator())
  return out


@pytest.mark.parametrize("name", glue.NAMES)
def test_every_task_and_mixture_builds_both_kinds_of_batches(name, batches):
  for kind, shapes in (("encdec", ENCDEC), ("decoder", DECODER)):
    batch = batches[name][kind]
    assert {k: (v.dtype, v.shape) for k, v in batch.items()} == {
        k: (np.dtype(np.int32), (2, n)) for k, n in shapes.items()}
  targets = batches[name]["encdec"]["decoder_target_tokens"]
  inputs = batches[name]["encdec"]["encoder_input_tokens"]
  for row in (*targets, *inputs):
    assert row[row != 0][-1] == EOS  # every feature ends in EOS
  decoder = batches[name]["decoder"]
  np.testing.assert_array_equal(decoder["decoder_loss_weights"].sum(1),
                                (targets != 0).sum(1))

"""Evaluation, training_eval, inference files and the eval/infer binaries.

Everything runs on a tiny random T5.1.1-style model with a 3-row prompt and
tiny byte-level seqio tasks registered here. Expected values come from
calling the model directly on hand-built batches of all examples at once,
so the batching, padding and index bookkeeping of the code under test are
what is checked.
"""

import glob
import json
import os

import flax
import gin
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import prompt_tuning as pt
from prompt_tuning import data
from prompt_tuning import eval as eval_lib
from prompt_tuning import evaluation
from prompt_tuning import gin_utils
from prompt_tuning import infer as infer_lib
from prompt_tuning import partitioning
from prompt_tuning.checkpoints import t5x

VOCAB = seqio.ByteVocabulary()  # ids: 0 pad, 1 EOS, 2 UNK, byte b -> b + 3.
LENGTHS = {"inputs": 8, "targets": 4}
BATCH_SIZE = 4  # 7 examples: a full batch, then 3 rows padded to 4.
SCORED = "pt_evaltest_scored"
PLAIN = "pt_evaltest_plain"
MIXTURE = "pt_evaltest_mix"
# Inputs under 8 bytes and targets under 4 with EOS: nothing is truncated.
EXAMPLES = {
    SCORED: [("abc", "x"), ("hello", "yz"), ("q", "a"), ("tuning", "ok"),
             ("jax", "no"), ("prompt", "b"), ("seven", "cd")],
    PLAIN: [("one", "1"), ("two", "2"), ("three", "3")],
}
CONFIG = pt.TransformerConfig(
    vocab_size=VOCAB.vocab_size, emb_dim=8, num_heads=2, head_dim=4,
    mlp_dim=16, num_encoder_layers=1, num_decoder_layers=1,
    relative_attention_num_buckets=8, relative_attention_max_distance=16)
PROMPT_LENGTH = 3


def prediction_metrics(targets, predictions):
  # "order" changes if any prediction lands at another example's index.
  return {
      "exact_match": float(np.mean([t == p for t, p in
                                    zip(targets, predictions)])),
      "order": float(sum((i + 1) * len(p) for i, p in
                         enumerate(predictions))),
  }


def score_metrics(targets, scores):
  del targets
  return {"mean_score": float(np.mean(scores)),
          "order_score": float(sum((i + 1) * s for i, s in
                                   enumerate(scores)))}


def _register():
  features = {k: seqio.Feature(VOCAB, add_eos=True)
              for k in ("inputs", "targets")}
  for name, examples in EXAMPLES.items():
    if name in seqio.TaskRegistry.names():
      continue

    def dataset_fn(split, shuffle_files, seed=None, examples=examples):
      del split, shuffle_files, seed
      return tf.data.Dataset.from_tensor_slices({
          "inputs": [i for i, _ in examples],
          "targets": [t for _, t in examples]})

    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn,
                                        splits=("train", "validation")),
        preprocessors=[seqio.preprocessors.tokenize,
                       seqio.preprocessors.append_eos_after_trim],
        output_features=features,
        metric_fns=([prediction_metrics, score_metrics]
                    if name == SCORED else []))
  if MIXTURE not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(MIXTURE, [SCORED, PLAIN], default_rate=1.0)


_register()


def hand_batch(examples):
  """T5X encoder-decoder features, built by hand from the byte encoding."""
  def ids(text, length):
    tokens = [b + 3 for b in text.encode("utf-8")] + [1]
    return tokens + [0] * (length - len(tokens))
  targets = np.array([ids(t, LENGTHS["targets"]) for _, t in examples],
                     np.int32)
  return {
      "encoder_input_tokens": np.array(
          [ids(i, LENGTHS["inputs"]) for i, _ in examples], np.int32),
      "decoder_input_tokens": np.concatenate(
          [np.zeros((len(examples), 1), np.int32), targets[:, :-1]], 1),
      "decoder_target_tokens": targets,
      "decoder_loss_weights": (targets > 0).astype(np.int32),
  }


def dataset_cfg(name=SCORED, **overrides):
  return data.DatasetConfig(**dict(
      mixture_or_task_name=name, task_feature_lengths=LENGTHS,
      split="validation", batch_size=BATCH_SIZE, shuffle=False,
      **overrides))


@pytest.fixture(scope="module")
def mesh():
  return Mesh(np.asarray(jax.devices()[:2]).reshape(2, 1), ("data", "model"))


@pytest.fixture(scope="module")
def tiny(mesh):
  """(model, params on the mesh, expected predictions / scores / logits)."""
  model = pt.build_model(CONFIG, method=pt.PromptTuning(length=PROMPT_LENGTH))
  params = flax.linen.meta.unbox(model.get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 8),
                              "decoder_input_tokens": (1, 4)})["params"])
  params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
  batch = hand_batch(EXAMPLES[SCORED])
  tokens = np.asarray(model.predict_batch(params, batch))
  return {
      "model": model, "params": params, "batch": batch,
      "predictions": [VOCAB.decode(row.tolist()) for row in tokens],
      "scores": np.asarray(model.score_batch(params, batch)),
      "logits": np.asarray(model.compute_logits(params, batch)),
  }


def test_evaluator_metrics_match_direct_model_calls(tiny, mesh, tmp_path):
  log_dir = str(tmp_path / "eval")
  evaluator = evaluation.Evaluator(tiny["model"], dataset_cfg(MIXTURE), mesh,
                                   log_dir=log_dir)
  assert evaluator.task_names == [SCORED]  # PLAIN has no metrics.
  metrics = evaluator.evaluate(tiny["params"], step=5)
  evaluator.close()

  predictions, scores = tiny["predictions"], tiny["scores"]
  expected = dict(
      prediction_metrics([t for _, t in EXAMPLES[SCORED]], predictions),
      **score_metrics(None, scores))
  assert set(metrics) == {SCORED}
  assert set(metrics[SCORED]) == set(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(metrics[SCORED][name], value, rtol=1e-5,
                               err_msg=name)

  # seqio's loggers: TensorBoard events, metric lines, per-example lines.
  assert glob.glob(os.path.join(log_dir, SCORED, "events.out.tfevents.*"))
  with open(os.path.join(log_dir, f"{SCORED}-metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  assert len(lines) == 1 and lines[0]["step"] == 5
  np.testing.assert_allclose(lines[0]["mean_score"], expected["mean_score"],
                             rtol=1e-5)
  with open(os.path.join(log_dir, f"{SCORED}-000005.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["prediction"] for r in rows] == predictions
  assert [r["target"] for r in rows] == [t for _, t in EXAMPLES[SCORED]]
  np.testing.assert_allclose([r["score"] for r in rows], scores, rtol=1e-5)


def test_training_eval_is_the_token_mean_over_the_split(tiny, mesh):
  result = evaluation.training_eval(tiny["model"], tiny["params"],
                                    dataset_cfg(), mesh)
  batch = tiny["batch"]
  targets = batch["decoder_target_tokens"]
  weights = batch["decoder_loss_weights"].astype(np.float64)
  logits = tiny["logits"].astype(np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  token_ll = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  correct = (logits.argmax(-1) == targets) * weights
  np.testing.assert_allclose(result["loss"],
                             -(token_ll * weights).sum() / weights.sum(),
                             rtol=1e-5)
  np.testing.assert_allclose(result["cross_ent_loss"], result["loss"])
  np.testing.assert_allclose(result["accuracy"],
                             correct.sum() / weights.sum(), rtol=1e-6)
  assert result["num_examples"] == len(EXAMPLES[SCORED])
  assert result["num_tokens"] == weights.sum()

  one = evaluation.training_eval(tiny["model"], tiny["params"],
                                 dataset_cfg(), mesh, num_batches=1)
  assert one["num_examples"] == BATCH_SIZE


def test_write_inferences_round_trips_atomically(tmp_path):
  path = str(tmp_path / "out" / "task-checkpoint_3.jsonl")
  records = [{"inputs": "é", "targets": "b", "outputs": "c",
              "output_tokens": np.array([5, 6], np.int32),
              "score": np.float32(-1.5)}]
  assert evaluation.write_inferences(path, records) == path
  with open(path, encoding="utf-8") as f:
    assert [json.loads(line) for line in f] == [
        {"inputs": "é", "targets": "b", "outputs": "c",
         "output_tokens": [5, 6], "score": -1.5}]
  # A record that cannot be written leaves the old file and no temp file.
  with pytest.raises(TypeError, match="object is not JSON serializable"):
    evaluation.write_inferences(path, [{"outputs": object()}])
  assert os.listdir(tmp_path / "out") == ["task-checkpoint_3.jsonl"]
  with open(path, encoding="utf-8") as f:
    assert json.loads(f.readline())["inputs"] == "é"


# End to end: the binaries, from the command line, on a base checkpoint.


@pytest.fixture(scope="module")
def base_checkpoint(tiny, tmp_path_factory):
  """(T5X base checkpoint dir, a prompt .npy of the right shape)."""
  root = tmp_path_factory.mktemp("binaries")
  params = jax.device_get(tiny["params"])
  base = {k: v for k, v in params.items() if k != "prompt"}
  path = t5x.write_t5x_checkpoint(base, str(root / "base" / "checkpoint_0"))
  prompt = str(root / "prompt.npy")
  np.save(prompt, params["prompt"]["prompt"])
  return path, prompt


@pytest.fixture
def clean_gin(mesh, monkeypatch):
  # The binaries' mesh: the 2-device one of the other tests (gin cannot hold
  # devices, and 8 simulated devices would only make the test slower).
  monkeypatch.setattr(partitioning, "make_mesh", lambda: mesh)
  yield
  with gin.unlock_config():
    gin.clear_config()


def _argv(base, checkpoint_path, output_macro, output_dir, name=MIXTURE):
  bindings = {
      "load_model.initial_checkpoint_path": repr(base),
      "load_model.model_config": "@TransformerConfig()",
      "load_model.method": "@PromptTuning()",
      "PromptTuning.length": PROMPT_LENGTH,
      "DatasetConfig.mixture_or_task_name": repr(name),
      "DatasetConfig.task_feature_lengths": repr(LENGTHS),
      "DatasetConfig.split": "'validation'",
      "DatasetConfig.batch_size": BATCH_SIZE,
      "DatasetConfig.shuffle": False,
      "CHECKPOINT_PATH": repr(checkpoint_path),
      output_macro: repr(output_dir),
  }
  for field in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                "num_encoder_layers", "num_decoder_layers",
                "relative_attention_num_buckets",
                "relative_attention_max_distance"):
    bindings[f"TransformerConfig.{field}"] = getattr(CONFIG, field)
  binary = "evaluate" if output_macro == "EVAL_OUTPUT_DIR" else "infer"
  argv = [f"--gin.{k}={v}" for k, v in bindings.items()]
  return argv + [
      f"--gin_bindings={binary}.dataset_cfg = @DatasetConfig()",
      f"--gin_bindings={binary}.checkpoint_path = %CHECKPOINT_PATH",
      f"--gin_bindings={binary}.output_dir = %{output_macro}"]


def test_eval_binary_with_a_prompt_file_writes_metrics(
    tiny, base_checkpoint, tmp_path, clean_gin, capsys):
  base, prompt = base_checkpoint
  out = str(tmp_path / "eval")
  eval_lib.console_main(_argv(base, prompt, "EVAL_OUTPUT_DIR", out))
  with open(os.path.join(out, f"{SCORED}-metrics.jsonl")) as f:
    metrics = json.loads(f.readline())
  # The base from disk + the prompt file are the fixture's params.
  np.testing.assert_allclose(metrics["mean_score"],
                             np.mean(tiny["scores"]), rtol=1e-5)
  assert metrics["step"] == 0  # A prompt file has no training step.
  assert os.path.exists(os.path.join(out, "config.gin"))
  screen = capsys.readouterr().out
  assert "== eval done" in screen and SCORED in screen


def test_eval_binary_rejects_a_wrong_prompt_shape_and_writes_nothing(
    base_checkpoint, tmp_path, clean_gin, capsys):
  base, _ = base_checkpoint
  wrong = str(tmp_path / "wrong.npy")
  np.save(wrong, np.zeros((5, CONFIG.emb_dim), np.float32))
  out = tmp_path / "eval"
  with pytest.raises(SystemExit) as exit_info:
    eval_lib.console_main(_argv(base, wrong, "EVAL_OUTPUT_DIR", str(out)))
  assert exit_info.value.code == gin_utils.INPUT_ERROR_EXIT_CODE
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert "(5, 8)" in err and "(3, 8)" in err
  assert not out.exists()


@pytest.mark.parametrize("problem", ["missing_checkpoint", "unknown_task",
                                     "output_is_a_file"])
def test_binaries_report_bad_inputs_in_one_line(
    problem, base_checkpoint, tmp_path, clean_gin, capsys):
  base, prompt = base_checkpoint
  out, name = str(tmp_path / "out"), MIXTURE
  expected = {"missing_checkpoint": "does not exist",
              "unknown_task": "unknown task or mixture",
              "output_is_a_file": "is a file, not a directory"}[problem]
  if problem == "missing_checkpoint":
    prompt = str(tmp_path / "no_such_run")
  elif problem == "unknown_task":
    name = "pt_evaltest_scord"
  else:
    with open(out, "w") as f:
      f.write("keep me")
  with pytest.raises(SystemExit):
    infer_lib.console_main(_argv(base, prompt, "INFER_OUTPUT_DIR", out,
                                 name=name))
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and expected in err, err
  if problem == "output_is_a_file":
    with open(out) as f:
      assert f.read() == "keep me"
  else:
    assert not os.path.exists(out)


def test_infer_binary_writes_every_example_of_every_task(
    tiny, base_checkpoint, tmp_path, clean_gin):
  base, prompt = base_checkpoint
  out = tmp_path / "infer"
  infer_lib.console_main(_argv(base, prompt, "INFER_OUTPUT_DIR", str(out)))
  assert sorted(os.listdir(out)) == [
      "config.gin", f"{PLAIN}-prompt.jsonl", f"{SCORED}-prompt.jsonl"]
  for name, examples in EXAMPLES.items():
    with open(out / f"{name}-prompt.jsonl", encoding="utf-8") as f:
      records = [json.loads(line) for line in f]
    assert [(r["inputs"], r["targets"]) for r in records] == examples
    for r in records:
      assert set(r) == {"inputs", "targets", "outputs", "output_tokens",
                        "score"}
      assert VOCAB.decode(r["output_tokens"]) == r["outputs"]
    if name == SCORED:
      assert [r["outputs"] for r in records] == tiny["predictions"]

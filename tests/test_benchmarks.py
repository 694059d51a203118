"""Every benchmark script runs from a fresh install and its correctness
checks hold (README "Performance"). Shapes are the scripts' --small ones and
one repetition: these tests never look at a timing."""

import importlib
import math
import os
import sys

import numpy as np


BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "benchmarks")


def _script(name):
  if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)
  return importlib.import_module(name)


def _run(name, tmp_path, *flags):
  out = str(tmp_path / f"{name}.json")
  payload = _script(name).main(
      ["--small", "--reps", "1", "--warmup", "0", "--out", out, *flags])
  assert os.path.exists(out)
  assert payload["rows"]
  return payload


def test_train_step_trains_the_same_parameters_as_peft(tmp_path):
  payload = _run("train_step", tmp_path)
  rows = {r["method"]: r for r in payload["rows"]}
  assert set(rows) == {"prompt", "prefix", "model"}
  for row in rows.values():
    assert row["trainable_ours"] == row["trainable_peft"], row["method"]
    assert math.isfinite(row["loss_ours"]) and row["ours_s"] > 0
  assert payload["peak"]["flop_per_s"] > 0


def test_decode_tokens_equal_generate_with_peft(tmp_path):
  payload = _run("decode", tmp_path)
  compared = [r for r in payload["rows"] if r["token_match"] is not None]
  # prompt tuning (greedy, beam 4) and GPT-2 prefix tuning (greedy, beam 4)
  assert len(compared) == 4
  assert all(r["token_match"] == 1.0 for r in compared)


def test_serving_mixed_prompts_score_like_peft_per_task(tmp_path):
  payload = _run("serving", tmp_path, "--ops", "score,greedy")
  for summary in payload["summary"]:
    if summary["op"] == "score":
      assert summary["max_abs_score_diff"] < 1e-3
    else:
      assert summary["token_agreement"] == 1.0


def test_memory_optimizer_state_is_the_trainable_share(tmp_path):
  payload = _run("memory", tmp_path, "--kinds", "forward,train")
  assert payload["opt_state_ok"]
  kinds = {r["kind"] for r in payload["rows"]}
  assert kinds == {"forward", "train"}


def test_scaling_meshes_compute_the_same_step(tmp_path):
  payload = _run("scaling", tmp_path, "--devices", "1,2")
  assert {r["mesh"] for r in payload["rows"]} >= {"1x1", "2x1", "1x2"}
  assert payload["max_rel_deviation"] < 1e-5


def test_profile_maps_the_traced_ops_to_the_compiled_dots(tmp_path):
  out = str(tmp_path / "profile_step.json")
  payload = _script("profile_step").main(
      ["--small", "--steps", "1", "--warmup", "1", "--out", out])
  assert os.path.exists(out)
  # Every dot the trace ran was found in the compiled HLO with its FLOPs:
  # together they are the step's model FLOPs (counted from shapes).
  assert 0.8 < payload["dot_gflop"] / payload["model_gflop"] < 1.25
  assert payload["thread_ms"]["library dot"] > 0
  assert payload["step_s"] > 0 and payload["top"]


def test_train_step_on_two_data_devices_computes_the_same_loss(tmp_path):
  # conftest gives JAX 8 CPU devices; the script uses 2 of them.
  one = _run("train_step", tmp_path, "--methods", "prompt")
  two = _run("train_step", tmp_path, "--methods", "prompt",
             "--data_devices", "2")
  assert two["data_devices"] == 2
  np.testing.assert_allclose(two["rows"][0]["loss_ours"],
                             one["rows"][0]["loss_ours"], rtol=1e-5)


def test_pretrain_throughput_times_the_loops_own_step(tmp_path):
  payload = _run("pretrain_throughput", tmp_path)
  rows = {r["model"]: r for r in payload["rows"]}
  assert set(rows) == {"bible_t5_tiny", "demo"}
  for name, row in rows.items():
    # The compute-bound run's first step repeats the loop's first step
    # (same initial state, batch, dropout key and compiled function), so
    # its loss is the one the loop computed and logged (log_period 1).
    np.testing.assert_allclose(row["loss_step1_compute"],
                               row["loss_step1_logged"], rtol=1e-5)
    np.testing.assert_allclose(row["loss_step1_pipeline"],
                               row["loss_step1_logged"], rtol=1e-5)
    shapes = row["shapes"]
    assert row["batch"] == 4  # --small's BATCH_SIZE
    assert row["positions_per_step"] == 4 * (
        shapes["encoder_input_tokens"][1]
        + shapes["decoder_target_tokens"][1]), name
    assert len(row["weight_sums"]) == row["steps"]
    assert 0 < row["loss_tokens_per_step"] <= (
        4 * shapes["decoder_target_tokens"][1]), name
    # Steps after the first log period, up to the last one's dispatch,
    # less the iterations that held a compute-bound chunk.
    held = [s for s in row["compute_chunks_at_steps"]
            if s > row["log_period"] + 1]
    assert row["timed_steps"] == (
        row["steps"] - row["log_period"] - 1 - len(held))
    assert math.isfinite(row["overhead"]) and row["overhead"] < 1
    np.testing.assert_allclose(
        row["overhead"], 1 - row["compute_s"] / row["pipeline_s"])
    # Our FLOP count of the step agrees with XLA's (which also counts the
    # element-wise work that a 66k-parameter model is mostly made of).
    assert 0.8 < row["xla_gflop"] / row["gflop"] < 1.5, name
  # The recipe's lengths: 128 inputs, 32 targets (span corruption).
  assert rows["bible_t5_tiny"]["shapes"]["decoder_target_tokens"] == [4, 32]
  assert rows["bible_t5_tiny"]["method"] == "ModelTuning"
  assert rows["demo"]["method"] == "PromptTuning"
  profile = rows["demo"]["profile"]
  assert profile["steps"] == rows["demo"]["timed_steps"]
  parts = {r["part"]: r["ms_per_step"] for r in profile["rows"]}
  assert all(v >= 0 for v in parts.values())
  assert parts["total (profiled wall)"] > 0


def test_serve_load_batches_across_tasks_only_when_mixing():
  results = _script("serve_load").main(["--small"])
  assert list(results) == ["(a) mixed", "(b) one task", "(c) per task"]
  # Every server answered every request, warmed programs compiled nothing
  # more, and per-task batching never put two tasks in one batch, so with 8
  # tasks its batches are smaller than mixed batching's.
  for row in results.values():
    assert row["requests_s"] > 0 and row["compiles"] == 0
  assert results["(c) per task"]["batch"] < results["(a) mixed"]["batch"]

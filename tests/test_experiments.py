"""The experiment runner end to end in quick mode: every arm trains through
the ordinary binary, the table and figure appear, and a rerun resumes
(skips what finished) instead of training again."""

import importlib
import json
import os
import sys

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "experiments")


def _runner():
  if EXPERIMENTS not in sys.path:
    sys.path.insert(0, EXPERIMENTS)
  return importlib.import_module("run")


def test_msp_table1_quick_produces_its_table_and_figure_and_resumes(
    tmp_path):
  run = _runner()
  summary = run.main(["msp_table1", "--quick", "--out", str(tmp_path)])
  out = tmp_path / "msp_table1_quick"
  methods = {r["method"] for r in summary["rows"]}
  assert methods == {"prompt tuning", "prefix tuning", "MSP",
                     "MSP w/o re-encoding", "MSP w/o reparameterization"}
  for row in summary["rows"]:
    assert row["trainable"] > 0 and "bleu" in row and "chrf" in row
  table = (out / "table.md").read_text()
  assert table.count("\n") == 2 + len(summary["rows"])
  assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert json.loads((out / "results.json").read_text())["rows"]
  # Prompt tuning trains the fewest parameters, prefix tuning (MLP) the most.
  trainable = {r["method"]: r["trainable"] for r in summary["rows"]}
  assert trainable["prompt tuning"] < trainable["MSP"] < trainable[
      "prefix tuning"]
  # The ablations: one stage's prompt and scale fewer; the 3 scales fewer.
  assert trainable["MSP w/o re-encoding"] == (trainable["MSP"] - 3) * 2 // 3 + 2
  assert trainable["MSP w/o reparameterization"] == trainable["MSP"] - 3
  # Finished runs are skipped: their result files are not rewritten.
  results = sorted(out.glob("*/seed_0/result.json"))
  stamps = [p.stat().st_mtime_ns for p in results]
  again = run.main(["msp_table1", "--quick", "--out", str(tmp_path)])
  assert [p.stat().st_mtime_ns for p in results] == stamps
  assert again["rows"] == summary["rows"]


def test_msp_table1_full_grid_trains_the_medium_base_half_as_long():
  """The full grid: 10 arms on the small base at common.gin's 400 steps, 6
  on the medium base at 200 (the study's two-hour budget)."""
  _runner()
  import studies  # pylint: disable=g-import-not-at-top
  arms = studies.STUDIES["msp_table1"].arms(False)
  steps = {}
  for arm in arms:
    bound = [b for b in arm.bindings if b.startswith("TRAIN_STEPS")]
    steps.setdefault(arm.labels["base"], set()).add(tuple(bound))
  assert steps == {"bible_gpt2_small": {()},
                   "bible_gpt2_medium": {("TRAIN_STEPS = 200",)}}
  assert sum(a.labels["base"] == "bible_gpt2_medium" for a in arms) == 6
  assert len(arms) == 16


def _check_outputs(out, summary):
  """The table has a row per arm, the figure is a PNG, results.json holds
  every run."""
  table = (out / "table.md").read_text()
  assert table.count("\n") == 2 + len(summary["rows"])
  assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert len(json.loads((out / "results.json").read_text())["runs"]) == len(
      summary["runs"])


def test_lester_fig1_quick_has_every_method_on_both_tasks(tmp_path):
  """Prompt design trains nothing: the eval binary scores the base itself,
  once, whatever the seeds."""
  summary = _runner().main(["lester_fig1", "--quick", "--out",
                            str(tmp_path)])
  _check_outputs(tmp_path / "lester_fig1_quick", summary)
  rows = {(r["task"], r["method"]): r for r in summary["rows"]}
  assert set(rows) == {(t, m) for t in ("En->Es translation",
                                        "canon classification")
                       for m in ("prompt tuning", "model tuning",
                                 "prompt design")}
  for (task, method), row in rows.items():
    assert ("bleu" in row) == (task == "En->Es translation")
    assert ("accuracy" in row) == (task == "canon classification")
    assert (row["trainable"] == 0) == (method == "prompt design")
  assert (rows["canon classification", "prompt tuning"]["trainable"]
          < rows["canon classification", "model tuning"]["trainable"])


def test_lester_fig3_quick_varies_one_factor_at_a_time(tmp_path):
  summary = _runner().main(["lester_fig3", "--quick", "--out",
                            str(tmp_path)])
  _check_outputs(tmp_path / "lester_fig3_quick", summary)
  rows = {r["arm"]: r for r in summary["rows"]}
  assert rows["length-100"]["trainable"] == 100 * 128  # bible_t5_small
  assert rows["init-uniform"]["trainable"] == 20 * 128
  assert rows["base-span_corruption_only"]["base"] == "span corruption only"
  for row in rows.values():
    assert 0 <= row["accuracy"] <= 100
    # The teacher-forced validation loss: finite and positive.
    assert 0 < row["val_loss"] < 50


def test_lester_table2_quick_scores_the_other_testament(tmp_path):
  summary = _runner().main(["lester_table2", "--quick", "--out",
                            str(tmp_path)])
  out = tmp_path / "lester_table2_quick"
  _check_outputs(out, summary)
  assert {(r["base"], r["method"]) for r in summary["rows"]} == {
      (base, method) for base in ("bible_t5_small", "bible_gpt2_small")
      for method in ("prompt tuning", "model tuning")}
  for row in summary["rows"]:
    assert (row["train"], row["evaluate"]) == ("Old Testament",
                                               "New Testament")
    assert 0 <= row["transfer_accuracy"] <= 100 and "transfer_f1" in row
  # The transfer eval read the trained run's checkpoint, on the NT pairs,
  # in each base's format.
  for base, task in (("bible_t5_small", "bible_paraphrase_nt_rank"),
                     ("bible_gpt2_small", "bible_paraphrase_nt_lm_rank")):
    [metrics] = out.glob(f"{base}-ot_to_nt-prompt_tuning/seed_0/"
                         f"eval_transfer/{task}-metrics.jsonl")
    assert json.loads(metrics.read_text().splitlines()[-1])["step"] == 4

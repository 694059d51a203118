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
  assert methods == {"prompt tuning", "prefix tuning", "MSP"}
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
  # Finished runs are skipped: their result files are not rewritten.
  results = sorted(out.glob("*/seed_0/result.json"))
  stamps = [p.stat().st_mtime_ns for p in results]
  again = run.main(["msp_table1", "--quick", "--out", str(tmp_path)])
  assert [p.stat().st_mtime_ns for p in results] == stamps
  assert again["rows"] == summary["rows"]

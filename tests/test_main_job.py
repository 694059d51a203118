"""The README's main job, shortened: prompt tuning a shipped base on held-out
English -> Spanish verses beats the untrained prompt by a stated margin.

Slow (a few minutes on 2 CPU cores): `pytest -m slow tests/test_main_job.py`.
It runs the `train` binary as the README does, on `runs/translate_bible.gin`
with fewer steps and fewer evaluation verses, and reads the run's own
inference-eval log.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

TASK = "bible_en_es"
STEPS = 150
EXAMPLES = 48
# Measured margins are several times larger (README, "Quick start"); these
# leave room for seeds and releases while still failing on a prompt that
# learned nothing (an untrained-vs-trained difference of ~0).
MIN_CHRF_GAIN = 5.0
MIN_BLEU_GAIN = 1.0


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "the shipped bible_t5_base does not yet condition on its source: "
    "300 prompt-tuning steps gave BLEU 0.07 -> 0.22, chrF 5.6 -> 7.0, "
    "Spanish output unrelated to the verse; the base needs more training "
    "before this main job can pass"))
def test_a_short_main_job_beats_the_untrained_prompt(tmp_path):
  run_dir = tmp_path / "translate"
  command = [
      sys.executable, "-m", "prompt_tuning.train",
      "--gin_file=runs/translate_bible.gin",
      f"--gin.MODEL_DIR='{run_dir}'", f"--gin.TRAIN_STEPS={STEPS}",
      f"--gin.train.eval_period={STEPS}",
      f"--gin.train.checkpoint_period={STEPS}",
      f"--gin.train.infer_eval_examples={EXAMPLES}"]
  result = subprocess.run(command, capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).resolve().parents[1],
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  log = run_dir / "inference_eval" / f"{TASK}-metrics.jsonl"
  rows = {row["step"]: row for row in map(
      json.loads, log.read_text(encoding="utf-8").splitlines())}
  before, after = rows[0], rows[STEPS]
  assert after["chrf"] >= before["chrf"] + MIN_CHRF_GAIN, (before, after)
  assert after["bleu"] >= before["bleu"] + MIN_BLEU_GAIN, (before, after)
  # The end screen shows both, and held-out examples before and after.
  assert f"inference_eval {TASK} untrained (step 0)" in result.stdout
  assert result.stdout.count("before") >= 3

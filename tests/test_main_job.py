"""The README's main job: prompt tuning a shipped base on held-out English
-> Spanish verses beats the untrained prompt by a stated margin.

Slow (under 3 minutes on 2 CPU cores): `pytest -m slow tests/test_main_job.py`.
It runs the `train` binary on `runs/translate_bible.gin` exactly as the
README does (only the run folder differs) and reads the run's own
inference-eval log: the untrained prompt's metrics (step 0) against the
trained prompt's, on the same 100 held-out verses.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

TASK = "bible_en_es_lm"
STEPS = 400  # runs/translate_bible.gin's TRAIN_STEPS
# Measured (README, "Quick start"): BLEU 0.21 -> 5.28, chrF 14.4 -> 20.7.
# The margins leave room for releases and thread timing, and still fail a
# prompt that only switches the output language without using the source
# (that gave chrF +1.5, BLEU +0.15 on an earlier base).
MIN_CHRF_GAIN = 4.0
MIN_BLEU_GAIN = 2.5


@pytest.mark.slow
def test_the_main_job_beats_the_untrained_prompt(tmp_path):
  run_dir = tmp_path / "translate"
  command = [
      sys.executable, "-m", "prompt_tuning.train",
      "--gin_file=runs/translate_bible.gin",
      f"--gin.MODEL_DIR='{run_dir}'"]
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

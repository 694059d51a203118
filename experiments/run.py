"""Runs one study of `experiments/studies.py`: every arm and seed through the
ordinary `train` binary, then its table and figure.

  python experiments/run.py msp_table1            # the full study
  python experiments/run.py msp_table1 --quick    # end to end in minutes

Each run writes `experiments/results/<study>[_quick]/<arm>/seed_<k>/`, the
binary's MODEL_DIR. A run counts as finished once its `result.json` exists
(written last, atomically), so a rerun skips it; an interrupted run resumes
from its newest checkpoint, as the train binary does. After the runs:
`results.json` (every run's metrics, and each arm's mean and std),
`table.md` and `figure.png` beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import studies  # pylint: disable=g-import-not-at-top,wrong-import-position

# What --quick changes in every arm: a few steps, few eval examples.
QUICK_BINDINGS = ("TRAIN_STEPS = 4", "BATCH_SIZE = 8", "train.eval_period = 4",
                  "train.checkpoint_period = 4", "train.eval_steps = 1",
                  "train.infer_eval_examples = 8", "train.log_period = 2")
QUICK_EVAL_BINDINGS = ("evaluate.num_examples = 8",)

# The seeds of an arm, and its two translation directions, compile the same
# programs: with XLA's persistent cache, every compile after the first is a
# load (about 10 s of a 2-minute run). A JAX_COMPILATION_CACHE_DIR already
# set wins. Loaded programs are the compiled ones, so scores do not change.
XLA_CACHE = os.path.join(tempfile.gettempdir(),
                         f"prompt_tuning_xla_cache_{os.getuid()}")


def _write_json(path: str, value: Any) -> None:
  """Written whole or not at all: a temporary file, then a rename."""
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def _trainable(model_dir: str) -> int:
  with open(os.path.join(model_dir, "model_info.json"), encoding="utf-8") as f:
    parameters = json.load(f)["parameters"]
  return int(re.match(r"([\d,]+) trainable", parameters).group(1).replace(
      ",", ""))


def _last_row(path: str) -> dict[str, Any]:
  """The last row of a metrics.jsonl file: the run's final evaluation."""
  with open(path, encoding="utf-8") as f:
    return json.loads(f.read().strip().splitlines()[-1])


def _metrics(model_dir: str, task: str, folder: str = "inference_eval"
             ) -> dict[str, float]:
  """The last evaluation's metrics of `task` under model_dir/folder."""
  last = _last_row(os.path.join(model_dir, folder, f"{task}-metrics.jsonl"))
  return {k: v for k, v in last.items() if k != "step"}


def _validation_loss(model_dir: str) -> float:
  """The last training-time evaluation's teacher-forced loss per target
  token on the validation split: it moves where a rank-classification
  accuracy stays at one class."""
  return float(_last_row(os.path.join(model_dir, "training_eval",
                                      "metrics.jsonl"))["loss"])


def _finished(out_dir: str, arm: studies.Arm, seed: int
              ) -> Optional[dict[str, Any]]:
  """The recorded result of (arm, seed), or None if it has not finished."""
  path = os.path.join(out_dir, arm.name, f"seed_{seed}", "result.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _binary(binary: str, gin_files: tuple[str, ...], bindings: list[str],
            log_path: str, what: str) -> None:
  """Runs `python -m prompt_tuning.<binary>`, its output appended to
  log_path; a failure stops the study with where to look."""
  command = [sys.executable, "-m", f"prompt_tuning.{binary}",
             f"--gin_search_paths={ROOT}",
             *(f"--gin_file={f}" for f in gin_files),
             *(f"--gin.{b.replace(' = ', '=', 1)}" for b in bindings)]
  env = {"JAX_COMPILATION_CACHE_DIR": XLA_CACHE, **os.environ}
  with open(log_path, "a", encoding="utf-8") as log:
    status = subprocess.call(command, cwd=ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
  if status != 0:
    raise SystemExit(f"{what} failed (exit {status}); see {log_path}. "
                     "Rerun the same command to resume.")


def run_arm(arm: studies.Arm, seed: int, out_dir: str, quick: bool
            ) -> dict[str, Any]:
  """One (arm, seed): trains (or resumes) and evaluates, then records its
  result. An untrained arm (prompt design) is one run of the eval binary
  on the base itself."""
  model_dir = os.path.join(out_dir, arm.name, f"seed_{seed}")
  result_path = os.path.join(model_dir, "result.json")
  done = _finished(out_dir, arm, seed)
  if done is not None:
    return done
  os.makedirs(model_dir, exist_ok=True)
  what = f"{arm.name} seed {seed}"
  log_path = os.path.join(model_dir, "train.log")
  quick_bindings = QUICK_BINDINGS if quick else ()
  print(f"== {what}", flush=True)
  start = time.perf_counter()
  if arm.trained:
    _binary("train", arm.gin_files,
            [*arm.bindings, f"MODEL_DIR = '{model_dir}'",
             f"RANDOM_SEED = {seed}", *quick_bindings], log_path, what)
    trainable = _trainable(model_dir)
  else:
    _binary("eval", ("runs/prompt_eval.gin", *arm.gin_files),
            [*arm.bindings, "CHECKPOINT_PATH = None",
             f"EVAL_OUTPUT_DIR = '{model_dir}/inference_eval'",
             *(QUICK_EVAL_BINDINGS if quick else ())], log_path, what)
    trainable = 0
  result = {"arm": arm.name, "seed": seed, "labels": arm.labels,
            "trainable": trainable, **_metrics(model_dir, arm.task)}
  if arm.trained:
    result["val_loss"] = _validation_loss(model_dir)
  # Zero-shot evaluations of the trained run on other tasks (transfer).
  for label, task in arm.evals:
    eval_dir = os.path.join(model_dir, f"eval_{label}")
    _binary("eval", ("runs/prompt_eval.gin", *arm.gin_files),
            [*arm.bindings, f"MIXTURE_OR_TASK_NAME = '{task}'",
             # The training files require MODEL_DIR; nothing writes it.
             f"MODEL_DIR = '{model_dir}'", f"CHECKPOINT_PATH = '{model_dir}'",
             f"EVAL_OUTPUT_DIR = '{eval_dir}'",
             *(QUICK_EVAL_BINDINGS if quick else ())], log_path, f"{what} eval {task}")
    result.update({f"{label}_{k}": v for k, v in _metrics(
        eval_dir, task, "").items()})
  result["seconds"] = time.perf_counter() - start
  _write_json(result_path, result)
  return result


def summarize(results: list[dict[str, Any]], metrics: tuple[str, ...]
              ) -> list[dict[str, Any]]:
  """One row per arm: labels, mean and std of each metric over seeds."""
  rows = []
  for arm in dict.fromkeys(r["arm"] for r in results):
    runs = [r for r in results if r["arm"] == arm]
    row = {"arm": arm, **runs[0]["labels"], "seeds": len(runs),
           "trainable": runs[0]["trainable"]}
    for name in (*metrics, "seconds"):
      # e.g. BLEU in a classification arm's row, or a metric recorded
      # only by runs newer than the runner's first version.
      if any(name not in r for r in runs):
        continue
      values = np.array([r[name] for r in runs], float)
      row[name] = float(values.mean())
      row[f"{name}_std"] = float(values.std(ddof=1)) if len(runs) > 1 else 0.0
    rows.append(row)
  return rows


def table(rows: list[dict[str, Any]], columns: tuple[str, ...],
          metrics: tuple[str, ...]) -> str:
  head = [*columns, *metrics, "trainable", "minutes"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    cells = [str(row[c]) for c in columns]
    cells += [("–" if m not in row else f"{row[m]:.2f}" if row["seeds"] == 1
               else f"{row[m]:.2f} ± {row[m + '_std']:.2f}") for m in metrics]
    cells += [f"{row['trainable']:,}", f"{row['seconds'] / 60:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("study", choices=sorted(studies.STUDIES))
  parser.add_argument("--quick", action="store_true",
                      help="one seed, a few steps: the pipeline end to end")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--report", action="store_true",
                      help="train nothing: tabulate the runs finished so far")
  parser.add_argument("--only", default=None,
                      help="regex: run only the arms whose name it finds")
  parser.add_argument("--out", default=os.path.join(HERE, "results"))
  args = parser.parse_args(argv)
  study = studies.STUDIES[args.study]
  out_dir = os.path.join(args.out, args.study + ("_quick" if args.quick
                                                 else ""))
  os.makedirs(out_dir, exist_ok=True)
  seeds = range(1 if args.quick else args.seeds)
  arms = [a for a in study.arms(args.quick)
          if args.only is None or re.search(args.only, a.name)]
  if not arms:
    raise SystemExit(f"--only={args.only!r} matches no arm of {args.study}.")
  if args.report:
    results = [_finished(out_dir, arm, seed) for arm in arms
               for seed in (seeds if arm.trained else [0])]
    results = [r for r in results if r is not None]
    if not results:
      raise SystemExit(f"no finished runs of {args.study} in {out_dir}.")
  else:
    # Untrained arms are deterministic: one run, whatever --seeds says.
    results = [run_arm(arm, seed, out_dir, args.quick)
               for arm in arms for seed in (seeds if arm.trained else [0])]
  rows = summarize(results, study.metrics)
  summary = {"study": args.study, "quick": args.quick, "runs": results,
             "rows": rows}
  _write_json(os.path.join(out_dir, "results.json"), summary)
  text = table(rows, study.columns, study.metrics)
  with open(os.path.join(out_dir, "table.md"), "w", encoding="utf-8") as f:
    f.write(text)
  study.figure(rows, os.path.join(out_dir, "figure.png"))
  print(text)
  return summary


if __name__ == "__main__":
  main(sys.argv[1:])

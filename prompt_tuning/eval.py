"""The eval binary: seqio metrics of a trained run or prompt on a split.

  prompt_tuning.eval \
    --gin_file=models/t5_1_1_base.gin --gin_file=methods/prompt_tuning.gin \
    --gin_file=runs/prompt_eval.gin \
    --gin.CHECKPOINT_PATH="'/tmp/run'" --gin.EVAL_OUTPUT_DIR="'/tmp/eval'"

Writes under EVAL_OUTPUT_DIR (seqio's loggers, T5X's layout):
`<task>/events.out.tfevents.*` (TensorBoard, tags `eval/<metric>`),
`<task>-metrics.jsonl` (one line per evaluation), `<task>-<step>.jsonl`
(every example with its prediction and/or score) and `config.gin`.
"""

from __future__ import annotations

if __name__ == "__main__":
  # `python -m prompt_tuning.eval`: the same entry point as the console
  # script, before anything heavy is imported (see `cli`).
  from prompt_tuning import cli
  cli.eval()
  raise SystemExit(0)

import os
import re
from typing import Any, Optional, Sequence

import gin
import jax
from jax.sharding import Mesh

from prompt_tuning import data
from prompt_tuning import evaluation
from prompt_tuning import gin_utils
from prompt_tuning import model_wrappers
from prompt_tuning import runtime
from prompt_tuning import summaries
from prompt_tuning import param_split


def step_of(label: str) -> int:
  """The training step a `checkpoint_<step>` label names; 0 for others
  (a prompt file has no step)."""
  match = re.fullmatch(r"checkpoint_(\d+)", label)
  return int(match.group(1)) if match else 0


def load_and_show(binary: str, dataset_cfg: data.DatasetConfig,
                  checkpoint_path: Optional[str],
                  model: Optional[model_wrappers.BaseModel],
                  params: Optional[Any], mesh: Optional[Mesh],
                  **rows: Any
                  ) -> tuple[Mesh, model_wrappers.BaseModel, Any, str]:
  """The eval and infer binaries' start: loads the trained model and shows
  what runs on the `binary` screen.

  Args:
    binary: the screen's title ("eval", "infer").
    dataset_cfg: the split the binary reads.
    checkpoint_path: CHECKPOINT_PATH, the trained part (a run, one of its
      checkpoints, or a prompt .npy file).
    model, params, mesh: the model, its base params (the frozen base and
      the method's, e.g. `pt.load_pretrained`'s) and their mesh, from a
      Python caller; the trained part still comes from checkpoint_path.
      The command line passes none: gin builds them (`make_mesh()`,
      `load_model`).
    **rows: more rows for the screen, after the task and checkpoint.

  Returns:
    (mesh, model, trained params, label), as `runtime.load_trained_model`.
  """
  mesh, model, params, label = runtime.load_trained_model(
      dataset_cfg, checkpoint_path, model, params, mesh)
  train, frozen = param_split.split(params, model.trainable_patterns)
  summaries.screen(binary, dict(
      summaries.start_rows(model, train, frozen, mesh),
      task=f"{dataset_cfg.mixture_or_task_name} ({dataset_cfg.split})",
      checkpoint=f"{checkpoint_path} ({label})", **rows))
  return mesh, model, params, label


# As train's: the parts a Python caller hands over are not gin values.
@gin.configurable(denylist=["model", "params", "mesh"])
def evaluate(*, dataset_cfg: data.DatasetConfig,
             checkpoint_path: Optional[str],
             output_dir: str, num_examples: Optional[int] = None,
             model: Optional[model_wrappers.BaseModel] = None,
             params: Optional[Any] = None, mesh: Optional[Mesh] = None
             ) -> dict[str, dict[str, Any]]:
  """Evaluates a trained run (or prompt file) with its tasks' seqio metrics.

  Args:
    dataset_cfg: the split to evaluate (@DatasetConfig(), usually
      validation).
    checkpoint_path: CHECKPOINT_PATH: a run's MODEL_DIR (its newest
      checkpoint), one of its checkpoint_<step> dirs, or a prompt .npy file;
      None: the base as loaded, untrained (with methods/model_tuning.gin).
    output_dir: EVAL_OUTPUT_DIR, where metrics and inferences go.
    num_examples: evaluate only the split's first N examples (rows, for a
      rank-classification task: one per label); None: all of it.
    model, params, mesh: a Python caller's parts (see `load_and_show`);
      the command line passes none.

  Returns:
    {task: {metric: value}} on process 0 ({} on the others).
  """
  runtime.check_output_dir(output_dir, "EVAL_OUTPUT_DIR")
  if num_examples is not None and num_examples < 1:
    raise ValueError(f"evaluate.num_examples={num_examples} must be >= 1 "
                     "(or None for the whole split).")
  data.check_text_encoding(dataset_cfg, num_examples)
  mesh, model, params, label = load_and_show(
      "eval", dataset_cfg, checkpoint_path, model, params, mesh)
  evaluator = evaluation.Evaluator(model, dataset_cfg, mesh,
                                   log_dir=output_dir,
                                   num_examples=num_examples)
  if not evaluator.task_names:
    raise gin_utils.UsageError(
        f"{dataset_cfg.mixture_or_task_name!r} has no task with a "
        f"{dataset_cfg.split!r} split and metrics to evaluate; check "
        "DatasetConfig.split and the task's metric_fns.")
  step = step_of(label)
  metrics = evaluator.evaluate(params, step)
  evaluator.close()
  if jax.process_index() == 0:
    gin_utils.write_operative_config(output_dir)
    summaries.screen("eval done", _summary_rows(metrics, output_dir, step))
  return metrics


def _summary_rows(metrics: dict[str, dict[str, Any]], output_dir: str,
                  step: int) -> dict[str, str]:
  rows = {}
  for task, values in sorted(metrics.items()):
    rows[task] = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in sorted(values.items()))
  tasks = sorted(metrics)
  rows["TensorBoard"] = ", ".join(os.path.join(output_dir, t) for t in tasks)
  rows["metrics"] = ", ".join(
      os.path.join(output_dir, f"{t}-metrics.jsonl") for t in tasks)
  inferences = [os.path.join(output_dir, f"{t}-{step:06}.jsonl")
                for t in tasks]
  rows["inferences"] = ", ".join(
      p for p in inferences if os.path.exists(p)) or "(none)"
  return rows


def console_main(argv: Optional[Sequence[str]] = None) -> None:
  gin_utils.run(evaluate, argv)


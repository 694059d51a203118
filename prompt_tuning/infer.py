"""The infer binary: decode every example of a split to JSON lines.

  prompt_tuning.infer \
    --gin_file=models/t5_1_1_base.gin --gin_file=methods/prompt_tuning.gin \
    --gin_file=runs/prompt_infer.gin \
    --gin.CHECKPOINT_PATH="'/tmp/run'" --gin.INFER_OUTPUT_DIR="'/tmp/infer'"

Writes `INFER_OUTPUT_DIR/<task>-<label>.jsonl` per task of the mixture
(label: `checkpoint_<step>` or the prompt file's name), one object per
example: "inputs", "targets" (text), "outputs" (decoded prediction),
"output_tokens" (up to EOS) and "score" (the decode's log-likelihood; beam
scores are length-penalised; null for a beam slot that holds no sequence).
With num_decodes > 1, outputs, output_tokens and score are lists, best
first. Files appear only when every task decoded; a NaN score (a model that
computes NaN) is an error and writes nothing.
"""

from __future__ import annotations

if __name__ == "__main__":
  # `python -m prompt_tuning.infer`: the same entry point as the console
  # script, before anything heavy is imported (see `cli`).
  from prompt_tuning import cli
  cli.infer()
  raise SystemExit(0)

import logging
import os
from typing import Any, Mapping, Optional, Sequence

import gin
import jax
import numpy as np
from jax.sharding import Mesh

from prompt_tuning import data
from prompt_tuning import eval as eval_binary
from prompt_tuning import evaluation
from prompt_tuning import files
from prompt_tuning import gin_utils
from prompt_tuning import model_wrappers
from prompt_tuning import runtime
from prompt_tuning import summaries

Record = dict[str, Any]


def _text(example: Mapping[str, Any], key: str, feature: Any) -> str:
  """The original text when the task kept it, else the decoded tokens."""
  raw = example.get(f"{key}_pretokenized")
  if raw is not None:
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
  return feature.vocabulary.decode(np.asarray(example[key]).tolist())


def _until_eos(tokens: np.ndarray, eos_id: int) -> list[int]:
  tokens = np.asarray(tokens).tolist()
  if eos_id in tokens:
    tokens = tokens[:tokens.index(eos_id)]
  while tokens and tokens[-1] == 0:
    tokens.pop()
  return tokens


def decode_task(model: model_wrappers.BaseModel, params: Any, task: Any,
                dataset_cfg: data.DatasetConfig, mesh: Mesh,
                num_decodes: int = 1) -> list[Record]:
  """Decodes every example of `task`'s split; one record per example.

  Every process reads the whole split in the same order (as in
  evaluation.Evaluator); all get the records.
  """
  lengths = dict(dataset_cfg.task_feature_lengths)
  task_ds = task.get_dataset(
      sequence_length=lengths, split=dataset_cfg.split, shuffle=False,
      num_epochs=1, seed=dataset_cfg.seed,
      use_cached=dataset_cfg.use_cached).cache()
  examples = list(data.numpy_iterator(task_ds))
  model_ds = data.feature_converter(model, pack=False)(task_ds,
                                                       lengths).enumerate()
  all_decodes = num_decodes > 1

  def fn(params, batch, rng):
    tokens, aux = model.predict_batch_with_aux(
        params, batch, rng, return_all_decodes=all_decodes,
        num_decodes=num_decodes)
    return tokens, aux["scores"]

  outputs: list[Any] = [None] * len(examples)
  seed = 0 if dataset_cfg.seed is None else dataset_cfg.seed
  for indices, (tokens, scores) in evaluation.batched_outputs(
      fn, params, model_ds, dataset_cfg.batch_size, mesh, seed):
    for index, row, score in zip(indices, tokens, scores):
      outputs[int(index)] = (row, score)

  features = task.output_features
  vocab = features["targets"].vocabulary
  records = []
  for example, (row, score) in zip(examples, outputs):
    record: Record = {}
    if "inputs" in features and "inputs" in example:
      record["inputs"] = _text(example, "inputs", features["inputs"])
    record["targets"] = _text(example, "targets", features["targets"])
    if all_decodes:
      record["outputs"] = [vocab.decode(r.tolist()) for r in row]
      record["output_tokens"] = [_until_eos(r, vocab.eos_id) for r in row]
      record["score"] = [float(s) for s in score]
    else:
      record["outputs"] = vocab.decode(row.tolist())
      record["output_tokens"] = _until_eos(row, vocab.eos_id)
      record["score"] = float(score)
    records.append(record)
  return records


# As train's: the parts a Python caller hands over are not gin values.
@gin.configurable(denylist=["model", "params", "mesh"])
def infer(*, dataset_cfg: data.DatasetConfig, checkpoint_path: str,
          output_dir: str, num_decodes: int = 1,
          model: Optional[model_wrappers.BaseModel] = None,
          params: Optional[Any] = None,
          mesh: Optional[Mesh] = None) -> dict[str, str]:
  """Decodes every example of a split with a trained run (or prompt file).

  Args:
    dataset_cfg: the split to decode (@DatasetConfig()).
    checkpoint_path: CHECKPOINT_PATH: a run's MODEL_DIR, one of its
      checkpoint_<step> dirs, or a prompt .npy file.
    output_dir: INFER_OUTPUT_DIR, where `<task>-<label>.jsonl` go.
    num_decodes: decodes per example (beam size under greedy decoding,
      samples under temperature sampling; see DecodingOptions).
    model, params, mesh: a Python caller's parts (see
      `eval.load_and_show`); the command line passes none.

  Returns:
    {task: path of its JSON lines file} (paths on process 0 only).
  """
  import seqio  # pylint: disable=g-import-not-at-top  # Heavy: TF.
  runtime.check_output_dir(output_dir, "INFER_OUTPUT_DIR")
  if num_decodes < 1:
    raise gin_utils.UsageError(f"infer.num_decodes={num_decodes} must be "
                               ">= 1.")
  # Before the model loads: a split no task has fails fast.
  mixture = data.get_task(dataset_cfg.mixture_or_task_name,
                          dataset_cfg.module)
  tasks = ([mixture] if isinstance(mixture, seqio.Task) else
           list(mixture.tasks))
  tasks = [t for t in tasks if dataset_cfg.split in t.splits]
  if not tasks:
    raise gin_utils.UsageError(
        f"no task of {dataset_cfg.mixture_or_task_name!r} has a "
        f"{dataset_cfg.split!r} split; set DatasetConfig.split to one it "
        "has.")
  mesh, model, params, label = eval_binary.load_and_show(
      "infer", dataset_cfg, checkpoint_path, model, params, mesh,
      num_decodes=num_decodes)
  results = {task.name: decode_task(model, params, task, dataset_cfg, mesh,
                                    num_decodes) for task in tasks}
  # Written only now, so a failure above leaves no partial output; every
  # file's lines are built first (a NaN score is an error, see
  # `evaluation.inference_lines`), so none is written unless all can be.
  texts = {}
  for name, records in results.items():
    path = os.path.join(output_dir, f"{name}-{label}.jsonl")
    texts[path] = (name, evaluation.inference_lines(path, records))
  paths = {}
  for path, (name, text) in texts.items():
    if files.write_text_on_process_0(path, text):
      paths[name] = path
      logging.info("Wrote %d inferences to %s", len(results[name]), path)
  if jax.process_index() == 0:
    gin_utils.write_operative_config(output_dir)
    summaries.screen("infer done", {
        name: f"{len(results[name])} examples -> {path}"
        for name, path in paths.items()})
  return paths


def console_main(argv: Optional[Sequence[str]] = None) -> None:
  gin_utils.run(infer, argv)


"""Evaluation: seqio metrics on decodes and scores, and teacher-forced loss.

`Evaluator` is T5X's: it wraps `seqio.Evaluator`, which caches the split,
runs our predict / score functions and computes the task's metrics, logging
them as TensorBoard summaries (`LOG_DIR/<task>/`) and JSON lines
(`LOG_DIR/<task>-metrics.jsonl`, inferences in `LOG_DIR/<task>-<step>.jsonl`).

Multi-host design: every process iterates the whole eval split in the same
order and places each global batch with `data.shard_full_batch`; outputs are
gathered to every process, and process 0 alone computes and writes metrics.
`training_eval` instead reads each process's shard (`data.get_dataset`) like
training does, and sums token statistics on the mesh.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from prompt_tuning import data
from prompt_tuning import files
from prompt_tuning import model_wrappers

Params = Any
Batch = dict[str, np.ndarray]
# (params, global batch, rng) -> a pytree of [batch, ...] outputs.
BatchFn = Callable[[Params, Mapping[str, jax.Array], jax.Array], Any]


def to_numpy(tree: Any) -> Any:
  """Device outputs as numpy on every process.

  A jitted function with a batch sharded over 'data' returns outputs sharded
  the same way; with several processes those are not fully addressable and
  must be all-gathered (a collective: every process calls this in step).
  """
  def convert(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(convert, tree)


def pad_rows(batch: Mapping[str, np.ndarray], rows: int) -> Batch:
  """`batch` with its last row repeated up to `rows` rows.

  Repeating a real example (rather than zeros) keeps the padded rows
  numerically ordinary; callers drop their outputs.
  """
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    missing = rows - value.shape[0]
    if missing > 0:
      value = np.concatenate([value, np.repeat(value[-1:], missing, 0)])
    out[key] = value
  return out


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  rows = mesh.shape["data"]
  if batch_size < 1 or batch_size % rows:
    raise ValueError(
        f"BATCH_SIZE={batch_size} does not split over the mesh's data axis "
        f"of {rows} devices; use a multiple of {rows}.")


def batched_outputs(fn: BatchFn, params: Params, ds: Any, batch_size: int,
                    mesh: Mesh, seed: int = 0
                    ) -> Iterator[tuple[np.ndarray, Any]]:
  """Runs `fn` over an enumerated dataset in full batches of `batch_size`.

  Args:
    fn: the model call; gets params, a global batch and a per-batch rng.
    params: the model's params (placed on `mesh`).
    ds: a tf.data.Dataset of (index, model features) examples, read whole by
      every process (the eval split, in the same order everywhere).
    batch_size: the global batch size; the last batch is padded to it so
      the model compiles once.
    mesh: where batches go (rows split over 'data').
    seed: seeds the rngs (sampled decoding); batch i uses fold_in(seed, i).

  Yields:
    (indices [n], outputs with [n, ...] leaves) per batch, padding dropped.
  """
  check_batch_size(batch_size, mesh)
  key = jax.random.PRNGKey(seed)
  for number, (indices, features) in enumerate(
      data.numpy_iterator(ds.batch(batch_size))):
    count = len(indices)
    batch = data.shard_full_batch(pad_rows(features, batch_size), mesh)
    outputs = to_numpy(fn(params, batch, jax.random.fold_in(key, number)))
    yield np.asarray(indices), jax.tree.map(lambda x, n=count: x[:n], outputs)


def _token_lists(tokens: np.ndarray) -> list[Any]:
  return [row.tolist() for row in tokens]


class Evaluator:
  """seqio metrics of one task or mixture split, T5X's way.

  The split is read and cached once; `evaluate` can run every eval period.
  Examples are never packed (DatasetConfig.pack is ignored), as in T5X.
  """

  def __init__(self, model: model_wrappers.BaseModel,
               dataset_cfg: data.DatasetConfig, mesh: Mesh, log_dir: str,
               num_examples: Optional[int] = None):
    """`num_examples`: evaluate the split's first N examples (None: all)."""
    import seqio  # pylint: disable=g-import-not-at-top  # Heavy: TF.
    data.check_dataset(dataset_cfg, model)
    check_batch_size(dataset_cfg.batch_size, mesh)
    self.model = model
    self.dataset_cfg = dataset_cfg
    self.mesh = mesh
    self.log_dir = log_dir
    self.seed = 0 if dataset_cfg.seed is None else dataset_cfg.seed
    # Blocking metrics: evaluate() returns them, and a metrics thread would
    # race the next eval's device work for nothing.
    self._seqio = seqio.Evaluator(
        mixture_or_task_name=dataset_cfg.mixture_or_task_name,
        feature_converter=data.feature_converter(model, pack=False),
        eval_split=dataset_cfg.split,
        use_cached=dataset_cfg.use_cached,
        seed=dataset_cfg.seed,
        sequence_length=dict(dataset_cfg.task_feature_lengths),
        log_dir=log_dir,
        logger_cls=[seqio.TensorBoardLogger, seqio.JSONLogger],
        async_compute_metrics=False, num_examples=num_examples)
    if not self.task_names:
      logging.warning(
          "%r has no task with a %r split and metrics; nothing to evaluate.",
          dataset_cfg.mixture_or_task_name, dataset_cfg.split)

  @property
  def task_names(self) -> list[str]:
    return [task.name for task in self._seqio.eval_tasks]

  def _run(self, fn: BatchFn, params: Params, ds: Any
           ) -> tuple[list[int], Any]:
    indices, outputs = [], []
    for batch_indices, batch_outputs in batched_outputs(
        fn, params, ds, self.dataset_cfg.batch_size, self.mesh, self.seed):
      indices.extend(int(i) for i in batch_indices)
      outputs.append(batch_outputs)
    joined = jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)
    return indices, joined

  def _predict(self, params: Params, ds: Any, with_aux: bool):
    def fn(params, batch, rng):
      return self.model.predict_batch_with_aux(params, batch, rng)
    indices, (tokens, aux) = self._run(fn, params, ds)
    # A model computing NaN decodes garbage: refused, even when only the
    # tokens are scored (their metric would look like a real result).
    check_finite_scores(aux["scores"], self._task_of(ds), "decode scores")
    pairs = list(zip(indices, _token_lists(tokens)))
    if with_aux:
      return pairs, {k: list(v) for k, v in aux.items()}
    return pairs

  def _score(self, params: Params, ds: Any):
    def fn(params, batch, rng):
      del rng
      return self.model.score_batch(params, batch)
    indices, scores = self._run(fn, params, ds)
    check_finite_scores(scores, self._task_of(ds), "target log-likelihoods")
    return list(zip(indices, (float(s) for s in scores)))

  def _task_of(self, ds: Any) -> Optional[str]:
    """The name of the task whose cached dataset seqio handed over."""
    cached = getattr(self._seqio, "_cached_model_datasets", {})
    return next((name for name, d in cached.items() if d is ds), None)

  def evaluate(self, params: Params, step: int
               ) -> dict[str, dict[str, Any]]:
    """{task: {metric: value}} on process 0 ({} elsewhere); blocks.

    Every process must call it (decoding and scoring run on the mesh).
    """
    compute = jax.process_index() == 0
    created = compute and not os.path.exists(self.log_dir)
    if compute:
      os.makedirs(self.log_dir, exist_ok=True)
    try:
      future, _ = self._seqio.evaluate(
          compute_metrics=compute, step=step,
          predict_fn=lambda ds: self._predict(params, ds, with_aux=False),
          score_fn=lambda ds: self._score(params, ds),
          predict_with_aux_fn=lambda ds: self._predict(params, ds,
                                                       with_aux=True))
      metrics = future.result()
    except BaseException:
      if created and not os.listdir(self.log_dir):
        os.rmdir(self.log_dir)  # A failed first evaluation leaves nothing.
      raise
    if not compute or metrics is None:
      return {}
    return {task: {name: _scalar(value) for name, value in values.items()}
            for task, values in metrics.items()}

  def examples(self, step: int, count: int) -> dict[str, list[dict[str, Any]]]:
    """{task: the first `count` (input, target, prediction) records} that
    evaluating at `step` logged (seqio's JSONLogger; process 0 only)."""
    found = {}
    for task in self.task_names:
      path = os.path.join(self.log_dir, f"{task}-{step:06d}.jsonl")
      if not os.path.isfile(path):
        continue
      records = []
      with open(path, encoding="utf-8") as f:
        for line in f:
          if len(records) == count:
            break
          row = json.loads(line)
          inputs = row.get("input", {})
          records.append({
              "input": inputs.get("inputs_pretokenized", ""),
              "target": row.get("target", ""),
              "prediction": row.get("prediction", "")})
      found[task] = records
    return found

  def close(self) -> None:
    self._seqio.close()


def _scalar(value: Any) -> Any:
  """A float for numeric metric values; other values (text, images) as is."""
  value = getattr(value, "value", value)  # seqio.metrics.Scalar.
  try:
    return float(value)
  except (TypeError, ValueError):
    return value


@functools.partial(jax.jit, static_argnums=0)
def _token_stats(model: model_wrappers.BaseModel, params: Params,
                 batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Sums over a batch: loss, z-loss, correct tokens, weights, examples.

  Summed (not normalized) so batches aggregate exactly; loss options
  (label smoothing, z-loss) are the model's.
  """
  logits = model.compute_logits(params, batch)
  stats, weights = model.token_stats(logits, batch,
                                     loss_normalizing_factor=None)
  examples = jnp.sum(jnp.any(weights > 0, axis=-1))
  return dict(stats, examples=examples.astype(jnp.float32))


def _padded_batches(ds: Any, rows: int,
                    num_batches: Optional[int]) -> Iterator[Batch]:
  """This process's batches, all of `rows` rows (extra rows weigh 0).

  With several processes, shards may hold different numbers of batches; the
  processes agree each step whether any still has data (a tiny all-gather),
  and those that ran out feed weightless rows, so all call the model in
  step.
  """
  iterator = data.numpy_iterator(ds)
  weightless = None  # The last batch with all weights 0.
  count = 0
  while num_batches is None or count < num_batches:
    batch = next(iterator, None)
    if jax.process_count() > 1:
      has_data = multihost_utils.process_allgather(
          np.asarray(batch is not None))
      if not np.any(has_data):
        return
      if batch is None:
        if weightless is None:
          raise ValueError(
              "this process's shard of the training-eval split is empty; "
              "use fewer processes or a larger split.")
        batch = weightless
    elif batch is None:
      return
    targets = np.asarray(batch["decoder_target_tokens"])
    weights = np.asarray(batch.get("decoder_loss_weights", targets > 0),
                         np.float32)
    batch = pad_rows(dict(batch, decoder_loss_weights=weights), rows)
    batch["decoder_loss_weights"][len(weights):] = 0
    weightless = dict(batch, decoder_loss_weights=np.zeros(
        batch["decoder_loss_weights"].shape, np.float32))
    count += 1
    yield batch


def training_eval(model: model_wrappers.BaseModel, params: Params,
                  dataset_cfg: data.DatasetConfig, mesh: Mesh,
                  num_batches: Optional[int] = None) -> dict[str, float]:
  """Teacher-forced metrics of a split (T5X's training_eval).

  Args:
    model, params: the model and its params (on `mesh`).
    dataset_cfg: the split (each process reads its shard).
    mesh: the run's mesh.
    num_batches: stop after this many global batches (None: the whole
      split, one epoch).

  Returns:
    loss: token-weighted mean loss per target token (cross-entropy + z-loss,
      whatever LOSS_NORMALIZING_FACTOR training uses, so runs compare);
    cross_ent_loss: its cross-entropy part; accuracy: the share of target
    tokens predicted right (teacher forced); num_examples and num_tokens:
    what was counted.
  """
  rows = dataset_cfg.batch_size // jax.process_count()
  ds = data.get_dataset(dataset_cfg, model, num_epochs=1,
                        drop_remainder=False)
  totals = None
  for batch in _padded_batches(ds, rows, num_batches):
    if model.method is not None:
      model.method.check_batch(batch)
    stats = _token_stats(model, params, data.to_global(batch, mesh))
    totals = stats if totals is None else jax.tree.map(jnp.add, totals,
                                                       stats)
  if totals is None:
    raise ValueError(
        f"the {dataset_cfg.split!r} split of "
        f"{dataset_cfg.mixture_or_task_name!r} gave no examples to evaluate.")
  totals = {k: float(v) for k, v in to_numpy(totals).items()}
  tokens = max(totals["weight_sum"], 1.0)
  return {
      "loss": totals["loss"] / tokens,
      "cross_ent_loss": (totals["loss"] - totals["z_loss"]) / tokens,
      "accuracy": totals["correct"] / tokens,
      "num_examples": totals["examples"],
      "num_tokens": totals["weight_sum"],
  }


def write_inferences(path: str, records: Iterable[Mapping[str, Any]]
                     ) -> Optional[str]:
  """Writes one JSON object per line to `path`, atomically; process 0 only.

  Records hold "inputs", "targets", "outputs" (decoded text) and, where
  there are any, "output_tokens" and "score". numpy values become lists,
  infinities null; NaN is a ValueError (`inference_lines`).
  A reader never sees a half-written file: it goes to a temporary file in
  the same folder, renamed over `path` when complete (removed on failure).

  Returns:
    `path`, or None on processes other than 0.
  """
  return files.write_text_on_process_0(path, inference_lines(path, records))


def inference_lines(path: str, records: Iterable[Mapping[str, Any]]) -> str:
  """The JSON lines `write_inferences` writes to `path`.

  JSON has no NaN or Infinity (Python's json would write the bare words,
  which other readers reject). An infinite score is a beam slot that holds
  no sequence (see `decoding.beam_search`) and is written as null; NaN means
  the model computed NaN and is an error here, before anything is written.

  Raises:
    ValueError: a record holds NaN; names the file, example and field.
  """
  lines = []
  for number, record in enumerate(records):
    try:
      safe = {k: _json_safe(v) for k, v in record.items()}
    except FloatingPointError as e:
      fields = [k for k, v in record.items() if _has_nan(v)]
      raise ValueError(
          f"cannot write {path}: example {number}'s "
          f"{'/'.join(map(str, fields)) or 'value'} is NaN, which JSON "
          "cannot hold; the model computes NaN: check the prompt and the "
          "base checkpoint for NaN/Inf values (nothing was written).") from e
    lines.append(json.dumps(safe, default=_json_default, ensure_ascii=False,
                            allow_nan=False) + "\n")
  return "".join(lines)


def _json_safe(value: Any) -> Any:
  """`value` with infinities as None; FloatingPointError on NaN."""
  if isinstance(value, Mapping):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array, np.generic)):
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.inexact):
      return value
    return _json_safe(array.tolist())
  if isinstance(value, float):
    if value != value:  # pylint: disable=comparison-with-itself
      raise FloatingPointError("NaN")
    if value in (float("inf"), float("-inf")):
      return None
  return value


def _has_nan(value: Any) -> bool:
  try:
    _json_safe(value)
    return False
  except FloatingPointError:
    return True


def check_finite_scores(scores: Any, task: Optional[str], what: str) -> None:
  """Refuses NaN/Inf model scores before seqio's loggers write them.

  seqio's JSON logger writes NaN as a bare word (not JSON) and its metrics
  of NaN scores are NaN; a model that computes NaN (a NaN prompt or base)
  is an error to report, not a result to log.
  """
  array = np.asarray(scores, np.float64)
  bad = int(array.size - np.count_nonzero(np.isfinite(array)))
  if bad:
    where = f"task {task!r}" if task else "the task being evaluated"
    raise ValueError(
        f"{where}: {bad} of {array.size} {what} are NaN or Inf; the "
        "model computes non-finite values: check the prompt and the base "
        "checkpoint for NaN/Inf values.")


def _json_default(value: Any) -> Any:
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    return np.asarray(value).tolist()
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  raise TypeError(f"{type(value).__name__} is not JSON serializable")

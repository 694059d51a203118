r"""The `train` binary: T5X-style, gin-configured prompt / prefix / model tuning.

  python -m prompt_tuning.train \
    --gin_file=models/t5_1_1_base.gin \
    --gin_file=runs/prompt_finetune.gin \
    --gin_file=methods/prompt_tuning.gin \
    --gin.MODEL_DIR="'/tmp/rte'" \
    --gin.INITIAL_CHECKPOINT_PATH="'/ckpts/t5_1_1_lm100k_base/checkpoint_1100000'" \
    --gin.MIXTURE_OR_TASK_NAME="'super_glue_rte_v102'" \
    --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 8}" \
    --gin.TRAIN_STEPS=30000

Only the trainable subtree is optimized and saved; the frozen base is read
from INITIAL_CHECKPOINT_PATH and never written. A run resumes from the newest
checkpoint in MODEL_DIR, with the same data position, so a killed run
restarted with the same command ends where an uninterrupted one would.

`train()` can also be called from Python with no gin config, given its
parts, as T5X's train is given its model and partitioner:

  mesh = partitioning.make_mesh(data=1, model=1, num_devices=1)
  model, variables = pt.load_pretrained(path, method=pt.PromptTuning(20),
                                        mesh=mesh)
  train(model=model, params=variables["params"], mesh=mesh,
        model_dir="/tmp/run", train_dataset_cfg=data.DatasetConfig(...),
        optimizer=optax.adam(1e-3), total_steps=1000)
"""

from __future__ import annotations

if __name__ == "__main__":
  # `python -m prompt_tuning.train`: the same entry point as the console
  # script, before anything heavy is imported (see `cli`).
  from prompt_tuning import cli
  cli.train()
  raise SystemExit(0)

import dataclasses
import itertools
import json
import os
import signal
import threading
from typing import Any, Optional

import gin
import jax
import optax
from jax.sharding import Mesh

from prompt_tuning import data
from prompt_tuning import evaluation
from prompt_tuning import files
from prompt_tuning import gin_utils
from prompt_tuning import model_wrappers
from prompt_tuning import optimizers
from prompt_tuning import run_checkpoints
from prompt_tuning import runtime
from prompt_tuning import summaries
from prompt_tuning import param_split
from prompt_tuning import train_step

MODEL_INFO_FILE = "model_info.json"
# Counts train() takes where None means "all" / "none".
_OPTIONAL_COUNTS = ("eval_steps", "keep_checkpoints", "infer_eval_examples")


def _whole(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _check_steps(total_steps: int, **periods: int) -> None:
  if not _whole(total_steps) or total_steps < 1:
    raise ValueError(f"TRAIN_STEPS={total_steps!r} must be a whole number "
                     ">= 1, e.g. --gin.TRAIN_STEPS=1000.")
  for name, value in periods.items():
    if value is None and name in _OPTIONAL_COUNTS:
      continue
    if not _whole(value) or value < 1:
      raise ValueError(f"train.{name}={value!r} must be a whole number >= 1"
                       + (" (or None)." if name in _OPTIONAL_COUNTS else "."))


def _abstract(tree: Any) -> Any:
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      tree)


def _model_info(model: Any, base: str, rows: dict[str, Any]) -> dict[str, Any]:
  return {"initial_checkpoint_path": base,
          "method": repr(model.method),
          "trainable_patterns": list(model.trainable_patterns),
          "config": dataclasses.asdict(model.config), **rows}


@dataclasses.dataclass
class TrainResult:
  """What `train` returns: the final step, its metrics and the params
  (trainable merged with the frozen base, on the run's mesh)."""

  step: int
  metrics: dict[str, Any]
  params: Any


class _PeriodMetrics:
  """Host-side sums of per-step metrics between summary writes."""

  def __init__(self):
    self.reset()

  def reset(self) -> None:
    self.loss = self.correct = self.weights = 0.0
    self.steps = 0

  def add(self, metrics: dict[str, Any]) -> None:
    weight = float(metrics["weight_sum"])
    self.loss += float(metrics["loss"])
    self.correct += float(metrics["accuracy"]) * weight
    self.weights += weight
    self.steps += 1

  def scalars(self) -> dict[str, float]:
    return {"loss": self.loss / max(self.steps, 1),
            "loss_per_token": self.loss / max(self.weights, 1.0),
            "accuracy": self.correct / max(self.weights, 1.0)}


# The parts are objects a Python caller hands over, never gin values: kept
# out of gin so the command line's operative config.gin stays as it was.
def _check_model_dir(model_dir: Any) -> None:
  """MODEL_DIR must be a directory we can create and write, checked before
  anything is written (the nearest existing folder is probed)."""
  if not isinstance(model_dir, (str, os.PathLike)) or not str(model_dir):
    raise ValueError(f"MODEL_DIR={model_dir!r} must be a directory path, "
                     "e.g. --gin.MODEL_DIR=\"'/tmp/run'\".")
  runtime.check_writable_dir(os.fspath(model_dir), "MODEL_DIR")


class _SigtermFlag:
  """Within the block, SIGTERM sets `raised` instead of killing the process
  (main thread only; elsewhere the default handling stays)."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


@gin.configurable(denylist=["model", "params", "mesh"])
def train(*, model: Optional[model_wrappers.BaseModel] = None,
          params: Optional[Any] = None, mesh: Optional[Mesh] = None,
          model_dir: str = gin.REQUIRED,
          train_dataset_cfg: data.DatasetConfig = gin.REQUIRED,
          train_eval_dataset_cfg: Optional[data.DatasetConfig] = None,
          infer_eval_dataset_cfg: Optional[data.DatasetConfig] = None,
          optimizer: optax.GradientTransformation = gin.REQUIRED,
          total_steps: int = gin.REQUIRED, eval_period: int = 1000,
          eval_steps: Optional[int] = 20, checkpoint_period: int = 1000,
          keep_checkpoints: Optional[int] = None, num_microbatches: int = 1,
          random_seed: int = 0, log_period: int = 100,
          infer_eval_examples: Optional[int] = None,
          eval_untrained: bool = False,
          show_examples: int = 0) -> TrainResult:
  """Trains the method's parameters.

  Args:
    model: the model with its method attached (`pt.load_pretrained`'s).
      Its `base_path` (where the frozen base was read from) is recorded in
      the checkpoints and model_info.json, and a resumed run must match it.
    params: the model's params: the frozen base and the method's fresh
      parameters (variables["params"]), placed on `mesh`. Not modified.
    mesh: the ('data', 'model') mesh to train on; None: the one `params`
      are placed on. The command line passes none of the three: they come
      from gin, `make_mesh()` and `load_model(mesh=mesh)` (see
      `runtime.resolve_parts`).
    model_dir: MODEL_DIR: checkpoints, numpy prompt exports, summaries,
      config.gin and model_info.json go here.
    train_dataset_cfg: the training data (global batch size).
    train_eval_dataset_cfg: teacher-forced eval data (loss, accuracy),
      summarised under MODEL_DIR/training_eval every eval_period steps.
    infer_eval_dataset_cfg: decoding / scoring eval with the task's seqio
      metrics, under MODEL_DIR/inference_eval every eval_period steps.
    optimizer: an optax transformation; sees only trainable params.
    total_steps: TRAIN_STEPS, counted over resumes.
    eval_period, eval_steps: how often, and how many train_eval batches
      (None: the whole split).
    checkpoint_period, keep_checkpoints: save every N steps (and at the
      end), keeping the newest `keep_checkpoints` (None: all).
    num_microbatches: gradient accumulation over this many slices.
    random_seed: RANDOM_SEED for dropout and the shuffle order.
    log_period: steps between train summaries (and log lines off a TTY).
    infer_eval_examples: decode / score only the first N examples of the
      inference-eval split (None: all of it).
    eval_untrained: also run the inference eval before the first step (on
      a fresh run), so the end screen shows the metrics the method started
      from next to those it reached.
    show_examples: the end screen shows this many inference-eval examples:
      input, reference, and the output before (with eval_untrained) and
      after training.
  """
  _check_steps(total_steps, eval_period=eval_period,
               checkpoint_period=checkpoint_period, log_period=log_period,
               eval_steps=eval_steps, keep_checkpoints=keep_checkpoints,
               num_microbatches=num_microbatches,
               infer_eval_examples=infer_eval_examples)
  _check_model_dir(model_dir)
  # Everything that can reject the input happens before MODEL_DIR is touched.
  mesh, model, params = runtime.resolve_parts(model, params, mesh)
  if train_dataset_cfg.shuffle and train_dataset_cfg.seed is None:
    train_dataset_cfg = dataclasses.replace(train_dataset_cfg,
                                            seed=random_seed)
  train_ds = data.get_dataset(train_dataset_cfg, model)
  for cfg in (train_eval_dataset_cfg, infer_eval_dataset_cfg):
    if cfg is not None:
      data.check_dataset(cfg, model)
  if infer_eval_dataset_cfg is not None:
    data.check_text_encoding(infer_eval_dataset_cfg, infer_eval_examples)
  state, frozen = train_step.init_state(model, params, optimizer)
  del params
  base = model.base_path
  run_checkpoints.check_resumable(
      model_dir, total_steps, run_checkpoints.shapes(state.params),
      type(model.method).__name__ if model.method else "no method")
  # The first batch is read before MODEL_DIR is touched: an empty task (or
  # one whose every example is filtered out) fails here.
  committed = run_checkpoints.committed_steps(model_dir)
  skip = committed[-1] if committed else 0
  batches = data.iterate(train_ds, skip=skip)
  first_batch = next(batches, None)
  if first_batch is None:
    raise ValueError(
        f"task {train_dataset_cfg.mixture_or_task_name!r} gives no "
        f"{train_dataset_cfg.split!r} examples: its data is empty, or "
        "every example was filtered out; check the task's source files and "
        "preprocessors (nothing was written).")
  os.makedirs(model_dir, exist_ok=True)
  checkpoints = run_checkpoints.RunCheckpoints(model_dir, keep_checkpoints)
  if checkpoints.latest_step() is not None:
    fresh = state
    state, info = checkpoints.restore_newest_intact(_abstract(state))
    if info.get("initial_checkpoint_path") not in (None, base):
      raise ValueError(
          f"MODEL_DIR {model_dir!r} holds a run on the base "
          f"{info['initial_checkpoint_path']!r}, not INITIAL_CHECKPOINT_PATH "
          f"{base!r}; use a new MODEL_DIR for a new base.")
    state = optimizers.with_current_hyperparams(state, fresh)
    checkpoints.write_missing_exports(_abstract(state.params), model, frozen)
    # Rows past the restored step were logged before the run was killed and
    # are logged again now: each step is kept once.
    summaries.truncate_metrics(model_dir, int(state.step))
  start = int(state.step)

  rows = summaries.start_rows(model, state.params, frozen, mesh)
  rows.update({
      "task": train_dataset_cfg.mixture_or_task_name,
      "batch": (f"{train_dataset_cfg.batch_size} global, "
                f"{train_dataset_cfg.batch_size // jax.process_count()} per "
                f"process, {num_microbatches} microbatch(es); lengths "
                f"{dict(train_dataset_cfg.task_feature_lengths)}"),
      "steps": (f"{start} -> {total_steps}" + (" (resumed)" if start else "")),
      "model_dir": os.path.abspath(model_dir),
  })
  summaries.screen("train", rows)
  gin_utils.write_config(model_dir)
  files.write_text_on_process_0(
      os.path.join(model_dir, MODEL_INFO_FILE),
      json.dumps(_model_info(model, base, rows), indent=2, sort_keys=True,
                 default=str))

  step_fn = train_step.make_train_step(model, optimizer, num_microbatches,
                                    mesh=mesh)
  dropout_key = (jax.random.PRNGKey(random_seed)
                 if model.config.dropout_rate > 0 else None)
  if start == skip:
    batches = itertools.chain([first_batch], batches)
  else:  # Resumed from an older checkpoint: the newest could not be read.
    batches = data.iterate(train_ds, skip=start)
  writers = summaries.MetricWriters(model_dir)
  progress = summaries.Progress(total_steps, start, log_period)
  throughput = summaries.Throughput(train_dataset_cfg.batch_size)
  period = _PeriodMetrics()
  evaluator = None
  last: dict[str, Any] = {}
  pending = None  # (step, metrics) of the step before: read one step late

  def inference_eval(step: int) -> dict[str, Any]:
    nonlocal evaluator
    if evaluator is None:
      evaluator = evaluation.Evaluator(
          model, infer_eval_dataset_cfg, mesh,
          log_dir=os.path.join(model_dir, "inference_eval"),
          num_examples=infer_eval_examples)
    return evaluator.evaluate(param_split.merge(state.params, frozen), step)

  untrained = None
  if eval_untrained and start == 0 and infer_eval_dataset_cfg is not None:
    untrained = inference_eval(0)

  def record(step: int, metrics: dict[str, Any]) -> None:
    train_step.check_finite(metrics, step)
    period.add(metrics)
    rate = throughput.step()
    # From the step's own metrics: reading `state` here would wait for the
    # step dispatched after this one, and the loop would stop overlapping
    # the next batch's preparation with the running step.
    lr = (float(metrics["learning_rate"]) if "learning_rate" in metrics
          else optimizers.learning_rate(state.opt_state))
    progress.update(step, float(metrics["loss"]) / max(
        float(metrics["weight_sum"]), 1.0), lr, rate)
    if step % log_period == 0 or step == total_steps:
      scalars = dict(period.scalars(), examples_per_second=rate)
      if lr is not None:
        scalars["learning_rate"] = lr
      writers.write("train", step, scalars)
      last["train"] = scalars
      period.reset()
      throughput.reset()

  def save(step: int) -> None:
    checkpoints.save(state, {"initial_checkpoint_path": base,
                             "data_position": step},
                     model=model, frozen=frozen)

  step = start
  try:
    with _SigtermFlag() as sigterm:
      for step in range(start + 1, total_steps + 1):
        batch = data.to_global(next(batches), mesh)
        rng = (None if dropout_key is None
               else jax.random.fold_in(dropout_key, step))
        state, metrics = step_fn(state, frozen, batch, rng)
        if pending is not None:
          record(*pending)
        pending = (step, metrics)
        if step % checkpoint_period == 0 or step == total_steps:
          record(*pending)
          pending = None
          save(step)
        if step % eval_period == 0 or step == total_steps:
          if pending is not None:
            record(*pending)
            pending = None
          params = param_split.merge(state.params, frozen)
          if train_eval_dataset_cfg is not None:
            scalars = evaluation.training_eval(
                model, params, train_eval_dataset_cfg, mesh, eval_steps)
            writers.write("training_eval", step, scalars)
            last["training_eval"] = scalars
          if infer_eval_dataset_cfg is not None:
            last["inference_eval"] = inference_eval(step)
        if sigterm.raised and step < total_steps:
          # Preemption (TPU VMs get SIGTERM): a checkpoint of this step is
          # cheap next to the steps a restart would redo.
          if pending is not None:
            record(*pending)
            pending = None
          if step % checkpoint_period != 0:
            save(step)
          raise gin_utils.Interrupted(
              f"stopped by SIGTERM at step {step}: saved checkpoint_{step} "
              f"in {os.path.abspath(model_dir)}; rerun the same command to "
              "resume from it.", exit_code=143)
    saved_steps = checkpoints.all_steps()
  except KeyboardInterrupt as e:
    if isinstance(e, gin_utils.Interrupted):
      raise
    saved = checkpoints.all_steps()
    raise gin_utils.Interrupted(
        f"interrupted at step {step}; "
        + (f"the newest checkpoint is checkpoint_{max(saved)} in "
           f"{os.path.abspath(model_dir)}: rerun the same command to resume "
           "from it." if saved else
           "no checkpoint was saved yet: rerun the same command to start "
           "again.")) from e
  finally:
    progress.close()
    writers.close()
    checkpoints.close()

  gin_utils.write_operative_config(model_dir)
  end = {}
  for kind, values in last.items():
    if kind == "inference_eval":
      for task, metrics in values.items():
        if untrained and task in untrained:
          end[f"{kind} {task} untrained (step 0)"] = (
              summaries.format_metrics(untrained[task]))
          end[f"{kind} {task} trained (step {total_steps})"] = (
              summaries.format_metrics(metrics))
        else:
          end[f"{kind} {task}"] = summaries.format_metrics(metrics)
    else:
      if kind == "train" and "loss" in values:
        # Files keep T5X's "loss" (summed over the batch's target tokens);
        # the screen says so, beside the per-token loss.
        values = {("loss_sum" if k == "loss" else k): v
                  for k, v in values.items()}
      end[kind] = summaries.format_metrics(values)
  end["checkpoints"] = ", ".join(f"checkpoint_{s}"
                                 for s in sorted(saved_steps))
  if run_checkpoints.exportable(model):
    end["prompt (.npy)"] = os.path.join(
        os.path.abspath(model_dir), run_checkpoints.NUMPY_DIR,
        f"checkpoint_{total_steps}")
  root = os.path.abspath(model_dir)
  kinds = [k for k in ("train", "training_eval")
           if os.path.isdir(os.path.join(root, k))]
  end["summaries"] = (f"{root}/{{{','.join(kinds)}}} (TensorBoard + "
                      "metrics.jsonl)")
  if os.path.isdir(os.path.join(root, "inference_eval")):
    end["inference eval"] = (f"{root}/inference_eval (TensorBoard, "
                             "<task>-metrics.jsonl, <task>-<step>.jsonl)")
  summaries.screen(f"done: step {total_steps}", end)
  if show_examples and evaluator is not None and jax.process_index() == 0:
    summaries.print_examples(
        evaluator.examples(total_steps, show_examples),
        evaluator.examples(0, show_examples) if untrained else None)
  return TrainResult(int(state.step), last,
                     param_split.merge(state.params, frozen))


def console_main(argv=None) -> None:
  gin_utils.run(train, argv)


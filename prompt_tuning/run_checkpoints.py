"""A run's checkpoints: trainable params, optimizer state, step, data position.

Orbax writes each save as `MODEL_DIR/checkpoint_<step>/` with three items:

  params/     the trainable subtree only (the frozen base is never copied)
  opt_state/  its optimizer state
  run/        JSON: step, data position, the base checkpoint's path, method

Orbax writes into a temporary directory and renames it when complete, so a
crash or kill mid-save leaves the previous checkpoints intact and no
half-written one is ever restored. `keep` prunes the oldest. Every save of a
prompt or prefix method also exports its tables as `.npy` under
`MODEL_DIR/numpy_checkpoints/checkpoint_<step>/` (the format the
prompt-tuning project ships prompts in), pruned along with the checkpoints.
Eval and infer restore the `params` item alone.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Any, Optional

import flax
import jax
import orbax.checkpoint as ocp

from prompt_tuning import console
from prompt_tuning import files as files_lib
from prompt_tuning import param_split
from prompt_tuning import train_step
from prompt_tuning.checkpoints import export

STEP_PREFIX = "checkpoint"
NUMPY_DIR = "numpy_checkpoints"
_ITEMS = ("params", "opt_state", "run")


def _manager(directory: str, keep: Optional[int] = None,
             create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, step_prefix=STEP_PREFIX, create=create,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=_ITEMS)


def exportable(model: Any) -> bool:
  """Whether the model's method has tables the `.npy` export writes."""
  return model.method is not None and "npy" in model.method.export_formats


class RunCheckpoints:
  """Saves and restores one run's state under `model_dir`."""

  def __init__(self, model_dir: str, keep: Optional[int] = None):
    if keep is not None and keep < 1:
      raise ValueError(f"keep_checkpoints={keep} must be >= 1 (or None to "
                       "keep all).")
    self.model_dir = os.path.abspath(model_dir)
    self._keep = keep
    self._manager = _manager(self.model_dir, keep)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, state: train_step.TrainState, run_info: dict[str, Any],
           model: Any = None, frozen: Any = None) -> str:
    """Saves `state` (+ the `.npy` export when the method has one)."""
    step = int(state.step)
    self._manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        run=ocp.args.JsonSave(dict(run_info, step=step))))
    self._manager.wait_until_finished()
    if model is not None and exportable(model) and jax.process_index() == 0:
      params = jax.device_get(param_split.merge(state.params, frozen or {}))
      export.export_prompt(params, self.numpy_dir(step), model=model)
      self._prune_exports()
    return self.checkpoint_dir(step)

  def _prune_exports(self) -> None:
    """Drops the `.npy` exports of checkpoints `keep` pruned (prefix tables
    of large models are not small)."""
    root = os.path.join(self.model_dir, NUMPY_DIR)
    kept = {f"{STEP_PREFIX}_{s}" for s in self.all_steps()}
    for name in os.listdir(root):
      if re.fullmatch(rf"{STEP_PREFIX}_\d+", name) and name not in kept:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)

  def checkpoint_dir(self, step: int) -> str:
    return os.path.join(self.model_dir, f"{STEP_PREFIX}_{step}")

  def numpy_dir(self, step: int) -> str:
    return os.path.join(self.model_dir, NUMPY_DIR, f"{STEP_PREFIX}_{step}")

  def restore(self, abstract: train_step.TrainState, step: Optional[int] = None
              ) -> tuple[train_step.TrainState, dict[str, Any]]:
    """The state saved at `step` (default newest), placed like `abstract`."""
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract.params),
        opt_state=ocp.args.StandardRestore(abstract.opt_state),
        run=ocp.args.JsonRestore()))
    state = train_step.TrainState(
        step=jax.numpy.asarray(step, jax.numpy.int32),
        params=restored.params, opt_state=restored.opt_state)
    return state, dict(restored.run)

  def restore_newest_intact(self, abstract: train_step.TrainState
                            ) -> tuple[train_step.TrainState, dict[str, Any]]:
    """The newest checkpoint that restores. One that does not (its files
    truncated or damaged after the commit) is renamed to
    `checkpoint_<step>.corrupt` (kept, never deleted) with a warning, and
    the next older one is tried.

    Raises:
      ValueError: no checkpoint restores.
    """
    for step in sorted(self.all_steps(), reverse=True):
      try:
        return self.restore(abstract, step)
      except Exception as e:  # pylint: disable=broad-except
        # Orbax/TensorStore raise many types for damaged files.
        kept = _set_aside(self.checkpoint_dir(step))
        logging.warning(
            "checkpoint_%d in %s cannot be read (%s); kept as %s, resuming "
            "from the previous checkpoint.", step, self.model_dir,
            console.first_line(e), os.path.basename(kept))
        self._manager.close()
        self._manager = _manager(self.model_dir, self._keep)
    raise ValueError(
        f"no checkpoint in MODEL_DIR {self.model_dir!r} can be read (each "
        "was set aside as checkpoint_<step>.corrupt); use a new MODEL_DIR or "
        "restore the files.")

  def write_missing_exports(self, abstract_params: Any, model: Any,
                            frozen: Any) -> list[int]:
    """Writes the `.npy` export of every committed checkpoint that lacks
    one (a kill between a checkpoint's commit and its export); returns
    those steps."""
    if not exportable(model) or jax.process_index() != 0:
      return []
    # What an export killed mid-write staged: never renamed into place.
    files_lib.remove_stale_staging(os.path.join(self.model_dir, NUMPY_DIR))
    missing = [s for s in self.all_steps()
               if not os.path.isdir(self.numpy_dir(s))]
    for step in missing:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params)))
      params = jax.device_get(param_split.merge(restored.params,
                                                frozen or {}))
      export.export_prompt(params, self.numpy_dir(step), model=model)
    return missing

  def close(self) -> None:
    self._manager.close()


def _set_aside(path: str) -> str:
  """Renames a damaged checkpoint out of Orbax's sight, keeping its files."""
  target, n = f"{path}.corrupt", 1
  while os.path.exists(target):
    n += 1
    target = f"{path}.corrupt{n}"
  os.rename(path, target)
  return target


def committed_steps(model_dir: str) -> list[int]:
  """The steps of MODEL_DIR's committed checkpoints, from the folder names
  alone (Orbax renames a save to `checkpoint_<step>` when it commits).

  No CheckpointManager is built: in a multi-process run its constructor
  synchronizes the processes, and one process may call this after another
  created MODEL_DIR.
  """
  if not os.path.isdir(model_dir):
    return []
  steps = []
  for name in os.listdir(model_dir):
    match = re.fullmatch(rf"{STEP_PREFIX}_(\d+)", name)
    if match and os.path.isdir(os.path.join(model_dir, name)):
      steps.append(int(match.group(1)))
  return sorted(steps)


def saved_shapes(model_dir: str, step: int) -> Optional[dict[str, tuple]]:
  """{"/"-joined name: shape} of a checkpoint's trainable params, from its
  metadata alone; None when the metadata cannot be read (damaged)."""
  path = os.path.join(os.path.abspath(model_dir), f"{STEP_PREFIX}_{step}",
                      "params")
  try:
    tree = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
  except Exception:  # pylint: disable=broad-except
    return None
  return shapes(tree)


def shapes(tree: Any) -> dict[str, tuple]:
  """{"/"-joined name: shape} of a params tree (arrays or their metadata)."""
  flat = flax.traverse_util.flatten_dict(dict(tree), sep="/")
  return {name: tuple(leaf.shape) for name, leaf in flat.items()}


def check_resumable(model_dir: str, total_steps: int,
                    expected: dict[str, tuple], method: str) -> None:
  """Refuses, before anything is written, a MODEL_DIR whose newest
  checkpoint this run cannot continue: past TRAIN_STEPS, or other trainable
  parameters (another METHOD, PROMPT_LENGTH or base width)."""
  steps = committed_steps(model_dir)
  if not steps:
    return
  newest = steps[-1]
  if newest > total_steps:
    raise ValueError(
        f"MODEL_DIR {model_dir!r} already holds checkpoint_{newest}, past "
        f"TRAIN_STEPS={total_steps}; raise TRAIN_STEPS to continue that run, "
        "or use a new MODEL_DIR (nothing was written).")
  saved = saved_shapes(model_dir, newest)
  if saved is None:
    return  # Damaged: restore_newest_intact sets it aside.
  if set(saved) != set(expected):
    raise ValueError(
        f"MODEL_DIR {model_dir!r} holds a run training "
        f"{sorted(saved)}, but this run's METHOD ({method}) trains "
        f"{sorted(expected)}; use a new MODEL_DIR for another method "
        "(nothing was written).")
  for name, shape in saved.items():
    if tuple(expected[name]) != shape:
      raise ValueError(
          f"MODEL_DIR {model_dir!r} holds {name} of shape {shape} "
          f"(checkpoint_{newest}), but this run's is "
          f"{tuple(expected[name])}: PROMPT_LENGTH, the method's options or "
          "the base changed; use the run's settings or a new MODEL_DIR "
          "(nothing was written).")


def find_checkpoint(path: str) -> tuple[str, int]:
  """(run dir, step) for a run dir (newest) or one of its checkpoint_N dirs."""
  path = os.path.abspath(path)
  match = re.fullmatch(rf"{STEP_PREFIX}_(\d+)", os.path.basename(path))
  if match and os.path.isdir(os.path.join(path, "params")):
    return os.path.dirname(path), int(match.group(1))
  if os.path.isdir(path):
    steps = _manager(path, create=False).all_steps()
    if steps:
      return path, max(steps)
  raise FileNotFoundError(
      f"no run checkpoint at {path!r}: expected a MODEL_DIR holding "
      f"{STEP_PREFIX}_<step>/ dirs, one such dir, or a prompt .npy file. "
      "Set CHECKPOINT_PATH to the training run's MODEL_DIR.")


def restore_params(path: str, abstract_params: Any) -> tuple[Any, int]:
  """The trainable params of a run checkpoint (a run dir or checkpoint_N)."""
  run_dir, step = find_checkpoint(path)
  expected = shapes(abstract_params)
  saved = saved_shapes(run_dir, step)
  if saved is not None and saved != expected:
    raise ValueError(
        f"checkpoint_{step} in {run_dir!r} holds {_describe(saved)}, but the "
        f"model's METHOD trains {_describe(expected)}; evaluate it with the "
        "run's method and PROMPT_LENGTH (its config.gin).")
  manager = _manager(run_dir, create=False)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params)))
  except Exception as e:  # pylint: disable=broad-except
    # Orbax/TensorStore raise many types for damaged files.
    raise ValueError(
        f"checkpoint_{step} in {run_dir!r} cannot be read "
        f"({console.first_line(e)}):"
        " its files are damaged or incomplete; point CHECKPOINT_PATH at an "
        "earlier checkpoint_<step> of the run.") from e
  finally:
    manager.close()
  return restored.params, step


def _describe(named_shapes: dict[str, tuple]) -> str:
  return ", ".join(f"{name} {shape}" for name, shape in
                   sorted(named_shapes.items())) or "nothing"

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

import os
import re
import shutil
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

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

  def close(self) -> None:
    self._manager.close()


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
  manager = _manager(run_dir, create=False)
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract_params)))
  manager.close()
  return restored.params, step

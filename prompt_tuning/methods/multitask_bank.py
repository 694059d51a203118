"""Multitask prompts trained with google-research/prompt-tuning, read as ours.

That project's multitask prompt (its `extended/multitask_prompts.py`) keeps
two variables under the encoder's prompt module:

  encoder/prompt/prompt/shared_prompt           [P_s, H_s]
  encoder/prompt/prompt/task_prompts/embedding  [num_tasks, S]

Each task's row is flattened (row-major); S and the joined [P, H] prompt of
task K depend on the class their gin file used (our `mode` name):

  AddMultiTaskPrompt             "add"              S = P_s * H_s
      shared + row as [P_s, H_s]
  ConcatMultiTaskPrompt          "concat_length"    S = P_t * H_s
      [shared; row as [P_t, H_s]], P = P_s + P_t
  ConcatFeaturesMultiTaskPrompt  "concat_features"  S = P_s * H_t
      [shared | row as [P_s, H_t]], H = H_s + H_t
  ProjectMultiTaskPrompt         "project"          S = H_t * H_s + H_t
      shared @ kernel.T + bias, kernel = row[:H_t * H_s] as [H_t, H_s],
      bias = row[H_t * H_s:]

Their task K is the example led by `<extra_id_K>`, which
`MultiTaskPrompt(task_token_offset=<id of <extra_id_0>>)` reads the same way.

`bank_from_prompt_tuning` joins the parts once into a constant [num_tasks, P,
H] bank (row K = task K's prompt) to serve with MultiTaskPrompt; this also
covers "project", which has no trainable mode here. `method_kwargs` instead
gives MultiTaskPrompt parameters of the same mode, initialized to their
values, to keep training.

Sources: a T5X checkpoint (their variables above; a leading "target/" is
optional), their Checkpointer's `numpy_checkpoints/checkpoint_N` directory
(files named by the dotted variable path), or the two .npy files their
scripts/extract_variable.py writes (or arrays).
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import gin
import ml_dtypes
import numpy as np

from prompt_tuning.checkpoints import npy
from prompt_tuning.methods import initializers

__all__ = ["MODES", "SHARED_VARIABLE", "TASKS_VARIABLE",
           "bank_from_prompt_tuning", "method_kwargs", "read_parts"]

SHARED_VARIABLE = "encoder/prompt/prompt/shared_prompt"
TASKS_VARIABLE = "encoder/prompt/prompt/task_prompts/embedding"
MODES = ("add", "concat_length", "concat_features", "project")
# Their class names (as their gin files bind them) -> our mode names.
_THEIR_CLASSES = {
    "AddMultiTaskPrompt": "add",
    "ConcatMultiTaskPrompt": "concat_length",
    "ConcatFeaturesMultiTaskPrompt": "concat_features",
    "ProjectMultiTaskPrompt": "project",
}
_CLASS_OF = {mode: name for name, mode in _THEIR_CLASSES.items()}
# Their combine functions' short names that differ from ours.
_ALIASES = {"concat": "concat_length"}

Source = Union[str, os.PathLike, np.ndarray]


def canonical_mode(mode: str) -> str:
  """Our mode name for ours, their class name (with or without module) or
  "concat": "multitask_prompts.ConcatMultiTaskPrompt" -> "concat_length"."""
  name = str(mode).rsplit(".", 1)[-1]
  name = _THEIR_CLASSES.get(name, _ALIASES.get(name, name))
  if name not in MODES:
    raise ValueError(
        f"mode={mode!r} is not a prompt-tuning multitask combination; use one "
        f"of {MODES} or the class their gin file names "
        f"({', '.join(_THEIR_CLASSES)}).")
  return name


# ----------------------------------------------------------------------------
# Reading.
# ----------------------------------------------------------------------------


def _load(source: Source, what: str) -> np.ndarray:
  """float32 array from an array or a .npy file (any name)."""
  if not isinstance(source, (str, os.PathLike)):
    return np.asarray(source, np.float32)
  path = os.fspath(source)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{what}: no file {path!r}; pass the .npy that prompt-tuning's "
        "scripts/extract_variable.py wrote for it.")
  array = npy.load(path, f"{what}: the file")
  # extract_variable --restore_dtype=bfloat16 saves bfloat16, which np.load
  # returns as raw 2-byte records.
  if array.dtype.kind == "V" and array.dtype.itemsize == 2:
    array = array.view(ml_dtypes.bfloat16)
  array = array.astype(np.float32)
  npy.check_finite(array, f"{what}: {path!r}",
                   "extract the variable again from a checkpoint whose loss "
                   "was finite")
  return array


def _numpy_checkpoint_file(directory: str, variable: str) -> Optional[str]:
  """Their Checkpointer's file for `variable` in a numpy_checkpoints/
  checkpoint_N dir ("encoder.prompt.prompt.shared_prompt", written through
  a file handle so without ".npy"), or None."""
  dotted = initializers.t5x_variable_name(variable).replace("/", ".")
  for name in (dotted, dotted + ".npy"):
    if os.path.isfile(os.path.join(directory, name)):
      return os.path.join(directory, name)
  return None


def read_parts(checkpoint: Optional[Source] = None, *,
               shared: Optional[Source] = None,
               tasks: Optional[Source] = None,
               shared_variable: str = SHARED_VARIABLE,
               tasks_variable: str = TASKS_VARIABLE
               ) -> tuple[np.ndarray, np.ndarray]:
  """(shared [P_s, H_s], flattened tasks [num_tasks, S]) as they saved them,
  from `checkpoint` (T5X or numpy_checkpoints dir) or `shared` + `tasks`."""
  if (checkpoint is None) == (shared is None and tasks is None):
    raise ValueError(
        "give either `checkpoint` (their T5X checkpoint or numpy_checkpoints/"
        "checkpoint_N dir) or both `shared` and `tasks` (.npy files or "
        "arrays), not both and not neither.")
  if checkpoint is None:
    if shared is None or tasks is None:
      raise ValueError(
          f"`{'tasks' if tasks is None else 'shared'}` is missing: a bank "
          "needs both their shared_prompt and task_prompts/embedding .npy.")
    return _load(shared, "shared"), _load(tasks, "tasks")
  path = os.fspath(checkpoint)
  if os.path.isdir(path):
    files = [_numpy_checkpoint_file(path, v)
             for v in (shared_variable, tasks_variable)]
    if all(files):
      return _load(files[0], "shared"), _load(files[1], "tasks")
  who = "prompt-tuning multitask bank"
  return (initializers.read_t5x_variable(path, shared_variable, who),
          initializers.read_t5x_variable(path, tasks_variable, who))


# ----------------------------------------------------------------------------
# Unflattening and joining.
# ----------------------------------------------------------------------------


def _task_part(mode: str, shared_shape: tuple[int, int],
               size: int) -> Optional[tuple[int, int]]:
  """The [rows, cols] one flattened task row of `size` holds in `mode`
  (for "project": the [H_t, H_s] kernel), or None if it cannot."""
  length, features = shared_shape
  if mode == "add":
    return (length, features) if size == length * features else None
  if mode == "concat_length":
    ok = size > 0 and size % features == 0
    return (size // features, features) if ok else None
  if mode == "concat_features":
    ok = size > 0 and size % length == 0
    return (length, size // length) if ok else None
  ok = size > 0 and size % (features + 1) == 0  # project: kernel, then bias
  return (size // (features + 1), features) if ok else None


_NEEDS = {
    "add": "[num_tasks, P_s * H_s] = [num_tasks, {p} * {h}]",
    "concat_length": "[num_tasks, P_t * H_s], a multiple of H_s = {h}",
    "concat_features": "[num_tasks, P_s * H_t], a multiple of P_s = {p}",
    "project": ("[num_tasks, H_t * H_s + H_t] (kernel then bias), a multiple "
                "of H_s + 1 = {h1}"),
}


def _checked(shared: np.ndarray, tasks: np.ndarray, mode: str
             ) -> tuple[int, int]:
  """The task part's [rows, cols] after shape checks; each bad shape is one
  error naming it and the fix."""
  if shared.ndim != 2:
    raise ValueError(
        f"the shared prompt has shape {shared.shape}; prompt-tuning saves it "
        f"as [P_s, H_s] ({SHARED_VARIABLE}); pass that variable.")
  if tasks.ndim != 2:
    raise ValueError(
        f"the task table has shape {tasks.shape}; prompt-tuning saves it "
        f"flattened as [num_tasks, S] ({TASKS_VARIABLE}); pass that variable "
        "(for a [num_tasks, P, H] table of whole prompts use "
        "MultiTaskPrompt(prompts=table) instead).")
  part = _task_part(mode, shared.shape, tasks.shape[1])
  if part is not None:
    return part
  fits = [m for m in MODES if _task_part(m, shared.shape, tasks.shape[1])]
  hint = (f"it fits mode {' or '.join(map(repr, fits))} ("
          f"{' / '.join(_CLASS_OF[m] for m in fits)}): pass the mode of the "
          "class their gin file binds" if fits else
          "no mode fits it: pass shared_prompt and task_prompts/embedding of "
          "the same checkpoint")
  need = _NEEDS[mode].format(p=shared.shape[0], h=shared.shape[1],
                             h1=shared.shape[1] + 1)
  raise ValueError(
      f"the task table {tasks.shape} does not fit mode={mode!r} "
      f"({_CLASS_OF[mode]}) with the shared prompt {shared.shape}: it needs "
      f"{need}; {hint}.")


def _join(shared: np.ndarray, tasks: np.ndarray, mode: str) -> np.ndarray:
  """[num_tasks, P, H]: row K is task K's prompt as their combine computes
  it (in float64, then float32)."""
  rows, cols = _checked(shared, tasks, mode)
  num_tasks = tasks.shape[0]
  shared, tasks = shared.astype(np.float64), tasks.astype(np.float64)
  if mode == "project":
    kernel = tasks[:, :rows * cols].reshape(num_tasks, rows, cols)
    bias = tasks[:, rows * cols:]  # [num_tasks, H_t]
    joined = np.einsum("ps,nts->npt", shared, kernel) + bias[:, None, :]
  else:
    part = tasks.reshape(num_tasks, rows, cols)
    if mode == "add":
      joined = shared[None] + part
    else:
      axis = 1 if mode == "concat_length" else 2
      repeated = np.broadcast_to(shared, (num_tasks,) + shared.shape)
      joined = np.concatenate([repeated, part], axis=axis)
  return joined.astype(np.float32)


@gin.configurable
def bank_from_prompt_tuning(checkpoint: Optional[Source] = None, *,
                            mode: str,
                            shared: Optional[Source] = None,
                            tasks: Optional[Source] = None,
                            shared_variable: str = SHARED_VARIABLE,
                            tasks_variable: str = TASKS_VARIABLE
                            ) -> np.ndarray:
  """float32 [num_tasks, P, H]: row K is the prompt their model gives an
  example led by <extra_id_K>; for MultiTaskPrompt(prompts=...).

  Args:
    checkpoint: their T5X checkpoint (checkpoint_N dir, its `checkpoint`
      file or the run dir) or numpy_checkpoints/checkpoint_N dir.
    mode: how their parts join: one of MODES or their class name.
    shared, tasks: instead of `checkpoint`, their shared_prompt [P_s, H_s]
      and task_prompts/embedding [num_tasks, S] as .npy paths or arrays.
    shared_variable, tasks_variable: the variables' paths, if their model
      put the prompt elsewhere.
  """
  parts = read_parts(checkpoint, shared=shared, tasks=tasks,
                     shared_variable=shared_variable,
                     tasks_variable=tasks_variable)
  return _join(*parts, canonical_mode(mode))


def method_kwargs(shared: np.ndarray, tasks: np.ndarray,
                  mode: str) -> dict[str, Any]:
  """MultiTaskPrompt arguments for trainable parameters of the same mode,
  initialized to their shared and (unflattened) task values."""
  mode = canonical_mode(mode)
  if mode == "project":
    raise ValueError(
        "mode='project' (ProjectMultiTaskPrompt) has no trainable "
        "counterpart here; serve its prompts as a bank "
        "(MultiTaskPrompt.from_prompt_tuning(..., frozen=True)).")
  rows, cols = _checked(shared, tasks, mode)
  kwargs: dict[str, Any] = dict(
      mode=mode, num_tasks=tasks.shape[0],
      shared_initializer=initializers.from_array(shared),
      task_initializer=initializers.from_array(
          tasks.reshape(tasks.shape[0], rows, cols)))
  if mode == "concat_length":
    kwargs.update(shared_length=shared.shape[0], task_length=rows)
  else:
    kwargs["length"] = shared.shape[0]
  if mode == "concat_features":
    kwargs["shared_features"] = shared.shape[1]
  return kwargs

"""The prompt bank: every served task's [P, H] soft prompt in one table.

`load_prompt_dir` reads a directory holding one trained prompt per task (the
task's name is the entry's name: the file stem of a `.npy`, else the
directory's name). Each entry may be:

  NAME.npy               the [P, H] prompt `pt.export_prompt(format="npy")`
                         writes (google-research/prompt-tuning's format);
  NAME/prompt.npy        an npy export directory (also a run's
                         `numpy_checkpoints/checkpoint_<step>`);
  NAME/adapter_config.json + adapter_model.safetensors
                         a PEFT PROMPT_TUNING adapter (`prompt_embeddings`);
  NAME/ = a MODEL_DIR    a prompt-tuning run written by `prompt_tuning.train`
                         (its newest step), or one of its checkpoint_<step>
                         dirs: the step's npy export
                         (`MODEL_DIR/numpy_checkpoints/checkpoint_<step>/
                         prompt.npy`), or the `prompt/prompt` parameter saved
                         in the Orbax checkpoint when that export is missing.

Only prompt-tuning prompts are served: a batch gathers one [P, H] prompt per
row from the bank, and prefix-tuning tables (per-layer keys and values) or
other methods' parameters cannot join such a batch, so they are refused at
load time with an error naming the entry. Every prompt of a bank has the same
[P, H] (one compiled program serves them all).

`PromptBank` is the table itself: [capacity, P, H] float32 with a task ->
row map. The engine passes `table` to its compiled programs as an input, so
adding, replacing or removing a task changes only data: nothing recompiles.
Changes build a new table (copy on write) under a lock, so a batch that took
a `snapshot()` keeps computing with the prompts it started with.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from typing import Any, Mapping, Optional, Union

import jax
import numpy as np

from prompt_tuning import run_checkpoints
from prompt_tuning.checkpoints import export
from prompt_tuning.checkpoints import npy
from prompt_tuning.checkpoints import orbax_params

PathLike = Union[str, os.PathLike]

# The one reason every refusal gives.
SERVES = ("a prompt bank serves prompt-tuning prompts ([P, H] soft prompts "
          "joined to the inputs); prefix-tuning tables and other methods' "
          "parameters cannot share a batch with soft prompts in this server, "
          "so serve them with their own method (pt.load_pretrained(..., "
          "method=...)) in a separate process")
PEFT_PROMPT_TUNING = "PROMPT_TUNING"
_PREFIX_FILE = re.compile(r"prefix_(%s)\.npy" % "|".join(export.PREFIX_KINDS))
_MODEL_INFO = "model_info.json"  # What the train binary writes in MODEL_DIR.
_RUN_PROMPT_PARAM = "prompt/prompt"


def _refuse(name: str, path: str, what: str) -> ValueError:
  return ValueError(f"task {name!r} ({path}) is {what}: {SERVES}.")


def _check_prompt(name: str, path: str, array: Any) -> np.ndarray:
  """float32 [P, H] with finite values, or a ValueError naming the task."""
  array = np.asarray(array)
  if array.ndim != 2:
    raise _refuse(name, path, f"not a [P, H] prompt (shape {array.shape})")
  if not np.issubdtype(array.dtype, np.floating):
    raise ValueError(f"task {name!r} ({path}): the prompt is {array.dtype}, "
                     "not floats; write the float32 [P, H] table "
                     "pt.export_prompt exports.")
  if 0 in array.shape:
    raise ValueError(f"task {name!r} ({path}): the prompt is empty (shape "
                     f"{array.shape}); a prompt has P >= 1 rows.")
  array = np.asarray(array, np.float32)
  npy.check_finite(array, f"task {name!r} ({path}): the prompt",
                   "export it again from a checkpoint whose loss was finite")
  return array


def _load_npy(name: str, path: str) -> np.ndarray:
  if _PREFIX_FILE.fullmatch(os.path.basename(path)):
    raise _refuse(name, path, "a prefix-tuning table")
  return _check_prompt(name, path, npy.load(path, f"task {name!r}: the file"))


def _load_peft(name: str, path: str) -> np.ndarray:
  """PEFT's PROMPT_TUNING adapter: the encoder's (or decoder-only model's)
  `num_virtual_tokens` rows of `prompt_embeddings`."""
  config_path = os.path.join(path, export.PEFT_CONFIG_FILE)
  with open(config_path, encoding="utf-8") as f:
    config = json.load(f)
  peft_type = config.get("peft_type")
  if peft_type != PEFT_PROMPT_TUNING:
    raise _refuse(name, path, f"a PEFT {peft_type} adapter")
  weights = os.path.join(path, export.PEFT_WEIGHTS_FILE)
  if not os.path.isfile(weights):
    raise ValueError(
        f"task {name!r} ({path}): the PEFT adapter has no "
        f"{export.PEFT_WEIGHTS_FILE} (holds {sorted(os.listdir(path))}); "
        "save it with safetensors (PEFT's default, save_pretrained("
        "safe_serialization=True)).")
  # pylint: disable-next=g-import-not-at-top
  from safetensors import numpy as safetensors_numpy
  tensors = safetensors_numpy.load_file(weights)
  if "prompt_embeddings" not in tensors:
    raise ValueError(f"task {name!r} ({weights}) has no 'prompt_embeddings' "
                     f"tensor (it holds {sorted(tensors)}); is it a PEFT "
                     "prompt-tuning adapter?")
  table = tensors["prompt_embeddings"]
  tokens = config.get("num_virtual_tokens")
  if tokens and np.ndim(table) == 2 and table.shape[0] > tokens:
    # PEFT keeps num_transformer_submodules tables (T5's default: 2), but a
    # seq2seq prompt-tuning model joins only the first one, to the encoder.
    table = table[:tokens]
  return _check_prompt(name, path, table)


def _run_method(run_dir: str) -> str:
  """The run's METHOD as model_info.json recorded it, for messages."""
  try:
    with open(os.path.join(run_dir, _MODEL_INFO), encoding="utf-8") as f:
      return str(json.load(f).get("method", "an unknown method"))
  except (OSError, ValueError):
    return "an unknown method"


def _load_run(name: str, path: str, checkpoint_dir: str) -> np.ndarray:
  """A run's prompt at `checkpoint_dir`'s step: its npy export, else the
  Orbax checkpoint's prompt/prompt."""
  run_dir = os.path.dirname(os.path.realpath(checkpoint_dir))
  step_name = os.path.basename(os.path.normpath(checkpoint_dir))
  numpy_dir = os.path.join(run_dir, run_checkpoints.NUMPY_DIR, step_name)
  if os.path.isdir(numpy_dir):
    found = _load_export_dir(name, numpy_dir)
    if found is not None:
      return found
  _, shapes = orbax_params.read_run_metadata(checkpoint_dir)
  if set(shapes) != {_RUN_PROMPT_PARAM}:
    raise _refuse(
        name, path, f"a run of {_run_method(run_dir)} (its {step_name} saved "
        f"{sorted(shapes)[:4]}, not one prompt/prompt)")
  shape, _ = shapes[_RUN_PROMPT_PARAM]
  abstract = {"prompt": {"prompt": jax.ShapeDtypeStruct(
      shape, np.float32,
      sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))}}
  restored = orbax_params.restore_run_params(checkpoint_dir, abstract)
  return _check_prompt(name, checkpoint_dir,
                       np.asarray(restored["prompt"]["prompt"]))


def _load_export_dir(name: str, path: str) -> Optional[np.ndarray]:
  """An npy export dir's prompt; refused for prefix tables; None when the
  dir holds neither."""
  prompt = os.path.join(path, export.PROMPT_FILE)
  if os.path.isfile(prompt):
    return _load_npy(name, prompt)
  prefixes = sorted(f for f in os.listdir(path) if _PREFIX_FILE.fullmatch(f))
  if prefixes:
    raise _refuse(name, path, f"a prefix-tuning export ({', '.join(prefixes)})")
  return None


def read_prompt(path: PathLike, name: Optional[str] = None) -> np.ndarray:
  """The float32 [P, H] prompt of one entry (see the module doc).

  Args:
    path: a .npy file, an npy export dir, a PEFT prompt-tuning adapter dir,
      a prompt-tuning run's MODEL_DIR or one of its checkpoint_<step> dirs.
    name: the task's name, for messages (default: the entry's name).
  """
  path = os.fspath(path)
  if name is None:
    base = os.path.basename(os.path.normpath(path))
    name = base[:-4] if base.endswith(".npy") else base
  if not os.path.exists(path):
    raise FileNotFoundError(f"task {name!r}: {path} does not exist.")
  if os.path.isfile(path):
    if path.endswith(".npy"):
      return _load_npy(name, path)
    raise ValueError(
        f"task {name!r}: {path} is not a prompt file; a bank entry is a "
        "[P, H] .npy, an npy export dir (prompt.npy), a PEFT prompt-tuning "
        "adapter dir or a prompt-tuning run's MODEL_DIR / checkpoint_<step>.")
  if os.path.isfile(os.path.join(path, export.PEFT_CONFIG_FILE)):
    return _load_peft(name, path)
  found = _load_export_dir(name, path)
  if found is not None:
    return found
  # A linked or renamed checkpoint_<step> is still a run's checkpoint.
  real = os.path.realpath(path)
  checkpoint_dir = (real if os.path.isdir(os.path.join(real, "params"))
                    else orbax_params.find_run_checkpoint(real))
  if checkpoint_dir is not None:
    return _load_run(name, path, checkpoint_dir)
  raise ValueError(
      f"task {name!r}: {path} holds no prompt (it holds "
      f"{sorted(os.listdir(path))[:10]}); a bank entry is a [P, H] .npy, an "
      "npy export dir (prompt.npy), a PEFT prompt-tuning adapter dir "
      "(adapter_config.json + adapter_model.safetensors) or a prompt-tuning "
      "run's MODEL_DIR / checkpoint_<step>.")


def load_prompt_dir(path: PathLike) -> dict[str, np.ndarray]:
  """{task name: float32 [P, H]} for every entry of `path` (module doc).

  Hidden entries (names starting with ".") are skipped. Every prompt must
  have the same [P, H]; errors name the entry.
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise NotADirectoryError(
        f"prompt directory {path!r} is not a directory; pass a directory "
        "holding one trained prompt per task.")
  prompts: dict[str, np.ndarray] = {}
  sources: dict[str, str] = {}
  for entry in sorted(os.listdir(path)):
    if entry.startswith("."):
      continue
    full = os.path.join(path, entry)
    name = entry[:-4] if os.path.isfile(full) and entry.endswith(".npy") \
        else entry
    if name in prompts:
      raise ValueError(
          f"task {name!r} is given twice in {path}: {sources[name]} and "
          f"{full}; keep one entry per task name.")
    array = read_prompt(full, name)
    if prompts:
      first = next(iter(prompts))
      if array.shape != prompts[first].shape:
        raise ValueError(
            f"task {name!r} ({full}) has a prompt of shape {array.shape}, "
            f"but the bank's prompts are {prompts[first].shape} (task "
            f"{first!r}); every prompt of a bank must have the same length "
            "and width: serve other shapes from another server.")
    prompts[name] = array
    sources[name] = full
  if not prompts:
    raise ValueError(f"prompt directory {path!r} holds no prompts; add one "
                     "entry per task (see prompt_tuning.serving.bank).")
  return prompts


@dataclasses.dataclass(frozen=True)
class Snapshot:
  """The bank at one moment: the table a batch computes with and the rows
  its task names pointed to then (a later add/remove changes neither)."""

  table: jax.Array  # float32 [capacity, P, H]
  slots: Mapping[str, int]


class PromptBank:
  """A fixed-capacity table [capacity, P, H] float32 of task prompts.

  Thread-safe: changes hold a lock and replace the table (copy on write), so
  `snapshot()` (or `table`) taken by an in-flight batch never changes under
  it. Removed rows are zeroed; free rows are reused lowest first.

  Args:
    capacity: rows of the table (the most tasks served at once). It is a
      shape of the compiled programs, so it is fixed for the bank's life.
    length, width: P and H of every prompt.
    prompts: {name: [P, H]} to add at once.
    capacity_setting: what a user sets to raise the capacity (named in the
      error of a full bank; the serve binary passes its flag).
    sharding: where the table lives (default: the default device); the
      engine passes the sharding of the model's prompt parameter.
  """

  def __init__(self, capacity: int, length: int, width: int, *,
               prompts: Optional[Mapping[str, Any]] = None,
               capacity_setting: str = "capacity",
               sharding: Optional[jax.sharding.Sharding] = None):
    for what, value in (("capacity", capacity), ("length", length),
                        ("width", width)):
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"PromptBank {what}={value!r} must be an int >= 1.")
    self.capacity, self.length, self.width = (int(capacity), int(length),
                                              int(width))
    self.capacity_setting = capacity_setting
    self._lock = threading.Lock()
    self._sharding = sharding
    self._host = np.zeros((self.capacity, self.length, self.width),
                          np.float32)
    self._slots: dict[str, int] = {}
    self._publish()
    for name, array in (prompts or {}).items():
      self.add(name, array)

  @classmethod
  def from_dir(cls, path: PathLike, capacity: Optional[int] = None,
               **kwargs) -> "PromptBank":
    """A bank of every prompt in `path` (`load_prompt_dir`); capacity
    defaults to their number."""
    prompts = load_prompt_dir(path)
    length, width = next(iter(prompts.values())).shape
    capacity = len(prompts) if capacity is None else capacity
    if len(prompts) > capacity:
      setting = kwargs.get("capacity_setting", "capacity")
      raise ValueError(
          f"{os.fspath(path)!r} holds {len(prompts)} prompts, more than the "
          f"bank's capacity={capacity}; raise {setting} to at least "
          f"{len(prompts)}.")
    return cls(capacity, length, width, prompts=prompts, **kwargs)

  @property
  def shape(self) -> tuple[int, int]:
    """[P, H] of every prompt."""
    return (self.length, self.width)

  def _publish(self) -> Snapshot:
    """Device copy of the host table + the slot map, as one snapshot."""
    table = (jax.device_put(self._host) if self._sharding is None
             else jax.device_put(self._host, self._sharding))
    self._snapshot = Snapshot(table, dict(self._slots))
    return self._snapshot

  def place(self, sharding: Optional[jax.sharding.Sharding]) -> None:
    """Moves the table to `sharding` (the engine: its prompt parameter's)."""
    with self._lock:
      self._sharding = sharding
      self._publish()

  def check(self, name: str, array: Any) -> np.ndarray:
    """The prompt as float32 [P, H] after checking name, shape and values;
    a ValueError naming the task otherwise."""
    if not isinstance(name, str) or not name or name != name.strip():
      raise ValueError(f"task name {name!r} must be a non-empty string "
                       "without surrounding spaces.")
    array = _check_prompt(name, "the given array", array)
    if array.shape != self.shape:
      raise ValueError(
          f"task {name!r} has a prompt of shape {array.shape}, but the "
          f"bank's prompts are {self.shape} (P x the model width); export "
          f"a prompt of length {self.length} trained on this base.")
    return array

  def add(self, name: str, array: Any) -> int:
    """Adds task `name` (or replaces its prompt in place); returns its row.

    A new name takes the lowest free row; a full bank raises a ValueError
    naming its capacity and the setting that raises it.
    """
    array = self.check(name, array)
    with self._lock:
      slot = self._slots.get(name)
      if slot is None:
        free = sorted(set(range(self.capacity)) - set(self._slots.values()))
        if not free:
          raise ValueError(
              f"cannot add task {name!r}: the prompt bank is full (capacity="
              f"{self.capacity} tasks: {', '.join(sorted(self._slots))}). "
              f"Remove a task first, or restart with a larger "
              f"{self.capacity_setting}.")
        slot = free[0]
      host = self._host.copy()
      host[slot] = array
      self._host = host
      self._slots[name] = slot
      self._publish()
      return slot

  def remove(self, name: str) -> None:
    """Removes task `name` (KeyError naming the known tasks if unknown)."""
    with self._lock:
      slot = self._slot(name, self._slots)
      host = self._host.copy()
      host[slot] = 0.0
      self._host = host
      del self._slots[name]
      self._publish()

  @staticmethod
  def _slot(name: str, slots: Mapping[str, int]) -> int:
    if name not in slots:
      known = ", ".join(repr(n) for n in sorted(slots)) or "none"
      raise KeyError(f"unknown task {name!r}; the bank serves: {known}.")
    return slots[name]

  def slot(self, name: str) -> int:
    """The table row of task `name`; KeyError naming the known tasks."""
    return self._slot(name, self._snapshot.slots)

  def names(self) -> list[str]:
    """The served tasks' names, sorted."""
    return sorted(self._snapshot.slots)

  def __contains__(self, name: object) -> bool:
    return name in self._snapshot.slots

  def __len__(self) -> int:
    return len(self._snapshot.slots)

  @property
  def table(self) -> jax.Array:
    """The current float32 [capacity, P, H] table (never changed in place)."""
    return self._snapshot.table

  def snapshot(self) -> Snapshot:
    """The current table and task rows, consistent with each other."""
    return self._snapshot

  def prompt(self, name: str) -> np.ndarray:
    """A copy of task `name`'s [P, H] prompt."""
    with self._lock:
      return np.array(self._host[self._slot(name, self._slots)])

"""Full-model parameters as Orbax checkpoints: ours, and a run's.

Our own tools write a whole model (a converted base) as an Orbax PyTree
checkpoint of `{"params": ...}` whose custom metadata holds the
`TransformerConfig`, so it loads with no other file. A model-tuning run
(pretraining included) writes `MODEL_DIR/checkpoint_<step>/params/`, the
whole model, with the architecture in `MODEL_DIR/model_info.json`; T5X
users start the next stage from such a checkpoint, so it loads as a base
too. Orbax restores straight into target shardings, so each process reads
only the shards its devices hold.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from prompt_tuning import console
from prompt_tuning.models.configs import TransformerConfig

_CONFIG_KEY = "prompt_tuning_model_config"
_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt")


def is_orbax_checkpoint(path: str) -> bool:
  return os.path.isdir(path) and any(
      os.path.exists(os.path.join(path, m)) for m in _MARKERS)


def save_params(path: str, params: Any, config: TransformerConfig) -> None:
  """Writes params + config; Orbax commits atomically (tmp dir, rename)."""
  path = os.path.abspath(path)
  if os.path.exists(path):
    raise FileExistsError(
        f"{path} already exists; choose a new directory (checkpoints are "
        "never overwritten).")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, {"params": params},
                    custom_metadata={_CONFIG_KEY: _config_to_json(config)})
  checkpointer.wait_until_finished()


def _corrupt(path: str, detail: str) -> ValueError:
  return ValueError(
      f"{path!r} is a truncated or corrupt Orbax checkpoint ({detail}); copy "
      "the whole checkpoint directory again from its source (or save it "
      "again).")


def _check_json_file(directory: str, name: str) -> None:
  """A JSON file Orbax writes (if present) must parse: Orbax itself logs a
  failed parse and carries on without what the file held."""
  path = os.path.join(directory, name)
  if not os.path.isfile(path):
    return
  try:
    with open(path, encoding="utf-8") as f:
      json.load(f)
  except (ValueError, OSError) as e:  # UnicodeDecodeError is a ValueError.
    raise _corrupt(path, f"{name} is not valid JSON: "
                   f"{console.first_line(e, max_chars=200)}") from e


def _item_metadata(path: str) -> Any:
  """Orbax's metadata of the checkpoint at `path` (the params' tree and the
  custom metadata), or a one-line error naming what cannot be read."""
  for name in ("_CHECKPOINT_METADATA", "_METADATA"):
    _check_json_file(path, name)
  try:
    metadata = ocp.StandardCheckpointer().metadata(path)
  except (ValueError, OSError, KeyError, TypeError) as e:
    detail = console.first_line(e, max_chars=200)
    raise _corrupt(path, f"its metadata cannot be read: {detail}") from e
  if getattr(metadata, "item_metadata", None) is None:
    raise _corrupt(path, "its _METADATA file (the tree of arrays) is missing "
                   "or cannot be read")
  return metadata


def _restore(path: str, abstract: Any) -> Any:
  try:
    return ocp.StandardCheckpointer().restore(path, abstract)
  except (ValueError, TypeError, FileNotFoundError):
    raise  # Orbax's own one-line errors: a shape or structure mismatch.
  except Exception as e:  # pylint: disable=broad-except
    # TensorStore's read errors (a truncated or garbled chunk) reach here as
    # a bare Exception whose message is a multi-line spec dump.
    if type(e) is not Exception and "TensorStore" not in str(e):  # pylint: disable=unidiomatic-typecheck
      raise
    detail = console.first_line(e, max_chars=200)
    raise _corrupt(path, f"reading its arrays failed: {detail}") from e


def read_metadata(path: str) -> tuple[Optional[TransformerConfig],
                                      dict[str, tuple[tuple[int, ...], Any]]]:
  """(config if stored, {"a/b/kernel": (shape, dtype)}) without reading data."""
  metadata = _item_metadata(os.path.abspath(path))
  tree = metadata.item_metadata.tree
  if "params" not in tree:
    raise ValueError(
        f"{path} is an Orbax checkpoint without a 'params' entry (it holds "
        f"{sorted(tree)}); load_pretrained reads full-model checkpoints "
        "written by prompt_tuning.checkpoints.orbax_params.save_params.")
  flat = _flat_shapes(tree["params"])
  stored = (metadata.custom_metadata or {}).get(_CONFIG_KEY)
  return (TransformerConfig(**_config_from_json(stored)) if stored else None,
          flat)


def _flat_shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
  flat = {}
  for keys, leaf in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape"))[0]:
    name = "/".join(str(getattr(k, "key", k)) for k in keys)
    flat[name] = (tuple(leaf.shape), np.dtype(leaf.dtype))
  return flat


_RUN_STEP = re.compile(r"checkpoint_(\d+)")
_RUN_INFO = "model_info.json"  # Written by the train binary.


def find_run_checkpoint(path: str) -> Optional[str]:
  """The `checkpoint_<step>` dir of a train run that `path` names (the dir
  itself, or the run dir: its newest), or None if `path` is not a run."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    return None
  if _RUN_STEP.fullmatch(os.path.basename(path)):
    return path if os.path.isdir(os.path.join(path, "params")) else None
  steps = [int(m.group(1)) for m in map(_RUN_STEP.fullmatch, os.listdir(path))
           if m and os.path.isdir(os.path.join(path, m.group(0), "params"))]
  return os.path.join(path, f"checkpoint_{max(steps)}") if steps else None


def read_run_metadata(checkpoint_dir: str
                      ) -> tuple[Optional[TransformerConfig],
                                 dict[str, tuple[tuple[int, ...], Any]]]:
  """(the run's architecture from its model_info.json if there, shapes of
  the saved params) for a run's `checkpoint_<step>` dir."""
  metadata = _item_metadata(os.path.join(checkpoint_dir, "params"))
  info_path = os.path.join(os.path.dirname(checkpoint_dir), _RUN_INFO)
  config = None
  if os.path.isfile(info_path):
    with open(info_path, encoding="utf-8") as f:
      stored = json.load(f).get("config")
    if stored:
      config = TransformerConfig(**_config_from_json(stored))
  return config, _flat_shapes(metadata.item_metadata.tree)


def restore_run_params(checkpoint_dir: str, abstract_params: Any) -> Any:
  """A run checkpoint's saved params, into `abstract_params`."""
  return _restore(os.path.join(checkpoint_dir, "params"), abstract_params)


def restore_params(path: str, abstract_params: Any) -> Any:
  """Restores into `abstract_params` (ShapeDtypeStructs with shardings)."""
  restored = _restore(os.path.abspath(path), {"params": abstract_params})
  return restored["params"]


def _config_to_json(config: TransformerConfig) -> dict[str, Any]:
  return {k: list(v) if isinstance(v, tuple) else v
          for k, v in dataclasses.asdict(config).items()}


def _config_from_json(values: dict[str, Any]) -> dict[str, Any]:
  return {k: tuple(v) if isinstance(v, list) else v
          for k, v in values.items()}

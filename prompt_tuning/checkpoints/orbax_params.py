"""Full-model parameters as an Orbax checkpoint, with the architecture inside.

This is the format our own tools write for a whole model (a converted base,
or the result of model tuning): an Orbax PyTree checkpoint of
`{"params": ...}` whose custom metadata holds the `TransformerConfig`, so it
loads with no other file. Orbax restores straight into target shardings, so
each process reads only the shards its devices hold.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

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


def read_metadata(path: str) -> tuple[Optional[TransformerConfig],
                                      dict[str, tuple[tuple[int, ...], Any]]]:
  """(config if stored, {"a/b/kernel": (shape, dtype)}) without reading data."""
  metadata = ocp.StandardCheckpointer().metadata(os.path.abspath(path))
  tree = metadata.item_metadata.tree
  if "params" not in tree:
    raise ValueError(
        f"{path} is an Orbax checkpoint without a 'params' entry (it holds "
        f"{sorted(tree)}); load_pretrained reads full-model checkpoints "
        "written by prompt_tuning.checkpoints.orbax_params.save_params.")
  flat = {}
  for keys, leaf in jax.tree_util.tree_flatten_with_path(
      tree["params"], is_leaf=lambda x: hasattr(x, "shape"))[0]:
    name = "/".join(str(getattr(k, "key", k)) for k in keys)
    flat[name] = (tuple(leaf.shape), np.dtype(leaf.dtype))
  stored = (metadata.custom_metadata or {}).get(_CONFIG_KEY)
  return (TransformerConfig(**_config_from_json(stored)) if stored else None,
          flat)


def restore_params(path: str, abstract_params: Any) -> Any:
  """Restores into `abstract_params` (ShapeDtypeStructs with shardings)."""
  restored = ocp.StandardCheckpointer().restore(
      os.path.abspath(path), {"params": abstract_params})
  return restored["params"]


def _config_to_json(config: TransformerConfig) -> dict[str, Any]:
  return {k: list(v) if isinstance(v, tuple) else v
          for k, v in dataclasses.asdict(config).items()}


def _config_from_json(values: dict[str, Any]) -> dict[str, Any]:
  return {k: tuple(v) if isinstance(v, list) else v
          for k, v in values.items()}

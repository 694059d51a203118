"""Meshes and logical-axis rules: the same code on 1 CPU, 8 devices or a pod.

Parameters and activations carry logical axis names; `LOGICAL_AXIS_RULES`
maps them onto a ('data', 'model') mesh. Prompt axes always replicate.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, Optional[str]]]

LOGICAL_AXIS_RULES: Rules = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("kv", None),
    ("embed", None),
    ("length", None),
    ("relpos_buckets", None),
    ("abspos_buckets", None),
    ("prompt", None),
    ("prompt_embed", None),
    ("prompt_mlp", None),
    ("prompt_heads", None),
    ("kv_pair", None),
    ("layers", None),
    ("stages", None),
)


@gin.configurable
def make_mesh(data: int = -1, model: int = 1,
              devices: Optional[Sequence[jax.Device]] = None,
              num_devices: Optional[int] = None) -> Mesh:
  """A ('data', 'model') mesh; data=-1 takes all devices left over.

  num_devices uses only the first N devices (e.g. 1 to compare a run with
  its single-device twin); None uses them all.
  """
  devices = list(jax.devices() if devices is None else devices)
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"make_mesh.num_devices={num_devices}; there are "
                       f"{len(devices)} devices.")
    devices = devices[:num_devices]
  if model <= 0 or len(devices) % model:
    raise ValueError(
        f"model={model} must divide the {len(devices)} available devices.")
  if data == -1:
    data = len(devices) // model
  if data * model != len(devices):
    raise ValueError(
        f"mesh data={data} x model={model} = {data * model} devices, but "
        f"{len(devices)} are available; set data=-1 to use them all.")
  return Mesh(np.asarray(devices).reshape(data, model), ("data", "model"))


def logical_to_sharding(names: Sequence[Optional[str]], mesh: Mesh,
                        rules: Rules = LOGICAL_AXIS_RULES,
                        shape: Optional[Sequence[int]] = None
                        ) -> NamedSharding:
  """Logical names of one array -> its NamedSharding on `mesh`.

  Given the array's shape, a dimension that the mapped mesh axes do not
  divide (e.g. 2 heads on a 4-way 'model' axis) is replicated instead, so a
  small model still runs on a large mesh.
  """
  spec = list(nn.logical_to_mesh_axes(tuple(names), rules))
  if shape is not None:
    for dim, axes in enumerate(spec):
      if axes is None:
        continue
      size = int(np.prod([mesh.shape[a] for a in
                          (axes if isinstance(axes, tuple) else (axes,))]))
      if shape[dim] % size:
        spec[dim] = None
  return NamedSharding(mesh, PartitionSpec(*spec))

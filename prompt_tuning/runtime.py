"""What the three binaries share: the model from gin, trained params, logs.

`load_model` is the gin-facing front of `pt.load_pretrained`: the frozen
base from INITIAL_CHECKPOINT_PATH (T5X, Orbax or Hugging Face; read as it
is, never rewritten), the method from METHOD, placed on the run's mesh.
`resolve_parts` gives a binary the model, params and mesh its Python caller
passed, or builds them from gin for the command line. `load_trained` then
swaps in what a run learned, from a run dir, one of its checkpoints, or a
prompt file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Optional

import gin
import jax
import numpy as np
from jax.sharding import Mesh

from prompt_tuning import data
from prompt_tuning import evaluation
from prompt_tuning import model_wrappers
from prompt_tuning import partitioning
from prompt_tuning import run_checkpoints
from prompt_tuning import param_split
from prompt_tuning import remote
from prompt_tuning.checkpoints import loader
from prompt_tuning.methods import soft_prompt as prompt_lib

Params = Any


@gin.configurable
def load_model(initial_checkpoint_path: Optional[str] = gin.REQUIRED,
               model_config: Any = None, method: Any = None,
               param_dtype: str = "float32", dropout_rate: float = 0.0,
               label_smoothing: float = 0.0, z_loss: float = 0.0,
               loss_normalizing_factor: Any = None,
               decoding_options: Optional[
                   model_wrappers.DecodingOptions] = None,
               random_seed: int = 0, mesh: Optional[Mesh] = None
               ) -> tuple[model_wrappers.BaseModel, Params]:
  """(model, params): the frozen base + the method's fresh parameters.

  Args:
    initial_checkpoint_path: the base (INITIAL_CHECKPOINT_PATH). None starts
      from random weights, for pretraining: only when every weight trains
      (model tuning), since a frozen random base has nothing to steer.
    model_config: the architecture (MODEL_CONFIG: a TransformerConfig from a
      models/*.gin file, a shipped model name, or None for checkpoints that
      store it).
    method: METHOD (None: the plain model, all weights train).
    param_dtype: dtype of the frozen weights ("bfloat16" halves their
      memory); the method's parameters are always float32.
    dropout_rate: DROPOUT_RATE; 0 turns dropout off in the frozen model.
    label_smoothing, z_loss, loss_normalizing_factor: loss options.
    decoding_options: how predictions decode (greedy by default).
    random_seed: RANDOM_SEED, seeds the method's initializers.
    mesh: where the params go (default: the first device).
  """
  kwargs = dict(label_smoothing=label_smoothing, z_loss=z_loss,
                loss_normalizing_factor=loss_normalizing_factor,
                method=method, mesh=mesh, rules=partitioning.LOGICAL_AXIS_RULES,
                param_dtype=param_dtype, seed=random_seed,
                config_overrides={"dropout_rate": dropout_rate})
  if decoding_options is not None:
    kwargs["decoding_options"] = decoding_options
  if initial_checkpoint_path is None:
    if method is None or method.trainable_patterns() != (".*",):
      raise ValueError(
          "INITIAL_CHECKPOINT_PATH is None, which starts from random weights;"
          " that only makes sense when every weight trains (pretraining with"
          " methods/model_tuning.gin). Point INITIAL_CHECKPOINT_PATH at the"
          " frozen base (a shipped base name, or a T5X, Orbax or Hugging Face"
          " checkpoint).")
    model, variables = loader.init_random(model_config, **kwargs)
  elif not initial_checkpoint_path:
    raise ValueError("INITIAL_CHECKPOINT_PATH is empty; point it at the "
                     "frozen base (a shipped base name, or a T5X, Orbax or "
                     "Hugging Face checkpoint).")
  else:
    model, variables = loader.load_pretrained(
        initial_checkpoint_path, config=model_config, **kwargs)
  return model, variables["params"]


def resolve_parts(model: Optional[model_wrappers.BaseModel],
                  params: Optional[Params], mesh: Optional[Mesh]
                  ) -> tuple[Mesh, model_wrappers.BaseModel, Params]:
  """(mesh, model, params) for a binary: its caller's, or gin's.

  A Python caller passes `model` and `params` together (e.g.
  `pt.load_pretrained`'s model and variables["params"]) and the `mesh` they
  are placed on; with `mesh` None, the mesh their arrays sit on is used.
  The command line passes neither: gin builds the mesh (`make_mesh()`,
  unless `mesh` is given) and loads the base and method onto it
  (`load_model`).

  Raises:
    ValueError: only one of `model` and `params` is given, or the params
      are placed on other devices than the mesh's.
  """
  if model is None and params is None:
    mesh = partitioning.make_mesh() if mesh is None else mesh
    model, params = load_model(mesh=mesh)
    return mesh, model, params
  if model is None or params is None:
    raise ValueError(
        "pass model and params together (e.g. the model and "
        "variables['params'] of pt.load_pretrained), or neither to load "
        "them from gin (INITIAL_CHECKPOINT_PATH, MODEL_CONFIG, METHOD).")
  arrays = [x for x in jax.tree.leaves(params) if isinstance(x, jax.Array)]
  if mesh is None:
    mesh = _mesh_of(arrays)
  devices = set(mesh.devices.flat)
  for x in arrays:
    if x.sharding.device_set != devices:
      raise ValueError(
          f"the params are placed on {len(x.sharding.device_set)} device(s)"
          f", not on the mesh's {len(devices)}; load them onto the mesh "
          "(pt.load_pretrained(..., mesh=mesh)).")
  return mesh, model, params


def _mesh_of(arrays: list[jax.Array]) -> Mesh:
  """The ('data', 'model') mesh `arrays` are placed on (a one-device mesh
  for arrays on one device)."""
  shardings = [x.sharding for x in arrays]
  named = [s.mesh for s in shardings
           if isinstance(s, jax.sharding.NamedSharding)
           and s.mesh.axis_names == ("data", "model")]
  if named:
    return named[0]
  devices = {d for s in shardings for d in s.device_set}
  if len(devices) == 1:
    return partitioning.make_mesh(devices=list(devices))
  raise ValueError("the params are not on a ('data', 'model') mesh; pass "
                   "mesh= (partitioning.make_mesh(...)).")


def is_prompt_file(path: str) -> bool:
  return os.path.isfile(path) and path.endswith(".npy")


def load_trained(model: model_wrappers.BaseModel, params: Params,
                 checkpoint_path: Optional[str]) -> tuple[Params, str]:
  """`params` with the trainable part replaced by a run's; (params, label).

  checkpoint_path: a run's MODEL_DIR (its newest checkpoint), one of its
  `checkpoint_<step>` dirs, a `numpy_checkpoints/checkpoint_<step>` dir, or
  a prompt `.npy` file (the [P, H] prompt of prompt tuning). None: nothing
  trained, the base as loaded (zero-shot, or prompt design: a hand-written
  prompt in the task's text); only for a method that adds no parameters,
  since a fresh prompt or prefix is noise. label names what was loaded,
  for logs and output file names.
  """
  if checkpoint_path is None:
    if model.method is not None and model.method.param_scope is not None:
      raise ValueError(
          f"CHECKPOINT_PATH=None evaluates the base as loaded, but METHOD "
          f"{type(model.method).__name__} adds untrained parameters "
          f"({model.method.param_scope}/...); use methods/model_tuning.gin "
          "for the base alone, or point CHECKPOINT_PATH at a trained run.")
    return params, "base"
  remote.check_reachable(checkpoint_path, "CHECKPOINT_PATH")
  if is_prompt_file(checkpoint_path):
    return _with_prompt_file(model, params, checkpoint_path), (
        os.path.splitext(os.path.basename(checkpoint_path))[0])
  if not os.path.exists(checkpoint_path):
    raise FileNotFoundError(
        f"CHECKPOINT_PATH {checkpoint_path!r} does not exist; set it to a "
        "training run's MODEL_DIR, one of its checkpoint_<step> dirs, or a "
        "prompt .npy file.")
  numpy_file = os.path.join(checkpoint_path, "prompt.npy")
  if os.path.isfile(numpy_file):
    return _with_prompt_file(model, params, numpy_file), (
        os.path.basename(os.path.normpath(checkpoint_path)))
  train, frozen = param_split.split(params, model.trainable_patterns)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      train)
  restored, step = run_checkpoints.restore_params(checkpoint_path, abstract)
  logging.info("Restored the trained params of step %d from %s", step,
               checkpoint_path)
  return param_split.merge(restored, frozen), f"checkpoint_{step}"


def _with_prompt_file(model: model_wrappers.BaseModel, params: Params,
                      path: str) -> Params:
  """params with prompt/prompt set from a [P, H] .npy file (shape checked)."""
  name = None if model.method is None else model.method.prompt_file_param
  if name is None:
    kind = type(model.method).__name__ if model.method else "no method"
    raise ValueError(
        f"{path}: a prompt file serves PromptTuning's [P, H] prompt, but the "
        f"run's METHOD is {kind}; point CHECKPOINT_PATH at the run's "
        "MODEL_DIR instead.")
  array = prompt_lib.load_prompt(path)
  scope, leaf = name.split("/")
  current = params[scope][leaf]
  if array.shape != current.shape:
    raise ValueError(
        f"the prompt in {path} has shape {tuple(array.shape)}, but the model "
        f"expects {tuple(current.shape)} (PROMPT_LENGTH x the model width); "
        "set PROMPT_LENGTH to the file's length and use the model it was "
        "trained with.")
  value = jax.device_put(np.asarray(array, current.dtype), current.sharding)
  return {**params, scope: {**params[scope], leaf: value}}


def check_output_dir(output_dir: str, macro: str) -> None:
  """Fails early when `output_dir` cannot be a directory we write into."""
  if not output_dir:
    raise ValueError(
        f"{macro} is not set; set --gin.{macro}=\"'/path/to/dir'\".")
  check_writable_dir(output_dir, macro)


def check_writable_dir(path: str, macro: str) -> None:
  """Fails unless `path` is (or can be created as) a directory we can write:
  a file in the way, a read-only or immutable folder, or a folder we lack
  permission for, found before any work is done. Remote paths (gs://...)
  are left to their file system."""
  if "://" in path:
    remote.check_reachable(path, macro)
    return
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(
        f"{macro} {path!r} is a file, not a directory; point it at a "
        "directory (it is created if missing).")
  probe_in = path
  while not os.path.exists(probe_in):
    parent = os.path.dirname(probe_in)
    if parent == probe_in:
      break
    probe_in = parent
  if not os.path.isdir(probe_in):
    raise ValueError(f"{macro} {path!r} cannot be created: {probe_in!r} is a "
                     "file; choose another directory.")
  try:  # os.access misses read-only mounts and immutable folders.
    fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=probe_in)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise ValueError(
        f"{macro} {path!r} is not writable ({probe_in!r}: "
        f"{e.strerror or e}); choose a directory you can write.") from e


def load_trained_model(dataset_cfg: data.DatasetConfig,
                       checkpoint_path: Optional[str],
                       model: Optional[model_wrappers.BaseModel] = None,
                       params: Optional[Params] = None,
                       mesh: Optional[Mesh] = None
                       ) -> tuple[Mesh, model_wrappers.BaseModel, Params, str]:
  """(mesh, model, trained params, label) for the eval and infer binaries.

  The task is looked up first, so a typo fails before the model loads. The
  mesh, frozen base and method are the caller's or gin's (`resolve_parts`),
  the trained part comes from CHECKPOINT_PATH (`label` names it:
  `checkpoint_<step>` or the prompt file's name).
  """
  data.get_task(dataset_cfg.mixture_or_task_name, dataset_cfg.module)
  mesh, model, params = resolve_parts(model, params, mesh)
  data.check_vocabularies(model, data.check_dataset(dataset_cfg, model))
  evaluation.check_batch_size(dataset_cfg.batch_size, mesh)
  params, label = load_trained(model, params, checkpoint_path)
  return mesh, model, params, label

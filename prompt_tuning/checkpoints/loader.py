"""`load_pretrained`: one entry point for T5X, Orbax and Hugging Face bases.

Every format becomes named arrays in our parameter layout; they are checked
against the network's expected names and shapes, then materialised straight
into their target shardings with `jax.make_array_from_callback`, so each
process reads only the slices its own devices hold.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any, Optional, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prompt_tuning import model_wrappers
from prompt_tuning import partitioning
from prompt_tuning import remote
from prompt_tuning.checkpoints import hf
from prompt_tuning.checkpoints import lazy
from prompt_tuning.checkpoints import orbax_params
from prompt_tuning.checkpoints import shipped
from prompt_tuning.checkpoints import t5x
from prompt_tuning.models import configs
from prompt_tuning.models.configs import TransformerConfig

ConfigLike = Union[None, TransformerConfig, str]


def detect_format(path: str) -> str:
  """'hf', 't5x', 'orbax' or 'run' (a train run's checkpoint of a whole
  model); a clear error for anything else."""
  if not path.startswith("gs://") and not os.path.exists(path):
    raise FileNotFoundError(
        f"checkpoint path {path!r} does not exist; pass a shipped base's name"
        f" ({', '.join(shipped.names()) or 'none installed'}), a Hugging Face"
        " model dir (config.json + weights), a T5X checkpoint dir"
        " (checkpoint_N) or an Orbax checkpoint dir.")
  if not path.startswith("gs://") and hf.is_hf_checkpoint(path):
    return "hf"
  if t5x.is_t5x_checkpoint(path):
    return "t5x"
  # A run's checkpoint_N also carries Orbax's markers: look for runs first.
  if not path.startswith("gs://") and orbax_params.find_run_checkpoint(path):
    return "run"
  if not path.startswith("gs://") and orbax_params.is_orbax_checkpoint(path):
    return "orbax"
  listing = (sorted(os.listdir(path))[:10]
             if os.path.isdir(path) else "a file")
  raise ValueError(
      f"unknown checkpoint format at {path!r} (holds {listing}); expected a "
      "Hugging Face dir (config.json + *.safetensors or pytorch_model.bin), a "
      "T5X dir (msgpack file 'checkpoint') or an Orbax checkpoint.")


def resolve_config(config: ConfigLike) -> Optional[TransformerConfig]:
  """A TransformerConfig, a shipped base's name, a shipped gin model name,
  or a .gin path."""
  if config is None or isinstance(config, TransformerConfig):
    return config
  base = shipped.find(config)
  if base is not None:
    return base.config
  if isinstance(config, str):
    return configs.from_gin(config)
  raise TypeError(f"config={config!r}; pass a TransformerConfig, a gin model "
                  "name such as 't5_1_1_base', or a path to a .gin file.")


def infer_t5x_config(shapes: dict[str, tuple[int, ...]]) -> TransformerConfig:
  """Reads the architecture off a T5X tree's names and shapes.

  Everything but relative_attention_max_distance (never stored) is in the
  shapes; T5's default 128 is assumed for it, with a warning.
  """
  decoder_only = not any(n.startswith("encoder/") for n in shapes)
  prefix = "decoder/" if decoder_only else ""
  vocab, emb = shapes[f"{prefix}token_embedder/embedding"]
  heads, buckets = shapes["decoder/relpos_bias/rel_embedding"]
  joined = shapes["decoder/layers_0/self_attention/query/kernel"][1]
  mlp_names = sorted(n.split("/")[-2] for n in shapes
                     if n.startswith("decoder/layers_0/mlp/wi"))
  mlp_dim = shapes[f"decoder/layers_0/mlp/{mlp_names[0]}/kernel"][1]
  count = lambda stack: len({m.group(1) for n in shapes for m in [
      re.match(rf"{stack}/layers_(\d+)/", n)] if m})
  activations = ("gelu", "linear") if mlp_names == ["wi_0", "wi_1"] else (
      ("relu",) if mlp_names == ["wi"] else None)
  if activations is None:
    raise ValueError(f"cannot tell the MLP activations from {mlp_names}; "
                     "pass config= (a gin model name or TransformerConfig).")
  logging.warning(
      "Inferred the architecture from T5X shapes; relative_attention_max_"
      "distance is not stored and is assumed to be 128. Pass config= to set "
      "it.")
  return TransformerConfig(
      architecture="decoder_only" if decoder_only else "encoder_decoder",
      vocab_size=vocab, emb_dim=emb, num_heads=heads,
      head_dim=joined // heads, mlp_dim=mlp_dim,
      num_encoder_layers=0 if decoder_only else count("encoder"),
      num_decoder_layers=count("decoder"), mlp_activations=activations,
      relative_attention_num_buckets=buckets,
      logits_via_embedding="decoder/logits_dense/kernel" not in shapes,
      prefix_lm=decoder_only)


def expected_params(model: model_wrappers.BaseModel) -> dict[str, Any]:
  """{name: boxed ShapeDtypeStruct with logical names} for a model."""
  return flax.traverse_util.flatten_dict(
      model.abstract_params(), sep="/",
      is_leaf=lambda _, x: isinstance(x, nn.LogicallyPartitioned))


def check_names_and_shapes(found: dict[str, tuple[int, ...]],
                           expected: dict[str, tuple[int, ...]],
                           source: str) -> None:
  """One error listing every missing, unexpected or mis-shaped parameter."""
  problems = []
  for name in sorted(set(expected) - set(found)):
    problems.append(f"missing {name} {expected[name]}")
  for name in sorted(set(found) - set(expected)):
    problems.append(f"unexpected {name} {found[name]}")
  for name in sorted(set(found) & set(expected)):
    if tuple(found[name]) != tuple(expected[name]):
      problems.append(f"{name}: checkpoint has shape {tuple(found[name])}, "
                      f"the model expects {tuple(expected[name])}")
  if problems:
    raise ValueError(
        f"{source} does not match the model architecture "
        f"({len(problems)} problems): " + "; ".join(problems[:20])
        + ("; ..." if len(problems) > 20 else "")
        + ". Pass the matching config= (gin model name or TransformerConfig).")


def _check_dtype(name: str, dtype: np.dtype) -> None:
  if not (np.issubdtype(dtype, np.floating) or dtype == jnp.bfloat16):
    raise TypeError(
        f"{name} is stored as {dtype}, not a float type; this is not a model "
        "weight we can load (re-export the checkpoint with float weights).")


def load_pretrained(path: str, *, config: ConfigLike = None,
                    method: Any = None, mesh: Optional[Mesh] = None,
                    rules: partitioning.Rules = partitioning.LOGICAL_AXIS_RULES,
                    param_dtype: str = "float32", seed: int = 0,
                    config_overrides: Optional[dict[str, Any]] = None,
                    **model_kwargs
                    ) -> tuple[model_wrappers.BaseModel, dict[str, Any]]:
  """Loads a frozen base: returns (T5X-interface model, {"params": ...}).

  Args:
    path: a shipped base's name (`pt.list_pretrained()`), a Hugging Face
      dir, a T5X checkpoint (or run) dir, an Orbax checkpoint written by
      `orbax_params.save_params`, or a model-tuning (pretraining) run's dir
      or `checkpoint_<step>`.
    config: the architecture, where the checkpoint does not say it all
      (T5X): a TransformerConfig, a shipped gin model name or a .gin path.
      Overrides what a Hugging Face config.json or Orbax metadata says.
    method: a parameter-efficient method to attach (pt.PromptTuning,
      pt.PrefixTuning, pt.MultiStagePrompting, pt.MultiTaskPrompt,
      pt.ModelTuning); None gives the plain frozen model. Its parameters are
      initialised after the base is loaded, so data-dependent initializers
      (sampled vocabulary, class labels) read the real embeddings.
    mesh, rules: place every parameter with the sharding its logical axes
      map to on `mesh` (default: the first device, unsharded).
    param_dtype: dtype the weights are held in ("float32" or "bfloat16").
    seed: seeds the method's parameter initializers.
    config_overrides: TransformerConfig fields to change after the
      architecture is resolved (e.g. {"dropout_rate": 0.1}); they must not
      change parameter shapes.
    model_kwargs: forwarded to the wrapper (eos_id, label_smoothing, ...).
  """
  remote.check_reachable(os.fspath(path), "checkpoint")
  base = shipped.find(path)
  if base is not None:
    path, config = base.checkpoint_path, config or base.config
  fmt = detect_format(path)
  config = resolve_config(config)
  arrays: dict[str, lazy.LazyArray] = {}
  if fmt == "hf":
    hf_config, arrays = hf.read_hf_checkpoint(path)
    config = config or hf_config
    found = {n: a.shape for n, a in arrays.items()}
  elif fmt == "t5x":
    arrays = t5x.read_t5x_checkpoint(path)
    found = {n: a.shape for n, a in arrays.items()}
    config = config or infer_t5x_config(found)
  else:
    if fmt == "run":
      path = orbax_params.find_run_checkpoint(path)
      stored_config, metadata = orbax_params.read_run_metadata(path)
    else:
      stored_config, metadata = orbax_params.read_metadata(path)
    config = config or stored_config
    if config is None:
      raise ValueError(f"{path} stores no model config; pass config=.")
    found = {n: shape for n, (shape, _) in metadata.items()}
    for name, (_, dtype) in metadata.items():
      _check_dtype(name, dtype)

  if config_overrides:
    config = dataclasses.replace(config, **config_overrides)
  model = model_wrappers.build_model(config, method=method, **model_kwargs)
  model.base_path = os.path.abspath(path)
  expected = expected_params(model_wrappers.build_model(config))
  if fmt == "run" and not set(found) & set(expected):
    raise ValueError(
        f"{path} is a train run that saved only its method's parameters "
        f"({sorted(found)[:3]}...), not a whole model; load its base "
        "(the run's INITIAL_CHECKPOINT_PATH) and pass the run as "
        "CHECKPOINT_PATH (eval/infer) instead.")
  check_names_and_shapes(found, {n: b.value.shape for n, b in
                                 expected.items()}, f"checkpoint {path!r}")
  dtype = jnp.dtype(param_dtype)
  shardings = _target_shardings(expected, mesh, rules)

  if fmt in ("orbax", "run"):
    abstract = flax.traverse_util.unflatten_dict({
        tuple(n.split("/")): jax.ShapeDtypeStruct(b.value.shape, dtype,
                                                  sharding=shardings[n])
        for n, b in expected.items()})
    params = (orbax_params.restore_params(path, abstract) if fmt == "orbax"
              else orbax_params.restore_run_params(path, abstract))
  else:
    flat = {}
    for name, array in arrays.items():
      _check_dtype(name, np.dtype(array.dtype))
      flat[tuple(name.split("/"))] = jax.make_array_from_callback(
          array.shape, shardings[name],
          lambda index, a=array: np.asarray(a.read(index), dtype=dtype))
    params = flax.traverse_util.unflatten_dict(flat)
  if method is not None:
    params = _add_method_params(model, params, seed, mesh, rules)
  return model, {"params": params}


# GPT-2's residual-branch output projections (attention out, MLP wo).
_RESIDUAL_OUTPUTS = re.compile(r"/(out|wo)/kernel$")


def random_params(config: TransformerConfig, seed: int = 0) -> Any:
  """Randomly initialised base params (numpy, unboxed): T5X's initializers,
  or GPT-2's where `config.init_std` is set."""
  model = model_wrappers.build_model(config)
  shapes = {k: (1, 8) for k in model.FEATURES if k.endswith("input_tokens")}
  variables = model.get_initial_variables(jax.random.PRNGKey(seed), shapes)
  params = jax.device_get(nn.meta.unbox(variables["params"]))
  if config.init_std is None:
    return params
  rng = np.random.default_rng(seed)
  residual_std = config.init_std / np.sqrt(2 * config.num_decoder_layers)
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  for name, value in sorted(flat.items()):
    if name.endswith(("/kernel", "/embedding")):
      std = (residual_std if _RESIDUAL_OUTPUTS.search(name)
             else config.init_std)
      flat[name] = (rng.standard_normal(value.shape) * std).astype(
          value.dtype)
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def init_random(config: ConfigLike, *, method: Any = None,
                mesh: Optional[Mesh] = None,
                rules: partitioning.Rules = partitioning.LOGICAL_AXIS_RULES,
                param_dtype: str = "float32", seed: int = 0,
                config_overrides: Optional[dict[str, Any]] = None,
                **model_kwargs
                ) -> tuple[model_wrappers.BaseModel, dict[str, Any]]:
  """A base with random weights, placed like `load_pretrained`'s: what
  pretraining from scratch starts from (T5X's train without an initial
  checkpoint). Arguments as `load_pretrained`; `config` is required.
  """
  config = resolve_config(config)
  if config is None:
    raise ValueError("a random init needs an architecture: include a "
                     "models/*.gin file (MODEL_CONFIG) or pass config=.")
  if config_overrides:
    config = dataclasses.replace(config, **config_overrides)
  model = model_wrappers.build_model(config, method=method, **model_kwargs)
  expected = expected_params(model_wrappers.build_model(config))
  shardings = _target_shardings(expected, mesh, rules)
  dtype = jnp.dtype(param_dtype)
  flat = flax.traverse_util.flatten_dict(random_params(config, seed),
                                         sep="/")
  params = flax.traverse_util.unflatten_dict(
      {n: jax.device_put(np.asarray(a, dtype), shardings[n])
       for n, a in flat.items()}, sep="/")
  if method is not None:
    params = _add_method_params(model, params, seed, mesh, rules)
  return model, {"params": params}


def _add_method_params(model: model_wrappers.BaseModel, params: Any,
                       seed: int, mesh: Optional[Mesh],
                       rules: partitioning.Rules) -> Any:
  """Creates the method's parameters next to the loaded (untouched) base.

  Flax creates exactly the parameters missing from `params` when the
  collection is mutable; the method's hook touches only its own modules.
  """
  _, state = model.module.apply(
      {"params": params}, method="init_method_params", mutable=["params"],
      rngs={"params": jax.random.PRNGKey(seed)})
  base_names = set(flax.traverse_util.flatten_dict(params, sep="/"))
  flat = flax.traverse_util.flatten_dict(
      state["params"], sep="/",
      is_leaf=lambda _, x: isinstance(x, nn.LogicallyPartitioned))
  new = {n: b for n, b in flat.items() if n not in base_names}
  shardings = _target_shardings(new, mesh, rules)
  merged = flax.traverse_util.flatten_dict(params, sep="/")
  for name, boxed in new.items():
    merged[name] = jax.device_put(boxed.value, shardings[name])
  return flax.traverse_util.unflatten_dict(merged, sep="/")


def _target_shardings(expected: dict[str, Any], mesh: Optional[Mesh],
                      rules: partitioning.Rules) -> dict[str, NamedSharding]:
  if mesh is None:
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1),
                ("data", "model"))
    return {n: NamedSharding(mesh, PartitionSpec()) for n in expected}
  return {n: partitioning.logical_to_sharding(b.names, mesh, rules,
                                             b.value.shape)
          for n, b in expected.items()}

"""`export_prompt`: a learned prompt or prefix in a format other tools read.

  "npy"   what google-research/prompt-tuning's `extract_variable` writes: a
          plain `np.save` of the float32 [P, H] prompt (`prompt.npy`), read
          back by `PromptTuning.from_file` / `initializers.from_npy`. Prefix
          tuning writes one [layers, 2, P, heads, head_dim] table per
          attention kind (`prefix_<kind>.npy`), folded first when the prefix
          is reparameterized.
  "peft"  a Hugging Face PEFT adapter (adapter_config.json +
          adapter_model.safetensors) for `peft.PeftModel.from_pretrained` on
          the matching transformers model: prompt tuning and multitask
          prompt tuning (MPT) on T5 (encoder prompt) and GPT-2, prefix
          tuning on GPT-2, and decoder self-attention prefixes on T5 where
          PEFT's layer mapping can express them. Anything PEFT would compute differently is refused
          with a ValueError rather than exported with a silent change.

All bytes are produced before the disk is touched, then staged in a
temporary directory beside `out_dir` and renamed into place: a failure while
converting or writing leaves an earlier export untouched. Neither torch nor
peft is imported.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Callable, Mapping, Optional, Union

import flax.linen as nn
import numpy as np

from prompt_tuning import files as files_lib
from prompt_tuning.models.configs import TransformerConfig

FORMATS = ("npy", "peft")
# Attention kinds a prefix table can serve (PrefixTuning.kinds).
PREFIX_KINDS = ("encoder_self", "decoder_self", "cross")
PROMPT_FILE = "prompt.npy"
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"


def prefix_file(kind: str) -> str:
  return f"prefix_{kind}.npy"


def export_prompt(
    variables_or_params: Mapping[str, Any], out_dir: Union[str, os.PathLike],
    *, format: str = "npy",  # pylint: disable=redefined-builtin
    model: Any = None, base_model_name_or_path: Optional[str] = None) -> str:
  """Writes the prompt / prefix tables of `variables_or_params` to `out_dir`.

  Args:
    variables_or_params: {"params": ...} as `pt.load_pretrained` returns, or
      the params tree itself.
    out_dir: directory to write; created if missing. Files of an earlier
      export there are replaced; other files are left alone.
    format: "npy" or "peft" (see the module doc).
    model: the wrapper the params belong to. "peft" needs it (method and
      architecture); "npy" needs it only to fold a reparameterized prefix or
      to export a prompt served as a constant (`PromptTuning(prompt=...)`).
    base_model_name_or_path: recorded in a PEFT adapter_config.json.

  Returns:
    `out_dir` as a string.
  """
  if format not in FORMATS:
    raise ValueError(f"format={format!r}; choose one of {FORMATS}.")
  params = nn.meta.unbox(
      variables_or_params.get("params", variables_or_params)
      if isinstance(variables_or_params, Mapping) else variables_or_params)
  if format == "npy":
    files = _npy_files(params, model)
    owned = [PROMPT_FILE] + [prefix_file(k) for k in PREFIX_KINDS]
  else:
    files = _peft_files(params, model, base_model_name_or_path)
    owned = [PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE]
  _commit(os.fspath(out_dir), files, owned)
  return os.fspath(out_dir)


# ----------------------------------------------------------------------------
# Reading the arrays.


def prompt_param(params: Mapping[str, Any]) -> Optional[np.ndarray]:
  """The [P, H] soft prompt `prompt/prompt` of `params`, or None."""
  if "prompt" not in params:
    return None
  value = params["prompt"]
  if not isinstance(value, Mapping) or set(value) != {"prompt"}:
    names = sorted(value) if isinstance(value, Mapping) else type(value)
    raise ValueError(
        f"params['prompt'] holds {names}, not a single [P, H] prompt; "
        "only PromptTuning's prompt/prompt can be exported.")
  array = np.asarray(value["prompt"], np.float32)
  if array.ndim != 2:
    raise ValueError(f"prompt/prompt has shape {array.shape}; expected "
                     "[P, H].")
  return array


def prefix_params(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """{kind: [layers, 2, P, heads, head_dim]} of unreparameterized prefix
  tables `prefix/<kind>/kv` ({} when there is no prefix)."""
  prefix = params.get("prefix", {})
  if any(set(tree) != {"kv"} for tree in prefix.values()):
    raise ValueError(
        "the prefix is reparameterized (it holds "
        f"{ {k: sorted(v) for k, v in prefix.items()} }), so its tables "
        "must be computed first: pass model= (the PrefixTuning model these "
        "params belong to), or export the result of "
        "prefix_tuning.fold(model, variables).")
  return {kind: np.asarray(tree["kv"], np.float32)
          for kind, tree in prefix.items()}


def _npy_files(params: Mapping[str, Any], model: Any) -> dict[str, bytes]:
  """The method's own arrays; without a model, what the names show."""
  method = None if model is None else model.method
  if method is not None:
    arrays = method.export_arrays(params, model)
  else:
    arrays = {prefix_file(kind): table
              for kind, table in prefix_params(params).items()}
    prompt = prompt_param(params)
    if prompt is not None:
      arrays[PROMPT_FILE] = prompt
  if not arrays:
    raise ValueError(
        "nothing to export: the params hold neither PromptTuning's "
        "prompt/prompt nor PrefixTuning's prefix/<kind>/... (top-level "
        f"names: {sorted(params)}).")
  return {name: _npy_bytes(array) for name, array in arrays.items()}


def _npy_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, np.ascontiguousarray(array, np.float32))
  return buffer.getvalue()


# ----------------------------------------------------------------------------
# PEFT adapters.


def _peft_task_type(config: TransformerConfig) -> str:
  """PEFT's task type, after checking a transformers counterpart exists."""
  if config.architecture == "encoder_decoder":
    return "SEQ_2_SEQ_LM"  # T5
  if config.position_embedding != "absolute" or config.prefix_lm:
    raise ValueError(
        "format='peft' targets transformers models: T5 (encoder-decoder) or "
        "the GPT-2 family (decoder-only, absolute positions, causal). This "
        "decoder-only model has "
        f"position_embedding={config.position_embedding!r}, "
        f"prefix_lm={config.prefix_lm}; use format='npy'.")
  return "CAUSAL_LM"


def _peft_files(params: Mapping[str, Any], model: Any,
                base_model_name_or_path: Optional[str]) -> dict[str, bytes]:
  if model is None or model.method is None:
    raise ValueError(
        "format='peft' needs model= (the model from pt.load_pretrained(..., "
        "method=...)) to know the method and architecture.")
  method, config = model.method, model.config
  task_type = _peft_task_type(config)
  adapter, tensors = method.peft_adapter(params, model)
  adapter.update(task_type=task_type,
                 num_virtual_tokens=int(tensors["prompt_embeddings"].shape[0]),
                 num_attention_heads=config.num_heads,
                 base_model_name_or_path=base_model_name_or_path,
                 revision=None, inference_mode=True)
  # Imported here: only PEFT export needs safetensors.
  # pylint: disable-next=g-import-not-at-top
  from safetensors import numpy as safetensors_numpy
  weights = safetensors_numpy.save(
      {name: np.ascontiguousarray(array, np.float32)
       for name, array in tensors.items()}, metadata={"format": "pt"})
  config_json = json.dumps(adapter, indent=2, sort_keys=True) + "\n"
  return {PEFT_WEIGHTS_FILE: weights, PEFT_CONFIG_FILE: config_json.encode()}


# ----------------------------------------------------------------------------
# Writing.


def _commit(out_dir: str,
            files: Mapping[str, Union[bytes, Callable[[str], None]]],
            owned: list[str]) -> None:
  """Stages `files` beside `out_dir`, then renames them into it.

  A value is a file's bytes, or a function that writes (and syncs) the file
  at the path it is given, for files too large to hold twice in memory.
  A new `out_dir` appears whole (one directory rename). Into an existing
  one each file is renamed over its old version, and files an earlier
  export of this format wrote but this one does not (`owned`) are removed,
  so no stale table is left next to the new ones.
  """
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise NotADirectoryError(f"out_dir {out_dir!r} exists and is not a "
                             "directory.")
  with files_lib.staging_dir(out_dir) as staging:
    for name, data in files.items():
      if callable(data):
        data(os.path.join(staging, name))
      else:
        files_lib.write_synced(os.path.join(staging, name), data)
    if not os.path.exists(out_dir):
      os.rename(staging, out_dir)
      return
    for name in files:
      os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    for name in set(owned) - set(files):
      path = os.path.join(out_dir, name)
      if os.path.isfile(path):
        os.remove(path)



"""`export_prompt`: a learned prompt or prefix in a format other tools read.

  "npy"   what google-research/prompt-tuning's `extract_variable` writes: a
          plain `np.save` of the float32 [P, H] prompt (`prompt.npy`), read
          back by `PromptTuning.from_file` / `initializers.from_npy`. Prefix
          tuning writes one [layers, 2, P, heads, head_dim] table per
          attention kind (`prefix_<kind>.npy`), folded first when the prefix
          is reparameterized.
  "peft"  a Hugging Face PEFT adapter (adapter_config.json +
          adapter_model.safetensors) for `peft.PeftModel.from_pretrained` on
          the matching transformers model: prompt tuning on T5 (encoder
          prompt) and GPT-2, prefix tuning on GPT-2, and decoder
          self-attention prefixes on T5 where PEFT's layer mapping can
          express them. Anything PEFT would compute differently is refused
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
from typing import Any, Mapping, Optional, Union

import flax.linen as nn
import numpy as np

from prompt_tuning import files as files_lib
from prompt_tuning.methods import prefix_tuning
from prompt_tuning.methods import prompt_tuning
from prompt_tuning.models.configs import TransformerConfig

FORMATS = ("npy", "peft")
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
    owned = [PROMPT_FILE] + [prefix_file(k) for k in prefix_tuning.KINDS]
  else:
    files = _peft_files(params, model, base_model_name_or_path)
    owned = [PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE]
  _commit(os.fspath(out_dir), files, owned)
  return os.fspath(out_dir)


# ----------------------------------------------------------------------------
# Reading the arrays.


def _prompt(params: Mapping[str, Any], model: Any) -> Optional[np.ndarray]:
  """The [P, H] soft prompt (a parameter or a served constant), or None."""
  if "prompt" in params:
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
  method = getattr(model, "method", None)
  if (isinstance(method, prompt_tuning.PromptTuning)
      and method.prompt is not None):
    return np.asarray(method.prompt, np.float32)
  return None


def _prefix_tables(params: Mapping[str, Any],
                   model: Any) -> dict[str, np.ndarray]:
  """{kind: [layers, 2, P, heads, head_dim]}, folded if reparameterized."""
  if "prefix" not in params:
    return {}
  prefix = params["prefix"]
  if any(set(tree) != {"kv"} for tree in prefix.values()):
    method = getattr(model, "method", None)
    if not isinstance(method, prefix_tuning.PrefixTuning):
      raise ValueError(
          "the prefix is reparameterized (it holds "
          f"{ {k: sorted(v) for k, v in prefix.items()} }), so its tables "
          "must be computed first: pass model= (the PrefixTuning model these "
          "params belong to), or export the result of "
          "prefix_tuning.fold(model, variables).")
    _, folded = prefix_tuning.fold(model, {"params": params})
    prefix = folded["params"]["prefix"]
  return {kind: np.asarray(tree["kv"], np.float32)
          for kind, tree in prefix.items()}


def _npy_files(params: Mapping[str, Any], model: Any) -> dict[str, bytes]:
  method = getattr(model, "method", None)
  if method is not None and not isinstance(
      method, (prompt_tuning.PromptTuning, prefix_tuning.PrefixTuning)):
    raise ValueError(
        f"{type(method).__name__}: format='npy' writes PromptTuning's [P, H] "
        "prompt and PrefixTuning's tables; save other methods' parameters "
        "with their checkpoints.")
  files = {}
  prompt = _prompt(params, model)
  if prompt is not None:
    files[PROMPT_FILE] = _npy_bytes(prompt)
  for kind, table in _prefix_tables(params, model).items():
    files[prefix_file(kind)] = _npy_bytes(table)
  if not files:
    raise ValueError(
        "nothing to export: the params hold neither PromptTuning's "
        "prompt/prompt nor PrefixTuning's prefix/<kind>/... (top-level "
        f"names: {sorted(params)}).")
  return files


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
  if model is None or getattr(model, "method", None) is None:
    raise ValueError(
        "format='peft' needs model= (the model from pt.load_pretrained(..., "
        "method=...)) to know the method and architecture.")
  method, config = model.method, model.config
  task_type = _peft_task_type(config)
  # Exact types: a subclass may compute something PEFT's PROMPT_TUNING /
  # PREFIX_TUNING do not.
  method_type = type(method)
  if method_type is prompt_tuning.PromptTuning:
    adapter, table = _peft_prompt(params, model, method, config)
  elif method_type is prefix_tuning.PrefixTuning:
    adapter, table = _peft_prefix(params, model, method, config)
  else:
    raise ValueError(
        f"{type(method).__name__} has no PEFT counterpart; format='peft' "
        "exports PromptTuning and PrefixTuning. Use format='npy'.")
  adapter.update(task_type=task_type,
                 num_virtual_tokens=int(table.shape[0]),
                 num_attention_heads=config.num_heads,
                 base_model_name_or_path=base_model_name_or_path,
                 revision=None, inference_mode=True)
  # Imported here: only PEFT export needs safetensors.
  # pylint: disable-next=g-import-not-at-top
  from safetensors import numpy as safetensors_numpy
  weights = safetensors_numpy.save(
      {"prompt_embeddings": np.ascontiguousarray(table, np.float32)},
      metadata={"format": "pt"})
  config_json = json.dumps(adapter, indent=2, sort_keys=True) + "\n"
  return {PEFT_WEIGHTS_FILE: weights, PEFT_CONFIG_FILE: config_json.encode()}


def _peft_prompt(params, model, method, config):
  if method.combine != "prefix":
    raise ValueError(
        f"combine={method.combine!r}: PEFT places the prompt before the "
        "inputs only; export a combine='prefix' prompt, or use format='npy'.")
  prompt = _prompt(params, model)
  if prompt is None:
    raise ValueError("the params hold no prompt/prompt to export.")
  if prompt.shape[1] != config.emb_dim:
    raise ValueError(f"the prompt is {prompt.shape}, but the model's "
                     f"embeddings are {config.emb_dim} wide.")
  is_t5 = config.architecture == "encoder_decoder"
  adapter = {
      "peft_type": "PROMPT_TUNING",
      "token_dim": config.emb_dim,
      # What PEFT fills in from the transformers config (T5: encoder depth).
      "num_layers": (config.num_encoder_layers if is_t5
                     else config.num_decoder_layers),
      # One [P, H] table for the encoder input; PEFT's T5 default of 2 would
      # expect [2P, H] and never read the second half.
      "num_transformer_submodules": 1,
      "prompt_tuning_init": "RANDOM",
  }
  return adapter, prompt


def _peft_prefix(params, model, method, config):
  kinds = method.kinds_for(config)
  if kinds != ("decoder_self",):
    raise ValueError(
        f"prefix kinds {kinds}: PEFT's prefix tuning reaches decoder "
        "self-attention only (T5's encoder and cross-attention get no "
        "prefix), so only PrefixTuning(kinds=('decoder_self',)) can be "
        "exported to PEFT; use format='npy'.")
  if method.positions != "shift":
    raise ValueError(
        f"positions={method.positions!r}: PEFT always counts the prefix as "
        "the first P positions (positions='shift'); use format='npy'.")
  table = _prefix_tables(params, model)["decoder_self"]
  layers_, _, length, heads, head_dim = table.shape
  if config.architecture == "encoder_decoder":
    table = _t5_peft_layer_order(table)
  # Row p = [layer 0 key | layer 0 value | layer 1 key | ...], each chunk
  # split head-major: PEFT views it as [P, 2 * layers, heads, head_dim].
  flat = table.transpose(2, 0, 1, 3, 4).reshape(length, -1)
  adapter = {
      "peft_type": "PREFIX_TUNING",
      # PEFT sizes and splits the table by token_dim; heads * head_dim is
      # what the attention needs (d_model, except in T5-11B).
      "token_dim": heads * head_dim,
      # Explicit, so a T5 whose decoder depth differs from its encoder's
      # (PEFT's default reads num_layers, the encoder's) still lines up.
      "num_layers": layers_,
      # T5 needs 2: PEFT then builds the encoder-decoder cache (1 crashes).
      "num_transformer_submodules": (
          2 if config.architecture == "encoder_decoder" else 1),
      "prefix_projection": False,
      "encoder_hidden_size": heads * head_dim,
  }
  return adapter, flat


def _t5_peft_layer_order(table: np.ndarray) -> np.ndarray:
  """Our per-layer [layers, 2, P, h, d] table in PEFT's T5 slot order.

  PEFT (checked on 0.21) duplicates the table for the cross-attention half
  it later discards and splits it in fours, so T5 decoder layer i reads
  key/value slot 2i mod layers, not i. With an odd depth that is a
  permutation; with an even one layers i and i + layers/2 share a slot (and
  half the slots are never read), so only tables tied that way export.
  """
  layers_ = table.shape[0]
  slots = np.zeros_like(table)
  owner: dict[int, int] = {}
  for i in range(layers_):
    slot = (2 * i) % layers_
    if slot in owner:
      j = owner[slot]
      if not np.array_equal(table[i], table[j]):
        raise ValueError(
            f"decoder layers {j} and {i} have different prefixes, but PEFT's "
            f"T5 prefix tuning gives both the same slot ({slot}) of its "
            f"table: with an even number of decoder layers ({layers_}), "
            f"layer i always shares layer i + {layers_ // 2}'s prefix there. "
            "This prefix cannot be expressed as a PEFT adapter; use "
            "format='npy' (or a model with an odd number of decoder layers).")
    else:
      owner[slot] = i
      slots[slot] = table[i]
  return slots


# ----------------------------------------------------------------------------
# Writing.


def _commit(out_dir: str, files: Mapping[str, bytes],
            owned: list[str]) -> None:
  """Stages `files` beside `out_dir`, then renames them into it.

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



"""Hugging Face checkpoint dirs (T5, mT5, GPT-2, mGPT) read into our names.

A Hugging Face model dir is `config.json` plus weights in one of four layouts:
`model.safetensors`, sharded `model.safetensors.index.json`,
`pytorch_model.bin` or sharded `pytorch_model.bin.index.json`.
`read_hf_checkpoint` returns our `TransformerConfig` and a flat
`{"encoder/layers_0/attention/query/kernel": LazyArray}` dict; layouts differ
from ours only by views (a torch Linear's [out, in] weight is `Transposed`,
GPT-2's fused qkv is `Sliced`), so nothing is read until `read(index)`.

Only torch is optional: `.bin` files need it, safetensors files do not.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

from prompt_tuning.checkpoints.lazy import FromCallable, Index, LazyArray
from prompt_tuning.checkpoints.lazy import Sliced, Transposed
from prompt_tuning.models.configs import TransformerConfig

# In order of preference when a dir holds more than one.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
SUPPORTED_MODEL_TYPES = ("t5", "mt5", "gpt2")


def is_hf_checkpoint(path: str | os.PathLike) -> bool:
  """True if `path` is a dir with `config.json` and a weights file."""
  path = os.fspath(path)
  return (os.path.isfile(os.path.join(path, "config.json")) and
          any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES))


# ----------------------------------------------------------------------------
# config.json -> TransformerConfig


# HF activation names -> ours. HF's T5 "gated-gelu" means gelu_new (the tanh
# approximation), which is jax.nn.gelu's default and T5X's "gelu"; so the T5
# family keeps T5X's name and GPT-2 keeps HF's. HF's plain "gelu" is the
# exact erf form: our "gelu_exact".
_T5_ACTIVATIONS = {"relu": "relu", "gelu": "gelu_exact", "gelu_new": "gelu",
                   "silu": "silu", "swish": "silu"}
_GPT2_ACTIVATIONS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new",
                     "gelu": "gelu_exact", "relu": "relu", "silu": "silu",
                     "swish": "silu"}


def config_from_hf(config_json: Mapping[str, Any],
                   weight_names: Iterable[str] | None = None
                   ) -> TransformerConfig:
  """Our config for a HF `config.json` dict (model_type t5, mt5 or gpt2).

  Args:
    config_json: the parsed `config.json`.
    weight_names: the checkpoint's tensor names, when known. They settle
      whether a T5 LM head is tied (see `_t5_config`); without them the
      convention of released checkpoints is assumed.

  Dropout is left at 0: it is a training choice (gin `DROPOUT_RATE`), not part
  of the pretrained weights.
  """
  model_type = config_json.get("model_type")
  if model_type in ("t5", "mt5"):
    return _t5_config(config_json, weight_names)
  if model_type == "gpt2":
    return _gpt2_config(config_json)
  if model_type == "umt5":
    raise NotImplementedError(
        "model_type 'umt5' is not supported: umT5 has a relative attention "
        "bias in every layer, our T5 shares one per stack. Supported model "
        f"types: {', '.join(SUPPORTED_MODEL_TYPES)}.")
  raise ValueError(
      f"config.json has model_type={model_type!r}; supported model types are "
      f"{', '.join(SUPPORTED_MODEL_TYPES)} (mGPT is a gpt2 model).")


def _t5_config(c: Mapping[str, Any],
               weight_names: Iterable[str] | None) -> TransformerConfig:
  """T5 / T5.1.1 / mT5.

  Two config eras say "T5 1.0 style logits" differently: transformers 4 writes
  `tie_word_embeddings` (default True; T5.1.1 and mT5 set False), transformers
  5 always writes `tie_word_embeddings: true` and puts the old meaning into
  `scale_decoder_outputs` (multiply decoder outputs by d_model**-0.5). In both,
  the LM head is `lm_head.weight` when the checkpoint has one and scaling is
  off; otherwise it is `shared.weight` (transformers 5 ties a missing head).
  A stored `lm_head.weight` with scaling on is T5 1.0's duplicate of `shared`
  (`.bin` files store tied tensors twice) and is ignored.
  """
  proj = c.get("feed_forward_proj", "relu")
  gated = proj.startswith("gated-")
  act = proj[len("gated-"):] if gated else proj
  if proj == "gated-gelu":
    act = "gelu_new"  # HF's historical special case: tanh, not exact, GELU
  if act not in _T5_ACTIVATIONS:
    raise ValueError(
        f"config.json has feed_forward_proj={proj!r}; supported are "
        f"{sorted(_T5_ACTIVATIONS)}, optionally prefixed with 'gated-'.")
  activations = ((_T5_ACTIVATIONS[act], "linear") if gated
                 else (_T5_ACTIVATIONS[act],))

  scale = bool(c.get("scale_decoder_outputs", c.get("tie_word_embeddings",
                                                    True)))
  if weight_names is None:
    has_head = not scale  # released T5.1.1 / mT5 checkpoints store a head
  else:
    has_head = "lm_head.weight" in set(weight_names)
  tied = scale or not has_head
  num_layers = c.get("num_layers", 6)
  return TransformerConfig(
      architecture="encoder_decoder",
      vocab_size=c.get("vocab_size", 32128),
      emb_dim=c.get("d_model", 512),
      num_heads=c.get("num_heads", 8),
      head_dim=c.get("d_kv", 64),
      mlp_dim=c.get("d_ff", 2048),
      num_encoder_layers=num_layers,
      num_decoder_layers=c.get("num_decoder_layers") or num_layers,
      mlp_activations=activations,
      norm="rms",
      norm_epsilon=c.get("layer_norm_epsilon", 1e-6),
      use_bias=False,
      position_embedding="relative",
      relative_attention_num_buckets=c.get("relative_attention_num_buckets",
                                           32),
      relative_attention_max_distance=c.get("relative_attention_max_distance",
                                            128),
      logits_via_embedding=tied,
      # Meaningless when untied; keep the dataclass default so T5.1.1 configs
      # compare equal to `configs.t5_1_1(...)`.
      scale_tied_logits=scale if tied else True,
      scale_attention_logits=False)


def _gpt2_config(c: Mapping[str, Any]) -> TransformerConfig:
  """GPT-2 and mGPT (a GPT-2 over the mT5 vocabulary)."""
  for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
    if c.get(flag, False):
      raise NotImplementedError(
          f"config.json sets {flag}=true, which our GPT-2 does not implement; "
          "only checkpoints with it false (GPT-2, mGPT) are supported.")
  act = c.get("activation_function", "gelu_new")
  if act not in _GPT2_ACTIVATIONS:
    raise ValueError(
        f"config.json has activation_function={act!r}; supported are "
        f"{sorted(_GPT2_ACTIVATIONS)}.")
  emb, heads = c.get("n_embd", 768), c.get("n_head", 12)
  if emb % heads:
    raise ValueError(f"n_embd={emb} is not divisible by n_head={heads}.")
  tied = bool(c.get("tie_word_embeddings", True))
  return TransformerConfig(
      architecture="decoder_only",
      vocab_size=c.get("vocab_size", 50257),
      emb_dim=emb,
      num_heads=heads,
      head_dim=emb // heads,
      mlp_dim=c.get("n_inner") or 4 * emb,
      num_encoder_layers=0,
      num_decoder_layers=c.get("n_layer", 12),
      mlp_activations=(_GPT2_ACTIVATIONS[act],),
      norm="layer",
      norm_epsilon=c.get("layer_norm_epsilon", 1e-5),
      use_bias=True,
      position_embedding="absolute",
      max_position_embeddings=c.get("n_positions", 1024),
      logits_via_embedding=tied,
      scale_tied_logits=False,
      scale_attention_logits=bool(c.get("scale_attn_weights", True)))


# ----------------------------------------------------------------------------
# Checkpoint -> our names


def read_hf_checkpoint(
    path: str | os.PathLike) -> tuple[TransformerConfig, dict[str, LazyArray]]:
  """Reads a HF model dir lazily into our config and parameter names.

  Returns exactly the parameters the config's network has: no
  `decoder/logits_dense/kernel` for a tied LM head, T5 `mlp/wi` vs
  `mlp/wi_0, wi_1` by activation count. Raises FileNotFoundError for a dir
  that is not a HF checkpoint, ValueError for a missing or misshapen tensor.
  """
  path = os.fspath(path)
  if not is_hf_checkpoint(path):
    raise FileNotFoundError(
        f"{path!r} is not a Hugging Face model dir: it needs config.json and "
        f"one of {', '.join(WEIGHT_FILES)}.")
  config_json = _read_json(os.path.join(path, "config.json"))
  tensors = _open_weights(path)
  model_type = config_json.get("model_type")
  if model_type == "gpt2":
    # GPT2LMHeadModel names start with "transformer.", GPT2Model and old
    # checkpoints' do not.
    prefix = "transformer." if "transformer.wte.weight" in tensors else ""
    tensors = {k[len(prefix):] if k.startswith(prefix) else k: v
               for k, v in tensors.items()}
  config = config_from_hf(config_json, weight_names=tensors)

  # {our name: (HF tensor name, transform, expected shape)}
  if config.architecture == "encoder_decoder":
    plan = _t5_plan(config)
  else:
    plan = _gpt2_plan(config)
  params, wrong = {}, []
  for ours, (hf_name, transform, shape) in plan.items():
    if hf_name not in tensors:
      raise ValueError(
          f"{path}: tensor {hf_name!r} (our parameter {ours!r}) is missing "
          "from the checkpoint; is config.json the right one for these "
          "weights?")
    params[ours] = transform(tensors[hf_name])
    if params[ours].shape != shape:
      wrong.append(f"{ours} <- {hf_name}: {params[ours].shape}, config.json "
                   f"implies {shape}")
  if wrong:
    raise ValueError(f"{path}: weights do not match config.json:\n  " +
                     "\n  ".join(wrong))
  return config, params


Plan = dict[str, tuple[str, Callable[[LazyArray], LazyArray], tuple[int, ...]]]


def _same(x: LazyArray) -> LazyArray:
  return x


def _t5_plan(cfg: TransformerConfig) -> Plan:
  """T5 names. torch Linear weights are [out, in], ours [in, out]."""
  e, m, v = cfg.emb_dim, cfg.mlp_dim, cfg.vocab_size
  hd = cfg.num_heads * cfg.head_dim
  plan: Plan = {"token_embedder/embedding": ("shared.weight", _same, (v, e))}

  def linear(ours, hf, n_in, n_out):
    plan[f"{ours}/kernel"] = (f"{hf}.weight", Transposed, (n_in, n_out))

  def attention(ours, hf):
    for q in ("query", "key", "value"):
      linear(f"{ours}/{q}", f"{hf}.{q[0]}", e, hd)
    linear(f"{ours}/out", f"{hf}.o", hd, e)

  wis = (["wi"] if len(cfg.mlp_activations) == 1 else
         [f"wi_{k}" for k in range(len(cfg.mlp_activations))])
  for stack, n_layers in (("encoder", cfg.num_encoder_layers),
                          ("decoder", cfg.num_decoder_layers)):
    # [buckets, H] -> [H, buckets]; only block 0 holds the (shared) bias.
    plan[f"{stack}/relpos_bias/rel_embedding"] = (
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        Transposed, (cfg.num_heads, cfg.relative_attention_num_buckets))
    if stack == "encoder":
      attns = [("attention", "SelfAttention", "pre_attention_layer_norm")]
    else:
      attns = [("self_attention", "SelfAttention",
                "pre_self_attention_layer_norm"),
               ("encoder_decoder_attention", "EncDecAttention",
                "pre_cross_attention_layer_norm")]
    for i in range(n_layers):
      ours, hf = f"{stack}/layers_{i}", f"{stack}.block.{i}.layer"
      # Sub-layer j of a HF block: the attentions, then the MLP.
      for j, (name, hf_name, norm) in enumerate(attns):
        plan[f"{ours}/{norm}/scale"] = (f"{hf}.{j}.layer_norm.weight", _same,
                                        (e,))
        attention(f"{ours}/{name}", f"{hf}.{j}.{hf_name}")
      j = len(attns)
      plan[f"{ours}/pre_mlp_layer_norm/scale"] = (
          f"{hf}.{j}.layer_norm.weight", _same, (e,))
      for wi in wis:
        linear(f"{ours}/mlp/{wi}", f"{hf}.{j}.DenseReluDense.{wi}", e, m)
      linear(f"{ours}/mlp/wo", f"{hf}.{j}.DenseReluDense.wo", m, e)
    plan[f"{stack}/{stack}_norm/scale"] = (
        f"{stack}.final_layer_norm.weight", _same, (e,))
  if not cfg.logits_via_embedding:
    linear("decoder/logits_dense", "lm_head", e, v)
  return plan


def _gpt2_plan(cfg: TransformerConfig) -> Plan:
  """GPT-2 names (without "transformer."). Conv1D weights are [in, out]."""
  e, m, v = cfg.emb_dim, cfg.mlp_dim, cfg.vocab_size
  plan: Plan = {
      "decoder/token_embedder/embedding": ("wte.weight", _same, (v, e)),
      "decoder/position_embedder/embedding": (
          "wpe.weight", _same, (cfg.max_position_embeddings, e)),
  }

  def dense(ours, hf, n_in, n_out):
    plan[f"{ours}/kernel"] = (f"{hf}.weight", _same, (n_in, n_out))
    plan[f"{ours}/bias"] = (f"{hf}.bias", _same, (n_out,))

  def norm(ours, hf):
    plan[f"{ours}/scale"] = (f"{hf}.weight", _same, (e,))
    plan[f"{ours}/bias"] = (f"{hf}.bias", _same, (e,))

  for i in range(cfg.num_decoder_layers):
    ours, hf = f"decoder/layers_{i}", f"h.{i}"
    norm(f"{ours}/pre_self_attention_layer_norm", f"{hf}.ln_1")
    # c_attn is q, k, v side by side: weight [E, 3E], bias [3E].
    for k, q in enumerate(("query", "key", "value")):
      cols = (k * e, (k + 1) * e)
      plan[f"{ours}/self_attention/{q}/kernel"] = (
          f"{hf}.attn.c_attn.weight",
          lambda x, cols=cols: Sliced(x, 1, *cols), (e, e))
      plan[f"{ours}/self_attention/{q}/bias"] = (
          f"{hf}.attn.c_attn.bias",
          lambda x, cols=cols: Sliced(x, 0, *cols), (e,))
    dense(f"{ours}/self_attention/out", f"{hf}.attn.c_proj", e, e)
    norm(f"{ours}/pre_mlp_layer_norm", f"{hf}.ln_2")
    dense(f"{ours}/mlp/wi", f"{hf}.mlp.c_fc", e, m)
    dense(f"{ours}/mlp/wo", f"{hf}.mlp.c_proj", m, e)
  norm("decoder/decoder_norm", "ln_f")
  if not cfg.logits_via_embedding:
    # lm_head is a torch Linear: [V, E].
    plan["decoder/logits_dense/kernel"] = ("lm_head.weight", Transposed,
                                           (e, v))
  return plan


# ----------------------------------------------------------------------------
# Weight files -> {HF name: LazyArray}


def _corrupt(file: str, detail: str) -> ValueError:
  return ValueError(
      f"{file!r} is a truncated or corrupt Hugging Face checkpoint file "
      f"({detail}); download or copy the model directory again.")


def _read_json(file: str) -> dict[str, Any]:
  """A JSON object file of a HF dir; a one-line error naming it otherwise."""
  try:
    with open(file, "rb") as f:
      value = json.loads(f.read().decode("utf-8"))
  except UnicodeDecodeError as e:
    raise _corrupt(file, f"byte 0x{e.object[e.start]:02x} at offset "
                   f"{e.start} is not UTF-8 text") from e
  except ValueError as e:
    raise _corrupt(file, f"not valid JSON: {e}") from e
  if not isinstance(value, dict):
    raise _corrupt(file, f"a JSON {type(value).__name__}, not an object")
  return value


def _open_weights(path: str) -> dict[str, LazyArray]:
  """All tensors of the dir's preferred weight layout, by HF name."""
  name = next(f for f in WEIGHT_FILES if os.path.isfile(os.path.join(path, f)))
  if name.endswith(".index.json"):
    index = _read_json(os.path.join(path, name))
    if not isinstance(index.get("weight_map"), dict):
      raise _corrupt(os.path.join(path, name), "it has no 'weight_map'")
    files = sorted(set(index["weight_map"].values()))
  else:
    files = [name]
  opener = _safetensors_arrays if ".safetensors" in name else _torch_arrays
  tensors = {}
  for file in files:
    tensors.update(opener(os.path.join(path, file)))
  return tensors


# safetensors dtype codes -> numpy (bf16/fp8 via ml_dtypes, as jax uses).
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def _safetensors_arrays(file: str) -> dict[str, LazyArray]:
  """Lazy arrays over one .safetensors file.

  The format is an 8-byte little-endian header length, a JSON header
  `{name: {dtype, shape, data_offsets}}` and raw row-major little-endian data.
  We memory-map each tensor's bytes at read time, so a slice touches only its
  pages. (`safetensors.safe_open(framework="numpy")` cannot return bf16, and
  framework="pt" would make torch a dependency.)
  """
  size = os.path.getsize(file)
  with open(file, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise _corrupt(file, f"{size} bytes, shorter than a safetensors header")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > size - 8:
      raise _corrupt(file, f"its header claims {header_len} bytes, the file "
                     f"holds {size}")
    try:
      header = json.loads(f.read(header_len).decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError included.
      raise _corrupt(file, "its header is not valid JSON") from e
  if not isinstance(header, dict):
    raise _corrupt(file, "its header is not a JSON object")
  data_start = 8 + header_len
  arrays = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    end = data_start + int(info.get("data_offsets", [0, 0])[1])
    if end > size:
      raise _corrupt(file, f"tensor {name!r} ends at byte {end}, the file "
                     f"holds {size}")
    if info["dtype"] not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{file}: tensor {name!r} has dtype {info['dtype']}, "
                       "which we cannot read.")
    dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
    shape = tuple(info["shape"])
    offset = data_start + info["data_offsets"][0]

    def fetch(index: Index, dtype=dtype, shape=shape, offset=offset):
      if 0 in shape:  # mmap cannot map zero bytes
        return np.zeros(shape, dtype)[index]
      mm = np.memmap(file, dtype=dtype.newbyteorder("<"), mode="r",
                     offset=offset, shape=shape)
      return np.array(mm[index], dtype)  # copies just the slice

    arrays[name] = FromCallable(shape, dtype, fetch)
  return arrays


def _torch_arrays(file: str) -> dict[str, LazyArray]:
  """Lazy arrays over one pytorch_model.bin (needs torch)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"{file} is a PyTorch pickle; reading it needs torch (`pip install "
        "torch`), or convert the checkpoint to safetensors.") from e
  try:
    # mmap: tensors stay on disk until sliced.
    state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
  except RuntimeError:
    # Pre-1.6 (non-zip) files cannot be memory-mapped.
    state = torch.load(file, map_location="cpu", weights_only=True)
  arrays = {}
  for name, t in state.items():
    if not isinstance(t, torch.Tensor):
      continue

    def fetch(index: Index, t=t):
      part = t[index]
      if part.dtype == torch.bfloat16:  # numpy has no bf16: reinterpret bits
        return part.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
      return part.numpy().copy()  # not a view of the mmap'd file

    dtype = (np.dtype(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else
             np.dtype(torch.empty((), dtype=t.dtype).numpy().dtype))
    arrays[name] = FromCallable(tuple(t.shape), dtype, fetch)
  return arrays

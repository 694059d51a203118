"""`export_model`: a frozen base as a Hugging Face transformers model dir.

The inverse of `checkpoints/hf.py`: an encoder-decoder base becomes a
`T5ForConditionalGeneration` dir, a GPT-2-shaped decoder-only base a
`GPT2LMHeadModel` dir. The dir holds

  config.json, generation_config.json   the inverse of `hf.config_from_hf`:
                                        reading it back gives our config
  model.safetensors                     float32, HF names, written from the
                                        very name/transpose/slice plans the
                                        reader uses (`hf._t5_plan`,
                                        `hf._gpt2_plan`), inverted
  tokenizer files                       when the vocabulary is known (below)

so `transformers` loads it with `from_pretrained`, `pt.load_pretrained`
reads it back to identical params, and a prompt exported with
`export_prompt(..., format="peft")` loads on it with PEFT.

Configs transformers cannot represent (a decoder-only model with relative
positions or a prefix LM, RMS norm on GPT-2, LayerNorm or biases on T5, ...)
are refused with one ValueError that names each field; every export is also
checked to read back (`config_from_hf`) to the same architecture.

Tokenizer files. A SentencePiece vocabulary (T5's, mT5's, the shipped bases'
"bible") is written as `spiece.model` (the original model, for
sentencepiece / seqio) plus a `tokenizer.json` that `AutoTokenizer` loads as a
`PreTrainedTokenizerFast` encoding exactly as seqio does: SentencePiece's
normalizer, whole-text whitespace rules, user-defined symbols (the bible
vocabulary's newline) and byte fallback, which transformers 5's own
`T5Tokenizer` rebuilds without (it would map digits, "¿", "¡" to <unk> and
add a "▁" after each newline). Extra ids are special tokens
`<extra_id_0>` = last id, as seqio lays them out. T5 tokenizers append EOS
(`</s>`) as T5's do; decoder-only ones add nothing. As in every HF tokenizer,
a special token's text ("</s>", "<extra_id_0>") inside the input becomes
that token, which seqio's `encode` spells out piece by piece (seqio maps
" <extra_id_N>" after a space to the sentinel too).
GPT-2's byte-level BPE is written as `vocab.json` + `merges.txt`
(`GPT2Tokenizer`) when its files can be read (a local dir, or the hub cache);
otherwise the tokenizer files are omitted with a warning.

Files are staged beside `out_dir` and renamed into place as `export_prompt`
does (`export._commit`): a failure leaves an earlier export untouched.
Neither torch nor transformers is imported; TensorFlow / seqio only when a
vocabulary is written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
from typing import Any, Callable, Mapping, Optional, Union

import flax
import flax.linen as nn
import numpy as np

from prompt_tuning.checkpoints import export
from prompt_tuning.checkpoints import hf
from prompt_tuning.checkpoints import lazy
from prompt_tuning.checkpoints import shipped
from prompt_tuning.models.configs import TransformerConfig

FORMATS = ("hf",)
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
WEIGHTS_FILE = "model.safetensors"
SPIECE_FILE = "spiece.model"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
BPE_FILES = ("vocab.json", "merges.txt")
TOKENIZER_FILES = (SPIECE_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE,
                   SPECIAL_TOKENS_FILE) + BPE_FILES
# Files an export owns: replaced or removed by the next export.
OWNED_FILES = (CONFIG_FILE, GENERATION_CONFIG_FILE, WEIGHTS_FILE
               ) + TOKENIZER_FILES

VocabularyArg = Union[None, bool, str, Any]


def export_model(
    variables_or_params: Mapping[str, Any], out_dir: Union[str, os.PathLike],
    *, format: str = "hf",  # pylint: disable=redefined-builtin
    model: Any, vocabulary: VocabularyArg = None) -> str:
  """Writes the base model of `variables_or_params` as a transformers dir.

  Args:
    variables_or_params: {"params": ...} as `pt.load_pretrained` returns, or
      the params tree. Only the base's parameters are written; a method's
      (prompt/..., prefix/...) are ignored: export those with
      `pt.export_prompt`.
    out_dir: directory to write; created if missing. Files of an earlier
      export there are replaced (stale tokenizer files removed); other files
      are left alone.
    format: "hf" (the only one).
    model: the wrapper the params belong to (`model.config` is the
      architecture, `model.eos_id` the EOS written to the configs).
    vocabulary: for the tokenizer files. None: the shipped base's vocabulary
      when `model.base_path` is a shipped base (`pt.load_pretrained
      ("bible_t5_tiny")`), else no tokenizer files. A name ("bible", "t5",
      "mt5", "mgpt", "gpt2") or a vocabulary object
      (`prompt_tuning.tasks.vocabularies`; seqio's SentencePieceVocabulary).
      False: no tokenizer files.

  Returns:
    `out_dir` as a string.
  """
  if format not in FORMATS:
    raise ValueError(f"format={format!r}; choose one of {FORMATS}.")
  if model is None or not isinstance(getattr(model, "config", None),
                                     TransformerConfig):
    raise ValueError(
        "export_model needs model= (the wrapper from pt.load_pretrained or "
        f"pt.build_model), got {type(model).__name__}.")
  out = os.path.abspath(os.fspath(out_dir))
  if os.path.exists(out) and not os.path.isdir(out):
    raise NotADirectoryError(f"out_dir {out!r} exists and is not a "
                             "directory.")
  config = model.config
  check_exportable(config)
  eos_id = int(model.eos_id)
  params = nn.meta.unbox(
      variables_or_params.get("params", variables_or_params)
      if isinstance(variables_or_params, Mapping) else variables_or_params)
  flat = flax.traverse_util.flatten_dict(params, sep="/")

  plan = _plan(config)
  placements = _placements(plan, flat)
  shapes = _hf_shapes(placements)
  config_json, generation_json = hf_config(config, eos_id)
  _check_round_trip(config, config_json, shapes)

  vocab = _resolve_vocabulary(vocabulary, model)
  files: dict[str, Any] = {}
  if vocab is not None:
    tokenizer_files, pad_id = _tokenizer_files(vocab, config, eos_id)
    files.update(tokenizer_files)
    if config.architecture == "decoder_only" and pad_id is not None:
      config_json["pad_token_id"] = generation_json["pad_token_id"] = pad_id
  files[CONFIG_FILE] = _json_bytes(config_json)
  files[GENERATION_CONFIG_FILE] = _json_bytes(generation_json)
  files[WEIGHTS_FILE] = lambda path: _write_safetensors(
      path, shapes,
      lambda name: _hf_tensor(placements[name], shapes[name], flat))
  # pylint: disable-next=protected-access
  export._commit(out, files, list(OWNED_FILES))
  return os.fspath(out_dir)


# ----------------------------------------------------------------------------
# Config: ours -> config.json.

# Our activation -> HF's, by function: our "gelu" and "gelu_new" are both
# the tanh approximation (HF "gelu_new"), "gelu_exact" is HF's "gelu".
_HF_ACTIVATIONS = {"relu": "relu", "gelu": "gelu_new", "gelu_new": "gelu_new",
                   "gelu_exact": "gelu", "silu": "silu"}
_NO_COUNTERPART = ("transformers has no model for it; keep this base in our "
                   "formats (T5X / Orbax checkpoints, pt.load_pretrained).")


def check_exportable(config: TransformerConfig) -> None:
  """Raises one ValueError naming every field transformers cannot
  represent (T5ForConditionalGeneration or GPT2LMHeadModel)."""
  problems = []

  def need(ok: bool, field: str, why: str) -> None:
    if not ok:
      problems.append(f"{field}={getattr(config, field)!r}: {why}")

  acts = config.mlp_activations
  if config.architecture == "encoder_decoder":
    target = "T5ForConditionalGeneration"
    need(config.norm == "rms", "norm", "T5 has RMS norm only")
    need(not config.use_bias, "use_bias", "T5 has no biases")
    need(config.position_embedding == "relative", "position_embedding",
         "T5 has relative position buckets only")
    need(not config.scale_attention_logits, "scale_attention_logits",
         "T5 does not divide attention logits by sqrt(head_dim)")
    need(_t5_feed_forward_proj(acts) is not None, "mlp_activations",
         "T5 has one activation ('relu', 'gelu_new', 'gelu_exact', 'silu') "
         "or a gated pair (act, 'linear'); the gated exact GELU has no name "
         "(HF's 'gated-gelu' is the tanh one)")
  else:
    target = "GPT2LMHeadModel"
    need(not config.prefix_lm, "prefix_lm",
         "GPT-2 is causal only (no bidirectional prefix)")
    need(config.position_embedding == "absolute", "position_embedding",
         "GPT-2 has a learned absolute position table only")
    need(config.norm == "layer", "norm", "GPT-2 has LayerNorm only")
    need(config.use_bias, "use_bias", "GPT-2 has biases on every projection")
    need(config.num_heads * config.head_dim == config.emb_dim, "head_dim",
         f"GPT-2 needs num_heads * head_dim == emb_dim ({config.num_heads} "
         f"* {config.head_dim} != {config.emb_dim})")
    need(len(acts) == 1 and acts[0] in _HF_ACTIVATIONS, "mlp_activations",
         "GPT-2 has one ungated activation ('gelu_new', 'gelu_exact', "
         "'relu', 'silu')")
    need(not (config.logits_via_embedding and config.scale_tied_logits),
         "scale_tied_logits", "GPT-2's tied LM head is not rescaled")
  if problems:
    raise ValueError(
        f"this {config.architecture} config cannot be exported as a "
        f"transformers {target}: " + "; ".join(problems) + ". "
        + _NO_COUNTERPART)


def _t5_feed_forward_proj(acts: tuple[str, ...]) -> Optional[str]:
  """HF T5's feed_forward_proj for our activations, or None."""
  if len(acts) == 1 and acts[0] in _HF_ACTIVATIONS:
    return _HF_ACTIVATIONS[acts[0]]
  if len(acts) == 2 and acts[1] == "linear":
    if acts[0] in ("gelu", "gelu_new"):
      return "gated-gelu"  # HF maps it to gelu_new (tanh)
    if acts[0] in ("relu", "silu"):
      return f"gated-{acts[0]}"
  return None


def hf_config(config: TransformerConfig,
              eos_id: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
  """(config.json, generation_config.json) for `config`, which
  `check_exportable` accepts. Token ids are seqio's: pad and T5's decoder
  start 0, EOS `eos_id`."""
  dropout = float(config.dropout_rate)
  if config.architecture == "encoder_decoder":
    tied = config.logits_via_embedding
    scale = tied and config.scale_tied_logits
    hf_json = {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": config.vocab_size,
        "d_model": config.emb_dim,
        "d_kv": config.head_dim,
        "d_ff": config.mlp_dim,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "num_heads": config.num_heads,
        "relative_attention_num_buckets":
            config.relative_attention_num_buckets,
        "relative_attention_max_distance":
            config.relative_attention_max_distance,
        "feed_forward_proj": _t5_feed_forward_proj(config.mlp_activations),
        "layer_norm_epsilon": config.norm_epsilon,
        "dropout_rate": dropout,
        "initializer_factor": 1.0,
        "is_encoder_decoder": True,
        "use_cache": True,
        # transformers 4 reads `tie_word_embeddings` (tied and rescaled),
        # transformers 5 `scale_decoder_outputs` (and ties a head the
        # weights lack). Untied: false/false, read alike by both; tied and
        # rescaled (T5 1.0): true/true; tied without rescaling: true/false,
        # which only transformers 5 reads as such.
        "tie_word_embeddings": tied,
        "scale_decoder_outputs": scale,
        "pad_token_id": 0,
        "eos_token_id": eos_id,
        "decoder_start_token_id": 0,
        "dtype": "float32",
    }
    generation = {"decoder_start_token_id": 0, "eos_token_id": eos_id,
                  "pad_token_id": 0}
  else:
    hf_json = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.max_position_embeddings,
        "n_embd": config.emb_dim,
        "n_layer": config.num_decoder_layers,
        "n_head": config.num_heads,
        "n_inner": config.mlp_dim,
        "activation_function": _HF_ACTIVATIONS[config.mlp_activations[0]],
        "layer_norm_epsilon": config.norm_epsilon,
        "resid_pdrop": dropout,
        "embd_pdrop": dropout,
        "attn_pdrop": dropout,
        "initializer_range": (config.init_std if config.init_std is not None
                              else 0.02),
        "scale_attn_weights": config.scale_attention_logits,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "tie_word_embeddings": config.logits_via_embedding,
        # GPT-2's convention: EOS is also BOS; no padding token unless the
        # vocabulary has one (set by export_model).
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "dtype": "float32",
    }
    generation = {"bos_token_id": eos_id, "eos_token_id": eos_id}
  return hf_json, generation


def _canonical(config: TransformerConfig) -> TransformerConfig:
  """`config` with what HF does not store, or what does not change the
  network, set to fixed values: training choices (dropout, activation dtype,
  init), names of one function, fields the architecture ignores."""
  acts = tuple("gelu" if a == "gelu_new" else a
               for a in config.mlp_activations)
  default = TransformerConfig()
  changes = dict(dropout_rate=0.0, dtype="float32", init_std=None,
                 mlp_activations=acts)
  if config.architecture == "decoder_only":
    changes["num_encoder_layers"] = 0
  if config.position_embedding == "absolute":
    changes.update(
        relative_attention_num_buckets=default.relative_attention_num_buckets,
        relative_attention_max_distance=(
            default.relative_attention_max_distance))
  else:
    changes["max_position_embeddings"] = default.max_position_embeddings
  if not config.logits_via_embedding:
    changes["scale_tied_logits"] = default.scale_tied_logits
  return dataclasses.replace(config, **changes)


def _check_round_trip(config: TransformerConfig, config_json: dict[str, Any],
                      shapes: Mapping[str, tuple[int, ...]]) -> None:
  """The written config must read back (hf.config_from_hf) to `config`."""
  back = hf.config_from_hf(config_json, weight_names=_reader_names(shapes))
  want, got = _canonical(config), _canonical(back)
  if want != got:
    fields = [f"{f.name}: ours {getattr(want, f.name)!r}, read back "
              f"{getattr(got, f.name)!r}"
              for f in dataclasses.fields(want)
              if getattr(want, f.name) != getattr(got, f.name)]
    raise ValueError(
        "this config does not survive the transformers config.json: "
        + "; ".join(fields) + ". " + _NO_COUNTERPART)


def _json_bytes(value: Any) -> bytes:
  return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
          + "\n").encode("utf-8")


# ----------------------------------------------------------------------------
# Weights: the reader's plan, inverted.


def _plan(config: TransformerConfig) -> hf.Plan:
  """{our name: (HF name, view, our shape)} with the names transformers'
  LM-head classes save (GPT-2's under "transformer.", its lm_head not)."""
  if config.architecture == "encoder_decoder":
    return hf._t5_plan(config)  # pylint: disable=protected-access
  plan = hf._gpt2_plan(config)  # pylint: disable=protected-access
  return {ours: (name if name == "lm_head.weight" else "transformer." + name,
                 view, shape)
          for ours, (name, view, shape) in plan.items()}


def _reader_names(shapes: Mapping[str, Any]) -> list[str]:
  """HF names as `hf.config_from_hf` sees them (GPT-2's prefix dropped)."""
  return [n[len("transformer."):] if n.startswith("transformer.") else n
          for n in shapes]


class _Probe:
  """Stands for the HF tensor in a plan's view (Transposed, Sliced, or the
  tensor itself), so the view tells where our array sits in it."""


@dataclasses.dataclass(frozen=True)
class _Placement:
  """Where one of our arrays lies in an HF tensor: our axis i is HF axis
  `axes[i]`, starting at HF index `offsets[axes[i]]`."""

  ours: str
  axes: tuple[int, ...]
  offsets: tuple[int, ...]
  shape: tuple[int, ...]  # ours


def _locate(view: Any, probe: _Probe, ndim: int
            ) -> tuple[list[int], list[int]]:
  """(axes, offsets) of a view of `probe`, however the views nest."""
  if view is probe:
    return list(range(ndim)), [0] * ndim
  if isinstance(view, lazy.Transposed):
    axes, offsets = _locate(view.source, probe, ndim)
    return [axes[p] for p in view.perm], offsets
  if isinstance(view, lazy.Sliced):
    axes, offsets = _locate(view.source, probe, ndim)
    offsets[axes[view.axis]] += view.start
    return axes, offsets
  raise TypeError(f"cannot invert the view {type(view).__name__}; "
                  "hf_export knows Transposed and Sliced.")


def _placements(plan: hf.Plan, flat: Mapping[str, Any]
                ) -> dict[str, list[_Placement]]:
  """{HF name: the placements of our arrays in it}; checks our names and
  shapes against the plan first."""
  missing = sorted(set(plan) - set(flat))
  wrong = [f"{ours}: {tuple(np.shape(flat[ours]))}, the config implies "
           f"{shape}" for ours, (_, _, shape) in sorted(plan.items())
           if ours in flat and tuple(np.shape(flat[ours])) != shape]
  if missing or wrong:
    raise ValueError(
        "the params do not match model.config: "
        + "; ".join([f"missing {n}" for n in missing[:20]] + wrong[:20])
        + ". Pass the params of this model (variables['params']).")
  out: dict[str, list[_Placement]] = {}
  for ours, (name, view_fn, shape) in plan.items():
    probe = _Probe()
    axes, offsets = _locate(view_fn(probe), probe, len(shape))
    out.setdefault(name, []).append(
        _Placement(ours, tuple(axes), tuple(offsets), shape))
  return out


def _hf_shapes(placements: Mapping[str, list[_Placement]]
               ) -> dict[str, tuple[int, ...]]:
  """Each HF tensor's shape: its pieces must tile it exactly."""
  shapes = {}
  for name, pieces in placements.items():
    ndim = len(pieces[0].shape)
    extent = [0] * ndim
    boxes = []
    for p in pieces:
      box = [None] * ndim
      for i, h in enumerate(p.axes):
        box[h] = (p.offsets[h], p.offsets[h] + p.shape[i])
        extent[h] = max(extent[h], box[h][1])
      boxes.append(box)
    for a in range(len(boxes)):
      for b in range(a):
        if all(lo1 < hi2 and lo2 < hi1
               for (lo1, hi1), (lo2, hi2) in zip(boxes[a], boxes[b])):
          raise AssertionError(f"{name}: {pieces[a].ours} and "
                               f"{pieces[b].ours} overlap")
    if sum(int(np.prod(p.shape)) for p in pieces) != int(np.prod(extent)):
      raise AssertionError(f"{name}: the plan leaves parts of it unset")
    shapes[name] = tuple(extent)
  return shapes


def _hf_tensor(pieces: list[_Placement], shape: tuple[int, ...],
               flat: Mapping[str, Any]) -> np.ndarray:
  """One HF tensor (float32) assembled from our arrays."""
  if len(pieces) == 1 and all(o == 0 for o in pieces[0].offsets):
    p = pieces[0]
    return np.asarray(np.transpose(_float32(flat[p.ours]),
                                   np.argsort(p.axes)))
  tensor = np.empty(shape, np.float32)
  for p in pieces:
    block = np.transpose(_float32(flat[p.ours]), np.argsort(p.axes))
    tensor[tuple(slice(o, o + n) for o, n in zip(p.offsets, block.shape))
           ] = block
  return tensor


def _float32(value: Any) -> np.ndarray:
  return np.asarray(value).astype(np.float32, copy=False)


def _write_safetensors(path: str, shapes: Mapping[str, tuple[int, ...]],
                       tensor: Callable[[str], np.ndarray]) -> None:
  """A float32 .safetensors file, one tensor in memory at a time.

  The format (as hf._safetensors_arrays reads it): an 8-byte little-endian
  header length, a JSON header {name: {dtype, shape, data_offsets}} padded
  with spaces to 8 bytes, then the row-major little-endian data.
  """
  names = sorted(shapes)
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for name in names:
    size = 4 * int(np.prod(shapes[name]))
    header[name] = {"dtype": "F32", "shape": list(shapes[name]),
                    "data_offsets": [offset, offset + size]}
    offset += size
  raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
  raw += b" " * (-len(raw) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for name in names:
      array = np.ascontiguousarray(tensor(name), np.dtype("<f4"))
      if array.shape != tuple(shapes[name]):
        raise AssertionError(f"{name}: {array.shape} != {shapes[name]}")
      f.write(memoryview(array.reshape(-1)).cast("B"))
    f.flush()
    os.fsync(f.fileno())


# ----------------------------------------------------------------------------
# Tokenizer files.


def _shipped_base_of(path: Optional[str]) -> Optional[shipped.ShippedBase]:
  """The shipped base whose checkpoint `path` is (model.base_path)."""
  if not path:
    return None
  real = os.path.realpath(path)
  for base in shipped.list_pretrained():
    if real == os.path.realpath(base.checkpoint_path):
      return base
  return None


def _resolve_vocabulary(vocabulary: VocabularyArg, model: Any) -> Any:
  if vocabulary is False:
    return None
  if vocabulary is None:
    base = _shipped_base_of(getattr(model, "base_path", None))
    if base is None:
      return None
    vocabulary = base.vocabulary
  if isinstance(vocabulary, str):
    # pylint: disable-next=g-import-not-at-top  # TensorFlow, seqio.
    from prompt_tuning.tasks import vocabularies
    return vocabularies.named_vocabulary(vocabulary)
  return vocabulary


def _tokenizer_files(vocabulary: Any, config: TransformerConfig,
                     eos_id: int) -> tuple[dict[str, bytes], Optional[int]]:
  """({file: bytes}, the vocabulary's pad id or None)."""
  # pylint: disable-next=g-import-not-at-top  # TensorFlow, seqio.
  import seqio
  # pylint: disable-next=g-import-not-at-top
  from prompt_tuning.tasks import vocabularies
  if isinstance(vocabulary, vocabularies.GPT2Vocabulary):
    return _bpe_files(vocabulary, config, eos_id), None
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return _sentencepiece_files(vocabulary, config, eos_id)
  raise ValueError(
      f"vocabulary={vocabulary!r}: tokenizer files can be written for a "
      "SentencePiece vocabulary (seqio.SentencePieceVocabulary) or GPT-2's "
      "BPE (vocabularies.GPT2Vocabulary); pass vocabulary=False to write "
      "none.")


def _check_vocabulary(size: int, vocab_eos: int, config: TransformerConfig,
                      eos_id: int, vocabulary: Any) -> None:
  if size > config.vocab_size:
    raise ValueError(
        f"the vocabulary ({vocabulary!r}) has {size} ids, more than the "
        f"model's {config.vocab_size} embedding rows; it is not this "
        "model's vocabulary.")
  if vocab_eos != eos_id:
    raise ValueError(
        f"model.eos_id={eos_id}, but the vocabulary's EOS is {vocab_eos}; "
        f"build the model with eos_id={vocab_eos} (pt.load_pretrained(..., "
        f"eos_id={vocab_eos})) or pass its own vocabulary.")


def _bpe_files(vocabulary: Any, config: TransformerConfig,
               eos_id: int) -> dict[str, bytes]:
  """vocab.json + merges.txt, rebuilt from the tables the vocabulary
  encodes with (ids and merge ranks exactly as read)."""
  try:
    tables = vocabulary._load()  # pylint: disable=protected-access
  except (FileNotFoundError, OSError) as e:
    logging.warning("export_model: writing no tokenizer files, GPT-2's BPE "
                    "files cannot be read (%s).", e)
    return {}
  _check_vocabulary(len(tables.tokens), tables.eos_id, config, eos_id,
                    vocabulary)
  merges = sorted(tables.ranks, key=tables.ranks.__getitem__)
  eos = tables.tokens[tables.eos_id]
  tokenizer_config = {
      "tokenizer_class": "GPT2Tokenizer",
      "bos_token": eos, "eos_token": eos, "unk_token": eos,
      "add_prefix_space": False, "add_bos_token": False,
      "clean_up_tokenization_spaces": False,
      "model_max_length": config.max_position_embeddings,
  }
  return {
      "vocab.json": _json_bytes(tables.token_ids),
      "merges.txt": ("#version: 0.2\n" + "".join(
          f"{a} {b}\n" for a, b in merges)).encode("utf-8"),
      TOKENIZER_CONFIG_FILE: _json_bytes(tokenizer_config),
      SPECIAL_TOKENS_FILE: _json_bytes(
          {"bos_token": eos, "eos_token": eos, "unk_token": eos}),
  }


def _sentencepiece_files(vocabulary: Any, config: TransformerConfig,
                         eos_id: int
                         ) -> tuple[dict[str, bytes], Optional[int]]:
  # pylint: disable-next=g-import-not-at-top
  import tensorflow as tf
  # pylint: disable-next=g-import-not-at-top
  from sentencepiece import sentencepiece_model_pb2
  if getattr(vocabulary, "_normalizer_spec_overrides", None) is not None or (
      not getattr(vocabulary, "_reverse_extra_ids", True)):
    raise ValueError(
        f"{vocabulary!r} overrides the normalizer or numbers its extra ids "
        "upwards; only seqio's defaults (the model file as it is, extra ids "
        "from the last id down) can be written as tokenizer files. Pass "
        "vocabulary=False.")
  with tf.io.gfile.GFile(vocabulary.sentencepiece_model_file, "rb") as f:
    model_bytes = f.read()
  proto = sentencepiece_model_pb2.ModelProto.FromString(model_bytes)
  extra_ids = int(vocabulary.extra_ids)
  size = len(proto.pieces) + extra_ids
  _check_vocabulary(size, int(vocabulary.eos_id), config, eos_id, vocabulary)
  tokenizer_json, special = sentencepiece_tokenizer_json(
      proto, extra_ids, append_eos=config.architecture == "encoder_decoder")
  tokenizer_config = {
      "tokenizer_class": "PreTrainedTokenizerFast",
      **special,
      "clean_up_tokenization_spaces": False,
  }
  if config.position_embedding == "absolute":
    tokenizer_config["model_max_length"] = config.max_position_embeddings
  pad_id = proto.trainer_spec.pad_id
  return {
      SPIECE_FILE: model_bytes,
      TOKENIZER_FILE: _json_bytes(tokenizer_json),
      TOKENIZER_CONFIG_FILE: _json_bytes(tokenizer_config),
      SPECIAL_TOKENS_FILE: _json_bytes(special),
  }, (pad_id if pad_id >= 0 else None)


# SentencePiece piece types (sentencepiece_model.proto).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM = 1
# Private-use characters that stand for single-character user-defined
# symbols while the normalizer runs (SentencePiece keeps those symbols out
# of normalization; the precompiled map would turn "\n" into a space).
_PLACEHOLDER = 0xF0000  # plane 15, private use


def sentencepiece_tokenizer_json(proto: Any, extra_ids: int,
                                 append_eos: bool
                                 ) -> tuple[dict[str, Any], dict[str, Any]]:
  """A `tokenizers` tokenizer.json encoding as SentencePiece does, and the
  special-token entries of tokenizer_config.json.

  SentencePiece (unigram) normalizes the whole text (precompiled map; runs
  of spaces to one, none at either end; "▁" first; spaces to "▁"), keeping
  user-defined symbols as they are, then runs Viterbi over all of it, with
  unknown characters as UTF-8 byte pieces under byte fallback. The
  tokenizer.json does the same with no pre-tokenizer (pieces never hold an
  inner "▁", so one Viterbi over the text is SentencePiece's).
  """
  trainer, norm = proto.trainer_spec, proto.normalizer_spec
  if trainer.model_type != _UNIGRAM:
    raise ValueError(
        f"the SentencePiece model is of type {trainer.model_type} (not "
        "unigram); only unigram models (T5's, mT5's, the bible vocabulary) "
        "can be written as tokenizer files. Pass vocabulary=False.")
  if trainer.treat_whitespace_as_suffix:
    raise ValueError("treat_whitespace_as_suffix SentencePiece models "
                     "cannot be written as tokenizer files.")
  pieces = list(proto.pieces)
  vocab = [[p.piece, float(p.score)] for p in pieces]
  specials = {i: p.piece for i, p in enumerate(pieces)
              if p.type in (_UNKNOWN, _CONTROL)}
  user_defined = [(i, p.piece) for i, p in enumerate(pieces)
                  if p.type == _USER_DEFINED]
  single = [(i, s) for i, s in user_defined if len(s) == 1]
  multi = [(i, s) for i, s in user_defined if len(s) != 1]
  extra = {len(pieces) + extra_ids - 1 - k: f"<extra_id_{k}>"
           for k in range(extra_ids)}

  def added(i, content, special):
    return {"id": i, "content": content, "single_word": False,
            "lstrip": False, "rstrip": False, "normalized": False,
            "special": special}

  added_tokens = ([added(i, s, True) for i, s in sorted(specials.items())]
                  + [added(i, s, False) for i, s in multi]
                  + [added(i, s, True) for i, s in sorted(extra.items())])

  def replace(old, new, regex=False):
    return {"type": "Replace",
            "pattern": {"Regex" if regex else "String": old},
            "content": new}

  holders = {s: chr(_PLACEHOLDER + k) for k, (_, s) in enumerate(single)}
  steps = [replace(s, h) for s, h in holders.items()]
  if norm.precompiled_charsmap:
    import base64  # pylint: disable=g-import-not-at-top
    steps.append({"type": "Precompiled", "precompiled_charsmap":
                  base64.b64encode(norm.precompiled_charsmap).decode()})
  if norm.remove_extra_whitespaces:
    steps += [replace(" {2,}", " ", regex=True),
              replace(r"\A | \z", "", regex=True)]
  steps += [replace(h, s) for s, h in holders.items()]
  if norm.add_dummy_prefix:
    steps.append({"type": "Prepend", "prepend": "▁"})
  if norm.escape_whitespaces:
    steps.append(replace(" ", "▁"))

  decoders = [{"type": "Replace", "pattern": {"String": "▁"},
               "content": " "}]
  if trainer.byte_fallback:
    decoders.append({"type": "ByteFallback"})
  decoders.append({"type": "Fuse"})
  if norm.add_dummy_prefix:
    decoders.append({"type": "Strip", "content": " ", "start": 1,
                     "stop": 0})

  eos = pieces[trainer.eos_id].piece if trainer.eos_id >= 0 else None
  post_processor = None
  if append_eos and eos is not None:
    post_processor = {
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": eos, "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": eos, "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 0}},
                 {"SpecialToken": {"id": eos, "type_id": 0}}],
        "special_tokens": {eos: {"id": eos, "ids": [trainer.eos_id],
                                 "tokens": [eos]}},
    }
  tokenizer = {
      "version": "1.0",
      "truncation": None,
      "padding": None,
      "added_tokens": added_tokens,
      "normalizer": {"type": "Sequence", "normalizers": steps},
      "pre_tokenizer": None,
      "post_processor": post_processor,
      "decoder": {"type": "Sequence", "decoders": decoders},
      "model": {"type": "Unigram", "unk_id": trainer.unk_id, "vocab": vocab,
                "byte_fallback": bool(trainer.byte_fallback)},
  }
  special: dict[str, Any] = {}
  for key, piece_id in (("pad_token", trainer.pad_id),
                        ("eos_token", trainer.eos_id),
                        ("unk_token", trainer.unk_id),
                        ("bos_token", trainer.bos_id)):
    if piece_id >= 0:
      special[key] = pieces[piece_id].piece
  if extra:
    special["additional_special_tokens"] = [extra[i] for i in sorted(
        extra, reverse=True)]
  return tokenizer, special

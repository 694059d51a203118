"""HF checkpoint dirs read into our names, checked against the torch models."""

import json
import os

import numpy as np
import pytest

from prompt_tuning.checkpoints import hf
from prompt_tuning.checkpoints import lazy
from prompt_tuning.models import configs

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
import hf_models  # pylint: disable=g-import-not-at-top,wrong-import-position
from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

BUILDERS = {"t5_v1_1": hf_models.tiny_t5_v1_1,
            "t5_v1_0": hf_models.tiny_t5_v1_0,
            "gpt2": hf_models.tiny_gpt2}


def _np(t):
  return t.detach().float().numpy()


def _t5_expected(model):
  """Our name -> value, taken from the torch modules (not from names)."""
  out = {"token_embedder/embedding": _np(model.shared.weight)}

  def linear(name, module):  # torch Linear weight is [out, in]
    out[f"{name}/kernel"] = _np(module.weight).T

  def attention(name, module):
    for ours, theirs in (("query", module.q), ("key", module.k),
                         ("value", module.v), ("out", module.o)):
      linear(f"{name}/{ours}", theirs)

  def mlp(name, module):
    for wi in ("wi", "wi_0", "wi_1", "wo"):
      if hasattr(module, wi):
        linear(f"{name}/{wi}", getattr(module, wi))

  for stack_name, stack in (("encoder", model.encoder),
                            ("decoder", model.decoder)):
    bias = stack.block[0].layer[0].SelfAttention.relative_attention_bias
    out[f"{stack_name}/relpos_bias/rel_embedding"] = _np(bias.weight).T
    for i, block in enumerate(stack.block):
      p, layer = f"{stack_name}/layers_{i}", block.layer
      if stack_name == "encoder":
        out[f"{p}/pre_attention_layer_norm/scale"] = _np(
            layer[0].layer_norm.weight)
        attention(f"{p}/attention", layer[0].SelfAttention)
      else:
        out[f"{p}/pre_self_attention_layer_norm/scale"] = _np(
            layer[0].layer_norm.weight)
        attention(f"{p}/self_attention", layer[0].SelfAttention)
        out[f"{p}/pre_cross_attention_layer_norm/scale"] = _np(
            layer[1].layer_norm.weight)
        attention(f"{p}/encoder_decoder_attention", layer[1].EncDecAttention)
      out[f"{p}/pre_mlp_layer_norm/scale"] = _np(layer[-1].layer_norm.weight)
      mlp(f"{p}/mlp", layer[-1].DenseReluDense)
    out[f"{stack_name}/{stack_name}_norm/scale"] = _np(
        stack.final_layer_norm.weight)
  if model.lm_head.weight is not model.shared.weight:
    linear("decoder/logits_dense", model.lm_head)
  return out


def _gpt2_expected(model):
  t = model.transformer
  e = t.wte.weight.shape[1]
  out = {"decoder/token_embedder/embedding": _np(t.wte.weight),
         "decoder/position_embedder/embedding": _np(t.wpe.weight)}

  def norm(name, module):
    out[f"{name}/scale"] = _np(module.weight)
    out[f"{name}/bias"] = _np(module.bias)

  def conv1d(name, module):  # Conv1D weight is already [in, out]
    out[f"{name}/kernel"] = _np(module.weight)
    out[f"{name}/bias"] = _np(module.bias)

  for i, block in enumerate(t.h):
    p = f"decoder/layers_{i}"
    norm(f"{p}/pre_self_attention_layer_norm", block.ln_1)
    qkv_w, qkv_b = _np(block.attn.c_attn.weight), _np(block.attn.c_attn.bias)
    for k, name in enumerate(("query", "key", "value")):
      out[f"{p}/self_attention/{name}/kernel"] = qkv_w[:, k * e:(k + 1) * e]
      out[f"{p}/self_attention/{name}/bias"] = qkv_b[k * e:(k + 1) * e]
    conv1d(f"{p}/self_attention/out", block.attn.c_proj)
    norm(f"{p}/pre_mlp_layer_norm", block.ln_2)
    conv1d(f"{p}/mlp/wi", block.mlp.c_fc)
    conv1d(f"{p}/mlp/wo", block.mlp.c_proj)
  norm("decoder/decoder_norm", t.ln_f)
  if model.lm_head.weight is not t.wte.weight:
    out["decoder/logits_dense/kernel"] = _np(model.lm_head.weight).T
  return out


def _expected(kind, model):
  return _gpt2_expected(model) if kind == "gpt2" else _t5_expected(model)


def _assert_matches(params, expected):
  assert sorted(params) == sorted(expected)
  for name, want in expected.items():
    got = lazy.read_all(params[name])
    assert got.shape == params[name].shape == want.shape, name
    np.testing.assert_array_equal(got.astype(np.float32), want, err_msg=name)


def _rewrite_safetensors(path, change):
  """Applies `change(dict of numpy arrays)` to a float32 model.safetensors."""
  file = os.path.join(path, "model.safetensors")
  params = hf._safetensors_arrays(file)  # pylint: disable=protected-access
  arrays = {k: lazy.read_all(v) for k, v in params.items()}
  change(arrays)
  save_file(arrays, file, metadata={"format": "pt"})


def _edit_config(path, **changes):
  file = os.path.join(path, "config.json")
  with open(file) as f:
    config = json.load(f)
  config.update(changes)
  for k in [k for k, v in changes.items() if v is None]:
    del config[k]
  with open(file, "w") as f:
    json.dump(config, f)


# --- config.json -----------------------------------------------------------


def test_config_t5_v1_1(tmp_path):
  _, path = hf_models.tiny_t5_v1_1(tmp_path)
  config, _ = hf.read_hf_checkpoint(path)
  assert config.architecture == "encoder_decoder"
  assert (config.vocab_size, config.emb_dim, config.num_heads, config.head_dim,
          config.mlp_dim) == (128, 16, 4, 4, 32)
  assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 2)
  assert config.mlp_activations == ("gelu", "linear")
  assert (config.relative_attention_num_buckets,
          config.relative_attention_max_distance) == (8, 20)
  assert config.norm == "rms" and config.norm_epsilon == 1e-6
  assert not config.use_bias and not config.scale_attention_logits
  assert not config.logits_via_embedding


def test_config_t5_v1_0(tmp_path):
  _, path = hf_models.tiny_t5_v1_0(tmp_path)
  config, _ = hf.read_hf_checkpoint(path)
  assert config.mlp_activations == ("relu",)
  assert config.logits_via_embedding and config.scale_tied_logits


def test_config_gpt2(tmp_path):
  _, path = hf_models.tiny_gpt2(tmp_path)
  config, _ = hf.read_hf_checkpoint(path)
  assert config.architecture == "decoder_only"
  assert (config.vocab_size, config.emb_dim, config.num_heads, config.head_dim,
          config.mlp_dim, config.num_decoder_layers,
          config.max_position_embeddings) == (128, 16, 4, 4, 64, 2, 64)
  assert config.mlp_activations == ("gelu_new",)
  assert config.norm == "layer" and config.norm_epsilon == 1e-5
  assert config.use_bias and config.position_embedding == "absolute"
  assert config.scale_attention_logits
  assert config.logits_via_embedding and not config.scale_tied_logits


# Hub configs written by transformers 4 (no scale_decoder_outputs).
_V4_T5 = {"model_type": "t5", "vocab_size": 32128, "d_model": 512,
          "d_kv": 64, "d_ff": 1024, "num_heads": 6, "num_layers": 8,
          "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}


def test_config_transformers4_t5_v1_1_matches_preset():
  assert hf.config_from_hf(_V4_T5) == configs.t5_1_1("small")
  mt5 = {**_V4_T5, "model_type": "mt5", "vocab_size": 250112}
  assert hf.config_from_hf(mt5) == configs.mt5("small")


def test_config_transformers4_t5_v1_0():
  # t5-small's config.json: relu, no tie_word_embeddings (defaults to True),
  # no relative_attention_max_distance (defaults to 128).
  config = hf.config_from_hf({
      "model_type": "t5", "vocab_size": 32128, "d_model": 512, "d_kv": 64,
      "d_ff": 2048, "num_heads": 8, "num_layers": 6,
      "feed_forward_proj": "relu"})
  assert config.mlp_activations == ("relu",)
  assert config.logits_via_embedding and config.scale_tied_logits
  assert config.relative_attention_max_distance == 128
  assert config.num_decoder_layers == 6


@pytest.mark.parametrize("proj,activations", [
    ("relu", ("relu",)), ("gelu", ("gelu_exact",)),
    ("gated-gelu", ("gelu", "linear")), ("gated-relu", ("relu", "linear")),
    ("gated-silu", ("silu", "linear"))])
def test_config_t5_activations(proj, activations):
  config = hf.config_from_hf({**_V4_T5, "feed_forward_proj": proj})
  assert config.mlp_activations == activations


def test_config_t5_tying_follows_weights():
  # transformers 5 configs always say tie_word_embeddings=true; whether the
  # head is tied is decided by scale_decoder_outputs and the stored tensors.
  v5 = {**_V4_T5, "tie_word_embeddings": True, "scale_decoder_outputs": False}
  assert not hf.config_from_hf(v5).logits_via_embedding
  assert not hf.config_from_hf(v5, ["lm_head.weight"]).logits_via_embedding
  tied = hf.config_from_hf(v5, ["shared.weight"])
  assert tied.logits_via_embedding and not tied.scale_tied_logits
  v1_0 = {**v5, "scale_decoder_outputs": True}
  for names in (None, ["lm_head.weight"], []):
    config = hf.config_from_hf(v1_0, names)
    assert config.logits_via_embedding and config.scale_tied_logits


def test_config_errors():
  with pytest.raises(NotImplementedError, match="umt5"):
    hf.config_from_hf({**_V4_T5, "model_type": "umt5"})
  with pytest.raises(ValueError, match="'llama'.*t5, mt5, gpt2"):
    hf.config_from_hf({"model_type": "llama"})
  with pytest.raises(ValueError, match="feed_forward_proj"):
    hf.config_from_hf({**_V4_T5, "feed_forward_proj": "gated-tanh"})
  gpt2 = {"model_type": "gpt2", "n_embd": 16, "n_head": 4}
  for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
    with pytest.raises(NotImplementedError, match=flag):
      hf.config_from_hf({**gpt2, flag: True})
  with pytest.raises(ValueError, match="activation_function"):
    hf.config_from_hf({**gpt2, "activation_function": "tanh"})


# --- weights ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", hf_models.FORMATS)
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_every_param_maps_exactly(tmp_path, kind, fmt):
  model, path = BUILDERS[kind](tmp_path, fmt)
  assert hf.is_hf_checkpoint(path)
  config, params = hf.read_hf_checkpoint(path)
  assert config.logits_via_embedding == (kind != "t5_v1_1")
  if fmt.startswith("bf16"):
    assert all(p.dtype == np.dtype("bfloat16") for p in params.values())
  else:
    assert all(p.dtype == np.float32 for p in params.values())
  _assert_matches(params, _expected(kind, model))


def test_t5_v1_1_head_really_untied(tmp_path):
  model, path = hf_models.tiny_t5_v1_1(tmp_path, "bin")
  state = torch.load(os.path.join(path, "pytorch_model.bin"),
                     weights_only=True)
  assert not torch.equal(state["lm_head.weight"], state["shared.weight"])
  _, params = hf.read_hf_checkpoint(path)
  np.testing.assert_array_equal(
      lazy.read_all(params["decoder/logits_dense/kernel"]),
      _np(model.lm_head.weight).T)


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "bf16", "bf16_bin"])
@pytest.mark.parametrize("kind,name", [
    ("t5_v1_1", "encoder/layers_1/attention/query/kernel"),  # Transposed
    ("t5_v1_1", "decoder/logits_dense/kernel"),
    ("t5_v1_1", "token_embedder/embedding"),
    ("gpt2", "decoder/layers_0/self_attention/value/kernel"),  # Sliced
    ("gpt2", "decoder/layers_1/self_attention/key/bias"),
    ("gpt2", "decoder/position_embedder/embedding"),
])
def test_sliced_read_equals_slice_of_full_read(tmp_path, kind, name, fmt):
  _, path = BUILDERS[kind](tmp_path, fmt)
  _, params = hf.read_hf_checkpoint(path)
  array = params[name]
  full = lazy.read_all(array)
  index = tuple(slice(1, n - 2) for n in array.shape)
  part = array.read(index)
  assert part.dtype == full.dtype
  np.testing.assert_array_equal(part, full[index])
  np.testing.assert_array_equal(array.read((slice(0, 1),)), full[:1])


def test_gpt2_old_names_and_buffers(tmp_path):
  """Old GPT-2 checkpoints: no "transformer." prefix, attention-mask buffers."""
  model, path = hf_models.tiny_gpt2(tmp_path)

  def strip(arrays):
    for k in list(arrays):
      arrays[k.removeprefix("transformer.")] = arrays.pop(k)
    arrays["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
    arrays["h.0.attn.masked_bias"] = np.array(-1e4, np.float32)

  _rewrite_safetensors(path, strip)
  _, params = hf.read_hf_checkpoint(path)
  _assert_matches(params, _gpt2_expected(model))


def test_gpt2_untied_head(tmp_path):
  model, path = hf_models.tiny_gpt2(tmp_path)
  head = np.random.RandomState(0).randn(128, 16).astype(np.float32)
  _rewrite_safetensors(path, lambda a: a.update({"lm_head.weight": head}))
  _edit_config(path, tie_word_embeddings=False)
  config, params = hf.read_hf_checkpoint(path)
  assert not config.logits_via_embedding
  expected = {**_gpt2_expected(model), "decoder/logits_dense/kernel": head.T}
  _assert_matches(params, expected)


def test_t5_v1_1_transformers4_config(tmp_path):
  """The same weights under a hub-style (transformers 4) config.json."""
  model, path = hf_models.tiny_t5_v1_1(tmp_path)
  _edit_config(path, tie_word_embeddings=False, scale_decoder_outputs=None)
  config, params = hf.read_hf_checkpoint(path)
  assert not config.logits_via_embedding
  _assert_matches(params, _t5_expected(model))


# --- errors ----------------------------------------------------------------


def test_is_hf_checkpoint(tmp_path):
  assert not hf.is_hf_checkpoint(tmp_path / "nowhere")
  assert not hf.is_hf_checkpoint(tmp_path)
  (tmp_path / "config.json").write_text("{}")
  assert not hf.is_hf_checkpoint(tmp_path)  # no weights


def test_missing_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.read_hf_checkpoint(tmp_path / "nowhere")


def test_unknown_model_type(tmp_path):
  _, path = hf_models.tiny_gpt2(tmp_path)
  _edit_config(path, model_type="bert")
  with pytest.raises(ValueError, match="'bert'"):
    hf.read_hf_checkpoint(path)


def test_missing_tensor(tmp_path):
  _, path = hf_models.tiny_t5_v1_0(tmp_path)
  name = "decoder.block.1.layer.1.EncDecAttention.k.weight"
  _rewrite_safetensors(path, lambda a: a.pop(name))
  with pytest.raises(ValueError, match=(
      f"{name}.*decoder/layers_1/encoder_decoder_attention/key/kernel")):
    hf.read_hf_checkpoint(path)


def test_wrong_shape(tmp_path):
  _, path = hf_models.tiny_t5_v1_0(tmp_path)
  _edit_config(path, d_ff=64)
  with pytest.raises(ValueError, match=r"encoder/layers_0/mlp/wi/kernel.*64"):
    hf.read_hf_checkpoint(path)


def test_bin_without_torch(tmp_path, monkeypatch):
  _, path = hf_models.tiny_gpt2(tmp_path, "bin")
  monkeypatch.setitem(__import__("sys").modules, "torch", None)
  with pytest.raises(ImportError, match="pip install torch"):
    hf.read_hf_checkpoint(path)

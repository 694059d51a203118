"""Networks: logical axes on every parameter, dtypes, the attention primitive,
and T5's position buckets against the Hugging Face formula."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import partitioning
from prompt_tuning.models import attention
from prompt_tuning.models import configs
from prompt_tuning.models import layers

TINY = {
    "t5_1_1": configs.t5_1_1("tiny", vocab_size=64),
    "t5_1_0": configs.t5_1_0("small", vocab_size=64, emb_dim=8, num_heads=2,
                             head_dim=4, mlp_dim=16, num_encoder_layers=1,
                             num_decoder_layers=1),
    "decoder_only": configs.t5_1_1("tiny", vocab_size=64,
                                   architecture="decoder_only",
                                   prefix_lm=True),
    "gpt2": configs.gpt2("small", vocab_size=64, emb_dim=8, num_heads=2,
                         head_dim=4, mlp_dim=32, num_decoder_layers=2,
                         max_position_embeddings=16),
}


def _init(config):
  model = pt.build_model(config)
  shapes = {"encoder_input_tokens": (2, 5), "decoder_input_tokens": (2, 5)}
  return model, model.get_initial_variables(jax.random.PRNGKey(0), shapes)


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_param_has_logical_axis_names(name):
  _, variables = _init(TINY[name])
  known = {logical for logical, _ in partitioning.LOGICAL_AXIS_RULES}
  flat = flax.traverse_util.flatten_dict(
      variables["params"], sep="/",
      is_leaf=lambda _, x: isinstance(x, nn.LogicallyPartitioned))
  assert flat
  for path, leaf in flat.items():
    assert isinstance(leaf, nn.LogicallyPartitioned), path
    assert len(leaf.names) == leaf.value.ndim, (path, leaf.names)
    assert set(leaf.names) <= known, (path, leaf.names)
    assert leaf.value.dtype == jnp.float32, path


def test_t5x_names_of_encoder_decoder():
  _, variables = _init(TINY["t5_1_1"])
  names = set(flax.traverse_util.flatten_dict(
      nn.meta.unbox(variables["params"]), sep="/"))
  for expected in ("token_embedder/embedding",
                   "encoder/relpos_bias/rel_embedding",
                   "encoder/layers_1/attention/query/kernel",
                   "encoder/layers_0/mlp/wi_1/kernel",
                   "encoder/encoder_norm/scale",
                   "decoder/layers_0/encoder_decoder_attention/out/kernel",
                   "decoder/layers_1/pre_cross_attention_layer_norm/scale",
                   "decoder/logits_dense/kernel"):
    assert expected in names


def test_tied_models_have_no_logits_dense():
  for name in ("t5_1_0", "gpt2"):
    _, variables = _init(TINY[name])
    names = flax.traverse_util.flatten_dict(
        nn.meta.unbox(variables["params"]), sep="/")
    assert not any("logits_dense" in n for n in names), name


@pytest.mark.parametrize("name", ["t5_1_1", "gpt2"])
def test_bfloat16_activations_keep_float32_params(name):
  model32, variables = _init(TINY[name])
  model16 = pt.build_model(TINY[name].replace(dtype="bfloat16"))
  params = nn.meta.unbox(variables["params"])
  tokens = np.array([[3, 4, 5, 6, 1], [7, 8, 1, 0, 0]], np.int32)
  batch = {"encoder_input_tokens": tokens, "decoder_input_tokens": tokens,
           "decoder_target_tokens": tokens}
  logits16 = model16.compute_logits(params, batch)
  logits32 = model32.compute_logits(params, batch)
  assert logits16.dtype == jnp.float32  # logits are upcast for the loss
  assert not np.allclose(logits16, logits32, atol=1e-6)  # really bf16 math
  np.testing.assert_allclose(logits16, logits32, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("bad, message", [
    (dict(emb_dim=0), "emb_dim"),
    (dict(mlp_activations=("tanh",)), "mlp_activations"),
    (dict(norm="batch"), "norm"),
    (dict(dtype="float33"), "dtype"),
    (dict(prefix_lm=True), "prefix_lm"),
])
def test_config_rejects_bad_values(bad, message):
  with pytest.raises(ValueError, match=message):
    configs.t5_1_1("tiny", **bad)


def test_attention_prefix_equals_attending_to_concatenated_keys():
  """An external KV prefix acts exactly like extra keys before the inputs."""
  module = attention.MultiHeadAttention(num_heads=2, head_dim=3)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 4, 6)), jnp.float32)
  prefix = attention.KeyValue(
      jnp.asarray(rng.normal(size=(2, 3, 2, 3)), jnp.float32),
      jnp.asarray(rng.normal(size=(2, 3, 2, 3)), jnp.float32))
  variables = module.init(jax.random.PRNGKey(0), x, x)
  mask = jnp.asarray(rng.random((2, 1, 4, 7)) > 0.3).at[..., 3].set(True)
  bias = jnp.asarray(rng.normal(size=(2, 2, 4, 7)), jnp.float32)
  out, kv = module.apply(variables, x, x, mask=mask, bias=bias,
                         kv_prefix=prefix)

  p = nn.meta.unbox(variables["params"])
  split = lambda y: y.reshape(2, 4, 2, 3)
  q = split(x @ p["query"]["kernel"])
  k = jnp.concatenate([prefix.key, split(x @ p["key"]["kernel"])], axis=1)
  v = jnp.concatenate([prefix.value, split(x @ p["value"]["kernel"])], axis=1)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) + bias
  weights = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
  expected = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(2, 4, 6)
  expected = expected @ p["out"]["kernel"]
  np.testing.assert_allclose(out, expected, atol=1e-5)
  # The returned KV is this call's own projection, without the prefix.
  np.testing.assert_allclose(kv.key, k[:, 3:], atol=1e-6)


def test_gpt2_attention_scales_logits_and_t5_does_not():
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 2, 1, 4)), jnp.float32)
             for _ in range(3))
  plain = attention.dot_product_attention(q, k, v)
  scaled = attention.dot_product_attention(q, k, v, scale=0.5)
  w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) * 0.5, -1)
  np.testing.assert_allclose(scaled, jnp.einsum("bhqk,bkhd->bqhd", w, v),
                             atol=1e-6)
  assert not np.allclose(plain, scaled)


def _hf_bucket(relative_position, bidirectional, num_buckets, max_distance):
  torch = pytest.importorskip("torch")
  from transformers.models.t5 import modeling_t5  # pylint: disable=g-import-not-at-top
  return modeling_t5.T5Attention._relative_position_bucket(
      torch.tensor(relative_position), bidirectional=bidirectional,
      num_buckets=num_buckets, max_distance=max_distance).numpy()


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20)])
def test_relative_position_buckets_match_hf(bidirectional, num_buckets,
                                            max_distance):
  relative = np.arange(-300, 301)[None, :]
  ours = layers.relative_position_bucket(
      jnp.asarray(relative), bidirectional=bidirectional,
      num_buckets=num_buckets, max_distance=max_distance)
  np.testing.assert_array_equal(
      np.asarray(ours),
      _hf_bucket(relative, bidirectional, num_buckets, max_distance))


@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_norms_match_torch_where_epsilon_matters(kind):
  """Inputs with variance near epsilon make every term of the formula count."""
  torch = pytest.importorskip("torch")
  from transformers.models.t5 import modeling_t5  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(3, 5, 8)) * 1e-3 + 2e-4).astype(np.float32)
  scale = rng.normal(size=(8,)).astype(np.float32)
  bias = rng.normal(size=(8,)).astype(np.float32)
  epsilon = 1e-6
  if kind == "rms":
    ref_module = modeling_t5.T5LayerNorm(8, eps=epsilon)
    params = {"scale": scale}
  else:
    ref_module = torch.nn.LayerNorm(8, eps=epsilon)
    ref_module.bias.data = torch.tensor(bias)
    params = {"scale": scale, "bias": bias}
  ref_module.weight.data = torch.tensor(scale)
  with torch.no_grad():
    ref = ref_module(torch.tensor(x)).numpy()
  ours = layers.Norm(kind, epsilon).apply({"params": params}, jnp.asarray(x))
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)

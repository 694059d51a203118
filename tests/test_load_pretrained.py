"""`pt.load_pretrained` over every format, and its errors."""

import os

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

import prompt_tuning as pt
from prompt_tuning.checkpoints import lazy
from prompt_tuning.checkpoints import loader
from prompt_tuning.checkpoints import orbax_params
from prompt_tuning.checkpoints import t5x
from prompt_tuning.models import configs

FIXTURE = "t5x_t5_1_1_tiny/checkpoint_3"


def _flat(params):
  return flax.traverse_util.flatten_dict(params, sep="/")


def test_t5x_fixture_loads_exact_values_and_runs(shared_fixtures):
  path = str(shared_fixtures / FIXTURE)
  model, variables = pt.load_pretrained(path, config="t5_1_1_tiny")
  stored = t5x.read_t5x_checkpoint(path)
  params = _flat(variables["params"])
  assert set(params) == set(stored)
  for name, array in stored.items():
    np.testing.assert_array_equal(np.asarray(params[name]),
                                  lazy.read_all(array), err_msg=name)
  batch = {"encoder_input_tokens": np.array([[37, 423, 1, 0]], np.int32),
           "decoder_input_tokens": np.array([[0, 71, 1]], np.int32),
           "decoder_target_tokens": np.array([[71, 1, 0]], np.int32)}
  logits = model.compute_logits(variables["params"], batch)
  assert logits.shape == (1, 3, 32128) and np.isfinite(logits).all()
  score = model.score_batch(variables["params"], batch)
  assert score.shape == (1,) and float(score[0]) < 0


def test_t5x_checkpoint_file_or_a_file_inside_loads_as_the_dir(
    shared_fixtures):
  ckpt = shared_fixtures / FIXTURE
  _, want = pt.load_pretrained(str(ckpt), config="t5_1_1_tiny")
  for inside in (ckpt / "checkpoint",
                 ckpt / "target.token_embedder.embedding" / ".zarray"):
    assert loader.detect_format(str(inside)) == "t5x"
    _, got = pt.load_pretrained(str(inside), config="t5_1_1_tiny")
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_t5x_architecture_is_inferred_from_shapes(shared_fixtures):
  stored = t5x.read_t5x_checkpoint(str(shared_fixtures / FIXTURE))
  inferred = loader.infer_t5x_config({n: a.shape for n, a in stored.items()})
  # Everything but max_distance, which T5X never stores, comes from shapes.
  assert inferred == configs.from_gin("t5_1_1_tiny").replace(
      relative_attention_max_distance=128)


def _random_params(config):
  model = pt.build_model(config)
  return jax.device_get(flax.linen.meta.unbox(model.get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 2),
                              "decoder_input_tokens": (1, 2)})["params"]))


def test_bfloat16_t5x_checkpoint_loads_into_bfloat16(tmp_path):
  config = configs.t5_1_1("tiny", vocab_size=64)
  params = _random_params(config)
  path = t5x.write_t5x_checkpoint(params, str(tmp_path / "checkpoint_1"),
                                  dtype="bfloat16", compression="zstd")
  _, variables = pt.load_pretrained(path, config=config,
                                    param_dtype="bfloat16")
  for name, value in _flat(variables["params"]).items():
    assert value.dtype == jnp.bfloat16, name
    np.testing.assert_array_equal(
        np.asarray(value), _flat(params)[name].astype(jnp.bfloat16))


def test_orbax_round_trip_keeps_values_and_config(tmp_path, hf_tmp):
  torch = pytest.importorskip("torch")
  del torch
  import hf_models  # pylint: disable=g-import-not-at-top
  _, hf_path = hf_models.tiny_gpt2(hf_tmp)
  model, variables = pt.load_pretrained(hf_path)
  orbax_path = str(tmp_path / "gpt2_orbax")
  orbax_params.save_params(orbax_path, variables["params"], model.config)
  assert loader.detect_format(orbax_path) == "orbax"
  # Older Orbax also wrote a msgpack 'checkpoint' file; still Orbax, not T5X.
  with open(os.path.join(orbax_path, "checkpoint"), "wb") as f:
    f.write(serialization.msgpack_serialize({"params": "PLACEHOLDER://x"}))
  assert loader.detect_format(orbax_path) == "orbax"
  loaded_model, loaded = pt.load_pretrained(orbax_path)
  assert loaded_model.config == model.config
  for name, value in _flat(variables["params"]).items():
    np.testing.assert_array_equal(_flat(loaded["params"])[name], value)
  with pytest.raises(FileExistsError, match="never overwritten"):
    orbax_params.save_params(orbax_path, variables["params"], model.config)


def test_from_gin_does_not_touch_global_gin_state():
  with gin.unlock_config():
    gin.bind_parameter("TransformerConfig.emb_dim", 1234)
  try:
    assert configs.from_gin("t5_1_1_small").emb_dim == 512
    assert configs.TransformerConfig().emb_dim == 1234
  finally:
    with gin.unlock_config():
      gin.clear_config()


def test_shipped_gin_models_match_presets():
  assert configs.from_gin("t5_1_1_base") == configs.t5_1_1("base")
  assert configs.from_gin("mt5_xl") == configs.mt5("xl")
  assert configs.from_gin("gpt2_medium") == configs.gpt2("medium")
  assert configs.from_gin("mgpt") == configs.mgpt()
  assert configs.t5_1_1("base", vocab_size=64) == configs.from_gin(
      "t5_1_1_base").replace(vocab_size=64)


# The published sizes (T5.1.1 / mT5 release configs; GPT-2's config.json):
# (emb_dim, num_heads, head_dim, mlp_dim, layers per stack, vocab_size).
_T5_1_1 = {"small": (512, 6, 64, 1024, 8), "base": (768, 12, 64, 2048, 12),
           "large": (1024, 16, 64, 2816, 24), "xl": (2048, 32, 64, 5120, 24),
           "xxl": (4096, 64, 64, 10240, 24)}
_GPT2 = {"small": (768, 12, 12), "medium": (1024, 16, 24),
         "large": (1280, 20, 36), "xl": (1600, 25, 48)}
PUBLISHED = {
    **{("t5_1_1", s): (*v, 32128) for s, v in _T5_1_1.items()},
    **{("mt5", s): (*v, 250112) for s, v in _T5_1_1.items()},
    **{("gpt2", s): (e, h, e // h, 4 * e, n, 50257)
       for s, (e, h, n) in _GPT2.items()},
}


@pytest.mark.parametrize("family,size", sorted(PUBLISHED))
def test_presets_have_the_published_sizes(family, size):
  config = getattr(configs, family)(size)
  emb, heads, head_dim, mlp, layers, vocab = PUBLISHED[family, size]
  assert (config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim,
          config.num_decoder_layers, config.vocab_size) == (
              emb, heads, head_dim, mlp, layers, vocab)
  if family == "gpt2":
    assert config.architecture == "decoder_only"
    assert config.num_encoder_layers == 0
    assert config.max_position_embeddings == 1024
    assert config.mlp_activations == ("gelu_new",) and config.norm == "layer"
  else:
    assert config.architecture == "encoder_decoder"
    assert config.num_encoder_layers == layers
    assert config.mlp_activations == ("gelu", "linear")
    assert config.norm == "rms" and not config.logits_via_embedding


def test_mgpt_is_gpt2_medium_over_the_mt5_vocabulary():
  assert configs.mgpt() == configs.gpt2("medium", vocab_size=250100)
  assert configs.mgpt(dropout_rate=0.1).dropout_rate == 0.1


@pytest.mark.parametrize("factory", [configs.t5_1_1, configs.mt5,
                                     configs.gpt2, configs.t5_1_0])
def test_unknown_size_lists_the_known_ones(factory):
  with pytest.raises(ValueError, match=r"size='huge'; known sizes: \['"):
    factory("huge")
  with pytest.raises(ValueError, match="'large'"):
    factory("huge")


def test_from_gin_follows_includes_and_later_bindings_win(tmp_path):
  (tmp_path / "narrow.gin").write_text(
      "include 'models/t5_1_1_small.gin'\n"
      "TransformerConfig.emb_dim = 256\n")
  (tmp_path / "mine.gin").write_text(
      "import prompt_tuning.models.configs\n"
      "include 'narrow.gin'  # next to this file\n"
      "MODEL_CONFIG = @TransformerConfig()\n"
      "train/TransformerConfig.dropout_rate = 0.5  # scoped: not ours\n"
      "configs.TransformerConfig.mlp_activations = ('relu',)\n"
      "TransformerConfig:\n"
      "  num_heads = 4\n"
      "  emb_dim = 128\n")
  assert configs.from_gin(str(tmp_path / "mine.gin")) == configs.t5_1_1(
      "small", emb_dim=128, num_heads=4, mlp_activations=("relu",))


def test_from_gin_rejects_a_macro_naming_file_and_binding(tmp_path):
  path = tmp_path / "macro.gin"
  path.write_text("include 'models/t5_1_1_small.gin'\n"
                  "WIDTH = 256\n"
                  "TransformerConfig.emb_dim = %WIDTH\n")
  with pytest.raises(ValueError) as error:
    configs.from_gin(str(path))
  message = str(error.value)
  assert "TransformerConfig.emb_dim = %WIDTH" in message
  assert f"{path}, line 3" in message and "not a literal" in message


def test_from_gin_names_a_missing_include_and_an_unknown_field(tmp_path):
  missing = tmp_path / "missing.gin"
  missing.write_text("include 'models/t5_1_1_nope.gin'\n")
  with pytest.raises(FileNotFoundError, match="t5_1_1_nope.gin.*line 1"):
    configs.from_gin(str(missing))
  typo = tmp_path / "typo.gin"
  typo.write_text("TransformerConfig.emb_dimm = 8\n")
  with pytest.raises(ValueError, match="no field 'emb_dimm'"):
    configs.from_gin(str(typo))


def test_missing_path_is_named(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="nope.*does not exist"):
    pt.load_pretrained(missing)


def test_unknown_format_is_named(tmp_path):
  (tmp_path / "weights.txt").write_text("hello")
  with pytest.raises(ValueError, match="unknown checkpoint format.*weights"):
    pt.load_pretrained(str(tmp_path))


def test_unknown_gin_model_lists_shipped_ones(shared_fixtures):
  with pytest.raises(FileNotFoundError, match="t5_1_1_tiny"):
    pt.load_pretrained(str(shared_fixtures / FIXTURE), config="t5_9_tiny")


def test_shape_mismatch_names_parameter_and_both_shapes(shared_fixtures):
  wrong = configs.from_gin("t5_1_1_tiny").replace(mlp_dim=16)
  with pytest.raises(ValueError) as error:
    pt.load_pretrained(str(shared_fixtures / FIXTURE), config=wrong)
  assert ("encoder/layers_0/mlp/wi_0/kernel: checkpoint has shape (4, 8), "
          "the model expects (4, 16)") in str(error.value)


def test_missing_parameter_is_named(shared_fixtures):
  tied = configs.from_gin("t5_1_1_tiny").replace(logits_via_embedding=True)
  with pytest.raises(ValueError, match="unexpected decoder/logits_dense"):
    pt.load_pretrained(str(shared_fixtures / FIXTURE), config=tied)


def test_integer_weights_are_a_dtype_error(tmp_path):
  config = configs.t5_1_1("tiny", vocab_size=64)
  params = _random_params(config)
  params["encoder"]["encoder_norm"]["scale"] = np.ones((4,), np.int32)
  path = t5x.write_t5x_checkpoint(params, os.path.join(tmp_path, "c_1"))
  with pytest.raises(TypeError, match="encoder/encoder_norm/scale.*int32"):
    pt.load_pretrained(path, config=config)


def test_method_params_are_initialised_from_the_loaded_base(shared_fixtures):
  """The base loads untouched; a sampled-vocabulary prompt is made of rows
  of the checkpoint's own embedding table."""
  path = str(shared_fixtures / FIXTURE)
  _, plain = pt.load_pretrained(path, config="t5_1_1_tiny")
  model, variables = pt.load_pretrained(
      path, config="t5_1_1_tiny", method=pt.PromptTuning(
          length=5, initializer=pt.initializers.from_sampled_vocab(20)))
  params = variables["params"]
  assert model.trainable_patterns == (r"prompt/.*",)
  flat = flax.traverse_util.flatten_dict(plain["params"], sep="/")
  for name, value in flax.traverse_util.flatten_dict(params, sep="/").items():
    if name != "prompt/prompt":
      np.testing.assert_array_equal(value, flat[name])
  table = np.asarray(flat["token_embedder/embedding"])[:20]
  for row in np.asarray(params["prompt"]["prompt"]):
    assert np.any(np.all(table == row, axis=1))

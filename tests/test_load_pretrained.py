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

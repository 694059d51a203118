"""`export_prompt`: npy round trips, atomic writes and refused combinations.

Tiny randomly initialised models (no torch): what matters here is that an
exported prompt or prefix, read back, scores exactly as before, and that a
failed export never damages an earlier one. PEFT loading itself is checked
against real PEFT in test_peft_parity.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import files
from prompt_tuning.checkpoints import export
from prompt_tuning.methods import initializers
from prompt_tuning.methods import prefix_tuning
from prompt_tuning.methods.model_tuning import ModelTuning
from prompt_tuning.methods.msp import MultiStagePrompting
from prompt_tuning.methods.multitask import MultiTaskPrompt
from prompt_tuning.methods.prefix_tuning import PrefixTuning
from prompt_tuning.methods.soft_prompt import PromptTuning

P = 3

T5 = pt.TransformerConfig(
    architecture="encoder_decoder", vocab_size=64, emb_dim=16, num_heads=4,
    head_dim=4, mlp_dim=32, num_encoder_layers=2, num_decoder_layers=2,
    relative_attention_num_buckets=8, relative_attention_max_distance=20)
T5_3 = dataclasses.replace(T5, num_decoder_layers=3)
GPT2 = pt.TransformerConfig(
    architecture="decoder_only", vocab_size=64, emb_dim=16, num_heads=4,
    head_dim=4, mlp_dim=32, num_encoder_layers=0, num_decoder_layers=2,
    mlp_activations=("gelu_new",), norm="layer", norm_epsilon=1e-5,
    use_bias=True, position_embedding="absolute", max_position_embeddings=32,
    logits_via_embedding=True, scale_tied_logits=False,
    scale_attention_logits=True)
MSP = MultiStagePrompting(length=P, separator_id=3)  # in the tiny vocabulary
# A T5X-style decoder-only LM: no transformers counterpart.
T5X_LM = dataclasses.replace(GPT2, norm="rms", use_bias=False,
                             position_embedding="relative", prefix_lm=True)


def _batch(config):
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, 64, (3, 8)).astype(np.int32)
  for i, n in enumerate([8, 5, 2]):
    tokens[i, n:] = 0
  if config.architecture == "encoder_decoder":
    targets = tokens[:, :6]
    return {"encoder_input_tokens": tokens,
            "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
            "decoder_target_tokens": targets,
            "decoder_loss_weights": (targets > 0).astype(np.float32)}
  return {"decoder_input_tokens": tokens,
          "decoder_target_tokens": np.pad(tokens[:, 1:], ((0, 0), (0, 1))),
          "decoder_loss_weights": (tokens > 0).astype(np.float32),
          "decoder_causal_attention": np.pad(tokens[:, :3] > 0,
                                             ((0, 0), (0, 5))).astype(np.int32)}


def _init(config, method, seed=0):
  """(model, {"params": unboxed}) with random base weights."""
  model = pt.build_model(config, method=method)
  shapes = {k: (1, 4) for k in ("encoder_input_tokens", "decoder_input_tokens")
            if k in model.FEATURES}
  variables = model.get_initial_variables(jax.random.PRNGKey(seed), shapes)
  return model, {"params": flax.linen.meta.unbox(variables["params"])}


def _scores(model, variables, config):
  # Eager on purpose: op compilations are cached across the many small
  # models here, where each jit would compile a whole model anew.
  return np.asarray(model.score_batch(variables["params"], _batch(config)))


def _without(params, name):
  return {k: v for k, v in params.items() if k != name}


def _snapshot(directory):
  return {n: open(os.path.join(directory, n), "rb").read()
          for n in sorted(os.listdir(directory))}


# ----------------------------------------------------------------------------
# npy round trips.


@pytest.mark.parametrize("config", [T5, GPT2], ids=["t5", "gpt2"])
def test_npy_prompt_round_trip_scores_identically(config, tmp_path):
  model, variables = _init(config, PromptTuning(
      length=P, initializer=initializers.normal(1.0)))
  want = _scores(model, variables, config)
  export.export_prompt(variables, tmp_path, format="npy")
  path = tmp_path / export.PROMPT_FILE
  # What prompt-tuning's extract_variable writes: np.save of [P, H] float32.
  stored = np.load(path)
  assert stored.dtype == np.float32 and stored.shape == (P, 16)
  np.testing.assert_array_equal(stored, variables["params"]["prompt"]["prompt"])

  served = pt.build_model(config, method=PromptTuning.from_file(path))
  base = _without(variables["params"], "prompt")
  np.testing.assert_array_equal(
      _scores(served, {"params": base}, config), want)

  loaded = initializers.from_npy(path)(jax.random.PRNGKey(0), (P, 16))
  np.testing.assert_array_equal(loaded, stored)
  np.testing.assert_array_equal(
      _scores(model, {"params": {**base, "prompt": {"prompt": loaded}}},
              config), want)


def test_npy_export_of_a_served_prompt_writes_the_constant(tmp_path):
  prompt = np.random.default_rng(1).standard_normal((P, 16)).astype(
      np.float32)
  model, variables = _init(T5, PromptTuning(prompt=prompt))
  assert "prompt" not in variables["params"]
  export.export_prompt(variables, tmp_path, model=model)
  np.testing.assert_array_equal(np.load(tmp_path / export.PROMPT_FILE), prompt)


def test_npy_prefix_tables_are_folded_and_round_trip(tmp_path):
  method = PrefixTuning(length=P, reparameterization="mlp", mlp_dim=8,
                        initializer=initializers.normal(1.0))
  model, variables = _init(T5_3, method)
  want = _scores(model, variables, T5_3)
  with pytest.raises(ValueError, match="model="):
    export.export_prompt(variables, tmp_path / "no_model")
  export.export_prompt(variables, tmp_path / "out", model=model)
  names = sorted(os.listdir(tmp_path / "out"))
  assert names == sorted(export.prefix_file(k) for k in prefix_tuning.KINDS)
  encoder = np.load(tmp_path / "out" / export.prefix_file("encoder_self"))
  decoder = np.load(tmp_path / "out" / export.prefix_file("decoder_self"))
  assert encoder.shape == (2, 2, P, 4, 4)  # [layers, k/v, P, heads, dim]
  assert decoder.shape == (3, 2, P, 4, 4)

  folded_model, folded = prefix_tuning.fold(model, variables)
  params = dict(folded["params"])
  params["prefix"] = {
      kind: {"kv": np.load(tmp_path / "out" / export.prefix_file(kind))}
      for kind in prefix_tuning.KINDS}
  np.testing.assert_allclose(
      _scores(folded_model, {"params": params}, T5_3), want,
      rtol=1e-6, atol=1e-5)


def test_npy_prefix_table_initializes_a_direct_prefix(tmp_path):
  model, variables = _init(GPT2, PrefixTuning(
      length=P, initializer=initializers.normal(1.0)))
  want = _scores(model, variables, GPT2)
  export.export_prompt(variables["params"], tmp_path)  # params alone work
  path = tmp_path / export.prefix_file("decoder_self")
  table = initializers.from_npy(path)(jax.random.PRNGKey(0),
                                     (2, 2, P, 4, 4))
  params = {**variables["params"], "prefix": {"decoder_self": {"kv": table}}}
  np.testing.assert_array_equal(_scores(model, {"params": params}, GPT2), want)


# ----------------------------------------------------------------------------
# PEFT files (contents; loading is tested against PEFT in test_peft_parity).


def test_peft_prompt_adapter_files(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  model, variables = _init(T5, PromptTuning(length=P))
  export.export_prompt(variables, tmp_path, format="peft", model=model,
                       base_model_name_or_path="google/t5-v1_1-small")
  assert sorted(os.listdir(tmp_path)) == [export.PEFT_CONFIG_FILE,
                                          export.PEFT_WEIGHTS_FILE]
  config = json.loads((tmp_path / export.PEFT_CONFIG_FILE).read_text())
  assert config["peft_type"] == "PROMPT_TUNING"
  assert config["task_type"] == "SEQ_2_SEQ_LM"
  assert config["num_transformer_submodules"] == 1  # encoder prompt [P, H]
  assert config["num_virtual_tokens"] == P
  assert config["base_model_name_or_path"] == "google/t5-v1_1-small"
  weights = safetensors_numpy.load_file(
      str(tmp_path / export.PEFT_WEIGHTS_FILE))
  np.testing.assert_array_equal(weights["prompt_embeddings"],
                                variables["params"]["prompt"]["prompt"])


def test_peft_t5_prefix_slots_follow_peft_layer_mapping():
  # Layer i -> slot 2i mod layers: 3 layers [0, 2, 1] -> slots hold 0, 2, 1.
  table = np.arange(5, dtype=np.float32)[:, None, None, None, None] * np.ones(
      (5, 2, P, 4, 4), np.float32)
  np.testing.assert_array_equal(
      prefix_tuning._t5_peft_layer_order(table[:3])[:, 0, 0, 0, 0], [0, 2, 1])
  np.testing.assert_array_equal(
      prefix_tuning._t5_peft_layer_order(table)[:, 0, 0, 0, 0], [0, 3, 1, 4, 2])
  # Even depth: layers i and i + layers/2 share a slot; tied tables export.
  tied = np.concatenate([table[:2], table[:2]])
  np.testing.assert_array_equal(
      prefix_tuning._t5_peft_layer_order(tied)[:, 0, 0, 0, 0], [0, 0, 1, 0])


# ----------------------------------------------------------------------------
# Atomic writes.


def test_failed_write_leaves_previous_export_intact(tmp_path, monkeypatch):
  out = tmp_path / "out"
  model, variables = _init(T5, PrefixTuning(length=P))
  export.export_prompt(variables, out)
  before = _snapshot(out)
  _, other = _init(T5, PrefixTuning(length=P), seed=1)

  calls = []

  def failing_write(path, data):
    calls.append(path)
    if len(calls) == 2:
      raise OSError("disk full")
    with open(path, "wb") as f:
      f.write(data)

  monkeypatch.setattr(files, "write_synced", failing_write)
  with pytest.raises(OSError, match="disk full"):
    export.export_prompt(other, out, model=model)
  assert _snapshot(out) == before
  assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging dir left
  with pytest.raises(OSError, match="disk full"):
    calls.clear()
    export.export_prompt(other, tmp_path / "new")
  assert sorted(os.listdir(tmp_path)) == ["out"]  # no half-written new dir


def test_refused_export_leaves_previous_export_intact(tmp_path):
  out = tmp_path / "out"
  method = PrefixTuning(length=P, kinds=("decoder_self",))
  model, variables = _init(T5, method)
  tied = np.asarray(variables["params"]["prefix"]["decoder_self"]["kv"])
  tied = np.stack([tied[0], tied[0]])
  export.export_prompt({"params": {**variables["params"], "prefix": {
      "decoder_self": {"kv": tied}}}}, out, format="peft", model=model)
  before = _snapshot(out)
  with pytest.raises(ValueError, match="even number of decoder layers"):
    export.export_prompt(variables, out, format="peft", model=model)
  assert _snapshot(out) == before
  assert sorted(os.listdir(tmp_path)) == ["out"]


def test_reexport_replaces_own_files_and_keeps_others(tmp_path):
  model, variables = _init(T5, PrefixTuning(length=P))
  export.export_prompt(variables, tmp_path)
  (tmp_path / "notes.txt").write_text("mine")
  _, decoder_only = _init(T5, PrefixTuning(length=P, kinds=("decoder_self",)))
  export.export_prompt(decoder_only, tmp_path)
  assert sorted(os.listdir(tmp_path)) == ["notes.txt",
                                          export.prefix_file("decoder_self")]
  np.testing.assert_array_equal(
      np.load(tmp_path / export.prefix_file("decoder_self")),
      decoder_only["params"]["prefix"]["decoder_self"]["kv"])


def test_out_dir_that_is_a_file_is_refused(tmp_path):
  _, variables = _init(GPT2, PromptTuning(length=P))
  (tmp_path / "f").write_text("x")
  with pytest.raises(NotADirectoryError):
    export.export_prompt(variables, tmp_path / "f")


def test_import_needs_neither_torch_nor_safetensors():
  code = ("import sys; import prompt_tuning.checkpoints.export; "
          "print(sorted(m for m in ('torch', 'safetensors', 'peft') "
          "if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == "[]"


# ----------------------------------------------------------------------------
# Refused combinations.


@pytest.mark.parametrize("config,method,match", [
    (T5, PrefixTuning(length=P), "decoder self-attention only"),
    (T5, PrefixTuning(length=P, kinds=("cross",)),
     "decoder self-attention only"),
    (GPT2, PrefixTuning(length=P, positions="none"), "positions='shift'"),
    (T5, PromptTuning(length=P, combine="suffix"), "before the inputs"),
    (GPT2, PromptTuning(length=P, combine="after_bos"), "before the inputs"),
    (T5X_LM, PromptTuning(length=P), "transformers models"),
    (GPT2, MSP, "no PEFT counterpart"),
    (T5, MultiTaskPrompt(num_tasks=2, length=P), "no PEFT counterpart"),
    (T5, ModelTuning(), "no PEFT counterpart"),
], ids=["t5_all_kinds", "t5_cross", "positions_none", "suffix", "after_bos",
        "t5x_decoder_only", "msp", "multitask", "model_tuning"])
def test_peft_refuses_what_peft_cannot_express(config, method, match,
                                               tmp_path):
  model, variables = _init(config, method)
  with pytest.raises(ValueError, match=match):
    export.export_prompt(variables, tmp_path / "out", format="peft",
                         model=model)
  assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("config,method", [
    (GPT2, MSP),
    (T5, MultiTaskPrompt(num_tasks=2, length=P)),
], ids=["msp", "multitask"])
def test_npy_refuses_other_methods(config, method, tmp_path):
  model, variables = _init(config, method)
  with pytest.raises(ValueError, match="PromptTuning"):
    export.export_prompt(variables, tmp_path / "out", model=model)
  with pytest.raises(ValueError, match="PromptTuning"):  # without model=
    export.export_prompt(variables, tmp_path / "out")
  assert not os.path.exists(tmp_path / "out")


def test_unknown_format_missing_model_and_empty_params(tmp_path):
  model, variables = _init(GPT2, PromptTuning(length=P))
  with pytest.raises(ValueError, match="format='onnx'"):
    export.export_prompt(variables, tmp_path, format="onnx")
  with pytest.raises(ValueError, match="needs model="):
    export.export_prompt(variables, tmp_path, format="peft")
  with pytest.raises(ValueError, match="nothing to export"):
    export.export_prompt({"params": _without(variables["params"], "prompt")},
                         tmp_path)
  assert not os.listdir(tmp_path)

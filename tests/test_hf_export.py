"""`pt.export_model`: our bases as transformers dirs, checked against
transformers (PyTorch, CPU) and PEFT.

Tiny random bases (every weight perturbed, so a swapped scale/bias or a
wrong transpose shows) are exported, loaded with `from_pretrained` and
compared on padded batches of unequal lengths: per-token target
log-likelihoods within 1e-4, the config read back equal to ours, and our
own reader giving the identical params. A prompt trained here runs in PEFT
on the exported base with our scores and greedy tokens. The shipped bases
export with a tokenizer that encodes as our vocabulary does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import flax
import jax
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
# pylint: disable=g-import-not-at-top,wrong-import-position
import prompt_tuning as pt
from prompt_tuning import losses
from prompt_tuning.checkpoints import hf
from prompt_tuning.checkpoints import hf_export
from prompt_tuning.checkpoints import loader
# pylint: enable=g-import-not-at-top,wrong-import-position

# transformers' deprecation inside PEFT, and PEFT's note that it drops the
# position ids its own generate passes for prompt tuning.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:.*is_gradient_checkpointing.*:FutureWarning"),
    pytest.mark.filterwarnings(
        "ignore:Position ids are not supported:UserWarning"),
]

TOL = 1e-4
SCORE_TOL = dict(rtol=1e-5, atol=TOL)

# T5.1.1: gated GELU, untied head; heads * head_dim (24) != emb_dim (16),
# an odd decoder depth, sequences past max_distance (every bucket branch).
T5_1_1 = pt.TransformerConfig(
    architecture="encoder_decoder", vocab_size=128, emb_dim=16, num_heads=4,
    head_dim=6, mlp_dim=32, num_encoder_layers=2, num_decoder_layers=3,
    relative_attention_num_buckets=8, relative_attention_max_distance=20)
# T5 1.0: ReLU, head tied to the embedding and rescaled.
T5_1_0 = dataclasses.replace(T5_1_1, mlp_activations=("relu",),
                             logits_via_embedding=True)
# GPT-2: n_inner (40) != 4 * n_embd.
GPT2 = pt.TransformerConfig(
    architecture="decoder_only", vocab_size=128, emb_dim=16, num_heads=4,
    head_dim=4, mlp_dim=40, num_encoder_layers=0, num_decoder_layers=2,
    mlp_activations=("gelu_new",), norm="layer", norm_epsilon=1e-5,
    use_bias=True, position_embedding="absolute", max_position_embeddings=32,
    logits_via_embedding=True, scale_tied_logits=False,
    scale_attention_logits=True)
GPT2_UNTIED = dataclasses.replace(GPT2, logits_via_embedding=False)
CONFIGS = {"t5_1_1": T5_1_1, "t5_1_0": T5_1_0, "gpt2": GPT2,
           "gpt2_untied": GPT2_UNTIED}

# Max abs differences measured, printed at the end (pytest -s).
MEASURED: dict[str, float] = {}


def _record(name, ours, ref):
  diff = float(np.max(np.abs(np.asarray(ours) - np.asarray(ref))))
  MEASURED[name] = max(diff, MEASURED.get(name, 0.0))
  return diff


@pytest.fixture(scope="module", autouse=True)
def _print_measured():
  yield
  if MEASURED:
    print("\nmax abs differences:", json.dumps(MEASURED, indent=1))


def _is_t5(config):
  return config.architecture == "encoder_decoder"


def _hf_class(config):
  return (transformers.T5ForConditionalGeneration if _is_t5(config)
          else transformers.GPT2LMHeadModel)


def _random_base(config, seed=0):
  """Random params with every leaf perturbed (norm scales not all 1,
  biases not all 0)."""
  params = loader.random_params(config, seed)
  rng = np.random.default_rng(seed + 100)
  return jax.tree.map(
      lambda x: (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32),
      params)


# ----------------------------------------------------------------------------
# Batches: right padding, unequal lengths.


def _tokens(rng, lengths, width, low=2, high=128):
  tokens = np.zeros((len(lengths), width), np.int32)
  for i, n in enumerate(lengths):
    tokens[i, :n] = rng.integers(low, high, n)
  return tokens


def _t5_batch_from(inputs, targets):
  return {"encoder_input_tokens": inputs,
          "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
          "decoder_target_tokens": targets,
          "decoder_loss_weights": (targets > 0).astype(np.float32)}


def _gpt2_batch_from(tokens, lengths):
  weights = np.zeros(tokens.shape, np.float32)
  for i, n in enumerate(lengths):
    weights[i, :n - 1] = 1.0
  return {"decoder_input_tokens": tokens,
          "decoder_target_tokens": np.pad(tokens[:, 1:], ((0, 0), (0, 1))),
          "decoder_loss_weights": weights}, list(lengths)


def _batch(config):
  """(batch, lengths or None)."""
  rng = np.random.default_rng(0)
  if _is_t5(config):
    return _t5_batch_from(_tokens(rng, [24, 13, 3], 24),
                          _tokens(rng, [22, 9, 1], 22)), None
  tokens = _tokens(rng, [20, 11, 2], 20, low=0)  # id 0 is a real token
  return _gpt2_batch_from(tokens, [20, 11, 2])


def _hf_logits(torch_model, batch, lengths, config, prompt_length=0):
  """HF's teacher-forced logits [batch, length, vocab] for our batch."""
  with torch.no_grad():
    if _is_t5(config):
      inputs = torch.as_tensor(batch["encoder_input_tokens"]).long()
      return torch_model(
          input_ids=inputs, attention_mask=(inputs > 0).long(),
          decoder_input_ids=torch.as_tensor(
              batch["decoder_input_tokens"]).long()).logits.numpy()
    tokens = torch.as_tensor(batch["decoder_input_tokens"]).long()
    mask = torch.zeros_like(tokens)
    for i, n in enumerate(lengths):
      mask[i, :n] = 1
    logits = torch_model(input_ids=tokens, attention_mask=mask).logits
    # PEFT's prompt tuning returns the P virtual positions first.
    return logits[:, prompt_length:].numpy()


def _log_likelihoods(logits, batch):
  """Per-token target log-likelihoods [batch, length] (0 off the targets)."""
  return (np.asarray(losses.token_log_likelihood(
      np.asarray(logits), batch["decoder_target_tokens"]))
          * batch["decoder_loss_weights"])


def _check_scores(name, model, params, torch_model, batch, lengths,
                  prompt_length=0):
  """Per-token and summed target log-likelihoods, ours vs HF's."""
  ref_logits = _hf_logits(torch_model, batch, lengths, model.config,
                          prompt_length)
  ours = _log_likelihoods(model.compute_logits(params, batch), batch)
  ref = _log_likelihoods(ref_logits, batch)
  _record(f"{name} per-token", ours, ref)
  np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)
  scores = np.asarray(model.score_batch(params, batch))
  _record(f"{name} score_batch", scores, ref.sum(-1))
  np.testing.assert_allclose(scores, ref.sum(-1), **SCORE_TOL)


def _read_config(path):
  with open(os.path.join(path, hf_export.CONFIG_FILE)) as f:
    return json.load(f)


def _load_hf(config, path):
  """from_pretrained, checking that every weight came from the file."""
  torch_model, info = _hf_class(config).from_pretrained(
      path, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info["mismatched_keys"], info
  return torch_model.eval()


# ----------------------------------------------------------------------------
# 1. Tiny random bases: transformers' scores, the config, our reader.


@pytest.mark.parametrize("name", list(CONFIGS))
def test_exported_base_scores_like_ours_in_transformers(name, tmp_path):
  config = CONFIGS[name]
  model = pt.build_model(config)
  params = _random_base(config)
  out = pt.export_model({"params": params}, tmp_path / name, model=model)
  assert out == os.fspath(tmp_path / name)
  assert sorted(os.listdir(out)) == sorted(
      [hf_export.CONFIG_FILE, hf_export.GENERATION_CONFIG_FILE,
       hf_export.WEIGHTS_FILE])  # no vocabulary known: no tokenizer files

  # The config reads back to ours, exactly.
  config_json = _read_config(out)
  assert hf.config_from_hf(config_json) == config
  assert config_json["vocab_size"] == config.vocab_size

  torch_model = _load_hf(config, out)
  if name == "t5_1_1":  # transformers 5 unties it: the head is its own
    assert (torch_model.lm_head.weight.data_ptr()
            != torch_model.shared.weight.data_ptr())
  batch, lengths = _batch(config)
  _check_scores(name, model, params, torch_model, batch, lengths)

  # Our reader gives back the identical params and config.
  reloaded_model, variables = pt.load_pretrained(out)
  assert reloaded_model.config == config
  want = flax.traverse_util.flatten_dict(params, sep="/")
  got = flax.traverse_util.flatten_dict(
      jax.device_get(variables["params"]), sep="/")
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    assert got[key].dtype == np.float32
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_weights_file_is_float32_safetensors(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  params = _random_base(GPT2)
  bf16 = jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16), params)
  out = pt.export_model(bf16, tmp_path / "gpt2", model=pt.build_model(GPT2))
  tensors = safetensors_numpy.load_file(
      os.path.join(out, hf_export.WEIGHTS_FILE))
  assert {t.dtype for t in tensors.values()} == {np.dtype(np.float32)}
  # GPT-2's fused qkv holds our query, key and value side by side.
  layer = params["decoder"]["layers_0"]["self_attention"]
  np.testing.assert_array_equal(
      tensors["transformer.h.0.attn.c_attn.weight"],
      np.concatenate([np.asarray(layer[q]["kernel"].astype(jax.numpy.bfloat16),
                                 np.float32)
                      for q in ("query", "key", "value")], axis=1))
  assert "lm_head.weight" not in tensors  # tied


def test_generation_config_carries_token_ids(tmp_path):
  out = pt.export_model(_random_base(T5_1_1), tmp_path / "t5",
                        model=pt.build_model(T5_1_1, eos_id=5))
  generation = transformers.GenerationConfig.from_pretrained(out)
  assert (generation.decoder_start_token_id, generation.eos_token_id,
          generation.pad_token_id) == (0, 5, 0)


# ----------------------------------------------------------------------------
# 2. A prompt trained here, through PEFT on the exported base.

P = 5
T5_DECODE_LEN = 8
GPT2_WIDTH, GPT2_PROMPT_LENGTHS = 16, (7, 4, 1)


def _train_prompt(model, params, batch, steps=6):
  """A few Adam steps on the prompt alone; returns (params, losses)."""
  optimizer = optax.adam(0.1)
  state = optimizer.init(params["prompt"])

  @jax.jit
  def step(prompt, state):
    def loss(prompt):
      return model.loss_fn({**params, "prompt": prompt}, batch, None)[0]
    value, grads = jax.value_and_grad(loss)(prompt)
    updates, state = optimizer.update(grads, state)
    return optax.apply_updates(prompt, updates), state, value

  prompt, history = params["prompt"], []
  for _ in range(steps):
    prompt, state, value = step(prompt, state)
    history.append(float(value))
  return {**params, "prompt": prompt}, history


def _our_greedy(model, params, config, batch):
  if _is_t5(config):
    return np.asarray(model.predict_batch(params, {
        "encoder_input_tokens": batch["encoder_input_tokens"],
        "decoder_target_tokens": np.zeros((3, T5_DECODE_LEN), np.int32)}))
  prompts, region = _gpt2_prompts(batch)
  return np.asarray(model.predict_batch(params, {
      "decoder_input_tokens": prompts, "decoder_causal_attention": region}))


def _gpt2_prompts(batch):
  prompts = np.zeros((3, GPT2_WIDTH), np.int32)
  region = np.zeros((3, GPT2_WIDTH), np.int32)
  for i, n in enumerate(GPT2_PROMPT_LENGTHS):
    prompts[i, :n] = batch["decoder_input_tokens"][i, :n]
    region[i, :n] = 1
  return prompts, region


def _hf_greedy(torch_model, config, batch):
  """generate() one example at a time, with the exported
  generation_config (decoder start, EOS)."""
  outputs = []
  with torch.no_grad():
    if _is_t5(config):
      for row in batch["encoder_input_tokens"]:
        ids = torch.as_tensor(row[row > 0][None]).long()
        out = torch_model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids),
            max_new_tokens=T5_DECODE_LEN, do_sample=False,
            num_beams=1).numpy()[0, 1:]  # drop the decoder start token
        outputs.append(np.pad(out, (0, T5_DECODE_LEN - len(out))))
    else:
      prompts, _ = _gpt2_prompts(batch)
      for row, n in zip(prompts, GPT2_PROMPT_LENGTHS):
        ids = torch.as_tensor(row[None, :n]).long()
        out = torch_model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids),
            max_new_tokens=GPT2_WIDTH - n, do_sample=False, num_beams=1,
            pad_token_id=torch_model.generation_config.eos_token_id
        ).numpy()[0, n:]
        outputs.append(out)
  return outputs


# Equal depths: transformers 5.23's T5 generate() sizes its cache by the
# encoder depth and fails for a deeper decoder (its own models too).
PEFT_CONFIGS = {"t5_1_1": dataclasses.replace(T5_1_1, num_decoder_layers=2),
                "gpt2": GPT2}


@pytest.mark.parametrize("name", list(PEFT_CONFIGS))
def test_trained_prompt_runs_in_peft_on_the_exported_base(name, tmp_path):
  peft = pytest.importorskip("peft")
  config = PEFT_CONFIGS[name]
  base_dir = pt.export_model({"params": _random_base(config)},
                             tmp_path / "base", model=pt.build_model(config))
  # The prompt trains on our own reading of the export.
  model, variables = pt.load_pretrained(
      base_dir, method=pt.PromptTuning(length=P))
  batch, lengths = _batch(config)
  params, history = _train_prompt(model, variables["params"], batch)
  assert history[-1] < history[0] - 0.1, history
  assert np.abs(np.asarray(params["prompt"]["prompt"]) - np.asarray(
      variables["params"]["prompt"]["prompt"])).max() > 0.05

  adapter = pt.export_prompt({"params": params}, tmp_path / "adapter",
                             format="peft", model=model,
                             base_model_name_or_path=base_dir)
  base = _load_hf(config, base_dir)
  peft_model = peft.PeftModel.from_pretrained(base, adapter).eval()
  _check_scores(f"{name} + trained prompt (PEFT)", model, params, peft_model,
                batch, lengths, prompt_length=0 if _is_t5(config) else P)
  # The prompt is in effect: the plain base scores differently.
  plain = _log_likelihoods(_hf_logits(base, batch, lengths, config),
                           batch).sum(-1)
  assert np.abs(np.asarray(model.score_batch(params, batch))
                - plain).min() > 1e-2

  ours = _our_greedy(model, params, config, batch)
  assert (ours > 1).sum() >= 6  # real tokens, not just EOS and padding
  for i, ref in enumerate(_hf_greedy(peft_model, config, batch)):
    np.testing.assert_array_equal(ours[i, :len(ref)], ref)
    assert not ours[i, len(ref):].any()


# ----------------------------------------------------------------------------
# 3. The shipped bases, with their tokenizer.

SENTENCES = (
    "In the beginning God created the heaven and the earth.",
    "En el principio creó Dios los cielos y la tierra.",
    "¿Dónde está el que ha nacido Rey de los judíos?\nPorque su estrella "
    "hemos visto en el oriente, y venimos á adorarle.",
    "Él les dijo: «¡Señor, sálvanos, que perecemos!»\n\nY la niña (12 "
    "años) se levantó.",
    "For God so loved the world,\nthat he gave his only begotten Son.",
    "  Jesus wept.  ",
)


def _vocabularies():
  """prompt_tuning.tasks.vocabularies (imports TensorFlow and seqio)."""
  # pylint: disable-next=g-import-not-at-top
  from prompt_tuning.tasks import vocabularies
  return vocabularies


@pytest.fixture(scope="module")
def bible_vocabulary():
  return _vocabularies().bible_vocabulary()


def _shipped_case(name):
  return (pytest.param(name, marks=pytest.mark.slow)
          if name in ("bible_t5_small", "bible_t5_base", "bible_gpt2_medium")
          else name)


@pytest.mark.parametrize("name", [_shipped_case(n) for n in (
    "bible_t5_tiny", "bible_gpt2_small", "bible_t5_small", "bible_t5_base",
    "bible_gpt2_medium")])
def test_shipped_base_exports_with_its_tokenizer(name, tmp_path,
                                                 bible_vocabulary):
  model, variables = pt.load_pretrained(name)
  config = model.config
  out = pt.export_model(variables, tmp_path / name, model=model)
  assert set(os.listdir(out)) == {
      hf_export.CONFIG_FILE, hf_export.GENERATION_CONFIG_FILE,
      hf_export.WEIGHTS_FILE, hf_export.SPIECE_FILE, hf_export.TOKENIZER_FILE,
      hf_export.TOKENIZER_CONFIG_FILE, hf_export.SPECIAL_TOKENS_FILE}
  config_json = _read_config(out)
  assert config_json["vocab_size"] == config.vocab_size == 8192  # padded
  # init_std (GPT-2's pretraining init) is not part of the weights.
  assert hf.config_from_hf(config_json) == config.replace(init_std=None)

  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert len(tokenizer) == bible_vocabulary.vocab_size == 8100
  assert (tokenizer.pad_token_id, tokenizer.eos_token_id,
          tokenizer.unk_token_id) == (0, 1, 2)
  assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == 8099
  assert tokenizer.convert_tokens_to_ids("<extra_id_99>") == 8000
  ids = []
  for text in SENTENCES:
    want = [int(i) for i in bible_vocabulary.encode(text)]
    got = tokenizer(text, add_special_tokens=False).input_ids
    assert got == want, text
    assert tokenizer.decode(got) == bible_vocabulary.decode(want)
    # T5's tokenizer appends EOS as T5's does; a causal LM's adds nothing.
    ids.append(tokenizer(text).input_ids)
    assert ids[-1] == (got + [1] if _is_t5(config) else got)

  torch_model = _load_hf(config, out)
  if _is_t5(config):
    # English -> Spanish pairs, each side with its EOS.
    inputs = _pad([ids[0], ids[4], ids[5]])
    targets = _pad([ids[1], ids[2], ids[3]])
    batch, lengths = _t5_batch_from(inputs, targets), None
  else:
    lengths = [len(i) + 1 for i in ids[:4]]
    batch, lengths = _gpt2_batch_from(
        _pad([i + [tokenizer.eos_token_id] for i in ids[:4]]), lengths)
  _check_scores(name, model, variables["params"], torch_model, batch,
                lengths)


@pytest.mark.slow
def test_sentencepiece_tokenizer_encodes_the_whole_bible_corpus_as_seqio(
    tmp_path, bible_vocabulary):
  """Every pretraining passage (English and Spanish, 19k with newlines)."""
  import gzip  # pylint: disable=g-import-not-at-top
  config = dataclasses.replace(GPT2, vocab_size=8192)
  out = pt.export_model(_random_base(config), tmp_path / "out",
                        model=pt.build_model(config), vocabulary="bible")
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  data = os.path.join(os.path.dirname(_vocabularies().BIBLE_SENTENCEPIECE),
                      "pretrain_bible.jsonl.gz")
  with gzip.open(data, "rt", encoding="utf-8") as f:
    texts = [json.loads(line)["text"] for line in f]
  assert len(texts) > 40_000 and sum("\n" in t for t in texts) > 10_000
  got = tokenizer(texts, add_special_tokens=False).input_ids
  mismatches = [t for t, ids in zip(texts, got)
                if ids != [int(i) for i in bible_vocabulary.encode(t)]]
  assert not mismatches, (len(mismatches), mismatches[:3])


def _pad(rows):
  out = np.zeros((len(rows), max(map(len, rows))), np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


# GPT-2's byte-level BPE, in miniature: the 256 byte symbols, a few merges.
_BPE_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"),
               ("Ġa", "n"), ("Ġan", "d"), ("o", "r"), ("Ġ", "s"), ("e", "s"),
               ("Ã", "³"), ("Ġ", "Ã")]


def _bpe_dir(path):
  vocabularies = _vocabularies()
  tokens = list(vocabularies._BYTE_SYMBOLS)  # pylint: disable=protected-access
  tokens += [a + b for a, b in _BPE_MERGES] + [vocabularies.GPT2_EOS]
  os.makedirs(path)
  with open(os.path.join(path, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
  with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _BPE_MERGES))
  return vocabularies.GPT2Vocabulary(str(path)), len(tokens)


def test_gpt2_bpe_vocabulary_exports_vocab_and_merges(tmp_path):
  vocabulary, size = _bpe_dir(tmp_path / "bpe")
  eos = size - 1
  config = dataclasses.replace(GPT2, vocab_size=size + 3)
  out = pt.export_model(_random_base(config), tmp_path / "out",
                        model=pt.build_model(config, eos_id=eos),
                        vocabulary=vocabulary)
  assert set(hf_export.BPE_FILES) <= set(os.listdir(out))
  assert hf_export.SPIECE_FILE not in os.listdir(out)
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert tokenizer.eos_token_id == eos
  vocabularies = _vocabularies()
  reread = vocabularies.GPT2Vocabulary(out)  # our reader takes the dir too
  for text in SENTENCES + ("the sand and the stones<|endoftext|>más",):
    want = [int(i) for i in vocabulary.encode(text)]
    assert tokenizer(text).input_ids == want, text
    assert [int(i) for i in reread.encode(text)] == want
  assert _read_config(out)["eos_token_id"] == eos


def test_unreadable_gpt2_vocabulary_omits_tokenizer_files(tmp_path, caplog):
  vocabularies = _vocabularies()
  missing = vocabularies.GPT2Vocabulary(str(tmp_path / "no_such_dir"))
  with caplog.at_level(logging.WARNING):
    out = pt.export_model(_random_base(GPT2), tmp_path / "out",
                          model=pt.build_model(GPT2), vocabulary=missing)
  assert "no tokenizer files" in caplog.text
  assert not set(hf_export.TOKENIZER_FILES) & set(os.listdir(out))


# ----------------------------------------------------------------------------
# 4. Bad input, atomic writes.


def test_unknown_format_is_refused(tmp_path):
  with pytest.raises(ValueError, match=r"format='onnx'; choose one of"):
    pt.export_model(_random_base(GPT2), tmp_path / "out",
                    format="onnx", model=pt.build_model(GPT2))
  assert not (tmp_path / "out").exists()


def test_out_dir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / "a_file"
  path.write_text("keep me")
  with pytest.raises(NotADirectoryError, match="is not a directory"):
    pt.export_model(_random_base(GPT2), path, model=pt.build_model(GPT2))
  assert path.read_text() == "keep me"


# A T5X-style decoder-only LM (relative positions, prefix LM, RMS norm, no
# biases) and a T5 with GPT-2's layers: no transformers counterpart.
_T5X_LM = dataclasses.replace(GPT2, norm="rms", use_bias=False,
                              position_embedding="relative", prefix_lm=True)
_LAYER_NORM_T5 = dataclasses.replace(T5_1_1, norm="layer", use_bias=True)


@pytest.mark.parametrize("config, fields", [
    (_T5X_LM, ("prefix_lm=True", "position_embedding='relative'",
               "norm='rms'", "use_bias=False")),
    (dataclasses.replace(GPT2, prefix_lm=True), ("prefix_lm=True",)),
    (_LAYER_NORM_T5, ("norm='layer'", "use_bias=True")),
    (dataclasses.replace(T5_1_1, mlp_activations=("gelu_exact", "linear")),
     ("mlp_activations",)),
    (dataclasses.replace(GPT2, head_dim=8), ("head_dim=8",)),
], ids=["t5x_lm", "gpt2_prefix_lm", "layer_norm_t5", "gated_exact_gelu",
        "gpt2_head_dim"])
def test_config_transformers_cannot_represent_is_refused(config, fields,
                                                         tmp_path):
  model = pt.build_model(config)
  with pytest.raises(ValueError, match="cannot be exported") as error:
    pt.export_model(loader.random_params(config), tmp_path / "out",
                    model=model)
  for field in fields:
    assert field in str(error.value)
  assert "pt.load_pretrained" in str(error.value)  # the fix
  assert not (tmp_path / "out").exists()


def test_params_of_another_model_are_refused(tmp_path):
  with pytest.raises(ValueError, match="do not match model.config"):
    pt.export_model(_random_base(GPT2), tmp_path / "out",
                    model=pt.build_model(GPT2_UNTIED))


def test_vocabulary_with_another_eos_is_refused(tmp_path):
  vocabulary, size = _bpe_dir(tmp_path / "bpe")
  config = dataclasses.replace(GPT2, vocab_size=size)
  with pytest.raises(ValueError, match=f"eos_id={size - 1}"):
    pt.export_model(_random_base(config), tmp_path / "out",
                    model=pt.build_model(config), vocabulary=vocabulary)
  small = dataclasses.replace(GPT2, vocab_size=size - 1)
  with pytest.raises(ValueError, match="more than the model's"):
    pt.export_model(_random_base(small), tmp_path / "out",
                    model=pt.build_model(small, eos_id=size - 1),
                    vocabulary=vocabulary)


def test_failed_export_leaves_the_earlier_one_whole(tmp_path, monkeypatch):
  vocabulary, size = _bpe_dir(tmp_path / "bpe")
  config = dataclasses.replace(GPT2, vocab_size=size)
  model = pt.build_model(config, eos_id=size - 1)
  out = tmp_path / "out"
  pt.export_model(_random_base(config), out, model=model,
                  vocabulary=vocabulary)
  before = {n: (out / n).read_bytes() for n in os.listdir(out)}
  assert "vocab.json" in before

  def fail(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(hf_export, "_hf_tensor", fail)
  with pytest.raises(RuntimeError, match="disk full"):
    pt.export_model(_random_base(config, seed=1), out, model=model)
  assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
  assert sorted(os.listdir(tmp_path)) == ["bpe", "out"]  # no staging left

  # A later export without a vocabulary removes the stale tokenizer files.
  monkeypatch.undo()
  (out / "README.md").write_text("mine")
  pt.export_model(_random_base(config, seed=1), out, model=model,
                  vocabulary=False)
  assert sorted(os.listdir(out)) == sorted(
      [hf_export.CONFIG_FILE, hf_export.GENERATION_CONFIG_FILE,
       hf_export.WEIGHTS_FILE, "README.md"])

"""Multi-stage prompting: every stage against a hand-built computation, the
position and padding conventions, cached decoding, loss and parameters.

Each jitted function is built once per model (`functools.cache`: one each
for n = 1, n = 2 and the shared prompt) and every test uses the same batch
shapes, so compiles stay few.
The tiny models have 3 layers: a stage's prompt reaches the next stage's
keys only from the layer above (layer 0's keys are embedding projections),
so the encoding prompt first changes the re-encoded keys at layer 2.
"""

from __future__ import annotations

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prompt_tuning as pt
from prompt_tuning import losses
from prompt_tuning import param_split
from prompt_tuning.methods import msp
from prompt_tuning.models import configs
from prompt_tuning.models import masks
from prompt_tuning.models import transformer
from prompt_tuning.models.kv_prefix import KvPrefix

SEP = 63
P = 3
LAYERS = 3
CONFIGS = {
    "gpt2": configs.gpt2("small", vocab_size=64, emb_dim=8, num_heads=2,
                         head_dim=4, mlp_dim=32, num_decoder_layers=LAYERS,
                         max_position_embeddings=32),
    "t5_decoder": configs.t5_1_1("tiny", architecture="decoder_only",
                                 num_decoder_layers=LAYERS, vocab_size=64,
                                 emb_dim=8, head_dim=4,
                                 relative_attention_num_buckets=8,
                                 relative_attention_max_distance=6),
}
PROMPT_SHAPE = (LAYERS, 2, P, 2, 4)  # per stage: [layers, 2, P, heads, d]


def _build(name, **method_kwargs):
  method = msp.MultiStagePrompting(length=P, separator_id=SEP,
                                   **method_kwargs)
  return pt.build_model(CONFIGS[name], method=method)


def _msp_params(model, seed=0):
  """The method's own initial parameters (eager; only msp/... is made)."""
  return nn.meta.unbox(model.module.init(
      jax.random.PRNGKey(seed), method="init_method_params")["params"]["msp"])


@functools.cache
def _model_and_params(name, **method_kwargs):
  """The model and params: frozen leaves drawn N(0, 0.3^2) (norm scales
  around 1) on the host, so that biases, norm offsets and GPT-2's position
  embeddings all matter; no compile needed. The frozen leaves do not depend
  on the method's options."""
  model = _build(name, **method_kwargs)
  shapes = jax.eval_shape(lambda: model.get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 4),
                              "decoder_input_tokens": (1, 4)}))
  flat = flax.traverse_util.flatten_dict(
      nn.meta.unbox(shapes["params"]["decoder"]), sep="/")
  rng = np.random.default_rng(0)
  decoder = {
      n: jnp.asarray(rng.normal(0.0, 0.3, s.shape)
                     + (1.0 if n.endswith("scale") else 0.0), jnp.float32)
      for n, s in flat.items()}
  params = {"decoder": flax.traverse_util.unflatten_dict(decoder, sep="/"),
            "msp": _msp_params(model)}
  return model, params


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def setup(request):
  return (request.param,) + _model_and_params(request.param)


@pytest.fixture(scope="module")
def gpt2():
  return _model_and_params("gpt2")


def _batch():
  """Two examples; the second source is padded after 3 tokens and the
  second target after 4 (seqio's encoder-decoder layout, 0 at column 0)."""
  rng = np.random.default_rng(0)
  source = rng.integers(2, SEP, (2, 6)).astype(np.int32)
  source[1, 3:] = 0
  targets = rng.integers(2, SEP, (2, 5)).astype(np.int32)
  targets[1, 4:] = 0
  return {"encoder_input_tokens": source,
          "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
          "decoder_target_tokens": targets,
          "decoder_loss_weights": (targets > 0).astype(np.float32)}


@functools.cache
def _forward(model):
  """jit: (params, batch) -> (every source stage's states, logits)."""
  def forward(params, batch):
    states = model.module.apply({"params": params},
                                batch["encoder_input_tokens"],
                                method="source_states")
    return states, model.compute_logits(params, batch)
  return jax.jit(forward)


def _logits(model, params, batch):
  return _forward(model)(params, batch)[1]


@functools.cache
def _method(model, method):
  """jit: (params, *args) -> the module's `method`."""
  return jax.jit(lambda params, *args: model.module.apply(
      {"params": params}, *args, method=method))


def _prompt(params, stage, xp=np):
  """Stage `stage`'s effective prompt max(alpha, 1) * phi (float64 NumPy,
  or traceable with xp=jnp); a shared prompt is stage 0's for all."""
  phi = params["msp"]["prompts"]
  index = 0 if phi.shape[0] == 1 else stage
  # Without scaled reparameterization there is no alpha: phi itself.
  alpha = params["msp"]["scales"][index] if "scales" in params["msp"] else 1.0
  if xp is np:
    phi, alpha = np.asarray(phi, np.float64), float(alpha)
  return xp.maximum(alpha, 1.0) * phi[index]


# ----------------------------------------------------------------------------
# Stages against hand-built computations.
# ----------------------------------------------------------------------------


def _decoder_stage(config, params, embedded, mask, prefix):
  """The plain frozen decoder (no method) under an explicit KvPrefix."""
  decoder = transformer.Decoder(config, has_cross_attention=False)
  batch, length = embedded.shape[:2]
  positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
  return decoder.apply({"params": params["decoder"]}, embedded,
                       positions=positions, self_mask=mask,
                       self_prefix=prefix, return_kv=True)


def _prompt_prefix(params, stage, carried=None, valid=None):
  """[prompt ; carried KV [layers, b, L, h, d]] as a position-less KvPrefix."""
  prompt = _prompt(params, stage, jnp)
  key, value = prompt[:, 0][:, None], prompt[:, 1][:, None]
  if carried is None:
    return KvPrefix(key=key, value=value)
  batch = valid.shape[0]
  shape = (key.shape[0], batch) + key.shape[2:]
  join = lambda p, s: jnp.concatenate([jnp.broadcast_to(p, shape), s], 2)
  return KvPrefix(key=join(key, carried.key), value=join(value, carried.value),
                  valid=jnp.concatenate([jnp.ones((batch, P), bool), valid],
                                        1))


def _manual_msp(config, params, batch, num_reencoding_stages=1):
  """MSP composed by hand, stage by stage, from the plain decoder (every
  attention through the library's one primitive) with each stage's prompt
  as an explicit past: (source KVs, logits)."""
  source = jnp.asarray(batch["encoder_input_tokens"])
  valid = source > 0
  b, ls = source.shape
  decoder = transformer.Decoder(config, has_cross_attention=False)
  embed = lambda t: decoder.apply({"params": params["decoder"]}, t,
                                  method="embed")
  source_mask = masks.causal_mask(b, ls) & valid[:, None, None, :]
  _, kv = _decoder_stage(config, params, embed(source), source_mask,
                         _prompt_prefix(params, msp.ENCODING))
  kvs = [kv]
  for i in range(num_reencoding_stages):
    _, kv = _decoder_stage(config, params, embed(source), source_mask,
                           _prompt_prefix(params, 1 + i, kv, valid))
    kvs.append(kv)
  targets_in = jnp.asarray(batch["decoder_input_tokens"]).at[:, 0].set(SEP)
  logits, _ = _decoder_stage(
      config, params, embed(targets_in),
      masks.causal_mask(b, targets_in.shape[1]),
      _prompt_prefix(params, 1 + num_reencoding_stages, kv, valid))
  return kvs, logits


@functools.cache
def _manual(name, num_reencoding_stages=1):
  return jax.jit(functools.partial(
      _manual_msp, CONFIGS[name],
      num_reencoding_stages=num_reencoding_stages))


def _assert_source_kv_equal(states, kv, valid, atol=1e-5):
  """Module SourceStates [b, layers, L, h, d] vs KeyValue [layers, b, ...],
  at the valid source positions (padding is masked everywhere)."""
  for got, want in ((states.key, kv.key), (states.value, kv.value)):
    got = np.swapaxes(np.asarray(got), 0, 1)
    np.testing.assert_allclose(got[:, valid], np.asarray(want)[:, valid],
                               atol=atol)


def test_stages_equal_plain_decoder_with_prompt_as_past_kv(setup):
  name, model, params = setup
  batch = _batch()
  valid = batch["encoder_input_tokens"] > 0
  kvs, logits = _manual(name)(params, batch)
  states, got = _forward(model)(params, batch)
  assert len(states) == 2
  for state, kv in zip(states, kvs):
    _assert_source_kv_equal(state, kv, valid)
  np.testing.assert_allclose(got, logits, atol=1e-5)


# A float64 NumPy GPT-2, independent of the library's layers.


def _layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _dense(x, p):
  return x @ p["kernel"] + p["bias"]


def _gelu(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _gpt2_reference(dec, tokens, positions, mask, past, past_valid):
  """One example through GPT-2 with per-layer past keys/values.

  Args:
    dec: params["decoder"] as float64 NumPy.
    tokens, positions: [L]; mask: bool [L, L] among the tokens.
    past: per layer (key, value) [Pk, heads, head_dim]; past_valid: [Pk].
  Returns:
    logits [L, vocab] and per-layer (key, value) [L, heads, head_dim].
  """
  cfg = CONFIGS["gpt2"]
  length = len(tokens)
  x = (dec["token_embedder"]["embedding"][tokens]
       + dec["position_embedder"]["embedding"][positions])
  visible = np.concatenate(
      [np.broadcast_to(past_valid, (length, len(past_valid))), mask], 1)
  kvs = []
  for i in range(cfg.num_decoder_layers):
    lp = dec[f"layers_{i}"]
    att = lp["self_attention"]
    h = _layer_norm(x, lp["pre_self_attention_layer_norm"])
    q, k, v = (_dense(h, att[n]).reshape(length, cfg.num_heads, cfg.head_dim)
               for n in ("query", "key", "value"))
    kvs.append((k, v))
    k = np.concatenate([past[i][0], k])
    v = np.concatenate([past[i][1], v])
    logits = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(cfg.head_dim)
    logits = np.where(visible[None], logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("hqk,khd->qhd", w, v).reshape(length, -1)
    x = x + _dense(out, att["out"])
    h = _layer_norm(x, lp["pre_mlp_layer_norm"])
    x = x + _dense(_gelu(_dense(h, lp["mlp"]["wi"])), lp["mlp"]["wo"])
  x = _layer_norm(x, dec["decoder_norm"])
  return x @ dec["token_embedder"]["embedding"].T, kvs


def _plm4mt_prompts(params):
  """Our phi and alpha as PLM4MT holds them: prompts [S, 2 * layers, P, H]
  (row 2j the keys, 2j + 1 the values of layer j), scales [S]."""
  phi = np.asarray(params["msp"]["prompts"], np.float64)
  stages, layers, _, length, heads, head_dim = phi.shape
  return (phi.reshape(stages, 2 * layers, length, heads * head_dim),
          np.asarray(params["msp"]["scales"], np.float64))


def _gpt2_msp_reference(params, source, decoder_inputs,
                        num_reencoding_stages=1, target_offset=0):
  """MSP for one example, stage by stage, in NumPy, with the prompts read
  the way PLM4MT reads them: encoding stage 0, re-encoding pass i stage
  1 + i, decoding the last stage; a shared prompt is stage 0 throughout.

  Positions restart at 0 in each stage; `target_offset` shifts stage 3's
  (to show the test can tell). Returns (every source stage's KV, logits).
  """
  dec = jax.tree.map(lambda x: np.asarray(x, np.float64), params["decoder"])
  prompts, scales = _plm4mt_prompts(params)
  shared = prompts.shape[0] == 1
  cfg = CONFIGS["gpt2"]
  valid = source > 0
  ls = len(source)
  source_mask = np.tril(np.ones((ls, ls), bool)) & valid[None]

  def past(stage, carried):
    scale = max(scales[stage], 1.0)
    split = lambda x: (scale * x).reshape(P, cfg.num_heads, cfg.head_dim)
    layers = [(split(prompts[stage, 2 * j]), split(prompts[stage, 2 * j + 1]))
              for j in range(cfg.num_decoder_layers)]
    if carried is None:
      return layers, np.ones(P, bool)
    return ([(np.concatenate([pk, k]), np.concatenate([pv, v]))
             for (pk, pv), (k, v) in zip(layers, carried)],
            np.concatenate([np.ones(P, bool), valid]))

  _, kv = _gpt2_reference(dec, source, np.arange(ls), source_mask,
                          *past(0, None))
  kvs = [kv]
  for i in range(num_reencoding_stages):
    _, kv = _gpt2_reference(dec, source, np.arange(ls), source_mask,
                            *past(0 if shared else 1 + i, kv))
    kvs.append(kv)
  tokens = np.array(decoder_inputs)
  tokens[0] = SEP
  lt = len(tokens)
  logits, _ = _gpt2_reference(
      dec, tokens, np.arange(lt) + target_offset,
      np.tril(np.ones((lt, lt), bool)), *past(-1, kv))
  return kvs, logits


def _assert_equals_numpy_reference(model, params, num_reencoding_stages=1):
  batch = _batch()
  states, logits = _forward(model)(params, batch)
  assert len(states) == 1 + num_reencoding_stages
  for b in range(2):
    source = batch["encoder_input_tokens"][b]
    valid = source > 0
    kvs, want = _gpt2_msp_reference(
        params, source, batch["decoder_input_tokens"][b],
        num_reencoding_stages)
    for state, stage_kvs in zip(states, kvs):
      for layer, (k, v) in enumerate(stage_kvs):
        np.testing.assert_allclose(state.key[b, layer][valid], k[valid],
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(state.value[b, layer][valid], v[valid],
                                   rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits[b], want, rtol=1e-4, atol=1e-4)


def test_gpt2_stages_equal_numpy_reference(gpt2):
  _assert_equals_numpy_reference(*gpt2)


def test_positions_restart_at_zero_in_every_stage(gpt2):
  """GPT-2's stage-3 first token takes position 0 (not after the source)."""
  model, params = gpt2
  batch = _batch()
  logits = _logits(model, params, batch)
  source = batch["encoder_input_tokens"][0]
  decoder_inputs = batch["decoder_input_tokens"][0]
  *_, restart = _gpt2_msp_reference(params, source, decoder_inputs)
  *_, continued = _gpt2_msp_reference(params, source, decoder_inputs,
                                      target_offset=len(source))
  np.testing.assert_allclose(logits[0], restart, rtol=1e-4, atol=1e-4)
  assert np.abs(logits[0] - continued).max() > 1e-2


def test_decoder_input_column_zero_becomes_the_separator(gpt2):
  model, params = gpt2
  batch = _batch()
  other = dict(batch, decoder_input_tokens=batch["decoder_input_tokens"].copy())
  other["decoder_input_tokens"][:, 0] = 17
  np.testing.assert_array_equal(_logits(model, params, batch),
                                _logits(model, params, other))
  assert model.module.decoder_start_token_id == SEP


# ----------------------------------------------------------------------------
# Padding and the encoding prompt's path.
# ----------------------------------------------------------------------------


def _scores(logits, batch):
  """score_batch's per-example sum of weighted target log-likelihoods."""
  return np.sum(losses.token_log_likelihood(
      logits, batch["decoder_target_tokens"])
                * batch["decoder_loss_weights"], -1)


def test_source_padding_changes_nothing(setup):
  _, model, params = setup
  batch = _batch()
  scores = _scores(_logits(model, params, batch), batch)
  # The padded example alone, without its padding, scores the same.
  alone = {k: v[1:] for k, v in batch.items()}
  alone["encoder_input_tokens"] = alone["encoder_input_tokens"][:, :3]
  np.testing.assert_allclose(_scores(_logits(model, params, alone), alone),
                             scores[1:], rtol=1e-5, atol=1e-5)
  # Whatever the carried states hold at padded slots is never read.
  source = batch["encoder_input_tokens"]
  encoded = _method(model, "encode")(params, source)
  pad = jnp.asarray(~encoded.valid)[:, None, :, None, None]
  noisy = encoded.replace(
      key=jnp.where(pad, 1e3, encoded.key),
      value=jnp.where(pad, -1e3, encoded.value))
  decode = lambda e: _method(model, "decode")(
      params, e, source, batch["decoder_input_tokens"])
  np.testing.assert_array_equal(decode(noisy), decode(encoded))


def _with_prompt(params, stage, factor):
  """params with stage `stage`'s phi multiplied by `factor`."""
  phi = params["msp"]["prompts"]
  return {**params, "msp": {**params["msp"],
                            "prompts": phi.at[stage].multiply(factor)}}


def test_encoding_prompt_acts_only_through_reencoded_source(setup):
  _, model, params = setup
  batch = _batch()
  source = batch["encoder_input_tokens"]
  changed = _with_prompt(params, msp.ENCODING, -2.0)
  decode = lambda p, e: _method(model, "decode")(
      p, e, source, batch["decoder_input_tokens"])
  encoded = _method(model, "encode")(params, source)
  # Given the re-encoded source, the encoding prompt is not read again.
  np.testing.assert_array_equal(decode(changed, encoded),
                                decode(params, encoded))
  # ... but it shapes that source (from layer 2 up), and so the scores.
  changed_encoded = _method(model, "encode")(changed, source)
  np.testing.assert_array_equal(changed_encoded.key[:, :2],
                                encoded.key[:, :2])
  assert np.abs(changed_encoded.key - encoded.key).max() > 1e-3
  assert np.abs(_logits(model, changed, batch)
                - _logits(model, params, batch)).max() > 1e-4


# ----------------------------------------------------------------------------
# Decoding.
# ----------------------------------------------------------------------------


@functools.cache
def _decode_step(model):
  return jax.jit(lambda params, cache, encoded, source, tokens:
                 model.module.apply({"params": params, "cache": cache},
                                    encoded, source, tokens, decode=True,
                                    mutable=["cache"], method="decode"))


def test_cached_decoding_equals_full_forward(setup):
  _, model, params = setup
  batch = _batch()
  full = _logits(model, params, batch)
  source = batch["encoder_input_tokens"]
  decoder_inputs = batch["decoder_input_tokens"].copy()
  decoder_inputs[:, 0] = SEP
  b, length = decoder_inputs.shape
  encoded = _method(model, "encode")(params, source)
  init_cache = model._init_cache  # pylint: disable=protected-access
  cache = init_cache(model.module.apply, {"params": params}, encoded, source,
                     jnp.zeros((b, length), jnp.int32), method="decode")
  # The cache holds target tokens only, batch first (beam tiling repeats
  # axis 0 of every leaf); keys/values are [batch, heads, head_dim, length].
  for leaf in jax.tree.leaves(cache):
    assert leaf.shape[0] == b
  for leaf in jax.tree.leaves(cache["decoder"]["layers_0"]):
    assert leaf.shape[-1] == length
  for step in range(length):
    logits, state = _decode_step(model)(params, cache, encoded, source,
                                        decoder_inputs[:, step:step + 1])
    cache = state["cache"]
    np.testing.assert_allclose(logits[:, 0], full[:, step], atol=1e-5)


def test_greedy_predict_equals_argmax_loop(setup):
  _, model, params = setup
  batch = _batch()
  predicted = np.asarray(jax.jit(model.predict_batch)(params, batch))
  b, length = batch["decoder_target_tokens"].shape
  # Full (uncached) forwards; column 0 becomes the separator, and causality
  # makes the zeros after step i irrelevant to its logits.
  inputs = np.zeros((b, length), np.int32)
  want = np.zeros((b, length), np.int32)
  done = np.zeros(b, bool)
  for i in range(length):
    logits = _logits(model, params, dict(batch, decoder_input_tokens=inputs))
    token = np.where(done, 0, np.argmax(logits[:, i], -1))
    want[:, i] = token
    done |= token == model.eos_id
    if i + 1 < length:
      inputs[:, i + 1] = token
  np.testing.assert_array_equal(predicted, want)


# ----------------------------------------------------------------------------
# Loss, scales, variants, parameters.
# ----------------------------------------------------------------------------


@functools.cache
def _losses(model):
  """jit: (params, batch) -> (loss, label-smoothed loss, d loss / d msp
  params, score_batch), one compile for all loss tests."""
  smoothed = msp.MultiStagePrompting(length=P, separator_id=SEP).build_model(
      CONFIGS["gpt2"], label_smoothing=0.1)
  def all_losses(params, batch):
    loss = lambda method_params: model.loss_fn(
        {**params, "msp": method_params}, batch, None)[0]
    value, grads = jax.value_and_grad(loss)(params["msp"])
    return (value, smoothed.loss_fn(params, batch, None)[0], grads,
            model.score_batch(params, batch))

  return jax.jit(all_losses)


def test_loss_covers_weighted_target_tokens_only(gpt2):
  model, params = gpt2
  batch = _batch()
  logits = _logits(model, params, batch)
  assert logits.shape[:2] == batch["decoder_target_tokens"].shape
  loss, smooth_loss, _, scores = _losses(model)(params, batch)
  np.testing.assert_allclose(scores, _scores(logits, batch), rtol=1e-5)
  np.testing.assert_allclose(loss, -np.sum(_scores(logits, batch)),
                             rtol=1e-5)
  assert abs(float(smooth_loss) - float(loss)) > 1e-3
  # A target under weight 0 does not count.
  weights = batch["decoder_loss_weights"].copy()
  weights[0, 2] = 0.0
  targets = batch["decoder_target_tokens"].copy()
  targets[0, 2] = 5
  base = _losses(model)(params, dict(batch, decoder_loss_weights=weights))[0]
  moved = _losses(model)(params, dict(batch, decoder_loss_weights=weights,
                                      decoder_target_tokens=targets))[0]
  np.testing.assert_allclose(moved, base, rtol=1e-6)
  assert abs(float(base) - float(loss)) > 1e-3


def test_gradients_reach_every_stage_prompt_and_scale(gpt2):
  model, params = gpt2
  grads = _losses(model)(params, _batch())[2]
  prompt_grads = np.abs(np.asarray(grads["prompts"]))
  assert (prompt_grads.reshape(3, -1).max(-1) > 0).all()
  assert (np.abs(np.asarray(grads["scales"])) > 0).all()


def _with_scales(params, scales):
  return {**params, "msp": {**params["msp"],
                            "scales": jnp.asarray(scales, jnp.float32)}}


def test_scales_below_one_act_as_one_and_two_doubles(gpt2):
  model, params = gpt2
  batch = _batch()
  base = _logits(model, params, batch)
  low = _logits(model, _with_scales(params, [0.5, 0.0, -3.0]), batch)
  np.testing.assert_array_equal(low, base)
  for stage in range(3):
    scales = np.ones(3, np.float32)
    scales[stage] = 2.0
    doubled = _logits(model, _with_scales(params, scales), batch)
    want = _logits(model, _with_prompt(params, stage, 2.0), batch)
    np.testing.assert_allclose(doubled, want, atol=1e-5)
    assert np.abs(doubled - base).max() > 1e-3


def test_shared_prompt_is_one_phi_and_one_scale_for_every_stage(gpt2):
  """PLM4MT's share_prompt: phi [1, ...] and alpha [1] serve all stages."""
  model, params = gpt2
  shared, shared_params = _model_and_params("gpt2", shared_prompt=True)
  phi = shared_params["msp"]["prompts"]
  assert phi.shape == (1,) + PROMPT_SHAPE
  assert shared_params["msp"]["scales"].shape == (1,)
  assert shared.method.num_params(CONFIGS["gpt2"]) == phi.size + 1
  assert msp.MultiStagePrompting(
      length=P, separator_id=SEP, shared_prompt=True,
      num_reencoding_stages=2).num_params(CONFIGS["gpt2"]) == phi.size + 1
  batch = _batch()
  for alpha in (1.0, 2.0):
    got = _logits(shared, _with_scales(shared_params, [alpha]), batch)
    three = {**params, "msp": {"prompts": jnp.concatenate([phi] * 3),
                               "scales": jnp.full((3,), alpha)}}
    np.testing.assert_allclose(got, _logits(model, three, batch), atol=1e-6)
  _assert_equals_numpy_reference(shared, _with_scales(shared_params, [2.0]))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def twice(request):
  """n = 2 re-encoding passes: 4 stages."""
  return (request.param,) + _model_and_params(request.param,
                                               num_reencoding_stages=2)


def test_two_reencoding_stages_equal_step_by_step_composition(twice):
  """Each pass has its own prompt: encoding 0, passes 1 and 2, decoding 3."""
  name, model, params = twice
  assert params["msp"]["prompts"].shape == (4,) + PROMPT_SHAPE
  assert params["msp"]["scales"].shape == (4,)
  batch = _batch()
  valid = batch["encoder_input_tokens"] > 0
  kvs, logits = _manual(name, 2)(params, batch)
  states, got = _forward(model)(params, batch)
  assert len(states) == 3
  for state, kv in zip(states, kvs):
    _assert_source_kv_equal(state, kv, valid)
  np.testing.assert_allclose(got, logits, atol=1e-5)
  # The second pass's own prompt matters: reading the first pass's instead
  # (one re-encoding prompt for both) changes the output.
  phi = params["msp"]["prompts"]
  one_for_both = {**params, "msp": {**params["msp"],
                                    "prompts": phi.at[2].set(phi[1])}}
  assert np.abs(_logits(model, one_for_both, batch) - got).max() > 1e-4


def test_two_reencoding_stages_equal_numpy_reference():
  model, params = _model_and_params("gpt2", num_reencoding_stages=2)
  _assert_equals_numpy_reference(model, params, num_reencoding_stages=2)


def test_two_reencoding_stages_each_read_their_own_scale():
  """Doubling alpha[s] is doubling phi[s], for each of the 4 stages. The
  source states are compared too: with 3 layers and 2 passes, the encoding
  prompt no longer reaches the logits."""
  model, params = _model_and_params("gpt2", num_reencoding_stages=2)
  batch = _batch()
  leaves = lambda p: [np.asarray(x) for x in
                      jax.tree.leaves(_forward(model)(p, batch))]
  base = leaves(params)
  for stage in range(4):
    scales = np.ones(4, np.float32)
    scales[stage] = 2.0
    doubled = leaves(_with_scales(params, scales))
    want = leaves(_with_prompt(params, stage, 2.0))
    for got, expected in zip(doubled, want):
      np.testing.assert_allclose(got, expected, atol=1e-5)
    assert max(np.abs(got - unchanged).max()
               for got, unchanged in zip(doubled, base)
               if got.dtype != bool) > 1e-3


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_no_reencoding_ablation_decodes_from_the_encoding_stage(name):
  """n = 0 (the paper's "w/o re-encoding"): two stages, and decoding's past
  is [decoding prompt ; the encoding stage's source states]."""
  model, params = _model_and_params(name, num_reencoding_stages=0)
  assert params["msp"]["prompts"].shape == (2,) + PROMPT_SHAPE
  batch = _batch()
  valid = batch["encoder_input_tokens"] > 0
  [kv], logits = _manual(name, 0)(params, batch)
  states, got = _forward(model)(params, batch)
  assert len(states) == 1
  _assert_source_kv_equal(states[0], kv, valid)
  np.testing.assert_allclose(got, logits, atol=1e-5)


def test_no_reparameterization_ablation_uses_phi_itself(gpt2):
  """scaled_reparameterization=False (the paper's ablation): no alpha
  parameter, and each stage's prompt is phi as it is."""
  model, params = _model_and_params("gpt2", scaled_reparameterization=False)
  assert set(params["msp"]) == {"prompts"}
  assert msp.MultiStagePrompting(
      scaled_reparameterization=False).num_params(configs.mgpt()) == (
          3 * 24 * 2 * 128 * 1024)
  batch = _batch()
  _, logits = _manual("gpt2")(params, batch)
  np.testing.assert_allclose(_logits(model, params, batch), logits,
                             atol=1e-5)
  # The same phi with alpha = 2 in the full method differs: alpha mattered.
  full, _ = gpt2
  scaled = {**params, "msp": {**params["msp"],
                              "scales": jnp.full((3,), 2.0)}}
  assert np.abs(_logits(full, scaled, batch) - logits).max() > 1e-4


def test_names_axes_init_and_trainable(gpt2):
  model, _ = gpt2
  boxed = jax.eval_shape(lambda: model.module.init(
      jax.random.PRNGKey(0), method="init_method_params"))["params"]["msp"]
  assert boxed["prompts"].names == msp.STAGE_PROMPT_AXES
  assert boxed["scales"].names == ("stages",)
  values = _msp_params(model)
  assert values["prompts"].shape == (3,) + PROMPT_SHAPE
  np.testing.assert_array_equal(values["scales"], np.ones(3))
  # Glorot-uniform per [P, heads * head_dim] slice.
  limit = np.sqrt(6.0 / (P + 8))
  assert np.abs(values["prompts"]).max() <= limit
  assert np.abs(values["prompts"]).max() > 0.5 * limit
  patterns = model.trainable_patterns
  assert all(param_split.is_trainable(f"msp/{n}", patterns) for n in values)
  assert not param_split.is_trainable(
      "decoder/layers_0/self_attention/key/kernel", patterns)


def test_init_method_params_adds_msp_next_to_the_frozen_base(gpt2):
  model, params = gpt2
  _, state = model.module.apply(
      {"params": {"decoder": params["decoder"]}}, method="init_method_params",
      mutable=["params"], rngs={"params": jax.random.PRNGKey(3)})
  assert set(state["params"]) == {"decoder", "msp"}
  assert jax.tree.all(jax.tree.map(lambda a, b: a is b,
                                   state["params"]["decoder"],
                                   params["decoder"]))


def test_mgpt_parameter_count():
  """MSP on mGPT (24 layers, width 1024, P=128): ~18.9M parameters; PLM4MT's
  [2 + n, 2 * layers, P, H] prompts and [2 + n] scales, or one of each."""
  method = msp.MultiStagePrompting()  # paper defaults: P=128, mGPT separator
  per_stage = 24 * 2 * 128 * 1024
  assert method.num_params(configs.mgpt()) == 3 * per_stage + 3 == 18_874_371
  assert msp.MultiStagePrompting(num_reencoding_stages=2).num_params(
      configs.mgpt()) == 4 * per_stage + 4
  assert msp.MultiStagePrompting(shared_prompt=True).num_params(
      configs.mgpt()) == per_stage + 1


def test_bad_configurations_are_rejected():
  with pytest.raises(ValueError, match="decoder_only"):
    msp.MultiStagePrompting(separator_id=SEP).build_module(
        configs.t5_1_1("tiny", vocab_size=64))
  with pytest.raises(ValueError, match="separator_id"):
    msp.MultiStagePrompting().build_module(CONFIGS["gpt2"])
  with pytest.raises(ValueError, match="length"):
    msp.MultiStagePrompting(length=0)
  with pytest.raises(ValueError, match="num_reencoding_stages=-1"):
    msp.MultiStagePrompting(num_reencoding_stages=-1)


def test_inputs_longer_than_position_table_are_rejected(gpt2):
  """Every stage restarts at position 0, so each must fit GPT-2's table."""
  model, params = gpt2
  long, short = jnp.ones((1, 40), jnp.int32), jnp.ones((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="source length 40"):
    jax.eval_shape(lambda: model.module.apply({"params": params}, long,
                                              short))
  with pytest.raises(ValueError, match="target length 40"):
    jax.eval_shape(lambda: model.module.apply({"params": params}, short,
                                              long))
